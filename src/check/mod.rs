//! `p2p-annex check`: find out why git-annex cannot reach a peer, or a
//! peer this repository. When a P2P remote fails, git-annex says only
//! "cannot access remote", and the listener's stderr is /dev/null; this
//! looks at every link of the chain in turn and says what to do about each
//! one that is broken.
//!
//! Facts are gathered once (`facts`: git config, the creds files, /proc),
//! then each check is a plain function of them returning its verdicts:
//! `local` (tools, links, addresses), `serve` (remotedaemon, its sockets and
//! listeners), `supervisor` (`p2p-annex serve` and the git shim) and `peers` (each remote reachable, our token accepted). Only
//! the socket and peer checks touch the network, each within seconds.

mod address;
mod facts;
mod fowl;
mod local;
mod md5;
mod onion;
mod peers;
mod report;
mod serve;
mod supervisor;

use std::io::{self, Write};

use crate::error::Error;
use facts::{Repo, find_on, search_path};
use report::{Check, Report};

/// What the checks found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing failed (warnings aside).
    Passed,
    /// At least one check failed.
    Failed,
}

/// Run every check and print the report as it goes.
pub fn run(json: bool) -> Result<Verdict, Error> {
    let mut out = io::stdout().lock();
    let mut report = Report::new(json);
    run_checks(&mut report, &mut out)
        .and_then(|()| report.finish(&mut out))
        .map_err(Error::Stdout)?;
    Ok(if report.failed() {
        Verdict::Failed
    } else {
        Verdict::Passed
    })
}

fn run_checks(report: &mut Report, out: &mut impl Write) -> io::Result<()> {
    let path = search_path();
    let annex = find_on(&path, "git-annex");
    report.add(out, vec![local::git_annex(annex.as_deref())])?;
    report.add(out, vec![local::remote_helper(&path, annex.as_deref())])?;
    let repo = match Repo::gather(&path) {
        Ok(repo) => repo,
        Err(check) => return report.add(out, vec![check]),
    };
    let mut secrets = crate::auth::known_secrets(&repo.git_dir);
    // Peers' fowl secrets, which their remotes' addresses hold.
    secrets.extend(
        repo.remotes
            .iter()
            .filter_map(|r| crate::fowlcode::secret_text(&r.address))
            .map(|s| s.as_bytes().to_vec()),
    );
    report.redact(secrets);
    let checks: [fn(&Repo) -> Vec<Check>; 11] = [
        local::repository,
        local::bad_remotes,
        local::helper_links,
        local::addresses,
        serve::remotedaemon,
        supervisor::supervisor,
        serve::sockets,
        serve::listeners,
        onion::tor,
        fowl::fowld,
        serve::strays,
    ];
    for check in checks {
        report.add(out, check(&repo))?;
    }
    for remote in &repo.remotes {
        if let Some(net) = repo.net(&remote.netname).filter(|n| n.ours()) {
            report.add(out, peers::peer(&repo, net, remote))?;
        }
    }
    Ok(())
}
