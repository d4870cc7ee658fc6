//! Dialing a peer: each address its name resolves to in turn, within one
//! time budget, asking for the budget only when the first try is not up at
//! once.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::addr::{Host, HostPort};
use crate::error::Error;
use crate::sys;

/// How long connect mode tries before giving up, when not configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect to `target`, trying each address the host resolves to in turn.
/// The timeout is a budget for all attempts; each attempt gets an equal
/// share of what is left, so one black-holed address (an IPv6 route that
/// drops packets, say) cannot eat the time the next one needs.
///
/// The timeout is asked for only when the first attempt does not connect
/// at once: connect mode starts for every connection git-annex makes, and
/// reading configuration (one `git config` run) costs more than the rest
/// of its start-up (BENCHMARKS.md), while on a LAN or loopback the
/// connection is usually up before git could have answered. When it is
/// not, git runs while the SYN is on its way.
pub fn connect(
    target: &HostPort,
    timeout: impl FnOnce() -> Result<Duration, Error>,
) -> Result<TcpStream, Error> {
    let fail = |cause| Error::Connect {
        target: target.to_string(),
        cause,
    };
    let addrs = resolve(target).map_err(fail)?;
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "no address found");
    let mut pending = None;
    match start_connect(addrs[0]) {
        Ok(sock) => match wait_connected(&sock, Duration::ZERO) {
            Ok(true) => return established(sock).map_err(fail),
            Ok(false) => pending = Some(sock),
            Err(e) => last_err = e,
        },
        Err(e) => last_err = e,
    }
    let deadline = Instant::now() + timeout()?;
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / (addrs.len() - i) as u32;
        let sock = match (i, pending.take()) {
            (0, Some(sock)) => sock,
            (0, None) => continue, // the first attempt failed already
            _ => match start_connect(*addr) {
                Ok(sock) => sock,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            },
        };
        match wait_connected(&sock, share) {
            Ok(true) => return established(sock).map_err(fail),
            Ok(false) => last_err = io::Error::from_raw_os_error(libc::ETIMEDOUT),
            Err(e) => last_err = e,
        }
    }
    Err(fail(last_err))
}

/// A non-blocking socket with its connect under way (or done).
fn start_connect(addr: SocketAddr) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, socket};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let sock = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // The exact sockaddr type, so its length is exact (the BSDs insist).
    let connected = match addr {
        SocketAddr::V4(v4) => nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrIn6::from(v6)),
    };
    match connected {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e.into()),
    }
}

/// Wait up to `within` for a connect to finish: Ok(true) connected,
/// Ok(false) still under way, Err why it failed.
fn wait_connected(sock: &OwnedFd, within: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::SocketError)? {
        0 => Ok(true),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// A connected socket, made blocking (the relay blocks in poll, not in
/// non-blocking loops) and tuned.
fn established(sock: OwnedFd) -> io::Result<TcpStream> {
    let stream = TcpStream::from(sock);
    stream.set_nonblocking(false)?;
    // The configured user timeout, if any, is applied by the caller once it
    // has read configuration (connect mode may not have yet).
    sys::tune_tcp(&stream, sys::DEFAULT_USER_TIMEOUT)?;
    Ok(stream)
}

/// The socket addresses of a host: an IP literal as it is (with its zone as
/// scope id), a name through the system resolver.
pub fn resolve(target: &HostPort) -> io::Result<Vec<SocketAddr>> {
    let port = target.port;
    match &target.host {
        Host::V4(ip) => Ok(vec![SocketAddr::new(IpAddr::V4(*ip), port)]),
        Host::V6(ip, zone) => {
            let scope = match zone {
                None => 0,
                Some(zone) => scope_id(zone)?,
            };
            Ok(vec![SocketAddr::V6(SocketAddrV6::new(*ip, port, 0, scope))])
        }
        Host::Name(name) => {
            let addrs: Vec<SocketAddr> = (name.as_str(), port).to_socket_addrs()?.collect();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "name has no address",
                ));
            }
            Ok(addrs)
        }
    }
}

/// `eth0` or `2` in `fe80::1%eth0`.
fn scope_id(zone: &str) -> io::Result<u32> {
    if let Ok(n) = zone.parse() {
        return Ok(n);
    }
    nix::net::if_::if_nametoindex(zone)
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, format!("no interface {zone:?}")))
}
