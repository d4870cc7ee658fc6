//! Tor control-port replies as a hostile or broken control port sends
//! them: any bytes. The reply parser never panics, never takes more bytes
//! than it was given, and the parsers of each command's reply never panic;
//! every error is one line.
#![no_main]

use p2p_annex::torcontrol;

use libfuzzer_sys::fuzz_target;

fn one_line<T>(got: Result<T, torcontrol::ProtoError>) {
    if let Err(e) = got {
        assert!(!e.to_string().contains('\n'));
    }
}

fuzz_target!(|data: &[u8]| {
    match torcontrol::parse_reply(data) {
        Ok(Some((reply, used))) => {
            assert!(used <= data.len() && used > 0);
            one_line(reply.ok().map(|_| ()));
            one_line(torcontrol::parse_protocolinfo(&reply));
            one_line(torcontrol::parse_authchallenge(&reply));
            one_line(torcontrol::parse_add_onion(&reply));
            one_line(torcontrol::parse_getinfo(&reply, "onions/current"));
        }
        Ok(None) => {}
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        one_line(torcontrol::keywords(text));
        one_line(torcontrol::Key::parse(text));
    }
});
