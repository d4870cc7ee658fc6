//! A real git-annex driving the binary under test (std only).
//!
//! Each test gets an [`Env`]: a temporary HOME with a git identity, a PATH
//! whose first directory holds `git-annex-p2p-tcp`, `git-annex-p2p-socks`
//! and `git-annex-p2p-unix-sockets` links to the binary under test (and any
//! user-defined netname a test adds with [`Env::link_helper`]), and the
//! git-annex to use. Every command runs with a deadline, and every process a
//! test starts is killed by PID when the test ends, also when it panics.
//!
//! git-annex comes from `P2P_ANNEX_TEST_GIT_ANNEX` (a path to the binary),
//! else from PATH when that one supports generic P2P transports, else it is
//! installed into `target/git-annex` by `tests/tools/install-git-annex.sh`.
//! `P2P_ANNEX_TEST_HELPERS=DIR` makes the links point at
//! `DIR/git-annex-p2p-<netname>` instead of the binary under test: a way to
//! check the harness itself against a reference helper (e.g. a socat script).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{TempDir, find_on_path};

/// Deadline of an ordinary git or git-annex command.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A fetch of a few hundred files takes well under a few seconds; one that
/// has not finished by then hung.
const FETCH_DEADLINE: Duration = Duration::from_secs(30);

/// How long remotedaemon gets to start its listeners.
const DAEMON_START: Duration = Duration::from_secs(15);

/// How long `p2p-annex serve` gets to have remotedaemon and its listeners
/// up (git-annex takes about a second to start on a loaded machine).
const SERVE_START: Duration = Duration::from_secs(30);

/// The netnames whose helper links every test environment gets.
pub const NETNAMES: [&str; 4] = ["tcp", "socks", "unix-sockets", "onion"];

// ---------------------------------------------------------------------------
// Locating git-annex

/// The git-annex the tests drive.
pub struct GitAnnex {
    /// The real (multicall) binary; per-test links named `git-annex`,
    /// `git-annex-shell` and `git-remote-p2p-annex` point at it.
    pub exe: PathBuf,
    /// Its file-type database, when it comes from the PyPI wheel.
    pub magic: Option<PathBuf>,
    pub version: String,
}

/// The git-annex to use, found (or installed) once per test run.
pub fn git_annex() -> &'static GitAnnex {
    static FOUND: OnceLock<GitAnnex> = OnceLock::new();
    FOUND.get_or_init(|| {
        let found = locate_git_annex();
        eprintln!(
            "e2e: git-annex {} at {}",
            found.version,
            found.exe.display()
        );
        found
    })
}

fn locate_git_annex() -> GitAnnex {
    if let Some(exe) = std::env::var_os("P2P_ANNEX_TEST_GIT_ANNEX") {
        let exe = PathBuf::from(exe);
        return probe_git_annex(&exe)
            .unwrap_or_else(|why| panic!("P2P_ANNEX_TEST_GIT_ANNEX={}: {why}", exe.display()));
    }
    if let Some(exe) = find_on_path("git-annex") {
        match probe_git_annex(&exe) {
            Ok(found) => return found,
            Err(why) => eprintln!(
                "note: not using {} ({why}); installing git-annex for the tests",
                exe.display()
            ),
        }
    }
    bootstrap_git_annex()
}

/// Checks that `exe` runs and knows generic P2P transports
/// (`git annex p2p --enable`, which older releases such as Debian 12's lack).
fn probe_git_annex(exe: &Path) -> Result<GitAnnex, String> {
    let exe = fs::canonicalize(exe).map_err(|e| format!("cannot resolve: {e}"))?;
    let magic = std::env::var_os("MAGIC")
        .map(PathBuf::from)
        .or_else(|| Some(exe.parent()?.join("magic.mgc")).filter(|m| m.is_file()));
    let scratch = TempDir::new("probe-git-annex");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args(args).current_dir(scratch.path());
        if let Some(magic) = &magic {
            cmd.env("MAGIC", magic);
        }
        let label = format!("{} {}", exe.display(), args.join(" "));
        run_with_deadline(cmd, label, None, DEADLINE, scratch.path())
    };
    let version = run(&["version", "--raw"]);
    if !version.success() {
        return Err(format!("it does not run:\n{}", version.describe()));
    }
    let help = run(&["p2p", "--help"]);
    if !(help.stdout.contains("--enable") || help.stderr.contains("--enable")) {
        return Err(format!(
            "version {} has no `git annex p2p --enable` (generic P2P transports)",
            version.stdout.trim()
        ));
    }
    Ok(GitAnnex {
        exe,
        magic,
        version: version.stdout.trim().to_string(),
    })
}

