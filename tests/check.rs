//! `p2p-annex check` against real git-annex repositories: a healthy pair
//! reports all ok, and each fault made on purpose (no remotedaemon, a
//! stale socket, a bracketed address, a wrong token, an unreachable peer,
//! a stray listener, missing links) reports FAIL with its advice. The auth
//! token never appears in the output.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::annex::{Env, Outcome, Repo, Secret, all_procs, git_annex};
use crate::support::{
    KillOnDrop, Proc, bin, find_on_path, free_port, listener_under_sleep, wait_until,
};

/// `p2p-annex check ARGS` in `repo`, with the test's PATH.
fn check(repo: &Repo, args: &[&str]) -> Outcome {
    let program = bin();
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    repo.cmd(program.to_str().expect("UTF-8 binary path"), &all)
        .run()
}

/// The exit code, with the whole output in the panic message otherwise.
#[track_caller]
fn assert_exit(got: &Outcome, code: i32) {
    assert_eq!(
        got.status.and_then(|s| s.code()),
        Some(code),
        "{}",
        got.describe()
    );
    assert!(got.stderr.is_empty(), "stderr: {}", got.describe());
}

/// The report line containing `needle`, and the fix printed under it.
#[track_caller]
fn line_with<'a>(got: &'a Outcome, needle: &str) -> (&'a str, Option<&'a str>) {
    let lines: Vec<&str> = got.stdout.lines().collect();
    let Some(i) = lines.iter().position(|l| l.contains(needle)) else {
        panic!("no line with {needle:?} in:\n{}", got.stdout);
    };
    let fix = lines.get(i + 1).and_then(|l| l.strip_prefix("      fix: "));
    (lines[i], fix)
}

/// A FAIL line containing `needle` whose fix contains `advice`.
#[track_caller]
fn assert_fail(got: &Outcome, needle: &str, advice: &str) {
    let (line, fix) = line_with(got, needle);
    assert!(line.starts_with("FAIL  "), "not a failure: {line}");
    let fix = fix.unwrap_or_else(|| panic!("no fix under {line:?}:\n{}", got.stdout));
    assert!(
        fix.contains(advice),
        "fix for {line:?} lacks {advice:?}: {fix}"
    );
}

/// Every check line is ok but the one warning a plain `git annex
/// remotedaemon` earns: it runs without the CONNECTDONE workaround that
/// `p2p-annex serve` brings (tests/serve.rs checks serve's all-ok).
#[track_caller]
fn assert_ok_but_plain_remotedaemon(got: &Outcome) {
    assert_exit(got, 0);
    let lines: Vec<&str> = got
        .stdout
        .lines()
        .filter(|l| !l.starts_with("checks: "))
        .collect();
    let warnings: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("ok    ") && !l.starts_with("      fix: "))
        .collect();
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with(
                "warn  remotedaemon runs without the CONNECTDONE workaround: fetches may hang"
            ),
        "not all ok but the workaround warning:\n{}",
        got.stdout
    );
    let ok = lines.iter().filter(|l| l.starts_with("ok    ")).count();
    let summary = got.stdout.lines().last().unwrap_or("");
    assert_eq!(summary, format!("checks: {ok} ok, 1 warning, 0 failed"));
}

/// Every check line is ok (and the summary says so).
#[track_caller]
fn assert_all_ok(got: &Outcome) {
    assert_exit(got, 0);
    let checks: Vec<&str> = got
        .stdout
        .lines()
        .filter(|l| !l.starts_with("checks: "))
        .collect();
    assert!(
        checks.iter().all(|l| l.starts_with("ok    ")),
        "not all ok:\n{}",
        got.stdout
    );
    let summary = got.stdout.lines().last().unwrap_or("");
    assert_eq!(
        summary,
        format!("checks: {} ok, 0 warnings, 0 failed", checks.len())
    );
}

/// The token B stores for `address`: read only to make sure no output
/// shows it.
fn stored_token(repo: &Repo, address: &Secret) -> (PathBuf, String) {
    let url = address.url().strip_prefix("p2p-annex::").expect("p2p URL");
    let name: String = url
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let file = repo.path().join(".git/annex/creds").join(name);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("no creds file {}: {e}", file.display()));
    let token = text.lines().next().unwrap_or("").to_string();
    assert!(token.len() >= 16, "a real token is long");
    (file, token)
}

