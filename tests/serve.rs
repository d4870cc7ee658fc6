//! `p2p-annex serve` with a real git-annex: it serves a peer, restarts a
//! remotedaemon that was killed, refuses a second supervisor and a plain
//! remotedaemon, stops everything on SIGTERM, drops root for the owner of
//! the repository; `check` and `status` say what runs.
//!
//! Run them alone with `cargo test --test tests serve -- --nocapture` (the
//! restart and stop times are printed on stderr).

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::annex::{Background, Env, Proc, Repo, Secret, all_procs, pseudo_random};

/// How long serve gets to have remotedaemon and its listener up: git-annex
/// takes about a second to start on a loaded machine.
const UP: Duration = Duration::from_secs(30);
/// How long serve may take to stop after SIGTERM (its own bound is 5 s of
/// grace, then SIGKILL).
const STOP: Duration = Duration::from_secs(15);

/// A serves tcp on loopback, B is linked to it, files go A → B through
/// serve; then remotedaemon is killed and comes back, a second serve is
/// refused, and SIGTERM leaves nothing behind.
#[test]
fn serve_serves_restarts_and_stops() {
    let env = Env::new("serve");
    let a = env.repo("a");
    let first = pseudo_random(11, 200 * 1024);
    a.write("first.bin", &first);
    a.add_and_commit(&["first.bin"], "first");
    let port = enable_tcp(&a);

    let mut serve = start_serve(&env, &a, &[]);
    let (daemon, listener) = wait_serving(&serve, port, None);
    assert_runs_as_helper(&listener);

    // The peer: link, fetch (no retry: the shim is there so that a first
    // fetch does not hang), get.
    let b = env.repo("b");
    b.link("peerA", &single_address(&a));
    fetch_and_merge(&b);
    b.annex(&["get", "--from", "peerA", "first.bin"]);
    assert!(b.read("first.bin") == first, "first.bin differs in B");

    // check: serve runs, remotedaemon has the shim first on its PATH.
    let check = p2p(&a, &["check"]).run();
    assert!(
        check
            .stdout
            .contains(&format!("p2p-annex serve runs (pid {}", serve.pid()))
            && check.stdout.contains(&format!(
                "remotedaemon (pid {}) runs under serve with the git shim first on its PATH",
                daemon.pid
            )),
        "check with serve running:\n{}",
        check.describe()
    );
    let not_ok: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| !l.starts_with("ok    ") && !l.starts_with("checks: "))
        .collect();
    assert!(
        check.success() && not_ok.is_empty(),
        "check under serve is not all ok:\n{}",
        check.stdout
    );
    let status = p2p(&a, &["status"]).ok();
    assert!(
        status
            .stdout
            .starts_with(&format!("serve (pid {}): up ", serve.pid()))
            && status
                .stdout
                .contains(&format!("0 restarts, remotedaemon pid {} up", daemon.pid)),
        "status:\n{}",
        status.stdout
    );

    // A second serve for the same repository: refused at once.
    let second = p2p(&a, &["serve"]).deadline(Duration::from_secs(20)).run();
    assert_eq!(
        second.status.and_then(|s| s.code()),
        Some(1),
        "second serve: {}",
        second.describe()
    );
    let want = format!(
        "p2p-annex: serve: already running for this repository (pid {})",
        serve.pid()
    );
    assert!(
        second.stderr.lines().count() == 1 && second.stderr.starts_with(&want),
        "second serve's message: {}",
        second.describe()
    );

    // kill -9 of remotedaemon: serving again within seconds.
    let killed = Instant::now();
    kill(Pid::from_raw(daemon.pid as i32), Signal::SIGKILL).expect("kill -9 remotedaemon");
    let (daemon2, _) = wait_serving(&serve, port, Some(daemon.pid));
    let restart = killed.elapsed();
    eprintln!(
        "serve: listening again {:.2} s after kill -9 of remotedaemon",
        restart.as_secs_f64()
    );
    assert!(
        restart < Duration::from_secs(10),
        "remotedaemon took {restart:?} to serve again"
    );
    let second_file = pseudo_random(12, 100 * 1024);
    a.write("second.bin", &second_file);
    a.add_and_commit(&["second.bin"], "second");
    fetch_and_merge(&b);
    b.annex(&["get", "--from", "peerA", "second.bin"]);
    assert!(
        b.read("second.bin") == second_file,
        "second.bin differs in B"
    );
    let status = p2p(&a, &["status"]).ok();
    assert!(
        status
            .stdout
            .contains(&format!("1 restart, remotedaemon pid {} up", daemon2.pid)),
        "status after the restart:\n{}",
        status.stdout
    );

    // SIGHUP: remotedaemon started again at once, without a pause.
    let hup = Instant::now();
    kill(Pid::from_raw(serve.pid() as i32), Signal::SIGHUP).expect("SIGHUP serve");
    let (daemon3, _) = wait_serving(&serve, port, Some(daemon2.pid));
    eprintln!(
        "serve: serving again {:.2} s after SIGHUP",
        hup.elapsed().as_secs_f64()
    );
    assert!(
        !all_procs()
            .iter()
            .any(|p| p.pid == daemon2.pid && p.alive()),
        "the remotedaemon before SIGHUP still runs beside {}",
        daemon3.pid
    );

    // SIGTERM: exit 0, and nothing of the repository's left when it has.
    let asked = Instant::now();
    kill(Pid::from_raw(serve.pid() as i32), Signal::SIGTERM).expect("SIGTERM serve");
    let ended = serve.wait(STOP);
    let stopped = asked.elapsed();
    eprintln!("serve: exited {:.2} s after SIGTERM", stopped.as_secs_f64());
    let ended = ended.unwrap_or_else(|| panic!("serve still runs {STOP:?} after SIGTERM"));
    assert_eq!(
        ended.code(),
        Some(0),
        "serve's exit: {ended:?}\n{}",
        serve.stderr()
    );
    let left: Vec<Proc> = of_repo(a.path());
    assert!(left.is_empty(), "left running after serve exited: {left:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections after serve exited"
    );
    let log = serve.stderr();
    for line in [
        "serve: started ",
        "serve: remotedaemon was killed by SIGKILL after ",
        "serve: SIGHUP: starting remotedaemon again at once",
        "serve: SIGTERM: stopped after 2 restart(s); exiting",
    ] {
        assert!(log.contains(line), "serve's stderr lacks {line:?}:\n{log}");
    }
    // The same lines in its log file; the lock record is cleared.
    let file = std::fs::read_to_string(a.path().join(".git/annex/p2p-annex.serve.log"))
        .expect("serve's log file");
    assert!(file.contains("SIGTERM: stopped"), "serve.log:\n{file}");
    let status = p2p(&a, &["status"]).ok();
    assert!(
        !status.stdout.contains("serve (pid"),
        "status after a clean stop:\n{}",
        status.stdout
    );
    drop(serve);
    env.assert_no_leftover_processes();
}

