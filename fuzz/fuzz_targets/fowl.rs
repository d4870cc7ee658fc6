//! fowld's output lines and fowl addresses as a broken or hostile fowld,
//! or a mistyped remote, gives them: any bytes. Parsing never panics; a
//! text kept from fowld is one short line; an address's error never quotes
//! its secret.
#![no_main]

use p2p_annex::{fowlcode, fowlproto};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let event = fowlproto::parse_line(data);
    let text = match &event {
        fowlproto::Event::ListeningFailed { reason }
        | fowlproto::Event::OutgoingLost { reason }
        | fowlproto::Event::IncomingLost { reason }
        | fowlproto::Event::RemoteConnectFailed { reason } => Some(reason),
        fowlproto::Event::Closed { result } => Some(result),
        fowlproto::Event::Error { message } => Some(message),
        _ => None,
    };
    if let Some(t) = text {
        assert!(!t.contains('\n') && t.chars().count() <= fowlproto::MAX_TEXT + 1);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        match fowlcode::Address::parse(s) {
            Ok(a) => {
                assert_eq!(fowlcode::Address::parse(&a.line()).as_ref(), Ok(&a));
                // The mailbox URL is the user's: it may hold anything.
                let secret = &a.line()[..64];
                assert!(a.mailbox.contains(secret) || !a.shown().contains(secret));
            }
            Err(e) => {
                assert!(!e.contains('\n'));
                // The mailbox part is quoted in its errors; the secret never.
                if let Some((secret, mailbox)) = s.split_once('@') {
                    if secret.len() >= 16 && !mailbox.contains(secret) {
                        assert!(!e.contains(secret));
                    }
                }
            }
        }
    }
});
