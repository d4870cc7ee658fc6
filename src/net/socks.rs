//! The `socks` transport: networks reached through a SOCKS5 proxy (yggstack,
//! Tor, I2P, `ssh -D`). Connect mode asks the proxy to connect, by name, so
//! the proxy resolves `<key>.pk.ygg` or `<x>.onion`; listen mode accepts what
//! the network's daemon forwards to a local TCP port. The protocol itself is
//! in `socks5`; this module only moves its bytes, within a deadline.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollFlags;

use super::{Address, Form, LazyConfig, Transport};
use crate::addr::{Host, HostPort};
use crate::config::Config;
use crate::error::{Error, describe};
use crate::net::{tcp, unix};
use crate::socks5::{self, Dest, Parse, ProtoError, Stage};

/// Where yggstack's and `ssh -D`'s examples put their proxy.
pub const DEFAULT_PROXY: &str = "127.0.0.1:1080";

/// The proxy answers a connect request only once it has reached the peer
/// across its own network, and Tor's onion-service rendezvous can take tens
/// of seconds on a first contact: twice the tcp transport's budget.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where listen mode binds by default: the network's daemon forwards to a
/// loopback port (`yggstack -remote-tcp`, Tor's `HiddenServicePort`), and
/// nothing else should reach it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1";

/// How the proxy itself is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    Tcp(HostPort),
    /// `unix:/path`, as `yggstack -socks /path` gives.
    Unix(PathBuf),
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proxy::Tcp(hp) => write!(f, "{hp}"),
            Proxy::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What connect mode needs, read from configuration.
pub struct Settings {
    proxy: Proxy,
    /// The RFC 1929 request, built once. It holds the password: never
    /// printed, never logged.
    auth: Option<Vec<u8>>,
    timeout: Duration,
    /// Config key names of this netname, for hints in messages.
    user_key: String,
    password_key: String,
    timeout_key: String,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Result<Settings, Error> {
        Settings::with_default_proxy(cfg, DEFAULT_PROXY)
    }

    /// As `from_config`, with another proxy when none is configured (tor's
    /// 127.0.0.1:9050 for the onion transport).
    pub fn with_default_proxy(cfg: &Config, default: &str) -> Result<Settings, Error> {
        let proxy = match cfg.get("proxy") {
            None => Proxy::Tcp(HostPort::parse(default)?),
            Some(v) => parse_proxy(v.trim()).ok_or_else(|| {
                cfg.bad_value("proxy", v, "HOST:PORT or unix:/PATH, e.g. 127.0.0.1:1080")
            })?,
        };
        let (user_key, password_key) = (cfg.name("proxy-user"), cfg.name("proxy-password"));
        let auth = match (cfg.get("proxy-user"), cfg.get("proxy-password")) {
            (None, None) => None,
            (Some(user), Some(password)) => Some(
                socks5::auth_request(user.as_bytes(), password.as_bytes())
                    .map_err(|e| Error::Config(format!("{user_key}/{password_key}: {e}")))?,
            ),
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Config(format!(
                    "set both {user_key} and {password_key}, or neither"
                )));
            }
        };
        let timeout = tcp::connect_timeout(cfg, DEFAULT_CONNECT_TIMEOUT)?;
        Ok(Settings {
            proxy,
            auth,
            timeout,
            user_key,
            password_key,
            timeout_key: cfg.name("connect-timeout"),
        })
    }

    /// Give up sooner than configured (`p2p-annex check` waits 10 s at most).
    pub fn cap_timeout(&mut self, max: Duration) {
        self.timeout = self.timeout.min(max);
    }
}

/// `unix:/absolute/path` or `HOST:PORT`.
fn parse_proxy(v: &str) -> Option<Proxy> {
    if let Some(path) = v.strip_prefix("unix:") {
        // Connect mode runs wherever git-annex runs it: a relative path
        // would mean a different file in every repository.
        return path
            .starts_with('/')
            .then(|| Proxy::Unix(PathBuf::from(path)));
    }
    HostPort::parse(v).ok().map(Proxy::Tcp)
}