/// A remotedaemon that dies at once, again and again: the pause before
/// each new start doubles (0.5, 1, 2 s), its output is logged, and serve
/// still stops at once on SIGTERM (here in the middle of a pause).
#[test]
fn serve_backs_off_when_remotedaemon_keeps_dying() {
    let mut env = Env::new("serve-backoff");
    enable_tcp(&env.repo("a"));
    // A `git-annex` first on serve's PATH that fails at once.
    let fake = env.root().join("fake-bin");
    std::fs::create_dir_all(&fake).expect("mkdir fake-bin");
    let script = fake.join("git-annex");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"fake remotedaemon: giving up\" >&2\nexit 3\n",
    )
    .expect("write fake git-annex");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod fake git-annex");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Only serve gets the fake: the repository was made with the real one.
    env.set_var("PATH", &path);
    let a = env.existing_repo("a");
    let started = Instant::now();
    let mut serve = start_serve(&env, &a, &[]);
    let want = [
        "remotedaemon exited with status 3 after ",
        "starting it again in 0.5 s",
        "starting it again in 1.0 s",
        "starting it again in 2.0 s",
    ];
    while !serve.stderr().contains(want[3]) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no third restart after 30 s:\n{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let log = serve.stderr();
    for line in want {
        assert!(log.contains(line), "serve's stderr lacks {line:?}:\n{log}");
    }
    assert!(
        log.contains("serve: remotedaemon: fake remotedaemon: giving up"),
        "remotedaemon's own output is not logged:\n{log}"
    );
    // Three pauses (0.5 + 1 s) before the third exit: not a tight loop.
    assert!(
        elapsed >= Duration::from_millis(1500),
        "three restarts within {elapsed:?}: the pauses did not grow"
    );
    assert_eq!(log.matches("serve: started ").count(), 3, "{log}");
    let asked = Instant::now();
    kill(Pid::from_raw(serve.pid() as i32), Signal::SIGTERM).expect("SIGTERM serve");
    let ended = serve.wait(STOP).expect("serve stops during a pause");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "SIGTERM during a 2 s pause took {:?}",
        asked.elapsed()
    );
    assert_eq!(ended.code(), Some(0), "{}", serve.stderr());
    drop(serve);
    env.assert_no_leftover_processes();
}

