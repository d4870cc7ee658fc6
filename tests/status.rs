//! `p2p-annex status`: a repository's listeners, their open connections
//! with live byte counts, and the last errors of their logs.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::annex::Env;
use crate::support::peers::*;
use crate::support::*;

fn git_init(dir: &Path) {
    let out = Command::new("git")
        .args(["init", "-q"])
        .arg(dir)
        .output()
        .expect("git init");
    assert!(out.status.success(), "git init");
}

fn status(repo: &Path, json: bool) -> String {
    let mut cmd = p2p(repo);
    cmd.arg("status").current_dir(repo);
    if json {
        cmd.arg("--json");
    }
    let (st, stdout, stderr) = run(&mut cmd);
    assert!(st.success(), "status failed: {stderr}");
    stdout
}

/// The `bytes_in` numbers of every connection in `status --json`.
fn bytes_in(json: &str) -> Vec<u64> {
    json.split("\"bytes_in\": ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn status_shows_an_ongoing_transfer_with_growing_byte_counts() {
    let home = TempDir::new("status-live");
    let repo = home.path().join("repo");
    git_init(&repo);
    // git-annex's side, played by a slow reader: ~6 MB/s.
    let socket = home.path().join("annex.sock");
    let unix = UnixListener::bind(&socket).expect("bind");
    let reader = thread::spawn(move || {
        let (mut conn, _) = unix.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
            thread::sleep(Duration::from_millis(10));
        }
        total
    });
    let (listener, port) = tcp_listener(&repo, &socket, &[]);
    assert!(status(&repo, false).contains("no connections open"));

    const TOTAL: usize = 24 << 20;
    let sender = thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        send_stream(&mut stream, 1, TOTAL).expect("send");
    });
    // The connection shows up, and its count grows while it flows.
    let deadline = Instant::now() + DEADLINE;
    let mut seen: Vec<u64> = Vec::new();
    while seen.len() < 2 || seen[0] >= *seen.last().expect("two") {
        assert!(
            Instant::now() < deadline,
            "byte counts did not grow: {seen:?}"
        );
        if let Some(&n) = bytes_in(&status(&repo, true)).first() {
            if n > 0 {
                seen.push(n);
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let text = status(&repo, false);
    assert!(text.contains("1 connection open (max 100)"), "{text}");
    assert!(text.contains("  127.0.0.1:"), "{text}");
    assert!(
        text.contains(&format!("(pid {})", listener.pid())),
        "{text}"
    );
    sender.join().expect("sender");
    assert_eq!(reader.join().expect("reader"), TOTAL);
    eprintln!("status: bytes in seen growing {seen:?}");
    assert!(
        wait_until(DEADLINE, || status(&repo, false)
            .contains("no connections open")),
        "the connection never left the status"
    );
}

#[test]
fn status_tidies_after_a_killed_listener_and_shows_log_errors() {
    let home = TempDir::new("status-stale");
    let repo = home.path().join("repo");
    git_init(&repo);
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    // As under remotedaemon: stderr is /dev/null, so the log goes to
    // .git/annex/ (which git-annex has made by then).
    std::fs::create_dir_all(repo.join(".git/annex")).expect("mkdir");
    let log = repo.join(".git/annex/p2p-annex.tcp.log");
    let port = free_port();
    let mut cmd = p2p(&repo);
    cmd.args(["tcp", &format!("127.0.0.1:{port}")])
        .arg(&socket)
        .current_dir(&repo)
        .stderr(std::process::Stdio::null());
    with_config(&mut cmd, &[("p2p-annex.tcp.allow", "10.0.0.0/8")]);
    let listener = Proc::spawn(&mut cmd);
    let logged = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(what)
    };
    assert!(
        wait_until(DEADLINE, || logged("listening on")),
        "listener did not start"
    );
    // A refused peer leaves an error line in the log.
    let mut refused = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = refused.read_to_end(&mut Vec::new());
    assert!(
        wait_until(DEADLINE, || logged("refused")),
        "no refusal logged"
    );
    let text = status(&repo, false);
    assert!(text.contains("tcp 127.0.0.1:"), "{text}");
    assert!(text.contains("last errors in"), "{text}");
    assert!(text.contains("refused: not in the allow-list"), "{text}");

    // SIGKILL leaves the status socket behind; status removes it.
    let pid = listener.pid();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
    let dir = repo.join(".git/annex/p2p-annex");
    let leftover = dir.join(format!("tcp.{pid}.sock"));
    assert!(leftover.exists(), "the killed listener's status socket");
    assert!(
        wait_until(DEADLINE, || status(&repo, false)
            .starts_with("no listener of ours is running")),
        "status still lists the killed listener"
    );
    assert!(!leftover.exists(), "stale status socket left behind");
}

#[test]
fn status_lists_remotedaemons_listeners() {
    let env = Env::new("status-daemon");
    let a = env.repo("a");
    a.config("p2p-annex.tcp.address", "127.0.0.1");
    a.annex(&["p2p", "--enable", "tcp"]);
    a.annex(&["p2p", "--enable", "unix-sockets"]);
    let daemon = a.start_remotedaemon();
    let port = a.config_get_all("p2p-annex.tcp.port").remove(0);
    // remotedaemon has started both listeners; each answers once it is set up.
    let want = format!("tcp 127.0.0.1:{port} (pid ");
    let mut shown = String::new();
    let listed = wait_until(DEADLINE, || {
        shown = a
            .cmd(&crate::support::bin().to_string_lossy(), &["status"])
            .ok()
            .stdout;
        shown.contains(&want) && shown.contains("unix-sockets ")
    });
    assert!(listed, "listeners missing from:\n{shown}");
    assert!(shown.contains("no connections open"), "{shown}");
    // Its log is where remotedaemon's /dev/null sends it, and clean.
    assert!(!shown.contains("last errors"), "{shown}");
    daemon.stop();
    env.assert_no_leftover_processes();
}
