//! The `onion` transport: a Tor onion service made through tor's control
//! port, without root and without editing torrc. Address mode asks tor for
//! a new v3 key once and keeps it under `.git/annex/`; listen mode
//! registers that key for as long as it runs (no `Detach`: the service
//! goes when our control connection goes) and re-registers when tor
//! restarts; connect mode goes through tor's SOCKS port with the `socks`
//! transport's code. The protocol itself is in `torcontrol`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Address, Form, Transport};
use crate::addr::{Host, HostPort};
use crate::config::Config;
use crate::error::{Error, describe};
use crate::listen::{self, Endpoint, Listener};
use crate::log::Log;
use crate::net::{socks, tcp, unix};
use crate::private_file::{create_private, read_small};
use crate::torcontrol::{self as tc, Key, ProtoError, Reply};

/// Where Debian's system tor puts its control socket, then tor's usual
/// control port (tor's manual, ControlPort/ControlSocket).
pub const DEFAULT_CONTROLS: [&str; 2] = ["unix:/run/tor/control", "127.0.0.1:9051"];
/// Tor's default SocksPort.
pub const DEFAULT_PROXY: &str = "127.0.0.1:9050";
/// Each exchange with the control port; tor answers at once.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Re-registration back-off after tor went away: from 1 s, doubling, to 30 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The `onion` transport (see `net`'s table).
pub const TRANSPORT: Transport = Transport {
    name: "onion",
    form: Form::HostPort,
    connect: |cfg, address, cap| {
        let cfg = cfg.get()?;
        let sock = connect(cfg, address.host_port()?, cap)?;
        if cap.is_none() {
            // Only a TCP proxy has a user timeout; a unix socket refuses it.
            let _ = crate::sys::set_user_timeout(&sock, tcp::user_timeout(cfg)?);
        }
        Ok(sock)
    },
    connect_stdio: None,
    addresses,
    listen: listen_on,
    reach_fix: |cfg, peer| {
        format!(
            "check that tor runs and its SOCKS port ({}) answers; a new onion service takes \
             a minute or two to be reachable; {peer}",
            cfg.get("proxy").unwrap_or(DEFAULT_PROXY)
        )
    },
};

/// Listen mode: every peer arrives from tor, on loopback, so an allow-list
/// would judge tor, not the peer.
fn listen_on(
    cfg: &Config,
    address: &Address,
    opts: &listen::Options,
    socket: &Path,
    log: &Arc<Log>,
) -> Result<(), Error> {
    super::refuse_allow_list(cfg, opts, "onion peers all arrive from tor, on loopback")?;
    let local = listener(cfg, address.host_port()?, log)?;
    listen::serve(
        vec![Endpoint::Ready(Listener::Tcp(local))],
        socket,
        opts,
        Arc::clone(log),
    )
}

/// Debian's system tor gives its control socket and cookie to the group
/// debian-tor.
const DEBIAN_GROUP_HINT: &str = " (for Debian's system tor, join the debian-tor group: \
     `sudo adduser $USER debian-tor`, then log in again)";

/// How tor's control port is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    Tcp(HostPort),
    Unix(PathBuf),
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAddr::Tcp(hp) => write!(f, "{hp}"),
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

fn parse_control(v: &str) -> Option<ControlAddr> {
    if let Some(path) = v.strip_prefix("unix:") {
        return path
            .starts_with('/')
            .then(|| ControlAddr::Unix(PathBuf::from(path)));
    }
    HostPort::parse(v).ok().map(ControlAddr::Tcp)
}