/// Connect to `target` through the proxy; the socket returned carries the
/// peer's bytes, ready for the relay. Everything up to there (reaching the
/// proxy, the handshake, the proxy reaching the peer) shares one deadline.
pub fn connect(s: &Settings, target: &HostPort) -> Result<OwnedFd, Error> {
    // Checked before anything touches the network.
    let request = socks5::connect_request(dest(&target.host)?, target.port)
        .map_err(|e| Error::Usage(format!("cannot use {target} through a SOCKS proxy: {e}")))?;
    let deadline = Instant::now() + s.timeout;
    let sock = match &s.proxy {
        Proxy::Tcp(hp) => tcp::connect(hp, || Ok(s.timeout))
            .map(OwnedFd::from)
            .map_err(|e| match e {
                Error::Connect { target, cause } => Error::Connect {
                    target: format!("proxy {target}"),
                    cause,
                },
                other => other,
            })?,
        Proxy::Unix(path) => {
            unix::connect_within(path, s.timeout).map_err(|cause| Error::Connect {
                target: format!("proxy {}", s.proxy),
                cause,
            })?
        }
    };
    let hs = Handshake {
        fd: sock.as_fd(),
        deadline,
        settings: s,
        target,
    };
    hs.send(Stage::Method, &socks5::greeting(s.auth.is_some()))?;
    let method = hs.recv(Stage::Method, |b| socks5::parse_method(b, s.auth.is_some()))?;
    if method == socks5::METHOD_USERPASS {
        // parse_method accepts this method only when we offered it.
        if let Some(auth) = &s.auth {
            hs.send(Stage::Auth, auth)?;
            hs.recv(Stage::Auth, socks5::parse_auth)?;
        }
    }
    hs.send(Stage::Connect, &request)?;
    hs.recv(Stage::Connect, socks5::parse_connect)?;
    Ok(sock)
}

/// IP literals go as addresses, anything else as a name for the proxy.
fn dest(host: &Host) -> Result<Dest<'_>, Error> {
    match host {
        Host::V4(ip) => Ok(Dest::V4(*ip)),
        Host::V6(ip, None) => Ok(Dest::V6(*ip)),
        // A zone names one of our interfaces; the proxy has others.
        Host::V6(ip, Some(zone)) => Err(Error::Usage(format!(
            "{ip}%{zone}: a zone index means nothing to a SOCKS proxy"
        ))),
        Host::Name(name) => Ok(Dest::Domain(name)),
    }
}

/// One handshake with the proxy, against the deadline.
struct Handshake<'a> {
    fd: BorrowedFd<'a>,
    deadline: Instant,
    settings: &'a Settings,
    target: &'a HostPort,
}

