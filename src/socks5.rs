//! The SOCKS5 client protocol (RFC 1928, with RFC 1929 username/password
//! authentication) as pure functions on byte slices: build what we send,
//! parse what the proxy answers. No I/O here; `net::socks` moves the bytes.
//!
//! Replies are parsed incrementally: a parser given the bytes read so far
//! says either how many bytes it needs in total (`Parse::Need`), never more
//! than the reply holds, or what the reply was. The caller reads exactly
//! that much, so not one byte of the peer's own data that may follow the
//! reply is taken from the socket.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The protocol version byte of every SOCKS5 message (RFC 1928 section 3).
pub const VERSION: u8 = 0x05;
/// The version byte of the username/password subnegotiation (RFC 1929 section 2).
pub const AUTH_VERSION: u8 = 0x01;

/// Authentication methods (RFC 1928 section 3).
pub const METHOD_NO_AUTH: u8 = 0x00;
pub const METHOD_USERPASS: u8 = 0x02;
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;

/// The CONNECT command (RFC 1928 section 4).
pub const CMD_CONNECT: u8 = 0x01;

/// Address types (RFC 1928 section 5).
pub const ATYP_IPV4: u8 = 0x01;
pub const ATYP_DOMAIN: u8 = 0x03;
pub const ATYP_IPV6: u8 = 0x04;

/// Reply codes (RFC 1928 section 6).
pub const REP_SUCCEEDED: u8 = 0x00;
pub const REP_GENERAL_FAILURE: u8 = 0x01;
pub const REP_NOT_ALLOWED: u8 = 0x02;
pub const REP_NETWORK_UNREACHABLE: u8 = 0x03;
pub const REP_HOST_UNREACHABLE: u8 = 0x04;
pub const REP_CONNECTION_REFUSED: u8 = 0x05;
pub const REP_TTL_EXPIRED: u8 = 0x06;
pub const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
pub const REP_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

/// A domain name travels with a one-byte length (RFC 1928 section 5), as do
/// the user name and the password (RFC 1929 section 2).
pub const MAX_FIELD: usize = 255;

/// The longest reply: VER REP RSV ATYP, a length byte, a 255-byte domain
/// and the port.
pub const MAX_REPLY: usize = 4 + 1 + MAX_FIELD + 2;

/// The name of a reply code, as the RFC words it. Tor answers onion-service
/// failures with its own codes when its SocksPort has `ExtendedErrors`
/// (Tor proposal 304); they are named too.
pub fn reply_name(code: u8) -> &'static str {
    match code {
        REP_SUCCEEDED => "succeeded",
        REP_GENERAL_FAILURE => "general SOCKS server failure",
        REP_NOT_ALLOWED => "connection not allowed by ruleset",
        REP_NETWORK_UNREACHABLE => "network unreachable",
        REP_HOST_UNREACHABLE => "host unreachable",
        REP_CONNECTION_REFUSED => "connection refused",
        REP_TTL_EXPIRED => "TTL expired",
        REP_COMMAND_NOT_SUPPORTED => "command not supported",
        REP_ADDRESS_TYPE_NOT_SUPPORTED => "address type not supported",
        0xf0 => "onion service descriptor can not be found",
        0xf1 => "onion service descriptor is invalid",
        0xf2 => "onion service introduction failed",
        0xf3 => "onion service rendezvous failed",
        0xf4 => "onion service missing client authorization",
        0xf5 => "onion service wrong client authorization",
        0xf6 => "onion service invalid address",
        0xf7 => "onion service introduction timed out",
        _ => "unassigned reply code",
    }
}

/// Where the proxy is to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    /// A name the proxy resolves (`<key>.pk.ygg`, `<x>.onion`): we never
    /// resolve it ourselves, it means nothing to our resolver.
    Domain(&'a str),
}

