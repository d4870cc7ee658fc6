//! `p2p-annex serve [DIR]`: run a repository's `git-annex remotedaemon`
//! under supervision, in the foreground, the way service managers expect.
//!
//! Before anything else, root becomes the repository's owner (`user`).
//! Then: one `serve` per repository (`lock`), none beside a remotedaemon
//! someone started by hand, the `git` shim made (`shim`), and remotedaemon
//! run, restarted when it dies and stopped with all its listeners on
//! SIGTERM or SIGINT (`supervise`). Every event is one line on stderr (the
//! journal) and in `.git/annex/p2p-annex.serve.log`.

mod lock;
mod output;
mod shim;
mod supervise;
mod user;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, describe};
use crate::log::Log;
use crate::procs;

pub use lock::{Probe, Record, path as lock_path, probe};
pub use shim::leads as shim_leads;

/// Set in remotedaemon's environment (and so its listeners'): the pid of
/// the `serve` that runs it. `check` reads it from /proc/PID/environ; a
/// listener that sees it logs to its file, as under a plain remotedaemon.
pub const ENV_VAR: &str = "P2P_ANNEX_SERVE";

/// How long listeners left over from an earlier remotedaemon of this
/// repository get to notice that their parent is gone (they check every
/// second) before `serve` stops them itself.
const STRAY_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// The repository; the current directory when None.
    pub dir: Option<PathBuf>,
    /// Run remotedaemon with the `git` shim first on its PATH (the
    /// default). Off only to measure git-annex without the workaround.
    pub shim: bool,
}

/// The repository being served.
pub struct Repo {
    /// Where remotedaemon runs: the work tree's top, or the git directory
    /// of a bare repository. Canonical, as /proc/PID/cwd shows it.
    pub top: PathBuf,
    pub git_dir: PathBuf,
}

/// Both places `serve` logs to.
pub struct ServeLog {
    stderr: Log,
    file: Option<Log>,
}

impl ServeLog {
    fn open(git_dir: &Path) -> ServeLog {
        let path = log_path(git_dir);
        let stderr = Log::stderr("serve");
        let file = match Log::file("serve", &path) {
            Ok(file) => Some(file),
            Err(e) => {
                stderr.line(format_args!(
                    "cannot open the log file {}: {}",
                    path.display(),
                    describe(&e)
                ));
                None
            }
        };
        ServeLog { stderr, file }
    }

    pub fn line(&self, msg: fmt::Arguments<'_>) {
        self.stderr.line(msg);
        if let Some(file) = &self.file {
            file.line(msg);
        }
    }
}

/// `.git/annex/p2p-annex.serve.log`, beside the listeners' logs (`status`
/// shows the last errors of all of them).
pub fn log_path(git_dir: &Path) -> PathBuf {
    git_dir.join("annex").join("p2p-annex.serve.log")
}

pub fn run(opts: Options) -> Result<(), Error> {
    let dir = match opts.dir {
        Some(dir) => dir,
        None => std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?,
    };
    let dir = std::fs::canonicalize(&dir)
        .map_err(|e| Error::io(format!("cannot use {}", dir.display()), e))?;
    let who = user::become_owner(&dir)?;
    let repo = find_repo(&dir, &who.env)?;
    // Refusals come before the first log line: a second `serve` started
    // by mistake leaves nothing in the log of the one that runs.
    let lock = lock::Lock::acquire(&repo.git_dir)?;
    refuse_running_remotedaemon(&repo)?;
    let log = ServeLog::open(&repo.git_dir);
    log.line(format_args!(
        "starting p2p-annex {} for {} as {}{}",
        env!("CARGO_PKG_VERSION"),
        repo.top.display(),
        who.name,
        if who.switched {
            " (its owner; started as root)"
        } else {
            ""
        }
    ));
    if who.uid == 0 {
        log.line(format_args!(
            "serving as root: the repository belongs to root (a dedicated user is safer)"
        ));
    }
    stop_strays(&repo, &log);
    let original_path = std::env::var_os("PATH");
    let annex = find_on_path(original_path.as_deref(), "git-annex").ok_or_else(|| {
        Error::Refused(
            "git-annex is not on PATH (`serve` runs `git-annex remotedaemon` from there)".into(),
        )
    })?;
    let mut env: Vec<(OsString, OsString)> = who
        .env
        .iter()
        .map(|(k, v)| (OsString::from(k), v.clone()))
        .collect();
    env.push((ENV_VAR.into(), std::process::id().to_string().into()));
    if opts.shim {
        let dir = shim::make(&repo.git_dir)?;
        env.push((
            "PATH".into(),
            shim::path_with(&dir, original_path.as_deref()),
        ));
        log.line(format_args!(
            "git shim: {} first on remotedaemon's PATH",
            dir.display()
        ));
    } else {
        log.line(format_args!(
            "running without the git shim (--no-git-shim): fetches may hang \
             (git-annex's CONNECTDONE race)"
        ));
    }
    supervise::Supervisor::new(log, lock, annex, repo, env)?.run()
}

