//! The `tcp` transport: direct TCP, for overlays that already encrypt
//! (WireGuard, Yggdrasil, Tailscale, tinc) or a LAN you trust. Plaintext.

use std::io;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use std::path::Path;
use std::sync::Arc;

use super::{Address, Form, LazyConfig, Transport};
use crate::addr::{Host, HostPort};
use crate::config::Config;
use crate::error::Error;
use crate::listen::BindFailure;
use crate::listen::{self, Endpoint, Listener};
use crate::log::Log;
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

/// Connect mode's timeout, from `connect-timeout`; each transport has its
/// own default.
pub fn connect_timeout(cfg: &Config, default: Duration) -> Result<Duration, Error> {
    let t = cfg.duration("connect-timeout", default)?;
    if t.is_zero() {
        return Err(cfg.bad_value("connect-timeout", "0", "a duration above zero"));
    }
    Ok(t)
}

/// How long a peer may leave our bytes unacknowledged or stay silent
/// before we give up on it (`user-timeout`, see `sys::set_user_timeout`);
/// `0` leaves it to the kernel.
pub fn user_timeout(cfg: &Config) -> Result<Duration, Error> {
    cfg.duration("user-timeout", sys::DEFAULT_USER_TIMEOUT)
}

/// Address mode: `HOST:PORT` for each configured `address`, or for each
/// usable address of this host. Never bracketed: git-annex cannot use
/// bracketed IPv6 (doc/git-annex-contract.md, "Bracketed IPv6").
pub fn addresses(cfg: &mut Config) -> Result<Vec<String>, Error> {
    let port = port(cfg)?;
    let configured = cfg.get_all("address");
    let hosts: Vec<Host> = if configured.is_empty() {
        local_addresses()?.into_iter().map(Host::from_ip).collect()
    } else {
        configured
            .iter()
            .map(|h| {
                let bare = h
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(h);
                let host = Host::parse(bare).map_err(|_| bad_address(cfg, h))?;
                if let Some(group) = port_meant(&host, bare) {
                    eprintln!(
                        "p2p-annex: {}: warning: {} {h:?} is taken as an IPv6 address; \
                         if {group} is a port, set it in {} and leave it out of the address",
                        cfg.netname(),
                        cfg.name("address"),
                        cfg.name("port")
                    );
                }
                Ok(host)
            })
            .collect::<Result<_, Error>>()?
    };
    if hosts.is_empty() {
        return Err(Error::Config(format!(
            "this host has no usable address (no loopback, no link-local); set {}",
            cfg.name("address")
        )));
    }
    let mut lines: Vec<String> = Vec::new();
    for host in hosts {
        let line = HostPort { host, port }.to_string();
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// A configured `address` that is no host, with the likely fix.
fn bad_address(cfg: &Config, value: &str) -> Error {
    if HostPort::parse(value).is_ok() {
        let expected = format!(
            "a host name or IP address, without a port: the port goes in {}",
            cfg.name("port")
        );
        return cfg.bad_value("address", value, &expected);
    }
    cfg.bad_value("address", value, "a host name or IP address")
}

/// The last group of an unbracketed IPv6 address that reads like a port
/// someone meant (`fd77::1:5599`): four decimal digits (five are no group
/// and fail as a bad host). It is a valid address, so only a warning.
fn port_meant<'a>(host: &Host, text: &'a str) -> Option<&'a str> {
    let Host::V6(..) = host else { return None };
    let last = text.rsplit(':').next()?;
    (last.len() == 4 && last.bytes().all(|b| b.is_ascii_digit())).then_some(last)
}

/// The configured port, or a new one, stored so the address stays stable.
fn port(cfg: &mut Config) -> Result<u16, Error> {
    if let Some(p) = cfg.get("port") {
        return crate::addr::parse_port(p.trim())
            .map_err(|_| cfg.bad_value("port", p, "a port, 1-65535"));
    }
    let port = pick_free_port()?;
    cfg.set("port", &port.to_string())?;
    Ok(port)
}

