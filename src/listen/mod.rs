//! Listen mode: accept peers and relay each one to a fresh connection to
//! the unix socket where git-annex serves the P2P protocol.
//!
//! git-annex does not supervise this process (doc/git-annex-contract.md,
//! "Not supervised"): remotedaemon
//! never waits for it, never stops it, and leaves it orphaned when it dies.
//! So the listener looks after itself: it exits when its parent is gone or
//! its socket file is removed or replaced, stops cleanly on SIGTERM, SIGINT
//! and SIGHUP, caps its connections, and checks the allow-list before it
//! touches the socket. A connection that fails never stops the listener,
//! and neither does an address it cannot bind yet (a busy port, an address
//! or name not there yet) nor running out of descriptors: it waits, and
//! goes on watching while it does.

mod admit;
mod bind;
mod registry;
mod socket;
mod watch;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::allow::Cidr;
use crate::config::Config;
use crate::control::{self, Snapshot, unix_secs};
use crate::error::{Error, describe};
use crate::log::Log;
use crate::sys;

use admit::admit;
use bind::{Retry, Slot};
use registry::Registry;
pub use socket::Listener;
use socket::{out_of_resources, transient_accept_error};
use watch::{Watch, read_signal, signal_name};

/// How often the listener looks for its parent and its socket file: an
/// orphan must be gone within 2 s.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// After running out of descriptors or memory, accepting pauses (the
/// listening sockets are not even polled, so a backlog of peers cannot make
/// the loop spin) for this long, doubling while it keeps failing, up to
/// `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// On stop, how long open connections get to wind down after their sockets
/// are shut down.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// remotedaemon serves at most 100 connections per network
/// (doc/git-annex-contract.md, "Limits and idle connections").
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// The listener's limits, from configuration, and what it tells
/// `p2p-annex status`.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_connections: usize,
    /// Peer networks allowed to connect; empty allows everyone.
    pub allow: Vec<Cidr>,
    /// Where to answer `p2p-annex status`, when in a repository.
    pub control: Option<PathBuf>,
    /// Netname and address, as `status` shows them.
    pub netname: String,
    pub address: String,
    /// Close connections that moved no byte for this long. None by default:
    /// remotedaemon keeps idle connections open on purpose
    /// (doc/git-annex-contract.md, "Limits and idle connections"), and
    /// TCP keepalive finds peers that are gone.
    pub idle_timeout: Option<Duration>,
    /// For accepted TCP connections: see `sys::set_user_timeout`.
    pub user_timeout: Duration,
}

/// Something to listen on. `Later` may not be bindable when we start: its
/// address is not on this host yet, its port is busy, its name does not
/// resolve. The listener keeps trying it, while it goes on watching its
/// parent, its socket file and signals: remotedaemon never restarts a
/// listener that exited.
pub enum Endpoint {
    Ready(Listener),
    Later {
        /// For the log.
        shown: String,
        bind: Binder,
    },
}

/// Binds an endpoint: all its listeners, or why not.
pub type Binder = Box<dyn FnMut() -> Result<Vec<Listener>, BindFailure>>;

/// Why an endpoint could not be bound.
pub enum BindFailure {
    /// It may work later: try again.
    Later(Error),
    /// It never will (no permission for the port, say): stop.
    Never(Error),
}