/// The git directory and top of the repository at `dir`, asking git as
/// the user we now are: its refusal ("dubious ownership") is ours.
fn find_repo(dir: &Path, env: &[(&str, OsString)]) -> Result<Repo, Error> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
    };
    let out =
        git(&["rev-parse", "--absolute-git-dir"]).map_err(|e| Error::io("cannot run git", e))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::Refused(format!(
            "{} is not a repository git will work in: {}",
            dir.display(),
            why.trim()
        )));
    }
    let git_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'));
    let top = git(&["rev-parse", "--show-toplevel"])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim_end_matches('\n')
                .to_string()
        })
        .filter(|t| !t.is_empty())
        .map_or_else(|| git_dir.clone(), PathBuf::from);
    let uuid = git(&["config", "--get", "annex.uuid"])
        .ok()
        .filter(|o| o.status.success() && !o.stdout.trim_ascii().is_empty());
    if uuid.is_none() {
        return Err(Error::Refused(format!(
            "{} is not a git-annex repository (no annex.uuid): run `git annex init` there first",
            top.display()
        )));
    }
    let top = std::fs::canonicalize(&top).unwrap_or(top);
    Ok(Repo { top, git_dir })
}

/// A remotedaemon someone started by hand serves the repository already:
/// a second one would take it offline (its listeners cannot bind, the old
/// ones see their sockets replaced and exit).
fn refuse_running_remotedaemon(repo: &Repo) -> Result<(), Error> {
    let running: Vec<String> = procs::all()
        .iter()
        .filter(|p| p.is_remotedaemon() && p.cwd_is(&repo.top))
        .map(|p| p.pid.to_string())
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "a remotedaemon already runs for {} (pid {}): stop it with `kill {}`, \
         then start serve again",
        repo.top.display(),
        running.join(", "),
        running.join(" ")
    )))
}

/// Listeners of this repository that no remotedaemon runs: orphans of one
/// that was killed. They hold the ports our remotedaemon's listeners need.
fn strays(repo: &Repo) -> Vec<procs::Proc> {
    let table = procs::all();
    let daemons: Vec<u32> = table
        .iter()
        .filter(|p| p.is_remotedaemon())
        .map(|p| p.pid)
        .collect();
    table
        .into_iter()
        .filter(|p| p.alive() && p.cwd_is(&repo.top) && p.listen_args().is_some())
        .filter(|p| !daemons.contains(&p.ppid))
        .collect()
}

/// Give orphaned listeners a moment to go by themselves, then TERM them.
fn stop_strays(repo: &Repo, log: &ServeLog) {
    let until = std::time::Instant::now() + STRAY_GRACE;
    let mut left = strays(repo);
    while !left.is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        left = strays(repo);
    }
    if left.is_empty() {
        return;
    }
    let pids: Vec<String> = left.iter().map(|p| p.pid.to_string()).collect();
    log.line(format_args!(
        "stopping {} orphaned listener(s) of this repository: pid {}",
        left.len(),
        pids.join(", ")
    ));
    supervise::terminate(&left.iter().map(|p| p.pid).collect::<Vec<_>>());
}

/// The first `name` on `path` that is an executable file.
fn find_on_path(path: Option<&std::ffi::OsStr>, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
