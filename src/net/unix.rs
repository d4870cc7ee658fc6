//! The `unix-sockets` transport: git-annex's demo network, socket files in
//! one shared directory named by token, with no socat. Compatible with
//! git-annex's `git-annex-p2p-unix-sockets` script: either side may be it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::addr::parse_token;
use crate::config::Config;
use crate::error::Error;
use crate::sys;

pub const DEFAULT_DIR: &str = "/tmp";

/// Where the token's socket file lives.
pub fn path(cfg: &Config, token: &str) -> Result<PathBuf, Error> {
    let token = parse_token(token)?;
    let dir = cfg.get("dir").unwrap_or(DEFAULT_DIR);
    Ok(Path::new(dir).join(token))
}

/// Address mode: a fresh token, unguessable enough that two repositories
/// on one machine never pick the same one.
pub fn new_token() -> String {
    format!("{:016x}", sys::random_u64())
}

pub fn connect(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path).map_err(|cause| Error::Connect {
        target: path.display().to_string(),
        cause,
    })
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
