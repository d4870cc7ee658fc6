//! Serving: a remotedaemon runs for this repository, its socket files
//! accept connections, a listener of ours runs under it for each enabled
//! address, and no stray listener of ours holds a port outside it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::md5;
use super::report::Check;
use crate::addr;
use crate::error::describe;
use crate::net::unix;
use crate::procs;

use super::facts::{Net, NetAddr, Repo};

/// Connecting to a socket file of our own repository: local, so quick.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

pub fn remotedaemon(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "remotedaemon";
    if repo.served().is_empty() {
        return Vec::new();
    }
    if repo.procs.is_none() {
        return vec![Check::warn(
            KIND,
            "cannot read /proc: remotedaemon and its listeners are not checked",
            None,
        )];
    }
    let daemons = repo.daemons();
    let pids: Vec<String> = daemons.iter().map(|p| p.pid.to_string()).collect();
    vec![match daemons.len() {
        0 => Check::fail(
            KIND,
            "no `git annex remotedaemon` runs for this repository: peers cannot connect to it",
            format!(
                "start `p2p-annex serve {}` (best as a service: README, Running as a \
                 service), or run `git annex remotedaemon` in {} (it goes to the background)",
                super::supervisor::shell_quote(&repo.top.display().to_string()),
                repo.top.display()
            ),
        ),
        1 => Check::ok(KIND, format!("remotedaemon runs (pid {})", pids[0])),
        n => Check::warn(
            KIND,
            format!(
                "{n} remotedaemons run for this repository (pids {})",
                pids.join(", ")
            ),
            Some(format!("stop all but one (`kill {}`)", pids[1..].join(" "))),
        ),
    }]
}

/// How to get a fresh remotedaemon, with its sockets and listeners.
fn restart(repo: &Repo) -> String {
    let pids: Vec<String> = repo.daemons().iter().map(|p| p.pid.to_string()).collect();
    if pids.is_empty() {
        format!("start `git annex remotedaemon` in {}", repo.top.display())
    } else {
        format!(
            "restart remotedaemon: `kill {}`, then `git annex remotedaemon`",
            pids.join(" ")
        )
    }
}

/// The socket file git-annex serves an address on: what our listener was
/// given, or where remotedaemon makes it (`.git/annex/p2p/<md5 of
/// "<netname>:<address>">`, measured with git-annex 10.20261026).
fn socket_of(repo: &Repo, na: &NetAddr) -> PathBuf {
    let daemons: Vec<u32> = repo.daemons().iter().map(|p| p.pid).collect();
    repo.listener_procs()
        .into_iter()
        .find(|(p, args)| daemons.contains(&p.ppid) && same_address(args, na))
        .map(|(_, args)| repo.top.join(args.socket))
        .unwrap_or_else(|| {
            repo.git_dir
                .join("annex/p2p")
                .join(md5::hex_digest(na.show().as_bytes()))
        })
}

fn same_address(args: &procs::ListenArgs, na: &NetAddr) -> bool {
    let decode = |a: &str| addr::decode_arg(a.as_bytes()).unwrap_or_else(|_| a.to_string());
    args.netname == na.netname && decode(&args.address) == decode(&na.address)
}

/// Each served address has a socket file that git-annex accepts on.
pub fn sockets(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "socket";
    if repo.procs.is_none() {
        return Vec::new();
    }
    let daemon_runs = !repo.daemons().is_empty();
    let mut checks = Vec::new();
    for (_, na) in repo.served() {
        let path = socket_of(repo, na);
        let (shown, file) = (na.show(), repo.show(&path));
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Without a remotedaemon there is no socket to expect.
            Err(_) if !daemon_runs => continue,
            Err(e) => {
                checks.push(Check::fail(
                    KIND,
                    format!("no socket file for {shown} ({file}: {})", describe(&e)),
                    format!(
                        "remotedaemon makes one per enabled address when it starts: {}",
                        restart(repo)
                    ),
                ));
                continue;
            }
        };
        if !meta.file_type().is_socket() {
            checks.push(Check::fail(
                KIND,
                format!("{file}, the socket file for {shown}, is not a socket"),
                format!("remove it, then {}", restart(repo)),
            ));
            continue;
        }
        checks.push(match unix::connect_within(&path, SOCKET_TIMEOUT) {
            Ok(_) => Check::ok(
                KIND,
                format!("socket file for {shown} accepts connections ({file})"),
            ),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Check::fail(
                KIND,
                format!(
                    "socket file for {shown} is stale: nothing accepts on it ({file}: \
                     connection refused)"
                ),
                if daemon_runs {
                    format!("remotedaemon no longer serves it: {}", restart(repo))
                } else {
                    format!(
                        "it was left by a remotedaemon that is gone: {} (it replaces the file)",
                        restart(repo)
                    )
                },
            ),
            Err(e) => Check::fail(
                KIND,
                format!(
                    "cannot connect to the socket file for {shown} ({file}: {})",
                    describe(&e)
                ),
                restart(repo),
            ),
        });
    }
    checks
}

