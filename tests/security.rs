//! Hostile local users and hostile peers (SECURITY.md): another account
//! planting socket files and directories, peers that echo the auth token,
//! remote URLs that carry shell commands or escape sequences, status
//! sockets that never finish, logs through planted links. Each case
//! asserts the exact exit status and message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::account::{Account, skip_unless_root};
use crate::support::peers::reversing_server;
use crate::support::*;

fn dir_config(cmd: &mut Command, dir: &Path) {
    with_config(
        cmd,
        &[("p2p-annex.unix-sockets.dir", dir.to_str().expect("UTF-8"))],
    );
}

/// A directory anyone may write to, as /tmp is (sticky, 1777).
fn shared_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    dir
}

/// Run to completion, at most `DEADLINE` (the process is killed after):
/// (status, stdout, stderr). A regression here is a hang, which must fail.
fn run(cmd: &mut Command) -> (std::process::ExitStatus, String, String) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = TempDir::new(&format!("sec-run-{n}"));
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut proc = Proc::spawn(
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file")),
    );
    let status = proc.expect_exit(DEADLINE);
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).expect("read")).into_owned();
    (status, read(&out), read(&err))
}

/// The last line of stderr (listen mode logs before it fails).
fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or("")
}

// ---------------------------------------------------------------------------
// unix-sockets: another local user

#[test]
fn a_planted_socket_is_refused_and_gets_no_byte() {
    if skip_unless_root("a_planted_socket_is_refused_and_gets_no_byte") {
        return;
    }
    let home = TempDir::new("sec-planted");
    let mallory = Account::create("a");
    let shared = shared_dir(home.path(), "shared");
    let loot = mallory.own_dir(home.path(), "loot");
    let token = "6f1c0a3e9b27d544";
    let planted = shared.join(token);
    // The attacker listens where the victim will connect; socat opens its
    // output file only once a client connects.
    let mut attacker = attacker_socket(&mallory, &planted, &loot);
    assert!(
        wait_until(DEADLINE, || planted.exists()),
        "socat did not listen"
    );

    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token]);
    dir_config(&mut cmd, &shared);
    let (status, stdout, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "p2p-annex: unix-sockets: refusing {}: the socket file belongs to uid {uid} ({}), \
             not this user or root; if you trust that user, \
             `git config p2p-annex.unix-sockets.trust-uid {uid}`\n",
            planted.display(),
            mallory.name,
            uid = mallory.uid
        )
    );
    // Not one connection, so not one byte.
    assert!(attacker.wait_timeout(Duration::from_millis(500)).is_none());
    assert!(
        !loot.join("got").exists(),
        "the planted socket was connected to"
    );

    // Were the file check fooled (here: the file handed to root), the
    // listening process is still the attacker's: refused after connecting
    // (SO_PEERCRED), before sending anything.
    std::os::unix::fs::lchown(&planted, Some(0), Some(0)).expect("lchown");
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "p2p-annex: unix-sockets: refusing {}: the process listening there runs as uid \
             {uid} ({}), not this user or root; if you trust that user, \
             `git config p2p-annex.unix-sockets.trust-uid {uid}`\n",
            planted.display(),
            mallory.name,
            uid = mallory.uid
        )
    );
    assert!(attacker.expect_exit(DEADLINE).success());
    assert_eq!(std::fs::read(loot.join("got")).expect("loot"), b"");
    std::fs::remove_file(loot.join("got")).expect("rm");
    // Now root's, in a sticky directory: socat could not remove it.
    let _ = std::fs::remove_file(&planted);
    let mut attacker = attacker_socket(&mallory, &planted, &loot);
    assert!(
        wait_until(DEADLINE, || std::fs::symlink_metadata(&planted)
            .is_ok_and(|m| m.uid() == mallory.uid)),
        "socat did not listen again"
    );

    // The same attacker gets everything once the victim trusts it: the
    // setup above would have seen a connection.
    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    with_config(
        &mut cmd,
        &[
            (
                "p2p-annex.unix-sockets.dir",
                shared.to_str().expect("UTF-8"),
            ),
            ("p2p-annex.unix-sockets.trust-uid", &mallory.uid.to_string()),
        ],
    );
    let mut victim = Proc::spawn(&mut cmd);
    victim
        .child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"AUTH u s3cret\n")
        .expect("write");
    assert!(victim.expect_exit(DEADLINE).success());
    assert!(attacker.expect_exit(DEADLINE).success());
    assert_eq!(
        std::fs::read(loot.join("got")).expect("loot"),
        b"AUTH u s3cret\n"
    );
}

