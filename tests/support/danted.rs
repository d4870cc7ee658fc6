//! A real SOCKS5 server for the tests: Debian's dante-server (`danted`) on
//! loopback, with a configuration the test writes, killed when dropped.
//!
//! danted runs in a private mount namespace (unshare(1)) where /etc/passwd,
//! /etc/shadow, /etc/hosts and /etc/nsswitch.conf are files of the test:
//! - its username/password method checks system accounts (getpwnam,
//!   getspnam, crypt(3)), so the test account exists only in there and
//!   nothing on the machine changes;
//! - [`PEER_NAME`] resolves to 127.0.0.1 in there and nowhere else, so a
//!   connection to it proves the name travelled to the proxy (ATYP 3) and
//!   the proxy resolved it, as yggstack resolves `<key>.pk.ygg`;
//! - names are looked up in those files only, never in DNS, so a name that
//!   does not exist fails at once whatever the machine's network.
//!
//! As root, `unshare --mount` is enough; other users need unprivileged user
//! namespaces (`unshare --user --map-root-user --mount`).
//!
//! Without danted the tests fail and say how to install it, unless
//! `P2P_ANNEX_TEST_SKIP_DANTED=1` tells them to skip.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{TempDir, free_port};

/// A name only danted can resolve (to 127.0.0.1).
pub const PEER_NAME: &str = "peer.p2p-annex.test";

/// The account of the password-protected instance, and its password.
pub const USER: &str = "p2p-annex-test";
pub const PASSWORD: &str = "correct horse battery staple";
/// `openssl passwd -6 -salt p2pannextest 'correct horse battery staple'`
const PASSWORD_HASH: &str = "$6$p2pannextest$fHgpeJHvJhm33G7EHlJkLMFrBl5mJiRCiIXoh3NiYGXIwP5g3HSTuxt1gFOlWHwKrkSUhXAx6okeNaqUZd9eg1";

const SKIP_VAR: &str = "P2P_ANNEX_TEST_SKIP_DANTED";

/// How long danted may take to start listening.
const START: Duration = Duration::from_secs(20);

/// Mounts the test's files over the system's, then becomes danted.
/// Arguments (paths the test made, never network data): passwd shadow
/// hosts nsswitch.conf danted conf pidfile.
const SCRIPT: &str = "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/shadow \
                      && mount --bind \"$3\" /etc/hosts && mount --bind \"$4\" /etc/nsswitch.conf \
                      && exec \"$5\" -f \"$6\" -p \"$7\" -N 1";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `socksmethod: none`
    None,
    /// `socksmethod: username`, with [`USER`] and [`PASSWORD`].
    Password,
}

