//! The relay: copies bytes both ways between two ends, one thread per
//! direction, each blocking in poll(2) on raw file descriptors.
//!
//! The rules are netcat's (`readwrite()` in OpenBSD's netcat.c), with the
//! half-close always on, because git-annex's peer must see our EOF:
//! - EOF on a source is passed on: shutdown(SHUT_WR) on a socket, close on
//!   stdout. The other direction keeps flowing.
//! - A sink that hangs up (POLLHUP/POLLERR, EPIPE) ends its direction; nothing
//!   can be delivered there any more, so the other direction only drains
//!   what is already readable and ends too. This is how we notice git-annex
//!   closing our stdout while the peer is silent
//!   (doc/git-annex-contract.md, "Closing").
//! - A read or poll error ends the whole relay: both directions stop and the
//!   error is returned.
//!
//! Each direction polls its source for input and its sink for hang-up, plus
//! a wake-up pipe through which the other direction tells it to drain or
//! abort. No byte is dropped or reordered: every batch taken from the source
//! is handed to the sink in order before the next poll. How a batch moves
//! (splice(2) or read/write) is mover.rs's business.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{Shutdown, shutdown};

use crate::mover::{Failure, Mover, Step};
use crate::sys;

/// Stack of the second direction's thread: it only runs `pump`.
const THREAD_STACK: usize = 64 * 1024;

/// One end of a relay.
pub enum End {
    /// A connected socket: read and written on one descriptor.
    Socket(OwnedFd),
    /// Our own stdin and stdout: pipes when git-annex runs us.
    Stdio,
}

impl End {
    fn reader(&self) -> BorrowedFd<'_> {
        match self {
            End::Socket(fd) => fd.as_fd(),
            End::Stdio => sys::stdin(),
        }
    }

    fn writer(&self) -> BorrowedFd<'_> {
        match self {
            End::Socket(fd) => fd.as_fd(),
            End::Stdio => sys::stdout(),
        }
    }

    /// Pass on an EOF: the far side of this end reads EOF after what we wrote.
    fn close_write(&self) {
        match self {
            End::Socket(fd) => socket_shutdown(fd, Shutdown::Write),
            End::Stdio => sys::retire_stdout(),
        }
    }

    /// Stop taking input from this end (its sink has gone away).
    fn close_read(&self) {
        if let End::Socket(fd) = self {
            socket_shutdown(fd, Shutdown::Read);
        }
    }

    /// Wake any thread blocked on this end; used when the relay fails.
    fn abort(&self) {
        if let End::Socket(fd) = self {
            socket_shutdown(fd, Shutdown::Both);
        }
    }
}

fn socket_shutdown(fd: &OwnedFd, how: Shutdown) {
    use std::os::fd::AsRawFd;
    // ENOTCONN only means the peer is already fully gone: nothing to do.
    let _ = shutdown(fd.as_raw_fd(), how);
}

/// What a finished relay did: bytes each way, and the error that ended it
/// early, if one did, with the end it came from.
#[derive(Debug, Default)]
pub struct Outcome {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub error: Option<io::Error>,
    /// Which end failed: `Some(true)` for `a`, `Some(false)` for `b`.
    pub failed_a: Option<bool>,
    /// Writing to `a` broke: it reset, timed out, or was shut down. Not an
    /// error of the relay (the reader went away), but the kernel reports
    /// why to only one of the two directions, or to none when a splice had
    /// moved bytes before it failed.
    pub broke_a: bool,
}

/// Bytes moved so far, readable while the relay runs (`p2p-annex status`).
#[derive(Debug, Default)]
pub struct Progress {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
}

/// Relay between `a` and `b` until both directions are done.
pub fn run(a: &End, b: &End) -> io::Result<Outcome> {
    run_counted(a, b, &Progress::default())
}