/// The configured control port, or the defaults in order.
pub fn controls(cfg: &Config) -> Result<Vec<ControlAddr>, Error> {
    match cfg.get("control") {
        Some(v) => Ok(vec![parse_control(v.trim()).ok_or_else(|| {
            cfg.bad_value("control", v, "HOST:PORT or unix:/PATH, e.g. 127.0.0.1:9051")
        })?]),
        None => Ok(DEFAULT_CONTROLS
            .iter()
            .filter_map(|v| parse_control(v))
            .collect()),
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An authenticated control connection.
pub struct Control {
    stream: Stream,
    buf: Vec<u8>,
    pub at: ControlAddr,
    /// How we authenticated, for the log and `check`.
    pub method: &'static str,
}

impl Control {
    /// Connect to the first control port that answers and authenticate as
    /// it offers.
    pub fn open(cfg: &Config) -> Result<Control, Error> {
        let mut missed = Vec::new();
        for at in controls(cfg)? {
            match Control::open_at(cfg, &at) {
                Ok(c) => return Ok(c),
                // Not there: try the next default. Anything else (a refused
                // password) is the answer.
                Err(e @ Error::Connect { .. }) => missed.push(e),
                Err(e) => return Err(e),
            }
        }
        if missed.len() == 1 {
            return Err(missed.remove(0));
        }
        // Every default missed: say what each said (the first may be the
        // useful one, a socket we may not open).
        Err(Error::Config(format!(
            "cannot reach tor's control port ({}); start tor, or set {} to its \
             control port (HOST:PORT or unix:/PATH)",
            missed
                .iter()
                .map(|e| match e {
                    Error::Connect { target, cause } => format!("{target}: {}", describe(cause)),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            cfg.name("control")
        )))
    }

    fn open_at(cfg: &Config, at: &ControlAddr) -> Result<Control, Error> {
        let stream = match at {
            ControlAddr::Tcp(hp) => Stream::Tcp(tcp::connect(hp, || Ok(CONTROL_TIMEOUT)).map_err(
                |e| match e {
                    Error::Connect { target, cause } => Error::Connect {
                        target: format!("tor's control port {target}"),
                        cause,
                    },
                    other => other,
                },
            )?),
            ControlAddr::Unix(path) => Stream::Unix(UnixStream::from(
                unix::connect_within(path, CONTROL_TIMEOUT).map_err(|cause| {
                    // A socket is there but not for us: that is the answer
                    // (the system tor), not a reason to try the next default.
                    if cause.kind() == io::ErrorKind::PermissionDenied {
                        return Error::Tor {
                            control: at.to_string(),
                            problem: format!(
                                "cannot connect: {}{DEBIAN_GROUP_HINT}",
                                describe(&cause)
                            ),
                        };
                    }
                    Error::Connect {
                        target: format!("tor's control socket {}", path.display()),
                        cause,
                    }
                })?,
            )),
        };
        let mut c = Control {
            stream,
            buf: Vec::new(),
            at: at.clone(),
            method: "",
        };
        c.stream
            .set_timeout(Some(CONTROL_TIMEOUT))
            .map_err(|e| c.fail(format!("cannot set a timeout: {}", describe(&e))))?;
        c.method = c.authenticate(cfg)?;
        Ok(c)
    }

    fn fail(&self, problem: impl Into<String>) -> Error {
        Error::Tor {
            control: self.at.to_string(),
            problem: problem.into(),
        }
    }

    fn proto(&self, e: ProtoError) -> Error {
        self.fail(e.to_string())
    }

    /// Send one command, read its reply.
    pub fn command(&mut self, line: &[u8]) -> Result<Reply, Error> {
        self.stream
            .io()
            .write_all(line)
            .map_err(|e| self.fail(format!("cannot send a command: {}", describe(&e))))?;
        self.reply()
    }

    fn reply(&mut self) -> Result<Reply, Error> {
        loop {
            match tc::parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(self.proto(e)),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.io().read(&mut chunk) {
                Ok(0) => return Err(self.fail("tor closed the control connection")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            format!("no answer within {}s", CONTROL_TIMEOUT.as_secs())
                        }
                        _ => describe(&e),
                    };
                    return Err(self.fail(format!("cannot read tor's reply: {why}")));
                }
            }
        }
    }

    /// PROTOCOLINFO, then the best method tor offers that we can use
    /// (control-spec section 3.5): the password when one is configured
    /// and tor takes passwords, else SAFECOOKIE, COOKIE, NULL.
    fn authenticate(&mut self, cfg: &Config) -> Result<&'static str, Error> {
        let reply = self.command(tc::protocolinfo())?;
        let info = tc::parse_protocolinfo(&reply).map_err(|e| self.proto(e))?;
        let offers = |m: &str| info.methods.iter().any(|x| x == m);
        let password = cfg.get("control-password");
        let pw_key = cfg.name("control-password");
        let (method, secret): (&'static str, Option<Vec<u8>>) =
            if let (Some(pw), true) = (password, offers("HASHEDPASSWORD")) {
                ("HASHEDPASSWORD", Some(pw.as_bytes().to_vec()))
            } else if let (true, Some(file)) = (offers("SAFECOOKIE"), &info.cookie_file) {
                let cookie = self.read_cookie(file)?;
                let nonce = random_nonce()
                    .map_err(|e| self.fail(format!("cannot make a nonce: {}", describe(&e))))?;
                let reply = self.command(&tc::authchallenge(&nonce))?;
                let challenge = tc::parse_authchallenge(&reply).map_err(|e| self.proto(e))?;
                let answer = tc::safecookie_response(&cookie, &nonce, &challenge)
                    .map_err(|e| self.proto(e))?;
                ("SAFECOOKIE", Some(answer.to_vec()))
            } else if let (true, Some(file)) = (offers("COOKIE"), &info.cookie_file) {
                ("COOKIE", Some(self.read_cookie(file)?))
            } else if offers("NULL") {
                ("NULL", None)
            } else if offers("HASHEDPASSWORD") {
                return Err(self.fail(format!("tor wants a control-port password: set {pw_key}")));
            } else {
                return Err(self.fail(format!(
                    "tor offers no authentication method we know ({})",
                    info.methods.join(",")
                )));
            };
        let reply = self.command(&tc::authenticate(secret.as_deref()))?;
        reply.ok().map_err(|e| {
            let hint = match method {
                "HASHEDPASSWORD" => format!(" (check {pw_key})"),
                _ => String::new(),
            };
            self.fail(format!("{method} authentication failed: {e}{hint}"))
        })?;
        Ok(method)
    }

    /// The cookie tor named; unreadable, it needs a hint (Debian's system
    /// tor makes it readable to the debian-tor group).
    fn read_cookie(&self, file: &str) -> Result<Vec<u8>, Error> {
        let cookie = std::fs::read(file).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                DEBIAN_GROUP_HINT
            } else {
                ""
            };
            self.fail(format!(
                "cannot read the cookie file {file}: {}{hint}",
                describe(&e)
            ))
        })?;
        if cookie.len() != tc::COOKIE_LEN {
            return Err(self.fail(format!(
                "the cookie file {file} holds {} bytes, not {}",
                cookie.len(),
                tc::COOKIE_LEN
            )));
        }
        Ok(cookie)
    }

    /// Register an onion service: new key when `key` is None.
    pub fn add_onion(
        &mut self,
        key: Option<&Key>,
        vport: u16,
        target: SocketAddr,
    ) -> Result<tc::Added, Error> {
        let reply = self.command(&tc::add_onion(key, vport, &target.to_string()))?;
        tc::parse_add_onion(&reply).map_err(|e| self.fail(format!("ADD_ONION failed: {e}")))
    }

    /// Block until tor closes the connection (it restarted or stopped);
    /// anything it sends meanwhile is read and dropped.
    fn wait_closed(&mut self) -> String {
        if self.stream.set_timeout(None).is_err() {
            return "cannot watch the control connection".into();
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.io().read(&mut chunk) {
                Ok(0) => return "tor closed the control connection".into(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return format!("the control connection failed: {}", describe(&e)),
            }
        }
    }
}