impl Options {
    /// The options of a listener of `address` (as git-annex gave it),
    /// answering `status` at `control`.
    pub fn from_config(
        cfg: &Config,
        address: &str,
        control: Option<PathBuf>,
    ) -> Result<Options, Error> {
        let max_connections = match cfg.get("max-connections") {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| cfg.bad_value("max-connections", v, "a number above zero"))?,
        };
        let allow = cfg
            .get_all("allow")
            .into_iter()
            .map(|v| {
                Cidr::parse(v).ok_or_else(|| {
                    cfg.bad_value(
                        "allow",
                        v,
                        "an IP address or a CIDR block such as 10.0.0.0/8",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Options {
            max_connections,
            allow,
            control,
            netname: cfg.netname().to_string(),
            address: address.to_string(),
            idle_timeout: Some(cfg.duration("idle-timeout", Duration::ZERO)?)
                .filter(|d| !d.is_zero()),
            user_timeout: crate::net::tcp::user_timeout(cfg)?,
        })
    }
}

/// Accept on every endpoint until told to stop or orphaned. Returns Ok on
/// a clean stop, Err when the listener cannot go on.
pub fn serve(
    endpoints: Vec<Endpoint>,
    socket: &Path,
    opts: &Options,
    log: Arc<Log>,
) -> Result<(), Error> {
    let started = SystemTime::now();
    let signals = sys::signal_pipe().map_err(|e| Error::io("cannot set up signal handling", e))?;
    let watch = Watch::new(socket)?;
    // Set up before "listening on", which tells the world we are ready.
    let control = opts
        .control
        .as_deref()
        .and_then(|p| control::Server::bind(p, &log));
    let mut slots: Vec<Slot> = endpoints.into_iter().map(Slot::new).collect();
    for slot in &mut slots {
        // Bound already (a unix socket): set up and announce it here.
        for l in slot.bound.iter().filter(|_| slot.bind.is_none()) {
            l.set_nonblocking()
                .map_err(|e| Error::io("cannot set up the listening socket", e))?;
            log.line(format_args!(
                "listening on {}, relaying to {}",
                l.describe(),
                socket.display()
            ));
        }
        slot.try_bind(socket, &log)?;
    }
    let socket: Arc<PathBuf> = Arc::new(socket.to_path_buf());
    let registry = Arc::new(Registry::default());
    let mut pause: Option<Retry> = None;
    let reason = 'serve: loop {
        let now = Instant::now();
        // A pause stays set after its time is up, until an accept works.
        let paused = pause.as_ref().is_some_and(|p| p.next > now);
        // While paused, neither the listening sockets nor the status socket
        // are polled: they stay readable, and polling them would spin.
        let listeners: Vec<&Listener> = if paused {
            Vec::new()
        } else {
            slots.iter().flat_map(|s| s.bound.iter()).collect()
        };
        let control_polled = control.as_ref().filter(|_| !paused);
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l.fd(), PollFlags::POLLIN))
            .chain(
                control_polled
                    .iter()
                    .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
            )
            .chain([PollFd::new(signals.as_fd(), PollFlags::POLLIN)])
            .collect();
        let wake_at = slots
            .iter()
            .filter_map(|s| s.retry.as_ref().map(|r| r.next))
            .chain(pause.as_ref().map(|p| p.next))
            .min();
        let timeout = wake_at.map_or(WATCH_EVERY, |t| {
            t.saturating_duration_since(now)
                .min(WATCH_EVERY)
                .max(Duration::from_millis(1))
        });
        let ready = match poll(
            &mut fds,
            PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE),
        ) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(Error::io("poll failed", e.into())),
        };
        let signalled = fds
            .last()
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        let asked = control_polled.is_some()
            && fds[listeners.len()]
                .revents()
                .is_some_and(|r| !r.is_empty());
        drop(fds);
        if let (true, Some(control)) = (asked, &control) {
            control.answer(&|| snapshot(&slots, &socket, opts, started, &registry));
        }
        if signalled {
            if let Some(sig) = read_signal(&signals) {
                break 'serve format!("stopping on {}", signal_name(sig));
            }
        }
        if let Some(gone) = watch.check() {
            break 'serve gone;
        }
        if let Some(limit) = opts.idle_timeout {
            registry.close_idle(limit, &log);
        }
        for slot in &mut slots {
            slot.try_bind(&socket, &log)?;
        }
        if paused || (ready == 0 && pause.is_none()) {
            continue;
        }
        let mut short: Option<io::Error> = None;
        for l in slots.iter().flat_map(|s| s.bound.iter()) {
            loop {
                match l.accept(opts.user_timeout) {
                    Ok((conn, ip, peer)) => {
                        admit(conn, ip, peer, opts, &socket, &registry, &log);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if out_of_resources(&e) => {
                        short = Some(e);
                        break;
                    }
                    Err(e) if transient_accept_error(&e) => {
                        log.line(format_args!("cannot accept: {}", describe(&e)));
                        break;
                    }
                    Err(e) => return Err(Error::io("cannot accept", e)),
                }
            }
        }
        match (short, &mut pause) {
            (Some(e), None) => {
                let p = Retry::start(ACCEPT_BACKOFF);
                log.line(format_args!(
                    "cannot accept: {}; pausing accepts for {:.1}s, then longer while it lasts",
                    describe(&e),
                    p.delay.as_secs_f64()
                ));
                pause = Some(p);
            }
            (Some(e), Some(p)) => {
                p.again(ACCEPT_BACKOFF_MAX);
                log.line(format_args!(
                    "cannot accept: {} ({} failures in {:.1}s); pausing accepts for {:.1}s",
                    describe(&e),
                    p.tries,
                    p.since.elapsed().as_secs_f64(),
                    p.delay.as_secs_f64()
                ));
            }
            (None, Some(p)) => {
                log.line(format_args!(
                    "accepting again after {} failures in {:.1}s",
                    p.tries,
                    p.since.elapsed().as_secs_f64()
                ));
                pause = None;
            }
            (None, None) => {}
        }
    };
    log.line(format_args!("{reason}"));
    // Release the port first, so a new listener can bind it at once.
    drop(slots);
    let left = registry.stop_all(STOP_GRACE);
    log.line(format_args!(
        "exiting{}",
        if left > 0 {
            format!(", {left} connections still closing")
        } else {
            String::new()
        }
    ));
    Ok(())
}

/// What this listener tells `p2p-annex status`: itself, where it listens
/// (the endpoints it still waits for are shown as such), and its open
/// connections.
fn snapshot(
    slots: &[Slot],
    socket: &Path,
    opts: &Options,
    started: SystemTime,
    registry: &Registry,
) -> Snapshot {
    let listening = slots
        .iter()
        .flat_map(|s| {
            if s.bound.is_empty() {
                vec![format!("{} (waiting)", s.shown)]
            } else {
                s.bound.iter().map(Listener::describe).collect()
            }
        })
        .collect();
    Snapshot {
        pid: std::process::id().to_string(),
        netname: opts.netname.clone(),
        address: opts.address.clone(),
        started: unix_secs(started),
        max: opts.max_connections.to_string(),
        listening,
        socket: socket.display().to_string(),
        conns: registry.snapshot(),
    }
}
