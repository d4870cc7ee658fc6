//! The `fowl` netname's addresses and the wormhole codes derived from
//! them, as pure functions (doc/networks/fowl.md, "The design chosen").
//!
//! An address is `<secret>@<mailbox URL>`: 32 random bytes in lowercase
//! hex, and the magic-wormhole mailbox both sides meet at. The listener
//! keeps `SLOTS` wormholes waiting; the code of each is derived from the
//! secret, the slot's number and a ten-minute window, so both sides know
//! it without talking, and a nameplate left claimed by a listener that
//! died is only in the way until the window ends.
//!
//! The secret is a credential: `Address` has no `Display` and its `Debug`
//! hides the secret; what may be shown is `shown()`.

use std::fmt;

use crate::sha256;

/// Waiting wormholes per listener. Each is a fowld process (~65 MB), and
/// a connecting peer tries them all before giving up; four serve four
/// connections being set up at once (doc/networks/fowl.md, "(b2)").
pub const SLOTS: u8 = 4;

/// How long a set of codes lasts, in seconds.
pub const WINDOW_SECS: u64 = 600;

/// Bytes of the secret.
pub const SECRET_LEN: usize = 32;

/// The form, for messages.
pub const FORM: &str = "<64 hex digits>@ws://HOST:PORT/PATH";

/// A parsed `fowl` address.
#[derive(Clone, PartialEq, Eq)]
pub struct Address {
    secret: [u8; SECRET_LEN],
    /// The mailbox server's URL, `ws://` or `wss://`.
    pub mailbox: String,
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fowl::Address({})", self.shown())
    }
}

impl Address {
    pub fn new(secret: [u8; SECRET_LEN], mailbox: &str) -> Result<Address, String> {
        check_mailbox(mailbox)?;
        Ok(Address {
            secret,
            mailbox: mailbox.to_string(),
        })
    }

    /// Parse an address. The error never quotes the secret.
    pub fn parse(text: &str) -> Result<Address, String> {
        let (secret, mailbox) = text
            .split_once('@')
            .ok_or_else(|| format!("not a fowl address (expected {FORM})"))?;
        let secret = unhex(secret).ok_or_else(|| {
            format!("the secret of a fowl address must be 64 hex digits (expected {FORM})")
        })?;
        Address::new(secret, mailbox)
    }

    /// The address, secret and all: only for address mode to print.
    pub fn line(&self) -> String {
        format!("{}@{}", hex(&self.secret), self.mailbox)
    }

    /// What logs and messages show: the mailbox and a fingerprint of the
    /// secret that tells two addresses apart without revealing either.
    pub fn shown(&self) -> String {
        format!("{}@{}", self.fingerprint(), self.mailbox)
    }

    /// Eight hex digits of sha256(secret).
    pub fn fingerprint(&self) -> String {
        hex(&sha256::digest(&[&self.secret])[..4])
    }

    /// The wormhole code of a slot in a window: a numeric nameplate and a
    /// 128-bit password, as `<nameplate>-<32 hex>`.
    pub fn code(&self, window: u64, slot: u8) -> String {
        let d = sha256::hmac(
            &self.secret,
            &[b"p2p-annex fowl code", &window.to_be_bytes(), &[slot]],
        );
        // Nameplates are decimal; seven digits keep them clear of the
        // small numbers a mailbox hands out itself.
        let nameplate = 1_000_000 + u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 9_000_000;
        format!("{nameplate}-{}", hex(&d[4..20]))
    }
}

/// An address as logs and messages may show it: a fowl address with its
/// secret replaced by a fingerprint, anything else unchanged.
pub fn shown(text: &str) -> String {
    match Address::parse(text) {
        Ok(a) => a.shown(),
        Err(_) => match text.split_once('@') {
            // Malformed, but it may still hold a secret.
            Some((_, mailbox)) => format!("…@{mailbox}"),
            None => text.to_string(),
        },
    }
}

/// The secret part of a fowl address, as written, for redaction.
pub fn secret_text(text: &str) -> Option<&str> {
    let (secret, _) = text.split_once('@')?;
    unhex(secret).map(|_| secret)
}

/// The window of a moment (seconds since the epoch), for windows of
/// `len` seconds (`WINDOW_SECS`).
pub fn window_at(unix_secs: u64, len: u64) -> u64 {
    unix_secs / len.max(1)
}

