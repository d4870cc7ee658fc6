//! The fowl netname (`p2p-annex fowl …`, git-annex's `git-annex-p2p-fowl`)
//! against real fowld and a local magic-wormhole mailbox, from PyPI in a
//! venv under target/, inside a network namespace with loopback only
//! (tests/support/fowl.rs): fowld dials the public transit relay by itself,
//! so every command that runs fowld or talks to the mailbox runs in there.
//! Needs root (CI runs as root).
//!
//! Run alone with `cargo test --locked --test fowl -- --nocapture`: the
//! tests print what they measure (setup time per connection, throughput,
//! fowld's memory) on stderr.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::fowl::{self, FowlNet};
use support::netns::root_or_skip;
use support::peers::{answer_seed, check_exact, framed_stream_server, send_stream};
use support::{TempDir, bin, isolate, repo, wait_until, with_config};

/// How long one connection (set-up, a few MiB, close) may take before it
/// counts as hung: setup is ~1-3 s, up to ~9 s with 4 at once on 2 busy
/// cores (doc/networks/fowl.md).
const SESSION: Duration = Duration::from_secs(90);

/// How long connect mode may take to give up when no listener holds the
/// secret's slots (8 slots × ~5 s each, plus fowld's start-up).
const NO_LISTENER: Duration = Duration::from_secs(120);

/// How long connect mode may take to notice that the serving fowld died,
/// with `idle-timeout` 20 s.
const PEER_LOST: Duration = Duration::from_secs(90);

/// How long the listener may take to arm its slots.
const ARMED: Duration = Duration::from_secs(60);

/// Slots a listener keeps waiting (FOWL-SPEC: 4).
const SLOTS: usize = 4;

/// fowl's own default mailbox, which `address` names when none is set.
const PUBLIC_MAILBOX: &str = "ws://relay.magic-wormhole.io:4000/v1";

// ---------------------------------------------------------------------------
// Helpers

/// `p2p-annex.fowl.fowld` (the venv's) and `p2p-annex.fowl.mailbox`.
fn config(net: &FowlNet) -> Vec<(String, String)> {
    vec![
        (
            "p2p-annex.fowl.fowld".into(),
            fowl::fowld().display().to_string(),
        ),
        ("p2p-annex.fowl.mailbox".into(), net.mailbox_url()),
    ]
}

/// The binary under test inside the namespace, in `dir`, with `config`.
fn p2p_in(net: &FowlNet, dir: &Path, config: &[(String, String)]) -> Command {
    run_in(net, &bin(), dir, config)
}

/// `program` inside the namespace, in `dir`, with `config` and no other
/// git configuration. An entry `env:NAME` of `config` is the environment
/// variable NAME instead (`P2P_ANNEX_TEST_FOWL_WINDOW`).
fn run_in(net: &FowlNet, program: &Path, dir: &Path, config: &[(String, String)]) -> Command {
    let mut cmd = net.exec(program);
    isolate(&mut cmd, dir);
    for (k, v) in config {
        if let Some(name) = k.strip_prefix("env:") {
            cmd.env(name, v);
        }
    }
    let pairs: Vec<(&str, &str)> = config
        .iter()
        .filter(|(k, _)| !k.starts_with("env:"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    with_config(&mut cmd, &pairs);
    cmd
}

/// The fowl helper inside the namespace, in `dir`, with `config`:
/// `p2p-annex fowl`, or `git-annex-p2p-NAME` (a link to the binary) when
/// `config` makes NAME a user-defined netname with the fowl transport.
fn helper_in(net: &FowlNet, dir: &Path, config: &[(String, String)]) -> Command {
    let user = config.iter().find_map(|(k, v)| {
        (v == "fowl")
            .then(|| k.strip_prefix("p2p-annex.")?.strip_suffix(".transport"))
            .flatten()
    });
    let Some(name) = user else {
        let mut cmd = p2p_in(net, dir, config);
        cmd.arg("fowl");
        return cmd;
    };
    let link = net.dir.path().join(format!("git-annex-p2p-{name}"));
    if !link.exists() {
        support::helper_link(net.dir.path(), name);
    }
    run_in(net, &link, dir, config)
}

/// What a finished command did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Run `cmd` (stdin closed) to its end, at most `within`: killed and the
/// test failed if it takes longer.
fn run_bounded(cmd: &mut Command, within: Duration) -> Ran {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary under test");
    let out = collect(child.stdout.take().expect("piped"));
    let err = collect(child.stderr.take().expect("piped"));
    let status = wait_child(&mut child, within);
    let took = started.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not exit within {within:?}; stderr: {}",
            take(err, Duration::from_secs(1))
        );
    };
    Ran {
        code: status.code(),
        stdout: take(out, Duration::from_secs(5)),
        stderr: take(err, Duration::from_secs(5)),
        took,
    }
}

/// Everything `r` gives until EOF, delivered on the channel.
fn collect(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// What `collect` gathered; `<still open>` if the pipe is held past `within`
/// (by a child of the process, say).
fn take(rx: mpsc::Receiver<String>, within: Duration) -> String {
    rx.recv_timeout(within)
        .unwrap_or_else(|_| "<pipe still held open by another process>".into())
}

fn wait_child(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `p2p-annex fowl address` in `dir`.
fn address(net: &FowlNet, dir: &Path, config: &[(String, String)]) -> Ran {
    run_bounded(
        helper_in(net, dir, config).arg("address"),
        Duration::from_secs(60),
    )
}

/// `<64 lowercase hex>@<url>`: the secret part, if `line` is one.
fn secret_of<'a>(line: &'a str, url: &str) -> Option<&'a str> {
    let (secret, rest) = line.split_once('@')?;
    (rest == url
        && secret.len() == 64
        && secret
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(secret)
}

fn secret_path(dir: &Path) -> PathBuf {
    dir.join(".git/annex/p2p-annex.fowl.secret")
}

/// A secret nobody serves: 64 hex digits from the clock.
fn unserved_address(net: &FowlNet) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    let bytes = support::random_bytes(32, seed);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}@{}", net.mailbox_url())
}

