//! The `fowl` networks' own link in the chain: fowld starts and reaches
//! the mailbox of each address this repository serves.

use super::facts::Repo;
use super::report::Check;
use crate::net::fowl;

pub fn fowld(repo: &Repo) -> Vec<Check> {
    const KIND: &str = "fowl";
    let mut checks = Vec::new();
    for (net, na) in repo.served() {
        if !net.transport.as_ref().is_ok_and(|t| t.name == "fowl") {
            continue;
        }
        let shown = na.show();
        checks.push(match fowl::probe(&net.cfg, &na.address) {
            Ok(took) => Check::ok(
                KIND,
                format!(
                    "fowld reached the mailbox of {shown} in {} ms",
                    took.as_millis()
                ),
            ),
            Err(e) => Check::fail(
                KIND,
                format!("{shown}: {e}"),
                format!(
                    "install fowl (`pipx install fowl`) or set {} to its fowld, and check \
                     that the mailbox is reachable; see git-annex-p2p-fowl(1)",
                    net.cfg.name("fowld")
                ),
            ),
        });
    }
    checks
}