/// Ports are picked below the kernel's ephemeral range: a port from inside
/// it could be taken by some outgoing connection by the time remotedaemon
/// restarts, and the listener could not bind it.
const PICK_LOW: u16 = 10000;
const PICK_TRIES: u16 = 200;

fn pick_free_port() -> Result<u16, Error> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > PICK_LOW + 1000 {
        (PICK_LOW, ephemeral_low)
    } else {
        (1024, PICK_LOW) // an odd kernel setting: stay below it anyway
    };
    let span = u64::from(high - low);
    let start = sys::random_u64() % span;
    for i in 0..u64::from(PICK_TRIES) {
        // Within u16: low + (x % span) < high.
        let port = low + ((start + i) % span) as u16;
        if port_is_free(port) {
            return Ok(port);
        }
    }
    Err(Error::Config(
        "cannot find a free port; set p2p-annex.NETNAME.port".to_string(),
    ))
}

/// Free for both IPv4 and IPv6 listeners.
fn port_is_free(port: u16) -> bool {
    let v4 = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok();
    let v6 = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(_) => true,
        // A host without IPv6 does not make the port busy.
        Err(e) => matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
        ),
    };
    v4 && v6
}

/// Addresses of interfaces that are up, without loopback and link-local,
/// which no peer elsewhere could use. Overlay addresses (Yggdrasil's
/// 200::/7, a WireGuard interface's) are exactly what we want here.
pub fn local_addresses() -> Result<Vec<IpAddr>, Error> {
    use nix::net::if_::InterfaceFlags;
    let ifaddrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::io("cannot list this host's addresses", e.into()))?;
    let mut out = Vec::new();
    for ifa in ifaddrs {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || link_local || v6.is_unspecified() || v6.is_multicast())
        }
    }
}

/// Where listen mode binds: each `bind` value, or else the address's own
/// host (a name is resolved at each try). Never the wildcard, unless a
/// `bind` value is one (`::` or `0.0.0.0`): the wildcard would serve
/// plaintext on every interface, LAN included, when the address is meant
/// for an overlay. An address that is not on this host (yet) is bound
/// anyway where the system allows it, and waited for where it does not
/// (see `bind_all`).
pub fn endpoints(cfg: &Config, target: &HostPort) -> Result<Vec<HostPort>, Error> {
    let binds = cfg.get_all("bind");
    if !binds.is_empty() {
        return parse_binds(cfg, "bind", &binds, target.port);
    }
    Ok(vec![target.clone()])
}

/// Each value of the config key `key` (see `parse_bind`); `port` is the
/// address's, for values without their own.
pub fn parse_binds(
    cfg: &Config,
    key: &str,
    values: &[&str],
    port: u16,
) -> Result<Vec<HostPort>, Error> {
    values
        .iter()
        .map(|v| {
            let addr = parse_bind(v, port)
                .ok_or_else(|| cfg.bad_value(key, v, "an IP address, IPV4:PORT or [IPV6]:PORT"))?;
            Ok(HostPort {
                host: Host::from_ip(addr.ip()),
                port: addr.port(),
            })
        })
        .collect()
}

/// An endpoint as the log shows it: `[::1]:5599`, `host.example:5599`.
pub fn show(at: &HostPort) -> String {
    match &at.host {
        Host::V4(ip) => format!("{ip}:{}", at.port),
        Host::V6(ip, None) => format!("[{ip}]:{}", at.port),
        Host::V6(ip, Some(zone)) => format!("[{ip}%{zone}]:{}", at.port),
        Host::Name(name) => format!("{name}:{}", at.port),
    }
}

