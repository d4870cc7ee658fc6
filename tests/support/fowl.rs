//! fowl for the tests: fowl and the magic-wormhole mailbox server from PyPI
//! in a venv under target/ (`tests/tools/fowl/install-venv.sh`, pinned
//! versions, made once), and a network namespace with loopback only that
//! holds a local mailbox. fowld has the public transit relay (and, without
//! `--mailbox`, the public mailbox) hard-coded: nothing that runs fowld or
//! talks to the mailbox may run outside such a namespace, so every command
//! here is `ip netns exec NS …`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::annex::run_with_deadline;
use super::netns::Netns;
use super::{TempDir, wait_until};

/// The mailbox's port, on the namespace's own loopback (no clash with
/// anything outside it or in another test's namespace).
pub const MAILBOX_PORT: u16 = 4000;

/// How long the mailbox (twistd, Python) may take to listen; about 1-2 s
/// on an idle machine.
const MAILBOX_START: Duration = Duration::from_secs(60);

/// How long making the venv may take (pip from PyPI: ~15 s here).
const VENV_INSTALL: Duration = Duration::from_secs(600);

/// The venv with fowld and twistd, made (or found up to date) once per test
/// run; `install-venv.sh` takes a lock, so parallel runs build it once.
/// `P2P_ANNEX_TEST_FOWL_VENV` names another venv directory.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let venv = std::env::var_os("P2P_ANNEX_TEST_FOWL_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/fowl-venv"));
        let script = root.join("tests/tools/fowl/install-venv.sh");
        let scratch = TempDir::new("fowl-venv");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&script).arg(&venv);
        let label = format!("sh {} {}", script.display(), venv.display());
        let started = Instant::now();
        let made = run_with_deadline(cmd, label, None, VENV_INSTALL, scratch.path());
        assert!(
            made.success(),
            "the fowl tests need fowl and the mailbox server from PyPI in {} and could not \
             install them (PyPI unreachable? python3-venv missing? \
             tests/tools/install-deps.sh installs what is needed):\n{}",
            venv.display(),
            made.describe()
        );
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("fowl: venv made in {:?}", started.elapsed());
        }
        venv
    })
}

/// The venv's `fowld`, for `p2p-annex.fowl.fowld`.
pub fn fowld() -> PathBuf {
    venv().join("bin/fowld")
}

/// A loopback-only namespace with a local mailbox in it. Dropping it kills
/// everything in the namespace (fowld included) and deletes it.
pub struct FowlNet {
    mailbox: Option<Child>,
    pub ns: Netns,
    // Last, so everything in the namespace is killed before it is removed.
    pub dir: TempDir,
}

impl FowlNet {
    pub fn start() -> FowlNet {
        venv();
        let ns = Netns::named("p2pfowl");
        ns.assert_loopback_only();
        let mut net = FowlNet {
            mailbox: None,
            ns,
            dir: TempDir::new("fowlnet"),
        };
        net.start_mailbox();
        net
    }

    /// `ws://127.0.0.1:4000/v1`, for `p2p-annex.fowl.mailbox`.
    pub fn mailbox_url(&self) -> String {
        format!("ws://127.0.0.1:{MAILBOX_PORT}/v1")
    }

