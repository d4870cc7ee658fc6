//! The listening sockets, tcp or unix, and what their accept errors mean.

use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use crate::allow;
use crate::error::describe;
use crate::sys;

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
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

    pub(super) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    /// Accept one connection, with the peer's address (None on a unix socket).
    pub(super) fn accept(
        &self,
        user_timeout: Duration,
    ) -> io::Result<(OwnedFd, Option<IpAddr>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                // Some systems hand out accepted sockets non-blocking when
                // the listener is; the relay wants blocking ones.
                // A peer that reset at once can make these fail (on the
                // BSDs): that ends this connection, not the listener.
                let aborted = |e: io::Error| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("cannot set up the connection: {}", describe(&e)),
                    )
                };
                s.set_nonblocking(false).map_err(aborted)?;
                sys::tune_tcp(&s, user_timeout).map_err(aborted)?;
                let ip = allow::canonical(peer.ip());
                let name = std::net::SocketAddr::new(ip, peer.port()).to_string();
                Ok((s.into(), Some(ip), name))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((s.into(), None, "local".to_string()))
            }
        }
    }
}

/// Accept failed for want of descriptors or memory: nothing to do but wait
/// for some to be freed.
pub(super) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors of one connection or of a momentary shortage, not of the listener.
pub(super) fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
        )
    ) || e.kind() == io::ErrorKind::ConnectionAborted
        || e.kind() == io::ErrorKind::Interrupted
}