/// Each served address has a live listener of ours under remotedaemon.
pub fn listeners(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "listener";
    let daemons = repo.daemons();
    if daemons.is_empty() {
        return Vec::new(); // reported by `remotedaemon`
    }
    let pids: Vec<u32> = daemons.iter().map(|p| p.pid).collect();
    let running = repo.listener_procs();
    let exited = repo
        .procs
        .iter()
        .flatten()
        .filter(|p| pids.contains(&p.ppid) && p.is_dead_helper())
        .count();
    let mut checks = Vec::new();
    for (net, na) in repo.served() {
        let shown = na.show();
        let found = running
            .iter()
            .find(|(p, args)| pids.contains(&p.ppid) && same_address(args, na));
        checks.push(match found {
            Some((p, _)) => match waiting(&log_file(repo, net), &net.name, p.pid) {
                // It runs, but does not serve yet: it waits for its port or
                // its address, and says so in its log.
                Some(why) => Check::fail(
                    KIND,
                    format!(
                        "listener for {shown} runs (pid {}, under remotedaemon {}) but cannot \
                         listen yet; its log ends with: {why}",
                        p.pid, p.ppid
                    ),
                    format!(
                        "it keeps trying and serves as soon as it can: free the port (see any \
                         stray listener below) or bring up the address; its log is {}",
                        repo.show(&log_file(repo, net))
                    ),
                ),
                None => Check::ok(
                    KIND,
                    format!(
                        "listener for {shown} runs (pid {}, under remotedaemon {})",
                        p.pid, p.ppid
                    ),
                ),
            },
            None => {
                let log = log_file(repo, net);
                let last = last_log_line(&log, &net.name)
                    .map(|l| format!("; its log ends with: {l}"))
                    .unwrap_or_default();
                Check::fail(
                    KIND,
                    format!(
                        "no listener for {shown} runs under remotedaemon{}{last}",
                        if exited > 0 {
                            format!(" ({exited} exited)")
                        } else {
                            String::new()
                        }
                    ),
                    format!(
                        "remotedaemon never restarts a listener that exited: see {} for why, \
                         mend that, then {}",
                        repo.show(&log),
                        restart(repo)
                    ),
                )
            }
        });
    }
    checks
}

/// Where the listener of `net` logs under remotedaemon.
fn log_file(repo: &Repo, net: &Net) -> PathBuf {
    match net.cfg.get("log") {
        Some(path) => repo.top.join(path),
        None => crate::control::log_path(&repo.git_dir, &net.name),
    }
}

/// Why the listener stopped, as its log says: the last line, without time
/// stamp, pid and netname, passing over the bare "exiting" that follows
/// the reason. The log never holds data or tokens.
fn last_log_line(log: &Path, netname: &str) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let prefix = format!("{netname}: ");
    let message = text
        .lines()
        .rev()
        .map(|l| l.split_once("] ").map_or(l, |(_, rest)| rest))
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).trim())
        .find(|m| !m.is_empty() && *m != "exiting" && !m.starts_with("exiting,"))?;
    Some(message.chars().take(200).collect())
}

