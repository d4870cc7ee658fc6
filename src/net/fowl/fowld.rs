//! One `fowld` child: started from argv (never a shell), driven by JSON
//! lines on its stdin, its stdout read into events by a thread of its own,
//! and ended gently, so the mailbox frees its nameplate.
//!
//! fowld does not exit when its stdin closes, nor after its wormhole
//! closed (doc/networks/fowl.md): every child is ended here, and the
//! kernel ends it if we die (`sys::terminate_with_us`). Its stderr is
//! dropped: Twisted's tracebacks there may quote a code.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::fowlproto::{self, Event, MAX_LINE};
use crate::sys;

/// Every fowld of ours that runs, so a stopping listener can end them all.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Set when the listener stops: no new fowld is started.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Is the process stopping its fowld children?
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// How long a gentle close waits before SIGTERM, and SIGTERM before SIGKILL.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const TERM_WAIT: Duration = Duration::from_secs(3);
/// fowld being closed by `close_in_background`.
static CLOSING: AtomicUsize = AtomicUsize::new(0);

/// What came of waiting for fowld.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Event(Event),
    Timeout,
    /// fowld's stdout closed: it exited or is exiting.
    Gone,
}

pub struct Fowld {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Event>,
}

impl Fowld {
    /// Start `program --mailbox URL`.
    pub fn spawn(program: &OsStr, mailbox: &str) -> io::Result<Fowld> {
        if stopping() {
            return Err(io::Error::other("stopping"));
        }
        let mut cmd = Command::new(program);
        cmd.arg("--mailbox")
            .arg(mailbox)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Lines as they are written, not when a buffer fills.
            .env("PYTHONUNBUFFERED", "1");
        sys::terminate_with_us(&mut cmd);
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::channel();
        thread::Builder::new()
            .name("fowld-reader".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    // A line longer than we parse is read through and dropped.
                    match (&mut lines)
                        .take(MAX_LINE as u64 + 1)
                        .read_until(b'\n', &mut line)
                    {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
                        let _ = lines.skip_until(b'\n');
                        continue;
                    }
                    let event = fowlproto::parse_line(line.trim_ascii_end());
                    if matches!(event, Event::Bytes | Event::Other) {
                        continue;
                    }
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            })?;
        if let Ok(mut running) = RUNNING.lock() {
            running.push(child.id());
        }
        Ok(Fowld {
            child,
            stdin,
            events,
        })
    }

    /// Send one command line; false when fowld no longer reads.
    pub fn send(&mut self, line: &[u8]) -> bool {
        match &mut self.stdin {
            Some(s) => s.write_all(line).and_then(|()| s.flush()).is_ok(),
            None => false,
        }
    }

    /// The next event, waiting until `until`.
    pub fn next(&self, until: Instant) -> Next {
        let left = until.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(e) => Next::Event(e),
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
            Err(RecvTimeoutError::Disconnected) => Next::Gone,
        }
    }

    /// The next event if one is there already.
    pub fn poll(&self) -> Option<Next> {
        match self.events.try_recv() {
            Ok(e) => Some(Next::Event(e)),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Next::Gone),
        }
    }

    /// Wait for an event `want` accepts; a final event, fowld's end or the
    /// deadline come back as they are.
    pub fn wait_for(&self, until: Instant, want: impl Fn(&Event) -> bool) -> Next {
        loop {
            match self.next(until) {
                Next::Event(e) if want(&e) || e.is_final() => return Next::Event(e),
                Next::Event(_) => {}
                other => return other,
            }
        }
    }

    /// End the wormhole and fowld: `session-close` (the mailbox frees the
    /// nameplate), then SIGTERM, then SIGKILL; reaped before returning.
    pub fn close(mut self) {
        if self.send(&fowlproto::session_close(1)) && self.exited_within(CLOSE_WAIT) {
            return;
        }
        self.terminate();
    }

    /// SIGTERM (fowld still closes its wormhole), then SIGKILL; reaped.
    pub fn terminate(mut self) {
        term(self.pid());
        if !self.exited_within(TERM_WAIT) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Close it on a thread of its own: the caller moves on.
    /// (`wait_closing` waits for them: connect mode does before it exits,
    /// so no fowld outlives it, and none is killed before it freed its
    /// nameplate.)
    pub fn close_in_background(self) {
        CLOSING.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("fowld-close".into())
            .spawn(move || {
                self.close();
                CLOSING.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            CLOSING.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited_within(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= until => return false,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Fowld {
    fn drop(&mut self) {
        if let Ok(mut running) = RUNNING.lock() {
            running.retain(|&pid| pid != self.child.id());
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            // Not closed on purpose: never leave it running.
            term(self.pid());
            if !self.exited_within(TERM_WAIT) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Wait, up to `limit`, for the closes `close_in_background` started.
pub fn wait_closing(limit: Duration) {
    let until = Instant::now() + limit;
    while CLOSING.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to every fowld of ours, then wait (bounded) until they are gone:
/// a listener that stops leaves no nameplate claimed.
pub fn terminate_all(limit: Duration) {
    STOPPING.store(true, Ordering::SeqCst);
    let pids: Vec<u32> = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
    for &pid in &pids {
        term(pid);
    }
    let until = Instant::now() + limit;
    while Instant::now() < until
        && pids
            .iter()
            .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to one child (never to pid 0 or -1, which mean groups).
fn term(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            sys::send_signal(pid, libc::SIGTERM);
        }
    }
}

/// The fowld to run: `p2p-annex.<netname>.fowld`, or `fowld` on PATH.
pub fn program(cfg: &crate::config::Config) -> OsString {
    OsString::from(cfg.get("fowld").map_or("fowld", str::trim))
}
