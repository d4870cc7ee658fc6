//! What is wrong with a P2P address, for a network of a given transport:
//! what `check` says of remotes and of our enabled addresses, and which of
//! them remotedaemon should serve.

use crate::addr;
use crate::net::{Form, Transport};

#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// `[::1]:5000`: git-annex does not take it for a P2P address
    /// (measured: doc/git-annex-contract.md, "Bracketed IPv6").
    Bracketed,
    Malformed(String),
}

/// What is wrong with an address of a network of this transport, if
/// anything.
pub fn problem(transport: &Transport, address: &str) -> Option<Problem> {
    let decoded = match addr::decode_arg(address.as_bytes()) {
        Ok(d) => d,
        Err(e) => return Some(Problem::Malformed(e.to_string())),
    };
    // `[::1]:5000`, not any address with a bracket in it (an escape
    // sequence has one).
    if transport.form == Form::HostPort && decoded.starts_with('[') && decoded.contains("]:") {
        return Some(Problem::Bracketed);
    }
    transport
        .form
        .parse(&decoded)
        .err()
        .map(|e| Problem::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_problems() {
        let named = |n| Transport::named(n).unwrap();
        let (tcp, socks, unix) = (named("tcp"), named("socks"), named("unix-sockets"));
        assert_eq!(problem(tcp, "10.0.0.1:5599"), None);
        assert_eq!(problem(tcp, "200:ab::1:5599"), None);
        assert_eq!(problem(tcp, "[::1]:5599"), Some(Problem::Bracketed));
        assert_eq!(problem(socks, "%5B::1%5D:5599"), Some(Problem::Bracketed));
        assert!(matches!(problem(tcp, "host"), Some(Problem::Malformed(_))));
        assert_eq!(problem(socks, "abc.pk.ygg:12345"), None);
        assert_eq!(problem(unix, "0123abcd"), None);
        assert!(matches!(problem(unix, "../x"), Some(Problem::Malformed(_))));
    }
}
