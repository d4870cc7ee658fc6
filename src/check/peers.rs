//! Peers: each `p2p-annex::` remote of ours is reachable through its
//! transport, and its git-annex accepts the token stored for it (the
//! P2P protocol's AUTH, see `auth`).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::report::Check;
use crate::addr;
use crate::auth::{self, Answer};
use crate::config::Config;
use crate::error::{Error, describe};
use crate::net::{LazyConfig, Transport};
use crate::text::shell_quote as q;

use super::address::{Problem, problem};
use super::facts::{Net, Remote, Repo};

/// How long reaching a peer may take here, at most (a configured
/// connect-timeout that is shorter wins): long enough for a slow overlay,
/// short enough that a check of many remotes ends.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer's git-annex gets to answer AUTH.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

pub fn peer(repo: &Repo, net: &Net, remote: &Remote) -> Vec<Check> {
    let Ok(transport) = net.transport else {
        return Vec::new(); // reported by `helper_links`
    };
    let shown = format!(
        "remote {} ({}:{})",
        remote.name,
        remote.netname,
        transport.form.shown(&remote.address)
    );
    if let Some(p) = problem(transport, &remote.address) {
        let what = match p {
            Problem::Bracketed => format!(
                "{shown}: a bracketed IPv6 address, which git-annex does not take for a P2P \
                 remote (it says \"cannot access remote\")"
            ),
            Problem::Malformed(why) => format!("{shown}: malformed address: {why}"),
        };
        return vec![Check::fail(
            "remote-url",
            what,
            format!(
                "get a new line from the peer's `git annex p2p --gen-addresses` (p2p-annex \
                 prints IPv6 without brackets), then `git remote remove {0}` and \
                 `git annex p2p --link --name {0}`",
                q(&remote.name)
            ),
        )];
    }
    let conn = match connect(transport, &net.cfg, &remote.address) {
        Ok(conn) => conn,
        Err(e) => {
            let fix = match e {
                // Our own settings are wrong, not the peer.
                Error::Config(_) | Error::Usage(_) | Error::Addr(_) => format!(
                    "correct the setting (`git config --show-origin --get-regexp {}` \
                     shows where it is)",
                    q(&format!("^p2p-annex\\.{}\\.", net.name))
                ),
                _ => reach_fix(transport, &net.cfg),
            };
            return vec![Check::fail("peer-reachable", format!("{shown}: {e}"), fix)];
        }
    };
    let mut checks = vec![Check::ok("peer-reachable", format!("{shown} is reachable"))];
    checks.push(authenticate(repo, remote, &shown, &conn));
    checks
}

/// Reach the peer as connect mode does, within `REACH_TIMEOUT`.
fn connect(transport: &Transport, cfg: &Config, address: &str) -> Result<OwnedFd, Error> {
    let address = transport
        .form
        .parse(&addr::decode_arg(address.as_bytes())?)?;
    (transport.connect)(
        &LazyConfig::loaded(cfg.clone()),
        &address,
        Some(REACH_TIMEOUT),
    )
}

fn reach_fix(transport: &Transport, cfg: &Config) -> String {
    let peer = "check that the peer's `git annex remotedaemon` runs (run `p2p-annex check` in \
                the peer's repository)";
    (transport.reach_fix)(cfg, peer)
}

/// The peer's git-annex accepts the token stored for this remote. The
/// token goes to the peer and nowhere else.
fn authenticate(repo: &Repo, remote: &Remote, shown: &str, conn: &OwnedFd) -> Check {
    const KIND: &str = "peer-auth";
    let relink = format!(
        "get a new line from the peer's `git annex p2p --gen-addresses`, then `git remote remove \
         {0}` and `git annex p2p --link --name {0}`",
        q(&remote.name)
    );
    let Some(uuid) = &repo.uuid else {
        return Check::fail(
            KIND,
            format!("{shown}: cannot send AUTH: this repository has no annex.uuid"),
            "run `git annex init`",
        );
    };
    let token = match auth::load_token(&repo.git_dir, &remote.netname, &remote.address) {
        Ok(Some(token)) => token,
        Ok(None) => {
            let file = repo
                .git_dir
                .join("annex/creds")
                .join(auth::creds_file_name(&remote.netname, &remote.address));
            return Check::fail(
                KIND,
                format!(
                    "{shown}: no auth token stored for it ({} is missing or empty)",
                    repo.show(&file)
                ),
                relink,
            );
        }
        Err(e) => {
            return Check::fail(
                KIND,
                format!("{shown}: cannot read its auth token: {}", describe(&e)),
                "make .git/annex/creds readable by this user",
            );
        }
    };
    if !token.well_formed() {
        return Check::fail(
            KIND,
            format!(
                "{shown}: the auth token in {} is not one word of printable characters",
                token.source
            ),
            relink,
        );
    }
    let behind = "the peer's listener accepts connections but no git-annex answers behind it \
                  (a stale socket file or a stray listener there): run `p2p-annex check` in the \
                  peer's repository";
    match auth::exchange(conn.as_fd(), uuid, &token, AUTH_TIMEOUT) {
        Ok(Answer::Success(theirs)) => match &remote.uuid {
            Some(expected) if *expected != theirs => Check::warn(
                KIND,
                format!(
                    "{shown}: the peer accepts our auth token but answers as {theirs}, while \
                     remote.{}.annex-uuid is {expected}: another repository answers at this \
                     address",
                    remote.name
                ),
                Some(relink),
            ),
            _ => Check::ok(
                KIND,
                format!("{shown}: the peer accepts our auth token (AUTH-SUCCESS from {theirs})"),
            ),
        },
        Ok(Answer::Failure) => Check::fail(
            KIND,
            format!("{shown}: the peer refuses our auth token (AUTH-FAILURE)"),
            format!(
                "the peer no longer accepts this repository's token, or another repository \
                 answers at this address: {relink}"
            ),
        ),
        Ok(Answer::Closed) => Check::fail(
            KIND,
            format!("{shown}: the connection was closed without an answer to AUTH"),
            behind,
        ),
        Ok(Answer::TimedOut) => Check::fail(
            KIND,
            format!(
                "{shown}: no answer to AUTH within {} s",
                AUTH_TIMEOUT.as_secs()
            ),
            behind,
        ),
        Ok(Answer::Other(line)) => Check::fail(
            KIND,
            format!("{shown}: unexpected answer to AUTH: {line:?}"),
            "is a git-annex P2P server at that address? Run `p2p-annex check` in the peer's \
             repository",
        ),
        Err(e) => Check::fail(
            KIND,
            format!("{shown}: the AUTH exchange failed: {}", describe(&e)),
            behind,
        ),
    }
}
