//! `p2p-annex status`: the listeners of this repository, the connections
//! they have open now (peer, age, bytes each way), and the last errors in
//! their logs.
//!
//! A `p2p-annex serve` running for the repository comes first: its pid,
//! uptime, restarts and remotedaemon, from its lock file (`serve::probe`).
//!
//! Each listener answers on a unix socket of its own under
//! `.git/annex/p2p-annex/` (see `listen::Control`) with a snapshot taken
//! under the same lock that counts its connections, so concurrent
//! connections never show half-updated; nothing is written to disk while it
//! runs.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::control::{self, Snapshot};
use crate::error::{Error, describe};
use crate::serve::{Probe, Record};
use crate::text::json_string;

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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The report; in text, every line with its control characters escaped
/// (what listeners and logs say may come from anyone).
pub fn render(
    serve: &Probe,
    listeners: &[Snapshot],
    notes: &[String],
    errors: &[(PathBuf, Vec<String>)],
    json: bool,
) -> String {
    if json {
        let rest = render_json(listeners, notes, errors);
        let rest = rest.strip_prefix("{\n").unwrap_or(&rest);
        format!("{{\n  \"serve\": {},\n{rest}", serve_json(serve))
    } else {
        (serve_text(serve, now()) + &render_text(listeners, notes, errors, now()))
            .lines()
            .map(|l| crate::text::printable(l) + "\n")
            .collect()
    }
}

/// The supervisor, in one line (none when no `serve` runs or ran).
fn serve_text(serve: &Probe, now: u64) -> String {
    let restarts = |r: &Record| match r.restarts {
        1 => "1 restart".to_string(),
        n => format!("{n} restarts"),
    };
    match serve {
        Probe::None => String::new(),
        Probe::Running(r) => format!(
            "serve (pid {}): up {}, {}, {}\n",
            r.pid,
            age(now.saturating_sub(r.since)),
            restarts(r),
            if r.daemon == 0 {
                "remotedaemon not running (waiting to start it again)".to_string()
            } else {
                format!(
                    "remotedaemon pid {} up {}",
                    r.daemon,
                    age(now.saturating_sub(r.daemon_since))
                )
            }
        ),
        Probe::Stale(r) => format!(
            "serve (pid {}) is gone without stopping cleanly (killed?): nothing supervises \
             remotedaemon (`p2p-annex check` says more)\n",
            r.pid
        ),
        Probe::Unreadable(why) => format!("serve: cannot read its lock file: {why}\n"),
    }
}

fn serve_json(serve: &Probe) -> String {
    let record = |state: &str, r: &Record| {
        format!(
            "{{\"state\": \"{state}\", \"pid\": {}, \"since\": {}, \"restarts\": {}, \
             \"remotedaemon\": {}, \"remotedaemon_since\": {}}}",
            r.pid, r.since, r.restarts, r.daemon, r.daemon_since
        )
    };
    match serve {
        Probe::None => "null".into(),
        Probe::Running(r) => record("running", r),
        Probe::Stale(r) => record("stale", r),
        Probe::Unreadable(why) => format!(
            "{{\"state\": \"unknown\", \"error\": {}}}",
            json_string(why)
        ),
    }
}

