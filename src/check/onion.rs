//! The `onion` networks' own link in the chain: tor's control port answers
//! and lets us in, and a listener holds this repository's onion service.

use crate::net::onion;

use super::report::Check;

use super::facts::Repo;

pub fn tor(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "tor";
    let mut checks = Vec::new();
    for (net, na) in repo.served() {
        if !net.transport.as_ref().is_ok_and(|t| t.name == "onion") {
            continue;
        }
        let shown = na.show();
        let serving = !repo.daemons().is_empty();
        checks.push(match onion::probe(&net.cfg) {
            Err(e) => Check::fail(
                KIND,
                format!("{}: {e}", net.name),
                format!(
                    "start tor, or point {} at its control port (HOST:PORT or unix:/PATH); \
                     see git-annex-p2p-onion(1)",
                    net.cfg.name("control")
                ),
            ),
            Ok(p) => match p.registered {
                Some(true) => Check::ok(
                    KIND,
                    format!(
                        "{shown} is registered with tor at {} ({} auth)",
                        p.control, p.method
                    ),
                ),
                Some(false) if serving => Check::fail(
                    KIND,
                    format!(
                        "tor at {} ({} auth) has no onion service for {shown}: its listener \
                         does not hold it",
                        p.control, p.method
                    ),
                    "see the listener's log (`p2p-annex status`); restart remotedaemon".to_string(),
                ),
                Some(false) => Check::warn(
                    KIND,
                    format!(
                        "tor at {} ({} auth) answers; {shown} is not registered, as no \
                         remotedaemon runs",
                        p.control, p.method
                    ),
                    Some("start `git annex remotedaemon` (or `p2p-annex serve`)".to_string()),
                ),
                None => Check::fail(
                    KIND,
                    format!("{shown} is enabled but this repository has no onion key"),
                    format!(
                        "run `git annex p2p --enable {}` again, and give peers the new address",
                        net.name
                    ),
                ),
            },
        });
    }
    checks
}