#[test]
fn a_planted_link_to_our_own_socket_is_refused() {
    if skip_unless_root("a_planted_link_to_our_own_socket_is_refused") {
        return;
    }
    let home = TempDir::new("sec-plantlink");
    let mallory = Account::create("e");
    let shared = shared_dir(home.path(), "shared");
    // A socket of ours that the attacker would have us reach by its name.
    let ours = home.path().join("annex.sock");
    let _server = UnixListener::bind(&ours).expect("bind");
    let token = "1764601234";
    let link = shared.join(token);
    mallory.sh(&format!("ln -s {} {}", ours.display(), link.display()));
    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token]);
    dir_config(&mut cmd, &shared);
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "p2p-annex: unix-sockets: refusing {}: the symbolic link belongs to uid {uid} ({}), \
             not this user or root; if you trust that user, \
             `git config p2p-annex.unix-sockets.trust-uid {uid}`\n",
            link.display(),
            mallory.name,
            uid = mallory.uid
        )
    );
}

#[test]
fn git_annex_demo_script_peers_interoperate_in_a_shared_directory() {
    // git-annex's example script (doc/special_remotes/p2p/
    // git-annex-p2p-unix-sockets) listens by linking /tmp/ADDRESS to
    // git-annex's socket, and connects with `socat - UNIX-CONNECT:/tmp/ADDRESS`.
    // The same two moves here, in a shared directory of the test's.
    let home = TempDir::new("sec-demo");
    let shared = shared_dir(home.path(), "shared");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);

    // Their listener, our connect: the link is ours, and leads to our socket.
    let token = "1764600000";
    std::os::unix::fs::symlink(&socket, shared.join(token)).expect("ln -s");
    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    dir_config(&mut cmd, &shared);
    let mut client = Proc::spawn(&mut cmd);
    client
        .child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello")
        .expect("write");
    let mut got = String::new();
    client
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut got)
        .expect("read");
    assert_eq!(got, "olleh");
    assert!(client.expect_exit(DEADLINE).success());

    // Our listener, their connect.
    let token = "1764600001";
    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token]).arg(&socket);
    dir_config(&mut cmd, &shared);
    let mut listener = Proc::spawn_logged(&mut cmd);
    listener.wait_for_stderr("listening on", DEADLINE);
    let mut socat = Proc::spawn(
        Command::new("socat")
            .arg("-")
            .arg(format!("UNIX-CONNECT:{}", shared.join(token).display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    socat
        .child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"world")
        .expect("write");
    let mut got = String::new();
    socat
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut got)
        .expect("read");
    assert_eq!(got, "dlrow");
    assert!(socat.expect_exit(DEADLINE).success());
}

