//! The process table, from Linux's /proc: which remotedaemons and which
//! listeners of ours run for a repository. remotedaemon writes no pid file
//! (doc/git-annex-contract.md,
//! "Not supervised"), so the command line and working directory are all there is
//! to go by.

use std::path::{Path, PathBuf};

use crate::cli::HELPER_PREFIX;

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `Z`…, from /proc/PID/stat.
    pub state: char,
    /// The kernel's name for it (at most 15 bytes): all that is left of a
    /// zombie, whose command line is gone.
    pub comm: String,
    pub argv: Vec<String>,
    /// None when it cannot be read (another user's process).
    pub cwd: Option<PathBuf>,
}

/// What a listen-mode process of ours was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenArgs {
    pub netname: String,
    pub address: String,
    pub socket: PathBuf,
}

impl Proc {
    pub fn read(pid: u32) -> Option<Proc> {
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        let stat = String::from_utf8_lossy(&stat);
        // The name may hold spaces and parentheses: the fields we want
        // follow the last ')'.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_string();
        let mut fields = stat.get(close + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Proc {
            pid,
            ppid,
            state,
            comm,
            argv,
            cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
        })
    }

    /// A zombie has exited: it holds no port and no socket.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }

    fn arg_name(&self, i: usize) -> Option<&str> {
        let arg = self.argv.get(i)?;
        Some(arg.rsplit('/').next().unwrap_or(arg))
    }

    /// `git-annex remotedaemon` (git runs it as `git-annex`, and it
    /// re-executes itself by full path when it forks to the background).
    pub fn is_remotedaemon(&self) -> bool {
        self.alive()
            && self.arg_name(0) == Some("git-annex")
            && self.argv.get(1).map(String::as_str) == Some("remotedaemon")
    }

    /// Listen mode of ours: `git-annex-p2p-NET ADDRESS SOCKET`, or
    /// `p2p-annex NET ADDRESS SOCKET`.
    pub fn listen_args(&self) -> Option<ListenArgs> {
        let name = self.arg_name(0)?;
        let (netname, rest) = match (name.strip_prefix(HELPER_PREFIX), self.argv.len()) {
            (Some(net), 3) if !net.is_empty() => (net.to_string(), &self.argv[1..]),
            (None, 4) if name == "p2p-annex" => (self.argv[1].clone(), &self.argv[2..]),
            _ => return None,
        };
        Some(ListenArgs {
            netname,
            address: rest[0].clone(),
            socket: PathBuf::from(&rest[1]),
        })
    }

    /// An exited helper nobody waited for (remotedaemon never does).
    pub fn is_dead_helper(&self) -> bool {
        !self.alive()
            && self
                .comm
                .starts_with(&HELPER_PREFIX[..HELPER_PREFIX.len().min(15)])
    }

    pub fn cwd_is(&self, dir: &Path) -> bool {
        self.cwd.as_deref() == Some(dir)
    }

    /// `sleep`, `git-annex remotedaemon`: the command line, shortened.
    pub fn describe(&self) -> String {
        if self.argv.is_empty() {
            return format!("[{}]", self.comm);
        }
        let mut words: Vec<&str> = self.argv.iter().take(3).map(String::as_str).collect();
        if let Some(first) = words.first_mut() {
            *first = first.rsplit('/').next().unwrap_or(first);
        }
        let mut text = words.join(" ");
        if self.argv.len() > 3 {
            text.push_str(" …");
        }
        text
    }
}

/// The variable `name` in the environment process `pid` started with
/// (/proc/PID/environ); an error when it cannot be read (another user's
/// process, unless we are root).
pub fn env_var(pid: u32, name: &str) -> std::io::Result<Option<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(std::ffi::OsStr::from_bytes(value).to_owned())
    }))
}

/// Every process we may look at. No /proc (not Linux) gives an empty list;
/// the caller says so.
pub fn all() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(Proc::read)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(argv: &[&str]) -> Proc {
        Proc {
            pid: 10,
            ppid: 1,
            state: 'S',
            comm: "x".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: None,
        }
    }

    #[test]
    fn listeners_are_recognised_by_their_command_line() {
        let want = Some(ListenArgs {
            netname: "tcp".into(),
            address: "10.0.0.1:5599".into(),
            socket: ".git/annex/p2p/abc".into(),
        });
        assert_eq!(
            proc(&[
                "/usr/bin/git-annex-p2p-tcp",
                "10.0.0.1:5599",
                ".git/annex/p2p/abc"
            ])
            .listen_args(),
            want
        );
        assert_eq!(
            proc(&["p2p-annex", "tcp", "10.0.0.1:5599", ".git/annex/p2p/abc"]).listen_args(),
            want
        );
        // Connect mode, address mode, a script run by sh: not listeners.
        assert_eq!(
            proc(&["git-annex-p2p-tcp", "10.0.0.1:5599"]).listen_args(),
            None
        );
        assert_eq!(proc(&["git-annex-p2p-tcp", "address"]).listen_args(), None);
        assert_eq!(
            proc(&["/bin/sh", "/usr/bin/git-annex-p2p-x", "a", "s"]).listen_args(),
            None
        );
    }

    #[test]
    fn remotedaemon_by_name_and_subcommand() {
        assert!(proc(&["/opt/git_annex/git-annex", "remotedaemon"]).is_remotedaemon());
        assert!(proc(&["git-annex", "remotedaemon", "--foreground"]).is_remotedaemon());
        assert!(!proc(&["git-annex", "assistant"]).is_remotedaemon());
        let mut zombie = proc(&["git-annex", "remotedaemon"]);
        zombie.state = 'Z';
        assert!(!zombie.is_remotedaemon());
    }

    #[test]
    fn environment_variables_of_a_process() {
        let me = std::process::id();
        assert!(env_var(me, "PATH").unwrap().is_some());
        assert_eq!(env_var(me, "P2P_ANNEX_NO_SUCH_VARIABLE").unwrap(), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = Proc::read(std::process::id()).expect("own /proc entry");
        assert!(me.alive());
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
    }
}
