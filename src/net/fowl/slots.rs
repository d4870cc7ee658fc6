//! The listening side: `SLOTS` wormholes kept waiting, each a fowld told
//! to forward the peer's streams to our loopback listener (doc/networks/
//! fowl.md, "What listen mode does").
//!
//! A slot's fowld that pairs with a peer serves that peer's one
//! connection on a thread of its own, and the slot is armed again at once
//! with a fresh fowld: the mailbox freed the nameplate after the key
//! exchange. When the codes' window ends, a waiting fowld is closed and
//! the slot armed with the new code (slot `i` a few seconds after slot
//! `i-1`, so some slot always waits). A slot that fails (no mailbox, a
//! nameplate still claimed by a fowld that died) is armed again after a
//! back-off, and says so in the log now and then, never with its code.

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::dial::{WELCOME_WAIT, describe_final};
use super::fowld::{self, Fowld, Next};
use super::{SERVICE, watch};
use crate::error::Error;
use crate::fowlcode::{self, Address, SLOTS};
use crate::fowlproto::{self, Event};
use crate::log::Log;

/// Back-off after a slot failed: from 1 s, doubling, to 60 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How far apart slots move to a new window.
const STAGGER: Duration = Duration::from_secs(3);
/// After the key exchange, the peer opens its stream at once; none means
/// it paired by mistake (two peers on one slot) or went away.
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// Start the slots' threads; they run as long as the process.
pub fn start(program: OsString, address: Address, port: u16, log: Arc<Log>) -> Result<(), Error> {
    log.line(format_args!(
        "keeping {SLOTS} wormholes waiting at {} (fowld: {})",
        address.shown(),
        program.to_string_lossy()
    ));
    let slot = Arc::new(Slot {
        program,
        address,
        port,
        log,
    });
    for i in 0..SLOTS {
        let slot = Arc::clone(&slot);
        thread::Builder::new()
            .name(format!("fowl-slot-{i}"))
            .spawn(move || slot.run(i))
            .map_err(|e| Error::io("cannot start a thread", e))?;
    }
    Ok(())
}

struct Slot {
    program: OsString,
    address: Address,
    port: u16,
    log: Arc<Log>,
}

/// How one arming of a slot ended.
enum Armed {
    /// A peer paired: arm again at once.
    Paired,
    /// The window ended: arm with the new code.
    WindowOver,
    /// Something failed: arm again after the back-off.
    Failed(String),
}

impl Slot {
    fn run(&self, i: u8) {
        let mut retry = RETRY_FIRST;
        let mut failures: u32 = 0;
        let mut last_logged = String::new();
        while !fowld::stopping() {
            match self.arm(i) {
                Armed::Paired | Armed::WindowOver => {
                    if failures > 0 {
                        self.log.line(format_args!("slot {i} is waiting again"));
                    }
                    retry = RETRY_FIRST;
                    failures = 0;
                    last_logged.clear();
                }
                Armed::Failed(_) if fowld::stopping() => return,
                Armed::Failed(why) => {
                    failures += 1;
                    // Logged when the reason changes, then at the 8th,
                    // 16th, 32nd… failure: a mailbox that is down for a
                    // day leaves a few lines, not thousands.
                    if why != last_logged || (failures >= 8 && failures.is_power_of_two()) {
                        self.log.line(format_args!(
                            "slot {i}: {why} (try {failures}, next in {} s)",
                            retry.as_secs()
                        ));
                        last_logged = why;
                    }
                    thread::sleep(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Arm slot `i` once: a fresh fowld waiting on this window's code.
    fn arm(&self, i: u8) -> Armed {
        let now = unix_now();
        let len = super::window_len();
        let window = fowlcode::window_at(now, len);
        let ends = fowlcode::window_end(window, len).saturating_sub(now);
        let until = Instant::now() + Duration::from_secs(ends) + STAGGER * u32::from(i);
        let mut fowld = match Fowld::spawn(&self.program, &self.address.mailbox) {
            Ok(f) => f,
            Err(e) => {
                return Armed::Failed(format!("cannot run fowld: {}", crate::error::describe(&e)));
            }
        };
        match fowld.wait_for(Instant::now() + WELCOME_WAIT, |e| *e == Event::Welcome) {
            Next::Event(Event::Welcome) => {}
            Next::Timeout => {
                fowld.close_in_background();
                return Armed::Failed("the mailbox did not answer".into());
            }
            Next::Gone => {
                return Armed::Failed("fowld exited before it reached the mailbox".into());
            }
            Next::Event(e) => {
                fowld.close_in_background();
                return Armed::Failed(format!("cannot reach the mailbox ({})", describe_final(&e)));
            }
        }
        if !(fowld.send(&fowlproto::set_code(&self.address.code(window, i)))
            && fowld.send(&fowlproto::remote(SERVICE, self.port)))
        {
            return Armed::Failed("fowld stopped reading its commands".into());
        }
        match fowld.wait_for(until, |e| *e == Event::PeerConnected) {
            Next::Event(Event::PeerConnected) => {
                let log = Arc::clone(&self.log);
                let spawned = thread::Builder::new()
                    .name(format!("fowl-serve-{i}"))
                    .spawn(move || serve_one(fowld, &log, i));
                match spawned {
                    Ok(_) => Armed::Paired,
                    Err(e) => Armed::Failed(format!("cannot start a thread: {e}")),
                }
            }
            Next::Timeout => {
                fowld.close();
                Armed::WindowOver
            }
            Next::Gone => Armed::Failed("fowld exited".into()),
            Next::Event(e) => {
                fowld.close_in_background();
                let why = match &e {
                    Event::Closed { result } if result.contains("crowded") => {
                        "its nameplate is taken (a listener of this address that died? \
                         it is freed by the next window)"
                            .into()
                    }
                    Event::Closed { result } if result.contains("WrongPassword") => {
                        "a peer came with a wrong code".into()
                    }
                    other => describe_final(other),
                };
                Armed::Failed(why)
            }
        }
    }
}

/// One paired wormhole: its peer's stream comes to our listener (which
/// relays it to git-annex); watch it until it ends, then close the
/// wormhole.
fn serve_one(mut fowld: Fowld, log: &Log, i: u8) {
    match fowld.wait_for(Instant::now() + STREAM_WAIT, |e| {
        *e == Event::IncomingConnection
    }) {
        Next::Event(Event::IncomingConnection) => {}
        Next::Timeout => {
            log.line(format_args!(
                "slot {i}: the peer paired but opened no stream within {} s",
                STREAM_WAIT.as_secs()
            ));
            fowld.close();
            return;
        }
        _ => {
            fowld.close();
            return;
        }
    }
    // The listener's relay of this stream has the idle limit; closing
    // fowld ends its connection to our listener, and so the relay.
    if let Err(why) = watch(&mut fowld, None, None, &AtomicBool::new(false)) {
        log.line(format_args!("slot {i}: {why}"));
    }
    fowld.close();
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
