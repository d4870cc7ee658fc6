//! The connecting side: pair with one of the listener's waiting
//! wormholes, then open the stream through it (doc/networks/fowl.md,
//! "What connect mode does per connection").

use std::ffi::OsStr;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::fowld::{Fowld, Next};
use super::{SERVICE, fowl_error, spawn_error};
use crate::error::Error;
use crate::fowlcode::{self, Address, SLOTS};
use crate::fowlproto::{self, Event};

/// Reaching the mailbox; fowld starts (Python imports) in about 0.5 s.
pub const WELCOME_WAIT: Duration = Duration::from_secs(20);
/// A waiting listener answers the key exchange within a second here;
/// nobody waiting means this slot is not there.
const PEER_WAIT: Duration = Duration::from_secs(6);
/// After the key exchange, the listener's forward is set up at once; no
/// `listening` means we paired with another connecting peer that picked
/// the same slot (doc/networks/fowl.md, "Why (b)'s tail is long").
const LISTENING_WAIT: Duration = Duration::from_secs(3);
/// fowl's first-connection race: how long a refused first stream is
/// retried, and how long we wait for fowld to say why a stream ended.
const RACE_RETRY_FOR: Duration = Duration::from_secs(3);
const LOST_WAIT: Duration = Duration::from_secs(1);
/// How long a stream opened without data is watched for that refusal.
const QUIET_WAIT: Duration = Duration::from_millis(500);

/// A wormhole paired with a listener's slot, its forward listening on
/// loopback.
pub struct Paired {
    pub fowld: Fowld,
    pub port: u16,
}

/// Why one slot did not pair.
enum Miss {
    /// The mailbox is not there: no other slot will do better.
    Mailbox(String),
    /// This slot: try the next.
    Slot(String),
}

/// Pair with one of the listener's slots: this window's in random order,
/// then the neighbouring window's (a clock a little off, a listener that
/// has not moved on yet), looking at the clock before each try: a try
/// that misses costs seconds, and the window may end meanwhile. At most
/// two windows' worth of tries; `until` bounds it all (`check`).
pub fn pair(program: &OsStr, address: &Address, until: Option<Instant>) -> Result<Paired, Error> {
    let mut last = String::new();
    let mut tried = Vec::new();
    while tried.len() < 2 * usize::from(SLOTS) {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some((window, slot)) = pick(now, super::window_len(), &tried, crate::sys::random_u64())
        else {
            break;
        };
        tried.push((window, slot));
        let fowld = Fowld::spawn(program, &address.mailbox).map_err(|e| spawn_error(program, e))?;
        match attempt(fowld, &address.code(window, slot), until) {
            Ok(paired) => return Ok(paired),
            Err(Miss::Mailbox(why)) => return Err(fowl_error(address, why)),
            Err(Miss::Slot(why)) => last = why,
        }
    }
    Err(fowl_error(
        address,
        format!(
            "no listener answered ({} waiting wormholes tried; last: {last}); check that \
             the peer's listener runs (p2p-annex check there) and uses this mailbox",
            tried.len()
        ),
    ))
}

/// The next (window, slot) to try at `now`, windows being `len` seconds:
/// an untried slot of the current window, picked with `random`, else one
/// of the nearest other window (the previous one in the first half of a
/// window, the next in the second).
fn pick(now: u64, len: u64, tried: &[(u64, u8)], random: u64) -> Option<(u64, u8)> {
    let window = fowlcode::window_at(now, len);
    let neighbour = if now % len.max(1) < len / 2 {
        window.saturating_sub(1)
    } else {
        window + 1
    };
    [window, neighbour].into_iter().find_map(|w| {
        let left: Vec<u8> = (0..SLOTS).filter(|s| !tried.contains(&(w, *s))).collect();
        let i = usize::try_from(random % left.len().max(1) as u64).unwrap_or(0);
        left.get(i).map(|&s| (w, s))
    })
}