/// A running danted; killed (its whole process group) when dropped.
pub struct Danted {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Danted {
    /// Start one; `None` only when told to skip and danted is missing.
    pub fn start(auth: Auth) -> Option<Danted> {
        let danted = match find_danted() {
            Some(path) => path,
            None if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") => {
                // A skip is never a pass where the tests must run.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "danted not found: {SKIP_VAR}=1 skips the SOCKS tests, but CI is set"
                );
                eprintln!("SKIPPED: danted not found and {SKIP_VAR}=1: this test ran nothing");
                return None;
            }
            None => panic!(
                "the SOCKS tests need a real SOCKS5 server, Debian's dante-server (danted), \
                 not found in /usr/sbin or PATH. Install it: `apt-get install dante-server` \
                 (.ci/run does), or set {SKIP_VAR}=1 to skip these tests"
            ),
        };
        let ns = namespace_args();
        let dir = TempDir::new("danted");
        let files = write_files(dir.path());
        for _attempt in 0..5 {
            let port = free_port();
            let conf = dir.path().join("danted.conf");
            fs::write(&conf, config(port, auth)).expect("write danted.conf");
            let log = dir.path().join(format!("danted-{port}.log"));
            let out = File::create(&log).expect("create danted log");
            let err = out.try_clone().expect("clone log file");
            let mut child = Command::new("unshare")
                .args(ns)
                .args(["--", "/bin/sh", "-c", SCRIPT, "sh"])
                .args([&files.passwd, &files.shadow, &files.hosts, &files.nsswitch])
                .args([&danted, &conf])
                .arg(dir.path().join("danted.pid"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .expect("start unshare for danted");
            match wait_until_running(&mut child, &log) {
                Ok(()) => {
                    return Some(Danted {
                        port,
                        child,
                        log,
                        _dir: dir,
                    });
                }
                Err(why) => {
                    kill_group(&mut child);
                    // Someone took the port between free_port and danted's bind.
                    if why.contains("Address already in use") {
                        eprintln!("note: danted's port {port} was taken, trying another");
                        continue;
                    }
                    panic!("danted did not start: {why}");
                }
            }
        }
        panic!("danted found no free port in 5 tries");
    }

    /// `127.0.0.1:PORT`, for `p2p-annex.NETNAME.proxy`.
    pub fn proxy(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything danted logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many connections danted made to 127.0.0.1:`port` for its
    /// clients: its `log: connect` lines end with the target, written
    /// `127.0.0.1.PORT`.
    pub fn connections_to(&self, port: u16) -> usize {
        let target = format!("127.0.0.1.{port}");
        self.log()
            .lines()
            .filter(|l| {
                l.contains("tcp/connect [") && l.split_whitespace().last() == Some(target.as_str())
            })
            .count()
    }
}

/// Wait for danted's "running" line, which it logs once it listens.
fn wait_until_running(child: &mut Child, log: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(" running") {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{status}\n{text}"));
        }
        if start.elapsed() > START {
            return Err(format!("not running after {START:?}\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The group is the one danted leads (process_group(0) at spawn): its
/// request and I/O children go with it.
fn kill_group(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Danted {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn find_danted() -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/danted");
    if sbin.is_file() {
        return Some(sbin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("danted"))
        .find(|p| p.is_file())
}

/// How to get a private mount namespace here, found once.
fn namespace_args() -> &'static [&'static str] {
    static FOUND: OnceLock<Result<&'static [&'static str], String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let candidates: [&'static [&'static str]; 2] =
            [&["--mount"], &["--user", "--map-root-user", "--mount"]];
        let mut tried = Vec::new();
        for args in candidates {
            let out = Command::new("unshare")
                .args(args)
                .arg("true")
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => return Ok(args),
                Ok(o) => tried.push(format!(
                    "unshare {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => tried.push(format!("unshare: {e}")),
            }
        }
        Err(tried.join("; "))
    });
    match found {
        Ok(args) => args,
        Err(why) => panic!(
            "the SOCKS tests run danted in a private mount namespace (so its test account \
             and host names change nothing on this machine), and none can be made here \
             ({why}). Run the tests as root, or allow unprivileged user namespaces \
             (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces), \
             or set {SKIP_VAR}=1 to skip these tests"
        ),
    }
}

struct Files {
    passwd: PathBuf,
    shadow: PathBuf,
    hosts: PathBuf,
    nsswitch: PathBuf,
}

fn write_files(dir: &Path) -> Files {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    };
    // The machine's accounts stay (danted looks up its own users), plus ours.
    let mut passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd.push_str(&format!(
        "{USER}:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
    ));
    Files {
        passwd: write("passwd", &passwd),
        shadow: write(
            "shadow",
            &format!("{USER}:{PASSWORD_HASH}:19000:0:99999:7:::\n"),
        ),
        hosts: write(
            "hosts",
            &format!("127.0.0.1 localhost\n127.0.0.1 {PEER_NAME}\n"),
        ),
        nsswitch: write(
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        ),
    }
}

/// Loopback only, both ways: the test proxy cannot be used to reach
/// anything else, which also gives a real "not allowed by ruleset" reply.
fn config(port: u16, auth: Auth) -> String {
    let method = match auth {
        Auth::None => "none",
        Auth::Password => "username",
    };
    format!(
        "# Written by the p2p-annex tests.
logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: {method}
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect disconnect error
}}
"
    )
}
