//! Addresses as git-annex and git pass them: any bytes. Parsing never
//! panics, and what parses prints back to itself, never bracketed.
#![no_main]

use p2p_annex::addr;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = addr::decode_arg(data) else {
        return;
    };
    if let Ok(hp) = addr::HostPort::parse(&text) {
        let printed = hp.to_string();
        assert!(!printed.contains('[') && !printed.contains(']'), "{printed}");
        assert_eq!(addr::HostPort::parse(&printed), Ok(hp.clone()), "{text:?} -> {printed:?}");
    }
    if let Ok(host) = addr::Host::parse(&text) {
        assert_eq!(addr::Host::parse(&host.to_string()), Ok(host));
    }
    if let Ok(token) = addr::parse_token(&text) {
        assert!(!token.contains('/') && !token.starts_with('.'));
    }
    let _ = addr::parse_port(&text);
});
