//! Address mode: the `HOST:PORT` lines peers can use, and the port picked
//! (and stored) the first time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

use crate::addr::{Host, HostPort};
use crate::config::Config;
use crate::error::Error;
use crate::sys;

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

#[cfg(test)]
mod tests {
    use super::*;

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
