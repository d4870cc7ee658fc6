//! The transports, and which one a netname uses.

pub mod onion;
pub mod socks;
pub mod tcp;
pub mod unix;

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::addr::{self, HostPort};
use crate::cli::Mode;
use crate::config::Config;
use crate::error::Error;
use crate::listen::{self, Endpoint, Listener};
use crate::log::Log;
use crate::relay::{self, End};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Socks,
    UnixSockets,
    Onion,
}

impl Transport {
    /// Built-in netnames name their transport; any other netname takes it
    /// from `p2p-annex.<netname>.transport`.
    pub fn for_netname(cfg: &Config) -> Result<Transport, Error> {
        if let Some(builtin) = Transport::named(cfg.netname()) {
            return Ok(builtin);
        }
        match cfg.get("transport") {
            Some(name) => Transport::named(name.trim()).ok_or_else(|| {
                cfg.bad_value("transport", name, "tcp, socks, unix-sockets or onion")
            }),
            None => Err(Error::Usage(format!(
                "unknown netname {:?}: set its transport with `git config {} socks` \
                 (or tcp, or unix-sockets, or onion), and its settings under p2p-annex.{}.* \
                 (netnames here: {})",
                cfg.netname(),
                cfg.name("transport"),
                cfg.netname(),
                ["tcp", "socks", "unix-sockets", "onion"]
                    .into_iter()
                    .chain(cfg.defined_netnames().iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn named(name: &str) -> Option<Transport> {
        match name {
            "tcp" => Some(Transport::Tcp),
            "socks" => Some(Transport::Socks),
            "unix-sockets" => Some(Transport::UnixSockets),
            "onion" => Some(Transport::Onion),
            _ => None,
        }
    }
}

/// Run one mode of one netname.
pub fn run(netname: &str, mode: Mode) -> Result<(), Error> {
    // The built-in tcp network's connect mode reads configuration only if
    // the connection does not come up at once (see tcp::connect).
    if let (Mode::Connect(address), "tcp") = (&mode, netname) {
        let target = HostPort::parse(&decode(address)?)?;
        let mut loaded = None;
        let timeout = || {
            let cfg = Config::load(netname)?;
            let t = tcp::connect_timeout(&cfg, tcp::DEFAULT_CONNECT_TIMEOUT)?;
            loaded = Some(cfg);
            Ok(t)
        };
        let sock = tcp::connect(&target, timeout)?;
        match loaded {
            Some(cfg) => apply_user_timeout(&sock, &cfg)?,
            None => user_timeout_later(&sock, netname),
        }
        return relay_stdio(End::Socket(sock.into()));
    }
    let mut cfg = Config::load(netname)?;
    let transport = Transport::for_netname(&cfg)?;
    match mode {
        Mode::Connect(address) => connect(transport, &cfg, &address),
        Mode::Address => print_addresses(transport, &mut cfg),
        Mode::Listen(address, socket) => serve(transport, &cfg, &address, &socket),
    }
}

fn decode(address: &OsStr) -> Result<String, Error> {
    Ok(addr::decode_arg(address.as_bytes())?)
}

fn connect(transport: Transport, cfg: &Config, address: &OsStr) -> Result<(), Error> {
    let address = decode(address)?;
    let peer = match transport {
        Transport::Tcp => {
            let target = HostPort::parse(&address)?;
            let timeout = tcp::connect_timeout(cfg, tcp::DEFAULT_CONNECT_TIMEOUT)?;
            let sock = tcp::connect(&target, || Ok(timeout))?;
            apply_user_timeout(&sock, cfg)?;
            End::Socket(sock.into())
        }
        Transport::Socks => {
            let target = HostPort::parse(&address)?;
            let settings = socks::Settings::from_config(cfg)?;
            let sock = socks::connect(&settings, &target)?;
            // Only a TCP proxy has a user timeout; a unix socket refuses it.
            let _ = sys::set_user_timeout(&sock, tcp::user_timeout(cfg)?);
            End::Socket(sock)
        }
        Transport::UnixSockets => {
            // A listener whose backlog is full must not hang us.
            let timeout = tcp::connect_timeout(cfg, tcp::DEFAULT_CONNECT_TIMEOUT)?;
            End::Socket(unix::connect(cfg, &address, timeout)?)
        }
        Transport::Onion => {
            let sock = onion::connect(cfg, &HostPort::parse(&address)?, None)?;
            let _ = sys::set_user_timeout(&sock, tcp::user_timeout(cfg)?);
            End::Socket(sock)
        }
    };
    relay_stdio(peer)
}

fn apply_user_timeout(sock: &impl AsFd, cfg: &Config) -> Result<(), Error> {
    sys::set_user_timeout(sock, tcp::user_timeout(cfg)?)
        .map_err(|e| Error::io("cannot set the user timeout", e))
}

/// How long a fast-path connection runs before connect mode reads its
/// configured `user-timeout` (see `user_timeout_later`).
const USER_TIMEOUT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The fast path connected before reading configuration, with the default
/// user timeout (two minutes) already on the socket. A configured
/// `user-timeout` still applies: a thread reads configuration once the
/// connection has run for a second and sets it on the live socket. That
/// keeps `git config` off the critical path of start-up (BENCHMARKS.md), and
/// a connection that is over within the second (most are) never runs git
/// at all; a dead peer is still given up within the configured bound plus
/// that second, and the default bound holds before. A bad value is
/// reported and the default kept: the relay is already under way.
fn user_timeout_later(sock: &std::net::TcpStream, netname: &str) {
    let Ok(sock) = sock.try_clone() else { return };
    let netname = netname.to_string();
    let _ = std::thread::Builder::new()
        .name("config".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // The process exits when the relay ends, this thread with it.
            std::thread::sleep(USER_TIMEOUT_AFTER);
            let applied = Config::load(&netname).and_then(|cfg| apply_user_timeout(&sock, &cfg));
            if let Err(e) = applied {
                eprintln!("p2p-annex: {netname}: {e}");
            }
        });
}

/// Connect mode's relay: our stdin and stdout to the peer.
fn relay_stdio(peer: End) -> Result<(), Error> {
    let outcome = relay::run(&End::Stdio, &peer).map_err(Error::Relay)?;
    match outcome.error {
        None => Ok(()),
        Some(e) => Err(Error::Relay(e)),
    }
}

fn print_addresses(transport: Transport, cfg: &mut Config) -> Result<(), Error> {
    let lines = match transport {
        Transport::Tcp => tcp::addresses(cfg)?,
        Transport::Socks => socks::addresses(cfg)?,
        Transport::UnixSockets => vec![unix::new_token()],
        Transport::Onion => onion::addresses(cfg)?,
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").map_err(|e| Error::io("cannot write the addresses", e))?;
    }
    out.flush()
        .map_err(|e| Error::io("cannot write the addresses", e))
}

fn serve(transport: Transport, cfg: &Config, address: &OsStr, socket: &Path) -> Result<(), Error> {
    // Asked once: the default log and the status socket live under it.
    let git_dir = crate::config::git_dir();
    let log = Arc::new(listener_log(cfg, git_dir.as_deref()));
    log.line(format_args!(
        "starting p2p-annex {} for {} (log: {})",
        env!("CARGO_PKG_VERSION"),
        address.to_string_lossy(),
        log.destination()
    ));
    let result = listen_on(transport, cfg, address, socket, git_dir.as_deref(), &log);
    if let Err(e) = &result {
        log.line(format_args!("exiting: {e}"));
    }
    result
}

fn listen_on(
    transport: Transport,
    cfg: &Config,
    address: &OsStr,
    socket: &Path,
    git_dir: Option<&Path>,
    log: &Arc<Log>,
) -> Result<(), Error> {
    let address = decode(address)?;
    let mut opts = listen::Options::from_config(cfg)?;
    opts.label = format!("{}\t{address}", cfg.netname());
    opts.control = git_dir.map(|dir| crate::status::control_path(dir, cfg.netname()));
    let endpoints = match transport {
        Transport::Tcp => tcp::endpoints(cfg, &HostPort::parse(&address)?)?,
        Transport::Socks => socks::endpoints(cfg, &HostPort::parse(&address)?)?,
        Transport::Onion => {
            // Every peer arrives from tor, on loopback: an allow-list
            // would judge tor, not the peer.
            if !opts.allow.is_empty() {
                return Err(cfg.bad_value(
                    "allow",
                    &cfg.get_all("allow").join(" "),
                    "nothing: onion peers all arrive from tor, on loopback",
                ));
            }
            let listener = onion::listener(cfg, &HostPort::parse(&address)?, log)?;
            return listen::serve(
                vec![Endpoint::Ready(Listener::Tcp(listener))],
                socket,
                &opts,
                Arc::clone(log),
            );
        }
        Transport::UnixSockets => {
            if !opts.allow.is_empty() {
                return Err(cfg.bad_value(
                    "allow",
                    &cfg.get_all("allow").join(" "),
                    "nothing: unix-sockets peers have no network address",
                ));
            }
            let path = unix::path(cfg, &address)?;
            let listener = unix::listener(&path)?;
            let bound = unix::Bound::new(&path);
            let result = listen::serve(
                vec![Endpoint::Ready(Listener::Unix(listener))],
                socket,
                &opts,
                Arc::clone(log),
            );
            bound.remove();
            return result;
        }
    };
    let endpoints = endpoints
        .into_iter()
        .map(|at| Endpoint::Later {
            shown: tcp::show(&at),
            bind: Box::new(move || {
                tcp::bind_all(&at).map(|ls| ls.into_iter().map(Listener::Tcp).collect())
            }),
        })
        .collect();
    listen::serve(endpoints, socket, &opts, Arc::clone(log))
}

/// Listen mode's log: stderr, unless stderr goes nowhere (remotedaemon
/// gives us /dev/null), we run under `p2p-annex serve`, or `log` names a
/// file. The default file is
/// `.git/annex/p2p-annex.<netname>.log`, beside git-annex's own files.
fn listener_log(cfg: &Config, git_dir: Option<&Path>) -> Log {
    let netname = cfg.netname();
    let path = match cfg.get("log") {
        Some(path) => Some(std::path::PathBuf::from(path)),
        // Under `p2p-annex serve` stderr is serve's pipe: the listener
        // keeps its own file, which `check` and `status` read.
        None if sys::stderr_goes_nowhere() || std::env::var_os(crate::serve::ENV_VAR).is_some() => {
            git_dir.map(|dir| dir.join("annex").join(format!("p2p-annex.{netname}.log")))
        }
        None => None,
    };
    let Some(path) = path else {
        return Log::stderr(netname);
    };
    let refused =
        log_dir_problem(&path, git_dir).map(|problem| format!("refusing its directory: {problem}"));
    match refused.map_or_else(
        || Log::file(netname, &path).map_err(|e| crate::error::describe(&e)),
        Err,
    ) {
        Ok(log) => log,
        Err(why) => {
            let log = Log::stderr(netname);
            log.line(format_args!(
                "cannot open the log file {}: {why}",
                path.display()
            ));
            log
        }
    }
}

/// Why the directory of a log outside the repository is no place for it,
/// if it is not: another user could plant or swap files there (a shared
/// /tmp, say). The repository's own directories are the user's business.
fn log_dir_problem(path: &Path, git_dir: Option<&Path>) -> Option<String> {
    if git_dir.is_some_and(|g| path.starts_with(g)) {
        return None;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match crate::trust::dir_problem(dir, crate::trust::Owner::MeOrRoot) {
        Ok(problem) => problem,
        Err(e) => Some(crate::error::describe(&e)),
    }
}
