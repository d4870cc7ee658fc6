//! A private Tor network for the tests, after what Tor's own test-network
//! tool (chutney) does, on the loopback of a network namespace of the
//! test's own: three directory authorities whose keys `tor-gencert` makes,
//! three relays, and two clients, `a` (the serving side: its control
//! socket registers the onion service) and `b` (the connecting side: its
//! SOCKS port is a unix socket, so commands outside the namespace use it).
//! Every tor is `TestingTorNetwork 1` with chutney's fast voting schedule.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;
use super::tor::{Netns, tor_binary};

const AUTHORITIES: usize = 3;
const RELAYS: usize = 3;
/// How long the network may take to bootstrap (measured: about 25 s).
pub const BOOTSTRAP: Duration = Duration::from_secs(180);

pub struct TorNet {
    pub dir: TempDir,
    pub ns: Netns,
    children: Vec<Child>,
    /// How long from the first tor's start until both clients had
    /// bootstrapped.
    pub bootstrap: Duration,
}

/// chutney's torrc_templates/common.i and authority.i, in short: a test
/// network, every relay eligible for every flag at once, and a consensus
/// every 10 s.
fn common(nick: &str, dir: &Path, authorities: &str) -> String {
    format!(
        "TestingTorNetwork 1\nDataDirectory {d}\nNickname {nick}\nPidFile {d}/pid\n\
         Log notice file {d}/notice.log\nSafeLogging 0\nShutdownWaitLength 0\n\
         ConnLimit 60\nAddress 127.0.0.1\nAssumeReachable 1\n\
         TestingDirAuthVoteGuard *\nTestingDirAuthVoteHSDir *\nTestingDirAuthVoteExit *\n\
         TestingMinExitFlagThreshold 0\nPathsNeededToBuildCircuits 0.67\n\
         V3AuthNIntervalsValid 2\nTestingV3AuthInitialVotingInterval 5\n\
         V3AuthVotingInterval 10\nTestingV3AuthInitialVoteDelay 2\nV3AuthVoteDelay 2\n\
         TestingV3AuthInitialDistDelay 2\nV3AuthDistDelay 2\n{authorities}",
        d = dir.display()
    )
}

fn private_dir(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).expect("create a DataDirectory");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
}

