//! SOCKS5 replies as a hostile proxy sends them: any bytes. Each parser
//! never panics, never asks for fewer bytes than it was given, and never
//! asks for more than a reply can hold (so a reader never runs past it).
#![no_main]

use p2p_annex::socks5;

use libfuzzer_sys::fuzz_target;
use socks5::Parse;

/// The longest reply: CONNECT with a 255-byte domain.
const LONGEST: usize = 4 + 1 + 255 + 2;

fn sane<T>(buf: &[u8], got: Result<Parse<T>, socks5::ProtoError>) {
    match got {
        Ok(Parse::Need(n)) => assert!(n > buf.len() && n <= LONGEST, "need {n} of {}", buf.len()),
        Ok(Parse::Done(_)) => {}
        // Every error has a message, and it is one line.
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
}

fuzz_target!(|data: &[u8]| {
    // Fed as a reader would: a growing prefix.
    for end in 0..=data.len().min(LONGEST + 1) {
        let buf = &data[..end];
        sane(buf, socks5::parse_method(buf, true));
        sane(buf, socks5::parse_method(buf, false));
        sane(buf, socks5::parse_auth(buf));
        sane(buf, socks5::parse_connect(buf));
    }
});