fn random_nonce() -> io::Result<[u8; tc::NONCE_LEN]> {
    let mut n = [0u8; tc::NONCE_LEN];
    File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// The key file and the service-id file of this netname, under
/// `.git/annex/` beside git-annex's own files.
pub struct Files {
    pub key: PathBuf,
    pub id: PathBuf,
}

pub fn files(cfg: &Config) -> Result<Files, Error> {
    let dir = crate::config::git_dir()
        .ok_or_else(|| {
            Error::Config("the onion netname works only inside a git repository".into())
        })?
        .join("annex");
    let n = cfg.netname();
    Ok(Files {
        key: dir.join(format!("p2p-annex.{n}.key")),
        id: dir.join(format!("p2p-annex.{n}.id")),
    })
}

/// The stored key; its content never enters a message.
pub fn stored_key(files: &Files) -> Result<Option<Key>, Error> {
    match read_small(&files.key)? {
        None => Ok(None),
        Some(text) => Key::parse(&text).map(Some).map_err(|e| Error::Untrusted {
            path: files.key.display().to_string(),
            problem: e.to_string(),
        }),
    }
}

fn stored_id(files: &Files) -> Result<Option<String>, Error> {
    Ok(read_small(&files.id)?
        .map(|s| s.trim().to_string())
        .filter(|s| tc::is_service_id(s)))
}

/// The virtual port: configured, or picked once and stored.
fn port(cfg: &mut Config) -> Result<u16, Error> {
    if let Some(p) = cfg.get("port") {
        return crate::addr::parse_port(p.trim())
            .map_err(|_| cfg.bad_value("port", p, "a port, 1-65535"));
    }
    let port = 10000 + (crate::sys::random_u64() % 50000) as u16;
    cfg.set("port", &port.to_string())?;
    Ok(port)
}

/// Address mode: `<service id>.onion:PORT`, making the key on the first run.
pub fn addresses(cfg: &mut Config) -> Result<Vec<String>, Error> {
    let files = files(cfg)?;
    let port = port(cfg)?;
    let id = match (stored_id(&files)?, stored_key(&files)?) {
        (Some(id), Some(_)) => id,
        // The id file is lost: tor tells the id of the key again.
        (_, Some(key)) => {
            let mut c = Control::open(cfg)?;
            let id = c.add_onion(Some(&key), port, discard_target())?.service_id;
            create_private(&files.id, &format!("{id}\n"))?;
            id
        }
        (_, None) => {
            let mut c = Control::open(cfg)?;
            let added = c.add_onion(None, port, discard_target())?;
            let key = added
                .key
                .ok_or_else(|| c.fail("ADD_ONION returned no private key"))?;
            let _ = std::fs::remove_file(&files.id);
            create_private(&files.key, &key.file_text())?;
            create_private(&files.id, &format!("{}\n", added.service_id))?;
            // Closing the connection removes this short-lived registration.
            added.service_id
        }
    };
    Ok(vec![format!("{id}.onion:{port}")])
}

/// Where address mode's brief registration points: nothing listens there.
fn discard_target() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 9))
}