/// Installs the PyPI wheel into `target/git-annex` (idempotent).
fn bootstrap_git_annex() -> GitAnnex {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/tools/install-git-annex.sh");
    let dir = root.join("target/git-annex");
    let scratch = TempDir::new("install-git-annex");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg(&script).arg(&dir);
    let label = format!("sh {} {}", script.display(), dir.display());
    let how = "put a git-annex recent enough for `git annex p2p --enable` (generic P2P \
               transports; `python3 -m pip install git-annex` brings one) on PATH, or set \
               P2P_ANNEX_TEST_GIT_ANNEX to its path";
    let installed = run_with_deadline(cmd, label, None, Duration::from_secs(900), scratch.path());
    if !installed.success() {
        panic!(
            "the end-to-end tests need a real git-annex and could not install one.\n\
             Fix: {how}.\n{}",
            installed.describe()
        );
    }
    let exe = dir.join("bin/git-annex");
    probe_git_annex(&exe)
        .unwrap_or_else(|why| panic!("installed {} but: {why}\nFix: {how}.", exe.display()))
}

// ---------------------------------------------------------------------------
// Running commands with a deadline

/// What a finished (or abandoned) command did.
pub struct Outcome {
    pub label: String,
    /// `None` when the deadline passed and the command was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Processes of its group still running [`LINGER`] after it exited
    /// (then killed), described; empty when it cleaned up after itself.
    pub leftovers: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// A report for panic messages: what ran, how it ended, what it said.
    pub fn describe(&self) -> String {
        let ended = match self.status {
            Some(status) => format!("{status}"),
            None => "deadline passed, killed".to_string(),
        };
        format!(
            "`{}`: {ended} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.label,
            self.elapsed,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// Panics with the full report unless the command succeeded.
    pub fn expect_success(self) -> Outcome {
        if !self.success() {
            panic!("command failed: {}", self.describe());
        }
        self
    }
}

/// The end of a long output is where the error usually is.
fn tail(text: &str) -> &str {
    const KEEP: usize = 8000;
    if text.len() <= KEEP {
        return text;
    }
    let mut start = text.len() - KEEP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

static NEXT_OUTPUT: AtomicUsize = AtomicUsize::new(0);

/// Runs `cmd` in a process group of its own, killing the whole group when
/// the deadline passes. Output goes to files, not pipes, so a grandchild
/// that keeps the descriptors open (a daemon, a stuck helper) cannot make
/// us wait for it.
pub fn run_with_deadline(
    mut cmd: Command,
    label: String,
    stdin: Option<&[u8]>,
    deadline: Duration,
    scratch: &Path,
) -> Outcome {
    let n = NEXT_OUTPUT.fetch_add(1, Ordering::SeqCst);
    let out = scratch.join(format!("cmd-{n}.out"));
    let err = scratch.join(format!("cmd-{n}.err"));
    let create =
        |p: &Path| File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    cmd.stdout(create(&out))
        .stderr(create(&err))
        .process_group(0);
    match stdin {
        Some(bytes) => {
            let input = scratch.join(format!("cmd-{n}.in"));
            fs::write(&input, bytes).unwrap_or_else(|e| panic!("write {}: {e}", input.display()));
            cmd.stdin(File::open(&input).expect("reopen stdin file"));
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
    let group = child.id();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= deadline => {
                signal_group("KILL", group);
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => {
                sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => panic!("waiting for `{label}`: {e}"),
        }
    };
    let elapsed = start.elapsed();
    let leftovers = reap_group_leftovers(group, &label);
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Outcome {
        label,
        status,
        stdout: read(&out),
        stderr: read(&err),
        elapsed,
        leftovers,
    }
}

/// How long a command's helpers may outlive it, by default. git-annex does
/// not wait for a connect-mode helper: it closes the helper's stdin and
/// stdout and exits, and the orphaned helper must notice and exit by itself
/// (a socat script takes about 10 ms).
pub const LINGER: Duration = Duration::from_secs(2);

static LINGER_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(LINGER.as_millis() as u64);

/// Allow helpers to outlive their command by `d` in this test binary (the
/// fowl tests: connect mode closes the wormholes it opened before it exits,
/// so the mailbox frees their nameplates, which takes fowld seconds).
pub fn allow_linger(d: Duration) {
    LINGER_MS.store(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::SeqCst,
    );
}

fn linger() -> Duration {
    Duration::from_millis(LINGER_MS.load(std::sync::atomic::Ordering::SeqCst))
}

/// Waits up to [`LINGER`] for the rest of the command's process group to
/// exit; kills and describes whatever does not. (remotedaemon moves itself
/// to a group of its own, so it is not touched.)
fn reap_group_leftovers(group: u32, label: &str) -> String {
    let until = Instant::now() + linger();
    loop {
        let left: Vec<Proc> = all_procs()
            .into_iter()
            .filter(|p| p.pgrp == group && p.alive())
            .collect();
        if left.is_empty() {
            return String::new();
        }
        if Instant::now() >= until {
            let described = describe_procs(&left);
            eprintln!(
                "warning: `{label}` left processes running for {:?}, killing them:{described}",
                linger()
            );
            signal_group("KILL", group);
            return described;
        }
        sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// The process table (Linux /proc) and signals

/// One process, as /proc shows it.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub state: char,
    /// Start time in clock ticks since boot: with the PID, it identifies a
    /// process even after its PID could have been reused.
    pub start: u64,
    /// The kernel's name for it (executable's basename, 15 bytes at most):
    /// all that is left of a zombie, whose argv is gone.
    pub comm: String,
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
}

impl Proc {
    pub fn read(pid: u32) -> Option<Proc> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: the fields
        // we want come after the last ')'.
        let close = stat.rfind(')')?;
        let comm = stat[stat.find('(')? + 1..close].to_string();
        let rest = &stat[close + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let argv = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Proc {
            pid,
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
            comm,
            argv,
            cwd: fs::read_link(format!("/proc/{pid}/cwd")).ok(),
        })
    }

    /// Zombies count as gone: they hold no port and no file.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Still the same process (not exited, PID not reused)?
    fn still_running(&self) -> bool {
        Proc::read(self.pid).is_some_and(|now| now.start == self.start && now.alive())
    }

    fn arg_name(&self, i: usize) -> Option<&str> {
        let arg = self.argv.get(i)?;
        Some(arg.rsplit('/').next().unwrap_or(arg))
    }

    /// A `git-annex-p2p-<netname>` helper: argv[0] for a binary, argv[1]
    /// for a script run by its interpreter, the name of what was executed
    /// for both (and for a zombie).
    pub fn is_p2p_helper(&self) -> bool {
        const PREFIX: &str = "git-annex-p2p-";
        self.comm.starts_with(PREFIX)
            || (0..2).any(|i| self.arg_name(i).is_some_and(|n| n.starts_with(PREFIX)))
    }

    pub fn is_remotedaemon(&self) -> bool {
        self.arg_name(0) == Some("git-annex")
            && self.argv.get(1).map(String::as_str) == Some("remotedaemon")
    }

    fn cwd_is(&self, dir: &Path) -> bool {
        self.cwd.as_deref() == Some(dir)
    }

    fn cwd_under(&self, dir: &Path) -> bool {
        self.cwd.as_deref().is_some_and(|c| c.starts_with(dir))
    }
}

pub fn all_procs() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        panic!("the end-to-end tests need Linux /proc to find and stop processes");
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(Proc::read)
        .collect()
}

/// `roots` and everything below them in the process tree.
fn with_descendants(table: &[Proc], roots: &BTreeSet<u32>) -> BTreeSet<u32> {
    let mut found = roots.clone();
    loop {
        let before = found.len();
        for p in table {
            if found.contains(&p.ppid) {
                found.insert(p.pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

fn describe_procs(procs: &[Proc]) -> String {
    let lines: Vec<String> = procs
        .iter()
        .map(|p| {
            let what = if p.argv.is_empty() {
                format!("({})", p.comm)
            } else {
                p.argv.join(" ")
            };
            format!("\n  pid {} ppid {} [{}] {what}", p.pid, p.ppid, p.state)
        })
        .collect();
    lines.concat()
}

/// Sends a signal through sh's `kill`: std has no kill(2) but SIGKILL to a
/// direct child, and the arguments are numbers, never addresses.
fn signal(sig: &str, targets: &[String]) {
    if targets.is_empty() {
        return;
    }
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -s \"$0\" -- \"$@\" 2>/dev/null", sig])
        .args(targets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn signal_group(sig: &str, group: u32) {
    signal(sig, &[format!("-{group}")]);
}

/// SIGTERM, a grace period, then SIGKILL for whatever still runs.
/// Returns the processes that survived even that.
fn terminate(procs: &[Proc]) -> Vec<Proc> {
    let running =
        |ps: &[Proc]| -> Vec<Proc> { ps.iter().filter(|p| p.still_running()).cloned().collect() };
    let pids = |ps: &[Proc]| -> Vec<String> { ps.iter().map(|p| p.pid.to_string()).collect() };
    for (sig, grace) in [
        ("TERM", Duration::from_secs(3)),
        ("KILL", Duration::from_secs(3)),
    ] {
        let left = running(procs);
        signal(sig, &pids(&left));
        let until = Instant::now() + grace;
        while Instant::now() < until && !running(procs).is_empty() {
            sleep(Duration::from_millis(10));
        }
    }
    running(procs)
}

// ---------------------------------------------------------------------------
// The per-test environment

/// One test's world: HOME, PATH, git-annex, a socket directory, and a
/// scratch directory; all under one temporary directory.
pub struct Env {
    root: PathBuf,
    home: PathBuf,
    bin: PathBuf,
    sockets: PathBuf,
    scratch: PathBuf,
    vars: Vec<(OsString, OsString)>,
    /// Processes that outlived their command by more than [`LINGER`].
    lingered: Mutex<Vec<String>>,
    // Last, so processes are killed (in Drop) before it is removed.
    _dir: TempDir,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let annex = git_annex();
        let dir = TempDir::new(tag);
        // Canonical, so it compares equal to /proc/PID/cwd.
        let root = fs::canonicalize(dir.path()).expect("canonicalize test directory");
        let mkdir = |name: &str| {
            let d = root.join(name);
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            d
        };
        let (home, bin, sockets, scratch, tmp) = (
            mkdir("home"),
            mkdir("bin"),
            mkdir("socks"),
            mkdir("cmd"),
            mkdir("tmp"),
        );
        link_tools(&bin, annex);
        let vars = test_vars(&home, &bin, &tmp, annex);
        let lingered = Mutex::new(Vec::new());
        let env = Env {
            vars,
            root,
            home,
            bin,
            sockets,
            scratch,
            lingered,
            _dir: dir,
        };
        env.write_global_config();
        env
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory the unix-sockets helper shares between repositories.
    pub fn sockets(&self) -> &Path {
        &self.sockets
    }

    /// Adds (or overrides) an environment variable of every later command.
    pub fn set_var(&mut self, key: &str, value: impl Into<OsString>) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.into(), value.into()));
    }

    /// A command with this environment and nothing of the caller's.
    pub fn cmd(&self, program: &str, args: &[&str], cwd: &Path) -> Cmd<'_> {
        let mut command = Command::new(program);
        command.args(args).current_dir(cwd).env_clear();
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
        let where_ = cwd.strip_prefix(&self.root).unwrap_or(cwd);
        Cmd {
            env: self,
            command,
            label: format!("{program} {} (in {})", args.join(" "), where_.display()),
            stdin: None,
            deadline: DEADLINE,
        }
    }

    /// A fresh git-annex repository `name` under the test directory.
    pub fn repo(&self, name: &str) -> Repo<'_> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let repo = Repo { env: self, dir };
        repo.git(&["init", "-q"]);
        repo.annex(&["init", name]);
        repo
    }

    /// A repository `name` this test made earlier with [`Env::repo`].
    pub fn existing_repo(&self, name: &str) -> Repo<'_> {
        Repo {
            env: self,
            dir: self.root.join(name),
        }
    }

    /// Adds a `git-annex-p2p-NETNAME` link for a user-defined netname.
    pub fn link_helper(&self, netname: &str) {
        let name = format!("git-annex-p2p-{netname}");
        let (link, target) = (self.bin.join(&name), helper_target(&name));
        symlink(&target, &link)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
    }

    /// `git config --global KEY VALUE`: seen by every repository of the test.
    pub fn global_config(&self, key: &str, value: &str) {
        self.cmd("git", &["config", "--global", key, value], &self.home)
            .ok();
    }

    /// Identity, branch name and the shared socket directory, for every
    /// repository of this test (global, so both sides of a link agree).
    fn write_global_config(&self) {
        let sockets = self
            .sockets
            .to_str()
            .expect("socket directory path is UTF-8");
        for (key, value) in [
            ("user.name", "p2p-annex tests"),
            ("user.email", "tests@p2p-annex.invalid"),
            ("init.defaultBranch", "main"),
            ("p2p-annex.unix-sockets.dir", sockets),
        ] {
            self.global_config(key, value);
        }
    }

    /// Panics (after killing them) if processes still run in this test's
    /// directories, or if any outlived its command by more than [`LINGER`]:
    /// everything a test starts must stop or be stopped by the test.
    pub fn assert_no_leftover_processes(&self) {
        let lingered = self.lingered.lock().map(|l| l.clone()).unwrap_or_default();
        if !lingered.is_empty() {
            panic!(
                "processes outlived their command by more than {:?}:\n{}",
                linger(),
                lingered.join("\n")
            );
        }
        let left = self.leftovers();
        if !left.is_empty() {
            let survivors = terminate(&left);
            panic!(
                "processes left running in {}:{}{}",
                self.root.display(),
                describe_procs(&left),
                if survivors.is_empty() {
                    String::new()
                } else {
                    " (some survived SIGKILL)".into()
                }
            );
        }
    }

    fn leftovers(&self) -> Vec<Proc> {
        let me = std::process::id();
        all_procs()
            .into_iter()
            .filter(|p| p.pid != me && p.alive() && p.cwd_under(&self.root))
            .collect()
    }
}

impl Drop for Env {
    /// Safety net for panicking tests: nothing may outlive the test.
    fn drop(&mut self) {
        let left = self.leftovers();
        if !left.is_empty() {
            eprintln!(
                "note: killing processes left in {}:{}",
                self.root.display(),
                describe_procs(&left)
            );
            terminate(&left);
        }
    }
}

/// The environment every command of a test gets (the caller's is cleared,
/// so no GIT_DIR or user configuration leaks in).
fn test_vars(home: &Path, bin: &Path, tmp: &Path, annex: &GitAnnex) -> Vec<(OsString, OsString)> {
    let outer = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&outer)),
    )
    .expect("PATH entries contain no ':'");
    let mut vars: Vec<(OsString, OsString)> = vec![
        ("HOME".into(), home.into()),
        ("PATH".into(), path),
        ("TMPDIR".into(), tmp.into()),
        ("LC_ALL".into(), "C.UTF-8".into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
    ];
    if let Some(magic) = &annex.magic {
        vars.push(("MAGIC".into(), magic.into()));
    }
    // Rust panics in the helper should be readable in test output.
    if let Some(bt) = std::env::var_os("RUST_BACKTRACE") {
        vars.push(("RUST_BACKTRACE".into(), bt));
    }
    vars
}

/// The test's bin directory: git-annex under the names git and git-annex
/// look for, and our helpers under theirs.
fn link_tools(bin: &Path, annex: &GitAnnex) {
    let mut links: Vec<(String, PathBuf)> =
        ["git-annex", "git-annex-shell", "git-remote-p2p-annex"]
            .iter()
            .map(|name| (name.to_string(), annex.exe.clone()))
            .collect();
    for net in NETNAMES {
        let name = format!("git-annex-p2p-{net}");
        links.push((name.clone(), helper_target(&name)));
    }
    for (name, target) in links {
        let link = bin.join(&name);
        symlink(&target, &link)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
    }
}

fn helper_target(name: &str) -> PathBuf {
    match std::env::var_os("P2P_ANNEX_TEST_HELPERS") {
        Some(dir) => {
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| {
                eprintln!("note: P2P_ANNEX_TEST_HELPERS is set: not testing p2p-annex")
            });
            Path::new(&dir).join(name)
        }
        None => super::bin(),
    }
}

