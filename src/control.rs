//! What a running listener shows the outside, in one place: where its status
//! socket and its default log file are, the snapshot it answers
//! `p2p-annex status` with (one type: the listener encodes it, `status`
//! parses it), and the server side of the status socket.
//!
//! The snapshot is a few tab-separated lines: a `listener` line, then one
//! `conn` line per open connection. Nothing is written to disk while the
//! listener runs; `status` asks each socket under `.git/annex/p2p-annex/`.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::describe;
use crate::log::Log;

/// The directory of the listeners' status sockets.
pub fn dir(git_dir: &Path) -> PathBuf {
    git_dir.join("annex").join("p2p-annex")
}

/// Where this listener answers `status`: named after the netname and our
/// pid, so listeners of one repository (one per address) never collide.
pub fn socket_path(git_dir: &Path, netname: &str) -> PathBuf {
    dir(git_dir).join(format!("{netname}.{}.sock", std::process::id()))
}

/// The listener's log file when it keeps one and `log` names none:
/// `.git/annex/p2p-annex.<netname>.log`, beside git-annex's own files.
pub fn log_path(git_dir: &Path, netname: &str) -> PathBuf {
    git_dir
        .join("annex")
        .join(format!("p2p-annex.{netname}.log"))
}

/// Is this file name (in `.git/annex/`) one of our logs, the listeners'
/// or `serve`'s?
pub fn is_log_name(name: &str) -> bool {
    name.starts_with("p2p-annex.") && name.ends_with(".log")
}

/// What a listener says of itself. Numbers it does not check (`pid`,
/// `max`) stay text: `status` shows what it was told.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: String,
    pub netname: String,
    /// The address git-annex gave, `-` when none.
    pub address: String,
    /// When it started, in seconds since the epoch.
    pub started: u64,
    /// Its cap of connections.
    pub max: String,
    /// Where it listens; endpoints it still waits for say so.
    pub listening: Vec<String>,
    /// The socket file it relays to.
    pub socket: String,
    /// Open connections, oldest first.
    pub conns: Vec<Conn>,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub peer: String,
    /// Since when, in seconds since the epoch.
    pub since: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Snapshot {
    /// The wire form: what `parse` reads back.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "listener\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.pid,
            self.netname,
            self.address,
            self.started,
            self.max,
            self.listening.join(","),
            self.socket
        );
        for c in &self.conns {
            text.push_str(&format!(
                "conn\t{}\t{}\t{}\t{}\n",
                c.peer, c.since, c.bytes_in, c.bytes_out
            ));
        }
        text
    }

    /// Read a snapshot; None when the first line is no `listener` line or
    /// a number is not one. Lines of other kinds are skipped.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next()?.splitn(8, '\t').collect();
        let [kind, pid, netname, address, started, max, listening, socket] = head[..] else {
            return None;
        };
        if kind != "listener" {
            return None;
        }
        let mut snapshot = Snapshot {
            pid: pid.to_string(),
            netname: netname.to_string(),
            address: address.to_string(),
            started: started.parse().ok()?,
            max: max.to_string(),
            listening: listening.split(',').map(str::to_string).collect(),
            socket: socket.to_string(),
            conns: Vec::new(),
        };
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            if let ["conn", peer, since, bytes_in, bytes_out] = f[..] {
                snapshot.conns.push(Conn {
                    peer: peer.to_string(),
                    since: since.parse().ok()?,
                    bytes_in: bytes_in.parse().ok()?,
                    bytes_out: bytes_out.parse().ok()?,
                });
            }
        }
        Some(snapshot)
    }
}

/// Seconds since the epoch, as snapshots count time.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The listener's status socket: answers each `status` with a snapshot,
/// then closes. Removed when dropped.
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
}

/// Longest unix socket path we bind (sun_path is 108 bytes on Linux, 104
/// on the BSDs).
const MAX_SOCKET_PATH: usize = 100;

/// Stack of a thread that writes one answer.
const ANSWER_STACK: usize = 128 * 1024;

