//! What the checks look at, gathered once: this repository's git config,
//! enabled addresses and remotes, the helpers on PATH, the process table.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::report::Check;
use crate::cli::{HELPER_PREFIX, valid_netname};
use crate::config::{self, Config};
use crate::error::{Error, describe};
use crate::net::Transport;
use crate::procs::{self, Proc};

use super::address::problem;

/// This repository, as git, its files and /proc show it.
pub struct Repo {
    /// The directory remotedaemon and its listeners run in: the work
    /// tree's top, or the git directory of a bare repository. Canonical,
    /// to compare with /proc/PID/cwd.
    pub top: PathBuf,
    pub git_dir: PathBuf,
    pub uuid: Option<String>,
    /// The networks in use here, in order of first mention.
    pub nets: Vec<Net>,
    /// `.git/annex/creds/p2paddrs`: this repository's enabled addresses
    /// on `p2p-annex::` networks, or why it could not be read.
    pub enabled: Result<Vec<NetAddr>, String>,
    pub remotes: Vec<Remote>,
    /// Remotes whose `p2p-annex::` URL names no valid netname: (remote,
    /// URL). Nothing of theirs is used further.
    pub bad_remotes: Vec<(String, String)>,
    /// None when there is no /proc to read.
    pub procs: Option<Vec<Proc>>,
}

/// `<netname>:<address>`, as git-annex writes it after `p2p-annex::`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAddr {
    pub netname: String,
    pub address: String,
}

impl NetAddr {
    /// `p2p-annex::tcp:10.0.0.1:5599` → tcp, 10.0.0.1:5599. None when it
    /// is not one, or names no valid netname.
    pub fn from_url(url: &str) -> Option<NetAddr> {
        let (netname, address) = url.trim().strip_prefix("p2p-annex::")?.split_once(':')?;
        if !valid_netname(netname) {
            return None;
        }
        Some(NetAddr {
            netname: netname.to_string(),
            address: address.to_string(),
        })
    }

    /// As the report shows it: a fowl address without its secret.
    pub fn show(&self) -> String {
        format!("{}:{}", self.netname, crate::fowlcode::shown(&self.address))
    }
}

pub struct Remote {
    pub name: String,
    pub netname: String,
    pub address: String,
    /// `remote.<name>.annex-uuid`: whom we expect to answer.
    pub uuid: Option<String>,
}

pub struct Net {
    pub name: String,
    pub helper: Helper,
    pub cfg: Config,
    pub transport: Result<&'static Transport, Error>,
}

/// What `git-annex-p2p-<net>` on PATH is.
pub enum Helper {
    /// This very binary.
    This(PathBuf),
    /// Another p2p-annex binary (an older install, say).
    OtherP2pAnnex {
        link: PathBuf,
        target: PathBuf,
    },
    /// Another program, such as a socat script.
    Other {
        link: PathBuf,
        target: PathBuf,
    },
    Missing,
}

impl Net {
    /// Ours to check further: git-annex runs p2p-annex for it, or would
    /// once the link is made.
    pub fn ours(&self) -> bool {
        !matches!(self.helper, Helper::Other { .. })
    }
}

