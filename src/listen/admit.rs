//! Admitting a peer (the allow-list, the cap) and relaying it to
//! git-annex's socket from a thread of its own.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::socket::sockopt::SocketError;

use super::Options;
use super::registry::Registry;
use crate::allow;
use crate::error::describe;
use crate::log::Log;
use crate::relay::{self, End, Progress};

/// Stack of a connection's thread, which runs one relay direction and the
/// logging; the buffers live on the heap.
const CONNECTION_STACK: usize = 128 * 1024;

/// Apply the cap and the allow-list, then hand the connection to a thread.
pub(super) fn admit(
    conn: OwnedFd,
    ip: Option<IpAddr>,
    peer: String,
    opts: &Options,
    socket: &Arc<PathBuf>,
    registry: &Arc<Registry>,
    log: &Arc<Log>,
) {
    if let Some(ip) = ip {
        if !allow::allowed(&opts.allow, ip) {
            log.line(format_args!("{peer}: refused: not in the allow-list"));
            return; // dropping `conn` closes it
        }
    }
    let (id, progress) = match registry.add(&conn, &peer, opts.max_connections) {
        Ok(Some(added)) => added,
        Ok(None) => {
            log.line(format_args!(
                "{peer}: refused: {} connections open (max-connections)",
                opts.max_connections
            ));
            return;
        }
        Err(e) => {
            log.line(format_args!("{peer}: closed: {}", describe(&e)));
            return;
        }
    };
    let (socket, thread_log, thread_registry) =
        (Arc::clone(socket), Arc::clone(log), Arc::clone(registry));
    let spawned = std::thread::Builder::new()
        .name("connection".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            let attach = |local: &UnixStream| thread_registry.attach_local(id, local);
            let shut = || thread_registry.was_shut(id);
            let last_words = handle(conn, &peer, &socket, &thread_log, &progress, attach, shut);
            // Free the slot before saying so, so that whoever reads the log
            // line can count on the slot.
            thread_registry.remove(id);
            thread_log.line(format_args!("{peer}: {last_words}"));
        });
    if let Err(e) = spawned {
        // The connection went down with the closure: it is closed.
        registry.remove(id);
        log.line(format_args!(
            "cannot start a thread for a connection: {}",
            describe(&e)
        ));
    }
}

/// Relay one connection; returns how it ended, for the log.
fn handle(
    conn: OwnedFd,
    peer: &str,
    socket: &Path,
    log: &Log,
    progress: &Progress,
    attach: impl FnOnce(&UnixStream),
    shut_by_us: impl FnOnce() -> bool,
) -> String {
    let start = Instant::now();
    let local = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "closed: cannot connect to {}: {}",
                socket.display(),
                describe(&e)
            );
        }
    };
    attach(&local);
    log.line(format_args!("{peer}: connected"));
    let peer_end = End::Socket(conn);
    let local_end = End::Socket(local.into());
    match relay::run_counted(&peer_end, &local_end, progress) {
        Ok(out) => {
            // `a` is the peer, `b` git-annex's socket.
            let how = match (&out.error, out.failed_a) {
                // Sending to the peer broke (a reset, the user timeout)
                // and we did not shut it down ourselves: the peer is lost.
                // Why is on the socket, if the kernel has not handed it
                // to a read or a splice already.
                (None, _) if out.broke_a && !shut_by_us() => {
                    let pending = match &peer_end {
                        End::Socket(fd) => nix::sys::socket::getsockopt(fd, SocketError).ok(),
                        End::Stdio => None,
                    };
                    match pending {
                        Some(e) if e != 0 => {
                            format!("failed: {}", describe(&io::Error::from_raw_os_error(e)))
                        }
                        _ => "failed: the connection broke while sending".to_string(),
                    }
                }
                (None, _) => "closed".to_string(),
                // git-annex's normal end, not a failure. After a CONNECT
                // session (git fetch/push) it writes `CONNECTDONE`, and the
                // client answers `CONNECTDONE` and closes; git-annex closes
                // its socket without reading that answer, and a unix socket
                // closed with unread bytes makes its peer's next read fail
                // with ECONNRESET. Every byte git-annex wrote was read
                // before that error, so nothing of its own is lost. Seen
                // with strace on git-annex 10.20261026 in about half of
                // the connections of ordinary syncs.
                (Some(e), Some(false)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    "closed by git-annex".to_string()
                }
                (Some(e), Some(false)) => format!("failed: {} (git-annex side)", describe(e)),
                (Some(e), _) => format!("failed: {}", describe(e)),
            };
            format!(
                "{how} after {:.1}s, {} bytes in, {} bytes out",
                start.elapsed().as_secs_f64(),
                out.a_to_b,
                out.b_to_a
            )
        }
        Err(e) => format!("cannot relay: {}", describe(&e)),
    }
}