#[test]
fn a_planted_socket_directory_is_refused() {
    if skip_unless_root("a_planted_socket_directory_is_refused") {
        return;
    }
    let home = TempDir::new("sec-plantdir");
    let mallory = Account::create("b");
    let run_dir = shared_dir(home.path(), "run");
    let ours = run_dir.join("p2p-annex");
    let token = "0123456789abcdef";
    let socket = home.path().join("annex.sock");
    let _server = UnixListener::bind(&socket).expect("bind");
    let attempt = |listen: bool| {
        let mut cmd = p2p(home.path());
        cmd.args(["unix-sockets", token]);
        if listen {
            cmd.arg(&socket);
        }
        cmd.env("XDG_RUNTIME_DIR", &run_dir);
        let (status, _, stderr) = run(&mut cmd);
        (status.code(), last_line(&stderr).to_string())
    };
    let refused = |problem: &str| {
        (
            Some(1),
            format!(
                "p2p-annex: unix-sockets: refusing socket directory {}: {problem}; remove it \
                 (another user may have made it), or set p2p-annex.unix-sockets.dir to a \
                 directory of your own",
                ours.display()
            ),
        )
    };

    // A symbolic link to a directory of the attacker's.
    mallory.sh(&format!(
        "mkdir {0}/mine && ln -s mine {0}/p2p-annex",
        run_dir.display()
    ));
    assert_eq!(attempt(false), refused("it is a symbolic link"));
    assert_eq!(attempt(true), refused("it is a symbolic link"));
    let planted: Vec<_> = std::fs::read_dir(run_dir.join("mine"))
        .expect("ls")
        .collect();
    assert!(planted.is_empty(), "files made in the attacker's directory");

    // A directory of the attacker's.
    mallory.sh(&format!(
        "rm {0}/p2p-annex && mkdir -m 700 {0}/p2p-annex",
        run_dir.display()
    ));
    let foreign = format!(
        "it belongs to uid {} ({}), not to this user (uid 0 (root))",
        mallory.uid, mallory.name
    );
    assert_eq!(attempt(false), refused(&foreign));
    assert_eq!(attempt(true), refused(&foreign));

    // Ours, but anyone may write to it.
    mallory.sh(&format!("rmdir {0}/p2p-annex", run_dir.display()));
    std::fs::create_dir(&ours).expect("mkdir");
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert_eq!(
        attempt(false),
        refused("it is writable by group or others (mode 0777)")
    );

    // Missing: made private, then used.
    std::fs::remove_dir(&ours).expect("rmdir");
    assert_eq!(
        attempt(false),
        (
            Some(1),
            format!(
                "p2p-annex: unix-sockets: cannot connect to {}/{token}: no such file or directory",
                ours.display()
            )
        )
    );
    let meta = std::fs::symlink_metadata(&ours).expect("made");
    assert!(meta.is_dir() && meta.uid() == 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
}

#[test]
fn the_listener_never_replaces_a_foreign_socket_file() {
    if skip_unless_root("the_listener_never_replaces_a_foreign_socket_file") {
        return;
    }
    let home = TempDir::new("sec-replace");
    let mallory = Account::create("c");
    let shared = shared_dir(home.path(), "shared");
    let token = "fedcba9876543210";
    let planted = shared.join(token);
    // A socket file nobody listens on: what a killed listener leaves, and
    // what the old code removed and replaced.
    let out = mallory
        .command("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
        ])
        .arg(&planted)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::symlink_metadata(&planted).expect("planted");
    let socket = home.path().join("annex.sock");
    let _server = UnixListener::bind(&socket).expect("bind");
    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token]).arg(&socket);
    dir_config(&mut cmd, &shared);
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "p2p-annex: unix-sockets: refusing {}: a socket file of uid {} ({}) is there; \
             not replacing it",
            planted.display(),
            mallory.uid,
            mallory.name
        )
    );
    let after = std::fs::symlink_metadata(&planted).expect("still there");
    assert_eq!(
        (after.ino(), after.uid()),
        (before.ino(), mallory.uid),
        "the foreign file was replaced"
    );
}

#[test]
fn unix_sockets_connect_honours_connect_timeout() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let home = TempDir::new("sec-backlog");
    let dir = home.path().join("net");
    std::fs::create_dir(&dir).expect("mkdir");
    let token = "00aa11bb22cc33dd";
    let path = dir.join(token);
    // A listener that never accepts, with room for one waiting peer: the
    // second connect waits for room.
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(&path).expect("addr"),
    )
    .expect("bind");
    listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
    let _first = std::os::unix::net::UnixStream::connect(&path).expect("first connect");
    let mut cmd = p2p(home.path());
    cmd.args(["unix-sockets", token]);
    with_config(
        &mut cmd,
        &[
            ("p2p-annex.unix-sockets.dir", dir.to_str().expect("UTF-8")),
            ("p2p-annex.unix-sockets.connect-timeout", "1s"),
        ],
    );
    let start = Instant::now();
    let (status, _, stderr) = run(&mut cmd);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "p2p-annex: unix-sockets: cannot connect to {}: connection timed out\n",
            path.display()
        )
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("full backlog: gave up after {took:?} (connect-timeout 1s)");
}

