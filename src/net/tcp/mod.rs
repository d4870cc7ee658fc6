//! The `tcp` transport: direct TCP, for overlays that already encrypt
//! (WireGuard, Yggdrasil, Tailscale, tinc) or a LAN you trust. Plaintext.

mod address;
mod bind;
mod dial;

use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::time::Duration;

use super::{Address, Form, LazyConfig, Transport};

use crate::config::Config;
use crate::error::Error;
use crate::sys;

pub use address::{addresses, local_addresses};
pub use bind::{bind_all, endpoints, parse_binds, serve_endpoints, show};
pub use dial::{DEFAULT_CONNECT_TIMEOUT, connect, resolve};

/// The `tcp` transport (see `net`).
pub const TRANSPORT: Transport = Transport {
    name: "tcp",
    form: Form::HostPort,
    connect: connect_peer,
    connect_stdio: None,
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
