//! The onion netname against a real tor (network namespace, loopback
//! only): every authentication method tor offers, a wrong password, no
//! control port, the key made once and kept private, the service held
//! exactly while listen mode runs, re-registration after tor restarts, and
//! tor's extended SOCKS errors in connect mode.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::netns::root_or_skip;
use crate::support::tor::{self, Auth, Tor};
use crate::support::tornet::TorNet;
use crate::support::*;

/// The binary under test inside tor's namespace, in `dir`, with `config`.
fn p2p_in(tor: &Tor, dir: &Path, config: &[(&str, &str)]) -> Command {
    let mut cmd = tor.ns.exec(&bin());
    isolate(&mut cmd, dir);
    with_config(&mut cmd, config);
    cmd
}

fn address(tor: &Tor, dir: &Path, config: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let (status, out, err) = run(p2p_in(tor, dir, config).args(["onion", "address"]));
    (status.code(), out, err)
}

fn key_path(dir: &Path) -> std::path::PathBuf {
    dir.join(".git/annex/p2p-annex.onion.key")
}

/// `<56 base32>.onion:PORT`.
fn is_onion_address(line: &str) -> bool {
    let Some((host, port)) = line.rsplit_once(':') else {
        return false;
    };
    let Some(id) = host.strip_suffix(".onion") else {
        return false;
    };
    id.len() == 56
        && id.bytes().all(|c| matches!(c, b'a'..=b'z' | b'2'..=b'7'))
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Listen mode on `addr`, relaying to a unix socket of the test's.
fn listen(tor: &Tor, dir: &Path, addr: &str, config: &[(&str, &str)]) -> (Proc, UnixListener) {
    let socket = dir.join("annex.sock");
    let _ = std::fs::remove_file(&socket);
    let annex = UnixListener::bind(&socket).expect("bind the stand-in git-annex socket");
    let mut cmd = p2p_in(tor, dir, config);
    cmd.args(["onion", addr]).arg(&socket).stdin(Stdio::null());
    (Proc::spawn_logged(&mut cmd), annex)
}

/// Does tor take the key as a new service right now (no other control
/// connection holds it)? The test's connection is closed at once, which
/// removes what it added.
fn key_is_free(tor: &Tor, dir: &Path) -> bool {
    let key = std::fs::read_to_string(key_path(dir)).expect("read the key");
    let mut c = tor.controller();
    let reply = c.command(&format!("ADD_ONION {} Port=1,127.0.0.1:9", key.trim()));
    match &reply[..3] {
        "250" => true,
        "550" => {
            assert!(reply.contains("collision"), "{reply}");
            false
        }
        _ => panic!("unexpected ADD_ONION reply {}", &reply[..3]),
    }
}

#[test]
fn onion_cookie_auth_makes_the_key_once_keeps_it_private_and_the_address_stable() {
    if !root_or_skip("onion_cookie_auth_makes_the_key_once…") {
        return;
    }
    let mut tor = Tor::start(Auth::Cookie, false);
    let dir = repo("onion-cookie");
    // The TCP control port, inside the namespace.
    let cfg = [("p2p-annex.onion.control", tor::CONTROL_PORT)];
    let started = Instant::now();
    let (code, first, err) = address(&tor, dir.path(), &cfg);
    eprintln!("address mode, first run (new key): {:?}", started.elapsed());
    assert_eq!(code, Some(0), "stderr: {err}");
    let first = first.trim().to_string();
    assert!(is_onion_address(&first), "{first:?}");
    // The key: tor's text, 0600, ours; never in our output.
    let key = key_path(dir.path());
    let meta = std::fs::symlink_metadata(&key).expect("the key file exists");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    let blob = text
        .strip_prefix("ED25519-V3:")
        .and_then(|t| t.strip_suffix('\n'))
        .expect("ED25519-V3:<key>\\n");
    assert_eq!(blob.len(), 88, "a 64-byte key in base64");
    assert!(!first.contains(blob) && !err.contains(blob));
    // The port is stored like tcp's.
    let port = first.rsplit_once(':').unwrap().1;
    let stored = Command::new("git")
        .args(["config", "p2p-annex.onion.port"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&stored.stdout).trim(), port);
    // Same address later, through the control socket this time, and with
    // tor gone altogether; the key is not replaced.
    let (code, again, _) = address(&tor, dir.path(), &[]);
    assert_eq!(code, Some(0));
    assert_eq!(again.trim(), first);
    tor.stop();
    let (code, offline, err) = address(&tor, dir.path(), &[]);
    assert_eq!((code, offline.trim()), (Some(0), first.as_str()), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    // The key is tor's: with the id file gone, tor names the same
    // service for it again, and the file comes back.
    tor.restart();
    let id_file = dir.path().join(".git/annex/p2p-annex.onion.id");
    std::fs::remove_file(&id_file).unwrap();
    let (code, recovered, err) = address(&tor, dir.path(), &[]);
    assert_eq!((code, recovered.trim()), (Some(0), first.as_str()), "{err}");
    assert!(id_file.exists());
    let mut c = tor.controller();
    let reply = c.command(&format!("ADD_ONION {} Port=1,127.0.0.1:9", text.trim()));
    let id = first.split_once(".onion").unwrap().0;
    assert!(reply.contains(&format!("ServiceID={id}")), "{reply}");
}

#[test]
fn onion_every_auth_method_tor_offers_and_clear_errors() {
    if !root_or_skip("onion_every_auth_method_tor_offers_and_clear_errors") {
        return;
    }
    // Cookie: tor offers COOKIE and SAFECOOKIE; SAFECOOKIE is used.
    let tor = Tor::start(Auth::Cookie, false);
    let dir = repo("onion-auth-cookie");
    let cfg = [("p2p-annex.onion.control", tor.control_config())];
    let cfg: Vec<(&str, &str)> = cfg.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, addr, err) = address(&tor, dir.path(), &cfg);
    assert_eq!(code, Some(0), "{err}");
    let (mut l, _annex) = listen(&tor, dir.path(), addr.trim(), &cfg);
    let line = l.wait_for_stderr("registered with tor", DEADLINE);
    assert!(line.contains("SAFECOOKIE auth"), "{line}");
    drop(l);
    drop(tor);

    // Password: right, wrong, missing.
    let tor = Tor::start(Auth::Password, false);
    let dir = repo("onion-auth-pw");
    let control = tor.control_config();
    let right = [
        ("p2p-annex.onion.control", control.as_str()),
        ("p2p-annex.onion.control-password", tor::PASSWORD),
    ];
    let (code, addr, err) = address(&tor, dir.path(), &right);
    assert_eq!(code, Some(0), "{err}");
    let (mut l, _annex) = listen(&tor, dir.path(), addr.trim(), &right);
    let line = l.wait_for_stderr("registered with tor", DEADLINE);
    assert!(line.contains("HASHEDPASSWORD auth"), "{line}");
    drop(l);
    let other = repo("onion-auth-pw-wrong");
    let wrong = "not the password";
    let (code, out, err) = address(
        &tor,
        other.path(),
        &[
            ("p2p-annex.onion.control", control.as_str()),
            ("p2p-annex.onion.control-password", wrong),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("HASHEDPASSWORD authentication failed")
            && err.contains("check p2p-annex.onion.control-password"),
        "{err}"
    );
    assert!(
        !err.contains(wrong) && !err.contains(tor::PASSWORD),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!key_path(other.path()).exists());
    let (code, _, err) = address(
        &tor,
        other.path(),
        &[("p2p-annex.onion.control", control.as_str())],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tor wants a control-port password: set p2p-annex.onion.control-password"),
        "{err}"
    );
    drop(tor);

    // No authentication configured in tor: NULL.
    let tor = Tor::start(Auth::Null, false);
    let dir = repo("onion-auth-null");
    let (code, addr, err) = address(
        &tor,
        dir.path(),
        &[("p2p-annex.onion.control", tor::CONTROL_PORT)],
    );
    assert_eq!(code, Some(0), "{err}");
    let (mut l, _annex) = listen(
        &tor,
        dir.path(),
        addr.trim(),
        &[("p2p-annex.onion.control", tor::CONTROL_PORT)],
    );
    let line = l.wait_for_stderr("registered with tor", DEADLINE);
    assert!(line.contains("NULL auth"), "{line}");
    drop(l);

    // No control port: a one-line error naming it.
    let dir = repo("onion-auth-none");
    let (code, _, err) = address(
        &tor,
        dir.path(),
        &[("p2p-annex.onion.control", "127.0.0.1:1")],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "p2p-annex: onion: cannot connect to tor's control port 127.0.0.1:1: connection refused"
    );
    // Without tor, each default says why it missed.
    if !Path::new("/run/tor/control").exists() {
        let empty = tor::Netns::new();
        let mut cmd = empty.exec(&bin());
        isolate(&mut cmd, dir.path());
        let (status, _, err) = run(cmd.args(["onion", "address"]));
        assert_eq!(status.code(), Some(1));
        assert_eq!(
            err.trim(),
            "p2p-annex: onion: cannot reach tor's control port (tor's control socket \
             /run/tor/control: no such file or directory; tor's control port 127.0.0.1:9051: \
             connection refused); start tor, or set p2p-annex.onion.control to its control \
             port (HOST:PORT or unix:/PATH)"
        );
    }
    // The defaults (/run/tor/control, then 127.0.0.1:9051) are tried in
    // order: in this namespace the second answers.
    if !Path::new("/run/tor/control").exists() {
        let (code, addr, err) = address(&tor, dir.path(), &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(is_onion_address(addr.trim()));
    }
}

#[test]
fn onion_service_is_held_exactly_while_listen_runs_and_again_after_tor_restarts() {
    if !root_or_skip("onion_service_is_held_exactly_while_listen_runs…") {
        return;
    }
    let mut tor = Tor::start(Auth::Cookie, false);
    let dir = repo("onion-held");
    let control = tor.control_config();
    let cfg = [("p2p-annex.onion.control", control.as_str())];
    let (code, addr, err) = address(&tor, dir.path(), &cfg);
    assert_eq!(code, Some(0), "{err}");
    let addr = addr.trim().to_string();
    // Address mode's own registration went with its connection.
    assert!(key_is_free(&tor, dir.path()));

    let started = Instant::now();
    let (mut l, _annex) = listen(&tor, dir.path(), &addr, &cfg);
    let line = l.wait_for_stderr("registered with tor", DEADLINE);
    eprintln!(
        "listen mode: registered {:?} after start ({line})",
        started.elapsed()
    );
    assert!(line.contains("forwarding to 127.0.0.1:"), "{line}");
    assert!(
        !key_is_free(&tor, dir.path()),
        "listen mode holds the service"
    );

    // tor restarts: the listener notices, backs off while tor is away,
    // and registers again.
    let restarted = Instant::now();
    tor.restart();
    l.wait_for_stderr("registering", DEADLINE);
    l.wait_for_stderr("registered with tor", DEADLINE);
    eprintln!(
        "re-registered {:?} after tor restarted",
        restarted.elapsed()
    );
    assert!(
        !key_is_free(&tor, dir.path()),
        "held again after the restart"
    );

    // tor away for a while: the listener backs off (1 s, then 2 s, ...)
    // and registers as soon as tor is back.
    tor.stop();
    l.wait_for_stderr("retrying in 1s", DEADLINE);
    l.wait_for_stderr("retrying in 2s", DEADLINE);
    tor.restart();
    l.wait_for_stderr("registered with tor", DEADLINE);
    assert!(
        !key_is_free(&tor, dir.path()),
        "held again after tor came back"
    );

    // The listener goes: so does the service.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(l.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    l.expect_exit(DEADLINE);
    assert!(
        wait_until(DEADLINE, || key_is_free(&tor, dir.path())),
        "the service outlived its listener"
    );
    // Nothing the listener said holds the key.
    let key = std::fs::read_to_string(key_path(dir.path())).unwrap();
    let blob = key.trim().strip_prefix("ED25519-V3:").unwrap();
    for line in l.stderr_so_far() {
        assert!(!line.contains(blob), "the key in the log: {line}");
    }
}

#[test]
fn onion_listen_refuses_an_address_that_is_not_this_repositorys() {
    if !root_or_skip("onion_listen_refuses_an_address_that_is_not_this_repositorys") {
        return;
    }
    let tor = Tor::start(Auth::Cookie, false);
    let dir = repo("onion-notours");
    let control = tor.control_config();
    let cfg = [("p2p-annex.onion.control", control.as_str())];
    let other = format!("{}.onion:80", "a".repeat(56));
    // No key yet.
    let (mut l, _annex) = listen(&tor, dir.path(), &other, &cfg);
    assert_eq!(l.expect_exit(DEADLINE).code(), Some(1));
    let err = l.stderr_so_far().join("\n");
    assert!(err.contains("no onion key in"), "{err}");
    let (code, _, _) = address(&tor, dir.path(), &cfg);
    assert_eq!(code, Some(0));
    let (mut l, _annex) = listen(&tor, dir.path(), &other, &cfg);
    assert_eq!(l.expect_exit(DEADLINE).code(), Some(1));
    let err = l.stderr_so_far().join("\n");
    assert!(
        err.contains("is not this repository's onion service"),
        "{err}"
    );
}

#[test]
fn onion_connect_goes_through_tors_socks_port_and_names_its_errors() {
    if !root_or_skip("onion_connect_goes_through_tors_socks_port_and_names_its_errors") {
        return;
    }
    let tor = Tor::start(Auth::Cookie, true);
    let dir = TempDir::new("onion-connect");
    // 56 base32 characters, but a wrong checksum: tor says so at once
    // (extended error 0xF6).
    let bad = format!("{}.onion:80", "a".repeat(56));
    let started = Instant::now();
    let (status, out, err) = run(p2p_in(&tor, dir.path(), &[]).args(["onion", &bad]));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        err.trim(),
        format!(
            "p2p-annex: onion: proxy {}: cannot connect to {bad}: onion service invalid \
             address (reply 246)",
            tor::SOCKS_PORT
        )
    );
    // Not an onion name: refused before anything is sent.
    let (status, _, err) = run(p2p_in(&tor, dir.path(), &[]).args(["onion", "example.com:80"]));
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("is not a v3 onion address"), "{err}");
}

// ---------------------------------------------------------------------------
// Real git-annex repositories over a private Tor network

/// Connect mode from B until tor finds the service's descriptor (a new
/// service publishes it a few seconds after it is registered); how long
/// that took.
fn wait_reachable(net: &TorNet, home: &Path, address: &str) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < TORNET_STEP {
        let mut cmd = p2p(home);
        cmd.args(["onion", address]);
        with_config(&mut cmd, &[("p2p-annex.onion.proxy", &net.socks("b"))]);
        let (status, _, err) = run(&mut cmd);
        if status.success() {
            return started.elapsed();
        }
        last = err;
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{address} not reachable through B's tor within {TORNET_STEP:?}; last: {last}");
}

/// One step of the private-network test (tor's circuits are slow to build
/// on a loaded machine).
const TORNET_STEP: Duration = Duration::from_secs(120);

#[test]
fn onion_git_annex_syncs_over_a_private_tor_network() {
    use crate::support::annex::{Env, pseudo_random};
    if !root_or_skip("onion_git_annex_syncs_over_a_private_tor_network") {
        return;
    }
    let net = TorNet::start();
    eprintln!("private tor network: bootstrapped in {:?}", net.bootstrap);
    let env = Env::new("e2e-onion");
    env.global_config("p2p-annex.onion.proxy", &net.socks("b"));
    let a = env.repo("a");
    a.config("p2p-annex.onion.control", &net.control("a"));
    let small = b"hello from A, over tor\n".to_vec();
    let big = pseudo_random(51, 4 * 1024 * 1024 + 3);
    a.write("small.txt", &small);
    a.write("big.bin", &big);
    a.add_and_commit(&["small.txt", "big.bin"], "files from A");
    a.annex(&["p2p", "--enable", "onion"]);
    let own = a.own_p2p_addresses();
    assert_eq!(own.len(), 1, "{own:?}");
    let onion = own[0]
        .strip_prefix("p2p-annex::onion:")
        .expect("an onion address");
    assert!(is_onion_address(onion), "{onion}");

    // Before remotedaemon runs: tor answers, nothing holds the service.
    let checked = a.cmd(bin().to_str().unwrap(), &["check"]).run();
    assert!(
        checked
            .stdout
            .lines()
            .any(|l| l.contains("is not registered, as no remotedaemon runs")),
        "{}",
        checked.stdout
    );

    // A's listener must be where A's tor can reach 127.0.0.1: in the namespace.
    let in_net = ["ip", "netns", "exec", net.ns.0.as_str()];
    let registered = Instant::now();
    let served = a.serve_via(&in_net);
    let address = a.gen_addresses("onion").remove(0);
    let b = env.repo("b");
    let reachable = wait_reachable(&net, b.path(), onion);
    eprintln!(
        "onion service reachable from B {reachable:?} after A's listener started \
         ({:?} in all)",
        registered.elapsed()
    );

    // check: tor answers, the listener holds the service.
    let checked = a.cmd(bin().to_str().unwrap(), &["check"]).run();
    let tor_line = checked
        .stdout
        .lines()
        .find(|l| l.contains("registered with tor"))
        .unwrap_or_else(|| panic!("no tor line in check's output:\n{}", checked.stdout));
    assert!(tor_line.contains("SAFECOOKIE auth"), "{tor_line}");

    let t = Instant::now();
    b.link("peerA", &address);
    b.fetch("peerA");
    b.annex(&["merge"]);
    b.git(&["merge", "-q", "--ff-only", "peerA/main"]);
    eprintln!("link + fetch over tor: {:?}", t.elapsed());
    let t = Instant::now();
    b.annex(&["get", "small.txt"]);
    eprintln!(
        "first git annex get (small file) over tor: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    b.annex(&["get", "big.bin"]);
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "git annex get of 4 MiB over tor: {secs:.2}s ({:.2} MiB/s)",
        4.0 / secs
    );
    assert!(b.read("small.txt") == small && b.read("big.bin") == big);
    b.annex(&["fsck"]);

    let new = pseudo_random(52, 200 * 1024);
    b.write("from-b.bin", &new);
    b.add_and_commit(&["from-b.bin"], "file from B");
    b.annex(&["copy", "--to", "peerA", "from-b.bin"]);
    let mut want = vec!["big.bin", "from-b.bin", "small.txt"];
    want.sort();
    assert_eq!(b.files_in("peerA"), want);
    // A's copy, fetched back over tor and checked against its key.
    b.annex(&["fsck", "--from", "peerA", "from-b.bin"]);
    a.annex(&["fsck"]);

    // check on B: the peer is reached through tor's SOCKS port.
    let checked = b.cmd(bin().to_str().unwrap(), &["check"]).run();
    assert!(
        checked
            .stdout
            .lines()
            .any(|l| l.contains("peer-reachable") || l.contains("is reachable")),
        "{}",
        checked.stdout
    );
    assert!(checked.success(), "{}\n{}", checked.stdout, checked.stderr);

    drop(served);
    env.assert_no_leftover_processes();
}
