//! The `fowl` transport: git-annex over Dilated magic-wormhole, through
//! fowl's `fowld` run beside us (never linked in, never through a shell).
//! Design and measurements: doc/networks/fowl.md.
//!
//! One wormhole per git-annex connection: the listener keeps `SLOTS`
//! wormholes waiting on codes derived from the secret in its address
//! (`fowlcode`), each a fowld child that, once a peer pairs with it, serves
//! that one connection while a fresh one waits in its place (`slots`). The
//! connecting side pairs with one of them and relays through its forward
//! (`dial`). fowld's protocol is in `fowlproto`; its process in `fowld`.

mod dial;
mod fowld;
mod slots;

use std::ffi::OsStr;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Address, Form, Transport};
use crate::config::Config;
use crate::error::{Error, describe};
use crate::fowlcode::{self, SECRET_LEN};
use crate::fowlproto::Event;
use crate::listen::{self, Endpoint, Listener};
use crate::log::Log;
use crate::private_file::{create_private, read_small};
use crate::relay::{self, End};

use fowld::{Fowld, Next};

/// fowl's default mailbox (`fowl/cli.py`: magic-wormhole's public
/// rendezvous server).
pub const DEFAULT_MAILBOX: &str = "ws://relay.magic-wormhole.io:4000/v1";

/// The name of our forward inside each wormhole.
pub(crate) const SERVICE: &str = "annex";

/// How often a live stream's wormhole is pinged, and how long the peer
/// may leave pings unanswered before the stream is given up: fowl keeps a
/// stream open while a dead peer's wormhole waits to reconnect, forever.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The `fowl` transport (see `net`'s table).
pub const TRANSPORT: Transport = Transport {
    name: "fowl",
    form: Form::Fowl,
    connect: |cfg, address, cap| check_stream(cfg.get()?, address.fowl()?, cap),
    connect_stdio: Some(|cfg, address| relay_stdio(cfg.get()?, address.fowl()?)),
    addresses,
    listen: listen_on,
    reach_fix: |_, peer| {
        format!(
            "check that fowld runs here (pip install fowl, or set p2p-annex.fowl.fowld), that \
             the mailbox is reachable, and that the peer's listener runs; {peer}"
        )
    },
};

/// A fowl failure as one line, naming the mailbox (never the secret).
pub(crate) fn fowl_error(address: &fowlcode::Address, problem: String) -> Error {
    Error::Fowl {
        mailbox: address.mailbox.clone(),
        problem,
    }
}

/// fowld could not be started.
pub(crate) fn spawn_error(program: &OsStr, e: io::Error) -> Error {
    let hint = if e.kind() == io::ErrorKind::NotFound {
        "; install fowl (`pipx install fowl`) or set `git config p2p-annex.fowl.fowld \
         /path/to/fowld`"
    } else {
        ""
    };
    Error::Config(format!(
        "cannot run fowld ({}): {}{hint}",
        program.to_string_lossy(),
        describe(&e)
    ))
}

/// Where the secret of this netname's address is kept, beside git-annex's
/// own files.
fn secret_file(cfg: &Config) -> Result<PathBuf, Error> {
    let dir = crate::config::git_dir().ok_or_else(|| {
        Error::Config("the fowl netname works only inside a git repository".into())
    })?;
    Ok(dir
        .join("annex")
        .join(format!("p2p-annex.{}.secret", cfg.netname())))
}

/// The configured mailbox, checked.
fn mailbox(cfg: &Config) -> Result<String, Error> {
    let url = cfg.get("mailbox").map_or(DEFAULT_MAILBOX, str::trim);
    fowlcode::check_mailbox(url)
        .map_err(|why| cfg.bad_value("mailbox", url, &format!("a ws:// or wss:// URL ({why})")))?;
    Ok(url.to_string())
}

/// Address mode: `<secret>@<mailbox>`, making the secret on the first run.
fn addresses(cfg: &mut Config) -> Result<Vec<String>, Error> {
    let path = secret_file(cfg)?;
    let mailbox = mailbox(cfg)?;
    let secret = match read_small(&path)? {
        Some(text) => {
            fowlcode::Address::parse(&format!("{}@{mailbox}", text.trim())).map_err(|_| {
                Error::Untrusted {
                    path: path.display().to_string(),
                    problem: "it does not hold a secret of 64 hex digits".into(),
                }
            })?
        }
        None => {
            let mut bytes = [0u8; SECRET_LEN];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
                .map_err(|e| Error::io("cannot read /dev/urandom", e))?;
            let address = fowlcode::Address::new(bytes, &mailbox).map_err(Error::Config)?;
            let line = address.line();
            let (secret, _) = line.split_once('@').unwrap_or_default();
            create_private(&path, &format!("{secret}\n"))?;
            address
        }
    };
    Ok(vec![secret.line()])
}

