//! P2P addresses: percent-decoding and `HOST:PORT` parsing. Pure, no I/O.
//!
//! git-annex cannot use bracketed IPv6 in a `p2p-annex::` URL (measured:
//! doc/git-annex-contract.md, "Bracketed IPv6"), so our addresses are `HOST:PORT` with the port after the last
//! colon and IPv6 unbracketed (`200:abcd::1:5599`). Bracketed input is still
//! accepted, and addresses we print are never bracketed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name (RFC 1035 section 2.3.4, without the trailing dot).
/// Labels are not held to DNS's 63 bytes: names that only a SOCKS proxy
/// resolves are longer (yggstack's `<publickey>.pk.ygg` has a 64-digit
/// label), and the system resolver refuses what DNS cannot carry anyway.
const MAX_NAME: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    Empty,
    NotUtf8,
    NoPort(String),
    BadPort(String),
    BadHost(String),
    BadToken(String),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Empty => write!(f, "empty address"),
            AddrError::NotUtf8 => write!(f, "address is not valid UTF-8"),
            AddrError::NoPort(a) => write!(f, "address {a:?} has no port (expected HOST:PORT)"),
            AddrError::BadPort(p) => write!(f, "bad port {p:?} (expected 1-65535)"),
            AddrError::BadHost(h) => write!(f, "bad host {h:?}"),
            AddrError::BadToken(t) => write!(
                f,
                "bad token {t:?} (expected letters, digits, '.', '_' or '-', not starting with '.')"
            ),
        }
    }
}

impl std::error::Error for AddrError {}

/// Decode `%XX` escapes. git-annex percent-encodes the address it passes
/// (`a%20b`, `fe80::1%25eth0:5000`) while git passes it raw
/// (doc/git-annex-contract.md, "Percent-encoding"), so
/// a `%` that is not followed by two hex digits is kept as it is.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(hi), Some(lo)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode an address as it arrives on our command line.
pub fn decode_arg(raw: &[u8]) -> Result<String, AddrError> {
    let bytes = percent_decode(raw);
    let text = String::from_utf8(bytes).map_err(|_| AddrError::NotUtf8)?;
    if text.is_empty() {
        return Err(AddrError::Empty);
    }
    Ok(text)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    V4(Ipv4Addr),
    /// An IPv6 address with its zone (`fe80::1%eth0`), when it has one.
    V6(Ipv6Addr, Option<String>),
    /// A DNS name, resolved at connect time (or by a SOCKS proxy).
    Name(String),
}

impl Host {
    pub fn parse(s: &str) -> Result<Host, AddrError> {
        let bad = || AddrError::BadHost(s.to_string());
        if s.is_empty() {
            return Err(bad());
        }
        if s.contains(':') {
            let (ip, zone) = match s.split_once('%') {
                Some((ip, zone)) if valid_zone(zone) => (ip, Some(zone.to_string())),
                Some(_) => return Err(bad()),
                None => (s, None),
            };
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
            return Ok(Host::V6(ip, zone));
        }
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(Host::V4(ip));
        }
        if valid_name(s) {
            Ok(Host::Name(s.to_string()))
        } else {
            Err(bad())
        }
    }

    pub fn from_ip(ip: IpAddr) -> Host {
        match ip {
            IpAddr::V4(v4) => Host::V4(v4),
            IpAddr::V6(v6) => Host::V6(v6, None),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::V4(ip) => write!(f, "{ip}"),
            Host::V6(ip, None) => write!(f, "{ip}"),
            Host::V6(ip, Some(zone)) => write!(f, "{ip}%{zone}"),
            Host::Name(name) => write!(f, "{name}"),
        }
    }
}

