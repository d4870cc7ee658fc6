//! The configuration keys the docs name against the keys the program reads:
//! `--help`, the CONFIGURATION list of p2p-annex(1), the README's table and
//! the sources must agree, so a key added to one is added to all (issue 16:
//! `--help` had no idle-timeout). Everything is read from the files and the
//! real binary, never from a list kept here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `p2p-annex.SCOPE.KEY` as "SCOPE.KEY", with the placeholders for "any
/// network" (NETNAME, NAME, netname, name) spelled NETNAME.
fn normalise(scope: &str, key: &str) -> String {
    let scope = match scope {
        "NETNAME" | "NAME" | "netname" | "name" => "NETNAME",
        s => s,
    };
    format!("{scope}.{key}")
}

/// Every `p2p-annex.SCOPE.KEY` written out in plain text.
fn keys_in_text(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("p2p-annex.") {
        rest = &rest[at + "p2p-annex.".len()..];
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_')
            .collect();
        let word = word.trim_end_matches('.');
        if let Some((scope, key)) = word.split_once('.') {
            if !key.is_empty()
                && !key.contains('.')
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            {
                keys.insert(normalise(scope, key));
            }
        }
    }
    keys
}

/// The keys of the `.It` entries of a man page's CONFIGURATION section:
/// `.It Va p2p-annex.tcp.port`, `.It Va p2p-annex . Ns Ar netname Ns Va .log`
/// and several separated by commas.
fn keys_in_man(page: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(page).expect("read man page");
    let mut keys = BTreeSet::new();
    let mut in_section = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix(".Sh ") {
            in_section = title == "CONFIGURATION";
            continue;
        }
        let Some(item) = line.strip_prefix(".It ") else {
            continue;
        };
        if !in_section {
            continue;
        }
        // Drop the macros; what is left, joined without spaces, is the
        // rendered text ("p2p-annex.netname.log"), commas between keys.
        let words: Vec<&str> = item
            .split_whitespace()
            .filter(|w| !matches!(*w, "Va" | "Ns" | "Ar" | "Li" | "Cm"))
            .collect();
        for key in words.split(|w| *w == ",") {
            let joined = key.concat();
            if let Some(k) = joined.strip_prefix("p2p-annex.") {
                if let Some((scope, key)) = k.split_once('.') {
                    keys.insert(normalise(scope, key));
                }
            }
        }
    }
    keys
}

/// The keys of the README's Configuration table (its first column).
fn keys_in_readme() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let mut keys = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `p2p-annex.")) {
        let first = line.split('|').nth(1).unwrap_or_default();
        keys.extend(keys_in_text(first));
    }
    keys
}

/// The KEY part of every key the program reads: the string literal given
/// to Config's getters (`cfg.get("port")`, `get_all`, `duration`) anywhere
/// in src/, test modules left out.
fn keys_read_by_sources() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("read src/").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for getter in [".get(\"", ".get_all(\"", ".duration(\""] {
                for (at, _) in code.match_indices(getter) {
                    let rest = &code[at + getter.len()..];
                    if let Some(end) = rest.find('"') {
                        keys.insert(rest[..end].to_string());
                    }
                }
            }
        }
    }
    keys
}

fn key_part(k: &str) -> &str {
    k.split_once('.').map_or(k, |(_, key)| key)
}

fn show(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[test]
fn help_man_readme_and_sources_name_the_same_keys() {
    let home = TempDir::new("docs");
    let (status, help, _) = run(p2p(home.path()).arg("--help"));
    assert!(status.success());
    let help = keys_in_text(&help);
    let man = keys_in_man(&root().join("man/p2p-annex.1"));
    let readme = keys_in_readme();
    let read = keys_read_by_sources();
    // The parsers found something: an empty set would make the rest pass.
    for (what, set) in [
        ("--help", &help),
        ("p2p-annex(1)", &man),
        ("README", &readme),
    ] {
        assert!(
            set.len() >= 10,
            "{what}: only {} keys found: {}",
            set.len(),
            show(set)
        );
    }
    assert!(
        read.len() >= 10,
        "src/: only {} keys read: {read:?}",
        read.len()
    );

    let missing = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> BTreeSet<String> {
        a.difference(b).cloned().collect()
    };
    let mut problems = Vec::new();
    for (have, lack, set_a, set_b) in [
        ("--help", "p2p-annex(1) CONFIGURATION", &help, &man),
        ("p2p-annex(1) CONFIGURATION", "--help", &man, &help),
        (
            "p2p-annex(1) CONFIGURATION",
            "README's Configuration table",
            &man,
            &readme,
        ),
        (
            "README's Configuration table",
            "p2p-annex(1) CONFIGURATION",
            &readme,
            &man,
        ),
    ] {
        let m = missing(set_a, set_b);
        if !m.is_empty() {
            problems.push(format!("in {have} but not in {lack}: {}", show(&m)));
        }
    }
    // Documented keys are real: their KEY part is read somewhere in src/.
    for (what, page) in [
        ("p2p-annex(1)", "man/p2p-annex.1"),
        ("git-annex-p2p-tcp(1)", "man/git-annex-p2p-tcp.1"),
        ("git-annex-p2p-socks(1)", "man/git-annex-p2p-socks.1"),
        (
            "git-annex-p2p-unix-sockets(1)",
            "man/git-annex-p2p-unix-sockets.1",
        ),
        ("git-annex-p2p-onion(1)", "man/git-annex-p2p-onion.1"),
        ("git-annex-p2p-fowl(1)", "man/git-annex-p2p-fowl.1"),
    ] {
        let unreal: BTreeSet<String> = keys_in_man(&root().join(page))
            .into_iter()
            .filter(|k| !read.contains(key_part(k)))
            .collect();
        if !unreal.is_empty() {
            problems.push(format!(
                "{what} documents keys no source reads: {}",
                show(&unreal)
            ));
        }
    }
    // And every key the program reads is documented.
    let documented: BTreeSet<&str> = man.iter().map(|k| key_part(k)).collect();
    let undocumented: Vec<&str> = read
        .iter()
        .map(String::as_str)
        .filter(|k| !documented.contains(k))
        .collect();
    if !undocumented.is_empty() {
        problems.push(format!(
            "src/ reads keys p2p-annex(1) CONFIGURATION does not document: {}",
            undocumented.join(", ")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