    /// Starts the mailbox (again, on the same channel database) and waits
    /// until it listens.
    pub fn start_mailbox(&mut self) {
        assert!(self.mailbox.is_none(), "the mailbox runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mailbox.log"))
            .expect("create the mailbox's log");
        let child = self
            .ns
            .exec(&venv().join("bin/twistd"))
            .args(["-n", "--pidfile=", "wormhole-mailbox", "--port"])
            .arg(format!("tcp:{MAILBOX_PORT}:interface=127.0.0.1"))
            .arg("--channel-db")
            .arg(self.dir.path().join("mailbox.sqlite"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start twistd wormhole-mailbox");
        self.mailbox = Some(child);
        let want = format!("127.0.0.1:{MAILBOX_PORT}");
        let started = Instant::now();
        let up = wait_until(MAILBOX_START, || {
            let exited = self
                .mailbox
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            exited || self.ns.listening().contains(&want)
        });
        let exited = self
            .mailbox
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some());
        assert!(
            up && !exited,
            "the mailbox did not listen on {want} within {MAILBOX_START:?} (exited: {exited}); \
             its log:\n{}",
            self.mailbox_log()
        );
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("fowl: mailbox up after {:?}", started.elapsed());
        }
    }

    /// Kills the mailbox (SIGKILL) and waits until its port is closed.
    pub fn stop_mailbox(&mut self) {
        if let Some(mut c) = self.mailbox.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let want = format!("127.0.0.1:{MAILBOX_PORT}");
        assert!(
            wait_until(MAILBOX_START, || !self.ns.listening().contains(&want)),
            "the mailbox's port stays open after it was killed"
        );
    }

    pub fn mailbox_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mailbox.log")).unwrap_or_default()
    }

    /// `ip netns exec NS PROGRAM`.
    pub fn exec(&self, program: &Path) -> Command {
        self.ns.exec(program)
    }

    /// The fowld processes in the namespace (python runs the `fowld`
    /// script: its path is an argument).
    pub fn fowld_pids(&self) -> Vec<u32> {
        fowld_pids_in(&self.ns.0)
    }

    /// The total resident memory of every fowld in the namespace, KiB.
    pub fn fowld_rss_kib(&self) -> u64 {
        self.fowld_pids().into_iter().map(rss_kib).sum()
    }

    /// Samples [`FowlNet::fowld_rss_kib`] every 200 ms until the sampler
    /// is dropped; its peak and the most fowld processes seen at once.
    pub fn rss_sampler(&self) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let (ns, s, p, m) = (self.ns.0.clone(), stop.clone(), peak.clone(), most.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let pids = fowld_pids_in(&ns);
                let rss: u64 = pids.iter().map(|&pid| rss_kib(pid)).sum();
                p.fetch_max(rss, Ordering::SeqCst);
                m.fetch_max(pids.len() as u64, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(200));
            }
        });
        RssSampler {
            stop,
            peak,
            most,
            thread: Some(thread),
        }
    }

    /// A fowld of the test's own in the namespace, driven by JSON lines.
    pub fn fowld(&self, tag: &str) -> Fowld {
        let stderr = std::fs::File::create(self.dir.path().join(format!("fowld-{tag}.err")))
            .expect("create fowld's stderr file");
        let mut child = self
            .ns
            .exec(&fowld())
            .arg("--mailbox")
            .arg(self.mailbox_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start fowld");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // One line per chunk moved: not worth a message.
                if line.contains("\"bytes-in\"") || line.contains("\"bytes-out\"") {
                    continue;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Fowld {
            child,
            stdin,
            lines: rx,
        }
    }

    /// The TCP sockets listening in the namespace and the pid of the
    /// process that owns each (`ss -ltnpH`): (address:port, pid).
    pub fn listeners_with_pids(&self) -> Vec<(String, u32)> {
        self.ss(&["-ltnpH"])
            .into_iter()
            .map(|(local, _peer, pid)| (local, pid))
            .collect()
    }

    /// The established TCP connections in the namespace (`ss -tnpH`):
    /// (local, peer, owning pid), one row per owner.
    pub fn connections_with_pids(&self) -> Vec<(String, String, u32)> {
        self.ss(&["-tnpH", "state", "established"])
    }

    /// How many fowld children of process `parent` have a connection to
    /// the mailbox open (a listener's armed slots).
    pub fn mailbox_clients_of(&self, parent: u32) -> usize {
        let mailbox = format!("127.0.0.1:{MAILBOX_PORT}");
        let children: Vec<u32> = self
            .fowld_pids()
            .into_iter()
            .filter(|&p| ppid(p) == Some(parent))
            .collect();
        let mut with: Vec<u32> = self
            .connections_with_pids()
            .into_iter()
            .filter(|(_, peer, pid)| *peer == mailbox && children.contains(pid))
            .map(|(_, _, pid)| pid)
            .collect();
        with.sort_unstable();
        with.dedup();
        with.len()
    }

    /// The fowld children of listener `parent` that have a stream open to
    /// the listener's own loopback port: those serving a connection.
    pub fn serving_fowlds_of(&self, parent: u32) -> Vec<u32> {
        let ports: Vec<String> = self
            .listeners_with_pids()
            .into_iter()
            .filter(|(_, pid)| *pid == parent)
            .map(|(local, _)| local)
            .collect();
        let mut found: Vec<u32> = self
            .connections_with_pids()
            .into_iter()
            .filter(|(_, peer, pid)| {
                *pid != parent && ports.contains(peer) && ppid(*pid) == Some(parent)
            })
            .map(|(_, _, pid)| pid)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    fn ss(&self, args: &[&str]) -> Vec<(String, String, u32)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.0, "ss"])
            .args(args)
            .output()
            .expect("run ss");
        assert!(out.status.success(), "ss failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut rows = Vec::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            // LISTEN lines: State Recv-Q Send-Q Local Peer Process; with a
            // state filter the State column is gone.
            let (local, peer) = match words.iter().position(|w| w.starts_with("users:")) {
                Some(i) if i >= 2 => (words[i - 2], words[i - 1]),
                _ => continue,
            };
            for part in line.split("pid=").skip(1) {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(pid) = digits.parse() {
                    rows.push((local.to_string(), peer.to_string(), pid));
                }
            }
        }
        rows
    }
}

impl Drop for FowlNet {
    fn drop(&mut self) {
        if let Some(mut c) = self.mailbox.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // self.ns, dropped next, kills whatever is left in the namespace;
        // then self.dir goes.
    }
}

fn fowld_pids_in(ns: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .take(2)
                    .any(|arg| arg.ends_with(b"/fowld"))
            })
        })
        .collect()
}

/// The parent of a process, from /proc (None when it is gone).
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS of a process, KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Stops sampling: (peak total RSS in KiB, most fowld processes at once).
    pub fn finish(mut self) -> (u64, u64) {
        self.halt();
        (
            self.peak.load(Ordering::SeqCst),
            self.most.load(Ordering::SeqCst),
        )
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One fowld of the test's own: JSON lines in, its output lines (all but
/// the per-chunk `bytes-in`/`bytes-out`) out. Killed when dropped.
pub struct Fowld {
    pub child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Fowld {
    pub fn send(&mut self, json: &str) {
        writeln!(self.stdin, "{json}").expect("write to fowld");
    }

    /// One line of each kind in `kinds`, in any order (fowld's events of
    /// its two halves interleave), in the order of `kinds`; panics with
    /// what came instead if they do not all come within `within`.
    pub fn expect(&mut self, kinds: &[&str], within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut found: Vec<Option<String>> = vec![None; kinds.len()];
        let mut seen = Vec::new();
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "fowld said no {kinds:?} within {within:?}; it said:\n{}",
                    seen.join("\n")
                );
            };
            let normal = line.replace("\":\"", "\": \"");
            if let Some(i) = kinds
                .iter()
                .position(|k| normal.contains(&format!("\"kind\": \"{k}\"")))
            {
                found[i].get_or_insert(line);
            } else {
                seen.push(line);
            }
        }
        found.into_iter().flatten().collect()
    }
}

impl Drop for Fowld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
