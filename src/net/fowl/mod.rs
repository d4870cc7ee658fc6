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

/// How long connect mode waits, before it exits, for fowld it is closing
/// (each: `session-close`, then SIGTERM, then SIGKILL, in at most 5 s).
const CLOSING_LIMIT: Duration = Duration::from_secs(6);

/// The name of our forward inside each wormhole.
pub(crate) const SERVICE: &str = "annex";

/// The `fowl` transport (see `net`'s table).
pub const TRANSPORT: Transport = Transport {
    name: "fowl",
    form: Form::Fowl,
    connect: |cfg, address, cap| check_stream(cfg.get()?, address.fowl()?, cap),
    connect_stdio: Some(|cfg, address| {
        let result = relay_stdio(cfg.get()?, address.fowl()?);
        // git-annex does not wait for us, but nothing of ours may outlive
        // us: the fowld of slots we missed are still closing.
        fowld::wait_closing(CLOSING_LIMIT);
        result
    }),
    addresses,
    listen: listen_on,
    reach_fix: |_, peer| {
        format!(
            "check that fowld runs here (pip install fowl, or set p2p-annex.fowl.fowld), that \
             the mailbox is reachable, and that the peer's listener runs; {peer}"
        )
    },
};

/// How long the slots' codes last: `fowlcode::WINDOW_SECS`. Debug builds
/// (the tests) take `P2P_ANNEX_TEST_FOWL_WINDOW` seconds (at least 10), so
/// a test sees windows end; a release build never reads it.
pub(crate) fn window_len() -> u64 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("P2P_ANNEX_TEST_FOWL_WINDOW")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n >= 10)
    {
        return n;
    }
    fowlcode::WINDOW_SECS
}

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
    let stream = dial::open_stream_quietly(&paired)?;
    let _ = thread::Builder::new()
        .name("fowl-watch".into())
        .spawn(move || {
            let mut fowld = paired.fowld;
            let _ = watch(&mut fowld, None, None, &AtomicBool::new(false));
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
        paired.fowld.close();
        return Ok(());
    }
    let stream = dial::open_stream(&paired, &first)?;
    let idle_limit = idle_limit(cfg)?;
    let progress = Arc::new(relay::Progress::default());
    let watched = stream
        .try_clone()
        .map_err(|e| Error::io("cannot watch the stream", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let problem = Arc::new(Mutex::new(None));
    let watcher = {
        let (stop, problem, progress) = (
            Arc::clone(&stop),
            Arc::clone(&problem),
            Arc::clone(&progress),
        );
        let mut fowld = paired.fowld;
        thread::Builder::new()
            .name("fowl-watch".into())
            .spawn(move || {
                let idle = idle_limit.map(|limit| Idle {
                    limit,
                    progress: &progress,
                });
                if let Err(why) = watch(&mut fowld, Some(&watched), idle, &stop) {
                    if let Ok(mut p) = problem.lock() {
                        *p = Some(why);
                    }
                }
                fowld
            })
            .map_err(|e| Error::io("cannot start a thread", e))?
    };
    let outcome = relay::run_counted(&End::Stdio, &End::Socket(OwnedFd::from(stream)), &progress);
    stop.store(true, Ordering::SeqCst);
    if let Ok(fowld) = watcher.join() {
        fowld.close();
    }
    let problem = problem.lock().ok().and_then(|mut p| p.take());
    match (outcome, problem) {
        (_, Some(why)) => Err(fowl_error(address, why)),
        (Err(e), None) | (Ok(relay::Outcome { error: Some(e), .. }), None) => Err(Error::Relay(e)),
        (Ok(_), None) => Ok(()),
    }
}

/// How long a fowl stream may move no byte before it is given up, unless
/// `idle-timeout` says otherwise. fowl cannot tell a dead peer from a
/// quiet one: a dilated wormhole whose peer died waits for it to come back,
/// forever, and so does the stream (fowld reports nothing; its `ping`
/// fails in fowl 26.8.0, doc/upstream/fowl-concurrent-streams.md). Ten
/// minutes is longer than git-annex is quiet while the peer checksums a
/// large file.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// The idle limit of a fowl stream: `idle-timeout`, `0` for none.
fn idle_limit(cfg: &Config) -> Result<Option<Duration>, Error> {
    Ok(Some(cfg.duration("idle-timeout", DEFAULT_IDLE)?).filter(|d| !d.is_zero()))
}

/// Bytes a relay moved, to tell an idle stream.
struct Idle<'a> {
    limit: Duration,
    progress: &'a relay::Progress,
}

/// Watch the wormhole of one live stream until the stream ends (fowld says
/// so) or `stop` is set; a stream that fowld lost, or (`idle`) that moved
/// no byte for too long, comes back as the reason. An idle stream is shut
/// down here: fowld would keep it open.
fn watch(
    fowld: &mut Fowld,
    stream: Option<&TcpStream>,
    idle: Option<Idle<'_>>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let moved = |i: &Idle<'_>| {
        i.progress.a_to_b.load(Ordering::Relaxed) + i.progress.b_to_a.load(Ordering::Relaxed)
    };
    let mut last = (idle.as_ref().map_or(0, moved), Instant::now());
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(i) = &idle {
            let now_moved = moved(i);
            if now_moved != last.0 {
                last = (now_moved, Instant::now());
            } else if last.1.elapsed() >= i.limit {
                if let Some(stream) = stream {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                return Err(format!(
                    "no byte moved for {} s: the peer is gone or stuck (idle-timeout)",
                    i.limit.as_secs()
                ));
            }
        }
        match fowld.next(Instant::now() + Duration::from_millis(200)) {
            Next::Event(Event::OutgoingDone | Event::IncomingDone) => return Ok(()),
            Next::Event(Event::OutgoingLost { reason } | Event::IncomingLost { reason }) => {
                return Err(format!("the stream was lost: {reason}"));
            }
            // The other side closed its wormhole as it should, when done.
            Next::Event(Event::Closed { result }) if result == "happy" => return Ok(()),
            Next::Event(e) if e.is_final() => return Err(dial::describe_final(&e)),
            Next::Event(_) | Next::Timeout => {}
            Next::Gone => return Err("fowld exited".into()),
        }
    }
}

/// For `check`: fowld starts and reaches the mailbox of `address` (as
/// git-annex stores it); how long that took.
pub fn probe(cfg: &Config, address: &str) -> Result<Duration, Error> {
    let decoded = crate::addr::decode_arg(address.as_bytes())?;
    let address = fowlcode::Address::parse(&decoded).map_err(Error::Usage)?;
    let program = fowld::program(cfg);
    let started = Instant::now();
    let fowld = Fowld::spawn(&program, &address.mailbox).map_err(|e| spawn_error(&program, e))?;
    let reached = fowld.wait_for(started + dial::WELCOME_WAIT, |e| *e == Event::Welcome);
    let took = started.elapsed();
    fowld.terminate();
    match reached {
        Next::Event(Event::Welcome) => Ok(took),
        Next::Timeout => Err(fowl_error(&address, "the mailbox did not answer".into())),
        Next::Gone => Err(fowl_error(&address, "fowld exited at once".into())),
        Next::Event(e) => Err(fowl_error(
            &address,
            format!("cannot reach the mailbox ({})", dial::describe_final(&e)),
        )),
    }
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
    slots::start(program, address, port, Arc::clone(log))?;
    let opts = listen::Options {
        idle_timeout: idle_limit(cfg)?,
        ..opts.clone()
    };
    let result = listen::serve(
        vec![Endpoint::Ready(Listener::Tcp(local))],
        socket,
        &opts,
        Arc::clone(log),
    );
    fowld::terminate_all(Duration::from_secs(5));
    result
}