/// A remotedaemon started by hand: check warns that it runs without the
/// workaround, and serve refuses to start beside it.
#[test]
fn serve_refuses_a_plain_remotedaemon_and_check_warns() {
    let env = Env::new("serve-plain");
    let a = env.repo("a");
    enable_tcp(&a);
    let daemon = a.start_remotedaemon();
    let pid = daemon.pids()[0];

    let check = p2p(&a, &["check"]).run();
    let warning = format!(
        "warn  remotedaemon runs without the CONNECTDONE workaround: fetches may hang; \
         run it under `p2p-annex serve` (pid {pid})"
    );
    let fix = format!(
        "fix: `kill {pid}`, then `p2p-annex serve {}`",
        a.path().display()
    );
    assert!(
        check.stdout.contains(&warning) && check.stdout.contains(&fix),
        "check beside a plain remotedaemon:\n{}",
        check.describe()
    );

    let refused = p2p(&a, &["serve"]).deadline(Duration::from_secs(20)).run();
    assert_eq!(
        refused.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        refused.describe()
    );
    assert_eq!(
        refused.stderr.trim_end(),
        format!(
            "p2p-annex: serve: a remotedaemon already runs for {} (pid {pid}): stop it with \
             `kill {pid}`, then start serve again",
            a.path().display()
        )
    );
    daemon.stop();
    env.assert_no_leftover_processes();
}

/// serve killed with SIGKILL: remotedaemon sees EOF on its stdin and goes,
/// check reports the stale lock, and the next serve takes over (here with
/// --no-git-shim, which check reports).
#[test]
fn serve_killed_leaves_a_stale_lock_and_no_daemon() {
    let env = Env::new("serve-stale");
    let a = env.repo("a");
    let port = enable_tcp(&a);
    let mut serve = start_serve(&env, &a, &[]);
    let (daemon, _) = wait_serving(&serve, port, None);
    let old = serve.pid();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill -9 serve");
    serve.wait(STOP).expect("serve killed");
    let gone = Instant::now();
    while all_procs().iter().any(|p| p.pid == daemon.pid && p.alive()) {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "remotedaemon outlived its serve (killed) by 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let check = p2p(&a, &["check"]).run();
    assert!(
        check.stdout.contains(&format!(
            "warn  p2p-annex serve (pid {old}) is gone without stopping cleanly (killed?)"
        )),
        "check after serve was killed:\n{}",
        check.describe()
    );
    // Its orphaned listener may still be on its way out; the new serve
    // waits for it. Without the shim, check says so.
    let mut next = start_serve(&env, &a, &["--no-git-shim"]);
    let (daemon, _) = wait_serving(&next, port, None);
    let check = p2p(&a, &["check"]).run();
    assert!(
        check.stdout.contains(&format!(
            "warn  remotedaemon runs without the CONNECTDONE workaround: fetches may hang; \
             run it under `p2p-annex serve` (pid {}: serve runs it with --no-git-shim)",
            daemon.pid
        )) && check
            .stdout
            .contains(&format!("ok    p2p-annex serve runs (pid {}", next.pid())),
        "check with serve --no-git-shim:\n{}",
        check.describe()
    );
    kill(Pid::from_raw(next.pid() as i32), Signal::SIGTERM).expect("SIGTERM serve");
    let ended = next.wait(STOP).expect("serve stops");
    assert_eq!(ended.code(), Some(0), "{}", next.stderr());
    drop(next);
    env.assert_no_leftover_processes();
}

/// Started by root for a repository another user owns: serve becomes that
/// user (remotedaemon and its listener run with their uid), and git does
/// not refuse the repository.
#[test]
fn serve_as_root_becomes_the_owner() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (CI runs as root): it checks that serve drops root");
    }
    let env = Env::new("serve-root");
    let a = env.repo("a");
    let port = enable_tcp(&a);
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a `nobody` user");
    chown_tree(a.path(), nobody.uid.as_raw(), nobody.gid.as_raw());
    let mut serve = start_serve(&env, &a, &[]);
    let (daemon, listener) = wait_serving(&serve, port, None);
    for p in [&daemon, &listener] {
        assert_eq!(uid_of(p.pid), nobody.uid.as_raw(), "uid of {p:?}");
    }
    assert_eq!(uid_of(serve.pid()), nobody.uid.as_raw(), "serve's own uid");
    assert!(
        serve
            .stderr()
            .contains("as nobody (its owner; started as root)"),
        "{}",
        serve.stderr()
    );
    kill(Pid::from_raw(serve.pid() as i32), Signal::SIGTERM).expect("SIGTERM serve");
    let ended = serve.wait(STOP).expect("serve stops");
    assert_eq!(ended.code(), Some(0), "{}", serve.stderr());
    drop(serve);
    env.assert_no_leftover_processes();
}

