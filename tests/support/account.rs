//! A real second account on this machine, for the tests where another
//! local user attacks: made with useradd, removed (with userdel) when the
//! test ends, pass or fail. Needs root, as CI is; elsewhere the caller
//! prints SKIPPED, and under CI=... it fails instead.

use std::process::Command;
use std::time::{Duration, Instant};

pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Are we root (and so able to make accounts)?
pub fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Say SKIPPED loudly and return true when not root; panic instead when
/// the CI variable is set, where these tests must run.
pub fn skip_unless_root(test: &str) -> bool {
    if root() {
        return false;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root to make a second account, and CI is set");
    }
    eprintln!("SKIPPED: {test}: needs root to make a second account (run as root, as CI does)");
    true
}

impl Account {
    /// A fresh system account with its own group, no home, no login.
    pub fn create(tag: &str) -> Account {
        // Names are at most 32 bytes; the pid keeps parallel runs apart.
        let name = format!("p2pt{}{tag}", std::process::id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
                .arg(&name)
                .output()
                .expect("run useradd");
            if out.status.success() {
                break;
            }
            // 10: /etc/passwd is locked by another useradd; try again.
            let locked = out.status.code() == Some(10);
            assert!(
                locked && Instant::now() < deadline,
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Account { name, uid, gid }
    }

    /// `program` run as this account (setpriv from util-linux: real and
    /// effective ids, no supplementary groups).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program);
        cmd
    }

    /// `sh -c SCRIPT` as this account; panics unless it succeeds.
    pub fn sh(&self, script: &str) {
        let out = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("run sh as the second account");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A directory of this account's own under `parent`.
    pub fn own_dir(&self, parent: &std::path::Path, name: &str) -> std::path::PathBuf {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(self.uid), Some(self.gid)).expect("chown");
        dir
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        // The tests kill the account's processes by pid before this; -f
        // removes the account even if one were left.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match Command::new("userdel").arg("-f").arg(&self.name).status() {
                Ok(s) if s.code() == Some(10) => std::thread::sleep(Duration::from_millis(100)),
                _ => break,
            }
        }
    }
}