/// `run`, counting the bytes in `progress` as they go.
pub fn run_counted(a: &End, b: &End, progress: &Progress) -> io::Result<Outcome> {
    let link = Link::new()?;
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("relay".into())
            .stack_size(THREAD_STACK)
            .spawn_scoped(scope, || direction(b, a, &link, [a, b], &progress.b_to_a))?;
        // Each error comes with whether it came from the direction's
        // source; the a-to-b direction's source is `a`.
        let (err_ab, _) = direction(a, b, &link, [a, b], &progress.a_to_b);
        let (err_ba, broke_a) = other.join().unwrap_or_else(|_| {
            (
                Some((io::Error::other("relay thread panicked"), false)),
                false,
            )
        });
        let (error, failed_a) = match (err_ab, err_ba) {
            (Some((e, from_src)), _) => (Some(e), Some(from_src)),
            (None, Some((e, from_src))) => (Some(e), Some(!from_src)),
            (None, None) => (None, None),
        };
        Ok(Outcome {
            a_to_b: progress.a_to_b.load(Ordering::Relaxed),
            b_to_a: progress.b_to_a.load(Ordering::Relaxed),
            error,
            failed_a,
            broke_a,
        })
    })
}

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const ABORT: u8 = 2;

/// What one direction tells the other: a state, and a pipe that wakes it
/// from poll when the state changes.
struct Link {
    state: AtomicU8,
    wake_r: OwnedFd,
    wake_w: OwnedFd,
}

