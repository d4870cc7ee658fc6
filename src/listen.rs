//! Listen mode: accept peers and relay each one to a fresh connection to
//! the unix socket where git-annex serves the P2P protocol.
//!
//! git-annex does not supervise this process (DESIGN.md): remotedaemon
//! never waits for it, never stops it, and leaves it orphaned when it dies.
//! So the listener looks after itself: it exits when its parent is gone or
//! its socket file is removed or replaced, stops cleanly on SIGTERM, SIGINT
//! and SIGHUP, caps its connections, and checks the allow-list before it
//! touches the socket. A connection that fails never stops the listener,
//! and neither does an address it cannot bind yet (a busy port, an address
//! or name not there yet) nor running out of descriptors: it waits, and
//! goes on watching while it does.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::sockopt::SocketError;
use nix::sys::socket::{Shutdown, shutdown};

use crate::allow::{self, Cidr};
use crate::config::Config;
use crate::control::{self, Conn, Snapshot, unix_secs};
use crate::error::{Error, describe};
use crate::log::Log;
use crate::relay::{self, End, Progress};
use crate::sys;

/// Stack of a connection's thread, which runs one relay direction and the
/// logging; the buffers live on the heap.
const CONNECTION_STACK: usize = 128 * 1024;

/// How often the listener looks for its parent and its socket file: an
/// orphan must be gone within 2 s.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// After running out of descriptors or memory, accepting pauses (the
/// listening sockets are not even polled, so a backlog of peers cannot make
/// the loop spin) for this long, doubling while it keeps failing, up to
/// `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// An address that cannot be bound yet is tried again after this long,
/// doubling up to `BIND_RETRY_MAX`, so a port that is freed or an address
/// that appears (on systems without IP_FREEBIND) is served within seconds.
const BIND_RETRY: Duration = Duration::from_millis(250);
const BIND_RETRY_MAX: Duration = Duration::from_secs(10);

/// On stop, how long open connections get to wind down after their sockets
/// are shut down.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// remotedaemon serves at most 100 connections per network (DESIGN.md).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

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

    /// Accept one connection, with the peer's address (None on a unix socket).
    fn accept(&self, user_timeout: Duration) -> io::Result<(OwnedFd, Option<IpAddr>, String)> {
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

/// The listener's limits, from configuration, and what it tells
/// `p2p-annex status`.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_connections: usize,
    /// Peer networks allowed to connect; empty allows everyone.
    pub allow: Vec<Cidr>,
    /// Where to answer `p2p-annex status`, when in a repository.
    pub control: Option<PathBuf>,
    /// Netname and address (`-` when none), as `status` shows them.
    pub netname: String,
    pub address: String,
    /// Close connections that moved no byte for this long. None by default:
    /// remotedaemon keeps idle connections open on purpose (DESIGN.md), and
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
    pub fn from_config(cfg: &Config) -> Result<Options, Error> {
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
            control: None,
            netname: cfg.netname().to_string(),
            address: "-".to_string(),
            idle_timeout: Some(cfg.duration("idle-timeout", Duration::ZERO)?)
                .filter(|d| !d.is_zero()),
            user_timeout: crate::net::tcp::user_timeout(cfg)?,
        })
    }
}

/// One endpoint in the accept loop: its listeners once bound, or when to
/// try it again.
struct Slot {
    shown: String,
    bind: Option<Binder>,
    bound: Vec<Listener>,
    retry: Option<Retry>,
}

/// Retries with a delay that doubles up to a cap. A long wait is logged
/// once and then at growing intervals (see `again`), never per try.
struct Retry {
    since: Instant,
    tries: u64,
    delay: Duration,
    next: Instant,
}

impl Retry {
    fn start(first: Duration) -> Retry {
        let now = Instant::now();
        Retry {
            since: now,
            tries: 1,
            delay: first,
            next: now + first,
        }
    }

    /// Another failure: wait longer. Says whether to log this one: the
    /// 8th, 16th, 32nd... failure, roughly doubling the interval between
    /// lines once the delay is at its cap.
    fn again(&mut self, max: Duration) -> bool {
        self.tries += 1;
        self.delay = (self.delay * 2).min(max);
        self.next = Instant::now() + self.delay;
        self.tries >= 8 && self.tries.is_power_of_two()
    }
}