#[track_caller]
fn assert_no_token(got: &Outcome, token: &str) {
    assert!(
        !got.stdout.contains(token) && !got.stderr.contains(token),
        "the auth token leaked into the output of `{}`",
        got.label
    );
}

fn alive(pid: u32) -> bool {
    crate::support::annex::Proc::read(pid).is_some_and(|p| p.alive())
}

/// A serves tcp on loopback with its remotedaemon; B links to it.
#[test]
fn a_healthy_pair_is_all_ok_and_peer_faults_fail() {
    let env = Env::new("check-pair");
    let a = env.repo("a");
    a.config("p2p-annex.tcp.address", "127.0.0.1");
    a.annex(&["p2p", "--enable", "tcp"]);
    let daemon = a.start_remotedaemon();
    let mut addresses = a.gen_addresses("tcp");
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    let address = addresses.remove(0);
    let b = env.repo("b");
    b.link("peerA", &address);
    let (creds, token) = stored_token(&b, &address);
    let a_uuid = a.git(&["config", "annex.uuid"]).stdout.trim().to_string();

    // Healthy: every check ok on both sides (A warns that its plain
    // remotedaemon lacks serve's workaround), the token nowhere.
    let got = check(&a, &[]);
    assert_ok_but_plain_remotedaemon(&got);
    for needle in [
        "git-annex-p2p-tcp on PATH runs this p2p-annex",
        "remotedaemon runs (pid",
        "accepts connections",
        "listener for tcp:127.0.0.1:",
        "no stray or orphaned listener",
    ] {
        line_with(&got, needle);
    }
    let got = check(&b, &[]);
    assert_all_ok(&got);
    line_with(&got, &format!("AUTH-SUCCESS from {a_uuid}"));
    assert_no_token(&got, &token);
    let json = check(&b, &["--json"]);
    assert_exit(&json, 0);
    assert!(
        json.stdout.starts_with("{\n  \"ok\": true,"),
        "{}",
        json.stdout
    );
    assert!(
        json.stdout
            .contains("\"check\": \"peer-auth\", \"status\": \"ok\"")
    );
    assert_no_token(&json, &token);

    // A token the peer does not accept.
    let wrong = "0123456789abcdefWRONGTOKEN";
    std::fs::write(&creds, format!("{wrong}\n")).expect("write creds");
    let got = check(&b, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        "the peer refuses our auth token (AUTH-FAILURE)",
        "get a new line from the peer's `git annex p2p --gen-addresses`, then \
         `git remote remove peerA` and `git annex p2p --link --name peerA`",
    );
    assert_no_token(&got, wrong);
    let json = check(&b, &["--json"]);
    assert_exit(&json, 1);
    assert!(
        json.stdout.starts_with("{\n  \"ok\": false,"),
        "{}",
        json.stdout
    );
    assert!(
        json.stdout
            .contains("\"check\": \"peer-auth\", \"status\": \"fail\"")
    );
    assert_no_token(&json, wrong);
    std::fs::write(&creds, format!("{token}\n")).expect("restore creds");

    // A peer nobody listens for.
    let port = free_port();
    b.git(&[
        "remote",
        "add",
        "gone",
        &format!("p2p-annex::tcp:127.0.0.1:{port}"),
    ]);
    let got = check(&b, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        &format!(
            "remote gone (tcp:127.0.0.1:{port}): cannot connect to 127.0.0.1:{port}: connection refused"
        ),
        "run `p2p-annex check` in the peer's repository",
    );
    line_with(&got, "AUTH-SUCCESS"); // peerA is still fine
    b.git(&["remote", "remove", "gone"]);

    // remotedaemon killed: its socket file stays behind, stale, and A
    // cannot be reached.
    let listeners: Vec<u32> = daemon.listeners().iter().map(|p| p.pid).collect();
    for pid in daemon.pids() {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill remotedaemon");
    }
    assert!(
        wait_until(Duration::from_secs(5), || !listeners
            .iter()
            .any(|&p| alive(p))),
        "the listener outlived remotedaemon"
    );
    let got = check(&a, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        "no `git annex remotedaemon` runs for this repository",
        "run `git annex remotedaemon` in",
    );
    assert_fail(
        &got,
        "is stale: nothing accepts on it",
        "start `git annex remotedaemon`",
    );
    let got = check(&b, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        "remote peerA (tcp:127.0.0.1:",
        "check that the peer's `git annex remotedaemon` runs",
    );
    line_with(&got, "connection refused");
    assert_no_token(&got, &token);

    daemon.stop();
    env.assert_no_leftover_processes();
}

