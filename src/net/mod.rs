//! The transports, and which one a netname uses.
//!
//! Every transport is one file here that defines a `TRANSPORT`: its name,
//! the form of its addresses, and what each mode does (connect, address,
//! listen) plus what `check` suggests when a peer cannot be reached. The
//! address git-annex passes is decoded and parsed once, here, into the
//! transport's form (`Address`); connect mode and `check` reach peers
//! through the same `connect`.
//!
//! To add a transport (say `i2p`):
//! 1. write `net/i2p.rs` with `pub const TRANSPORT: Transport`, whose
//!    functions take the address in its parsed form (`Address::host_port`
//!    or `Address::token`);
//! 2. add `pub mod i2p;` below and `&i2p::TRANSPORT` to `TRANSPORTS`
//!    (`onion` is the latest example).
//!
//! Its name becomes a built-in netname and a value of
//! `p2p-annex.<netname>.transport`; `check` and the error messages list
//! it. Docs: README, man/p2p-annex.1 and a man page of its own, and
//! `make install`'s links (Makefile).

pub mod fowl;
pub mod onion;
pub mod socks;
pub mod tcp;
pub mod unix;

use std::cell::OnceCell;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::{self, HostPort};
use crate::cli::Mode;
use crate::config::Config;
use crate::error::Error;
use crate::listen;
use crate::log::Log;
use crate::relay::{self, End};
use crate::sys;

/// Every transport, in the order messages list them.
pub const TRANSPORTS: &[&Transport] = &[
    &tcp::TRANSPORT,
    &socks::TRANSPORT,
    &unix::TRANSPORT,
    &onion::TRANSPORT,
    &fowl::TRANSPORT,
];

/// What a transport does. Its functions get the address already parsed
/// into the transport's `Form`.
pub struct Transport {
    /// The built-in netname, and the value of `p2p-annex.<netname>.transport`.
    pub name: &'static str,
    /// The form of its addresses.
    pub form: Form,
    /// Reach a peer. `cap` bounds the time it may take (`check`); None is
    /// connect mode, which also sets the socket's user timeout.
    pub connect: fn(&LazyConfig, &Address, Option<Duration>) -> Result<OwnedFd, Error>,
    /// Connect mode, when the transport relays stdin and stdout itself
    /// (fowl watches its wormhole beside the relay); None: `connect`, then
    /// the common relay.
    pub connect_stdio: Option<ConnectStdio>,
    /// Address mode: the lines to print.
    pub addresses: fn(&mut Config) -> Result<Vec<String>, Error>,
    /// Listen mode: serve peers at the address, relaying each to `socket`,
    /// until stopped (see `listen::serve`).
    pub listen: Listen,
    /// What `check` suggests when a peer cannot be reached; `peer` is the
    /// advice about the peer itself.
    pub reach_fix: fn(&Config, &str) -> String,
}

/// Connect mode of a transport that relays itself: (its configuration,
/// the address).
pub type ConnectStdio = fn(&LazyConfig, &Address) -> Result<(), Error>;

/// Listen mode of a transport: (its configuration, the address, the
/// listener's options, git-annex's socket, the log).
pub type Listen = fn(&Config, &Address, &listen::Options, &Path, &Arc<Log>) -> Result<(), Error>;

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The forms addresses take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `HOST:PORT`, IPv6 without brackets (git-annex cannot use them).
    HostPort,
    /// A token naming a socket file.
    Token,
    /// `<secret>@<mailbox URL>` (`fowlcode`).
    Fowl,
}

/// An address in its transport's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    HostPort(HostPort),
    Token(String),
    Fowl(crate::fowlcode::Address),
}

impl Form {
    /// Parse an address git-annex passes, percent-decoded already.
    pub fn parse(self, address: &str) -> Result<Address, Error> {
        Ok(match self {
            Form::HostPort => Address::HostPort(HostPort::parse(address)?),
            Form::Token => Address::Token(addr::parse_token(address)?.to_string()),
            Form::Fowl => {
                Address::Fowl(crate::fowlcode::Address::parse(address).map_err(Error::Usage)?)
            }
        })
    }