/// When a window ends (seconds since the epoch).
pub fn window_end(window: u64, len: u64) -> u64 {
    window.saturating_add(1).saturating_mul(len.max(1))
}

/// A mailbox URL fowld can use: `ws://` or `wss://`, a host, printable
/// ASCII without spaces (it is an argument of fowld's, never a shell's).
pub fn check_mailbox(url: &str) -> Result<(), String> {
    if !url.bytes().all(|b| b.is_ascii_graphic()) || url.len() > 400 {
        return Err("the mailbox URL must be printable ASCII without spaces".into());
    }
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| format!("mailbox {url:?} is not a ws:// or wss:// URL"))?;
    let host = rest.split(['/', ':']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("mailbox {url:?} has no host"));
    }
    Ok(())
}

/// The host of a mailbox URL, for short messages.
pub fn mailbox_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; SECRET_LEN]> {
    if s.len() != 2 * SECRET_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh secret's bytes from the system's random source.
pub fn secret_from(bytes: &[u8]) -> Option<[u8; SECRET_LEN]> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn addr() -> Address {
        Address::parse(&format!("{SECRET}@ws://127.0.0.1:4000/v1")).unwrap()
    }

    #[test]
    fn an_address_round_trips() {
        let a = addr();
        assert_eq!(a.mailbox, "ws://127.0.0.1:4000/v1");
        assert_eq!(a.line(), format!("{SECRET}@ws://127.0.0.1:4000/v1"));
        let upper = format!("{}@ws://127.0.0.1:4000/v1", SECRET.to_uppercase());
        assert_eq!(Address::parse(&upper).unwrap(), a);
    }

    #[test]
    fn the_secret_is_never_shown() {
        let a = addr();
        for text in [format!("{a:?}"), a.shown(), shown(&a.line())] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains(&SECRET[..16]), "{text}");
            assert!(text.contains("@ws://127.0.0.1:4000/v1"), "{text}");
        }
        assert_eq!(a.fingerprint().len(), 8);
        // A malformed address with something secret-looking is cut too.
        assert_eq!(shown("abc@ws://h/v1"), "…@ws://h/v1");
        assert_eq!(shown("10.0.0.1:22"), "10.0.0.1:22");
    }

    #[test]
    fn bad_addresses_say_why_without_quoting_the_secret() {
        for bad in [
            "",
            "nothing",
            &format!("{}@ws://h/v1", &SECRET[..62]),
            &format!("{}zz@ws://h/v1", &SECRET[..62]),
            &format!("{SECRET}@http://h/v1"),
            &format!("{SECRET}@ws:///v1"),
            &format!("{SECRET}@ws://h /v1"),
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(!e.contains(&SECRET[..20]), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn codes_differ_by_slot_window_and_secret_and_are_stable() {
        let a = addr();
        let c = a.code(100, 0);
        assert_eq!(c, a.code(100, 0));
        assert_ne!(c, a.code(100, 1));
        assert_ne!(c, a.code(101, 0));
        let mut other = a.clone();
        other.secret[0] ^= 1;
        assert_ne!(c, other.code(100, 0));
        let (nameplate, password) = c.split_once('-').unwrap();
        assert_eq!(nameplate.len(), 7);
        assert!(nameplate.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(password.len(), 32);
        // Pinned (computed independently with Python's hmac): the
        // connecting side and the listener must agree across versions.
        assert_eq!(c, "4925571-e93fd154c1d00caeacc0633bcad0918d");
    }

    #[test]
    fn windows() {
        assert_eq!(window_at(0, WINDOW_SECS), 0);
        assert_eq!(window_at(599, WINDOW_SECS), 0);
        assert_eq!(window_at(600, WINDOW_SECS), 1);
        assert_eq!(window_end(1, WINDOW_SECS), 1200);
        assert_eq!(window_end(u64::MAX, WINDOW_SECS), u64::MAX);
        assert_eq!(window_at(5, 0), 5);
    }

    #[test]
    fn mailbox_urls() {
        assert!(check_mailbox("ws://relay.magic-wormhole.io:4000/v1").is_ok());
        assert!(check_mailbox("wss://mailbox.example/v1").is_ok());
        assert!(check_mailbox("ws://[::1]:4000/v1").is_ok());
        assert_eq!(
            mailbox_host("ws://relay.magic-wormhole.io:4000/v1"),
            "relay.magic-wormhole.io:4000"
        );
    }
}
