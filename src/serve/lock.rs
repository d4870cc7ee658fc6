//! One `serve` per repository: an flock(2) on
//! `.git/annex/p2p-annex/serve.lock`, which also holds what `status` and
//! `check` show about the supervisor.
//!
//! The kernel drops an flock when its holder dies, however it dies, so a
//! lock file left behind never blocks the next `serve`; a file whose
//! record is not cleared but that nobody holds is what `check` calls a
//! stale lock (a `serve` that was killed). The file is never removed:
//! unlinking a locked file lets two holders lock two different files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::Error;

/// How long a starting `serve` retries a held lock: `status` and `check`
/// hold it for a moment to see whether anyone else does.
const ACQUIRE_FOR: Duration = Duration::from_millis(500);

/// The lock file of the repository whose git directory is `git_dir`.
pub fn path(git_dir: &Path) -> PathBuf {
    git_dir.join("annex").join("p2p-annex").join("serve.lock")
}

/// What the holder wrote: one tab-separated line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Unix time `serve` started.
    pub since: u64,
    /// How many times remotedaemon was started again.
    pub restarts: u64,
    /// The remotedaemon running now, 0 while none does (between restarts).
    pub daemon: u32,
    /// Unix time that remotedaemon started.
    pub daemon_since: u64,
}

impl Record {
    fn line(&self) -> String {
        format!(
            "serve\t{}\t{}\t{}\t{}\t{}\n",
            self.pid, self.since, self.restarts, self.daemon, self.daemon_since
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let f: Vec<&str> = text.lines().next()?.split('\t').collect();
        let ["serve", pid, since, restarts, daemon, daemon_since] = f[..] else {
            return None;
        };
        Some(Record {
            pid: pid.parse().ok()?,
            since: since.parse().ok()?,
            restarts: restarts.parse().ok()?,
            daemon: daemon.parse().ok()?,
            daemon_since: daemon_since.parse().ok()?,
        })
    }
}

/// The held lock. Dropping it clears the record (a clean stop).
pub struct Lock {
    file: Flock<File>,
}

impl Lock {
    /// Take the lock of this repository, or say who holds it.
    pub fn acquire(git_dir: &Path) -> Result<Lock, Error> {
        let path = path(git_dir);
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        // 0600 from the start: nobody else may hold it to keep us out.
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
        };
        let until = Instant::now() + ACQUIRE_FOR;
        let mut file = open()?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(file) => return Ok(Lock { file }),
                Err((f, Errno::EWOULDBLOCK)) if Instant::now() < until => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((mut f, Errno::EWOULDBLOCK)) => {
                    let holder = read_record(&mut f)
                        .map(|r| format!(" (pid {})", r.pid))
                        .unwrap_or_default();
                    return Err(Error::Refused(format!(
                        "already running for this repository{holder}: stop that one first \
                         (its lock is {})",
                        path.display()
                    )));
                }
                Err((_, e)) => {
                    return Err(Error::io(
                        format!("cannot lock {}", path.display()),
                        e.into(),
                    ));
                }
            }
        }
    }

    /// Replace the record (in place: readers never see a missing file).
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        let line = record.line();
        self.file.set_len(0)?;
        self.file.seek(io::SeekFrom::Start(0))?;
        self.file.write_all(line.as_bytes())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Cleared: a record left in the file means `serve` did not stop
        // cleanly.
        let _ = self.file.set_len(0);
    }
}

fn read_record(file: &mut File) -> Option<Record> {
    let mut text = String::new();
    file.seek(io::SeekFrom::Start(0)).ok()?;
    file.take(4096).read_to_string(&mut text).ok()?;
    Record::parse(&text)
}

/// What the lock file says about `serve`, for `status` and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No lock file, or an empty one: no `serve` ran or it stopped cleanly.
    None,
    /// A `serve` holds the lock now.
    Running(Record),
    /// Nobody holds the lock but its record is there: `serve` was killed.
    Stale(Record),
    /// Held, but its record cannot be read (just starting, or not ours to
    /// read).
    Unreadable(String),
}

/// Look without disturbing: a shared lock taken and dropped at once (a
/// starting `serve` retries for longer than that).
pub fn probe(git_dir: &Path) -> Probe {
    let path = path(git_dir);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Probe::None,
        Err(e) => {
            return Probe::Unreadable(format!(
                "{}: {}",
                path.display(),
                crate::error::describe(&e)
            ));
        }
    };
    let record = read_record(&mut file);
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => record.map_or(Probe::None, Probe::Stale),
        Err((_, Errno::EWOULDBLOCK)) => record.map_or_else(
            || Probe::Unreadable(format!("{}: no record yet", path.display())),
            Probe::Running,
        ),
        Err((_, e)) => Probe::Unreadable(format!("{}: {}", path.display(), e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_back() {
        let r = Record {
            pid: 42,
            since: 1_795_610_096,
            restarts: 3,
            daemon: 4711,
            daemon_since: 1_795_610_200,
        };
        assert_eq!(Record::parse(&r.line()), Some(r));
        assert_eq!(Record::parse(""), None);
        assert_eq!(Record::parse("serve\t1\t2\n"), None);
    }

    #[test]
    fn a_second_lock_is_refused_and_a_dropped_one_is_clean() {
        let dir = std::env::temp_dir().join(format!("p2p-annex-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut lock = Lock::acquire(&dir).unwrap();
        assert!(matches!(probe(&dir), Probe::Unreadable(_)));
        let r = Record {
            pid: std::process::id(),
            since: 1,
            restarts: 0,
            daemon: 0,
            daemon_since: 0,
        };
        lock.write(&r).unwrap();
        assert_eq!(probe(&dir), Probe::Running(r.clone()));
        match Lock::acquire(&dir) {
            Err(Error::Refused(msg)) => {
                assert!(msg.contains(&format!("(pid {})", r.pid)), "{msg}")
            }
            other => panic!("second lock: {:?}", other.err()),
        }
        drop(lock);
        assert_eq!(probe(&dir), Probe::None);
        // A record nobody holds: a `serve` that was killed.
        std::fs::write(path(&dir), r.line()).unwrap();
        assert_eq!(probe(&dir), Probe::Stale(r.clone()));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path(&dir)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