/// Bind every address of `at` (a name may have several), or none. What
/// may be mended by waiting is `Later`: a name that does not resolve yet,
/// an interface or address that is not there yet, a port another process
/// holds. Anything else (no permission for the port, say) is `Never`.
/// A name goes through the system resolver, which blocks the listener's
/// watch loop for as long as it takes (at most its own timeout, 5 s per
/// try by default; it fails at once when no network is up).
pub fn bind_all(at: &HostPort) -> Result<Vec<TcpListener>, BindFailure> {
    let addrs = resolve(at).map_err(|cause| {
        BindFailure::Later(Error::Bind {
            target: show(at),
            cause,
        })
    })?;
    addrs
        .into_iter()
        .map(|addr| {
            bind_one(addr).map_err(|cause| {
                let later = matches!(
                    cause.raw_os_error(),
                    Some(
                        libc::EADDRINUSE
                            | libc::EADDRNOTAVAIL
                            | libc::ENODEV
                            | libc::ENETDOWN
                            | libc::ENETUNREACH
                    )
                );
                let e = Error::Bind {
                    target: addr.to_string(),
                    cause,
                };
                if later {
                    BindFailure::Later(e)
                } else {
                    BindFailure::Never(e)
                }
            })
        })
        .collect()
}

/// A listening socket on `addr`. SO_REUSEADDR, as std sets it, so a new
/// listener can bind while connections of the old one are in TIME_WAIT.
/// On Linux an address that is not on the host yet is bound all the same
/// (IP_FREEBIND): an overlay's address appears when its daemon comes up,
/// often after remotedaemon at boot, and peers reach us the moment it does.
fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen,
        setsockopt, socket, sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let sock = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&sock, sockopt::ReuseAddr, &true)?;
    if !addr.ip().is_unspecified() {
        sys::allow_absent_address(&sock);
    }
    match addr {
        SocketAddr::V4(v4) => bind(sock.as_raw_fd(), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => bind(sock.as_raw_fd(), &SockaddrIn6::from(v6))?,
    }
    listen(&sock, Backlog::new(libc::SOMAXCONN)?)?;
    Ok(TcpListener::from(sock))
}

/// A `bind` value: an IP address (the port is the address's), or with its
/// own port as `IPV4:PORT` or `[IPV6]:PORT`. An unbracketed IPv6 is always
/// read as an address alone (`::1:5000` is a valid IPv6 address).
fn parse_bind(s: &str, port: u16) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
    if let Some(ip) = bare.and_then(|b| b.parse::<Ipv6Addr>().ok()) {
        return Some(SocketAddr::new(IpAddr::V6(ip), port));
    }
    s.parse::<SocketAddr>().ok()
}

/// The `tcp` transport (see `net`).
pub const TRANSPORT: Transport = Transport {
    name: "tcp",
    form: Form::HostPort,
    connect: connect_peer,
    addresses,
    listen: |cfg, address, opts, socket, log| {
        serve_endpoints(endpoints(cfg, address.host_port()?)?, opts, socket, log)
    },
    reach_fix: |_, peer| {
        format!("{peer}, and that this host can reach it (network up, no firewall in between)")
    },
};

/// Reach a peer. Without a cap (connect mode) this is the fast path of
/// start-up: configuration is read only if the connection is not up at
/// once (see `connect`), and then the socket's user timeout is set now,
/// or else a second later (see `user_timeout_later`).
fn connect_peer(
    cfg: &LazyConfig,
    address: &Address,
    cap: Option<Duration>,
) -> Result<OwnedFd, Error> {
    let target = address.host_port()?;
    let capped = |t: Duration| cap.map_or(t, |c| t.min(c));
    // Configuration read already (a user-defined netname, `check`): a bad
    // timeout is an error even when the connection would come up at once.
    let known = cfg
        .if_loaded()
        .map(|c| connect_timeout(c, DEFAULT_CONNECT_TIMEOUT))
        .transpose()?;
    let timeout = || match known {
        Some(t) => Ok(capped(t)),
        None => Ok(capped(connect_timeout(
            cfg.get()?,
            DEFAULT_CONNECT_TIMEOUT,
        )?)),
    };
    let sock = connect(target, timeout)?;
    if cap.is_none() {
        match cfg.if_loaded() {
            Some(c) => super::apply_user_timeout(&sock, c)?,
            None => user_timeout_later(&sock, cfg.netname()),
        }
    }
    Ok(sock.into())
}

/// How long a fast-path connection runs before connect mode reads its
/// configured `user-timeout` (see `user_timeout_later`).
const USER_TIMEOUT_AFTER: Duration = Duration::from_secs(1);