impl Link {
    fn new() -> io::Result<Link> {
        let (wake_r, wake_w) = sys::pipe()?;
        Ok(Link {
            state: AtomicU8::new(RUNNING),
            wake_r,
            wake_w,
        })
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Raise the state (never lower it: ABORT wins over DRAIN) and wake the
    /// other direction. The byte stays in the pipe, so every later poll
    /// sees it at once and rechecks the state.
    fn raise(&self, to: u8) {
        self.state.fetch_max(to, Ordering::SeqCst);
        let _ = nix::unistd::write(&self.wake_w, b"x");
    }
}

/// How a direction ended.
enum Ending {
    /// The source reached EOF (or drained), and the EOF was passed on.
    Done,
    /// The sink can take no more bytes; `true` when it broke (an error
    /// pending on it, or a write that failed) rather than hung up.
    SinkGone(bool),
    /// The other direction failed; this one stopped.
    Aborted,
}

/// Run one direction and tell the other how it ended. Counts the bytes
/// moved in `moved`; returns the error that ended the relay if this
/// direction failed, and whether its source (rather than its sink) failed;
/// and whether the sink broke.
fn direction(
    src: &End,
    dst: &End,
    link: &Link,
    ends: [&End; 2],
    moved: &AtomicU64,
) -> (Option<(io::Error, bool)>, bool) {
    match pump(src, dst, link, moved) {
        Ok(Ending::Done) | Ok(Ending::Aborted) => (None, false),
        Ok(Ending::SinkGone(broke)) => {
            src.close_read();
            link.raise(DRAIN);
            (None, broke)
        }
        Err((e, from_src)) => {
            link.raise(ABORT);
            // A thread blocked in write(2) does not see the wake-up pipe;
            // shutting the sockets down makes that write return.
            for end in ends {
                end.abort();
            }
            (Some((e, from_src)), false)
        }
    }
}

/// Errors say whether they came from the source (true) or the sink.
fn pump(src: &End, dst: &End, link: &Link, moved: &AtomicU64) -> Result<Ending, (io::Error, bool)> {
    let mut mover = Mover::choose(src.reader(), dst.writer());
    let gone = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
    loop {
        let state = link.state();
        if state == ABORT {
            return Ok(Ending::Aborted);
        }
        let draining = state == DRAIN;
        let mut fds = [
            PollFd::new(src.reader(), PollFlags::POLLIN),
            // No events asked: poll still reports POLLHUP/POLLERR, which is
            // how a peer that went away is noticed while we are idle.
            PollFd::new(dst.writer(), PollFlags::empty()),
            PollFd::new(link.wake_r.as_fd(), PollFlags::POLLIN),
        ];
        // While draining, take only what is readable right now.
        let (slots, timeout) = if draining {
            (&mut fds[..2], PollTimeout::ZERO)
        } else {
            (&mut fds[..], PollTimeout::NONE)
        };
        match poll(slots, timeout) {
            Ok(0) => {
                // Drained: everything the source had is delivered.
                dst.close_write();
                return Ok(Ending::Done);
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err((e.into(), true)),
        }
        let src_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let dst_ev = fds[1].revents().unwrap_or(PollFlags::empty());
        if src_ev.contains(PollFlags::POLLNVAL) || dst_ev.contains(PollFlags::POLLNVAL) {
            let from_src = src_ev.contains(PollFlags::POLLNVAL);
            return Err((io::Error::from_raw_os_error(libc::EBADF), from_src));
        }
        // Checked before the source: bytes read now could not be delivered.
        if dst_ev.intersects(gone) {
            return Ok(Ending::SinkGone(dst_ev.contains(PollFlags::POLLERR)));
        }
        // POLLHUP/POLLERR on the source: read anyway, the read tells EOF,
        // data still buffered, or the error.
        if src_ev.is_empty() {
            continue; // only the wake-up pipe: recheck the state
        }
        // One batch: every byte taken from the source reaches the sink
        // before the next poll, so nothing is held back when we stop.
        match mover.step(src.reader(), dst.writer()) {
            Ok(Step::Moved(n)) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Step::Again) => continue,
            Ok(Step::Eof) => {
                // EOF: pass it on; the other direction keeps going.
                dst.close_write();
                return Ok(Ending::Done);
            }
            // The reader went away: nobody wants these bytes any more.
            Err(Failure::Sink(Errno::EPIPE | Errno::ECONNRESET)) => {
                return Ok(Ending::SinkGone(true));
            }
            Err(Failure::Source(e)) => return Err((e.into(), true)),
            Err(Failure::Sink(e)) => return Err((e.into(), false)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules above, each on unix socket pairs: `a` and `b` are the
    //! relay's ends, `far_a` and `far_b` what a peer and git-annex hold.
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    /// The relay between two fresh socket pairs, run in a thread; the far
    /// ends, and where its outcome arrives.
    fn relay() -> (UnixStream, UnixStream, mpsc::Receiver<io::Result<Outcome>>) {
        let (a, far_a) = UnixStream::pair().unwrap();
        let (b, far_b) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (a, b) = (End::Socket(a.into()), End::Socket(b.into()));
            let _ = tx.send(run(&a, &b));
        });
        (far_a, far_b, rx)
    }

    fn outcome(rx: &mpsc::Receiver<io::Result<Outcome>>) -> Outcome {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the relay ended within 20 s")
            .expect("the relay ran")
    }

    #[test]
    fn eof_is_passed_on_and_the_other_direction_keeps_flowing() {
        let (mut far_a, mut far_b, rx) = relay();
        far_a.write_all(b"hello").unwrap();
        far_a.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        far_b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello", "a's bytes, then its EOF");
        // After a's EOF, b still reaches a.
        far_b.write_all(b"world, later").unwrap();
        far_b.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        far_a.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"world, later");
        let out = outcome(&rx);
        assert_eq!((out.a_to_b, out.b_to_a), (5, 12));
        assert!(out.error.is_none(), "{:?}", out.error);
    }

    #[test]
    fn a_sink_that_hangs_up_ends_the_relay_while_the_other_side_is_silent() {
        // git-annex closing our stdout while the peer says nothing.
        let (far_a, mut far_b, rx) = relay();
        drop(far_a);
        let out = outcome(&rx);
        assert!(out.error.is_none(), "{:?}", out.error);
        // And b, silent all along, got a's EOF.
        let mut got = Vec::new();
        far_b.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn a_read_error_ends_the_whole_relay_and_says_which_end() {
        let (mut far_a, far_b, rx) = relay();
        far_a.write_all(b"unread").unwrap();
        // b's holder closes with those bytes unread: the relay's next read
        // of b fails with ECONNRESET.
        let mut fds = [nix::poll::PollFd::new(far_b.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(10_000u16));
        drop(far_b);
        let out = outcome(&rx);
        let e = out.error.expect("an error");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET), "{e}");
        assert_eq!(out.failed_a, Some(false), "the error came from b");
        assert_eq!(out.a_to_b, 6);
    }
}