/// The service id of `<id>.onion`.
fn service_id(target: &HostPort) -> Option<&str> {
    match &target.host {
        Host::Name(n) => n.strip_suffix(".onion").filter(|id| tc::is_service_id(id)),
        _ => None,
    }
}

/// Connect mode: through tor's SOCKS port, the onion name as a domain.
/// `cap` shortens the configured timeout (`p2p-annex check`).
pub fn connect(cfg: &Config, target: &HostPort, cap: Option<Duration>) -> Result<OwnedFd, Error> {
    if service_id(target).is_none() {
        return Err(Error::Usage(format!(
            "{target} is not a v3 onion address (<56 characters>.onion:PORT)"
        )));
    }
    let mut settings = socks::Settings::with_default_proxy(cfg, DEFAULT_PROXY)?;
    if let Some(cap) = cap {
        settings.cap_timeout(cap);
    }
    socks::connect(&settings, target)
}

/// Listen mode's endpoint: a loopback port of our own, which tor (the
/// system's, running as another user) can reach, and the thread that keeps
/// the onion service registered with tor pointing at it.
pub fn listener(cfg: &Config, target: &HostPort, log: &Arc<Log>) -> Result<TcpListener, Error> {
    let files = files(cfg)?;
    let key = stored_key(&files)?.ok_or_else(|| {
        Error::Config(format!(
            "no onion key in {}: run `git annex p2p --enable {}` (address mode makes it)",
            files.key.display(),
            cfg.netname()
        ))
    })?;
    let ours = stored_id(&files)?;
    let id = service_id(target);
    if id.is_none() || ours.as_deref() != id {
        return Err(Error::Config(format!(
            "{target} is not this repository's onion service ({})",
            ours.map_or("none stored".into(), |o| format!("{o}.onion"))
        )));
    }
    let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|cause| Error::Bind {
        target: "127.0.0.1:0".into(),
        cause,
    })?;
    let at = local
        .local_addr()
        .map_err(|e| Error::io("cannot read the local address", e))?;
    let cfg = cfg.clone();
    let vport = target.port;
    let log = Arc::clone(log);
    let shown = target.to_string();
    std::thread::Builder::new()
        .name("tor-control".into())
        .spawn(move || keep_registered(&cfg, &key, vport, at, &shown, &log))
        .map_err(|e| Error::io("cannot start the control thread", e))?;
    Ok(local)
}