/// A listener of ours in A's directory that remotedaemon did not start:
/// its parent is a `sleep`, like an orphan of an earlier run under a
/// subreaper. Killed (both) when the guard goes.
struct Stray {
    parent: Proc,
    pid: u32,
    _listener: KillOnDrop,
}

impl Stray {
    fn start(repo: &Repo, home: &Path, port: u16, socket: &str) -> Stray {
        let log = home.join("stray.log");
        let (parent, listener) =
            listener_under_sleep(home, repo.path(), port, Path::new(socket), &log);
        Stray {
            parent,
            pid: listener.0,
            _listener: listener,
        }
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        wait_until(Duration::from_secs(5), || !alive(self.pid));
    }
}

/// One repository, serving: before remotedaemon, with a stray listener on
/// its port, healthy, with a bracketed address in p2paddrs, and with a PATH
/// that lacks git-remote-p2p-annex and has a foreign helper.
#[test]
fn serving_faults_fail_with_their_advice() {
    let env = Env::new("check-serve");
    let a = env.repo("a");
    a.config("p2p-annex.tcp.address", "127.0.0.1");
    a.annex(&["p2p", "--enable", "tcp"]);

    // Enabled, but no remotedaemon yet: that is the one failure, with no
    // socket or listener failures piled on it.
    let got = check(&a, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        "no `git annex remotedaemon` runs for this repository",
        "run `git annex remotedaemon` in",
    );
    assert_eq!(got.stdout.matches("FAIL").count(), 1, "{}", got.stdout);

    // A stray listener of ours holds the enabled port, relaying to an old
    // socket file as an orphan of an earlier run would: remotedaemon's own
    // listener cannot bind the port; it waits for it, and its log says why.
    let port = a.config_get_all("p2p-annex.tcp.port").remove(0);
    let old = env.root().join("old.sock");
    let _old = UnixListener::bind(&old).expect("bind the old socket");
    let stray = Stray::start(
        &a,
        &env.root().join("home"),
        port.parse().expect("a port"),
        old.to_str().expect("UTF-8 path"),
    );
    a.annex(&["remotedaemon"]);
    let log = a.path().join(".git/annex/p2p-annex.tcp.log");
    let busy = format!("cannot listen on 127.0.0.1:{port}: address already in use; will try again");
    let mut first = None;
    let listener_waits = wait_until(Duration::from_secs(15), || {
        first = all_procs()
            .iter()
            .find(|p| p.is_remotedaemon() && p.cwd.as_deref() == Some(a.path()))
            .map(|p| p.pid);
        first.is_some() && std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&busy))
    });
    assert!(
        listener_waits,
        "remotedaemon's listener does not wait for the port: {:?}",
        std::fs::read_to_string(&log)
    );
    let first = first.expect("remotedaemon's pid");
    let got = check(&a, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        &format!("but cannot listen yet; its log ends with: {busy}"),
        "it keeps trying and serves as soon as it can: free the port (see any stray listener \
         below) or bring up the address; its log is .git/annex/p2p-annex.tcp.log",
    );
    let needle = format!(
        "stray listener pid {} for tcp:127.0.0.1:{port}: its parent is pid {} (sleep 600), \
         not a remotedaemon of this repository; it holds the port of an enabled address",
        stray.pid,
        stray.parent.pid()
    );
    assert_fail(
        &got,
        &needle,
        &format!(
            "`kill {}`: remotedaemon's listener binds the port within 10 seconds",
            stray.pid
        ),
    );
    drop(stray);
    // The port is free: the same listener binds it, without a restart.
    let serving = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains(&format!("listening on 127.0.0.1:{port}")))
    });
    assert!(serving, "{:?}", std::fs::read_to_string(&log));
    assert_ok_but_plain_remotedaemon(&check(&a, &[]));
    kill(Pid::from_raw(first as i32), Signal::SIGTERM).expect("stop remotedaemon");
    assert!(wait_until(Duration::from_secs(10), || !alive(first)));

    let daemon = a.start_remotedaemon();
    assert_ok_but_plain_remotedaemon(&check(&a, &[]));

    // A bracketed IPv6 address, as another helper (or a hand edit) leaves.
    let p2paddrs = a.path().join(".git/annex/creds/p2paddrs");
    let before = std::fs::read_to_string(&p2paddrs).expect("p2paddrs");
    let bracketed = format!("p2p-annex::tcp:[::1]:{}", free_port());
    std::fs::write(&p2paddrs, format!("{before}{bracketed}\n")).expect("write p2paddrs");
    let got = check(&a, &[]);
    assert_exit(&got, 1);
    assert_fail(
        &got,
        "is a bracketed IPv6 address, which git-annex cannot use",
        &format!("delete the line {bracketed} from .git/annex/creds/p2paddrs"),
    );
    assert_eq!(got.stdout.matches("FAIL").count(), 1, "{}", got.stdout);
    std::fs::write(&p2paddrs, before).expect("restore p2paddrs");

    // A PATH with git and git-annex only, and a network whose helper is a
    // script, and one whose helper is missing.
    let alt = env.root().join("altbin");
    std::fs::create_dir_all(&alt).expect("mkdir altbin");
    let git = find_on_path("git").expect("git on PATH");
    let annex = &git_annex().exe;
    symlink(&git, alt.join("git")).expect("link git");
    symlink(annex, alt.join("git-annex")).expect("link git-annex");
    symlink(bin(), alt.join("git-annex-p2p-tcp")).expect("link tcp");
    let script = env.root().join("socat-helper");
    std::fs::write(&script, "#!/bin/sh\nexec socat - \"TCP:$1\"\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    symlink(&script, alt.join("git-annex-p2p-viasocat")).expect("link script");
    // The README's stand-in for a link where there can be none.
    let wrapper = alt.join("git-annex-p2p-wrapped");
    let text = format!("#!/bin/sh\nexec {} wrapped \"$@\"\n", bin().display());
    std::fs::write(&wrapper, text).expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    a.config("p2p-annex.wrapped.transport", "tcp");
    a.git(&["remote", "add", "s", "p2p-annex::viasocat:10.0.0.1:1"]);
    a.git(&["remote", "add", "n", "p2p-annex::nowhere:10.0.0.1:1"]);
    let path = alt.to_str().expect("UTF-8 path");
    let program = bin();
    let got = a
        .cmd(
            "env",
            &[
                &format!("PATH={path}"),
                program.to_str().expect("UTF-8 binary path"),
                "check",
            ],
        )
        .run();
    assert_exit(&got, 1);
    assert_fail(
        &got,
        "git-remote-p2p-annex is not on PATH",
        &format!(
            "ln -s {} {path}/git-remote-p2p-annex",
            alt.join("git-annex").display()
        ),
    );
    let (line, _) = line_with(&got, "git-annex-p2p-viasocat on PATH");
    assert!(
        line.starts_with("warn  ")
            && line.contains(&format!("is another program ({})", script.display())),
        "{line}"
    );
    let (line, _) = line_with(&got, "git-annex-p2p-wrapped on PATH runs this p2p-annex");
    assert!(line.starts_with("ok    "), "{line}");
    assert_fail(&got, "git-annex-p2p-nowhere is not on PATH", "ln -s ");
    assert_fail(
        &got,
        "network nowhere has no transport: p2p-annex.nowhere.transport is not set",
        "git config --global p2p-annex.nowhere.transport tcp",
    );
    assert!(
        !got.stdout.contains("remote s "),
        "a foreign network's remote was checked:\n{}",
        got.stdout
    );

    daemon.stop();
    env.assert_no_leftover_processes();
}

/// Outside any repository: the tools are checked, then one failure.
#[test]
fn outside_a_repository_it_says_so() {
    let dir = crate::support::TempDir::new("check-norepo");
    let (status, stdout, stderr) = crate::support::run(
        crate::support::p2p(dir.path())
            .arg("check")
            .env("GIT_CEILING_DIRECTORIES", dir.path()),
    );
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("is not inside a git repository")
            && stdout.contains("fix: run `p2p-annex check` inside"),
        "{stdout}"
    );
    let (status, _, stderr) =
        crate::support::run(crate::support::p2p(dir.path()).args(["check", "--bogus"]));
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("check: invalid option '--bogus'"),
        "{stderr}"
    );
    let (status, _, stderr) =
        crate::support::run(crate::support::p2p(dir.path()).args(["status", "address"]));
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("status: unexpected argument"), "{stderr}");
    let (status, _, stderr) = crate::support::run(
        crate::support::helper(
            &crate::support::helper_link(dir.path(), "status"),
            dir.path(),
        )
        .arg("address"),
    );
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("\"status\" cannot be a netname"),
        "{stderr}"
    );
}
