//! `p2p-annex status`'s wire format as anything that binds a socket in
//! `.git/annex/p2p-annex/` may send it: any bytes. Parsing never panics;
//! the report made of what parses holds no control character but its own
//! newlines, in text and in JSON, and no secret we know, in any case.
#![no_main]

use p2p_annex::control::Snapshot;
use p2p_annex::{auth, serve, status};

use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"Zk4eW9xQm2Lr7TyB";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(listener) = Snapshot::parse(&text) else {
        return;
    };
    let listeners = [listener];
    for json in [false, true] {
        let shown = status::render(&serve::Probe::None, &listeners, &[], &[], json);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        let redacted = auth::redact(&shown, &[SECRET.to_vec()]);
        assert!(
            !redacted.to_ascii_lowercase().contains("zk4ew9xqm2lr7tyb"),
            "{redacted:?}"
        );
    }
});