/// Register, hold the control connection, and register again whenever it
/// is lost, backing off while tor is away. Runs until the process exits,
/// which closes the connection and so removes the service.
fn keep_registered(cfg: &Config, key: &Key, vport: u16, at: SocketAddr, shown: &str, log: &Log) {
    let mut wait = RETRY_FIRST;
    loop {
        let started = Instant::now();
        let registered = Control::open(cfg).and_then(|mut c| {
            c.add_onion(Some(key), vport, at)?;
            Ok(c)
        });
        match registered {
            Ok(mut c) => {
                log.line(format_args!(
                    "onion service {shown} registered with tor at {} ({} auth, {} ms), \
                     forwarding to {at}",
                    c.at,
                    c.method,
                    started.elapsed().as_millis()
                ));
                wait = RETRY_FIRST;
                let why = c.wait_closed();
                log.line(format_args!("{why}; registering {shown} again"));
            }
            Err(e) => {
                log.line(format_args!(
                    "cannot register {shown} with tor: {e}; retrying in {}s",
                    wait.as_secs()
                ));
                std::thread::sleep(wait);
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// What `p2p-annex check` found out from tor.
pub struct Probe {
    pub control: String,
    pub method: &'static str,
    /// Whether another control connection (a listener) holds this
    /// repository's service; None without a stored key.
    pub registered: Option<bool>,
}

/// Reach and authenticate to the control port, and ask whether a listener
/// holds the stored key's service: tor refuses to add a key that another
/// connection holds ("550 Onion address collision"). When nobody holds
/// it, the probe's own registration, pointing nowhere, goes with its
/// connection a moment later.
pub fn probe(cfg: &Config) -> Result<Probe, Error> {
    let mut c = Control::open(cfg)?;
    let registered = match stored_key(&files(cfg)?)? {
        None => None,
        Some(key) => {
            let reply = c.command(&tc::add_onion(Some(&key), 1, &discard_target().to_string()))?;
            match reply.ok() {
                Ok(_) => Some(false),
                Err(ProtoError::Refused { code: 550, text }) if text.contains("collision") => {
                    Some(true)
                }
                Err(e) => return Err(c.fail(format!("ADD_ONION failed: {e}"))),
            }
        }
    };
    Ok(Probe {
        control: c.at.to_string(),
        method: c.method,
        registered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_values() {
        assert_eq!(
            parse_control("unix:/run/tor/control"),
            Some(ControlAddr::Unix("/run/tor/control".into()))
        );
        assert_eq!(
            parse_control("127.0.0.1:9051").map(|c| c.to_string()),
            Some("127.0.0.1:9051".into())
        );
        assert_eq!(parse_control("unix:rel"), None);
        assert_eq!(parse_control("9051"), None);
        let cfg = Config::from_entries("onion", vec![]);
        assert_eq!(controls(&cfg).unwrap().len(), 2);
    }

    #[test]
    fn only_v3_onion_names_are_targets() {
        let id = "zkvvh6psaoptpaky3p5tptgvwz6ykzwley7ci4oeusuoso54bq4pl2qd";
        let ok = HostPort::parse(&format!("{id}.onion:80")).unwrap();
        assert_eq!(service_id(&ok), Some(id));
        for bad in ["example.com:80", "127.0.0.1:80", "abc.onion:80"] {
            assert_eq!(service_id(&HostPort::parse(bad).unwrap()), None, "{bad}");
        }
    }
}