/// A stream to the peer for `check`, within `cap`; its wormhole is
/// ended by a thread of its own when the stream ends.
fn check_stream(
    cfg: &Config,
    address: &fowlcode::Address,
    cap: Option<Duration>,
) -> Result<OwnedFd, Error> {
    let program = fowld::program(cfg);
    let paired = dial::pair(&program, address, cap.map(|c| Instant::now() + c))?;
    let stream =
        TcpStream::connect((Ipv4Addr::LOCALHOST, paired.port)).map_err(|cause| Error::Connect {
            target: format!("fowld's forward on 127.0.0.1:{}", paired.port),
            cause,
        })?;
    let peer_silence = crate::net::tcp::user_timeout(cfg)?;
    let watched = stream
        .try_clone()
        .map_err(|e| Error::io("cannot watch the stream", e))?;
    let _ = thread::Builder::new()
        .name("fowl-watch".into())
        .spawn(move || {
            let mut fowld = paired.fowld;
            let _ = watch(
                &mut fowld,
                Some(&watched),
                peer_silence,
                &AtomicBool::new(false),
            );
            fowld.close();
        });
    Ok(OwnedFd::from(stream))
}

/// Connect mode: pair, open the stream with git-annex's first bytes
/// (fowl's first-connection race), relay stdin and stdout while a thread
/// watches the wormhole.
fn relay_stdio(cfg: &Config, address: &fowlcode::Address) -> Result<(), Error> {
    let paired = dial::pair(&fowld::program(cfg), address, None)?;
    let first = dial::first_bytes()?;
    if first.is_empty() {
        paired.fowld.leave();
        return Ok(());
    }
    let stream = dial::open_stream(&paired, &first)?;
    let peer_silence = crate::net::tcp::user_timeout(cfg)?;
    let watched = stream
        .try_clone()
        .map_err(|e| Error::io("cannot watch the stream", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let problem = Arc::new(Mutex::new(None));
    let watcher = {
        let (stop, problem) = (Arc::clone(&stop), Arc::clone(&problem));
        let mut fowld = paired.fowld;
        thread::Builder::new()
            .name("fowl-watch".into())
            .spawn(move || {
                if let Err(why) = watch(&mut fowld, Some(&watched), peer_silence, &stop) {
                    if let Ok(mut p) = problem.lock() {
                        *p = Some(why);
                    }
                }
                fowld
            })
            .map_err(|e| Error::io("cannot start a thread", e))?
    };
    let outcome = relay::run(&End::Stdio, &End::Socket(OwnedFd::from(stream)));
    stop.store(true, Ordering::SeqCst);
    if let Ok(fowld) = watcher.join() {
        fowld.leave();
    }
    let problem = problem.lock().ok().and_then(|mut p| p.take());
    match (outcome, problem) {
        (_, Some(why)) => Err(fowl_error(address, why)),
        (Err(e), None) | (Ok(relay::Outcome { error: Some(e), .. }), None) => Err(Error::Relay(e)),
        (Ok(_), None) => Ok(()),
    }
}

/// Watch the wormhole of one live stream until the stream ends (fowld says
/// so), `stop` is set, or something breaks: then the stream is shut down
/// and the reason returned. The peer is pinged: a wormhole whose peer died
/// stays open, waiting for it to come back, and so would the stream.
fn watch(
    fowld: &mut Fowld,
    stream: Option<&TcpStream>,
    peer_silence: Duration,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut heard = Instant::now();
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut ping_id: u64 = 0;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let now = Instant::now();
        if now >= next_ping {
            ping_id += 1;
            fowld.send(&crate::fowlproto::ping(ping_id));
            next_ping = now + PING_EVERY;
        }
        if !peer_silence.is_zero() && now.duration_since(heard) > peer_silence {
            break Err(format!(
                "the peer stopped answering for {} s",
                peer_silence.as_secs()
            ));
        }
        match fowld.next(now + Duration::from_millis(200)) {
            Next::Event(Event::Pong) => heard = Instant::now(),
            Next::Event(Event::OutgoingDone | Event::IncomingDone) => break Ok(()),
            Next::Event(Event::OutgoingLost { reason } | Event::IncomingLost { reason }) => {
                break Err(format!("the stream was lost: {reason}"));
            }
            Next::Event(e) if e.is_final() => break Err(dial::describe_final(&e)),
            Next::Event(_) | Next::Timeout => {}
            Next::Gone => break Err("fowld exited".into()),
        }
    };
    if let (Err(_), Some(stream)) = (&result, stream) {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    result
}

/// Listen mode: our loopback listener, where each slot's fowld brings its
/// stream, served by the usual listener; the slots kept armed beside it.
fn listen_on(
    cfg: &Config,
    address: &Address,
    opts: &listen::Options,
    socket: &Path,
    log: &Arc<Log>,
) -> Result<(), Error> {
    super::refuse_allow_list(cfg, opts, "fowl peers all arrive from fowld, on loopback")?;
    let address = address.fowl()?.clone();
    let program = fowld::program(cfg);
    // fowld missing is a setup error: say it now, not in a retry loop.
    Fowld::spawn(&program, &address.mailbox)
        .map_err(|e| spawn_error(&program, e))?
        .terminate();
    let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|cause| Error::Bind {
        target: "127.0.0.1 (fowld's side)".into(),
        cause,
    })?;
    let port = local
        .local_addr()
        .map_err(|e| Error::io("cannot read the local address", e))?
        .port();
    let peer_silence = crate::net::tcp::user_timeout(cfg)?;
    slots::start(program, address, port, peer_silence, Arc::clone(log))?;
    let result = listen::serve(
        vec![Endpoint::Ready(Listener::Tcp(local))],
        socket,
        opts,
        Arc::clone(log),
    );
    fowld::terminate_all(Duration::from_secs(5));
    result
}