/// Why the listener `pid` cannot listen yet, if its last word about
/// binding says it is waiting (a busy port, an address or a name that is
/// not there yet), rather than "listening on".
fn waiting(log: &Path, netname: &str, pid: u32) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let prefix = format!("p2p-annex[{pid}] {netname}: ");
    let last = text
        .lines()
        .rev()
        .filter_map(|l| l.split_once(&prefix).map(|(_, m)| m.trim()))
        .find(|m| m.starts_with("listening on ") || m.starts_with("cannot listen on "))?;
    last.starts_with("cannot listen on ")
        .then(|| last.chars().take(200).collect())
}

/// No listener of ours works in this repository outside its remotedaemon:
/// an orphan from an earlier run, or one started by hand, holds its port
/// (remotedaemon's own listener then cannot bind it) and relays peers to a
/// socket that may be stale.
pub fn strays(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "stray-listener";
    let Some(table) = &repo.procs else {
        return Vec::new();
    };
    let daemons: Vec<u32> = repo.daemons().iter().map(|p| p.pid).collect();
    let served = repo.served();
    let strays: Vec<Check> = repo
        .listener_procs()
        .into_iter()
        .filter(|(p, _)| !daemons.contains(&p.ppid))
        .map(|(p, args)| {
            let parent = match table.iter().find(|q| q.pid == p.ppid) {
                Some(q) if q.pid > 1 => format!(
                    "its parent is pid {} ({}), not a remotedaemon of this repository",
                    q.pid,
                    q.describe()
                ),
                _ => "orphaned: the remotedaemon that started it is gone".to_string(),
            };
            let enabled = served.iter().any(|(_, na)| same_address(&args, na));
            let harm = if enabled {
                "it holds the port of an enabled address, so remotedaemon's own listener \
                 cannot bind it"
            } else {
                "it holds a port for an address this repository does not serve"
            };
            let mut fix = format!("`kill {}`", p.pid);
            if enabled && !daemons.is_empty() {
                // remotedaemon's listener waits for the port (listen/bind.rs).
                fix.push_str(": remotedaemon's listener binds the port within 10 seconds");
            }
            Check::fail(
                KIND,
                format!(
                    "stray listener pid {} for {}:{}: {parent}; {harm}",
                    p.pid, args.netname, args.address
                ),
                fix,
            )
        })
        .collect();
    if strays.is_empty() && !served.is_empty() {
        return vec![Check::ok(
            KIND,
            "no stray or orphaned listener runs in this repository",
        )];
    }
    strays
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_says_why_the_listener_went() {
        let dir = std::env::temp_dir().join(format!("p2p-annex-unit-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("p2p-annex.tcp.log");
        std::fs::write(
            &log,
            "2026-11-25T12:00:00Z p2p-annex[4711] tcp: listening on 127.0.0.1:5599\n\
             2026-11-25T12:00:09Z p2p-annex[4711] tcp: exiting: parent process 4700 is gone\n\
             2026-11-25T12:00:09Z p2p-annex[4711] tcp: exiting\n",
        )
        .unwrap();
        let got = last_log_line(&log, "tcp");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.as_deref(), Some("exiting: parent process 4700 is gone"));
    }

    #[test]
    fn the_log_says_whether_a_listener_still_waits() {
        let dir = std::env::temp_dir().join(format!("p2p-annex-unit-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("p2p-annex.tcp.log");
        let busy = "cannot listen on 127.0.0.1:5599: address already in use; will try again, \
                    every 10s at most";
        std::fs::write(
            &log,
            format!(
                "2026-11-25T12:00:00Z p2p-annex[4711] tcp: {busy}\n\
                 2026-11-25T12:00:01Z p2p-annex[4712] tcp: listening on 127.0.0.1:5598\n\
                 2026-11-25T12:00:02Z p2p-annex[4713] tcp: {busy}\n\
                 2026-11-25T12:00:09Z p2p-annex[4713] tcp: listening on 127.0.0.1:5599, \
                 relaying to s (after 5 tries in 7.0s)\n"
            ),
        )
        .unwrap();
        let (a, b, c) = (
            waiting(&log, "tcp", 4711),
            waiting(&log, "tcp", 4712),
            waiting(&log, "tcp", 4713),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(a.as_deref(), Some(busy));
        assert_eq!((b, c), (None, None));
    }
}
