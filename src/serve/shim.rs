//! The `git` shim directory: remotedaemon runs with it first on its PATH,
//! so the `git upload-pack` and `git receive-pack` it serves peers with
//! are run through p2p-annex acting as `git` (src/gitshim.rs), which works
//! around git-annex's CONNECTDONE race (research/connectdone-race.md).
//!
//! The directory holds one entry, `git`, a symbolic link to this very
//! executable. `check` recognises a remotedaemon started this way by that
//! directory first on its PATH.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Where the shim lives in a repository.
pub fn dir(git_dir: &Path) -> PathBuf {
    git_dir.join("annex").join("p2p-annex").join("shim")
}

/// Make (or mend) `<git dir>/annex/p2p-annex/shim/git` → our executable,
/// and return the directory. Mode 0700: only the repository's owner runs
/// what is in it.
pub fn make(git_dir: &Path) -> Result<PathBuf, Error> {
    let dir = dir(git_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("cannot find our own executable for the git shim", e))?;
    let link = dir.join("git");
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        // A fresh link renamed over the old one: never a moment without.
        let tmp = dir.join(format!(".git.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&exe, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &link))
            .map_err(|e| Error::io(format!("cannot make {}", link.display()), e))?;
    }
    Ok(dir)
}

/// `PATH` with `first` in front.
pub fn path_with(first: &Path, path: Option<&OsStr>) -> OsString {
    let rest = path.map(std::env::split_paths).into_iter().flatten();
    let all = std::iter::once(first.to_path_buf()).chain(rest.filter(|p| p != first));
    std::env::join_paths(all).unwrap_or_else(|_| first.as_os_str().to_owned())
}

/// Is the first entry of a `PATH` value a shim directory whose `git` is a
/// p2p-annex? For `check`, looking at a running remotedaemon.
pub fn leads(path: &OsStr) -> bool {
    let Some(first) = std::env::split_paths(path).next() else {
        return false;
    };
    let Ok(target) = std::fs::canonicalize(first.join("git")) else {
        return false;
    };
    let ours = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .is_ok_and(|me| me == target);
    ours || target.file_name() == Some(OsStr::new("p2p-annex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_goes_first_once() {
        let got = path_with(
            Path::new("/r/.git/annex/p2p-annex/shim"),
            Some("/usr/bin:/bin".as_ref()),
        );
        assert_eq!(got, "/r/.git/annex/p2p-annex/shim:/usr/bin:/bin");
        let again = path_with(Path::new("/s"), Some("/s:/bin:/s".as_ref()));
        assert_eq!(again, "/s:/bin");
        assert_eq!(path_with(Path::new("/s"), None), "/s");
    }

    #[test]
    fn the_shim_is_made_and_recognised() {
        let git_dir = std::env::temp_dir().join(format!("p2p-annex-shim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&git_dir);
        let made = make(&git_dir).unwrap();
        assert!(leads(&path_with(&made, Some("/usr/bin".as_ref()))));
        assert!(!leads(OsStr::new("/usr/bin")));
        assert!(!leads(&path_with(
            Path::new("/nonexistent"),
            Some(made.as_os_str())
        )));
        // Made again over itself: still there.
        assert_eq!(make(&git_dir).unwrap(), made);
        let _ = std::fs::remove_dir_all(&git_dir);
    }
}
