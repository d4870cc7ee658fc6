//! Whom we trust on this machine: the ownership checks that keep other
//! local users away from our socket directory, the socket files we connect
//! to or replace, and our log (SECURITY.md).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// The user we run as.
pub fn me() -> u32 {
    crate::sys::euid()
}

/// `uid 1001 (mallory)`, or `uid 1001` when it has no name.
pub fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The name of a uid, from /etc/passwd (enough for a message; nix's user
/// lookup would need another feature for this one line).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Who may own a directory we keep our files in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Only us: a private directory of ours.
    Me,
    /// Us or root: a system directory such as /var/log is fine too.
    MeOrRoot,
}

/// Why `dir` is not a safe place for our files, if it is not: another
/// user could replace or plant files in it. Looked at with lstat, so a
/// symbolic link is refused rather than followed.
pub fn dir_problem(dir: &Path, owner: Owner) -> io::Result<Option<String>> {
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = meta.uid();
    let mode = meta.permissions().mode() & 0o7777;
    let problem = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_string()
    } else if !meta.is_dir() {
        "it is not a directory".to_string()
    } else if uid != me() && !(owner == Owner::MeOrRoot && uid == 0) {
        format!(
            "it belongs to {}, not to this user ({})",
            describe_uid(uid),
            describe_uid(me())
        )
    } else if mode & 0o022 != 0 {
        format!("it is writable by group or others (mode {mode:04o})")
    } else {
        return Ok(None);
    };
    Ok(Some(problem))
}

/// Make `dir` (mode 0700 from the start) unless it exists, then check it
/// as `dir_problem` does with `Owner::Me`.
pub fn private_dir(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    dir_problem(dir, Owner::Me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_are_made_0700_and_checked() {
        let base = std::env::temp_dir().join(format!("p2p-annex-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let dir = base.join("private");
        assert_eq!(private_dir(&dir).unwrap(), None);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            private_dir(&dir).unwrap(),
            Some("it is writable by group or others (mode 0777)".to_string())
        );
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(
            dir_problem(&link, Owner::MeOrRoot).unwrap(),
            Some("it is a symbolic link".to_string())
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn uids_are_named_when_they_can_be() {
        assert_eq!(describe_uid(0), "uid 0 (root)");
        assert_eq!(describe_uid(4_000_000_000), "uid 4000000000");
    }
}
