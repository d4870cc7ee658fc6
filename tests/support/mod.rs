//! A small std-only harness shared by the integration tests.

#![allow(dead_code)]

pub mod account;
pub mod annex;
pub mod danted;
pub mod fowl;
pub mod netns;
pub mod peers;
pub mod tor;
pub mod tornet;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The binary under test, built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_p2p-annex"))
}

/// A directory removed when the test ends, pass or fail.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = std::env::var_os("P2P_ANNEX_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "p2p-annex-test-{}-{}-{}",
            std::process::id(),
            n,
            tag
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single step of a test may take before the test fails
/// instead of hanging CI.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A fresh git repository (`git init`), for modes that need one but not
/// git-annex.
pub fn repo(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let ok = Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir.path())
        .status()
        .expect("git init");
    assert!(ok.success());
    dir
}

/// The binary, with git config isolated from the machine's: no system or
/// global config, so only what a test sets (with `GIT_CONFIG_*` or in its
/// own repository) applies.
pub fn p2p(home: &Path) -> Command {
    let mut cmd = Command::new(bin());
    isolate(&mut cmd, home);
    cmd
}

/// Run a helper link such as `git-annex-p2p-tcp` made by `helper_link`.
pub fn helper(link: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(link);
    isolate(&mut cmd, home);
    cmd
}

pub fn isolate(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_DIR")
        .env_remove("GIT_CONFIG_COUNT")
        .current_dir(home);
}

/// How the binary under test moves bytes: splice(2), its default on Linux,
/// or the portable read/write path that `P2P_ANNEX_NO_SPLICE=1` forces.
/// The relay tests that move many bytes run on both.
#[derive(Clone, Copy, Debug)]
pub enum CopyPath {
    Splice,
    ReadWrite,
}

impl CopyPath {
    pub fn apply(self, cmd: &mut Command) -> &mut Command {
        match self {
            CopyPath::Splice => cmd.env_remove("P2P_ANNEX_NO_SPLICE"),
            CopyPath::ReadWrite => cmd.env("P2P_ANNEX_NO_SPLICE", "1"),
        }
    }

    /// For temporary directory names.
    pub fn tag(self) -> &'static str {
        match self {
            CopyPath::Splice => "splice",
            CopyPath::ReadWrite => "rw",
        }
    }
}

/// Add one-off git config entries through git's own environment variables.
pub fn with_config(cmd: &mut Command, entries: &[(&str, &str)]) {
    cmd.env("GIT_CONFIG_COUNT", entries.len().to_string());
    for (i, (k, v)) in entries.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k);
        cmd.env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
}