/// A letter-digit-hyphen name, plus `_` (seen in real host names) and a
/// trailing dot. Anything else (spaces, slashes, shell syntax) is refused
/// here rather than handed to the resolver.
fn valid_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An interface name or number, as in `fe80::1%eth0`.
fn valid_zone(s: &str) -> bool {
    !s.is_empty()
        && s.len() < libc::IFNAMSIZ
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// `HOST:PORT`, the address form of the tcp and socks netnames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl HostPort {
    /// Parse `HOST:PORT`, `[IPV6]:PORT` or unbracketed `IPV6:PORT`.
    pub fn parse(s: &str) -> Result<HostPort, AddrError> {
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| AddrError::BadHost(s.to_string()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| AddrError::NoPort(s.to_string()))?;
            let host = Host::parse(inner)?;
            if !matches!(host, Host::V6(..)) {
                return Err(AddrError::BadHost(inner.to_string()));
            }
            return Ok(HostPort {
                host,
                port: parse_port(port)?,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| AddrError::NoPort(s.to_string()))?;
        Ok(HostPort {
            host: Host::parse(host)?,
            port: parse_port(port)?,
        })
    }
}

impl fmt::Display for HostPort {
    /// Never bracketed: this text goes into git-annex's addresses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A decimal port, 1 to 65535. Port 0 means "any" to the kernel, which is
/// never what a peer's address means.
pub fn parse_port(s: &str) -> Result<u16, AddrError> {
    let bad = || AddrError::BadPort(s.to_string());
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// A unix-sockets token: a file name in the shared socket directory, so no
/// `/`, and no leading `.` (no `..`, no hidden files).
pub fn parse_token(s: &str) -> Result<&str, AddrError> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s)
    } else {
        Err(AddrError::BadToken(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> Result<HostPort, AddrError> {
        HostPort::parse(s)
    }

    #[test]
    fn percent_decoding_decodes_escapes_and_keeps_stray_percents() {
        assert_eq!(percent_decode(b"a%20b"), b"a b");
        assert_eq!(percent_decode(b"fe80::1%25eth0:5000"), b"fe80::1%eth0:5000");
        assert_eq!(percent_decode(b"fe80::1%eth0:5000"), b"fe80::1%eth0:5000");
        assert_eq!(percent_decode(b"%"), b"%");
        assert_eq!(percent_decode(b"ab%"), b"ab%");
        assert_eq!(percent_decode(b"ab%4"), b"ab%4");
        assert_eq!(percent_decode(b"%4g"), b"%4g");
        assert_eq!(percent_decode(b"%3a%3A"), b"::");
        assert_eq!(percent_decode(b"%%41"), b"%A");
    }

    #[test]
    fn decode_arg_refuses_empty_and_invalid_utf8() {
        assert_eq!(decode_arg(b""), Err(AddrError::Empty));
        assert_eq!(decode_arg(b"%ff:1"), Err(AddrError::NotUtf8));
        assert_eq!(decode_arg(b"h%3A1").as_deref(), Ok("h:1"));
    }

    #[test]
    fn ipv4() {
        let a = hp("10.0.0.2:5599").unwrap();
        assert_eq!(a.host, Host::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(a.port, 5599);
        assert_eq!(a.to_string(), "10.0.0.2:5599");
    }

    #[test]
    fn bare_ipv6_takes_the_port_after_the_last_colon() {
        let a = hp("200:abcd::1:5000").unwrap();
        assert_eq!(a.host, Host::V6("200:abcd::1".parse().unwrap(), None));
        assert_eq!(a.port, 5000);
        assert_eq!(
            hp("::1:5599").unwrap().host,
            Host::V6(Ipv6Addr::LOCALHOST, None)
        );
    }

    #[test]
    fn bracketed_ipv6_is_accepted_and_printed_bare() {
        let a = hp("[::1]:5599").unwrap();
        assert_eq!(a.host, Host::V6(Ipv6Addr::LOCALHOST, None));
        assert_eq!(a.to_string(), "::1:5599");
    }

    #[test]
    fn ipv6_zone() {
        let a = hp("fe80::1%eth0:5000").unwrap();
        assert_eq!(
            a.host,
            Host::V6("fe80::1".parse().unwrap(), Some("eth0".into()))
        );
        assert_eq!(a.to_string(), "fe80::1%eth0:5000");
        assert_eq!(hp("[fe80::1%2]:5000").unwrap().port, 5000);
        assert!(hp("fe80::1%:5000").is_err());
        assert!(hp("fe80::1%a/b:5000").is_err());
    }

    #[test]
    fn names() {
        let a = hp("nas.example.org:22").unwrap();
        assert_eq!(a.host, Host::Name("nas.example.org".into()));
        assert_eq!(
            hp("localhost:1").unwrap().host,
            Host::Name("localhost".into())
        );
        assert_eq!(
            hp("host_1.lan.:1").unwrap().host,
            Host::Name("host_1.lan.".into())
        );
        assert!(hp("abc.pk.ygg:12345").is_ok());
        // yggstack's names carry the 64-digit public key as one label.
        let ygg = format!("{}.pk.ygg:12345", "d4".repeat(32));
        assert_eq!(hp(&ygg).unwrap().to_string(), ygg);
    }

    #[test]
    fn malformed_addresses() {
        assert_eq!(hp(""), Err(AddrError::Empty));
        assert!(matches!(hp("host"), Err(AddrError::NoPort(_))));
        assert!(matches!(hp("host:"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp(":5599"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("host:0"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp("host:65536"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp("host:99999999999"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp("host:+80"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp("host:-1"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp("host: 80"), Err(AddrError::BadPort(_))));
        assert!(matches!(hp("a b:80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("$(reboot):80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("a..b:80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("-a:80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("1:2:3:80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("[::1]"), Err(AddrError::NoPort(_))));
        assert!(matches!(hp("[::1]80"), Err(AddrError::NoPort(_))));
        assert!(matches!(hp("[::1:80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("[10.0.0.1]:80"), Err(AddrError::BadHost(_))));
        assert!(matches!(hp("[name]:80"), Err(AddrError::BadHost(_))));
        let long = format!("{}:80", "a".repeat(254));
        assert!(matches!(hp(&long), Err(AddrError::BadHost(_))));
        let longname = format!("{}:80", ["abc"; 64].join("."));
        assert!(matches!(hp(&longname), Err(AddrError::BadHost(_))));
    }

    #[test]
    fn ports_at_the_edges() {
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("00080"), Ok(80));
        assert!(parse_port("000080").is_err());
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token("1700000000"), Ok("1700000000"));
        assert_eq!(parse_token("a-b_c.d"), Ok("a-b_c.d"));
        assert!(parse_token("").is_err());
        assert!(parse_token("..").is_err());
        assert!(parse_token(".hidden").is_err());
        assert!(parse_token("a/b").is_err());
        assert!(parse_token("a b").is_err());
    }
}
