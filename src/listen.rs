//! Listen mode: accept peers and relay each one to a fresh connection to
//! the unix socket where git-annex serves the P2P protocol. A connection
//! that fails never stops the listener.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{Error, describe};
use crate::log::Log;
use crate::relay::{self, End};
use crate::sys;

/// Stack of a connection's thread, which runs one relay direction and the
/// logging; the buffers live on the heap.
const CONNECTION_STACK: usize = 128 * 1024;

/// After running out of descriptors or memory, wait this long before
/// accepting again rather than spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }

    /// Where we listen, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "?".into()),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    /// Accept one connection, set up for relaying, with the peer's name.
    fn accept(&self) -> io::Result<(OwnedFd, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                // Some systems hand out accepted sockets non-blocking when
                // the listener is; the relay wants blocking ones.
                s.set_nonblocking(false)?;
                sys::tune_tcp(&s)?;
                Ok((s.into(), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((s.into(), "local".to_string()))
            }
        }
    }
}

/// Accept on every listener until an unrecoverable error.
pub fn serve(listeners: Vec<Listener>, socket: &Path, log: Arc<Log>) -> Result<(), Error> {
    for l in &listeners {
        l.set_nonblocking()
            .map_err(|e| Error::io("cannot set up the listening socket", e))?;
        log.line(format_args!(
            "listening on {}, relaying to {}",
            l.describe(),
            socket.display()
        ));
    }
    let socket: Arc<PathBuf> = Arc::new(socket.to_path_buf());
    let mut backoff = false;
    loop {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l.fd(), PollFlags::POLLIN))
            .collect();
        let timeout = if backoff {
            PollTimeout::try_from(ACCEPT_BACKOFF).unwrap_or(PollTimeout::NONE)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("poll failed", e.into())),
        }
        backoff = false;
        for l in &listeners {
            loop {
                match l.accept() {
                    Ok((conn, peer)) => spawn_connection(conn, peer, &socket, &log),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if transient_accept_error(&e) => {
                        log.line(format_args!("cannot accept: {}", describe(&e)));
                        backoff = e.raw_os_error().is_some_and(|c| c != libc::ECONNABORTED);
                        break;
                    }
                    Err(e) => return Err(Error::io("cannot accept", e)),
                }
            }
        }
    }
}

/// Errors of one connection or of a momentary shortage, not of the listener.
fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
        )
    ) || e.kind() == io::ErrorKind::ConnectionAborted
        || e.kind() == io::ErrorKind::Interrupted
}

fn spawn_connection(conn: OwnedFd, peer: String, socket: &Arc<PathBuf>, log: &Arc<Log>) {
    let (socket, thread_log) = (Arc::clone(socket), Arc::clone(log));
    let spawned = std::thread::Builder::new()
        .name("connection".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || handle(conn, &peer, &socket, &thread_log));
    if let Err(e) = spawned {
        // The connection went down with the closure: it is closed.
        log.line(format_args!(
            "cannot start a thread for a connection: {}",
            describe(&e)
        ));
    }
}

fn handle(conn: OwnedFd, peer: &str, socket: &Path, log: &Log) {
    let start = Instant::now();
    let local = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            log.line(format_args!(
                "{peer}: closed: cannot connect to {}: {}",
                socket.display(),
                describe(&e)
            ));
            return;
        }
    };
    log.line(format_args!("{peer}: connected"));
    let peer_end = End::Socket(conn);
    let local_end = End::Socket(local.into());
    let secs = || start.elapsed().as_secs_f64();
    match relay::run(&peer_end, &local_end) {
        Ok(out) => {
            let how = match &out.error {
                None => "closed".to_string(),
                Some(e) => format!("failed: {}", describe(e)),
            };
            log.line(format_args!(
                "{peer}: {how} after {:.1}s, {} bytes in, {} bytes out",
                secs(),
                out.a_to_b,
                out.b_to_a
            ));
        }
        Err(e) => log.line(format_args!("{peer}: cannot relay: {}", describe(&e))),
    }
}
