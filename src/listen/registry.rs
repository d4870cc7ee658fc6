//! The open connections: what a stop shuts down, what the cap counts, what
//! `p2p-annex status` shows.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{Shutdown, shutdown};

use crate::control::{Conn, unix_secs};
use crate::log::Log;
use crate::relay::Progress;

/// The open connections: a duplicate of each peer socket, so that a stop
/// can shut them all down (which ends their relays), their count for the
/// cap, and what `p2p-annex status` shows of each.
#[derive(Default)]
pub(super) struct Registry {
    open: Mutex<Conns>,
    /// Notified when a connection is removed.
    closed: Condvar,
}

/// The connections by id, and the last id handed out.
#[derive(Default)]
struct Conns {
    last_id: u64,
    by_id: HashMap<u64, Open>,
}

struct Open {
    fd: OwnedFd,
    /// The git-annex side, once connected: shut down with the peer's, so a
    /// git-annex side that stopped reading cannot keep the relay (and its
    /// slot) after an idle-timeout or a stop.
    local: Option<OwnedFd>,
    /// Shut down (idle, or stopping): a local side attached later is shut
    /// down at once.
    shut: bool,
    peer: String,
    since: SystemTime,
    progress: Arc<Progress>,
    /// Bytes moved at the last look, and when that count last changed.
    moved: u64,
    moved_at: Instant,
    /// Shut down for being idle; its relay is winding down.
    idled: bool,
}

impl Open {
    /// Wake both sides of the relay: its threads see the sockets end.
    fn shut_down(&mut self) {
        shut_down(&self.fd);
        if let Some(local) = &self.local {
            shut_down(local);
        }
        self.shut = true;
    }
}

fn shut_down(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
}

impl Registry {
    /// Register a connection unless `max` are open already.
    pub(super) fn add(
        &self,
        conn: &OwnedFd,
        peer: &str,
        max: usize,
    ) -> io::Result<Option<(u64, Arc<Progress>)>> {
        let mut open = self.lock();
        if open.by_id.len() >= max {
            return Ok(None);
        }
        let entry = Open {
            fd: conn.try_clone()?,
            local: None,
            shut: false,
            peer: peer.to_string(),
            since: SystemTime::now(),
            progress: Arc::new(Progress::default()),
            moved: 0,
            moved_at: Instant::now(),
            idled: false,
        };
        let progress = Arc::clone(&entry.progress);
        open.last_id += 1;
        let id = open.last_id;
        open.by_id.insert(id, entry);
        Ok(Some((id, progress)))
    }

    /// Keep a duplicate of the connection's git-annex side, to wake it too.
    pub(super) fn attach_local(&self, id: u64, local: &UnixStream) {
        let mut open = self.lock();
        let Some(o) = open.by_id.get_mut(&id) else {
            return;
        };
        if let Ok(fd) = local.try_clone() {
            let fd = OwnedFd::from(fd);
            if o.shut {
                shut_down(&fd);
            }
            o.local = Some(fd);
        }
    }

    /// Did an idle-timeout or a stop shut this connection down?
    pub(super) fn was_shut(&self, id: u64) -> bool {
        self.lock().by_id.get(&id).is_some_and(|o| o.shut)
    }

    pub(super) fn remove(&self, id: u64) {
        self.lock().by_id.remove(&id);
        self.closed.notify_all();
    }

    /// The open connections, oldest first, for the status snapshot.
    pub(super) fn snapshot(&self) -> Vec<Conn> {
        let open = self.lock();
        let mut ids: Vec<&u64> = open.by_id.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let o = &open.by_id[id];
                Conn {
                    peer: o.peer.clone(),
                    since: unix_secs(o.since),
                    bytes_in: o.progress.a_to_b.load(Ordering::Relaxed),
                    bytes_out: o.progress.b_to_a.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Shut down the connections that moved nothing for `limit`; their
    /// relays then end and log how.
    pub(super) fn close_idle(&self, limit: Duration, log: &Log) {
        let now = Instant::now();
        let mut open = self.lock();
        for o in open.by_id.values_mut().filter(|o| !o.idled) {
            let moved = o.progress.a_to_b.load(Ordering::Relaxed)
                + o.progress.b_to_a.load(Ordering::Relaxed);
            if moved != o.moved {
                o.moved = moved;
                o.moved_at = now;
            } else if now.duration_since(o.moved_at) >= limit {
                log.line(format_args!(
                    "{}: closing: idle for {:.0}s (idle-timeout)",
                    o.peer,
                    now.duration_since(o.moved_at).as_secs_f64()
                ));
                o.shut_down();
                o.idled = true;
            }
        }
    }

    /// Shut every open connection down and wait up to `grace` for their
    /// relays to end. Returns how many are still open.
    pub(super) fn stop_all(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut open = self.lock();
        for o in open.by_id.values_mut() {
            o.shut_down();
        }
        while !open.by_id.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = match self.closed.wait_timeout(open, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        open.by_id.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (OwnedFd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (a.into(), b)
    }

    #[test]
    fn the_cap_counts_open_connections_and_status_sees_them_in_order() {
        let r = Registry::default();
        let (a, _pa) = conn();
        let (b, _pb) = conn();
        let (c, _pc) = conn();
        let (first, progress) = r.add(&a, "10.0.0.1:1", 2).unwrap().unwrap();
        progress.a_to_b.store(7, Ordering::Relaxed);
        let (second, _) = r.add(&b, "10.0.0.2:2", 2).unwrap().unwrap();
        assert!(
            r.add(&c, "10.0.0.3:3", 2).unwrap().is_none(),
            "over the cap"
        );
        let shown = r.snapshot();
        assert_eq!(
            shown.iter().map(|c| c.peer.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1:1", "10.0.0.2:2"]
        );
        assert_eq!((shown[0].bytes_in, shown[0].bytes_out), (7, 0));
        r.remove(first);
        assert!(
            r.add(&c, "10.0.0.3:3", 2).unwrap().is_some(),
            "a slot freed"
        );
        assert!(!r.was_shut(second));
    }

    #[test]
    fn a_stop_shuts_both_sides_down_and_waits_for_the_relays() {
        use std::io::Read;
        let r = Arc::new(Registry::default());
        let (peer, mut far_peer) = conn();
        let (local, mut far_local) = UnixStream::pair().unwrap();
        let (id, _) = r.add(&peer, "local", 10).unwrap().unwrap();
        r.attach_local(id, &local);
        // The relay of this connection ends when its sockets are shut down.
        let relay = {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut buf = [0u8; 1];
                let mut s = UnixStream::from(peer);
                let _ = s.read(&mut buf);
                r.remove(id);
            })
        };
        assert_eq!(r.stop_all(Duration::from_secs(10)), 0);
        relay.join().unwrap();
        assert!(r.snapshot().is_empty(), "the relay removed itself");
        let mut buf = [0u8; 1];
        assert_eq!(far_peer.read(&mut buf).unwrap(), 0, "peer side shut down");
        assert_eq!(
            far_local.read(&mut buf).unwrap(),
            0,
            "git-annex side shut down"
        );
    }

    #[test]
    fn a_stop_gives_up_on_relays_that_do_not_end() {
        let r = Registry::default();
        let (a, _pa) = conn();
        r.add(&a, "local", 10).unwrap().unwrap();
        let t = Instant::now();
        assert_eq!(r.stop_all(Duration::from_millis(100)), 1);
        assert!(t.elapsed() >= Duration::from_millis(100));
    }
}