fn must(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TorNet {
    pub fn start() -> TorNet {
        let dir = TempDir::new("tornet");
        let root = dir.path().to_path_buf();
        let tor = tor_binary();
        let gencert = tor.with_file_name("tor-gencert");
        let gencert = if gencert.exists() {
            gencert
        } else {
            PathBuf::from("/usr/bin/tor-gencert")
        };
        // Authority keys: an identity key and a signing certificate each
        // (tor-gencert), and the relay identity tor makes on first use.
        let mut lines = String::new();
        for i in 0..AUTHORITIES {
            let d = root.join(format!("auth{i}"));
            private_dir(&d.join("keys"));
            private_dir(&d);
            let keys = d.join("keys");
            let mut gen_cmd = Command::new(&gencert);
            gen_cmd
                .args(["--create-identity-key", "-m", "12", "-a"])
                .arg(format!("127.0.0.1:{}", 7000 + i))
                .arg("-i")
                .arg(keys.join("authority_identity_key"))
                .arg("-s")
                .arg(keys.join("authority_signing_key"))
                .arg("-c")
                .arg(keys.join("authority_certificate"))
                .args(["--passphrase-fd", "0"])
                .stdin(Stdio::null());
            must(&mut gen_cmd, "tor-gencert");
            let cert = std::fs::read_to_string(keys.join("authority_certificate")).unwrap();
            let v3ident = cert
                .lines()
                .find_map(|l| l.strip_prefix("fingerprint "))
                .expect("a fingerprint in the authority certificate")
                .trim()
                .to_string();
            let listed = must(
                Command::new(&tor)
                    .args(["--quiet", "--ignore-missing-torrc", "--list-fingerprint"])
                    .args(["--orport", "1", "--DataDirectory"])
                    .arg(&d),
                "tor --list-fingerprint",
            );
            let fingerprint: String = listed
                .lines()
                .last()
                .and_then(|l| l.split_once(' '))
                .map(|(_, fp)| fp.chars().filter(|c| !c.is_whitespace()).collect())
                .expect("tor --list-fingerprint printed a fingerprint");
            let _ = writeln!(
                lines,
                "DirAuthority auth{i} orport={} no-v2 v3ident={v3ident} 127.0.0.1:{} {fingerprint}",
                5000 + i,
                7000 + i
            );
        }
        let mut torrcs = Vec::new();
        for i in 0..AUTHORITIES {
            let d = root.join(format!("auth{i}"));
            let conf = common(&format!("auth{i}"), &d, &lines)
                + &format!(
                    "AuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\n\
                     ContactInfo auth{i}@test.invalid\nExitPolicy reject *:*\n\
                     OrPort {}\nDirPort {}\nSocksPort 0\n",
                    5000 + i,
                    7000 + i
                );
            torrcs.push((d, conf));
        }
        for i in 0..RELAYS {
            let d = root.join(format!("relay{i}"));
            private_dir(&d);
            let conf = common(&format!("relay{i}"), &d, &lines)
                + &format!(
                    "OrPort {}\nDirPort {}\nSocksPort 0\nExitRelay 0\nExitPolicy reject *:*\n",
                    5100 + i,
                    7100 + i
                );
            torrcs.push((d, conf));
        }
        for name in ["a", "b"] {
            let d = root.join(format!("client{name}"));
            private_dir(&d);
            let conf = common(&format!("client{name}"), &d, &lines)
                + &format!(
                    "SocksPort unix:{d}/socks ExtendedErrors\nControlSocket {d}/control\n\
                     CookieAuthentication 1\n",
                    d = d.display()
                );
            torrcs.push((d, conf));
        }
        let ns = Netns::new();
        let started = Instant::now();
        let mut net = TorNet {
            dir,
            ns,
            children: Vec::new(),
            bootstrap: Duration::ZERO,
        };
        // As chutney does: authorities first, then relays; clients only
        // once a consensus lists every relay, so they never bootstrap on a
        // consensus too small to build onion-service paths from (seen on a
        // loaded machine: a client stuck at "Failed to find node for hop #2").
        let (servers, clients) = torrcs.split_at(AUTHORITIES + RELAYS);
        for (d, conf) in servers {
            net.spawn(&tor, d, conf);
        }
        let consensus = net.dir.path().join("auth0").join("cached-consensus");
        let all = AUTHORITIES + RELAYS;
        let listed = || {
            std::fs::read_to_string(&consensus)
                .map(|c| c.lines().filter(|l| l.starts_with("r ")).count())
                .unwrap_or(0)
        };
        assert!(
            super::wait_until(BOOTSTRAP, || listed() == all),
            "no consensus with all {all} relays within {BOOTSTRAP:?} (the last lists {}); \
             auth0's log:\n{}",
            listed(),
            std::fs::read_to_string(net.dir.path().join("auth0").join("notice.log"))
                .unwrap_or_default()
        );
        for (d, conf) in clients {
            net.spawn(&tor, d, conf);
        }
        for name in ["a", "b"] {
            let log = net.client(name).join("notice.log");
            let done = super::wait_until(BOOTSTRAP, || {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Bootstrapped 100%"))
            });
            assert!(
                done,
                "client {name} did not bootstrap within {BOOTSTRAP:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        net.bootstrap = started.elapsed();
        net
    }

    fn spawn(&mut self, tor: &Path, d: &Path, conf: &str) {
        let torrc = d.join("torrc");
        std::fs::write(&torrc, conf).expect("write torrc");
        let child = self
            .ns
            .exec(tor)
            .arg("-f")
            .arg(&torrc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tor");
        self.children.push(child);
    }

    pub fn client(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("client{name}"))
    }

    /// `unix:…/control` of client `name`.
    pub fn control(&self, name: &str) -> String {
        format!("unix:{}", self.client(name).join("control").display())
    }

    /// `unix:…/socks` of client `name`.
    pub fn socks(&self, name: &str) -> String {
        format!("unix:{}", self.client(name).join("socks").display())
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
