//! Whether the listener is still wanted: its parent, its socket file, and
//! the stop signals.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sys;

/// What the listener watches to know it is still wanted: the parent that
/// started it, and the socket file it relays to.
pub(super) struct Watch {
    /// None when started by init or a subreaper already: nothing to watch.
    parent: Option<libc::pid_t>,
    socket: PathBuf,
    /// Device and inode of the socket file, to notice a replacement.
    identity: (u64, u64),
}

impl Watch {
    pub(super) fn new(socket: &Path) -> Result<Watch, Error> {
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
    pub(super) fn check(&self) -> Option<String> {
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
pub(super) fn read_signal(pipe: &OwnedFd) -> Option<i32> {
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

pub(super) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
