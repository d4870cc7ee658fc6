//! The status report, in text or JSON, from what the supervisor's lock
//! file, the listeners and their logs said.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::Snapshot;
use crate::serve::{Probe, Record};
use crate::text::json_string;

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

    const SNAPSHOT: &str = crate::control::SAMPLE_SNAPSHOT;

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
