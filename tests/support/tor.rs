//! A real tor for the tests (Debian's `tor`), in a network namespace of the
//! test's own with loopback only, so nothing it tries can leave the
//! machine. Its control socket is a file in its DataDirectory, which the
//! test (outside the namespace) reaches as well as the binary under test.
//!
//! Without tor the tests fail and say how to install it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{DEADLINE, TempDir, wait_until};

/// The namespace type lives in `netns`; tor's tests name it from here.
pub use super::netns::Netns;

pub fn tor_binary() -> PathBuf {
    for p in ["/usr/sbin/tor", "/usr/bin/tor"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "the onion tests need a real tor, not found in /usr/sbin or /usr/bin. \
         Install it: `apt-get install tor` (tests/tools/install-deps.sh does)"
    );
}

/// How the test's tor lets controllers in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Auth {
    Cookie,
    /// HashedControlPassword of [`PASSWORD`].
    Password,
    /// No authentication at all (tor's NULL method).
    Null,
}

pub const PASSWORD: &str = "correct horse battery staple";
/// Control port inside the namespace (the namespace's own loopback: no clash).
pub const CONTROL_PORT: &str = "127.0.0.1:9051";
pub const SOCKS_PORT: &str = "127.0.0.1:9050";

/// A running tor; killed when dropped.
pub struct Tor {
    pub dir: TempDir,
    pub ns: Netns,
    torrc: PathBuf,
    child: Option<Child>,
}

impl Tor {
    /// `network`: false sets `DisableNetwork 1` (control port only, no
    /// SOCKS port); true opens a SOCKS port with ExtendedErrors (tor then
    /// tries to reach the directory authorities, which inside the
    /// namespace fails at once).
    pub fn start(auth: Auth, network: bool) -> Tor {
        let dir = TempDir::new("tor");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("create DataDirectory");
        set_mode(&data, 0o700);
        let mut conf = format!(
            "DataDirectory {data}\nControlPort {CONTROL_PORT}\n\
             ControlSocket {data}/control\nLog notice file {log}\n",
            data = data.display(),
            log = dir.path().join("tor.log").display()
        );
        match auth {
            Auth::Cookie => conf.push_str("CookieAuthentication 1\n"),
            Auth::Password => {
                conf.push_str(&format!("HashedControlPassword {}\n", hash_password()))
            }
            Auth::Null => {}
        }
        if network {
            conf.push_str(&format!("SocksPort {SOCKS_PORT} ExtendedErrors\n"));
        } else {
            conf.push_str("SocksPort 0\nDisableNetwork 1\n");
        }
        let torrc = dir.path().join("torrc");
        std::fs::write(&torrc, conf).expect("write torrc");
        let mut tor = Tor {
            dir,
            ns: Netns::new(),
            torrc,
            child: None,
        };
        tor.run();
        tor
    }

    fn run(&mut self) {
        let child = self
            .ns
            .exec(&tor_binary())
            .arg("-f")
            .arg(&self.torrc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tor");
        self.child = Some(child);
        let socket = self.control_socket();
        assert!(
            wait_until(DEADLINE, || UnixStream::connect(&socket).is_ok()),
            "tor's control socket did not come up; its log:\n{}",
            self.log()
        );
    }

    /// Kill tor (SIGKILL: a crash, or a restart by the system) and start it
    /// again on the same DataDirectory (same cookie file, new cookie).
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.control_socket());
        self.run();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("data").join("control")
    }

    /// `unix:/…/control`, for `p2p-annex.onion.control`.
    pub fn control_config(&self) -> String {
        format!("unix:{}", self.control_socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tor.log")).unwrap_or_default()
    }

    /// A control connection of the test's own, authenticated with the
    /// cookie or password as configured (plain COOKIE, so not by the code
    /// under test).
    pub fn controller(&self) -> Controller {
        let sock = UnixStream::connect(self.control_socket()).expect("connect to tor's control");
        sock.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut c = Controller {
            reader: BufReader::new(sock.try_clone().expect("clone")),
            writer: sock,
        };
        let info = c.command("PROTOCOLINFO 1");
        let secret = if info.contains("COOKIE") {
            let cookie =
                std::fs::read(self.dir.path().join("data").join("control_auth_cookie")).unwrap();
            hex(&cookie)
        } else if info.contains("HASHEDPASSWORD") {
            hex(PASSWORD.as_bytes())
        } else {
            String::new()
        };
        let ok = c.command(&format!("AUTHENTICATE {secret}"));
        assert!(ok.starts_with("250"), "test controller: {ok}");
        c
    }
}

impl Drop for Tor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn hash_password() -> String {
    let out = Command::new(tor_binary())
        .args(["--quiet", "--hash-password", PASSWORD])
        .output()
        .expect("tor --hash-password");
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text
        .lines()
        .rfind(|l| l.starts_with("16:"))
        .unwrap_or_else(|| panic!("tor --hash-password printed {text:?}"));
    hash.trim().to_string()
}

/// The test's own control connection.
pub struct Controller {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Controller {
    /// Send one command; its whole reply, lines joined with "\n".
    pub fn command(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send a control command");
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = self.reader.read_line(&mut l).expect("read tor's reply");
            assert!(n > 0, "tor closed the test's control connection");
            let l = l.trim_end().to_string();
            let last = l.len() >= 4 && l.as_bytes()[3] == b' ';
            lines.push(l);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// True if tor closes this connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let _ = self.writer.set_read_timeout(Some(within));
        let mut b = [0u8; 1];
        matches!(self.reader.get_mut().read(&mut b), Ok(0))
    }
}