/// A command being prepared: stdin and deadline, then run.
pub struct Cmd<'e> {
    env: &'e Env,
    command: Command,
    label: String,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl Cmd<'_> {
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs to the end or the deadline, whatever the result.
    pub fn run(self) -> Outcome {
        let got = run_with_deadline(
            self.command,
            self.label,
            self.stdin.as_deref(),
            self.deadline,
            &self.env.scratch,
        );
        if !got.leftovers.is_empty() {
            if let Ok(mut lingered) = self.env.lingered.lock() {
                lingered.push(format!("after `{}`:{}", got.label, got.leftovers));
            }
        }
        got
    }

    /// Runs and panics with stdout and stderr unless it succeeded.
    pub fn ok(self) -> Outcome {
        self.run().expect_success()
    }
}

impl<'e> Cmd<'e> {
    /// Starts it in the background, in a process group of its own, output
    /// to files; see [`Background`].
    pub fn spawn(mut self) -> Background<'e> {
        let n = NEXT_OUTPUT.fetch_add(1, Ordering::SeqCst);
        let err = self.env.scratch.join(format!("bg-{n}.err"));
        let out =
            File::create(self.env.scratch.join(format!("bg-{n}.out"))).expect("create output file");
        self.command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(&err).expect("create stderr file"))
            .process_group(0);
        let child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", self.label));
        Background {
            child,
            label: self.label,
            err,
            _env: self.env,
        }
    }
}

