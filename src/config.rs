//! Configuration: the `p2p-annex.<netname>.<key>` entries of git config.
//!
//! git-annex runs us inside the repository, so `git config` sees the
//! repository's settings, the user's and the system's, and one-off
//! `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n` from the
//! environment. We ask git once per run, with one `--get-regexp`, and never
//! through a shell.

use std::io;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::Error;

#[derive(Debug, Default, Clone)]
pub struct Config {
    netname: String,
    /// `(key, value)` in git's order, keys without the `p2p-annex.<netname>.`
    /// prefix, lowercased as git prints them. Later entries win.
    entries: Vec<(String, String)>,
    /// The netnames that git config gives a `transport`, for the hint when
    /// this one has none.
    defined: Vec<String>,
}

impl Config {
    /// Read this netname's settings from git. No git, or no repository, is
    /// not an error: the defaults apply.
    pub fn load(netname: &str) -> Result<Config, Error> {
        Ok(Config::from_records(
            netname,
            &read_regexp(r"^p2p-annex\.")?,
        ))
    }

    /// This netname's settings among full `(key, value)` records of git
    /// config, as `read_regexp` returns them.
    pub fn from_records(netname: &str, records: &[(String, String)]) -> Config {
        let prefix = format!("p2p-annex.{netname}.");
        let entries = records
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
            .collect();
        let mut defined: Vec<String> = records
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("p2p-annex.")?.strip_suffix(".transport"))
            .map(str::to_string)
            .collect();
        defined.sort();
        defined.dedup();
        Config {
            defined,
            ..Config::from_entries(netname, entries)
        }
    }

    /// Netnames that git config gives a transport (`p2p-annex.NAME.transport`).
    pub fn defined_netnames(&self) -> &[String] {
        &self.defined
    }

    pub fn from_entries(netname: &str, entries: Vec<(String, String)>) -> Config {
        Config {
            netname: netname.to_string(),
            entries,
            defined: Vec::new(),
        }
    }

    pub fn netname(&self) -> &str {
        &self.netname
    }

    /// The full git config name of a key, for messages and for `set`.
    pub fn name(&self, key: &str) -> String {
        format!("p2p-annex.{}.{key}", self.netname)
    }

    /// The value of a single-valued key (the last one wins, as in git).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a key that may be given several times.
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A duration key; see `parse_duration` for the accepted forms.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, Error> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v)
                .ok_or_else(|| self.bad_value(key, v, "a duration such as 30, 30s, 500ms or 2m")),
        }
    }

    pub fn bad_value(&self, key: &str, value: &str, expected: &str) -> Error {
        Error::Config(format!(
            "{}: bad value {value:?} (expected {expected})",
            self.name(key)
        ))
    }

    /// Store a key in the repository's own config (`git config KEY VALUE`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let name = self.name(key);
        let output = Command::new("git")
            .args(["config", &name, value])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::io(format!("cannot run git config to store {name}"), e))?;
        if !output.status.success() {
            return Err(Error::Config(format!(
                "cannot store {name}: {}",
                first_line(&output.stderr)
            )));
        }
        self.entries.push((key.to_string(), value.to_string()));
        Ok(())
    }
}

/// Every git config entry whose key matches `pattern` (git's
/// `--get-regexp`), in git's order. No git, or no repository, gives none.
pub fn read_regexp(pattern: &str) -> Result<Vec<(String, String)>, Error> {
    let output = Command::new("git")
        .args(["config", "-z", "--get-regexp", pattern])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot run git config", e)),
    };
    // Status 1 means "no such keys".
    match output.status.code() {
        Some(0) | Some(1) => Ok(parse_records(&output.stdout)),
        _ => Err(Error::Config(format!(
            "cannot read git config: {}",
            first_line(&output.stderr)
        ))),
    }
}

/// The repository's git directory, absolute, when we run inside one.
pub fn git_dir() -> Option<std::path::PathBuf> {
    git_path(&["rev-parse", "--absolute-git-dir"])
}

/// The one line git prints for `args` (a path), if it succeeds and prints
/// one.
pub fn git_path(args: &[&str]) -> Option<std::path::PathBuf> {
    let out = Command::new("git")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim_end_matches('\n');
    (out.status.success() && !line.is_empty()).then(|| std::path::PathBuf::from(line))
}

/// Split `git config -z` output: records end with NUL, and a newline parts
/// the key from the value (a key without a value is boolean true in git).
pub fn parse_records(out: &[u8]) -> Vec<(String, String)> {
    out.split(|&b| b == 0)
        .filter(|rec| !rec.is_empty())
        .map(|rec| {
            let text = String::from_utf8_lossy(rec);
            match text.split_once('\n') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (text.to_string(), "true".to_string()),
            }
        })
        .collect()
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or("").trim();
    let line = line.strip_prefix("fatal: ").unwrap_or(line);
    if line.is_empty() {
        "git config failed".to_string()
    } else {
        line.to_string()
    }
}

/// `30` (seconds), `30s`, `500ms`, `2m`, `1h`. Zero is allowed where the
/// caller gives it a meaning.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_on_nul_and_newline() {
        let out = b"p2p-annex.tcp.port\n5599\0p2p-annex.tcp.address\na b\nc\0p2p-annex.tcp.flag\0";
        assert_eq!(
            parse_records(out),
            vec![
                ("p2p-annex.tcp.port".into(), "5599".into()),
                ("p2p-annex.tcp.address".into(), "a b\nc".into()),
                ("p2p-annex.tcp.flag".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn last_value_wins_and_all_values_are_kept() {
        let c = Config::from_entries(
            "tcp",
            vec![
                ("address".into(), "10.0.0.1".into()),
                ("port".into(), "1".into()),
                ("address".into(), "10.0.0.2".into()),
            ],
        );
        assert_eq!(c.get("address"), Some("10.0.0.2"));
        assert_eq!(c.get_all("address"), vec!["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c.get("bind"), None);
        assert_eq!(c.name("port"), "p2p-annex.tcp.port");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999"), None);
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = Config::from_entries("tcp", vec![("connect-timeout".into(), "soon".into())]);
        let e = c
            .duration("connect-timeout", Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p2p-annex.tcp.connect-timeout: bad value \"soon\" (expected a duration such as 30, 30s, 500ms or 2m)"
        );
    }
}
