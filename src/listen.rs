//! Listen mode: accept peers and relay each one to a fresh connection to
//! the unix socket where git-annex serves the P2P protocol.
//!
//! git-annex does not supervise this process (DESIGN.md): remotedaemon
//! never waits for it, never stops it, and leaves it orphaned when it dies.
//! So the listener looks after itself: it exits when its parent is gone or
//! its socket file is removed or replaced, stops cleanly on SIGTERM, SIGINT
//! and SIGHUP, caps its connections, and checks the allow-list before it
//! touches the socket. A connection that fails never stops the listener.

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
use nix::sys::socket::{Shutdown, shutdown};

use crate::allow::{self, Cidr};
use crate::config::Config;
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

/// After running out of descriptors or memory, wait this long before
/// accepting again rather than spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    fn accept(&self) -> io::Result<(OwnedFd, Option<IpAddr>, String)> {
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
                sys::tune_tcp(&s).map_err(aborted)?;
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
    /// Netname and address, as `status` shows them.
    pub label: String,
    /// Close connections that moved no byte for this long. None by default:
    /// remotedaemon keeps idle connections open on purpose (DESIGN.md), and
    /// TCP keepalive finds peers that are gone.
    pub idle_timeout: Option<Duration>,
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
            label: format!("{}\t-", cfg.netname()),
            idle_timeout: Some(cfg.duration("idle-timeout", Duration::ZERO)?)
                .filter(|d| !d.is_zero()),
        })
    }
}

