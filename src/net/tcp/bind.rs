//! Listen mode: where to bind, and binding it (or waiting until it can be).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use crate::addr::{Host, HostPort};
use crate::config::Config;
use crate::error::Error;
use crate::listen::{self, BindFailure, Endpoint, Listener};
use crate::log::Log;
use crate::sys;

use super::dial::resolve;

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
}