fn render_text(
    listeners: &[Snapshot],
    notes: &[String],
    errors: &[(PathBuf, Vec<String>)],
    now: u64,
) -> String {
    let mut out = String::new();
    if listeners.is_empty() {
        out.push_str(
            "no listener of ours is running for this repository \
             (is `git annex remotedaemon` running? `p2p-annex check` says more)\n",
        );
    }
    for l in listeners {
        let open = match l.conns.len() {
            0 => "no connections open".to_string(),
            1 => format!("1 connection open (max {})", l.max),
            n => format!("{n} connections open (max {})", l.max),
        };
        out.push_str(&format!(
            "{} {} (pid {}): listening on {}, up {}, {open}\n",
            l.netname,
            l.address,
            l.pid,
            l.listening.join(", "),
            age(now.saturating_sub(l.started)),
        ));
        for c in &l.conns {
            out.push_str(&format!(
                "  {}  for {}  in {}  out {}\n",
                c.peer,
                age(now.saturating_sub(c.since)),
                size(c.bytes_in),
                size(c.bytes_out)
            ));
        }
    }
    for n in notes {
        out.push_str(&format!("could not ask a listener: {n}\n"));
    }
    for (log, lines) in errors {
        out.push_str(&format!("last errors in {}:\n", log.display()));
        for line in lines {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

fn render_json(
    listeners: &[Snapshot],
    notes: &[String],
    errors: &[(PathBuf, Vec<String>)],
) -> String {
    let strings = |v: &[String]| {
        v.iter()
            .map(|s| json_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ls: Vec<String> = listeners
        .iter()
        .map(|l| {
            let conns: Vec<String> = l
                .conns
                .iter()
                .map(|c| {
                    format!(
                        "{{\"peer\": {}, \"since\": {}, \"bytes_in\": {}, \"bytes_out\": {}}}",
                        json_string(&c.peer),
                        c.since,
                        c.bytes_in,
                        c.bytes_out
                    )
                })
                .collect();
            format!(
                "    {{\"pid\": {}, \"netname\": {}, \"address\": {}, \"listening\": [{}], \
                 \"socket\": {}, \"started\": {}, \"max_connections\": {}, \"connections\": [{}]}}",
                l.pid.parse::<u64>().unwrap_or(0),
                json_string(&l.netname),
                json_string(&l.address),
                strings(&l.listening),
                json_string(&l.socket),
                l.started,
                l.max.parse::<u64>().unwrap_or(0),
                conns.join(", ")
            )
        })
        .collect();
    let errs: Vec<String> = errors
        .iter()
        .map(|(log, lines)| {
            format!(
                "    {{\"log\": {}, \"lines\": [{}]}}",
                json_string(&log.display().to_string()),
                strings(lines)
            )
        })
        .collect();
    format!(
        "{{\n  \"listeners\": [\n{}\n  ],\n  \"notes\": [{}],\n  \"errors\": [\n{}\n  ]\n}}\n",
        ls.join(",\n"),
        strings(notes),
        errs.join(",\n")
    )
}

/// `3s`, `4m05s`, `2h03m`, `5d02h`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `812 B`, `3.4 KiB`, `12.0 MiB`, `1.5 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOT: &str = "listener\t4711\ttcp\t10.0.0.1:5599\t1000\t100\t10.0.0.1:5599\t.git/annex/p2p/abc\n\
                            conn\t10.0.0.2:40000\t1900\t12582912\t2048\n";

    #[test]
    fn text_shows_each_connection() {
        let l = Snapshot::parse(SNAPSHOT).unwrap();
        let text = render_text(&[l], &[], &[], 2000);
        assert_eq!(
            text,
            "tcp 10.0.0.1:5599 (pid 4711): listening on 10.0.0.1:5599, up 16m40s, 1 connection open (max 100)\n  \
             10.0.0.2:40000  for 1m40s  in 12.0 MiB  out 2.0 KiB\n"
        );
    }

    #[test]
    fn json_is_well_formed_enough() {
        let l = Snapshot::parse(SNAPSHOT).unwrap();
        let j = render_json(&[l], &["x\"y".into()], &[]);
        assert!(j.contains("\"bytes_in\": 12582912"), "{j}");
        assert!(j.contains("\"notes\": [\"x\\\"y\"]"), "{j}");
    }

    #[test]
    fn the_supervisor_comes_first() {
        let r = Record {
            pid: 10,
            since: 1000,
            restarts: 1,
            daemon: 11,
            daemon_since: 1900,
        };
        assert_eq!(
            serve_text(&Probe::Running(r.clone()), 2000),
            "serve (pid 10): up 16m40s, 1 restart, remotedaemon pid 11 up 1m40s\n"
        );
        assert_eq!(serve_text(&Probe::None, 2000), "");
        assert!(serve_text(&Probe::Stale(r.clone()), 2000).contains("pid 10) is gone"));
        let j = render(&Probe::Running(r), &[], &[], &[], true);
        assert!(
            j.starts_with("{\n  \"serve\": {\"state\": \"running\", \"pid\": 10,"),
            "{j}"
        );
        assert!(j.contains("\n  \"listeners\": ["), "{j}");
        let j = render(&Probe::None, &[], &[], &[], true);
        assert!(
            j.starts_with("{\n  \"serve\": null,\n  \"listeners\""),
            "{j}"
        );
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(age(59), "59s");
        assert_eq!(age(3599), "59m59s");
        assert_eq!(age(86399), "23h59m");
        assert_eq!(age(90000), "1d01h");
    }
}