/// The step of the handshake a reply answers, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Method,
    Auth,
    Connect,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Method => "method selection",
            Stage::Auth => "authentication",
            Stage::Connect => "connect",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// A field we would send does not fit its one-byte length, or is empty.
    FieldLength { what: &'static str, len: usize },
    /// The reply's version byte is not the one this stage expects.
    BadVersion { stage: Stage, got: u8, want: u8 },
    /// The proxy accepts none of the methods we offered.
    NoAcceptableMethod { offered_auth: bool },
    /// The proxy chose a method we did not offer.
    UnofferedMethod(u8),
    /// RFC 1929: a non-zero status is a failure.
    AuthFailed(u8),
    /// The proxy could not or would not connect (REP is not 0).
    Refused(u8),
    /// The reply's bound address has a type RFC 1928 does not define.
    BadAddressType(u8),
    /// The reply's bound address is a domain of length 0.
    EmptyDomain,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::FieldLength { what, len } => write!(
                f,
                "{what} is {len} bytes long; SOCKS5 allows 1 to {MAX_FIELD}"
            ),
            ProtoError::BadVersion { stage, got, want } => write!(
                f,
                "bad version {got} in the {stage} reply (expected {want}; is this a SOCKS5 proxy?)"
            ),
            ProtoError::NoAcceptableMethod { offered_auth } => write!(
                f,
                "the proxy accepts none of the offered authentication methods ({})",
                if *offered_auth {
                    "none, username/password"
                } else {
                    "none"
                }
            ),
            ProtoError::UnofferedMethod(m) => write!(
                f,
                "the proxy chose authentication method {m}, which was not offered"
            ),
            ProtoError::AuthFailed(status) => write!(
                f,
                "username/password authentication failed (status {status})"
            ),
            ProtoError::Refused(code) => write!(f, "{} (reply {code})", reply_name(*code)),
            ProtoError::BadAddressType(t) => {
                write!(f, "malformed connect reply: unknown address type {t}")
            }
            ProtoError::EmptyDomain => {
                write!(f, "malformed connect reply: empty bound domain name")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// What a parser makes of the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse<T> {
    /// The reply is this many bytes long at least; read up to there.
    Need(usize),
    Done(T),
}

/// The method-selection request: we offer "no authentication", and
/// username/password too when we have credentials; the proxy picks.
pub fn greeting(with_auth: bool) -> Vec<u8> {
    if with_auth {
        vec![VERSION, 2, METHOD_NO_AUTH, METHOD_USERPASS]
    } else {
        vec![VERSION, 1, METHOD_NO_AUTH]
    }
}

/// The method the proxy chose: VER METHOD.
pub fn parse_method(buf: &[u8], offered_auth: bool) -> Result<Parse<u8>, ProtoError> {
    check_version(buf, Stage::Method, VERSION)?;
    let Some(&method) = buf.get(1) else {
        return Ok(Parse::Need(2));
    };
    match method {
        METHOD_NO_AUTH => Ok(Parse::Done(method)),
        METHOD_USERPASS if offered_auth => Ok(Parse::Done(method)),
        METHOD_NONE_ACCEPTABLE => Err(ProtoError::NoAcceptableMethod { offered_auth }),
        other => Err(ProtoError::UnofferedMethod(other)),
    }
}

/// The username/password request (RFC 1929 section 2):
/// VER ULEN UNAME PLEN PASSWD.
pub fn auth_request(user: &[u8], password: &[u8]) -> Result<Vec<u8>, ProtoError> {
    check_field("the proxy user name", user)?;
    check_field("the proxy password", password)?;
    let mut out = Vec::with_capacity(3 + user.len() + password.len());
    out.push(AUTH_VERSION);
    out.push(user.len() as u8); // within 1..=255, checked above
    out.extend_from_slice(user);
    out.push(password.len() as u8);
    out.extend_from_slice(password);
    Ok(out)
}

/// The proxy's verdict on our credentials: VER STATUS.
pub fn parse_auth(buf: &[u8]) -> Result<Parse<()>, ProtoError> {
    check_version(buf, Stage::Auth, AUTH_VERSION)?;
    match buf.get(1) {
        None => Ok(Parse::Need(2)),
        Some(0) => Ok(Parse::Done(())),
        Some(&status) => Err(ProtoError::AuthFailed(status)),
    }
}

/// The CONNECT request: VER CMD RSV ATYP DST.ADDR DST.PORT.
pub fn connect_request(dest: Dest<'_>, port: u16) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![VERSION, CMD_CONNECT, 0x00];
    match dest {
        Dest::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        Dest::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
        Dest::Domain(name) => {
            check_field("the host name", name.as_bytes())?;
            out.push(ATYP_DOMAIN);
            out.push(name.len() as u8); // within 1..=255, checked above
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    Ok(out)
}

/// The CONNECT reply: VER REP RSV ATYP BND.ADDR BND.PORT. The bound address
/// is where the proxy connected from; we have no use for it, but it must be
/// read to its end, since the peer's data follows it.
///
/// The reply code is judged as soon as its byte is in: a proxy that fails
/// may close the connection without sending the rest. RSV is not checked
/// (RFC 1928 only says it is reserved).
pub fn parse_connect(buf: &[u8]) -> Result<Parse<()>, ProtoError> {
    check_version(buf, Stage::Connect, VERSION)?;
    if let Some(&rep) = buf.get(1) {
        if rep != REP_SUCCEEDED {
            return Err(ProtoError::Refused(rep));
        }
    }
    let Some(&atyp) = buf.get(3) else {
        return Ok(Parse::Need(4));
    };
    let total = match atyp {
        ATYP_IPV4 => 4 + 4 + 2,
        ATYP_IPV6 => 4 + 16 + 2,
        ATYP_DOMAIN => match buf.get(4) {
            None => return Ok(Parse::Need(5)),
            Some(0) => return Err(ProtoError::EmptyDomain),
            Some(&len) => 4 + 1 + usize::from(len) + 2,
        },
        other => return Err(ProtoError::BadAddressType(other)),
    };
    if buf.len() < total {
        Ok(Parse::Need(total))
    } else {
        Ok(Parse::Done(()))
    }
}

/// Every reply starts with a version byte; it is judged as soon as it is
/// in, so a server that speaks something else is named at once.
fn check_version(buf: &[u8], stage: Stage, want: u8) -> Result<(), ProtoError> {
    match buf.first() {
        Some(&got) if got != want => Err(ProtoError::BadVersion { stage, got, want }),
        _ => Ok(()),
    }
}

fn check_field(what: &'static str, bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.is_empty() || bytes.len() > MAX_FIELD {
        return Err(ProtoError::FieldLength {
            what,
            len: bytes.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a reply to a parser one byte at a time, as a slow proxy would,
    /// and check it never asks past the reply's end.
    fn feed<T>(
        reply: &[u8],
        parse: impl Fn(&[u8]) -> Result<Parse<T>, ProtoError>,
    ) -> Result<(T, usize), ProtoError> {
        let mut have = 0;
        loop {
            match parse(&reply[..have])? {
                Parse::Done(v) => return Ok((v, have)),
                Parse::Need(n) => {
                    assert!(n > have, "asked for {n} bytes with {have} in hand");
                    assert!(n <= reply.len(), "asked for {n} bytes of a {}", reply.len());
                    have += 1;
                }
            }
        }
    }

    #[test]
    fn greetings() {
        assert_eq!(greeting(false), [5, 1, 0]);
        assert_eq!(greeting(true), [5, 2, 0, 2]);
    }

    #[test]
    fn method_choice() {
        assert_eq!(parse_method(&[], false), Ok(Parse::Need(2)));
        assert_eq!(parse_method(&[5], false), Ok(Parse::Need(2)));
        assert_eq!(parse_method(&[5, 0], false), Ok(Parse::Done(0)));
        assert_eq!(parse_method(&[5, 0], true), Ok(Parse::Done(0)));
        assert_eq!(parse_method(&[5, 2], true), Ok(Parse::Done(2)));
        assert_eq!(
            parse_method(&[5, 2], false),
            Err(ProtoError::UnofferedMethod(2))
        );
        assert_eq!(
            parse_method(&[5, 1], true),
            Err(ProtoError::UnofferedMethod(1))
        );
        assert_eq!(
            parse_method(&[5, 0xff], false),
            Err(ProtoError::NoAcceptableMethod {
                offered_auth: false
            })
        );
        // The version is judged on the first byte: an HTTP proxy's "HTTP/1.1".
        assert_eq!(
            parse_method(b"H", false),
            Err(ProtoError::BadVersion {
                stage: Stage::Method,
                got: b'H',
                want: 5
            })
        );
        assert_eq!(
            parse_method(&[4, 0], false).unwrap_err().to_string(),
            "bad version 4 in the method selection reply (expected 5; is this a SOCKS5 proxy?)"
        );
    }

    #[test]
    fn auth_requests() {
        assert_eq!(
            auth_request(b"alice", b"s3cret").unwrap(),
            b"\x01\x05alice\x06s3cret"
        );
        let max = [b'x'; 255];
        let req = auth_request(&max, &max).unwrap();
        assert_eq!(req.len(), 3 + 255 + 255);
        assert_eq!((req[1], req[257]), (255, 255));
        assert_eq!(
            auth_request(&[b'x'; 256], b"p").unwrap_err().to_string(),
            "the proxy user name is 256 bytes long; SOCKS5 allows 1 to 255"
        );
        assert_eq!(
            auth_request(b"u", &[b'x'; 300]).unwrap_err(),
            ProtoError::FieldLength {
                what: "the proxy password",
                len: 300
            }
        );
        assert!(auth_request(b"", b"p").is_err());
        assert!(auth_request(b"u", b"").is_err());
    }

    #[test]
    fn auth_replies() {
        assert_eq!(parse_auth(&[]), Ok(Parse::Need(2)));
        assert_eq!(parse_auth(&[1]), Ok(Parse::Need(2)));
        assert_eq!(parse_auth(&[1, 0]), Ok(Parse::Done(())));
        assert_eq!(parse_auth(&[1, 1]), Err(ProtoError::AuthFailed(1)));
        assert_eq!(parse_auth(&[1, 0xff]), Err(ProtoError::AuthFailed(255)));
        // Some servers wrongly answer with the SOCKS version: refused, clearly.
        assert_eq!(
            parse_auth(&[5, 0]).unwrap_err().to_string(),
            "bad version 5 in the authentication reply (expected 1; is this a SOCKS5 proxy?)"
        );
    }

    #[test]
    fn connect_requests() {
        assert_eq!(
            connect_request(Dest::V4(Ipv4Addr::new(10, 0, 0, 2)), 5599).unwrap(),
            [5, 1, 0, 1, 10, 0, 0, 2, 0x15, 0xdf]
        );
        let v6 = connect_request(Dest::V6("200:abcd::1".parse().unwrap()), 80).unwrap();
        assert_eq!(&v6[..4], [5, 1, 0, 4]);
        assert_eq!(&v6[4..6], [0x02, 0x00]);
        assert_eq!(&v6[18..], [0, 1, 0, 80]);
        assert_eq!(v6.len(), 4 + 16 + 2);
        assert_eq!(
            connect_request(Dest::Domain("abc.pk.ygg"), 12345).unwrap(),
            b"\x05\x01\x00\x03\x0aabc.pk.ygg\x30\x39"
        );
    }

    #[test]
    fn domains_of_1_to_255_bytes_and_no_more() {
        let name = "a".repeat(255);
        let req = connect_request(Dest::Domain(&name), 1).unwrap();
        assert_eq!(req[4], 255);
        assert_eq!(req.len(), 4 + 1 + 255 + 2);
        let long = "a".repeat(256);
        assert_eq!(
            connect_request(Dest::Domain(&long), 1)
                .unwrap_err()
                .to_string(),
            "the host name is 256 bytes long; SOCKS5 allows 1 to 255"
        );
        assert!(connect_request(Dest::Domain(""), 1).is_err());
    }

    #[test]
    fn connect_replies_of_every_address_type() {
        let v4 = [5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38];
        assert_eq!(feed(&v4, parse_connect), Ok(((), 10)));
        let mut v6 = vec![5, 0, 0, 4];
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(feed(&v6, parse_connect), Ok(((), 22)));
        let mut dom = vec![5, 0, 0, 3, 9];
        dom.extend_from_slice(b"localhost\x00\x50");
        assert_eq!(feed(&dom, parse_connect), Ok(((), 16)));
        // The longest reply there can be.
        let mut max = vec![5, 0, 0, 3, 255];
        max.extend_from_slice(&[b'z'; 255]);
        max.extend_from_slice(&[0, 1]);
        assert_eq!(max.len(), MAX_REPLY);
        assert_eq!(feed(&max, parse_connect), Ok(((), MAX_REPLY)));
    }

    #[test]
    fn connect_reply_needs_are_exact() {
        assert_eq!(parse_connect(&[]), Ok(Parse::Need(4)));
        assert_eq!(parse_connect(&[5, 0, 0]), Ok(Parse::Need(4)));
        assert_eq!(parse_connect(&[5, 0, 0, 1]), Ok(Parse::Need(10)));
        assert_eq!(parse_connect(&[5, 0, 0, 4]), Ok(Parse::Need(22)));
        assert_eq!(parse_connect(&[5, 0, 0, 3]), Ok(Parse::Need(5)));
        assert_eq!(parse_connect(&[5, 0, 0, 3, 1]), Ok(Parse::Need(8)));
        assert_eq!(parse_connect(&[5, 0, 0, 3, 255]), Ok(Parse::Need(262)));
    }

    #[test]
    fn every_reply_code_is_named() {
        let want = [
            (1, "general SOCKS server failure (reply 1)"),
            (2, "connection not allowed by ruleset (reply 2)"),
            (3, "network unreachable (reply 3)"),
            (4, "host unreachable (reply 4)"),
            (5, "connection refused (reply 5)"),
            (6, "TTL expired (reply 6)"),
            (7, "command not supported (reply 7)"),
            (8, "address type not supported (reply 8)"),
            (9, "unassigned reply code (reply 9)"),
            (
                0xf0,
                "onion service descriptor can not be found (reply 240)",
            ),
            (0xf6, "onion service invalid address (reply 246)"),
            (0xff, "unassigned reply code (reply 255)"),
        ];
        for (code, text) in want {
            // Judged on the second byte, before the rest arrives.
            let err = parse_connect(&[5, code]).unwrap_err();
            assert_eq!(err, ProtoError::Refused(code));
            assert_eq!(err.to_string(), text);
        }
        assert_eq!(reply_name(0), "succeeded");
    }

    #[test]
    fn malformed_connect_replies() {
        assert_eq!(
            parse_connect(&[4]),
            Err(ProtoError::BadVersion {
                stage: Stage::Connect,
                got: 4,
                want: 5
            })
        );
        assert_eq!(
            parse_connect(&[5, 0, 0, 2]).unwrap_err().to_string(),
            "malformed connect reply: unknown address type 2"
        );
        assert_eq!(
            parse_connect(&[5, 0, 0, 3, 0]),
            Err(ProtoError::EmptyDomain)
        );
        // A reserved byte that is not zero is tolerated.
        assert_eq!(parse_connect(&[5, 0, 7, 1]), Ok(Parse::Need(10)));
    }
}
