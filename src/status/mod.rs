//! `p2p-annex status`: the listeners of this repository, the connections
//! they have open now (peer, age, bytes each way), and the last errors in
//! their logs.
//!
//! A `p2p-annex serve` running for the repository comes first: its pid,
//! uptime, restarts and remotedaemon, from its lock file (`serve::probe`).
//!
//! Each listener answers on a unix socket of its own under
//! `.git/annex/p2p-annex/` (see `control`) with a snapshot taken
//! under the same lock that counts its connections, so concurrent
//! connections never show half-updated; nothing is written to disk while it
//! runs.

mod render;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::{self, Snapshot};
use crate::error::{Error, describe};

pub use render::render;

/// How many error lines of each log `status` shows.
const LAST_ERRORS: usize = 5;
/// How much of the end of a log file `status` reads for them.
const LOG_TAIL: u64 = 64 * 1024;
/// How long a listener gets to answer (ours answer at once, from memory).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `status` takes at most, however many sockets do not answer.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read: a listener at its cap of connections says a
/// few kilobytes; anything longer is not one of ours.
const MAX_ANSWER: usize = 1 << 20;

/// What one status socket said.
enum Answer {
    Live(Snapshot),
    /// Nobody listens there: a listener that was killed left it.
    Stale,
    Failed(String),
}

/// Ask one status socket, by `deadline` at the latest: whatever is there
/// (a hung listener, a socket someone else made) cannot hold `status`
/// longer, nor make it read more than `MAX_ANSWER`.
fn ask(path: &Path, deadline: Instant) -> Answer {
    let late = || {
        Answer::Failed(format!(
            "no whole answer in time (status waits {} s for a listener, {} s in all)",
            ANSWER_TIMEOUT.as_secs(),
            OVERALL_TIMEOUT.as_secs()
        ))
    };
    let until = deadline.min(Instant::now() + ANSWER_TIMEOUT);
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return late();
    }
    let mut conn = match crate::net::unix::connect_within(path, left) {
        Ok(fd) => UnixStream::from(fd),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Answer::Stale,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return late(),
        Err(e) => return Answer::Failed(describe(&e)),
    };
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return late();
        }
        let _ = conn.set_read_timeout(Some(left));
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Answer::Failed(describe(&e)),
        }
        if bytes.len() > MAX_ANSWER {
            return Answer::Failed(format!(
                "answer longer than {} KiB: not a listener of ours",
                MAX_ANSWER / 1024
            ));
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    match Snapshot::parse(&text) {
        Some(l) => Answer::Live(l),
        None => Answer::Failed("unreadable answer".into()),
    }
}

/// The last error-like lines of a listener log.
fn last_errors(log: &Path) -> Vec<String> {
    use std::io::Seek;
    let Ok(mut file) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(io::SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let mut found: Vec<String> = text
        .lines()
        .filter(|l| {
            ["failed", "refused", "cannot", "exiting:", "error"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::to_string)
        .collect();
    let skip = found.len().saturating_sub(LAST_ERRORS);
    found.drain(..skip);
    found
}

/// `p2p-annex status [--json]`: print the report.
pub fn run(json: bool) -> Result<(), Error> {
    let Some(git_dir) = crate::config::git_dir() else {
        return Err(Error::NotInRepository);
    };
    let serve = crate::serve::probe(&git_dir);
    let dir = control::dir(&git_dir);
    // Socket paths must be short; the names are, so ask from inside.
    if std::env::set_current_dir(&dir).is_err() {
        let secrets = crate::auth::known_secrets(&git_dir);
        return print(&crate::auth::redact(
            &render(&serve, &[], &[], &errors(&git_dir), json),
            &secrets,
        ));
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(".")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| PathBuf::from(e.file_name())))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut listeners = Vec::new();
    let mut notes = Vec::new();
    let deadline = Instant::now() + OVERALL_TIMEOUT;
    for name in names {
        match ask(&name, deadline) {
            Answer::Live(l) => listeners.push(l),
            Answer::Stale => {
                // Tidy up after a listener that was killed (SIGKILL leaves
                // its socket behind).
                let _ = std::fs::remove_file(&name);
            }
            Answer::Failed(why) => notes.push(format!("{}: {why}", name.display())),
        }
    }
    let secrets = crate::auth::known_secrets(&git_dir);
    print(&crate::auth::redact(
        &render(&serve, &listeners, &notes, &errors(&git_dir), json),
        &secrets,
    ))
}

/// (log file, its last error lines) for every listener log in the default
/// place.
fn errors(git_dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let annex = git_dir.join("annex");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&annex)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(control::is_log_name)
                })
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs.into_iter()
        .map(|log| {
            let errs = last_errors(&log);
            (log, errs)
        })
        .filter(|(_, errs)| !errs.is_empty())
        .collect()
}

fn print(text: &str) -> Result<(), Error> {
    io::stdout()
        .write_all(text.as_bytes())
        .map_err(Error::Stdout)
}