// ---------------------------------------------------------------------------
// check: hostile peers and hostile remote URLs

const UUID: &str = "11111111-2222-4333-8444-555555555555";
/// Mixed case, so that a peer changing its case changes it.
const TOKEN: &str = "Zk4eW9xQm2Lr7TyBvN3s";

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A git repository with an annex.uuid, and nothing of git-annex's else.
fn bare_repo(home: &Path) -> PathBuf {
    let repo = home.join("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    git(&repo, &["config", "annex.uuid", UUID]);
    std::fs::create_dir_all(repo.join(".git/annex/creds")).expect("mkdir creds");
    repo
}

fn check(repo: &Path, json: bool) -> (Option<i32>, String, String) {
    let mut cmd = p2p(repo);
    cmd.arg("check").current_dir(repo);
    if json {
        cmd.arg("--json");
    }
    let (status, stdout, stderr) = run(&mut cmd);
    (status.code(), stdout, stderr)
}

/// How the fake peer answers AUTH.
#[derive(Clone, Copy, Debug)]
enum Echo {
    /// The whole line back.
    Same,
    /// The whole line back, upper-cased.
    Upper,
    /// An error quoting the line, the token split across two writes.
    Split,
    /// AUTH-SUCCESS with the token, lower-cased, for a UUID.
    Success,
}

/// A peer that answers each connection's AUTH line as `echo` says.
fn echoing_peer(echo: Echo) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let _ = conn.set_nodelay(true);
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let _ = match echo {
                Echo::Same => conn.write_all(line.as_bytes()),
                Echo::Upper => conn.write_all(line.to_uppercase().as_bytes()),
                Echo::Split => {
                    let cut = line.len() - 10;
                    let _ = conn.write_all(format!("ERROR unknown: {}", &line[..cut]).as_bytes());
                    // Two segments, so two reads on the other side.
                    thread::sleep(Duration::from_millis(200));
                    conn.write_all(&line.as_bytes()[cut..])
                }
                Echo::Success => {
                    conn.write_all(format!("AUTH-SUCCESS {}\n", TOKEN.to_lowercase()).as_bytes())
                }
            };
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
        }
    });
    port
}

