//! remotedaemon's output, into serve's log: line by line, capped, so a
//! daemon that fails in a loop cannot flood the journal.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ServeLog;

/// remotedaemon's own output: at most this many lines a minute are logged.
const OUTPUT_LINES_PER_MINUTE: u32 = 30;
/// Longest line of remotedaemon's output that is logged whole.
const OUTPUT_LINE_MAX: usize = 400;

/// Log remotedaemon's output line by line (`remotedaemon: …`), at most
/// `OUTPUT_LINES_PER_MINUTE` a minute, so a daemon that fails in a loop
/// cannot flood the journal.
pub(super) fn forward_output(read: OwnedFd, log: Arc<ServeLog>) {
    let spawned = std::thread::Builder::new()
        .name("remotedaemon-output".into())
        .spawn(move || {
            let mut pipe = std::fs::File::from(read);
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            let mut window = Instant::now();
            let (mut logged, mut dropped) = (0u32, 0u32);
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if window.elapsed() >= Duration::from_secs(60) {
                        if dropped > 0 {
                            log.line(format_args!(
                                "({dropped} more lines of remotedaemon output not logged)"
                            ));
                        }
                        (window, logged, dropped) = (Instant::now(), 0, 0);
                    }
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end();
                    if text.is_empty() {
                        continue;
                    }
                    if logged < OUTPUT_LINES_PER_MINUTE {
                        logged += 1;
                        let short: String = text.chars().take(OUTPUT_LINE_MAX).collect();
                        log.line(format_args!("remotedaemon: {short}"));
                    } else {
                        dropped += 1;
                    }
                }
                // A line without an end is cut, not buffered forever.
                if pending.len() > OUTPUT_LINE_MAX * 4 {
                    pending.push(b'\n');
                }
            }
        });
    if spawned.is_err() {
        // Without the thread nobody reads: remotedaemon would block on a
        // full pipe. Nothing to do but say so; the pipe is dropped with
        // the closure, and writes then fail with EPIPE.
        eprintln!("p2p-annex: serve: cannot start a thread to log remotedaemon's output");
    }
}
