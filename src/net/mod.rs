//! The transports, and which one a netname uses.

pub mod socks;
pub mod tcp;
pub mod unix;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::addr::{self, HostPort};
use crate::cli::Mode;
use crate::config::Config;
use crate::error::Error;
use crate::listen::{self, Listener};
use crate::log::Log;
use crate::relay::{self, End};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Socks,
    UnixSockets,
}

impl Transport {
    /// Built-in netnames name their transport; any other netname takes it
    /// from `p2p-annex.<netname>.transport`.
    pub fn for_netname(cfg: &Config) -> Result<Transport, Error> {
        if let Some(builtin) = Transport::named(cfg.netname()) {
            return Ok(builtin);
        }
        match cfg.get("transport") {
            Some(name) => Transport::named(name.trim())
                .ok_or_else(|| cfg.bad_value("transport", name, "tcp, socks or unix-sockets")),
            None => Err(Error::Usage(format!(
                "unknown netname {:?}: set its transport with `git config {} socks` \
                 (or tcp, or unix-sockets), and its settings under p2p-annex.{}.*",
                cfg.netname(),
                cfg.name("transport"),
                cfg.netname()
            ))),
        }
    }

    fn named(name: &str) -> Option<Transport> {
        match name {
            "tcp" => Some(Transport::Tcp),
            "socks" => Some(Transport::Socks),
            "unix-sockets" => Some(Transport::UnixSockets),
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
        let timeout =
            || tcp::connect_timeout(&Config::load(netname)?, tcp::DEFAULT_CONNECT_TIMEOUT);
        return relay_stdio(End::Socket(tcp::connect(&target, timeout)?.into()));
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
            End::Socket(tcp::connect(&target, || Ok(timeout))?.into())
        }
        Transport::Socks => {
            let target = HostPort::parse(&address)?;
            let settings = socks::Settings::from_config(cfg)?;
            End::Socket(socks::connect(&settings, &target)?)
        }
        Transport::UnixSockets => {
            // A listener whose backlog is full must not hang us.
            let timeout = tcp::connect_timeout(cfg, tcp::DEFAULT_CONNECT_TIMEOUT)?;
            End::Socket(unix::connect(cfg, &address, timeout)?)
        }
    };
    relay_stdio(peer)
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
    let tcp_listeners =
        |ls: Vec<std::net::TcpListener>| ls.into_iter().map(Listener::Tcp).collect();
    let listeners = match transport {
        Transport::Tcp => tcp::listeners(cfg, &HostPort::parse(&address)?).map(tcp_listeners)?,
        Transport::Socks => {
            socks::listeners(cfg, &HostPort::parse(&address)?).map(tcp_listeners)?
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
                vec![Listener::Unix(listener)],
                socket,
                &opts,
                Arc::clone(log),
            );
            bound.remove();
            return result;
        }
    };
    listen::serve(listeners, socket, &opts, Arc::clone(log))
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