    /// An address of this form as logs, `status` and messages may show
    /// it: a fowl address's secret is replaced by a fingerprint.
    pub fn shown(self, address: &str) -> String {
        match self {
            // Unparsable, it may still hold the secret.
            Form::Fowl
                if !address.contains('@') && crate::fowlcode::Address::parse(address).is_err() =>
            {
                "(an address that is not a fowl address)".into()
            }
            Form::Fowl => crate::fowlcode::shown(address),
            Form::HostPort | Form::Token => address.to_string(),
        }
    }
}

impl Address {
    /// The address of a `Form::HostPort` transport.
    pub fn host_port(&self) -> Result<&HostPort, Error> {
        match self {
            Address::HostPort(hp) => Ok(hp),
            Address::Token(t) => Err(Error::Usage(format!("{t:?} is not a HOST:PORT address"))),
            Address::Fowl(a) => Err(Error::Usage(format!(
                "{} is not a HOST:PORT address",
                a.shown()
            ))),
        }
    }

    /// The address of a `Form::Token` transport.
    pub fn token(&self) -> Result<&str, Error> {
        match self {
            Address::Token(t) => Ok(t),
            Address::HostPort(hp) => Err(Error::Usage(format!("{hp} is not a token"))),
            Address::Fowl(a) => Err(Error::Usage(format!("{} is not a token", a.shown()))),
        }
    }

    /// The address of a `Form::Fowl` transport.
    pub fn fowl(&self) -> Result<&crate::fowlcode::Address, Error> {
        match self {
            Address::Fowl(a) => Ok(a),
            other => Err(Error::Usage(format!("{other:?} is not a fowl address"))),
        }
    }
}

/// A netname's configuration, read when first needed: connect mode of the
/// built-in tcp network reads it only if the connection does not come up
/// at once (see `tcp::connect`).
pub struct LazyConfig {
    netname: String,
    cfg: OnceCell<Config>,
}

impl LazyConfig {
    pub fn new(netname: &str) -> LazyConfig {
        LazyConfig {
            netname: netname.to_string(),
            cfg: OnceCell::new(),
        }
    }

    /// One read already.
    pub fn loaded(cfg: Config) -> LazyConfig {
        LazyConfig {
            netname: cfg.netname().to_string(),
            cfg: OnceCell::from(cfg),
        }
    }

    pub fn netname(&self) -> &str {
        &self.netname
    }

    /// The configuration, read now if it was not yet.
    pub fn get(&self) -> Result<&Config, Error> {
        if let Some(cfg) = self.cfg.get() {
            return Ok(cfg);
        }
        let cfg = Config::load(&self.netname)?;
        Ok(self.cfg.get_or_init(|| cfg))
    }

    /// The configuration if it has been read.
    pub fn if_loaded(&self) -> Option<&Config> {
        self.cfg.get()
    }
}