#[test]
fn check_never_prints_a_token_a_peer_echoes() {
    let home = TempDir::new("sec-echo");
    let repo = bare_repo(home.path());
    for (i, (echo, want)) in [
        (Echo::Same, format!("FAIL  remote p{{i}} (tcp:127.0.0.1:{{port}}): unexpected answer to AUTH: \"AUTH {UUID} <redacted>\"")),
        (Echo::Upper, format!("FAIL  remote p{{i}} (tcp:127.0.0.1:{{port}}): unexpected answer to AUTH: \"AUTH {} <redacted>\"", UUID.to_uppercase())),
        (Echo::Split, format!("FAIL  remote p{{i}} (tcp:127.0.0.1:{{port}}): unexpected answer to AUTH: \"ERROR unknown: AUTH {UUID} <redacted>\"")),
        (Echo::Success, "ok    remote p{i} (tcp:127.0.0.1:{port}): the peer accepts our auth token (AUTH-SUCCESS from <redacted>)".to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        let port = echoing_peer(echo);
        let address = format!("127.0.0.1:{port}");
        git(&repo, &["config", &format!("remote.p{i}.url"), &format!("p2p-annex::tcp:{address}")]);
        let creds = repo
            .join(".git/annex/creds")
            .join(format!("tcp%3A127%2E0%2E0%2E1%3A{port}"));
        std::fs::write(&creds, format!("{TOKEN}\n")).expect("creds");
        let want = want.replace("{i}", &i.to_string()).replace("{port}", &port.to_string());
        for json in [false, true] {
            let (code, stdout, stderr) = check(&repo, json);
            assert_eq!(code, Some(1), "{echo:?}: {stderr}");
            assert!(
                !stdout.to_lowercase().contains(&TOKEN.to_lowercase())
                    && !stderr.to_lowercase().contains(&TOKEN.to_lowercase()),
                "{echo:?} json={json}: the token is in:\n{stdout}{stderr}"
            );
            if json {
                let what = want[6..].replace('"', "\\\"");
                assert!(stdout.contains(&format!("\"what\": \"{what}\"")), "{echo:?}:\n{stdout}");
            } else {
                assert!(stdout.lines().any(|l| l == want), "{echo:?}: no line {want:?} in:\n{stdout}");
            }
        }
        std::fs::remove_file(&creds).expect("rm creds");
        git(&repo, &["config", "--unset", &format!("remote.p{i}.url")]);
    }
}

/// Every `git …` command line between backquotes in `text`.
fn suggested_git_commands(text: &str) -> Vec<String> {
    text.lines()
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter(|c| c.starts_with("git "))
        .map(str::to_string)
        .collect()
}

#[test]
fn check_advice_is_shell_quoted_and_control_characters_are_escaped() {
    let home = TempDir::new("sec-advice");
    let repo = bare_repo(home.path());
    let marker = home.path().join("pwned");
    let m = marker.display();
    // A netname carrying a command, a remote name carrying one, an
    // address ending in an escape sequence, one with a forged line.
    for json in [false, true] {
        // Again for each run: running the advice removes some.
        git(
            &repo,
            &[
                "config",
                "remote.evil.url",
                &format!("p2p-annex::x;touch {m};:10.0.0.1:1"),
            ],
        );
        git(
            &repo,
            &[
                "config",
                &format!("remote.n;touch {m};.url"),
                "p2p-annex::tcp:[::1]:5599",
            ],
        );
        git(
            &repo,
            &[
                "config",
                "remote.esc.url",
                "p2p-annex::tcp:10.0.0.1:1\x1b[2J",
            ],
        );
        git(
            &repo,
            &[
                "config",
                "remote.nl.url",
                "p2p-annex::tcp:10.0.0.1:1\nFAIL  forged",
            ],
        );
        let (code, stdout, stderr) = check(&repo, json);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            !stdout.contains('\x1b'),
            "a raw escape character:\n{stdout}"
        );
        assert!(
            !stdout.lines().any(|l| l.starts_with("FAIL  forged")),
            "{stdout}"
        );
        let stdout = if json {
            // The advice as a user would read it.
            stdout.replace("\\\"", "\"").replace("\\\\", "\\")
        } else {
            stdout
        };
        let commands = suggested_git_commands(&stdout);
        assert!(commands.len() >= 5, "{commands:?}\n{stdout}");
        // Pasting the advice runs what it says and nothing else.
        for command in &commands {
            let _ = Command::new("sh")
                .args(["-c", command])
                .current_dir(&repo)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .expect("sh");
            assert!(!marker.exists(), "`{command}` ran an injected command");
        }
        if !json {
            let lines: Vec<&str> = stdout.lines().collect();
            let evil = lines
                .iter()
                .position(|l| l.starts_with("FAIL  remote evil:"))
                .unwrap_or_else(|| panic!("no evil line:\n{stdout}"));
            assert_eq!(
                lines[evil],
                format!(
                    "FAIL  remote evil: URL p2p-annex::x;touch {m};:10.0.0.1:1: bad netname \
                     \"x;touch {m};\" (expected a letter or digit, then letters, digits, '-' or '_')"
                )
            );
            assert_eq!(
                lines[evil + 1],
                "      fix: `git remote remove evil`, then link the peer again with `git annex p2p \
                 --link` and a line from its `git annex p2p --gen-addresses`"
            );
            assert!(
                lines.contains(
                    &"FAIL  remote esc (tcp:10.0.0.1:1\\x1b[2J): malformed address: \
                                 bad port \"1\\u{1b}[2J\" (expected 1-65535)"
                ),
                "{stdout}"
            );
            assert!(
                lines.iter().any(|l| l.starts_with(&format!(
                    "      fix: get a new line from the peer's `git annex p2p --gen-addresses` \
                     (p2p-annex prints IPv6 without brackets), then `git remote remove \
                     'n;touch {m};'`"
                ))),
                "{stdout}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// status: sockets that never finish

/// A fake status socket in `repo` that sends `chunk` every `every` until
/// the reader goes.
fn fake_status_socket(repo: &Path, name: &str, chunk: Vec<u8>, every: Duration) {
    let dir = repo.join(".git/annex/p2p-annex");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let listener = UnixListener::bind(dir.join(name)).expect("bind");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let chunk = chunk.clone();
            thread::spawn(move || {
                while conn.write_all(&chunk).is_ok() {
                    thread::sleep(every);
                }
            });
        }
    });
}

fn status(repo: &Path, json: bool) -> (Option<i32>, String, Duration) {
    let mut cmd = p2p(repo);
    cmd.arg("status").current_dir(repo);
    if json {
        cmd.arg("--json");
    }
    let start = Instant::now();
    let (st, stdout, stderr) = run(&mut cmd);
    assert_eq!(stderr, "");
    (st.code(), stdout, start.elapsed())
}

const NO_LISTENER: &str = "no listener of ours is running for this repository (is `git annex \
                           remotedaemon` running? `p2p-annex check` says more)\n";

#[test]
fn status_gives_up_on_slow_sockets_within_its_deadline() {
    let home = TempDir::new("sec-status-slow");
    let repo = bare_repo(home.path());
    // One byte a second: never a whole answer, never a quiet 5 s either.
    for pid in 1..=4 {
        fake_status_socket(
            &repo,
            &format!("tcp.{pid}.sock"),
            b"l".to_vec(),
            Duration::from_secs(1),
        );
    }
    let (code, stdout, took) = status(&repo, false);
    assert_eq!(code, Some(0));
    let late = "no whole answer in time (status waits 5 s for a listener, 10 s in all)";
    let want: String = std::iter::once(NO_LISTENER.to_string())
        .chain((1..=4).map(|pid| format!("could not ask a listener: tcp.{pid}.sock: {late}\n")))
        .collect();
    assert_eq!(stdout, want);
    // One overall deadline (10 s), not 5 s for each of four.
    assert!(took < Duration::from_secs(17), "took {took:?}");
    eprintln!("status with four slow sockets: {took:?}");
}

#[test]
fn status_stops_reading_an_endless_answer() {
    let home = TempDir::new("sec-status-endless");
    let repo = bare_repo(home.path());
    fake_status_socket(&repo, "tcp.7.sock", vec![b'x'; 64 * 1024], Duration::ZERO);
    let (code, stdout, took) = status(&repo, false);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        format!(
            "{NO_LISTENER}could not ask a listener: tcp.7.sock: answer longer than 1024 KiB: \
             not a listener of ours\n"
        )
    );
    eprintln!("status with an endless socket: {took:?}");
}

