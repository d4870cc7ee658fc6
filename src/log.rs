//! The event log of listen mode: one line per event, never payload bytes,
//! never auth tokens.
//!
//! remotedaemon gives its listeners /dev/null for stderr
//! (doc/git-annex-contract.md, "stdio is /dev/null"), so
//! when stderr goes nowhere the log goes to a file the user can find:
//! `p2p-annex.<netname>.log`, by default `.git/annex/p2p-annex.<netname>.log`
//! beside git-annex's own files. The file is rotated once (to `.1`) when it
//! passes `ROTATE_AT`, so a listener that runs for months stays small, and
//! a line that would take it past that without a rotation is dropped: the
//! cap holds even when no new file can be made.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Size at which the log file is renamed to `<log>.1` and started anew.
pub const ROTATE_AT: u64 = 1024 * 1024;

pub struct Log {
    netname: String,
    sink: Mutex<Sink>,
}

enum Sink {
    Stderr,
    File {
        path: PathBuf,
        file: File,
        /// Lines dropped because the file was full and could not be
        /// rotated; said in the next line that can be written.
        dropped: u64,
    },
}

impl Log {
    pub fn stderr(netname: &str) -> Log {
        Log {
            netname: netname.to_string(),
            sink: Mutex::new(Sink::Stderr),
        }
    }

    /// Append to the file at `path`, creating it (mode 0600: peer addresses
    /// are nobody else's business).
    pub fn file(netname: &str, path: &Path) -> io::Result<Log> {
        let (file, _) = open_append(path)?;
        Ok(Log {
            netname: netname.to_string(),
            sink: Mutex::new(Sink::File {
                path: path.to_path_buf(),
                file,
                dropped: 0,
            }),
        })
    }

    /// Where the lines go, for the first line of the log.
    pub fn destination(&self) -> String {
        match &*self.lock() {
            Sink::Stderr => "stderr".to_string(),
            Sink::File { path, .. } => path.display().to_string(),
        }
    }

    /// Write one line: `2026-11-25T12:00:00Z p2p-annex[PID] tcp: MESSAGE`.
    pub fn line(&self, msg: fmt::Arguments<'_>) {
        let text = format!(
            "{} p2p-annex[{}] {}: {}\n",
            utc_timestamp(SystemTime::now()),
            std::process::id(),
            self.netname,
            // One event, one line: a newline in an address cannot forge
            // another, an escape sequence cannot reach a terminal.
            crate::text::printable(&msg.to_string())
        );
        let mut sink = self.lock();
        match &mut *sink {
            // One write per line, so lines from concurrent connections never
            // interleave. Nothing useful can be done if stderr is gone.
            Sink::Stderr => {
                let _ = io::stderr().write_all(text.as_bytes());
            }
            Sink::File {
                path,
                file,
                dropped,
            } => write_capped(path, file, dropped, &self.netname, &text),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        // A thread that panicked while logging leaves a usable sink behind.
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Open (or create, 0600 from the start) the log for appending: never
/// through a symbolic link someone planted, never into anything but a
/// regular file of ours, never inherited by a child.
fn open_append(path: &Path) -> io::Result<(File, u64)> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO put there fails to open (ENXIO) instead of
        // hanging us until someone reads it; on a regular file it changes
        // nothing.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != crate::sys::euid() {
        return Err(io::Error::other(format!(
            "it is not a file of this user (it belongs to {})",
            crate::trust::describe_uid(meta.uid())
        )));
    }
    Ok((file, meta.len()))
}

/// Append `text` unless that takes the file past `ROTATE_AT` and it cannot
/// be rotated. Several listeners (one per address) may share the file, so
/// the size is the file's, not a count of our own lines, and a file that
/// another listener rotated away is left for the new one.
fn write_capped(path: &Path, file: &mut File, dropped: &mut u64, netname: &str, text: &str) {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata().ok();
    let current = std::fs::metadata(path).ok();
    let moved = match (&ours, &current) {
        (Some(a), Some(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
        _ => true,
    };
    let mut size = ours.map_or(0, |m| m.len());
    if moved {
        if let Ok((new, len)) = open_append(path) {
            *file = new;
            size = len;
        }
    }
    let note = match *dropped {
        0 => String::new(),
        n => format!(
            "{} p2p-annex[{}] {netname}: {n} log lines dropped: the log was full and could not \
             be rotated\n",
            utc_timestamp(SystemTime::now()),
            std::process::id()
        ),
    };
    let len = (note.len() + text.len()) as u64;
    if size + len > ROTATE_AT {
        match rotate(path) {
            Some(new) => *file = new,
            None => {
                *dropped += 1;
                return;
            }
        }
    }
    if file.write_all(format!("{note}{text}").as_bytes()).is_ok() {
        *dropped = 0;
    }
}

/// Keep one old log: `<log>` becomes `<log>.1`, and a new `<log>` is
/// returned. The new file is made first, under a name of its own, and moved
/// into place only then: when no file can be made (no descriptor left, a
/// full disk) nothing is renamed, and the caller drops the line rather
/// than write past the cap to a file that is already `.1`.
fn rotate(path: &Path) -> Option<File> {
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(format!(".new.{}", std::process::id()));
    let fresh = PathBuf::from(fresh);
    let (file, _) = open_append(&fresh).ok()?;
    let _ = std::fs::rename(path, &old);
    if std::fs::rename(&fresh, path).is_err() {
        let _ = std::fs::remove_file(&fresh);
        return None;
    }
    Some(file)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, without a date crate.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), from Howard Hinnant's
/// "chrono-Compatible Low-Level Date Algorithms".
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_610_096);
        assert_eq!(utc_timestamp(t), "2026-11-25T12:34:56Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn the_file_is_rotated_once_past_the_cap() {
        let dir = std::env::temp_dir().join(format!("p2p-annex-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        let log = Log::file("tcp", &path).unwrap();
        let filler = "x".repeat(1000);
        for _ in 0..3000 {
            log.line(format_args!("{filler}"));
        }
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("x.log.1")).unwrap().len();
        assert!(now <= ROTATE_AT && old <= ROTATE_AT, "{now} {old}");
        assert!(now > 0 && old > ROTATE_AT / 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two logs on one file (two listeners) and a rotation that cannot make
    /// its new file: the cap holds throughout, and what was dropped is said.
    #[test]
    fn the_cap_holds_for_shared_files_and_failed_rotations() {
        let dir = std::env::temp_dir().join(format!("p2p-annex-log2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        let (a, b) = (
            Log::file("tcp", &path).unwrap(),
            Log::file("tcp", &path).unwrap(),
        );
        let filler = "x".repeat(1000);
        for _ in 0..3000 {
            a.line(format_args!("{filler}"));
            b.line(format_args!("{filler}"));
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let old = dir.join("x.log.1");
        assert!(size(&path) <= ROTATE_AT && size(&old) <= ROTATE_AT);
        // The rotation's new file cannot be made: a directory is in its way
        // (as root, permissions would not stop it).
        let fresh = dir.join(format!("x.log.new.{}", std::process::id()));
        std::fs::create_dir(&fresh).unwrap();
        for _ in 0..3000 {
            a.line(format_args!("{filler}"));
        }
        assert!(size(&path) <= ROTATE_AT && size(&old) <= ROTATE_AT);
        std::fs::remove_dir(&fresh).unwrap();
        a.line(format_args!("after"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("log lines dropped"), "{}", &text[..200]);
        assert!(text.ends_with("after\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