impl Transport {
    /// Built-in netnames name their transport; any other netname takes it
    /// from `p2p-annex.<netname>.transport`.
    pub fn for_netname(cfg: &Config) -> Result<&'static Transport, Error> {
        if let Some(builtin) = Transport::named(cfg.netname()) {
            return Ok(builtin);
        }
        let names: Vec<&str> = TRANSPORTS.iter().map(|t| t.name).collect();
        match cfg.get("transport") {
            Some(name) => Transport::named(name.trim())
                .ok_or_else(|| cfg.bad_value("transport", name, &one_of(&names))),
            None => Err(Error::Usage(format!(
                "unknown netname {:?}: set its transport with `git config {} socks` \
                 ({}), and its settings under p2p-annex.{}.* \
                 (netnames here: {})",
                cfg.netname(),
                cfg.name("transport"),
                names
                    .iter()
                    .filter(|&&n| n != "socks")
                    .map(|n| format!("or {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                cfg.netname(),
                names
                    .iter()
                    .copied()
                    .chain(cfg.defined_netnames().iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The transport of this name, if there is one.
    pub fn named(name: &str) -> Option<&'static Transport> {
        TRANSPORTS.iter().copied().find(|t| t.name == name)
    }
}

/// `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Run one mode of one netname.
pub fn run(netname: &str, mode: Mode) -> Result<(), Error> {
    let cfg = LazyConfig::new(netname);
    match mode {
        Mode::Connect(address) => {
            // A built-in netname needs no configuration to know its
            // transport, nor (tcp) to connect.
            let transport = match Transport::named(netname) {
                Some(t) => t,
                None => Transport::for_netname(cfg.get()?)?,
            };
            let address = transport.form.parse(&decode(&address)?)?;
            if let Some(connect_stdio) = transport.connect_stdio {
                return connect_stdio(&cfg, &address);
            }
            let peer = (transport.connect)(&cfg, &address, None)?;
            relay_stdio(End::Socket(peer))
        }
        Mode::Address => {
            let mut cfg = Config::load(netname)?;
            let transport = Transport::for_netname(&cfg)?;
            print_addresses((transport.addresses)(&mut cfg)?)
        }
        Mode::Listen(address, socket) => {
            let cfg = cfg.get()?;
            serve(Transport::for_netname(cfg)?, cfg, &address, &socket)
        }
    }
}

fn decode(address: &OsStr) -> Result<String, Error> {
    Ok(addr::decode_arg(address.as_bytes())?)
}

/// Connect mode's relay: our stdin and stdout to the peer.
fn relay_stdio(peer: End) -> Result<(), Error> {
    let outcome = relay::run(&End::Stdio, &peer).map_err(Error::Relay)?;
    match outcome.error {
        None => Ok(()),
        Some(e) => Err(Error::Relay(e)),
    }
}

fn print_addresses(lines: Vec<String>) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").map_err(|e| Error::io("cannot write the addresses", e))?;
    }
    out.flush()
        .map_err(|e| Error::io("cannot write the addresses", e))
}

fn serve(transport: &Transport, cfg: &Config, address: &OsStr, socket: &Path) -> Result<(), Error> {
    // Asked once: the default log and the status socket live under it.
    let git_dir = crate::config::git_dir();
    let log = Arc::new(listener_log(cfg, git_dir.as_deref()));
    log.line(format_args!(
        "starting p2p-annex {} for {} (log: {})",
        env!("CARGO_PKG_VERSION"),
        transport.form.shown(&address.to_string_lossy()),
        log.destination()
    ));
    let result = listen_on(transport, cfg, address, socket, git_dir.as_deref(), &log);
    if let Err(e) = &result {
        log.line(format_args!("exiting: {e}"));
    }
    result
}

fn listen_on(
    transport: &Transport,
    cfg: &Config,
    address: &OsStr,
    socket: &Path,
    git_dir: Option<&Path>,
    log: &Arc<Log>,
) -> Result<(), Error> {
    let address = decode(address)?;
    let control: Option<PathBuf> =
        git_dir.map(|dir| crate::control::socket_path(dir, cfg.netname()));
    let opts = listen::Options::from_config(cfg, &transport.form.shown(&address), control)?;
    let address = transport.form.parse(&address)?;
    (transport.listen)(cfg, &address, &opts, socket, log)
}

/// Refuse an allow-list where peers have no address of their own to judge
/// (`why` says why, for the message).
pub(crate) fn refuse_allow_list(
    cfg: &Config,
    opts: &listen::Options,
    why: &str,
) -> Result<(), Error> {
    if opts.allow.is_empty() {
        return Ok(());
    }
    Err(cfg.bad_value(
        "allow",
        &cfg.get_all("allow").join(" "),
        &format!("nothing: {why}"),
    ))
}

/// Connect mode sets the user timeout of a TCP connection from
/// configuration; an error is a bad value.
pub(crate) fn apply_user_timeout(sock: &impl std::os::fd::AsFd, cfg: &Config) -> Result<(), Error> {
    sys::set_user_timeout(sock, tcp::user_timeout(cfg)?)
        .map_err(|e| Error::io("cannot set the user timeout", e))
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
            git_dir.map(|dir| crate::control::log_path(dir, netname))
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