impl Repo {
    pub fn gather(path: &[PathBuf]) -> Result<Repo, Check> {
        let here = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let not_here = || {
            Check::fail(
                "repository",
                format!("{here} is not inside a git repository"),
                "run `p2p-annex check` inside the git-annex repository to check",
            )
        };
        let git_dir = config::git_dir().ok_or_else(not_here)?;
        let top =
            config::git_path(&["rev-parse", "--show-toplevel"]).unwrap_or_else(|| git_dir.clone());
        let top = std::fs::canonicalize(&top).unwrap_or(top);
        let records =
            config::read_regexp(r"^(annex\.uuid|remote\..*|p2p-annex\..*)$").map_err(|e| {
                Check::fail(
                    "repository",
                    e.to_string(),
                    "check the repository's git config",
                )
            })?;
        let get = |key: &str| {
            records
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let enabled = read_enabled(&git_dir);
        let mut remotes = Vec::new();
        let mut bad_remotes = Vec::new();
        for (key, value) in &records {
            let Some(name) = key
                .strip_prefix("remote.")
                .and_then(|k| k.strip_suffix(".url"))
            else {
                continue;
            };
            if value.trim().starts_with("p2p-annex::") && NetAddr::from_url(value).is_none() {
                bad_remotes.push((name.to_string(), value.clone()));
            } else if let Some(na) = NetAddr::from_url(value) {
                remotes.push(Remote {
                    uuid: get(&format!("remote.{name}.annex-uuid")),
                    name: name.to_string(),
                    netname: na.netname,
                    address: na.address,
                });
            }
        }
        // Networks in use: enabled here, used by a remote, or configured.
        let mut names: Vec<String> = Vec::new();
        let configured = records.iter().filter_map(|(k, _)| {
            k.strip_prefix("p2p-annex.")?
                .strip_suffix(".transport")
                .map(str::to_string)
        });
        let in_use = enabled
            .iter()
            .flatten()
            .map(|na| na.netname.clone())
            .chain(remotes.iter().map(|r| r.netname.clone()))
            .chain(configured)
            .filter(|name| valid_netname(name));
        for name in in_use {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let exe = std::env::current_exe().and_then(std::fs::canonicalize).ok();
        let nets = names
            .into_iter()
            .map(|name| {
                let cfg = Config::from_records(&name, &records);
                Net {
                    helper: helper(path, &name, exe.as_deref()),
                    transport: Transport::for_netname(&cfg),
                    cfg,
                    name,
                }
            })
            .collect();
        let procs = procs::all();
        Ok(Repo {
            uuid: get("annex.uuid").filter(|u| !u.is_empty()),
            top,
            git_dir,
            nets,
            enabled,
            remotes,
            bad_remotes,
            procs: (!procs.is_empty()).then_some(procs),
        })
    }

    pub fn net(&self, name: &str) -> Option<&Net> {
        self.nets.iter().find(|n| n.name == name)
    }

    /// Enabled addresses of our networks that are well formed: the ones
    /// remotedaemon should serve through us.
    pub fn served(&self) -> Vec<(&Net, &NetAddr)> {
        let Ok(enabled) = &self.enabled else {
            return Vec::new();
        };
        enabled
            .iter()
            .filter_map(|na| {
                let net = self.net(&na.netname).filter(|n| n.ours())?;
                let transport = *net.transport.as_ref().ok()?;
                problem(transport, &na.address)
                    .is_none()
                    .then_some((net, na))
            })
            .collect()
    }

    /// Live remotedaemons of this repository.
    pub fn daemons(&self) -> Vec<&Proc> {
        self.procs
            .iter()
            .flatten()
            .filter(|p| p.is_remotedaemon() && p.cwd_is(&self.top))
            .collect()
    }

    /// Live listen-mode processes of ours working in this repository.
    pub fn listener_procs(&self) -> Vec<(&Proc, procs::ListenArgs)> {
        self.procs
            .iter()
            .flatten()
            .filter(|p| p.alive() && p.cwd_is(&self.top))
            .filter_map(|p| Some((p, p.listen_args()?)))
            .collect()
    }

    /// A path for messages: relative to the repository when inside it.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.top)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The `p2p-annex::` lines of `.git/annex/creds/p2paddrs` (tor-annex and
/// other lines are git-annex's own business).
fn read_enabled(git_dir: &Path) -> Result<Vec<NetAddr>, String> {
    let file = git_dir.join("annex/creds/p2paddrs");
    match std::fs::read(&file) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(NetAddr::from_url)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {}", file.display(), describe(&e))),
    }
}

pub fn search_path() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// The first executable `name` on PATH, as git and git-annex would run it.
/// Empty PATH entries (the current directory) are skipped: that is not
/// where an installed helper lives.
pub fn find_on(path: &[PathBuf], name: &str) -> Option<PathBuf> {
    path.iter()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|f| {
            std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn helper(path: &[PathBuf], netname: &str, exe: Option<&Path>) -> Helper {
    let Some(link) = find_on(path, &format!("{HELPER_PREFIX}{netname}")) else {
        return Helper::Missing;
    };
    let target = std::fs::canonicalize(&link).unwrap_or_else(|_| link.clone());
    // Where a file system holds no symbolic links, the README's two-line
    // script `exec /opt/bin/p2p-annex NETNAME "$@"` stands in for one.
    let runs = wrapped_program(&target, netname).map(|prog| {
        let found = if prog.is_absolute() {
            Some(prog.clone())
        } else {
            find_on(path, &prog.to_string_lossy())
        };
        found
            .and_then(|p| std::fs::canonicalize(p).ok())
            .unwrap_or(prog)
    });
    let target = runs.unwrap_or(target);
    if exe == Some(target.as_path()) {
        Helper::This(link)
    } else if target.file_name().is_some_and(|n| n == "p2p-annex") {
        Helper::OtherP2pAnnex { link, target }
    } else {
        Helper::Other { link, target }
    }
}

/// The p2p-annex a wrapper script runs for `netname`: a short `#!` script
/// with a word ending in `p2p-annex` followed by the netname.
fn wrapped_program(script: &Path, netname: &str) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(script)
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    wrapper_target(&String::from_utf8_lossy(&head), netname)
}

fn wrapper_target(text: &str, netname: &str) -> Option<PathBuf> {
    if !text.starts_with("#!") {
        return None;
    }
    text.lines().skip(1).find_map(|line| {
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_matches(['"', '\'']))
            .collect();
        words.windows(2).find_map(|w| {
            (w[0].rsplit('/').next() == Some("p2p-annex") && w[1] == netname)
                .then(|| PathBuf::from(w[0]))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_urls() {
        assert_eq!(
            NetAddr::from_url("p2p-annex::tcp:200:ab::1:5599\n"),
            Some(NetAddr {
                netname: "tcp".into(),
                address: "200:ab::1:5599".into()
            })
        );
        assert_eq!(NetAddr::from_url("tor-annex::x.onion:80"), None);
        assert_eq!(NetAddr::from_url("p2p-annex::nocolon"), None);
        assert_eq!(NetAddr::from_url("p2p-annex::x;touch /tmp/pwn;:1:2"), None);
    }

    #[test]
    fn wrapper_scripts_name_the_p2p_annex_they_run() {
        let script = "#!/bin/sh\nexec /opt/bin/p2p-annex tcp \"$@\"\n";
        assert_eq!(
            wrapper_target(script, "tcp"),
            Some(PathBuf::from("/opt/bin/p2p-annex"))
        );
        assert_eq!(wrapper_target(script, "ygg"), None);
        assert_eq!(
            wrapper_target("#!/bin/sh\nexec p2p-annex ygg \"$@\"\n", "ygg"),
            Some(PathBuf::from("p2p-annex"))
        );
        let socat = "#!/bin/sh\nexec socat - \"TCP:$1\"\n";
        assert_eq!(wrapper_target(socat, "tcp"), None);
        assert_eq!(wrapper_target("\x7fELF p2p-annex tcp", "tcp"), None);
    }
}