fn attempt(mut fowld: Fowld, code: &str, until: Option<Instant>) -> Result<Paired, Miss> {
    let cap = |d: Duration| {
        let at = Instant::now() + d;
        until.map_or(at, |u| u.min(at))
    };
    match fowld.wait_for(cap(WELCOME_WAIT), |e| *e == Event::Welcome) {
        Next::Event(Event::Welcome) => {}
        other => {
            fowld.close_in_background();
            return Err(Miss::Mailbox(mailbox_problem(other)));
        }
    }
    if !(fowld.send(&fowlproto::set_code(code)) && fowld.send(&fowlproto::local(SERVICE))) {
        fowld.close_in_background();
        return Err(Miss::Slot("fowld stopped reading its commands".into()));
    }
    let miss = match fowld.wait_for(cap(PEER_WAIT), |e| *e == Event::PeerConnected) {
        Next::Event(Event::PeerConnected) => {
            match fowld.wait_for(cap(LISTENING_WAIT), |e| {
                matches!(e, Event::Listening { .. } | Event::ListeningFailed { .. })
            }) {
                Next::Event(Event::Listening { port }) => return Ok(Paired { fowld, port }),
                Next::Event(Event::ListeningFailed { reason }) => {
                    format!("fowld could not listen on loopback: {reason}")
                }
                Next::Timeout => "paired with another connecting peer".into(),
                other => slot_problem(other),
            }
        }
        Next::Timeout => "nobody waiting".into(),
        other => slot_problem(other),
    };
    fowld.close_in_background();
    Err(Miss::Slot(miss))
}

fn mailbox_problem(next: Next) -> String {
    match next {
        Next::Timeout => format!(
            "the mailbox did not answer within {} s",
            WELCOME_WAIT.as_secs()
        ),
        Next::Gone => "fowld exited before it reached the mailbox".into(),
        Next::Event(Event::Closed { .. }) => "cannot reach the mailbox".into(),
        Next::Event(Event::Error { message }) => format!("cannot reach the mailbox: {message}"),
        Next::Event(e) => format!("unexpected {e:?} from fowld"),
    }
}

fn slot_problem(next: Next) -> String {
    match next {
        Next::Event(Event::Closed { result }) if result.contains("crowded") => {
            "crowded (another peer took it)".into()
        }
        Next::Event(Event::Closed { result }) if result.contains("WrongPassword") => {
            "wrong code (a listener with another secret?)".into()
        }
        Next::Event(Event::Closed { result }) => format!("wormhole closed: {result}"),
        Next::Event(Event::Error { message }) => format!("fowld: {message}"),
        Next::Gone => "fowld exited".into(),
        Next::Timeout => "timed out".into(),
        Next::Event(e) => format!("unexpected {e:?} from fowld"),
    }
}

/// Open the stream to the peer's git-annex with `first`, the first bytes
/// git-annex wrote (it speaks first: AUTH). fowl 26.8.0 may tell us
/// `listening` before the far side accepts streams; such a stream is
/// refused before any byte reaches git-annex, so it is opened again and
/// `first` sent again (doc/networks/fowl.md, "A first-connection race").
/// Returns the stream once the peer answered, or ended it.
pub fn open_stream(paired: &Paired, first: &[u8]) -> Result<TcpStream, Error> {
    let started = Instant::now();
    loop {
        let mut stream = loopback(paired.port)?;
        stream
            .write_all(first)
            .map_err(|e| Error::Relay(io::Error::new(e.kind(), format!("fowld: {e}"))))?;
        match first_answer(&stream, &paired.fowld)? {
            Answer::Data => return Ok(stream),
            Answer::Refused if started.elapsed() < RACE_RETRY_FOR => continue,
            // Refused for too long, or an end without a reason: hand it to
            // the relay, which sees the end and reports it.
            Answer::Refused | Answer::Ended => return Ok(stream),
        }
    }
}

/// `open_stream` for a caller that speaks later (`check`): fowl refuses a
/// racing stream right after it opens, whatever was sent, so a stream not
/// refused within `QUIET_WAIT` is taken.
pub fn open_stream_quietly(paired: &Paired) -> Result<TcpStream, Error> {
    let started = Instant::now();
    loop {
        let stream = loopback(paired.port)?;
        let until = Instant::now() + QUIET_WAIT;
        let refused = loop {
            match paired.fowld.next(until) {
                Next::Event(Event::OutgoingLost { reason }) if reason.contains("policy") => {
                    break true;
                }
                Next::Event(_) => {}
                Next::Timeout | Next::Gone => break false,
            }
        };
        if !refused || started.elapsed() >= RACE_RETRY_FOR {
            return Ok(stream);
        }
    }
}

