//! The command line and address mode: names, help, and bad input.

use std::process::Command;

use crate::support::*;

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_and_version() {
    let home = TempDir::new("help");
    let (status, stdout, _) = run(p2p(home.path()).arg("--help"));
    assert!(status.success());
    assert!(
        stdout.contains("git-annex-p2p-NETNAME ADDRESS SOCKETFILE"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plaintext"),
        "--help must warn that tcp is plaintext"
    );
    let (status, stdout, _) = run(p2p(home.path()).arg("--version"));
    assert!(status.success());
    assert_eq!(stdout, format!("p2p-annex {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2_with_one_message_line() {
    let home = TempDir::new("usage");
    let cases: &[(&[&str], &str)] = &[
        (&[], "p2p-annex: missing NETNAME"),
        (&["tcp"], "p2p-annex: missing ADDRESS"),
        (
            &["tcp", "a:1", "s", "x"],
            "p2p-annex: unexpected argument \"x\"",
        ),
        (&["tcp", "--bogus"], "p2p-annex: invalid option '--bogus'"),
        (
            &["tcp", "host"],
            "p2p-annex: tcp: address \"host\" has no port (expected HOST:PORT)",
        ),
        (
            &["tcp", "host:0"],
            "p2p-annex: tcp: bad port \"0\" (expected 1-65535)",
        ),
        (
            &["tcp", "host:65536"],
            "p2p-annex: tcp: bad port \"65536\" (expected 1-65535)",
        ),
        (
            &["tcp", "a;reboot:22"],
            "p2p-annex: tcp: bad host \"a;reboot\"",
        ),
        (&["tcp", "[::1:22"], "p2p-annex: tcp: bad host \"[::1:22\""),
        (
            &["tcp", "%ff:1"],
            "p2p-annex: tcp: address is not valid UTF-8",
        ),
        (&["tcp", "h:1", ""], "p2p-annex: empty SOCKETFILE"),
    ];
    for (args, want) in cases {
        let (status, stdout, stderr) = run(p2p(home.path()).args(*args));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with(want),
            "{args:?}: got {first:?}, want {want:?}"
        );
        assert!(stderr.lines().count() <= 2, "{args:?}: {stderr}");
    }
}

#[test]
fn unknown_netname_says_how_to_configure_it() {
    let home = TempDir::new("unknown");
    let link = helper_link(home.path(), "myygg");
    let (status, _, stderr) = run(helper(&link, home.path()).arg("address"));
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.starts_with("p2p-annex: myygg: unknown netname \"myygg\": set its transport with `git config p2p-annex.myygg.transport socks` (or tcp, or unix-sockets, or onion, or fowl)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(netnames here: tcp, socks, unix-sockets, onion, fowl)"),
        "{stderr}"
    );
    // A typo of a netname that is configured: the message names it.
    let (status, _, stderr) = run(helper(&link, home.path())
        .arg("address")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "p2p-annex.myyggdrasil.transport")
        .env("GIT_CONFIG_VALUE_0", "socks"));
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("(netnames here: tcp, socks, unix-sockets, onion, fowl, myyggdrasil)"),
        "{stderr}"
    );
}

#[test]
fn user_defined_netname_uses_its_own_keys() {
    let home = TempDir::new("userdef");
    let link = helper_link(home.path(), "lan");
    let mut cmd = helper(&link, home.path());
    cmd.arg("address");
    with_config(
        &mut cmd,
        &[
            ("p2p-annex.lan.transport", "tcp"),
            ("p2p-annex.lan.address", "192.0.2.7"),
            ("p2p-annex.lan.port", "6000"),
            ("p2p-annex.tcp.port", "7000"),
        ],
    );
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "192.0.2.7:6000\n");
}