/// A long-running command of a test (such as `p2p-annex serve`). Dropping
/// it (also when the test panics) stops its process group: SIGTERM, then
/// SIGKILL.
pub struct Background<'e> {
    child: std::process::Child,
    label: String,
    err: PathBuf,
    _env: &'e Env,
}

impl Background<'_> {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it ends within `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= until => return None,
                Ok(None) => sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for `{}`: {e}", self.label),
            }
        }
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.err).unwrap_or_default()).into_owned()
    }
}

impl Drop for Background<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let group = self.child.id();
            signal_group("TERM", group);
            if self.wait(Duration::from_secs(5)).is_none() {
                signal_group("KILL", group);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Repositories

/// A git-annex repository of a test.
pub struct Repo<'e> {
    env: &'e Env,
    dir: PathBuf,
}

impl<'e> Repo<'e> {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Any program, run in the repository's top directory.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Cmd<'e> {
        self.env.cmd(program, args, &self.dir)
    }

    /// `git ARGS`, which must succeed.
    pub fn git(&self, args: &[&str]) -> Outcome {
        self.cmd("git", args).ok()
    }

    /// `git annex ARGS`, which must succeed.
    pub fn annex(&self, args: &[&str]) -> Outcome {
        self.annex_cmd(args).ok()
    }

