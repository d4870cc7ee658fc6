//! Checks of this machine and repository that need no network: git-annex
//! and its remote helper, the `git-annex-p2p-<net>` links, the enabled
//! addresses.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::addr::{self, HostPort};
use crate::cli::HELPER_PREFIX;
use crate::error::describe;
use crate::net::Transport;
use crate::report::Check;
use crate::text::{printable, shell_quote as q};

use super::facts::{Helper, Net, NetAddr, Repo, find_on};

/// The networks `make install` links.
const BUILTIN: [&str; 4] = ["tcp", "socks", "unix-sockets", "onion"];

pub fn git_annex(found: Option<&Path>) -> Check {
    const KIND: &str = "git-annex";
    let install = "install a git-annex with generic P2P transports (10.20250828 has them), \
                   e.g. `python3 -m pip install git-annex`, and put it first on PATH";
    let Some(exe) = found else {
        return Check::fail(KIND, "git-annex is not on PATH", install);
    };
    let run = |args: &[&str]| Command::new(exe).args(args).stdin(Stdio::null()).output();
    let version = match run(&["version", "--raw"]) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            return Check::fail(
                KIND,
                format!(
                    "{} does not run: {}",
                    exe.display(),
                    err.lines().next().unwrap_or("no output")
                ),
                install,
            );
        }
        Err(e) => {
            return Check::fail(
                KIND,
                format!("cannot run {}: {}", exe.display(), describe(&e)),
                install,
            );
        }
    };
    // Older releases (Debian 12's 10.20230126) have `git annex p2p` for
    // Tor only, without --enable.
    let generic = run(&["p2p", "--help"]).is_ok_and(|out| {
        String::from_utf8_lossy(&out.stdout).contains("--enable")
            || String::from_utf8_lossy(&out.stderr).contains("--enable")
    });
    let short = version.split('-').next().unwrap_or(&version);
    if generic {
        Check::ok(
            KIND,
            format!(
                "git-annex {short} ({}) has generic P2P transports",
                exe.display()
            ),
        )
    } else {
        Check::fail(
            KIND,
            format!(
                "git-annex {short} ({}) is too old: it has no generic P2P transports \
                 (`git annex p2p --enable`)",
                exe.display()
            ),
            install,
        )
    }
}

pub fn remote_helper(path: &[PathBuf], annex: Option<&Path>) -> Check {
    const KIND: &str = "git-remote-p2p-annex";
    match find_on(path, "git-remote-p2p-annex") {
        Some(found) => Check::ok(
            KIND,
            format!("git-remote-p2p-annex is on PATH ({})", found.display()),
        ),
        None => {
            let fix = match annex {
                Some(annex) => {
                    let dir = annex.parent().unwrap_or(Path::new("."));
                    format!(
                        "it is part of git-annex (a multicall binary): \
                         `ln -s {} {}`",
                        q(&annex.display().to_string()),
                        q(&dir.join("git-remote-p2p-annex").display().to_string())
                    )
                }
                None => "install git-annex first; then make git-remote-p2p-annex a link to it"
                    .to_string(),
            };
            Check::fail(
                KIND,
                "git-remote-p2p-annex is not on PATH: git fetch and git push cannot use \
                 p2p-annex:: remotes",
                fix,
            )
        }
    }
}

// ---------------------------------------------------------------------------
// This repository

pub fn repository(repo: &Repo) -> Vec<Check> {
    vec![match &repo.uuid {
        Some(uuid) => Check::ok(
            "repository",
            format!("repository {} (annex.uuid {uuid})", repo.top.display()),
        ),
        None => Check::fail(
            "repository",
            format!(
                "{} is not a git-annex repository (no annex.uuid)",
                repo.top.display()
            ),
            "run `git annex init` in it",
        ),
    }]
}

/// Each network in use has a `git-annex-p2p-<net>` on PATH that runs us,
/// and a user-defined one has a transport.
pub fn helper_links(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "helper-link";
    let exe = std::env::current_exe().ok();
    let mut checks = Vec::new();
    for net in &repo.nets {
        let name = format!("{HELPER_PREFIX}{}", net.name);
        checks.push(match &net.helper {
            Helper::This(link) => Check::ok(
                KIND,
                format!("{name} on PATH runs this p2p-annex ({})", link.display()),
            ),
            Helper::OtherP2pAnnex { link, target } => Check::warn(
                KIND,
                format!(
                    "{name} on PATH ({}) runs another p2p-annex ({}) than this one",
                    link.display(),
                    target.display()
                ),
                exe.as_ref().map(|exe| {
                    format!(
                        "run the check with that one, or point the link here: `ln -sf {} {}`",
                        q(&exe.display().to_string()),
                        q(&link.display().to_string())
                    )
                }),
            ),
            Helper::Other { link, target } => Check::warn(
                KIND,
                format!(
                    "{name} on PATH ({}) is another program ({}), not p2p-annex: network {} \
                     is not checked further",
                    link.display(),
                    target.display(),
                    net.name
                ),
                None,
            ),
            Helper::Missing => Check::fail(
                KIND,
                format!(
                    "{name} is not on PATH: git-annex cannot use network {}",
                    net.name
                ),
                link_fix(&net.name, exe.as_deref()),
            ),
        });
        if net.ours() {
            if let Err(e) = &net.transport {
                let what = match net.cfg.get("transport") {
                    None => format!(
                        "network {} has no transport: {} is not set",
                        net.name,
                        net.cfg.name("transport")
                    ),
                    Some(_) => e.to_string(),
                };
                checks.push(Check::fail(
                    "transport",
                    what,
                    format!(
                        "`git config --global {} tcp` (or socks, or unix-sockets, or onion), on every \
                         host of network {}",
                        q(&net.cfg.name("transport")),
                        net.name
                    ),
                ));
            }
        }
    }
    checks
}

