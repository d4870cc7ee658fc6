//! Who `serve` runs as. Started by root (a system service) for a
//! repository that another user owns, it becomes that user before it does
//! anything else: git refuses a repository owned by someone else ("dubious
//! ownership"), and a remotedaemon running as root would leave root-owned
//! files in the user's repository and serve peers with root's rights.
//!
//! A repository owned by root is served as root: on a router (OpenWrt)
//! root is often the only user there is. `serve` says so in its log.

use std::ffi::{CString, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::error::Error;

/// What `serve` became, for its log and its children's environment.
pub struct Identity {
    pub name: String,
    pub uid: u32,
    /// Set when we switched user: HOME, USER and LOGNAME for every
    /// command we run (git reads its global config from HOME).
    pub env: Vec<(&'static str, OsString)>,
    pub switched: bool,
}

/// Become the owner of `dir` when we are root and they are not.
pub fn become_owner(dir: &Path) -> Result<Identity, Error> {
    let me = Uid::effective();
    if !me.is_root() {
        return Ok(Identity {
            name: name_of(me),
            uid: me.as_raw(),
            env: Vec::new(),
            switched: false,
        });
    }
    let owner = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
        .uid();
    if owner == 0 {
        return Ok(Identity {
            name: "root".into(),
            uid: 0,
            env: Vec::new(),
            switched: false,
        });
    }
    let user = User::from_uid(Uid::from_raw(owner))
        .ok()
        .flatten()
        .ok_or_else(|| {
            Error::Refused(format!(
                "{} belongs to uid {owner}, which has no passwd entry: \
                 cannot serve it as its owner",
                dir.display()
            ))
        })?;
    let failed = |what: &str, e: nix::errno::Errno| {
        Error::io(
            format!("cannot become {} ({what})", user.name),
            std::io::Error::from(e),
        )
    };
    let cname = CString::new(user.name.as_bytes())
        .map_err(|_| Error::Refused(format!("user name {:?} holds a NUL", user.name)))?;
    // Groups first, while we still may; the uid last.
    nix::unistd::initgroups(&cname, user.gid).map_err(|e| failed("initgroups", e))?;
    nix::unistd::setgid(user.gid).map_err(|e| failed("setgid", e))?;
    nix::unistd::setuid(user.uid).map_err(|e| failed("setuid", e))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || Gid::effective() != user.gid {
        return Err(Error::Refused(format!(
            "dropping root for {} did not stick",
            user.name
        )));
    }
    Ok(Identity {
        env: vec![
            ("HOME", user.dir.into_os_string()),
            ("USER", user.name.clone().into()),
            ("LOGNAME", user.name.clone().into()),
        ],
        name: user.name,
        uid: owner,
        switched: true,
    })
}

fn name_of(uid: Uid) -> String {
    match User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}