    /// `git annex ARGS`, to adjust (stdin, deadline) before running.
    pub fn annex_cmd(&self, args: &[&str]) -> Cmd<'e> {
        let all: Vec<&str> = std::iter::once("annex")
            .chain(args.iter().copied())
            .collect();
        self.cmd("git", &all)
    }

    pub fn config(&self, key: &str, value: &str) {
        self.git(&["config", key, value]);
    }

    /// `git config --get-all KEY`: empty when unset.
    pub fn config_get_all(&self, key: &str) -> Vec<String> {
        let got = self.cmd("git", &["config", "--get-all", key]).run();
        got.stdout.lines().map(str::to_string).collect()
    }

    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(&["rev-parse", "--verify", rev])
            .stdout
            .trim()
            .to_string()
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let file = self.dir.join(rel);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        fs::write(&file, bytes).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }

    /// A file's content, through the annex symlink.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        let file = self.dir.join(rel);
        fs::read(&file)
            .unwrap_or_else(|e| panic!("read {} (is its content present?): {e}", file.display()))
    }

    /// `git fetch -q REMOTE`, once, under a deadline. Peers serve under
    /// `p2p-annex serve` ([`Repo::serve`]), whose git shim keeps git-annex's
    /// relay race (doc/upstream/connectdone-race.md) from hanging a fetch:
    /// a hang here is a failure, never retried.
    pub fn fetch(&self, remote: &str) -> Outcome {
        self.fetch_via(&[], remote)
    }

    /// `fetch`, with git run under `prefix` (`ip netns exec NS`, say).
    pub fn fetch_via(&self, prefix: &[&str], remote: &str) -> Outcome {
        let args: Vec<&str> = prefix
            .iter()
            .copied()
            .chain(["git", "fetch", "-q", remote])
            .collect();
        self.cmd(args[0], &args[1..]).deadline(FETCH_DEADLINE).ok()
    }

    /// Annexes the files and commits them.
    pub fn add_and_commit(&self, files: &[&str], message: &str) {
        let mut args = vec!["add", "--"];
        args.extend_from_slice(files);
        self.annex(&args);
        self.git(&["commit", "-q", "-m", message]);
    }

    /// Files whose content git-annex believes is in `location`
    /// (`here` or a remote name), sorted.
    pub fn files_in(&self, location: &str) -> Vec<String> {
        let found = self.annex(&["find", &format!("--in={location}")]);
        let mut files: Vec<String> = found.stdout.lines().map(str::to_string).collect();
        files.sort();
        files
    }

    /// This repository's enabled P2P addresses (`.git/annex/creds/p2paddrs`),
    /// as `p2p-annex::<netname>:<address>` lines. Holds no token.
    pub fn own_p2p_addresses(&self) -> Vec<String> {
        let file = self.dir.join(".git/annex/creds/p2paddrs");
        let text = fs::read_to_string(&file).unwrap_or_default();
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `git annex p2p --gen-addresses`, the lines for `netname`.
    /// They carry secret tokens: pass them on, never print them.
    pub fn gen_addresses(&self, netname: &str) -> Vec<Secret> {
        let prefix = format!("p2p-annex::{netname}:");
        let out = self.annex_cmd(&["p2p", "--gen-addresses"]).run();
        if !out.success() {
            // stdout is left out: it may hold tokens.
            panic!(
                "`git annex p2p --gen-addresses` failed ({:?}):\n{}",
                out.status,
                tail(&out.stderr)
            );
        }
        out.stdout
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| Secret(l.to_string()))
            .collect()
    }

    /// `git annex p2p --link --name NAME` fed `address`, retried until the
    /// peer's listener answers (it starts asynchronously after remotedaemon
    /// returns; a failed link leaves no remote behind). Returns the remote's
    /// URL, `p2p-annex::<netname>:<address>`.
    pub fn link(&self, name: &str, address: &Secret) -> String {
        self.link_via(&[], name, address)
    }

    /// `link`, with git-annex run under `prefix` (`ip netns exec NS`, say).
    pub fn link_via(&self, prefix: &[&str], name: &str, address: &Secret) -> String {
        let start = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let args: Vec<&str> = prefix
                .iter()
                .copied()
                .chain(["git", "annex", "p2p", "--link", "--name", name])
                .collect();
            let got = self
                .cmd(args[0], &args[1..])
                .stdin(format!("{}\n", address.0))
                .deadline(DAEMON_START)
                .run();
            if got.success() {
                break;
            }
            if start.elapsed() > DAEMON_START {
                panic!(
                    "could not link to the peer after {tries} tries; last: {}",
                    got.describe()
                );
            }
            sleep(Duration::from_millis(100));
        }
        let url = self
            .git(&["remote", "get-url", name])
            .stdout
            .trim()
            .to_string();
        assert_eq!(url, address.url(), "URL of the linked remote {name}");
        url
    }

    /// Starts `p2p-annex serve` here (remotedaemon supervised, the git shim
    /// first on its PATH, so no fetch hangs and no push fails in git-annex's
    /// relay race) and waits until its remotedaemon runs one live listener
    /// per enabled address. Dropping the guard stops serve, and serve stops
    /// remotedaemon and the listeners.
    pub fn serve(&self) -> Background<'e> {
        self.serve_via(&[])
    }

    /// `serve`, run under `prefix` (`ip netns exec NS`, which execs it:
    /// the pid stays serve's).
    pub fn serve_via(&self, prefix: &[&str]) -> Background<'e> {
        let expected = self.own_p2p_addresses().len();
        assert!(
            expected > 0,
            "no P2P network is enabled in {}: run `git annex p2p --enable` first",
            self.dir.display()
        );
        let bin = super::bin();
        let args: Vec<&str> = prefix
            .iter()
            .copied()
            .chain([bin.to_str().expect("UTF-8 binary path"), "serve"])
            .collect();
        let mut serve = self.cmd(args[0], &args[1..]).spawn();
        let start = Instant::now();
        loop {
            let live = served_listeners(serve.pid()).len();
            if live >= expected {
                return serve;
            }
            let ended = serve.wait(Duration::ZERO);
            assert!(
                ended.is_none() && start.elapsed() < SERVE_START,
                "`p2p-annex serve` in {} runs {live} of {expected} listener(s) after {:?} \
                 (exit: {ended:?}); its stderr:\n{}",
                self.dir.display(),
                start.elapsed(),
                serve.stderr()
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Starts `git annex remotedaemon` (which daemonizes) and waits until it
    /// runs one listener per enabled address. The guard stops them all.
    pub fn start_remotedaemon(&self) -> RemoteDaemon<'e> {
        self.start_remotedaemon_via(&[])
    }

    /// `start_remotedaemon`, run under `prefix` (`ip netns exec NS`, say).
    pub fn start_remotedaemon_via(&self, prefix: &[&str]) -> RemoteDaemon<'e> {
        let expected = self.own_p2p_addresses().len();
        assert!(
            expected > 0,
            "no P2P network is enabled in {}: run `git annex p2p --enable` first",
            self.dir.display()
        );
        // Armed before anything starts, so a failure below still cleans up.
        let mut guard = RemoteDaemon {
            repo: self.dir.clone(),
            daemons: Vec::new(),
            listeners: Vec::new(),
            _env: self.env,
        };
        let args: Vec<&str> = prefix
            .iter()
            .copied()
            .chain(["git", "annex", "remotedaemon"])
            .collect();
        self.cmd(args[0], &args[1..]).ok();
        guard.find_daemon();
        guard.wait_for_listeners(expected);
        guard
    }
}

