//! `p2p-annex status`'s wire format as anything that binds a socket in
//! `.git/annex/p2p-annex/` may send it: any bytes. Parsing never panics;
//! the report made of what parses holds no control character but its own
//! newlines, in text and in JSON, and no secret we know, in any case.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/addr.rs"]
mod addr;
#[allow(dead_code)]
#[path = "../../src/auth.rs"]
mod auth;
#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../src/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../src/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../../src/status.rs"]
mod status;
#[allow(dead_code)]
#[path = "../../src/sys.rs"]
mod sys;
#[allow(dead_code)]
#[path = "../../src/text.rs"]
mod text;
#[allow(dead_code)]
#[path = "../../src/trust.rs"]
mod trust;
#[allow(dead_code)]
#[path = "../../src/net/unix.rs"]
mod unix;
mod net {
    pub(crate) use super::unix;
}
#[allow(dead_code)]
#[path = "../../src/serve/lock.rs"]
mod lock;
mod serve {
    pub(crate) use super::lock::{Probe, Record, probe};
}

use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"Zk4eW9xQm2Lr7TyB";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(listener) = status::parse_snapshot(&text) else {
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
