//! Small files only we may read: keys and secrets kept under `.git/annex/`
//! (the onion service's key, the fowl address's secret). Made 0600, never
//! through a symlink, never over an existing file; read with a size cap.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::Error;

/// A new file, 0600, never through a symlink, never over an existing file.
pub fn create_private(path: &Path, text: &str) -> Result<(), Error> {
    let what = || format!("cannot create {}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(what(), e))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(what(), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(what(), e))
}

/// The text of a small file (at most 4 KiB), None when there is none.
pub fn read_small(path: &Path) -> Result<Option<String>, Error> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    let mut s = String::new();
    Read::by_ref(&mut f)
        .take(4096)
        .read_to_string(&mut s)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(Some(s))
}