// ---------------------------------------------------------------------------

fn p2p<'e>(repo: &Repo<'e>, args: &[&str]) -> crate::support::annex::Cmd<'e> {
    let bin = crate::support::bin();
    repo.cmd(bin.to_str().expect("UTF-8 binary path"), args)
}

fn start_serve<'e>(_env: &'e Env, repo: &Repo<'e>, extra: &[&str]) -> Background<'e> {
    let mut args = vec!["serve"];
    args.extend_from_slice(extra);
    p2p(repo, &args).spawn()
}

/// Enable tcp on loopback; the port address mode picked.
fn enable_tcp(a: &Repo) -> u16 {
    a.config("p2p-annex.tcp.address", "127.0.0.1");
    a.annex(&["p2p", "--enable", "tcp"]);
    a.config_get_all("p2p-annex.tcp.port")
        .first()
        .and_then(|p| p.parse().ok())
        .expect("p2p-annex.tcp.port after enable")
}

fn single_address(a: &Repo) -> Secret {
    let mut found = a.gen_addresses("tcp");
    assert_eq!(found.len(), 1, "addresses of A: {found:?}");
    found.remove(0)
}

fn fetch_and_merge(b: &Repo) {
    b.cmd("git", &["fetch", "-q", "peerA"])
        .deadline(Duration::from_secs(60))
        .ok();
    b.annex(&["merge"]);
    b.git(&["merge", "-q", "--ff-only", "peerA/main"]);
}

/// Wait until serve runs a remotedaemon (not `old`) with a live listener
/// under it and the port accepts connections; (remotedaemon, listener).
fn wait_serving(serve: &Background, port: u16, old: Option<u32>) -> (Proc, Proc) {
    let start = Instant::now();
    loop {
        let table = all_procs();
        let daemon = table.iter().find(|p| {
            p.ppid == serve.pid() && p.alive() && p.is_remotedaemon() && Some(p.pid) != old
        });
        let listener = daemon.and_then(|d| {
            table
                .iter()
                .find(|p| p.ppid == d.pid && p.alive() && p.is_p2p_helper())
        });
        if let (Some(d), Some(l)) = (daemon, listener) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (d.clone(), l.clone());
            }
        }
        assert!(
            start.elapsed() < UP,
            "serve (pid {}) does not serve port {port} after {UP:?}; stderr:\n{}",
            serve.pid(),
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_runs_as_helper(listener: &Proc) {
    assert!(
        listener.argv.len() == 3,
        "listener command line: {:?}",
        listener.argv
    );
}

/// remotedaemons and helpers of ours still running in `dir`.
fn of_repo(dir: &Path) -> Vec<Proc> {
    all_procs()
        .into_iter()
        .filter(|p| p.alive() && p.cwd.as_deref() == Some(dir))
        .filter(|p| p.is_remotedaemon() || p.is_p2p_helper())
        .collect()
}

fn uid_of(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.uid())
        .unwrap_or_else(|e| panic!("/proc/{pid}: {e}"))
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    if dir.is_symlink() || !dir.is_dir() {
        return;
    }
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        chown_tree(&entry.expect("dir entry").path(), uid, gid);
    }
}