/// Panics if `text` holds the secret, either half of it, or any run of 24
/// or more hex digits (a slot code's password is 32) other than the name of
/// git-annex's socket (`.git/annex/p2p/<md5>`, git-annex's own).
#[track_caller]
fn assert_no_secret(text: &str, secret: &str, what: &str) {
    for (part, name) in [
        (secret, "the secret"),
        (&secret[..32], "the secret's first half"),
        (&secret[32..], "the secret's second half"),
    ] {
        assert!(!text.contains(part), "{what} contains {name}:\n{text}");
    }
    let mut run = 0;
    let mut socket_name = false;
    for (i, c) in text.char_indices() {
        if run == 0 {
            socket_name = text[..i].ends_with("annex/p2p/");
        }
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        assert!(
            run < 24 || socket_name,
            "{what} contains a run of {run} hex digits (a code?):\n{text}"
        );
    }
}

/// Panics unless `stderr` is exactly one non-empty line.
#[track_caller]
fn assert_one_line(stderr: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "{what}: want one line on stderr, got {}:\n{stderr}",
        lines.len()
    );
}

/// A listener in `dir` on `address`, relaying to a framed stream server of
/// the test's own (its stderr, the log, collected).
struct Listener {
    proc: support::Proc,
    log: Vec<String>,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    fn start(net: &FowlNet, dir: &Path, address: &str, config: &[(String, String)]) -> Listener {
        let socket = dir.join("annex.sock");
        let _ = std::fs::remove_file(&socket);
        let accepted = framed_stream_server(&socket);
        let mut cmd = helper_in(net, dir, config);
        cmd.arg(address)
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let started = Instant::now();
        let mut l = Listener {
            proc: support::Proc::spawn_logged(&mut cmd),
            log: Vec::new(),
            accepted,
        };
        l.wait_armed(net);
        eprintln!(
            "fowl: listener armed {SLOTS} slots in {:?}",
            started.elapsed()
        );
        l
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits until the listener has `SLOTS` fowld children connected to the
    /// mailbox (each has set its slot's code right after).
    fn wait_armed(&mut self, net: &FowlNet) {
        let pid = self.pid();
        let mut exited = None;
        let armed = wait_until(ARMED, || {
            exited = self.proc.child.try_wait().ok().flatten();
            exited.is_some() || net.mailbox_clients_of(pid) >= SLOTS
        });
        assert!(
            armed && exited.is_none(),
            "the listener did not arm {SLOTS} slots within {ARMED:?} (exit: {exited:?}; \
             {} fowld connected to the mailbox); its log:\n{}",
            net.mailbox_clients_of(pid),
            self.log().join("\n")
        );
    }

    /// Every log line so far.
    fn log(&mut self) -> &[String] {
        let new = self.proc.stderr_so_far();
        self.log.extend(new);
        &self.log
    }

    fn alive(&mut self) -> bool {
        self.proc.child.try_wait().ok().flatten().is_none()
    }
}

/// What one connect-mode session measured.
struct Session {
    /// From the start of connect mode to the first byte back.
    setup: Duration,
    /// From the start to connect mode's exit.
    total: Duration,
}

/// A connect-mode session under way: `len` bytes of `Stream::new(seed)`
/// going to the framed server, `len` of its answer coming back and checked
/// byte by byte, then the server's verdict.
struct Live {
    started: Instant,
    child: Child,
    err: mpsc::Receiver<String>,
    /// Bytes of the answer received so far.
    received: Arc<AtomicUsize>,
    done: mpsc::Receiver<(Result<(), String>, Option<Instant>)>,
    close: mpsc::Sender<()>,
    writer: thread::JoinHandle<Result<(), String>>,
}

fn start_session(
    net: &FowlNet,
    dir: &Path,
    address: &str,
    config: &[(String, String)],
    seed: u64,
    len: usize,
) -> Live {
    let started = Instant::now();
    let mut child = helper_in(net, dir, config)
        .arg(address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn connect mode");
    let err = collect(child.stderr.take().expect("piped"));
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    // The writer keeps stdin open after the data, until told.
    let (close, close_rx) = mpsc::channel::<()>();
    let writer = thread::spawn(move || -> Result<(), String> {
        let mut head = seed.to_le_bytes().to_vec();
        head.extend_from_slice(&(len as u64).to_le_bytes());
        let sent = stdin
            .write_all(&head)
            .and_then(|()| send_stream(&mut stdin, seed, len))
            .map_err(|e| format!("write to connect mode: {e}"));
        let _ = close_rx.recv();
        drop(stdin);
        sent
    });
    let received = Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = mpsc::channel();
    let counter = received.clone();
    thread::spawn(move || {
        let mut stdout = Counted {
            inner: stdout,
            first: None,
            count: counter,
        };
        let got = check_exact(&mut stdout, answer_seed(seed), len).and_then(|()| {
            let mut verdict = [0u8; 1];
            stdout
                .read_exact(&mut verdict)
                .map_err(|e| format!("no verdict: {e}"))?;
            match &verdict {
                b"Y" => Ok(()),
                _ => Err("the server saw wrong bytes".to_string()),
            }
        });
        let _ = done_tx.send((got, stdout.first));
    });
    Live {
        started,
        child,
        err,
        received,
        done,
        close,
        writer,
    }
}

impl Live {
    /// Kills connect mode; the error `why` with what it said on stderr.
    fn fail(mut self, why: String) -> Result<Session, String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.close.send(());
        Err(format!(
            "{why}; connect mode's stderr: {}",
            take(self.err, Duration::from_secs(2))
        ))
    }

    /// Waits for the answer and the verdict, closes stdin, and expects a
    /// clean exit.
    fn finish(mut self) -> Result<Session, String> {
        let (got, first) = match self.done.recv_timeout(SESSION) {
            Ok(r) => r,
            Err(_) => return self.fail(format!("no answer within {SESSION:?}")),
        };
        if let Err(why) = got {
            return self.fail(why);
        }
        let _ = self.close.send(());
        let writer = std::mem::replace(&mut self.writer, thread::spawn(|| Ok(())));
        if let Err(why) = writer.join().expect("writer") {
            return self.fail(why);
        }
        let Some(status) = wait_child(&mut self.child, Duration::from_secs(30)) else {
            return self.fail("no exit within 30 s of stdin's EOF".into());
        };
        let total = self.started.elapsed();
        let stderr = take(self.err, Duration::from_secs(5));
        if !status.success() {
            return Err(format!("exit {status} after the data; stderr: {stderr}"));
        }
        Ok(Session {
            setup: first.map_or(total, |t| t.duration_since(self.started)),
            total,
        })
    }
}

/// One whole connect-mode session ([`Live`]).
fn session(
    net: &FowlNet,
    dir: &Path,
    address: &str,
    config: &[(String, String)],
    seed: u64,
    len: usize,
) -> Result<Session, String> {
    start_session(net, dir, address, config, seed, len).finish()
}

/// A reader that counts its bytes and notes when the first one came.
struct Counted<R> {
    inner: R,
    first: Option<Instant>,
    count: Arc<AtomicUsize>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.first.is_none() {
            self.first = Some(Instant::now());
        }
        self.count.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Median and maximum, for printing.
fn spread(mut xs: Vec<Duration>) -> String {
    xs.sort();
    if xs.is_empty() {
        return "-".into();
    }
    format!(
        "median {}, max {} (n={})",
        secs(xs[xs.len() / 2]),
        secs(xs[xs.len() - 1]),
        xs.len()
    )
}

/// A fresh address of a fresh repository, its secret, and the repository.
fn new_address(net: &FowlNet, tag: &str) -> (TempDir, String, String) {
    let dir = repo(tag);
    let got = address(net, dir.path(), &config(net));
    assert_eq!(got.code, Some(0), "address: {}", got.stderr);
    let line = got.stdout.trim().to_string();
    let secret = secret_of(&line, &net.mailbox_url())
        .unwrap_or_else(|| panic!("address printed {line:?}"))
        .to_string();
    (dir, line, secret)
}

// ---------------------------------------------------------------------------
// The harness itself

/// The namespace has loopback only, the mailbox runs in it, and two fowld
/// of the test's own pair through it and carry bytes (socat at both ends):
/// fowl works here before the netname is blamed for anything.
#[test]
fn fowl_harness_pairs_two_fowld_through_the_local_mailbox() {
    if !root_or_skip("fowl_harness_pairs_two_fowld_through_the_local_mailbox") {
        return;
    }
    let net = FowlNet::start();
    net.ns.assert_loopback_only();
    // Nothing outside is reachable from in there (no route at all).
    let outside = run_bounded(
        net.exec(Path::new("ip")).args(["route", "get", "1.1.1.1"]),
        Duration::from_secs(10),
    );
    assert_ne!(
        outside.code,
        Some(0),
        "1.1.1.1 is routable: {}",
        outside.stdout
    );

    // The service behind the serving fowld: socat to a unix socket of ours.
    let dir = TempDir::new("fowl-harness");
    let socket = dir.path().join("svc.sock");
    let accepted = framed_stream_server(&socket);
    let svc_port = 4100;
    let mut svc = net
        .exec(&which("socat"))
        .arg(format!(
            "TCP-LISTEN:{svc_port},bind=127.0.0.1,reuseaddr,fork"
        ))
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start socat");
    let svc_up = wait_until(Duration::from_secs(30), || {
        net.ns
            .listening()
            .contains(&format!("127.0.0.1:{svc_port}"))
    });
    assert!(svc_up, "socat did not listen");

    let started = Instant::now();
    let code = "7-harness-code-not-a-secret";
    let mut serving = net.fowld("serving");
    let mut connecting = net.fowld("connecting");
    serving.expect(&["welcome"], Duration::from_secs(60));
    connecting.expect(&["welcome"], Duration::from_secs(60));
    let welcome = started.elapsed();
    serving.send(&format!(r#"{{"kind": "set-code", "code": "{code}"}}"#));
    serving.send(&format!(
        r#"{{"kind": "remote", "name": "svc", "local_connect_port": {svc_port}}}"#
    ));
    connecting.send(&format!(r#"{{"kind": "set-code", "code": "{code}"}}"#));
    connecting.send(r#"{"kind": "local", "name": "svc", "bind_interface": "127.0.0.1"}"#);
    serving.expect(&["peer-connected"], Duration::from_secs(60));
    let listening = connecting
        .expect(&["peer-connected", "listening"], Duration::from_secs(60))
        .remove(1);
    let paired = started.elapsed();
    let port: u16 = listening
        .split("\"listening_port\":")
        .nth(1)
        .and_then(|r| {
            r.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no listening_port in {listening}"));
    let rss: Vec<u64> = [&serving, &connecting]
        .iter()
        .map(|f| fowl::rss_kib(f.child.id()))
        .collect();

    // fowl's first-connection race (doc/networks/fowl.md): a stream made at
    // once may be refused before any byte; retry a few times, bounded.
    let len = 4 << 20;
    let mut last = String::new();
    let mut ok = false;
    for attempt in 0..5u64 {
        let mut client = net
            .exec(&which("socat"))
            .arg("-")
            .arg(format!("TCP:127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat client");
        let mut stdin = client.stdin.take().expect("piped");
        let mut stdout = client.stdout.take().expect("piped");
        let seed = 90 + attempt;
        let w = thread::spawn(move || {
            let mut head = seed.to_le_bytes().to_vec();
            head.extend_from_slice(&(len as u64).to_le_bytes());
            let _ = stdin.write_all(&head);
            let _ = send_stream(&mut stdin, seed, len);
            stdin
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let got = check_exact(&mut stdout, answer_seed(seed), len).and_then(|()| {
                let mut v = [0u8; 1];
                stdout.read_exact(&mut v).map_err(|e| e.to_string())?;
                (v == *b"Y")
                    .then_some(())
                    .ok_or_else(|| "verdict N".to_string())
            });
            let _ = tx.send(got);
        });
        let got = rx
            .recv_timeout(SESSION)
            .unwrap_or_else(|_| Err("timed out".into()));
        let _ = client.kill();
        let _ = client.wait();
        drop(w.join());
        match got {
            Ok(()) => {
                ok = true;
                break;
            }
            Err(e) => last = e,
        }
    }
    assert!(ok, "4 MiB both ways over fowl by hand failed: {last}");
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    eprintln!(
        "fowl harness: two fowld to welcome {}, paired and forwarding {}, RSS {} KiB and {} KiB",
        secs(welcome),
        secs(paired),
        rss[0],
        rss[1]
    );
    let _ = svc.kill();
    let _ = svc.wait();
}

fn which(name: &str) -> PathBuf {
    support::find_on_path(name)
        .unwrap_or_else(|| panic!("{name} is not on PATH (tests/tools/install-deps.sh)"))
}

// ---------------------------------------------------------------------------
// Address mode

#[test]
fn fowl_address_is_stable_private_and_new_once_deleted() {
    if !root_or_skip("fowl_address_is_stable_private_and_new_once_deleted") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let (dir, first, secret) = new_address(&net, "fowl-address");
    let path = secret_path(dir.path());
    let meta = std::fs::symlink_metadata(&path).expect("the secret file exists");
    assert!(meta.file_type().is_file(), "{path:?} is not a regular file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path:?}'s mode");
    let stored = std::fs::read(&path).unwrap();

    // Stable: same line, file untouched.
    let again = address(&net, dir.path(), &cfg);
    assert_eq!((again.code, again.stdout.trim()), (Some(0), first.as_str()));
    assert_eq!(again.stdout.lines().count(), 1, "{:?}", again.stdout);
    assert_no_secret(&again.stderr, &secret, "address mode's stderr");
    assert_eq!(std::fs::read(&path).unwrap(), stored);

    // No mailbox configured: fowl's own default, same secret.
    let fowld_only = &cfg[..1];
    let public = address(&net, dir.path(), fowld_only);
    assert_eq!(public.code, Some(0), "{}", public.stderr);
    assert_eq!(public.stdout.trim(), format!("{secret}@{PUBLIC_MAILBOX}"));

    // A mailbox that is not ws:// or wss:// with a host: one line, no secret.
    for bad in ["http://127.0.0.1:4000/v1", "ws:///v1", "127.0.0.1:4000"] {
        let cfg_bad = vec![
            cfg[0].clone(),
            ("p2p-annex.fowl.mailbox".to_string(), bad.to_string()),
        ];
        let got = address(&net, dir.path(), &cfg_bad);
        assert!(
            matches!(got.code, Some(1 | 2)),
            "mailbox {bad:?}: exit {:?}, stdout {:?}",
            got.code,
            got.stdout
        );
        assert_one_line(&got.stderr, &format!("mailbox {bad:?}"));
        assert!(got.stderr.contains("mailbox"), "{}", got.stderr);
        assert_no_secret(&got.stderr, &secret, "the error");
    }

    // Deleted: a new secret.
    std::fs::remove_file(&path).unwrap();
    let renewed = address(&net, dir.path(), &cfg);
    assert_eq!(renewed.code, Some(0), "{}", renewed.stderr);
    let new_secret = secret_of(renewed.stdout.trim(), &net.mailbox_url())
        .unwrap_or_else(|| panic!("address printed {:?}", renewed.stdout))
        .to_string();
    assert_ne!(new_secret, secret, "a deleted secret came back");
    // Another repository, another secret.
    let (_other, _, other_secret) = new_address(&net, "fowl-address-other");
    assert_ne!(other_secret, new_secret);
}

// ---------------------------------------------------------------------------
// Listen and connect modes against a served socket

/// 16 MiB both ways, then 10 connections in a row; the log, `status` and
/// fowld's argv never hold the secret.
#[test]
fn fowl_relays_16_mib_both_ways_then_10_connections_in_a_row() {
    if !root_or_skip("fowl_relays_16_mib_both_ways_then_10_connections_in_a_row") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let (dir, addr, secret) = new_address(&net, "fowl-relay");
    let mut listener = Listener::start(&net, dir.path(), &addr, &cfg);
    let client = repo("fowl-relay-client");

    let big = 16 << 20;
    let s = session(&net, client.path(), &addr, &cfg, 1, big)
        .unwrap_or_else(|e| panic!("16 MiB both ways: {e}"));
    let moving = s.total.saturating_sub(s.setup).as_secs_f64();
    eprintln!(
        "fowl: 16 MiB each way (byte-exact): setup {}, total {} ({:.1} MiB/s each way after setup)",
        secs(s.setup),
        secs(s.total),
        16.0 / moving.max(0.001)
    );

    // While the listener runs: status and the argv of every fowld.
    let status = run_bounded(
        p2p_in(&net, dir.path(), &cfg).arg("status"),
        Duration::from_secs(60),
    );
    assert_eq!(status.code, Some(0), "status: {}", status.stderr);
    assert!(
        status.stdout.contains("fowl"),
        "status shows no fowl listener:\n{}",
        status.stdout
    );
    assert_no_secret(&status.stdout, &secret, "p2p-annex status");
    let json = run_bounded(
        p2p_in(&net, dir.path(), &cfg).args(["status", "--json"]),
        Duration::from_secs(60),
    );
    assert_no_secret(&json.stdout, &secret, "p2p-annex status --json");
    for pid in net.fowld_pids() {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        assert_no_secret(&argv, &secret, "a fowld's command line");
    }

    let mut setups = Vec::new();
    for i in 0..10u64 {
        let s = session(&net, client.path(), &addr, &cfg, 100 + i, 64 << 10)
            .unwrap_or_else(|e| panic!("connection {} of 10 in a row: {e}", i + 1));
        setups.push(s.setup);
    }
    eprintln!(
        "fowl: setup per connection, 10 in a row: {}",
        spread(setups)
    );
    assert_eq!(listener.accepted.load(Ordering::SeqCst), 11);
    assert!(listener.alive(), "the listener exited");
    // Connect mode's fowld went with each connection: only the slots remain.
    let listener_pid = listener.pid();
    let strays = || -> Vec<u32> {
        net.fowld_pids()
            .into_iter()
            .filter(|&p| fowl::ppid(p) != Some(listener_pid))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || strays().is_empty()),
        "fowld processes outlive connect mode: {:?}",
        strays()
    );

    // Its socket file removed (git-annex's remotedaemon gone): the listener
    // exits and takes its fowld along.
    std::fs::remove_file(dir.path().join("annex.sock")).unwrap();
    let ended = listener.proc.wait_timeout(Duration::from_secs(30));
    assert!(
        ended.is_some(),
        "the listener runs on without its socket file"
    );
    assert!(
        wait_until(Duration::from_secs(15), || net.fowld_pids().is_empty()),
        "fowld processes outlive the listener: {:?}",
        net.fowld_pids()
    );
    let log = listener.log().join("\n");
    assert!(!log.is_empty(), "the listener logged nothing");
    assert_no_secret(&log, &secret, "the listener's log");
}

/// 4 connections at once, 3 rounds: every one byte-exact.
#[test]
fn fowl_serves_4_connections_at_once_3_times() {
    if !root_or_skip("fowl_serves_4_connections_at_once_3_times") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let (dir, addr, secret) = new_address(&net, "fowl-concurrent");
    let mut listener = Listener::start(&net, dir.path(), &addr, &cfg);
    let rss = net.rss_sampler();
    let mut setups = Vec::new();
    for round in 0..3u64 {
        let results: Vec<Result<Session, String>> = thread::scope(|scope| {
            let joins: Vec<_> = (0..4u64)
                .map(|i| {
                    let (net, cfg, addr) = (&net, &cfg, &addr);
                    scope.spawn(move || {
                        let client = repo("fowl-concurrent-client");
                        session(net, client.path(), addr, cfg, 200 + round * 10 + i, 1 << 20)
                    })
                })
                .collect();
            joins
                .into_iter()
                .map(|j| j.join().expect("client thread"))
                .collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(s) => setups.push(s.setup),
                Err(e) => panic!(
                    "round {}, client {}: {e}\nthe listener's log:\n{}",
                    round + 1,
                    i + 1,
                    listener.log().join("\n")
                ),
            }
        }
    }
    let (peak, most) = rss.finish();
    eprintln!(
        "fowl: setup per connection, 4 at once x 3: {}; fowld peak {} MiB RSS in all, \
         {most} fowld at most",
        spread(setups),
        peak / 1024
    );
    assert_eq!(listener.accepted.load(Ordering::SeqCst), 12);
    assert!(listener.alive(), "the listener exited");
    let log = listener.log().join("\n");
    assert_no_secret(&log, &secret, "the listener's log");
}

// ---------------------------------------------------------------------------
// Faults

/// The listener's fowld that serves a connection is SIGKILLed mid-transfer:
/// connect mode ends, non-zero, with one line, in bounded time; the
/// listener serves the next connection.
#[test]
fn fowl_serving_fowld_killed_mid_transfer() {
    if !root_or_skip("fowl_serving_fowld_killed_mid_transfer") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let (dir, addr, secret) = new_address(&net, "fowl-kill");
    let mut listener = Listener::start(&net, dir.path(), &addr, &cfg);
    let client = repo("fowl-kill-client");
    // A dead peer's wormhole stays open (fowl waits for it to come back and
    // reports nothing): connect mode gives the stream up once it moved no
    // byte for `idle-timeout` (fowl's default 10 minutes, too long for CI).
    let mut quick = cfg.clone();
    quick.push(("p2p-annex.fowl.idle-timeout".into(), "20s".into()));

    // 1 GiB: far more than moves before the kill.
    let mut live = start_session(&net, client.path(), &addr, &quick, 300, 1 << 30);
    let moving = wait_until(SESSION, || live.received.load(Ordering::SeqCst) >= 4 << 20);
    if !moving {
        let got = live.received.load(Ordering::SeqCst);
        let _ = live.fail(format!("only {got} bytes came back within {SESSION:?}"));
        panic!("the transfer did not get going ({got} bytes)");
    }
    let serving = net.serving_fowlds_of(listener.pid());
    assert_eq!(
        serving.len(),
        1,
        "want the one fowld serving the connection, found {serving:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serving[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the serving fowld");
    let killed = Instant::now();
    let before = live.received.load(Ordering::SeqCst);
    let status = wait_child(&mut live.child, PEER_LOST);
    let noticed = killed.elapsed();
    let Some(status) = status else {
        let _ = live.fail(String::new());
        panic!("connect mode still runs {PEER_LOST:?} after the serving fowld was killed");
    };
    let _ = live.close.send(());
    let stderr = take(live.err, Duration::from_secs(5));
    assert!(
        !status.success(),
        "connect mode exited 0 after its peer died ({before} bytes in)"
    );
    assert_one_line(&stderr, "connect mode after its peer died");
    assert_no_secret(&stderr, &secret, "connect mode's error");
    eprintln!(
        "fowl: serving fowld SIGKILLed after {} MiB: connect mode exited {status} after {}: {}",
        before >> 20,
        secs(noticed),
        stderr.trim()
    );

    assert!(
        listener.alive(),
        "the listener exited with its slot's fowld"
    );
    let next = session(&net, client.path(), &addr, &cfg, 301, 1 << 20)
        .unwrap_or_else(|e| panic!("the connection after the kill: {e}"));
    eprintln!("fowl: next connection served, setup {}", secs(next.setup));
    assert_no_secret(&listener.log().join("\n"), &secret, "the listener's log");

    // The listener itself SIGKILLed: its fowld children go too
    // (PR_SET_PDEATHSIG), none is left holding a slot.
    let _ = listener.proc.child.kill();
    let _ = listener.proc.child.wait();
    assert!(
        wait_until(Duration::from_secs(15), || net.fowld_pids().is_empty()),
        "fowld processes outlive a SIGKILLed listener: {:?}",
        net.fowld_pids()
    );
    // They closed their wormholes (SIGTERM, not SIGKILL), so no stale claim
    // is left on the window's nameplates: a restarted listener serves the
    // very next connection.
    let _ = std::fs::remove_file(dir.path().join("annex.sock"));
    let restarted = Listener::start(&net, dir.path(), &addr, &cfg);
    let s = session(&net, client.path(), &addr, &cfg, 302, 1 << 20).unwrap_or_else(|e| {
        panic!("the first connection to a listener restarted after SIGKILL: {e}")
    });
    eprintln!(
        "fowl: listener SIGKILLed and restarted: next connection served, setup {}",
        secs(s.setup)
    );
    assert_eq!(restarted.accepted.load(Ordering::SeqCst), 1);
}

/// Malformed addresses: exit 2 and one line, at once, in connect and
/// listen modes, never echoing the secret, starting no fowld.
#[test]
fn fowl_bad_addresses_are_one_line_usage_errors() {
    if !root_or_skip("fowl_bad_addresses_are_one_line_usage_errors") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let dir = repo("fowl-bad");
    let hex = "0123456789abcdef".repeat(4);
    let url = net.mailbox_url();
    let bad = [
        String::new(),
        "nothing".into(),
        url.clone(),
        format!("@{url}"),
        hex.clone(),
        format!("{hex}@"),
        format!("{}@{url}", &hex[..63]),
        format!("{hex}0@{url}"),
        format!("{}g@{url}", &hex[..63]),
        format!("{hex}@http://127.0.0.1:4000/v1"),
        format!("{hex}@ws:///v1"),
        format!("{hex}@127.0.0.1:4000"),
    ];
    for address in &bad {
        for listen in [false, true] {
            let mut cmd = p2p_in(&net, dir.path(), &cfg);
            cmd.args(["fowl", address]);
            if listen {
                cmd.arg(dir.path().join("annex.sock"));
            }
            let got = run_bounded(&mut cmd, Duration::from_secs(30));
            let what = format!(
                "{} mode, address {address:?}",
                if listen { "listen" } else { "connect" }
            );
            assert_eq!(got.code, Some(2), "{what}: {}", got.stderr);
            if listen {
                // Its log goes to stderr too (a terminal, here): one error
                // line among the log's.
                let errors = got
                    .stderr
                    .lines()
                    .filter(|l| l.starts_with("p2p-annex: "))
                    .count();
                assert_eq!(errors, 1, "{what}: {}", got.stderr);
            } else {
                // Usage errors may add main's pointer to --help.
                let error = got.stderr.replace("Try 'p2p-annex --help'.\n", "");
                assert_one_line(&error, &what);
            }
            assert_no_secret(&got.stderr, &hex, &what);
            assert!(got.stdout.is_empty(), "{what}: stdout {:?}", got.stdout);
        }
    }
    assert!(net.fowld_pids().is_empty(), "a bad address started fowld");
}

/// fowld missing: connect mode fails at once, exit 1, one line that names
/// the key to set.
#[test]
fn fowl_missing_fowld_names_the_key() {
    if !root_or_skip("fowl_missing_fowld_names_the_key") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let dir = repo("fowl-nofowld");
    let missing = vec![
        (
            "p2p-annex.fowl.fowld".to_string(),
            "/nonexistent/bin/fowld".to_string(),
        ),
        cfg[1].clone(),
    ];
    let got = run_bounded(
        p2p_in(&net, dir.path(), &missing).args(["fowl", &unserved_address(&net)]),
        Duration::from_secs(30),
    );
    assert_eq!(got.code, Some(1), "fowld missing: {}", got.stderr);
    assert_one_line(&got.stderr, "fowld missing");
    assert!(
        got.stderr.contains("p2p-annex.fowl.fowld"),
        "the error does not name the key: {}",
        got.stderr
    );
}

/// Nobody serves the secret: connect mode tries every slot and gives up
/// with one line, exit 1, in bounded time, leaving no fowld behind.
#[test]
fn fowl_no_listener_for_the_secret() {
    if !root_or_skip("fowl_no_listener_for_the_secret") {
        return;
    }
    let net = FowlNet::start();
    let cfg = config(&net);
    let dir = repo("fowl-nolistener");
    let address = unserved_address(&net);
    let secret = address.split_once('@').unwrap().0.to_string();
    let got = run_bounded(
        p2p_in(&net, dir.path(), &cfg).args(["fowl", &address]),
        NO_LISTENER,
    );
    eprintln!(
        "fowl: no listener: exit {:?} after {}: {}",
        got.code,
        secs(got.took),
        got.stderr.trim()
    );
    assert_eq!(got.code, Some(1), "{}", got.stderr);
    assert_one_line(&got.stderr, "no listener");
    assert_no_secret(&got.stderr, &secret, "the error");
    assert!(
        wait_until(Duration::from_secs(10), || net.fowld_pids().is_empty()),
        "fowld processes outlive connect mode: {:?}",
        net.fowld_pids()
    );
}

/// The mailbox is down: connect mode fails with one line, exit 1, in
/// bounded time, leaving no fowld behind.
#[test]
fn fowl_mailbox_down() {
    if !root_or_skip("fowl_mailbox_down") {
        return;
    }
    let mut net = FowlNet::start();
    let cfg = config(&net);
    let dir = repo("fowl-nomailbox");
    net.stop_mailbox();
    let address = unserved_address(&net);
    let secret = address.split_once('@').unwrap().0.to_string();
    let got = run_bounded(
        p2p_in(&net, dir.path(), &cfg).args(["fowl", &address]),
        Duration::from_secs(90),
    );
    eprintln!(
        "fowl: mailbox down: exit {:?} after {}: {}",
        got.code,
        secs(got.took),
        got.stderr.trim()
    );
    assert_eq!(got.code, Some(1), "{}", got.stderr);
    assert_one_line(&got.stderr, "mailbox down");
    assert_no_secret(&got.stderr, &secret, "the error");
    assert!(
        wait_until(Duration::from_secs(10), || net.fowld_pids().is_empty()),
        "fowld processes outlive connect mode: {:?}",
        net.fowld_pids()
    );
}

// ---------------------------------------------------------------------------
// Real git-annex

/// `git annex ARGS` in `repo`, inside the namespace, which must succeed;
/// how long it took.
fn annex_in(
    repo: &support::annex::Repo<'_>,
    net: &FowlNet,
    args: &[&str],
    deadline: Duration,
) -> Duration {
    let mut all: Vec<&str> = net.ns.prefix()[1..].to_vec();
    all.extend(["git", "annex"]);
    all.extend_from_slice(args);
    repo.cmd("ip", &all).deadline(deadline).ok().elapsed
}

/// Two real repositories over fowl, offline: A enables fowl and serves
/// under `p2p-annex serve`; B links, fetches, gets, copies to A, checks A's
/// copy, and syncs with content both ways. Prints setup time, throughput
/// and fowld's memory.
#[test]
fn fowl_git_annex_syncs_offline() {
    use support::annex::{Env, pseudo_random, served_listeners};
    if !root_or_skip("fowl_git_annex_syncs_offline") {
        return;
    }
    let net = FowlNet::start();
    let in_net = net.ns.prefix();
    // Connect mode closes the wormholes it opened (the paired one and any
    // slot it missed) before it exits, so the mailbox frees their
    // nameplates: bounded at 6 s in src/net/fowl.
    support::annex::allow_linger(Duration::from_secs(8));
    let env = Env::new("e2e-fowl");
    env.link_helper("fowl");
    env.global_config("p2p-annex.fowl.fowld", &fowl::fowld().display().to_string());
    env.global_config("p2p-annex.fowl.mailbox", &net.mailbox_url());
    let step = Duration::from_secs(120);

    let a = env.repo("a");
    let small = b"hello from A, over fowl\n".to_vec();
    let big_mib = 32;
    let big = pseudo_random(61, big_mib << 20);
    a.write("small.txt", &small);
    a.write("big.bin", &big);
    // For `get -J4`: git-annex opens several connections at once.
    let many: Vec<(String, Vec<u8>)> = (0..6u64)
        .map(|i| (format!("many/{i}.bin"), pseudo_random(70 + i, 2 << 20)))
        .collect();
    for (name, data) in &many {
        a.write(name, data);
    }
    a.add_and_commit(&["small.txt", "big.bin", "many"], "files from A");
    annex_in(&a, &net, &["p2p", "--enable", "fowl"], step);
    let own = a.own_p2p_addresses();
    assert_eq!(own.len(), 1, "{own:?}");
    let secret = own[0]
        .strip_prefix("p2p-annex::fowl:")
        .and_then(|addr| secret_of(addr, &net.mailbox_url()))
        .unwrap_or_else(|| panic!("enabled address {:?}", own[0]))
        .to_string();

    let rss = net.rss_sampler();
    let started = Instant::now();
    let served = a.serve_via(&in_net);
    let listener = served_listeners(served.pid())[0].pid;
    assert!(
        wait_until(ARMED, || net.mailbox_clients_of(listener) >= SLOTS),
        "A's listener did not arm {SLOTS} slots within {ARMED:?}; serve's stderr:\n{}",
        served.stderr()
    );
    eprintln!(
        "fowl+git-annex: serve up and {SLOTS} slots armed in {}",
        secs(started.elapsed())
    );
    let address = a.gen_addresses("fowl").remove(0);
    check_in(&a, &net, &secret, &["fowld reached the mailbox"]);

    let b = env.repo("b");
    let t = Instant::now();
    b.link_via(&in_net, "peerA", &address);
    let link = t.elapsed();
    let t = Instant::now();
    b.fetch_via(&in_net, "peerA");
    let fetch = t.elapsed();
    check_in(
        &b,
        &net,
        &secret,
        &["is reachable", "accepts our auth token"],
    );
    b.annex(&["merge"]);
    b.git(&["merge", "-q", "--ff-only", "peerA/main"]);
    let get_small = annex_in(&b, &net, &["get", "small.txt"], step);
    let get_big = annex_in(&b, &net, &["get", "big.bin"], step);
    assert!(b.read("small.txt") == small, "small.txt differs");
    support::assert_same_bytes(&b.read("big.bin"), &big, "big.bin after get");
    let get_many = annex_in(&b, &net, &["get", "-J4", "many"], step);
    for (name, data) in &many {
        support::assert_same_bytes(&b.read(name), data, name);
    }
    b.annex(&["fsck", "-q"]);
    eprintln!(
        "fowl+git-annex: get -J4 of 6 files of 2 MiB {}",
        secs(get_many)
    );
    eprintln!(
        "fowl+git-annex: link {} (one connection), git fetch {}, get of a small file {}, \
         get of {big_mib} MiB {} ({:.1} MiB/s)",
        secs(link),
        secs(fetch),
        secs(get_small),
        secs(get_big),
        big_mib as f64 / get_big.as_secs_f64()
    );

    let from_b = pseudo_random(62, 3 << 20);
    b.write("from-b.bin", &from_b);
    b.add_and_commit(&["from-b.bin"], "file from B");
    let copy = annex_in(&b, &net, &["copy", "--to", "peerA", "from-b.bin"], step);
    assert_eq!(
        b.files_in("peerA"),
        [
            "big.bin",
            "from-b.bin",
            "many/0.bin",
            "many/1.bin",
            "many/2.bin",
            "many/3.bin",
            "many/4.bin",
            "many/5.bin",
            "small.txt"
        ]
    );
    // A's copy, read back over fowl and checked against its key.
    let fsck = annex_in(&b, &net, &["fsck", "--from", "peerA", "from-b.bin"], step);
    a.annex(&["fsck", "-q"]);
    assert_eq!(
        content_in(&a, &b, "from-b.bin"),
        from_b,
        "A's copy of from-b.bin"
    );
    eprintln!(
        "fowl+git-annex: copy --to of 3 MiB {}, fsck --from {}",
        secs(copy),
        secs(fsck)
    );

    // sync --content: a new file on each side.
    let from_a2 = pseudo_random(63, 1 << 20);
    a.write("from-a2.bin", &from_a2);
    a.add_and_commit(&["from-a2.bin"], "second file from A");
    let from_b2 = pseudo_random(64, 1 << 20);
    b.write("from-b2.bin", &from_b2);
    b.add_and_commit(&["from-b2.bin"], "second file from B");
    let sync = annex_in(&b, &net, &["sync", "--content", "peerA"], step);
    support::assert_same_bytes(&b.read("from-a2.bin"), &from_a2, "from-a2.bin on B");
    assert_eq!(
        content_in(&a, &b, "from-b2.bin"),
        from_b2,
        "from-b2.bin on A"
    );
    b.annex(&["fsck", "-q"]);
    a.annex(&["fsck", "-q"]);
    eprintln!("fowl+git-annex: sync --content {}", secs(sync));

    // Under remotedaemon the listener logs to its file; it and status name
    // the address by fingerprint only.
    let log = std::fs::read_to_string(a.path().join(".git/annex/p2p-annex.fowl.log"))
        .expect("A's listener log");
    assert!(log.contains(": connected"), "A's listener log:\n{log}");
    assert_no_secret(&log, &secret, "A's listener log");
    if [link, get_small, get_big]
        .iter()
        .any(|d| *d > Duration::from_secs(5))
    {
        eprintln!("fowl+git-annex: a slow step; A's listener log:\n{log}");
    }
    let bin = bin();
    let mut args: Vec<&str> = net.ns.prefix()[1..].to_vec();
    args.extend([bin.to_str().expect("UTF-8 path"), "status"]);
    let status = a.cmd("ip", &args).ok();
    assert!(
        status.stdout.contains("fowl"),
        "status shows no fowl listener:\n{}",
        status.stdout
    );
    assert_no_secret(&status.stdout, &secret, "A's p2p-annex status");
    drop(served);
    let gone = wait_until(Duration::from_secs(15), || net.fowld_pids().is_empty());
    let (peak, most) = rss.finish();
    eprintln!(
        "fowl+git-annex: fowld peak {} MiB RSS in all, {most} fowld at most",
        peak / 1024
    );
    assert!(
        gone,
        "fowld processes outlive p2p-annex serve: {:?}",
        net.fowld_pids()
    );
    env.assert_no_leftover_processes();
}

/// `p2p-annex check` in `repo`, inside the namespace: all ok, saying each
/// of `want`, and never showing the secret.
fn check_in(repo: &support::annex::Repo<'_>, net: &FowlNet, secret: &str, want: &[&str]) {
    let bin = bin();
    let mut args: Vec<&str> = net.ns.prefix()[1..].to_vec();
    args.extend([bin.to_str().expect("UTF-8 path"), "check"]);
    let got = repo.cmd("ip", &args).run();
    let all = format!("{}{}", got.stdout, got.stderr);
    assert!(got.success(), "p2p-annex check:\n{all}");
    for w in want {
        assert!(all.contains(w), "check does not say {w:?}:\n{all}");
    }
    assert_no_secret(&all, secret, "p2p-annex check");
}

/// The content of `file` (a file of `b`'s) in repository `a`, found by key.
fn content_in(a: &support::annex::Repo<'_>, b: &support::annex::Repo<'_>, file: &str) -> Vec<u8> {
    let key = b.annex(&["lookupkey", file]).stdout.trim().to_string();
    let loc = a
        .annex(&["contentlocation", &key])
        .stdout
        .trim()
        .to_string();
    std::fs::read(a.path().join(&loc)).unwrap_or_else(|e| panic!("read {loc}: {e}"))
}

/// A user-defined netname with the fowl transport: its own keys, its own
/// secret file, and a connection through it.
#[test]
fn fowl_as_the_transport_of_a_user_defined_netname() {
    if !root_or_skip("fowl_as_the_transport_of_a_user_defined_netname") {
        return;
    }
    let net = FowlNet::start();
    let url = net.mailbox_url();
    let cfg: Vec<(String, String)> = [
        ("p2p-annex.wh.transport", "fowl"),
        ("p2p-annex.wh.fowld", &fowl::fowld().display().to_string()),
        ("p2p-annex.wh.mailbox", &url),
        // fowl's own keys do not apply to wh.
        (
            "p2p-annex.fowl.mailbox",
            "ws://fowl-keys-do-not-apply.invalid/v1",
        ),
        ("p2p-annex.fowl.fowld", "/nonexistent/fowld"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let dir = repo("fowl-userdef");
    let got = address(&net, dir.path(), &cfg);
    assert_eq!(got.code, Some(0), "address: {}", got.stderr);
    let addr = got.stdout.trim().to_string();
    let secret = secret_of(&addr, &url)
        .unwrap_or_else(|| panic!("address printed {addr:?}"))
        .to_string();
    assert!(dir.path().join(".git/annex/p2p-annex.wh.secret").is_file());
    assert!(
        !secret_path(dir.path()).exists(),
        "wh used fowl's secret file"
    );

    let mut listener = Listener::start(&net, dir.path(), &addr, &cfg);
    let client = repo("fowl-userdef-client");
    let s = session(&net, client.path(), &addr, &cfg, 400, 1 << 20)
        .unwrap_or_else(|e| panic!("a connection over netname wh: {e}"));
    eprintln!("fowl: user-defined netname wh: setup {}", secs(s.setup));
    assert_eq!(listener.accepted.load(Ordering::SeqCst), 1);
    assert_no_secret(&listener.log().join("\n"), &secret, "wh's listener log");
}

/// Windows of 10 s (`P2P_ANNEX_TEST_FOWL_WINDOW`, debug builds, its
/// minimum): a listener killed together with its fowld (a crash of the
/// machine, say; a listener killed alone lets its fowld close cleanly) may
/// leave stale claims on this window's nameplates, where a new listener's
/// slots wait in vain (seen with 600 s windows: no connection for the rest
/// of the window); a new listener on the same address serves again within
/// a few windows. Then connections one after another across two window
/// changes all succeed (each dial looks at the clock before each slot).
#[test]
fn fowl_windows_free_a_crashed_listeners_slots_and_connections_cross_them() {
    if !root_or_skip("fowl_windows_free_a_crashed_listeners_slots_and_connections_cross_them") {
        return;
    }
    let window = 10u64;
    let net = FowlNet::start();
    let mut cfg = config(&net);
    cfg.push(("env:P2P_ANNEX_TEST_FOWL_WINDOW".into(), window.to_string()));
    let (dir, addr, secret) = new_address(&net, "fowl-window");
    let client = repo("fowl-window-client");
    let mut first = Listener::start(&net, dir.path(), &addr, &cfg);
    session(&net, client.path(), &addr, &cfg, 500, 64 << 10)
        .unwrap_or_else(|e| panic!("the first listener's connection: {e}"));

    // A crash: the listener and its waiting fowld SIGKILLed together, so
    // nothing releases their nameplates.
    let children: Vec<u32> = net
        .fowld_pids()
        .into_iter()
        .filter(|&p| fowl::ppid(p) == Some(first.pid()))
        .collect();
    assert!(!children.is_empty(), "the listener has no fowld");
    for pid in children.iter().copied().chain([first.pid()]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = first.proc.child.wait();
    assert!(
        wait_until(Duration::from_secs(15), || net.fowld_pids().is_empty()),
        "fowld left after the crash: {:?}",
        net.fowld_pids()
    );

    // A new listener on the same address: it serves again by the next
    // window at the latest (two windows, the stagger, fowld's start and
    // slack on a loaded machine).
    let socket = dir.path().join("annex.sock");
    let _ = std::fs::remove_file(&socket);
    let restarted = Instant::now();
    let mut second = Listener::start(&net, dir.path(), &addr, &cfg);
    let bound = Duration::from_secs(3 * window + 60);
    let mut failures = Vec::new();
    let recovered = loop {
        match session(&net, client.path(), &addr, &cfg, 510, 64 << 10) {
            Ok(_) => break restarted.elapsed(),
            Err(e) => failures.push(e),
        }
        assert!(
            restarted.elapsed() < bound,
            "no connection within {bound:?} of the restart; failures:\n{}",
            failures.join("\n")
        );
    };
    eprintln!(
        "fowl: after a crash, the restarted listener served after {} ({} failed attempt(s) \
         before; windows of {window} s)",
        secs(recovered),
        failures.len()
    );
    for line in second.log().iter().filter(|l| l.contains("slot")) {
        eprintln!("fowl: restarted listener: {line}");
    }

    // Connections back to back across two window changes.
    let started = Instant::now();
    let mut setups = Vec::new();
    let mut seed = 520;
    while started.elapsed() < Duration::from_secs(2 * window + 5) {
        let s = match session(&net, client.path(), &addr, &cfg, seed, 64 << 10) {
            Ok(s) => s,
            Err(e) => panic!(
                "connection {} at {} into the run (windows of {window} s): {e}\n\
                 the listener's log:\n{}",
                setups.len() + 1,
                secs(started.elapsed()),
                second.log().join("\n")
            ),
        };
        setups.push(s.setup);
        seed += 1;
    }
    eprintln!(
        "fowl: across window changes ({window} s windows): {}",
        spread(setups)
    );
    assert!(second.alive(), "the restarted listener exited");
    assert_no_secret(&second.log().join("\n"), &secret, "the listener's log");
}