#[test]
fn status_redacts_tokens_and_escapes_what_listeners_say() {
    let home = TempDir::new("sec-status-redact");
    let repo = bare_repo(home.path());
    std::fs::write(repo.join(".git/annex/creds/p2pauth"), format!("{TOKEN}\n")).expect("creds");
    let answer = format!(
        "listener\t42\ttcp\t{}\x1b[2J\t{}\t100\tx\ty\n",
        TOKEN.to_uppercase(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs()
    );
    // Sent once, then the socket closes.
    let dir = repo.join(".git/annex/p2p-annex");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let listener = UnixListener::bind(dir.join("tcp.42.sock")).expect("bind");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    let (code, stdout, _) = status(&repo, false);
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("tcp <redacted>\\x1b[2J (pid 42): listening on x, up "),
        "{stdout}"
    );
    let (_, json, _) = status(&repo, true);
    assert!(
        json.contains("\"address\": \"<redacted>\\u001b[2J\""),
        "{json}"
    );
    for out in [&stdout, &json] {
        assert!(!out.to_lowercase().contains(&TOKEN.to_lowercase()), "{out}");
    }
}

// ---------------------------------------------------------------------------
// The log

/// A tcp listener of ours with `log` configured, relaying to a socket of
/// the test's; returns them and its complaint about the log.
fn listener_with_log(home: &Path, log: &Path) -> ((Proc, UnixListener), String) {
    let socket = home.join("annex.sock");
    let server = UnixListener::bind(&socket).expect("bind");
    let mut cmd = p2p(home);
    cmd.args(["tcp", &format!("127.0.0.1:{}", free_port())])
        .arg(&socket);
    with_config(
        &mut cmd,
        &[("p2p-annex.tcp.log", log.to_str().expect("UTF-8"))],
    );
    let mut proc = Proc::spawn_logged(&mut cmd);
    let line = proc.wait_for_stderr("cannot open the log file", DEADLINE);
    ((proc, server), line)
}

