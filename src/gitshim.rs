//! Invoked as `git`: hand every command to the real git, but let `git
//! upload-pack` and `git receive-pack` end only once their output has left
//! the pipe to git-annex.
//!
//! Why: git-annex's serving side (P2P/IO.hs `runRelayService`) sends the
//! end of a relayed git service as soon as the service process exits, and
//! can drop the last chunk of its output that a reader thread holds but has
//! not yet passed on: a first `git fetch` then hangs, a `git push` fails
//! (doc/upstream/connectdone-race.md). `p2p-annex serve` runs remotedaemon
//! with a directory holding a `git` link to this binary first on its PATH,
//! so the services' exit, as remotedaemon sees it, comes after their output
//! was read. Every other git command is `exec`ed untouched.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::sys;

/// The environment variable that lists the shims already passed through
/// (`DEV:INODE` of each binary, comma-separated), so a shim never runs
/// itself or another shim that ran before it: two shim directories on PATH
/// cannot loop.
pub const CHAIN_VAR: &str = "P2P_ANNEX_GIT_SHIMS";

/// More shims than this in one chain is a loop we failed to see.
const MAX_CHAIN: usize = 8;

/// How the wrapped service ended, for `main` to turn into our own ending.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Killed(i32),
}

/// The longest we wait for git-annex to read what the service wrote: long
/// enough for a slow peer to take the last pipeful (64 KiB), bounded so a
/// remotedaemon that stopped reading cannot keep us alive.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How often the pipe is looked at while it drains.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// After the pipe is empty, git-annex's reader thread still has to hand the
/// last chunk it read to the thread that sends it: the grace covers that
/// hand-over on a loaded machine (measured, doc/upstream/connectdone-race.md).
const GRACE: Duration = Duration::from_millis(50);

/// Run as `git ARGS...`. Returns only for the two wrapped services (how
/// they ended) or on error; every other command replaces this process.
pub fn run(argv: Vec<OsString>) -> Result<Ending, Error> {
    let mut argv = argv.into_iter();
    let argv0 = argv.next().unwrap_or_else(|| OsString::from("git"));
    let args: Vec<OsString> = argv.collect();

    let me = identity(Path::new("/proc/self/exe"))
        .or_else(|| std::env::current_exe().ok().and_then(|p| identity(&p)));
    let mut chain = parse_chain(std::env::var_os(CHAIN_VAR).as_deref());
    if chain.len() >= MAX_CHAIN {
        return Err(Error::GitNotFound(format!(
            "{} git shims in a chain ({CHAIN_VAR}): a loop",
            chain.len()
        )));
    }
    if let Some(me) = me {
        if !chain.contains(&me) {
            chain.push(me);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(real) = find_real_git(&path, &chain) else {
        return Err(Error::GitNotFound(
            "no real git on PATH besides this shim (p2p-annex)".into(),
        ));
    };

    let mut cmd = Command::new(&real);
    cmd.arg0(&argv0)
        .args(&args)
        .env(CHAIN_VAR, format_chain(&chain));
    if !is_wrapped(subcommand(&args)) {
        // exec only returns on failure.
        let cause = cmd.exec();
        return Err(Error::Exec {
            program: real.display().to_string(),
            cause,
        });
    }
    run_service(cmd, &real)
}

/// The services git-annex relays to a peer, whose end it may send early.
fn is_wrapped(subcommand: Option<&OsStr>) -> bool {
    subcommand.is_some_and(|s| s == "upload-pack" || s == "receive-pack")
}

/// git's global options that take their value as the next argument
/// (git.c `handle_options`, git 2.47).
const OPTIONS_WITH_VALUE: [&str; 7] = [
    "-c",
    "-C",
    "--git-dir",
    "--work-tree",
    "--namespace",
    "--config-env",
    "--attr-source",
];

/// The git command in `args` (after git's global options), if any. An
/// option we do not know ends the search: that command is not one of ours,
/// and git itself will say what is wrong with it.
pub fn subcommand(args: &[OsString]) -> Option<&OsStr> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if !bytes.starts_with(b"-") {
            return Some(arg);
        }
        if OPTIONS_WITH_VALUE.iter().any(|o| bytes == o.as_bytes()) {
            args.next()?;
        } else if bytes == b"--" || !is_flag_or_joined(bytes) {
            return None;
        }
    }
    None
}

