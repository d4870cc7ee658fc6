//! The `unix-sockets` transport: git-annex's demo network, socket files in
//! one shared directory named by token, with no socat. Compatible with
//! git-annex's `git-annex-p2p-unix-sockets` script: either side may be it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use std::sync::Arc;

use super::{Address, Form, Transport, tcp};
use crate::addr::parse_token;
use crate::config::Config;
use crate::error::Error;
use crate::listen::{self, Endpoint, Listener};
use crate::log::Log;
use crate::sys;
use crate::trust;

/// The socket directory when none is configured: private to this user, so
/// that no other local user can plant a socket file where we connect or
/// take over a name where we listen (SECURITY.md).
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(run) if Path::new(&run).is_absolute() => Path::new(&run).join("p2p-annex"),
        _ => PathBuf::from(format!("/tmp/p2p-annex-{}", trust::me())),
    }
}

/// The socket directory: the configured one as it is (a shared directory
/// such as git-annex's demo /tmp is the user's choice; each socket file in
/// it is checked), else the private default, made 0700 when missing and
/// refused when another user could write to it.
pub fn dir(cfg: &Config) -> Result<PathBuf, Error> {
    if let Some(dir) = cfg.get("dir") {
        return Ok(PathBuf::from(dir));
    }
    let dir = default_dir();
    let refuse = |problem: String| Error::Untrusted {
        path: format!("socket directory {}", dir.display()),
        problem: format!(
            "{problem}; remove it (another user may have made it), or set {} to a \
             directory of your own",
            cfg.name("dir")
        ),
    };
    match trust::private_dir(&dir) {
        Ok(None) => Ok(dir),
        Ok(Some(problem)) => Err(refuse(problem)),
        Err(e) => Err(Error::io(
            format!("cannot make the socket directory {}", dir.display()),
            e,
        )),
    }
}

/// Where the token's socket file lives.
pub fn path(cfg: &Config, token: &str) -> Result<PathBuf, Error> {
    let token = parse_token(token)?;
    Ok(dir(cfg)?.join(token))
}

/// The users whose socket files we connect to: us, root, and whoever
/// `trust-uid` names (several may be given).
pub fn trusted_uids(cfg: &Config) -> Result<Vec<u32>, Error> {
    let mut uids = vec![trust::me(), 0];
    for v in cfg.get_all("trust-uid") {
        let uid = v
            .trim()
            .parse::<u32>()
            .map_err(|_| cfg.bad_value("trust-uid", v, "a numeric user id"))?;
        uids.push(uid);
    }
    Ok(uids)
}

/// Address mode: a fresh token, unguessable enough that two repositories
/// on one machine never pick the same one.
pub fn new_token() -> String {
    format!("{:016x}", sys::random_u64())
}

/// Connect to the token's socket within `timeout`, but only to a socket
/// file of a trusted user (checked with lstat before, so no byte goes to a
/// planted socket; a symbolic link must be a trusted user's too, and lead
/// to such a socket) served by a trusted user (SO_PEERCRED after).
pub fn connect(cfg: &Config, token: &str, timeout: Duration) -> Result<OwnedFd, Error> {
    let path = path(cfg, token)?;
    let trusted = trusted_uids(cfg)?;
    let shown = path.display().to_string();
    let untrusted = |what: &str, uid: u32| Error::Untrusted {
        path: shown.clone(),
        problem: format!(
            "{what} {}, not this user or root; if you trust that user, \
             `git config {} {uid}`",
            trust::describe_uid(uid),
            crate::text::shell_quote(&cfg.name("trust-uid")),
        ),
    };
    match std::fs::symlink_metadata(&path) {
        // git-annex's demo script listens by linking its address to
        // git-annex's own socket: a link of ours to a socket of ours is
        // fine, anyone else's link is not followed.
        Ok(m) if m.file_type().is_symlink() => {
            if !trusted.contains(&m.uid()) {
                return Err(untrusted("the symbolic link belongs to", m.uid()));
            }
            if let Ok(target) = std::fs::metadata(&path) {
                if !target.file_type().is_socket() {
                    return Err(Error::Untrusted {
                        path: shown,
                        problem: "it does not lead to a socket file".into(),
                    });
                }
                if !trusted.contains(&target.uid()) {
                    return Err(untrusted(
                        "the socket file it leads to belongs to",
                        target.uid(),
                    ));
                }
            }
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(Error::Untrusted {
                path: shown,
                problem: "it is not a socket file".into(),
            });
        }
        Ok(m) if !trusted.contains(&m.uid()) => {
            return Err(untrusted("the socket file belongs to", m.uid()));
        }
        // A missing file: connect says so.
        _ => {}
    }
    let fd = connect_within(&path, timeout).map_err(|cause| Error::Connect {
        target: shown.clone(),
        cause,
    })?;
    if let Some(uid) = peer_uid(&fd) {
        if !trusted.contains(&uid) {
            return Err(untrusted("the process listening there runs as", uid));
        }
    }
    Ok(fd)
}

