//! Supervision: does a `p2p-annex serve` run this repository's
//! remotedaemon, and does remotedaemon run with the `git` shim first on its
//! PATH (the workaround for git-annex's CONNECTDONE race, without which
//! fetches through this repository may hang)? Told from serve's lock file
//! and from remotedaemon's environment in /proc/PID/environ.

use super::report::Check;
use crate::error::describe;
use crate::procs;
use crate::serve::{self, Probe};

use super::facts::Repo;

const KIND: &str = "serve";

pub fn supervisor(repo: &Repo) -> Vec<Check> {
    let probe = serve::probe(&repo.git_dir);
    if repo.served().is_empty() && probe == Probe::None {
        return Vec::new();
    }
    let serve_cmd = format!(
        "p2p-annex serve {}",
        shell_quote(&repo.top.display().to_string())
    );
    let mut checks = Vec::new();
    let holder = match &probe {
        Probe::Running(r) => {
            checks.push(Check::ok(
                KIND,
                format!(
                    "p2p-annex serve runs (pid {}, {} restart(s) of remotedaemon)",
                    r.pid, r.restarts
                ),
            ));
            Some(r.pid)
        }
        Probe::Stale(r) => {
            checks.push(Check::warn(
                KIND,
                format!(
                    "p2p-annex serve (pid {}) is gone without stopping cleanly (killed?): its \
                     lock file {} still holds its record",
                    r.pid,
                    repo.show(&serve::lock_path(&repo.git_dir))
                ),
                Some(format!(
                    "start it again (its service, or `{serve_cmd}`); the stale record is \
                     replaced then"
                )),
            ));
            None
        }
        Probe::Unreadable(why) => {
            checks.push(Check::warn(
                KIND,
                format!("cannot read p2p-annex serve's lock file: {why}"),
                None,
            ));
            None
        }
        Probe::None => None,
    };
    for daemon in repo.daemons() {
        checks.push(workaround(daemon.pid, holder, &serve_cmd));
    }
    checks
}

/// One remotedaemon: under serve with the shim, or not.
fn workaround(pid: u32, holder: Option<u32>, serve_cmd: &str) -> Check {
    let without = "remotedaemon runs without the CONNECTDONE workaround: fetches may hang; \
                   run it under `p2p-annex serve`";
    let supervisor = match procs::env_var(pid, serve::ENV_VAR) {
        Ok(v) => v.and_then(|v| v.to_str()?.parse::<u32>().ok()),
        Err(e) => {
            return Check::warn(
                KIND,
                format!(
                    "cannot read the environment of remotedaemon pid {pid} ({}): whether it \
                     runs with the git shim is unknown",
                    describe(&e)
                ),
                Some("run `p2p-annex check` as the user remotedaemon runs as".into()),
            );
        }
    };
    let shim = procs::env_var(pid, "PATH")
        .ok()
        .flatten()
        .is_some_and(|path| serve::shim_leads(&path));
    match (supervisor, shim) {
        (Some(s), true) if Some(s) == holder => Check::ok(
            KIND,
            format!(
                "remotedaemon (pid {pid}) runs under serve with the git shim first on its PATH \
                 (CONNECTDONE workaround)"
            ),
        ),
        (Some(s), false) if Some(s) == holder => Check::warn(
            KIND,
            format!("{without} (pid {pid}: serve runs it with --no-git-shim)"),
            Some("restart p2p-annex serve without --no-git-shim".into()),
        ),
        _ => Check::warn(
            KIND,
            format!("{without} (pid {pid})"),
            Some(format!(
                "`kill {pid}`, then `{serve_cmd}` (or its service: see the README, Running as a service)"
            )),
        ),
    }
}

/// `'it'\''s'`: a path pasted into a shell stays one word (and on its line:
/// see `text::shell_quote`, which every suggested command uses).
pub fn shell_quote(s: &str) -> String {
    crate::text::shell_quote(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/srv/annex"), "/srv/annex");
        assert_eq!(shell_quote("/srv/my annex"), "'/srv/my annex'");
        assert_eq!(shell_quote("/srv/it's"), r"'/srv/it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