#[test]
fn the_log_never_follows_a_planted_link() {
    let home = TempDir::new("sec-log-link");
    let logs = home.path().join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let victim = home.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("write");
    let log = logs.join("p2p.log");
    std::os::unix::fs::symlink(&victim, &log).expect("symlink");
    let (_listener, line) = listener_with_log(home.path(), &log);
    assert!(
        line.ends_with(&format!(
            " tcp: cannot open the log file {}: too many symbolic links encountered",
            log.display()
        )),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "precious\n"
    );
}

#[test]
fn a_log_in_a_shared_directory_is_refused() {
    if skip_unless_root("a_log_in_a_shared_directory_is_refused") {
        return;
    }
    let home = TempDir::new("sec-log-shared");
    let mallory = Account::create("d");
    let shared = shared_dir(home.path(), "shared");
    let log = shared.join("p2p.log");
    // Planted before the listener starts: a file the attacker can read.
    mallory.sh(&format!("touch {0} && chmod 666 {0}", log.display()));
    let (_listener, line) = listener_with_log(home.path(), &log);
    assert!(
        line.ends_with(&format!(
            " tcp: cannot open the log file {}: refusing its directory: it is writable by \
             group or others (mode 1777)",
            log.display()
        )),
        "{line}"
    );
    assert_eq!(std::fs::read(&log).expect("read"), b"");
}

#[test]
fn a_newline_in_the_listen_address_cannot_forge_a_log_line() {
    let home = TempDir::new("sec-log-forge");
    let socket = home.path().join("annex.sock");
    let _server = UnixListener::bind(&socket).expect("bind");
    let forged = "2026-01-01T00:00:00Z p2p-annex[1] tcp: listening on 0.0.0.0:1";
    let mut cmd = p2p(home.path());
    cmd.args(["tcp", &format!("127.0.0.1:1\n{forged}")])
        .arg(&socket);
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("2026-01-01")),
        "{stderr}"
    );
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.ends_with(&format!(" for 127.0.0.1:1\\n{forged} (log: stderr)")),
        "{first}"
    );
}

/// The attacker's socat listening at `planted`, writing whatever a victim
/// sends into `loot/got` (opened only once a client connects).
fn attacker_socket(mallory: &Account, planted: &Path, loot: &Path) -> Proc {
    Proc::spawn(
        mallory
            .command("socat")
            .arg("-u")
            .arg(format!("UNIX-LISTEN:{}", planted.display()))
            .arg(format!("CREATE:{}", loot.join("got").display()))
            .stdin(Stdio::null()),
    )
}