/// The user of the process at the other end (None where the system does
/// not tell; Linux does).
fn peer_uid(fd: &OwnedFd) -> Option<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        socket::getsockopt(fd, sockopt::PeerCredentials)
            .ok()
            .map(|c| c.uid())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = fd;
        None
    }
}

/// A blocking unix-socket connect waits while the listener's backlog is full;
/// SO_SNDTIMEO bounds that wait on Linux (unix_stream_connect), then it is
/// cleared again for the relay.
pub fn connect_within(path: &Path, timeout: Duration) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    let micros = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EAGAIN) => return Err(Errno::ETIMEDOUT.into()),
        Err(e) => return Err(e.into()),
    }
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::zero())?;
    Ok(fd)
}

/// Bind the token's socket file. A leftover file from a listener that was
/// killed is replaced; a live one is not.
pub fn listener(path: &Path) -> Result<UnixListener, Error> {
    let bind_err = |cause| Error::Bind {
        target: path.display().to_string(),
        cause,
    };
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && is_stale(path) => {
            // Only our own leftovers: another user's file stays, even
            // where we could remove it (as root, or in a shared directory).
            let owner = std::fs::symlink_metadata(path).map_err(bind_err)?.uid();
            if owner != trust::me() {
                return Err(Error::Untrusted {
                    path: path.display().to_string(),
                    problem: format!(
                        "a socket file of {} is there; not replacing it",
                        trust::describe_uid(owner)
                    ),
                });
            }
            std::fs::remove_file(path).map_err(bind_err)?;
            UnixListener::bind(path).map_err(bind_err)
        }
        Err(e) => Err(bind_err(e)),
    }
}

/// A socket file nobody listens on any more.
fn is_stale(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && matches!(
            UnixStream::connect(path),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        )
}

/// The socket file we bound, so that we remove it when we stop, but only
/// if it is still ours (a newer listener may have replaced it).
pub struct Bound {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl Bound {
    pub fn new(path: &Path) -> Bound {
        use std::os::unix::fs::MetadataExt;
        Bound {
            path: path.to_path_buf(),
            identity: std::fs::symlink_metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino())),
        }
    }

    pub fn remove(self) {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The `unix-sockets` transport (see `net`).
pub const TRANSPORT: Transport = Transport {
    name: "unix-sockets",
    form: Form::Token,
    connect: |cfg, address, cap| {
        let cfg = cfg.get()?;
        // A listener whose backlog is full must not hang us.
        let timeout = tcp::connect_timeout(cfg, tcp::DEFAULT_CONNECT_TIMEOUT)?;
        connect(
            cfg,
            address.token()?,
            cap.map_or(timeout, |c| timeout.min(c)),
        )
    },
    connect_stdio: None,
    addresses: |_| Ok(vec![new_token()]),
    listen: listen_on,
    reach_fix: |cfg, peer| {
        format!(
            "{peer}, and that both repositories use the same {} (here {})",
            cfg.name("dir"),
            cfg.get("dir")
                .map_or_else(|| default_dir().display().to_string(), str::to_string)
        )
    },
};

/// Listen mode: serve the token's socket file, and remove it at the end.
fn listen_on(
    cfg: &Config,
    address: &Address,
    opts: &listen::Options,
    socket: &Path,
    log: &Arc<Log>,
) -> Result<(), Error> {
    super::refuse_allow_list(cfg, opts, "unix-sockets peers have no network address")?;
    let path = path(cfg, address.token()?)?;
    let listener = listener(&path)?;
    let bound = Bound::new(&path);
    let result = listen::serve(
        vec![Endpoint::Ready(Listener::Unix(listener))],
        socket,
        opts,
        Arc::clone(log),
    );
    bound.remove();
    result
}