impl Slot {
    fn new(endpoint: Endpoint) -> Slot {
        match endpoint {
            Endpoint::Ready(l) => Slot {
                shown: l.describe(),
                bind: None,
                bound: vec![l],
                retry: None,
            },
            Endpoint::Later { shown, bind } => Slot {
                shown,
                bind: Some(bind),
                bound: Vec::new(),
                retry: None,
            },
        }
    }

    /// Bind now if it is time to; Err when it never can.
    fn try_bind(&mut self, socket: &Path, log: &Log) -> Result<(), Error> {
        let Some(bind) = self.bind.as_mut() else {
            return Ok(());
        };
        if !self.bound.is_empty() || self.retry.as_ref().is_some_and(|r| r.next > Instant::now()) {
            return Ok(());
        }
        match bind() {
            Ok(listeners) => {
                for l in &listeners {
                    l.set_nonblocking()
                        .map_err(|e| Error::io("cannot set up the listening socket", e))?;
                    let waited = match &self.retry {
                        Some(r) => format!(
                            " (after {} tries in {:.1}s)",
                            r.tries,
                            r.since.elapsed().as_secs_f64()
                        ),
                        None => String::new(),
                    };
                    log.line(format_args!(
                        "listening on {}, relaying to {}{waited}",
                        l.describe(),
                        socket.display()
                    ));
                }
                self.bound = listeners;
                self.retry = None;
                Ok(())
            }
            Err(BindFailure::Never(e)) => Err(e),
            Err(BindFailure::Later(e)) => {
                match &mut self.retry {
                    None => {
                        self.retry = Some(Retry::start(BIND_RETRY));
                        log.line(format_args!(
                            "{e}; will try again, every {}s at most",
                            BIND_RETRY_MAX.as_secs()
                        ));
                    }
                    Some(r) => {
                        if r.again(BIND_RETRY_MAX) {
                            log.line(format_args!(
                                "{e} (still, after {} tries in {:.0}s)",
                                r.tries,
                                r.since.elapsed().as_secs_f64()
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
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

/// Accept failed for want of descriptors or memory: nothing to do but wait
/// for some to be freed.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Apply the cap and the allow-list, then hand the connection to a thread.
fn admit(
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

/// Errors of one connection or of a momentary shortage, not of the listener.
fn transient_accept_error(e: &io::Error) -> bool {
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

/// The open connections: a duplicate of each peer socket, so that a stop
/// can shut them all down (which ends their relays), their count for the
/// cap, and what `p2p-annex status` shows of each.
#[derive(Default)]
struct Registry {
    open: Mutex<(u64, HashMap<u64, Open>)>,
    closed: Condvar,
}

struct Open {
    fd: OwnedFd,
    /// The git-annex side, once connected: shut down with the peer's, so a
    /// git-annex side that stopped reading cannot keep the relay (and its
    /// slot) after an idle-timeout or a stop.
    local: Option<OwnedFd>,
    /// Shut down (idle, or stopping): a local side attached later is shut
    /// down at once.
    shut: bool,
    peer: String,
    since: SystemTime,
    progress: Arc<Progress>,
    /// Bytes moved at the last look, and when that count last changed.
    seen: (u64, Instant),
    /// Shut down for being idle; its relay is winding down.
    idled: bool,
}

impl Open {
    /// Wake both sides of the relay: its threads see the sockets end.
    fn shut_down(&mut self) {
        shut_down(&self.fd);
        if let Some(local) = &self.local {
            shut_down(local);
        }
        self.shut = true;
    }
}

fn shut_down(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
}

impl Registry {
    /// Register a connection unless `max` are open already.
    fn add(
        &self,
        conn: &OwnedFd,
        peer: &str,
        max: usize,
    ) -> io::Result<Option<(u64, Arc<Progress>)>> {
        let mut open = self.lock();
        if open.1.len() >= max {
            return Ok(None);
        }
        let entry = Open {
            fd: conn.try_clone()?,
            local: None,
            shut: false,
            peer: peer.to_string(),
            since: SystemTime::now(),
            progress: Arc::new(Progress::default()),
            seen: (0, Instant::now()),
            idled: false,
        };
        let progress = Arc::clone(&entry.progress);
        open.0 += 1;
        let id = open.0;
        open.1.insert(id, entry);
        Ok(Some((id, progress)))
    }

    /// Keep a duplicate of the connection's git-annex side, to wake it too.
    fn attach_local(&self, id: u64, local: &UnixStream) {
        let mut open = self.lock();
        let Some(o) = open.1.get_mut(&id) else { return };
        if let Ok(fd) = local.try_clone() {
            let fd = OwnedFd::from(fd);
            if o.shut {
                shut_down(&fd);
            }
            o.local = Some(fd);
        }
    }

    /// Did an idle-timeout or a stop shut this connection down?
    fn was_shut(&self, id: u64) -> bool {
        self.lock().1.get(&id).is_some_and(|o| o.shut)
    }

    fn remove(&self, id: u64) {
        self.lock().1.remove(&id);
        self.closed.notify_all();
    }

    /// The open connections, oldest first, for the status snapshot.
    fn snapshot(&self) -> Vec<Conn> {
        let open = self.lock();
        let mut ids: Vec<&u64> = open.1.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let o = &open.1[id];
                Conn {
                    peer: o.peer.clone(),
                    since: unix_secs(o.since),
                    bytes_in: o.progress.a_to_b.load(Ordering::Relaxed),
                    bytes_out: o.progress.b_to_a.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Shut down the connections that moved nothing for `limit`; their
    /// relays then end and log how.
    fn close_idle(&self, limit: Duration, log: &Log) {
        let now = Instant::now();
        let mut open = self.lock();
        for o in open.1.values_mut().filter(|o| !o.idled) {
            let moved = o.progress.a_to_b.load(Ordering::Relaxed)
                + o.progress.b_to_a.load(Ordering::Relaxed);
            if moved != o.seen.0 {
                o.seen = (moved, now);
            } else if now.duration_since(o.seen.1) >= limit {
                log.line(format_args!(
                    "{}: closing: idle for {:.0}s (idle-timeout)",
                    o.peer,
                    now.duration_since(o.seen.1).as_secs_f64()
                ));
                o.shut_down();
                o.idled = true;
            }
        }
    }

    /// Shut every open connection down and wait up to `grace` for their
    /// relays to end. Returns how many are still open.
    fn stop_all(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut open = self.lock();
        for o in open.1.values_mut() {
            o.shut_down();
        }
        while !open.1.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = match self.closed.wait_timeout(open, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        open.1.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Open>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the listener watches to know it is still wanted: the parent that
/// started it, and the socket file it relays to.
struct Watch {
    /// None when started by init or a subreaper already: nothing to watch.
    parent: Option<libc::pid_t>,
    socket: PathBuf,
    /// Device and inode of the socket file, to notice a replacement.
    identity: (u64, u64),
}

impl Watch {
    fn new(socket: &Path) -> Result<Watch, Error> {
        let meta = std::fs::metadata(socket)
            .map_err(|e| Error::io(format!("socket file {}", socket.display()), e))?;
        let parent = nix::unistd::getppid().as_raw();
        let parent = (parent > 1).then_some(parent);
        if parent.is_some() {
            sys::parent_death_signal();
        }
        Ok(Watch {
            parent,
            socket: socket.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Why the listener should go, if it should.
    fn check(&self) -> Option<String> {
        if let Some(parent) = self.parent {
            let now = nix::unistd::getppid().as_raw();
            if now != parent {
                return Some(format!("exiting: parent process {parent} is gone"));
            }
        }
        match std::fs::metadata(&self.socket) {
            Err(_) => Some(format!(
                "exiting: socket file {} was removed",
                self.socket.display()
            )),
            Ok(m) if (m.dev(), m.ino()) != self.identity => Some(format!(
                "exiting: socket file {} was replaced",
                self.socket.display()
            )),
            Ok(_) => None,
        }
    }
}

/// The next stop signal in the pipe, if any; a parent-death hint is not a
/// stop (the watch decides).
fn read_signal(pipe: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 16];
    while let Ok(n) = nix::unistd::read(pipe, &mut buf) {
        if n == 0 {
            break;
        }
        if let Some(&sig) = buf[..n]
            .iter()
            .find(|&&b| i32::from(b) != sys::PARENT_DEATH_SIGNAL)
        {
            return Some(i32::from(sig));
        }
    }
    None
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