enum Answer {
    Data,
    Refused,
    Ended,
}

fn first_answer(stream: &TcpStream, fowld: &Fowld) -> Result<Answer, Error> {
    let mut refused = false;
    loop {
        // fowld's events, then the socket, every 50 ms.
        while let Some(next) = fowld.poll() {
            match next {
                Next::Event(Event::OutgoingLost { reason }) if reason.contains("policy") => {
                    refused = true
                }
                Next::Event(e) if e.is_final() => {
                    return Err(Error::Relay(io::Error::other(format!(
                        "the wormhole closed before the peer answered ({})",
                        describe_final(&e)
                    ))));
                }
                Next::Gone => {
                    return Err(Error::Relay(io::Error::other(
                        "fowld exited before the peer answered",
                    )));
                }
                _ => {}
            }
        }
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0);
        if ready == 0 {
            continue;
        }
        let mut byte = [0u8; 1];
        match stream.peek(&mut byte) {
            Ok(n) if n > 0 => return Ok(Answer::Data),
            _ if refused => return Ok(Answer::Refused),
            _ => {
                // Ended without data: was it the race? fowld says so just
                // after, if it was.
                let until = Instant::now() + LOST_WAIT;
                loop {
                    match fowld.next(until) {
                        Next::Event(Event::OutgoingLost { reason })
                            if reason.contains("policy") =>
                        {
                            return Ok(Answer::Refused);
                        }
                        Next::Event(_) => {}
                        Next::Timeout | Next::Gone => return Ok(Answer::Ended),
                    }
                }
            }
        }
    }
}

/// A final event, in words.
pub fn describe_final(e: &Event) -> String {
    match e {
        Event::Closed { result } => format!("wormhole closed: {result}"),
        Event::Error { message } => format!("fowld: {message}"),
        other => format!("{other:?}"),
    }
}

fn loopback(port: u16) -> Result<TcpStream, Error> {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|cause| Error::Connect {
        target: format!("fowld's forward on 127.0.0.1:{port}"),
        cause,
    })
}

/// Read git-annex's first bytes from stdin (unbuffered: the relay reads
/// the rest from the same descriptor); empty at EOF.
pub fn first_bytes() -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match nix::unistd::read(crate::sys::stdin(), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::io("cannot read standard input", e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_this_windows_slots_then_the_nearest_others() {
        let mut tried = Vec::new();
        // 100 s into window 10 of 600 s: window 10, then 9.
        while let Some(p) = pick(6100, 600, &tried, tried.len() as u64 * 7) {
            tried.push(p);
        }
        assert_eq!(tried.len(), 8);
        assert!(tried[..4].iter().all(|&(w, _)| w == 10));
        assert!(tried[4..].iter().all(|&(w, _)| w == 9));
        let mut slots: Vec<u8> = tried[..4].iter().map(|&(_, s)| s).collect();
        slots.sort();
        assert_eq!(slots, [0, 1, 2, 3]);
        // In the second half, the next window.
        assert_eq!(pick(6500, 600, &[], 0).map(|(w, _)| w), Some(10));
        let all10: Vec<(u64, u8)> = (0..SLOTS).map(|s| (10, s)).collect();
        assert_eq!(pick(6500, 600, &all10, 0).map(|(w, _)| w), Some(11));
    }

    #[test]
    fn a_window_that_ends_meanwhile_is_left_for_the_new_one() {
        // Two misses in window 10, then the clock passes into window 11:
        // its slots come first, then window 10's two untried ones.
        let tried = [(10, 0), (10, 1)];
        assert_eq!(pick(6605, 600, &tried, 0).map(|(w, _)| w), Some(11));
        let mut tried = tried.to_vec();
        tried.extend((0..SLOTS).map(|s| (11, s)));
        let p = pick(6605, 600, &tried, 0).unwrap();
        assert_eq!(p.0, 10);
        assert!(p.1 >= 2);
    }
}