/// The live listeners of the remotedaemon that `p2p-annex serve` (pid
/// `serve`) runs.
pub fn served_listeners(serve: u32) -> Vec<Proc> {
    let table = all_procs();
    let daemons: BTreeSet<u32> = table
        .iter()
        .filter(|p| p.ppid == serve && p.alive() && p.is_remotedaemon())
        .map(|p| p.pid)
        .collect();
    table
        .into_iter()
        .filter(|p| daemons.contains(&p.ppid) && p.alive() && p.is_p2p_helper())
        .collect()
}

/// A `p2p-annex::<netname>:<address>:<token>` line: Debug shows no token.
pub struct Secret(String);

impl Secret {
    /// The remote URL it makes: everything before the token.
    pub fn url(&self) -> &str {
        self.0.rsplit_once(':').map_or("", |(url, _token)| url)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:<token>", self.url())
    }
}

// ---------------------------------------------------------------------------
// remotedaemon

/// A running `git annex remotedaemon` and its listeners. Dropping it
/// (also when the test panics) kills them all by PID: remotedaemon does not
/// stop its listeners, they would outlive it holding their ports.
pub struct RemoteDaemon<'e> {
    repo: PathBuf,
    daemons: Vec<Proc>,
    listeners: Vec<Proc>,
    // Borrowed so the daemon is stopped before the test directory goes.
    _env: &'e Env,
}