#[test]
fn address_mode_picks_a_port_once_and_stores_it_in_the_repository() {
    let home = TempDir::new("address");
    git(home.path(), &["init", "-q", "repo"]);
    let repo = home.path().join("repo");
    git(&repo, &["config", "p2p-annex.tcp.address", "127.0.0.1"]);
    git(
        &repo,
        &["config", "--add", "p2p-annex.tcp.address", "[::1]"],
    );
    let link = helper_link(home.path(), "tcp");
    let first = run(helper(&link, home.path()).arg("address").current_dir(&repo));
    assert!(first.0.success(), "{}", first.2);
    let port = git(&repo, &["config", "p2p-annex.tcp.port"])
        .trim()
        .to_string();
    // Loopback only because it is configured; IPv6 never bracketed.
    assert_eq!(first.1, format!("127.0.0.1:{port}\n::1:{port}\n"));
    let second = run(helper(&link, home.path()).arg("address").current_dir(&repo));
    assert_eq!(second.1, first.1, "the address must stay stable");
}

#[test]
fn address_mode_without_configuration_advertises_this_hosts_addresses() {
    let home = TempDir::new("address-auto");
    let mut cmd = p2p(home.path());
    cmd.args(["tcp", "address"]);
    with_config(&mut cmd, &[("p2p-annex.tcp.port", "5599")]);
    let (status, stdout, stderr) = run(&mut cmd);
    if status.success() {
        assert!(!stdout.is_empty());
        for line in stdout.lines() {
            let host = line
                .strip_suffix(":5599")
                .unwrap_or_else(|| panic!("{line:?}"));
            let ip: std::net::IpAddr = host.parse().unwrap_or_else(|_| panic!("{line:?}"));
            assert!(!ip.is_loopback(), "{line}");
            assert!(!line.contains('['), "{line}");
            assert!(
                !host.starts_with("fe80:") && !host.starts_with("169.254."),
                "{line}"
            );
        }
    } else {
        // A machine with only loopback: the message says what to set.
        assert_eq!(status.code(), Some(1));
        assert!(stderr.contains("set p2p-annex.tcp.address"), "{stderr}");
    }
}

#[test]
fn address_mode_outside_a_repository_cannot_store_a_port() {
    let home = TempDir::new("address-norepo");
    let mut cmd = p2p(home.path());
    cmd.args(["tcp", "address"])
        .env("GIT_CEILING_DIRECTORIES", home.path());
    with_config(&mut cmd, &[("p2p-annex.tcp.address", "10.1.2.3")]);
    let (status, stdout, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with("p2p-annex: tcp: cannot store p2p-annex.tcp.port:"),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_values_name_the_key() {
    let home = TempDir::new("badcfg");
    let mut cmd = p2p(home.path());
    cmd.args(["tcp", "address"]);
    with_config(&mut cmd, &[("p2p-annex.tcp.port", "http")]);
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr,
        "p2p-annex: tcp: p2p-annex.tcp.port: bad value \"http\" (expected a port, 1-65535)\n"
    );
}

/// unix-sockets, onion and fowl peers have no address of their own to judge: an
/// allow-list there is a mistake, refused before anything listens.
#[test]
fn an_allow_list_is_refused_where_peers_have_no_address() {
    let home = TempDir::new("allow-refused");
    let socket = home.path().join("annex.sock");
    std::fs::write(&socket, b"").expect("a stand-in socket file");
    for (netname, address, why) in [
        (
            "unix-sockets",
            "abcdef0123",
            "unix-sockets peers have no network address",
        ),
        (
            "onion",
            "aaaa.onion:5599",
            "onion peers all arrive from tor, on loopback",
        ),
        (
            "fowl",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f@ws://127.0.0.1:9/v1",
            "fowl peers all arrive from fowld, on loopback",
        ),
    ] {
        let (status, _, stderr) = run(p2p(home.path())
            .args([netname, address])
            .arg(&socket)
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", format!("p2p-annex.{netname}.allow"))
            .env("GIT_CONFIG_VALUE_0", "10.0.0.0/8"));
        assert_eq!(status.code(), Some(1), "{netname}: {stderr}");
        assert!(
            stderr.ends_with(&format!(
                "p2p-annex: {netname}: p2p-annex.{netname}.allow: bad value \"10.0.0.0/8\" \
                 (expected nothing: {why})\n"
            )),
            "{netname}: {stderr}"
        );
    }
}