/// The fast path connected before reading configuration, with the default
/// user timeout (two minutes) already on the socket. A configured
/// `user-timeout` still applies: a thread reads configuration once the
/// connection has run for a second and sets it on the live socket. That
/// keeps `git config` off the critical path of start-up (BENCHMARKS.md), and
/// a connection that is over within the second (most are) never runs git
/// at all; a dead peer is still given up within the configured bound plus
/// that second, and the default bound holds before. A bad value is
/// reported and the default kept: the relay is already under way.
fn user_timeout_later(sock: &TcpStream, netname: &str) {
    let Ok(sock) = sock.try_clone() else { return };
    let netname = netname.to_string();
    let _ = std::thread::Builder::new()
        .name("config".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // The process exits when the relay ends, this thread with it.
            std::thread::sleep(USER_TIMEOUT_AFTER);
            let applied =
                Config::load(&netname).and_then(|cfg| super::apply_user_timeout(&sock, &cfg));
            if let Err(e) = applied {
                eprintln!("p2p-annex: {netname}: {e}");
            }
        });
}

/// Listen on each of `ats` as soon as it can be bound (see `bind_all`).
pub fn serve_endpoints(
    ats: Vec<HostPort>,
    opts: &listen::Options,
    socket: &Path,
    log: &Arc<Log>,
) -> Result<(), Error> {
    let endpoints = ats
        .into_iter()
        .map(|at| Endpoint::Later {
            shown: show(&at),
            bind: Box::new(move || {
                bind_all(&at).map(|ls| ls.into_iter().map(Listener::Tcp).collect())
            }),
        })
        .collect();
    listen::serve(endpoints, socket, opts, Arc::clone(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_values() {
        assert_eq!(
            parse_bind("10.0.0.1", 5599),
            Some("10.0.0.1:5599".parse().unwrap())
        );
        assert_eq!(
            parse_bind("10.0.0.1:80", 5599),
            Some("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(parse_bind("::1", 5599), Some("[::1]:5599".parse().unwrap()));
        assert_eq!(
            parse_bind("[::1]", 5599),
            Some("[::1]:5599".parse().unwrap())
        );
        assert_eq!(
            parse_bind("[::1]:80", 5599),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_bind("::", 5599), Some("[::]:5599".parse().unwrap()));
        assert_eq!(parse_bind("host", 5599), None);
        assert_eq!(parse_bind("10.0.0.1:0x50", 5599), None);
    }

    #[test]
    fn a_port_in_the_address_gets_a_hint() {
        let cfg = Config::from_entries("tcp", vec![]);
        for with_port in ["[fd77::1]:5599", "10.0.0.1:5599", "host.example:80"] {
            let msg = bad_address(&cfg, with_port).to_string();
            assert!(msg.contains("the port goes in p2p-annex.tcp.port"), "{msg}");
        }
        let msg = bad_address(&cfg, "a b").to_string();
        assert!(!msg.contains("port"), "{msg}");
        let port_of = |text: &str| port_meant(&Host::parse(text).unwrap(), text).map(String::from);
        assert_eq!(port_of("fd77::1:5599").as_deref(), Some("5599"));
        assert_eq!(port_of("fd77::1:8080").as_deref(), Some("8080"));
        // Five digits are no IPv6 group: an error, with the hint.
        let msg = bad_address(&cfg, "fd77::1:65535").to_string();
        assert!(msg.contains("the port goes in"), "{msg}");
        assert_eq!(port_of("fd77::1:abcd"), None);
        assert_eq!(port_of("fd77::1:99"), None);
        assert_eq!(port_of("10.0.0.1"), None);
    }

    #[test]
    fn usable_addresses_skip_loopback_and_link_local() {
        for ip in [
            "127.0.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "febf::1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!usable(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.2",
            "100.64.0.1",
            "200:abcd::1",
            "fd00::1",
            "fec0::1",
        ] {
            assert!(usable(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn picked_ports_are_below_the_ephemeral_range_and_free() {
        let p = pick_free_port().unwrap();
        assert!((1024..32768).contains(&p), "{p}");
        assert!(port_is_free(p));
    }
}