fn link_fix(netname: &str, exe: Option<&Path>) -> String {
    let exe = exe.map_or("p2p-annex".to_string(), |e| q(&e.display().to_string()));
    let link = q(&format!("DIR/{HELPER_PREFIX}{netname}"));
    let ln = format!("`ln -s {exe} {link}`, DIR a directory on PATH");
    if BUILTIN.contains(&netname) {
        format!("`make install` (it links tcp, socks and unix-sockets), or {ln}")
    } else {
        ln
    }
}

/// Our enabled addresses are of a form git-annex and peers can use.
pub fn addresses(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "address";
    let enabled = match &repo.enabled {
        Ok(enabled) => enabled,
        Err(e) => {
            return vec![Check::fail(
                KIND,
                e.clone(),
                "make the file readable by this user",
            )];
        }
    };
    let ours: Vec<(&Net, &NetAddr)> = enabled
        .iter()
        .filter_map(|na| Some((repo.net(&na.netname).filter(|n| n.ours())?, na)))
        .collect();
    if ours.is_empty() {
        return vec![Check::ok(
            KIND,
            "no p2p-annex network is enabled here, so this repository serves no peers \
             (`git annex p2p --enable NETNAME` to serve)",
        )];
    }
    let mut checks = Vec::new();
    for (net, na) in ours {
        // A network without a transport was reported already.
        let Ok(transport) = net.transport else {
            continue;
        };
        let shown = na.show();
        checks.push(match problem(transport, &na.address) {
            None => Check::ok(KIND, format!("enabled address {shown} is well formed")),
            Some(p) => {
                let what = match &p {
                    Problem::Bracketed => format!(
                        "enabled address {shown} is a bracketed IPv6 address, which git-annex \
                         cannot use: peers that link to it get \"cannot access remote\""
                    ),
                    Problem::Malformed(why) => {
                        format!("enabled address {shown} is malformed: {why}")
                    }
                };
                Check::fail(
                    KIND,
                    what,
                    format!(
                        "delete the line p2p-annex::{shown} from {}, run `git annex p2p --enable \
                         {}` again (p2p-annex prints IPv6 without brackets), restart remotedaemon \
                         and give peers the new address from `git annex p2p --gen-addresses`",
                        repo.show(&repo.git_dir.join("annex/creds/p2paddrs")),
                        q(&na.netname)
                    ),
                )
            }
        });
    }
    checks
}

/// Remotes whose URL names a netname no helper can have: refused, never
/// put into a command line.
pub fn bad_remotes(repo: &Repo) -> Vec<Check> {
    repo.bad_remotes
        .iter()
        .map(|(name, url)| {
            let netname = url
                .trim()
                .strip_prefix("p2p-annex::")
                .and_then(|rest| rest.split_once(':'))
                .map_or("", |(netname, _)| netname);
            Check::fail(
                "remote-url",
                format!(
                    "remote {}: URL {}: {}",
                    printable(name),
                    printable(url.trim()),
                    crate::cli::bad_netname(netname)
                ),
                format!(
                    "`git remote remove {}`, then link the peer again with \
                     `git annex p2p --link` and a line from its `git annex p2p --gen-addresses`",
                    q(name)
                ),
            )
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// `[::1]:5000`: git-annex does not take it for a P2P address
    /// (DESIGN.md, measured).
    Bracketed,
    Malformed(String),
}

/// What is wrong with an address of a network of this transport, if
/// anything.
pub fn problem(transport: Transport, address: &str) -> Option<Problem> {
    let decoded = match addr::decode_arg(address.as_bytes()) {
        Ok(d) => d,
        Err(e) => return Some(Problem::Malformed(e.to_string())),
    };
    match transport {
        Transport::Tcp | Transport::Socks | Transport::Onion => {
            // `[::1]:5000`, not any address with a bracket in it (an
            // escape sequence has one).
            if decoded.starts_with('[') && decoded.contains("]:") {
                return Some(Problem::Bracketed);
            }
            HostPort::parse(&decoded)
                .err()
                .map(|e| Problem::Malformed(e.to_string()))
        }
        Transport::UnixSockets => addr::parse_token(&decoded)
            .err()
            .map(|e| Problem::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_problems() {
        use Transport::*;
        assert_eq!(problem(Tcp, "10.0.0.1:5599"), None);
        assert_eq!(problem(Tcp, "200:ab::1:5599"), None);
        assert_eq!(problem(Tcp, "[::1]:5599"), Some(Problem::Bracketed));
        assert_eq!(problem(Socks, "%5B::1%5D:5599"), Some(Problem::Bracketed));
        assert!(matches!(problem(Tcp, "host"), Some(Problem::Malformed(_))));
        assert_eq!(problem(Socks, "abc.pk.ygg:12345"), None);
        assert_eq!(problem(UnixSockets, "0123abcd"), None);
        assert!(matches!(
            problem(UnixSockets, "../x"),
            Some(Problem::Malformed(_))
        ));
    }

    #[test]
    fn links_are_fixed_with_make_install_or_ln() {
        let fix = link_fix("tcp", Some(Path::new("/usr/local/bin/p2p-annex")));
        assert!(fix.starts_with("`make install`"), "{fix}");
        assert!(fix.contains("ln -s /usr/local/bin/p2p-annex DIR/git-annex-p2p-tcp"));
        let fix = link_fix("ygg", None);
        assert!(
            fix.starts_with("`ln -s p2p-annex DIR/git-annex-p2p-ygg`"),
            "{fix}"
        );
    }
}
