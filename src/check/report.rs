//! The results of `p2p-annex check`, for people (one line per check, the
//! fix under each failure) and for scripts (`--json`, written by hand: a
//! few strings need escaping, not a crate).

use std::io::{self, Write};

use crate::text::json_string;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// As the text report shows it: a failure stands out.
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }

    /// As `--json` spells it.
    fn json(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's verdict. Never holds an auth token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Which check, a stable name for scripts: `remotedaemon`, `peer-auth`…
    pub kind: &'static str,
    pub status: Status,
    /// What was found, in one line.
    pub what: String,
    /// What to do about it (every failure has one).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(kind: &'static str, what: impl Into<String>) -> Check {
        Check {
            kind,
            status: Status::Ok,
            what: what.into(),
            fix: None,
        }
    }

    pub fn warn(kind: &'static str, what: impl Into<String>, fix: Option<String>) -> Check {
        Check {
            kind,
            status: Status::Warn,
            what: what.into(),
            fix,
        }
    }

    pub fn fail(kind: &'static str, what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            kind,
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Collects the checks; in text mode prints each one as it comes, so a
/// slow peer does not hold back the lines before it.
pub struct Report {
    json: bool,
    checks: Vec<Check>,
    /// Cut out of everything printed (see `auth::redact`).
    secrets: Vec<Vec<u8>>,
}

impl Report {
    pub fn new(json: bool) -> Report {
        Report {
            json,
            checks: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// Secrets to keep out of the report, from here on.
    pub fn redact(&mut self, secrets: Vec<Vec<u8>>) {
        self.secrets = secrets;
    }

    pub fn add(&mut self, out: &mut impl Write, mut checks: Vec<Check>) -> io::Result<()> {
        for c in &mut checks {
            c.what = crate::auth::redact(&c.what, &self.secrets);
            c.fix = c.fix.take().map(|f| crate::auth::redact(&f, &self.secrets));
        }
        if !self.json {
            for c in &checks {
                out.write_all(text_line(c).as_bytes())?;
            }
            out.flush()?;
        }
        self.checks.extend(checks);
        Ok(())
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The summary line, or the whole JSON document.
    pub fn finish(&self, out: &mut impl Write) -> io::Result<()> {
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        let (ok, warn, fail) = (count(Status::Ok), count(Status::Warn), count(Status::Fail));
        let text = if self.json {
            json_document(&self.checks, ok, warn, fail)
        } else {
            let s = if warn == 1 { "" } else { "s" };
            format!("checks: {ok} ok, {warn} warning{s}, {fail} failed\n")
        };
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

/// `FAIL  what` and, below it, `      fix: …`.
fn text_line(c: &Check) -> String {
    let mut line = format!("{:<5} {}\n", c.status.label(), one_line(&c.what));
    if let Some(fix) = &c.fix {
        line.push_str(&format!("      fix: {}\n", one_line(fix)));
    }
    line
}

/// Whatever a string holds (a peer's answer, a file name), it stays on its
/// line, its control characters escaped.
fn one_line(s: &str) -> String {
    crate::text::printable(s)
}

fn json_document(checks: &[Check], ok: usize, warn: usize, fail: usize) -> String {
    let items: Vec<String> = checks
        .iter()
        .map(|c| {
            format!(
                "    {{\"check\": {}, \"status\": {}, \"what\": {}, \"fix\": {}}}",
                json_string(c.kind),
                json_string(c.status.json()),
                json_string(&c.what),
                c.fix.as_deref().map_or("null".to_string(), json_string)
            )
        })
        .collect();
    format!(
        "{{\n  \"ok\": {},\n  \"counts\": {{\"ok\": {ok}, \"warn\": {warn}, \"fail\": {fail}}},\n  \
         \"checks\": [\n{}\n  ]\n}}\n",
        fail == 0,
        items.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_report_puts_the_fix_under_the_failure() {
        let mut out = Vec::new();
        let mut r = Report::new(false);
        r.add(
            &mut out,
            vec![
                Check::ok("a", "fine"),
                Check::fail("b", "broken\nreally", "mend it"),
            ],
        )
        .unwrap();
        assert!(r.failed());
        r.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok    fine\nFAIL  broken\\nreally\n      fix: mend it\n\
             checks: 1 ok, 0 warnings, 1 failed\n"
        );
    }

    #[test]
    fn the_json_report_is_one_document() {
        let mut out = Vec::new();
        let mut r = Report::new(true);
        r.add(
            &mut out,
            vec![Check::ok("a", "fine"), Check::warn("b", "odd", None)],
        )
        .unwrap();
        assert!(out.is_empty(), "nothing before the end");
        r.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\n  \"ok\": true,\n  \"counts\": {\"ok\": 1, \"warn\": 1, \"fail\": 0},\n  \"checks\": [\n\
             \x20   {\"check\": \"a\", \"status\": \"ok\", \"what\": \"fine\", \"fix\": null},\n\
             \x20   {\"check\": \"b\", \"status\": \"warn\", \"what\": \"odd\", \"fix\": null}\n  ]\n}\n"
        );
    }
}