impl Handshake<'_> {
    fn fail(&self, problem: String) -> Error {
        Error::Proxy {
            proxy: self.settings.proxy.to_string(),
            problem,
        }
    }

    fn send(&self, stage: Stage, mut bytes: &[u8]) -> Result<(), Error> {
        let failed = |e: Errno| {
            self.fail(format!(
                "cannot send the {stage} request: {}",
                describe(&e.into())
            ))
        };
        while !bytes.is_empty() {
            if !self.ready(PollFlags::POLLOUT).map_err(failed)? {
                return Err(self.fail(format!(
                    "timed out sending the {stage} request ({})",
                    self.budget()
                )));
            }
            match nix::unistd::write(self.fd, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(())
    }

    /// Read a reply, exactly as many bytes as the parser asks for.
    fn recv<T>(
        &self,
        stage: Stage,
        parse: impl Fn(&[u8]) -> Result<Parse<T>, ProtoError>,
    ) -> Result<T, Error> {
        let mut buf = [0u8; socks5::MAX_REPLY];
        let mut have = 0;
        loop {
            let need = match parse(&buf[..have]) {
                Ok(Parse::Done(v)) => return Ok(v),
                Ok(Parse::Need(n)) => n.min(buf.len()),
                Err(e) => return Err(self.protocol_error(e)),
            };
            let failed = |e: Errno| {
                self.fail(format!(
                    "cannot read the {stage} reply: {}",
                    describe(&e.into())
                ))
            };
            if !self.ready(PollFlags::POLLIN).map_err(failed)? {
                return Err(self.fail(format!(
                    "timed out waiting for the {stage} reply (read {have} of {need} bytes; {})",
                    self.budget()
                )));
            }
            match nix::unistd::read(self.fd, &mut buf[have..need]) {
                Ok(0) => {
                    return Err(
                        self.fail(format!("short {stage} reply (read {have} of {need} bytes)"))
                    );
                }
                Ok(n) => have += n,
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(failed(e)),
            }
        }
    }

    /// A protocol error, with a hint where configuration can fix it.
    fn protocol_error(&self, e: ProtoError) -> Error {
        let (user, password) = (&self.settings.user_key, &self.settings.password_key);
        let hint = match e {
            ProtoError::NoAcceptableMethod {
                offered_auth: false,
            } => format!("; if it needs a password, set {user} and {password}"),
            ProtoError::AuthFailed(_) => format!("; check {user} and {password}"),
            // The proxy's answer about the peer: say which peer.
            ProtoError::Refused(_) => {
                return self.fail(format!("cannot connect to {}: {e}", self.target));
            }
            _ => String::new(),
        };
        self.fail(format!("{e}{hint}"))
    }

    /// Wait until the socket is ready for `events`, or the deadline passes
    /// (false). poll(2), not a helper thread: the design card's rule.
    fn ready(&self, events: PollFlags) -> Result<bool, Errno> {
        crate::sys::ready_by(self.fd, events, self.deadline)
    }

    fn budget(&self) -> String {
        format!(
            "{} is {}",
            self.settings.timeout_key,
            show_duration(self.settings.timeout)
        )
    }
}

/// `30s`, `1500ms`: how configuration spells durations.
fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Address mode: the configured `address` values. They are names in the
/// proxy's network (`<key>.pk.ygg:12345`, `<x>.onion:80`) that only the
/// user knows; there is nothing to discover.
pub fn addresses(cfg: &Config) -> Result<Vec<String>, Error> {
    let configured = cfg.get_all("address");
    if configured.is_empty() {
        let key = cfg.name("address");
        return Err(Error::Config(format!(
            "{key} is not set: set it to the HOST:PORT peers reach this repository at \
             through their proxy, e.g. `git config {key} <publickey>.pk.ygg:12345` with \
             `yggstack -remote-tcp 12345:127.0.0.1:12345`, or `git config {key} \
             <x>.onion:80` with Tor's `HiddenServicePort 80 127.0.0.1:12345` and \
             `git config {} 127.0.0.1:12345`",
            cfg.name("listen")
        )));
    }
    let mut lines: Vec<String> = Vec::new();
    for v in configured {
        let hp = HostPort::parse(v.trim()).map_err(|_| {
            cfg.bad_value(
                "address",
                v,
                "HOST:PORT, e.g. <publickey>.pk.ygg:12345 or <x>.onion:80",
            )
        })?;
        // Never bracketed: git-annex cannot use bracketed IPv6
        // (doc/git-annex-contract.md, "Bracketed IPv6").
        let line = hp.to_string();
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// Listen mode binds where the network's daemon forwards to: each `listen`
/// value, by default 127.0.0.1 on the address's port.
pub fn endpoints(cfg: &Config, target: &HostPort) -> Result<Vec<HostPort>, Error> {
    let mut values = cfg.get_all("listen");
    if values.is_empty() {
        values.push(DEFAULT_LISTEN);
    }
    tcp::parse_binds(cfg, "listen", &values, target.port)
}

/// The `socks` transport (see `net`).
pub const TRANSPORT: Transport = Transport {
    name: "socks",
    form: Form::HostPort,
    connect: connect_peer,
    connect_stdio: None,
    addresses: |cfg| addresses(cfg),
    listen: |cfg, address, opts, socket, log| {
        tcp::serve_endpoints(endpoints(cfg, address.host_port()?)?, opts, socket, log)
    },
    reach_fix: |cfg, peer| {
        format!(
            "check that the proxy ({}) runs and reaches the peer's network; {peer}",
            cfg.get("proxy").unwrap_or(DEFAULT_PROXY)
        )
    },
};

/// Reach a peer through the proxy, within `cap` if given.
fn connect_peer(
    cfg: &LazyConfig,
    address: &Address,
    cap: Option<Duration>,
) -> Result<OwnedFd, Error> {
    let cfg = cfg.get()?;
    let mut settings = Settings::from_config(cfg)?;
    if let Some(cap) = cap {
        settings.cap_timeout(cap);
    }
    let sock = connect(&settings, address.host_port()?)?;
    if cap.is_none() {
        // Only a TCP proxy has a user timeout; a unix socket refuses it.
        let _ = crate::sys::set_user_timeout(&sock, tcp::user_timeout(cfg)?);
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_values() {
        assert_eq!(
            parse_proxy("127.0.0.1:9050"),
            Some(Proxy::Tcp(HostPort::parse("127.0.0.1:9050").unwrap()))
        );
        assert_eq!(
            parse_proxy("unix:/run/yggstack.sock"),
            Some(Proxy::Unix("/run/yggstack.sock".into()))
        );
        assert_eq!(parse_proxy("unix:relative.sock"), None);
        assert_eq!(parse_proxy("unix:"), None);
        assert_eq!(parse_proxy("127.0.0.1"), None);
        assert_eq!(
            Proxy::Unix("/tmp/y.sock".into()).to_string(),
            "unix:/tmp/y.sock"
        );
    }

    fn cfg(entries: &[(&str, &str)]) -> Config {
        Config::from_entries(
            "socks",
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn credentials_come_in_pairs_and_fit_a_byte() {
        let only_user = Settings::from_config(&cfg(&[("proxy-user", "u")]));
        assert_eq!(
            only_user.err().map(|e| e.to_string()).as_deref(),
            Some(
                "set both p2p-annex.socks.proxy-user and p2p-annex.socks.proxy-password, or neither"
            )
        );
        let long = "x".repeat(256);
        let too_long = Settings::from_config(&cfg(&[
            ("proxy-user", "u"),
            ("proxy-password", long.as_str()),
        ]));
        let msg = too_long.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("256 bytes"), "{msg}");
        assert!(!msg.contains(&long), "the password leaked into {msg}");
        let ok = Settings::from_config(&cfg(&[("proxy-user", "u"), ("proxy-password", "p")]));
        assert_eq!(
            ok.ok().and_then(|s| s.auth),
            Some(b"\x01\x01u\x01p".to_vec())
        );
    }

    #[test]
    fn addresses_are_configured_not_discovered() {
        let none = addresses(&cfg(&[])).unwrap_err().to_string();
        assert!(
            none.starts_with("p2p-annex.socks.address is not set"),
            "{none}"
        );
        assert!(
            none.contains("yggstack") && none.contains(".onion"),
            "{none}"
        );
        let key = "d40d4a7153cf288ea28f1865f6cfe95143a478b5c8c9e7cb002a0633d10a53eb";
        let ygg = format!("{key}.pk.ygg:12345");
        let two = addresses(&cfg(&[
            ("address", ygg.as_str()),
            ("address", "[200:abcd::1]:5599"),
            ("address", ygg.as_str()),
        ]))
        .unwrap();
        assert_eq!(two, vec![ygg.clone(), "200:abcd::1:5599".to_string()]);
        assert!(addresses(&cfg(&[("address", "no-port")])).is_err());
    }

    #[test]
    fn durations_are_shown_as_configured() {
        assert_eq!(show_duration(Duration::from_secs(60)), "60s");
        assert_eq!(show_duration(Duration::from_millis(500)), "500ms");
    }
}