/// Accept on every listener until told to stop or orphaned. Returns Ok on
/// a clean stop, Err when the listener cannot go on.
pub fn serve(
    listeners: Vec<Listener>,
    socket: &Path,
    opts: &Options,
    log: Arc<Log>,
) -> Result<(), Error> {
    let signals = sys::signal_pipe().map_err(|e| Error::io("cannot set up signal handling", e))?;
    let watch = Watch::new(socket)?;
    // Set up before "listening on", which tells the world we are ready.
    let control = opts.control.as_deref().and_then(|p| Control::bind(p, &log));
    for l in &listeners {
        l.set_nonblocking()
            .map_err(|e| Error::io("cannot set up the listening socket", e))?;
        log.line(format_args!(
            "listening on {}, relaying to {}",
            l.describe(),
            socket.display()
        ));
    }
    let header = format!(
        "listener\t{}\t{}\t{}\t{}\t{}\t{}",
        std::process::id(),
        opts.label,
        unix_secs(SystemTime::now()),
        opts.max_connections,
        listeners
            .iter()
            .map(Listener::describe)
            .collect::<Vec<_>>()
            .join(","),
        socket.display()
    );
    let socket: Arc<PathBuf> = Arc::new(socket.to_path_buf());
    let registry = Arc::new(Registry::default());
    let mut backoff = false;
    let reason = 'serve: loop {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l.fd(), PollFlags::POLLIN))
            .chain(
                control
                    .iter()
                    .map(|c| PollFd::new(c.listener.as_fd(), PollFlags::POLLIN)),
            )
            .chain([PollFd::new(signals.as_fd(), PollFlags::POLLIN)])
            .collect();
        let timeout = if backoff { ACCEPT_BACKOFF } else { WATCH_EVERY };
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
        let asked = control.is_some()
            && fds[listeners.len()]
                .revents()
                .is_some_and(|r| !r.is_empty());
        drop(fds);
        if let (true, Some(control)) = (asked, &control) {
            control.answer(&header, &registry);
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
        if ready == 0 {
            backoff = false;
            continue;
        }
        backoff = false;
        for l in &listeners {
            loop {
                match l.accept() {
                    Ok((conn, ip, peer)) => {
                        admit(conn, ip, peer, opts, &socket, &registry, &log);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if transient_accept_error(&e) => {
                        log.line(format_args!("cannot accept: {}", describe(&e)));
                        backoff = e.raw_os_error() != Some(libc::ECONNABORTED);
                        break;
                    }
                    Err(e) => return Err(Error::io("cannot accept", e)),
                }
            }
        }
    };
    log.line(format_args!("{reason}"));
    // Release the port first, so a new listener can bind it at once.
    drop(listeners);
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
            let last_words = handle(conn, &peer, &socket, &thread_log, &progress);
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
fn handle(conn: OwnedFd, peer: &str, socket: &Path, log: &Log, progress: &Progress) -> String {
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
    log.line(format_args!("{peer}: connected"));
    let peer_end = End::Socket(conn);
    let local_end = End::Socket(local.into());
    match relay::run_counted(&peer_end, &local_end, progress) {
        Ok(out) => {
            let how = match &out.error {
                None => "closed".to_string(),
                Some(e) => format!("failed: {}", describe(e)),
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
    peer: String,
    since: SystemTime,
    progress: Arc<Progress>,
    /// Bytes moved at the last look, and when that count last changed.
    seen: (u64, Instant),
    /// Shut down for being idle; its relay is winding down.
    idled: bool,
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

    fn remove(&self, id: u64) {
        self.lock().1.remove(&id);
        self.closed.notify_all();
    }

    /// One line per open connection, oldest first, for the status snapshot.
    fn snapshot(&self) -> Vec<String> {
        let open = self.lock();
        let mut ids: Vec<&u64> = open.1.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let o = &open.1[id];
                format!(
                    "conn\t{}\t{}\t{}\t{}",
                    o.peer,
                    unix_secs(o.since),
                    o.progress.a_to_b.load(Ordering::Relaxed),
                    o.progress.b_to_a.load(Ordering::Relaxed)
                )
            })
            .collect()
    }

    /// Shut down the connections that moved nothing for `limit`; their
    /// relays then end and log how.
    fn close_idle(&self, limit: Duration, log: &Log) {
        use std::os::fd::AsRawFd;
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
                let _ = shutdown(o.fd.as_raw_fd(), Shutdown::Both);
                o.idled = true;
            }
        }
    }

    /// Shut every open connection down and wait up to `grace` for their
    /// relays to end. Returns how many are still open.
    fn stop_all(&self, grace: Duration) -> usize {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + grace;
        let mut open = self.lock();
        for o in open.1.values() {
            let _ = shutdown(o.fd.as_raw_fd(), Shutdown::Both);
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

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where `p2p-annex status` asks a running listener what it is doing: a
/// unix socket under `.git/annex/p2p-annex/`, answered with a snapshot
/// (the listener, then one line per open connection with its live byte
/// counts) and closed. Nothing is written to disk while the listener runs.
struct Control {
    listener: UnixListener,
    path: PathBuf,
}

/// Longest unix socket path we bind (sun_path is 108 bytes on Linux, 104
/// on the BSDs).
const MAX_SOCKET_PATH: usize = 100;

impl Control {
    fn bind(path: &Path, log: &Log) -> Option<Control> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = path.parent()?;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        // A long absolute path may still fit relative to where we run
        // (remotedaemon starts us at the repository's top).
        let short = if path.as_os_str().len() > MAX_SOCKET_PATH {
            let cwd = std::env::current_dir().ok()?;
            path.strip_prefix(&cwd).ok()?.to_path_buf()
        } else {
            path.to_path_buf()
        };
        if short.as_os_str().len() > MAX_SOCKET_PATH {
            log.line(format_args!(
                "no status socket: {} is too long a path",
                path.display()
            ));
            return None;
        }
        // The name holds our pid: a file there is a leftover of a listener
        // that was killed and whose pid we now have.
        let _ = std::fs::remove_file(&short);
        match UnixListener::bind(&short).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(listener) => Some(Control {
                listener,
                path: short,
            }),
            Err(e) => {
                log.line(format_args!(
                    "no status socket at {}: {}",
                    path.display(),
                    describe(&e)
                ));
                None
            }
        }
    }

    /// Answer every waiting `status`, each from a thread of its own so a
    /// reader that does not read cannot stall the listener.
    fn answer(&self, header: &str, registry: &Registry) {
        while let Ok((conn, _)) = self.listener.accept() {
            let mut text = format!("{header}\n");
            for line in registry.snapshot() {
                text.push_str(&line);
                text.push('\n');
            }
            let _ = std::thread::Builder::new()
                .name("status".into())
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    use std::io::Write;
                    let mut conn = conn;
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = conn.write_all(text.as_bytes());
                });
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