impl Server {
    /// Bind `path` (from `socket_path`); None, logged, when that cannot be
    /// done: a listener without a status socket still serves.
    pub(crate) fn bind(path: &Path, log: &Log) -> Option<Server> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = path.parent()?;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        // A long absolute path may still fit relative to where we run
        // (remotedaemon starts us at the repository's top).
        let short = if path.as_os_str().len() > MAX_SOCKET_PATH {
            let cwd = std::env::current_dir().ok()?;
            path.strip_prefix(&cwd).ok()?.to_path_buf()
        } else {
            path.to_path_buf()
        };
        if short.as_os_str().len() > MAX_SOCKET_PATH {
            log.line(format_args!(
                "no status socket: {} is too long a path",
                path.display()
            ));
            return None;
        }
        // The name holds our pid: a file there is a leftover of a listener
        // that was killed and whose pid we now have.
        let _ = std::fs::remove_file(&short);
        match UnixListener::bind(&short).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(listener) => Some(Server {
                listener,
                path: short,
            }),
            Err(e) => {
                log.line(format_args!(
                    "no status socket at {}: {}",
                    path.display(),
                    describe(&e)
                ));
                None
            }
        }
    }

    /// Answer every waiting `status` with `snapshot()`, each from a thread
    /// of its own so a reader that does not read cannot stall the listener.
    pub(crate) fn answer(&self, snapshot: &dyn Fn() -> Snapshot) {
        while let Ok((conn, _)) = self.listener.accept() {
            let text = snapshot().encode();
            let _ = std::thread::Builder::new()
                .name("status".into())
                .stack_size(ANSWER_STACK)
                .spawn(move || {
                    use std::io::Write;
                    let mut conn = conn;
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = conn.write_all(text.as_bytes());
                });
        }
    }
}

impl std::os::fd::AsFd for Server {
    /// Readable when a `status` is waiting.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A listener's answer with one connection, for the tests of the format
/// and of what `status` makes of it.
#[cfg(test)]
pub(crate) const SAMPLE_SNAPSHOT: &str = "listener\t4711\ttcp\t10.0.0.1:5599\t1000\t100\t10.0.0.1:5599\t.git/annex/p2p/abc\n\
                                         conn\t10.0.0.2:40000\t1900\t12582912\t2048\n";

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOT: &str = SAMPLE_SNAPSHOT;

    #[test]
    fn snapshots_parse() {
        let l = Snapshot::parse(SNAPSHOT).unwrap();
        assert_eq!(l.pid, "4711");
        assert_eq!(l.listening, vec!["10.0.0.1:5599"]);
        assert_eq!(l.socket, ".git/annex/p2p/abc");
        assert_eq!(
            l.conns,
            vec![Conn {
                peer: "10.0.0.2:40000".into(),
                since: 1900,
                bytes_in: 12582912,
                bytes_out: 2048
            }]
        );
        assert_eq!(Snapshot::parse("garbage"), None);
        assert_eq!(Snapshot::parse(""), None);
        assert_eq!(Snapshot::parse("listener\t1\ttcp"), None);
    }

    #[test]
    fn what_the_listener_writes_status_reads_back() {
        assert_eq!(Snapshot::parse(SNAPSHOT).unwrap().encode(), SNAPSHOT);
        let waiting = Snapshot {
            pid: "12".into(),
            netname: "socks".into(),
            address: "-".into(),
            started: 1_700_000_000,
            max: "3".into(),
            listening: vec!["[::1]:5599".into(), "host.example:5599 (waiting)".into()],
            socket: "/r/.git/annex/p2p/x".into(),
            conns: vec![
                Conn {
                    peer: "[::1]:40000".into(),
                    since: 1_700_000_001,
                    bytes_in: 0,
                    bytes_out: u64::MAX,
                },
                Conn {
                    peer: "local".into(),
                    since: 1_700_000_002,
                    bytes_in: 5,
                    bytes_out: 6,
                },
            ],
        };
        assert_eq!(Snapshot::parse(&waiting.encode()), Some(waiting.clone()));
        let idle = Snapshot {
            conns: Vec::new(),
            ..waiting
        };
        assert_eq!(Snapshot::parse(&idle.encode()), Some(idle));
    }

    #[test]
    fn paths() {
        let g = Path::new("/r/.git");
        assert_eq!(
            log_path(g, "tcp"),
            Path::new("/r/.git/annex/p2p-annex.tcp.log")
        );
        assert!(is_log_name("p2p-annex.tcp.log") && is_log_name("p2p-annex.serve.log"));
        assert!(!is_log_name("p2p-annex.tcp.log.1"));
        let s = socket_path(g, "tcp");
        assert_eq!(s.parent(), Some(dir(g).as_path()));
        assert_eq!(
            s.file_name().unwrap(),
            format!("tcp.{}.sock", std::process::id()).as_str()
        );
    }
}
