//! What comes from configuration: `git config -z` output, duration values
//! and allow-list entries. Parsing never panics; allow-list entries print
//! back to themselves.
#![no_main]

use p2p_annex::{allow, config};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (key, _value) in config::parse_records(data) {
        assert!(!key.contains('\0'));
    }
    let text = String::from_utf8_lossy(data);
    let _ = config::parse_duration(&text);
    if let Some(cidr) = allow::Cidr::parse(&text) {
        let printed = cidr.to_string();
        assert_eq!(allow::Cidr::parse(&printed), Some(cidr), "{text:?} -> {printed:?}");
    }
});