/// `DIR/git-annex-p2p-NETNAME` → the binary under test.
pub fn helper_link(dir: &Path, netname: &str) -> PathBuf {
    let link = dir.join(format!("git-annex-p2p-{netname}"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin(), &link).expect("make helper link");
    link
}

/// A child process that is killed when the test ends, pass or fail.
pub struct Proc {
    pub child: Child,
    stderr_lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let child = cmd.spawn().expect("spawn the binary under test");
        Proc {
            child,
            stderr_lines: None,
        }
    }

    /// Spawn with stderr captured line by line, for `wait_for_stderr`.
    pub fn spawn_logged(cmd: &mut Command) -> Proc {
        let mut proc = Proc::spawn(cmd.stderr(Stdio::piped()));
        let stderr: ChildStderr = proc.child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        proc.stderr_lines = Some(rx);
        proc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a stderr line containing `needle`; returns it. Panics with
    /// everything seen so far if it does not come in time.
    pub fn wait_for_stderr(&mut self, needle: &str, within: Duration) -> String {
        let rx = self
            .stderr_lines
            .as_ref()
            .expect("spawned with spawn_logged");
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "no stderr line with {needle:?} within {within:?}; saw:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Every stderr line that has arrived so far.
    pub fn stderr_so_far(&mut self) -> Vec<String> {
        let rx = self
            .stderr_lines
            .as_ref()
            .expect("spawned with spawn_logged");
        rx.try_iter().collect()
    }

    /// Wait for the exit status, at most `within`.
    pub fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status; fails the test if the process does not exit in time.
    pub fn expect_exit(&mut self, within: Duration) -> ExitStatus {
        match self.wait_timeout(within) {
            Some(status) => status,
            None => panic!("process {} did not exit within {within:?}", self.pid()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run to completion with a deadline; returns (status, stdout, stderr).
pub fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut out = proc.child.stdout.take().expect("stdout");
    let mut err = proc.child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let status = proc.expect_exit(DEADLINE);
    (status, out_thread.join().expect("stdout reader"), stderr)
}

/// A port that was free a moment ago, for a listener the test starts next.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// The one pseudo-random generator of the tests: an endless deterministic
/// byte stream (xorshift64*), generated in place so that gigabytes can be
/// sent and checked without holding them.
pub struct Stream {
    x: u64,
    pending: [u8; 8],
    used: usize,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream {
            x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            pending: [0; 8],
            used: 8,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == 8 {
            self.x ^= self.x >> 12;
            self.x ^= self.x << 25;
            self.x ^= self.x >> 27;
            self.pending = self.x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            self.used = 0;
        }
        self.used += 1;
        self.pending[self.used - 1]
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_byte();
        }
    }

    /// Does `got` continue this stream?
    pub fn matches(&mut self, got: &[u8]) -> bool {
        got.iter().all(|&b| self.next_byte() == b)
    }
}

/// Deterministic pseudo-random bytes, different per seed (the start of
/// `Stream::new(seed)`), so a test that fails can be rerun with the same
/// data.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Stream::new(seed).fill(&mut out);
    out
}

/// Compare two byte strings; on failure say where they first differ rather
/// than dump megabytes.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} bytes, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        first.unwrap_or(got.len().min(want.len()))
    );
}

/// The first regular file called `name` in a directory of PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Poll `cond` until it holds or `within` has passed; says which.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tcp listener of ours on a free loopback port, relaying to `socket`,
/// run in `dir` with `config` set; returns once it listens.
pub fn tcp_listener(dir: &Path, socket: &Path, config: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = p2p(dir);
    cmd.args(["tcp", &format!("127.0.0.1:{port}")])
        .arg(socket)
        .current_dir(dir);
    with_config(&mut cmd, config);
    let mut listener = Proc::spawn_logged(&mut cmd);
    listener.wait_for_stderr("listening on", DEADLINE);
    (listener, port)
}

/// Kills a process by PID when the test ends, pass or fail.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A tcp listener of ours whose parent is a `sleep` standing in for
/// remotedaemon (so a test can kill the parent, or leave a listener that
/// remotedaemon did not start), run in `cwd` with its log appended to
/// `log`. Returns once it listens: the parent, and the listener's PID.
pub fn listener_under_sleep(
    home: &Path,
    cwd: &Path,
    port: u16,
    socket: &Path,
    log: &Path,
) -> (Proc, KillOnDrop) {
    let mut cmd = Command::new("sh");
    isolate(&mut cmd, home);
    let mut parent = Proc::spawn(
        cmd.args([
            "-c",
            "\"$@\" </dev/null >/dev/null 2>>\"$LOG\" & echo $!; exec sleep 600",
            "sh",
        ])
        .arg(bin())
        .args(["tcp", &format!("127.0.0.1:{port}")])
        .arg(socket)
        .env("LOG", log)
        .current_dir(cwd)
        .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(parent.child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listener's pid");
    let listener = KillOnDrop(line.trim().parse().expect("a pid"));
    let listening = wait_until(DEADLINE, || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("listening on"))
    });
    assert!(
        listening,
        "listener did not start: {:?}",
        std::fs::read_to_string(log)
    );
    (parent, listener)
}