/// Global options that stand alone (`--bare`, `--git-dir=DIR`, …).
fn is_flag_or_joined(arg: &[u8]) -> bool {
    const FLAGS: [&str; 14] = [
        "-p",
        "--paginate",
        "-P",
        "--no-pager",
        "--no-replace-objects",
        "--bare",
        "--literal-pathspecs",
        "--glob-pathspecs",
        "--noglob-pathspecs",
        "--icase-pathspecs",
        "--no-optional-locks",
        "--no-advice",
        "--no-lazy-fetch",
        "--exec-path",
    ];
    const JOINED: [&str; 7] = [
        "--exec-path=",
        "--git-dir=",
        "--work-tree=",
        "--namespace=",
        "--config-env=",
        "--attr-source=",
        "--super-prefix=",
    ];
    // `--exec-path` alone prints the path and exits; so does any command
    // git runs itself, so treating it as a flag only means the command
    // after it (if any) is looked at, as git would.
    FLAGS.iter().any(|f| arg == f.as_bytes())
        || JOINED.iter().any(|j| arg.starts_with(j.as_bytes()))
}

/// A file's identity: device and inode of what a path resolves to. Links
/// to the same binary (a symlink or a hard link) are the same file.
fn identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

fn parse_chain(value: Option<&OsStr>) -> Vec<(u64, u64)> {
    let Some(text) = value.and_then(OsStr::to_str) else {
        return Vec::new();
    };
    text.split(',')
        .filter_map(|item| {
            let (dev, ino) = item.split_once(':')?;
            Some((dev.parse().ok()?, ino.parse().ok()?))
        })
        .collect()
}

fn format_chain(chain: &[(u64, u64)]) -> String {
    chain
        .iter()
        .map(|(dev, ino)| format!("{dev}:{ino}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The first executable `git` along PATH that is not a shim of the chain.
/// Empty PATH entries (the current directory) are skipped: a shim must
/// never run a `git` that happens to sit in a repository.
pub fn find_real_git(path: &OsStr, chain: &[(u64, u64)]) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("git"))
        .find(|candidate| {
            identity(candidate).is_some_and(|id| !chain.contains(&id))
                && candidate.is_file()
                && nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok()
        })
}

/// Run the service as our child with our stdio, pass TERM, INT, HUP and
/// QUIT on to it, and once it ended, wait until what it wrote has been read.
fn run_service(mut cmd: Command, real: &Path) -> Result<Ending, Error> {
    // Signals are caught before the child exists, so none is lost; the
    // child gets the default dispositions back at exec.
    let signals =
        sys::forwarding_signal_pipe().map_err(|e| Error::io("cannot set up signal handling", e))?;
    let mut child = cmd.spawn().map_err(|cause| Error::Exec {
        program: real.display().to_string(),
        cause,
    })?;
    let pid = child.id() as i32;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("cannot wait for git", e))?
        {
            break status;
        }
        for sig in sys::read_signals(signals.as_fd()) {
            if sig != libc::SIGCHLD {
                sys::send_signal(pid, sig);
            }
        }
    };
    if sys::is_pipe(sys::stdout()) {
        drain(sys::stdout());
        std::thread::sleep(GRACE);
    }
    // A child killed by a signal has no exit code; `main` dies by the same.
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(sig)) => Ending::Killed(sig),
        (None, None) => Ending::Exited(1),
    })
}

/// Wait (bounded) until the pipe on `fd` holds no unread bytes.
fn drain(fd: std::os::fd::BorrowedFd<'_>) {
    let start = Instant::now();
    while matches!(sys::unread_bytes(fd), Ok(n) if n > 0) && start.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(DRAIN_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_the_command_after_global_options() {
        let cases: [(&[&str], Option<&str>); 9] = [
            (&["upload-pack", "/r"], Some("upload-pack")),
            (
                &[
                    "--git-dir=/r/.git",
                    "--work-tree=/r",
                    "-c",
                    "a=b",
                    "receive-pack",
                    "/r",
                ],
                Some("receive-pack"),
            ),
            (
                &["-C", "/r", "--no-pager", "upload-pack"],
                Some("upload-pack"),
            ),
            (&["--git-dir", "/r/.git", "status"], Some("status")),
            (&["-c", "upload-pack"], None),
            (&["--version"], None),
            (&["--unknown-option", "upload-pack"], None),
            (&[], None),
            (&["--exec-path"], None),
        ];
        for (argv, want) in cases {
            assert_eq!(
                subcommand(&args(argv)),
                want.map(OsStr::new),
                "git {argv:?}"
            );
        }
    }

    #[test]
    fn only_the_relayed_services_are_wrapped() {
        assert!(is_wrapped(Some(OsStr::new("upload-pack"))));
        assert!(is_wrapped(Some(OsStr::new("receive-pack"))));
        assert!(!is_wrapped(Some(OsStr::new("upload-archive"))));
        assert!(!is_wrapped(None));
    }

    #[test]
    fn the_chain_round_trips_and_ignores_junk() {
        let chain = vec![(1, 2), (3, 4)];
        assert_eq!(parse_chain(Some(OsStr::new(&format_chain(&chain)))), chain);
        assert_eq!(parse_chain(Some(OsStr::new("x,5:6,7"))), vec![(5, 6)]);
        assert!(parse_chain(None).is_empty());
    }
}