impl RemoteDaemon<'_> {
    pub fn pids(&self) -> Vec<u32> {
        self.daemons
            .iter()
            .filter(|p| p.still_running())
            .map(|p| p.pid)
            .collect()
    }

    /// The listen-mode helper processes remotedaemon started.
    pub fn listeners(&self) -> &[Proc] {
        &self.listeners
    }

    /// remotedaemon forks and its parent exits: it runs with PPID 1 and no
    /// pid file, so it is found by command line and working directory.
    fn find_daemon(&mut self) {
        let start = Instant::now();
        loop {
            let found: Vec<Proc> = all_procs()
                .into_iter()
                .filter(|p| p.alive() && p.is_remotedaemon() && p.cwd_is(&self.repo))
                .collect();
            if !found.is_empty() {
                self.daemons = found;
                return;
            }
            if start.elapsed() > DAEMON_START {
                panic!(
                    "`git annex remotedaemon` returned but no daemon runs in {}",
                    self.repo.display()
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `expected` live listeners among the daemon's descendants.
    fn wait_for_listeners(&mut self, expected: usize) {
        let start = Instant::now();
        loop {
            let table = all_procs();
            // A process of the daemonizing fork may have been found first
            // and be gone now: take in every remotedaemon of the repository.
            for p in &table {
                if p.alive()
                    && p.is_remotedaemon()
                    && p.cwd_is(&self.repo)
                    && !self
                        .daemons
                        .iter()
                        .any(|d| d.pid == p.pid && d.start == p.start)
                {
                    self.daemons.push(p.clone());
                }
            }
            let roots: BTreeSet<u32> = self.pids().into_iter().collect();
            let tree = with_descendants(&table, &roots);
            let below: Vec<Proc> = table
                .into_iter()
                .filter(|p| tree.contains(&p.pid) && !roots.contains(&p.pid))
                .collect();
            let listeners: Vec<Proc> = below
                .iter()
                .filter(|p| p.is_p2p_helper())
                .cloned()
                .collect();
            let live = listeners.iter().filter(|p| p.alive()).count();
            // Remember every one seen, so Drop kills even those that moved.
            for l in &listeners {
                if !self
                    .listeners
                    .iter()
                    .any(|k| k.pid == l.pid && k.start == l.start)
                {
                    self.listeners.push(l.clone());
                }
            }
            if live >= expected {
                return;
            }
            // remotedaemon never restarts a listener: one that exited (a
            // zombie, since nobody waits for it) stays gone.
            let exited = listeners.len() - live;
            let daemon_gone = !self.daemons.iter().any(Proc::still_running);
            if exited > 0 || daemon_gone || start.elapsed() > DAEMON_START {
                panic!(
                    "remotedaemon in {} should run {expected} listener(s), runs {live}{}{}. \
                     A listener's stderr is /dev/null under remotedaemon: run it by hand \
                     (`git-annex-p2p-NET ADDRESS SOCKET` in the repository) to see why. \
                     Processes under the daemon:{}",
                    self.repo.display(),
                    if exited > 0 {
                        format!("; {exited} exited [Z]")
                    } else {
                        String::new()
                    },
                    if daemon_gone {
                        "; remotedaemon itself has exited"
                    } else {
                        ""
                    },
                    describe_procs(&below)
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Everything to kill: the daemon(s), listeners seen before, helpers and
    /// daemons still working in the repository, and all their descendants.
    fn targets(&self) -> Vec<Proc> {
        let table = all_procs();
        let known = self.daemons.iter().chain(&self.listeners);
        let mut roots: BTreeSet<u32> = known
            .filter(|k| table.iter().any(|p| p.pid == k.pid && p.start == k.start))
            .map(|k| k.pid)
            .collect();
        for p in &table {
            if p.cwd_is(&self.repo) && (p.is_remotedaemon() || p.is_p2p_helper()) {
                roots.insert(p.pid);
            }
        }
        let all = with_descendants(&table, &roots);
        table
            .into_iter()
            .filter(|p| all.contains(&p.pid) && p.alive())
            .collect()
    }

    /// Stops everything now (Drop does the same).
    pub fn stop(mut self) {
        self.kill_all();
    }

    fn kill_all(&mut self) {
        let targets = self.targets();
        let survivors = terminate(&targets);
        if !survivors.is_empty() {
            eprintln!("warning: could not kill:{}", describe_procs(&survivors));
        }
        self.daemons.clear();
        self.listeners.clear();
    }
}

impl Drop for RemoteDaemon<'_> {
    fn drop(&mut self) {
        self.kill_all();
    }
}

// ---------------------------------------------------------------------------
// Test data

/// Deterministic pseudo-random bytes, so content is not compressible and
/// differs between files.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    super::random_bytes(len, seed)
}
