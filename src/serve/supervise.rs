//! The supervision loop: start `git-annex remotedaemon --foreground` in a
//! process group of its own with its stdin on a pipe we hold (it exits at
//! once at EOF on stdin), start it again after a pause that grows while it
//! keeps dying, and on SIGTERM/SIGINT stop its whole group and make sure no
//! listener of the repository is left. SIGHUP restarts it at once (to pick
//! up a newly enabled address).
//!
//! `serve` is a child subreaper: listeners orphaned by a remotedaemon that
//! died are re-parented to us, not to init, so we see them go and reap
//! them. SIGCHLD wakes the loop; between events it sleeps in poll(2).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::lock::{Lock, Record};
use super::output::forward_output;
use super::{Repo, ServeLog};
use crate::error::{Error, describe};
use crate::procs;
use crate::sys;

/// The first pause before starting remotedaemon again.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The pause doubles while remotedaemon keeps dying, up to this.
const LONGEST_PAUSE: Duration = Duration::from_secs(60);
/// A remotedaemon that ran this long died of something new: the pause
/// starts again from `FIRST_PAUSE`.
const RESET_AFTER: Duration = Duration::from_secs(60);
/// How long remotedaemon's group gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long anything gets to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Exits logged one by one before only every `LOG_EVERY`th is.
const LOG_FIRST: u32 = 5;
const LOG_EVERY: u32 = 10;

pub struct Supervisor {
    log: Arc<ServeLog>,
    lock: Lock,
    record: Record,
    annex: PathBuf,
    repo: Repo,
    env: Vec<(OsString, OsString)>,
    signals: OwnedFd,
    /// Write end of the pipe remotedaemon's stdout and stderr go to; a
    /// thread logs what comes out of the read end.
    output: OwnedFd,
    /// The write end of the running remotedaemon's stdin.
    stdin: Option<OwnedFd>,
    /// SIGTERM or SIGINT seen, not yet acted on.
    stop: Option<i32>,
    /// SIGHUP seen, not yet acted on.
    reload: bool,
    /// How remotedaemon ended, once reaped.
    exited: Option<(u32, String)>,
}

/// What ended a wait.
enum Event {
    Stop(i32),
    Reload,
    Exited(String),
}

impl Supervisor {
    pub fn new(
        log: ServeLog,
        lock: Lock,
        annex: PathBuf,
        repo: Repo,
        env: Vec<(OsString, OsString)>,
    ) -> Result<Supervisor, Error> {
        let log = Arc::new(log);
        let signals = sys::signal_pipe()
            .and_then(|p| sys::signal_pipe_on_child_exit().map(|()| p))
            .map_err(|e| Error::io("cannot set up signal handling", e))?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            log.line(format_args!(
                "cannot become a subreaper ({}): orphaned listeners go to init",
                e.desc()
            ));
        }
        let (read, output) =
            sys::pipe().map_err(|e| Error::io("cannot make a pipe for remotedaemon", e))?;
        forward_output(read, Arc::clone(&log));
        Ok(Supervisor {
            record: Record {
                pid: std::process::id(),
                since: unix_now(),
                restarts: 0,
                daemon: 0,
                daemon_since: 0,
            },
            log,
            lock,
            annex,
            repo,
            env,
            signals,
            output,
            stdin: None,
            stop: None,
            reload: false,
            exited: None,
        })
    }

    pub fn run(mut self) -> Result<(), Error> {
        let mut pause = FIRST_PAUSE;
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            let event = match self.start() {
                Ok(pid) => {
                    let event = self.wait_for_event(pid);
                    if !matches!(event, Event::Exited(_)) {
                        self.stop_daemon(pid);
                    } else {
                        // Its listeners and helpers are orphans now.
                        self.clear_group(pid);
                    }
                    event
                }
                Err(e) => Event::Exited(format!("could not be started: {}", describe(&e))),
            };
            self.record.daemon = 0;
            self.save();
            match event {
                Event::Stop(sig) => return self.finish(sig),
                Event::Reload => {
                    self.log
                        .line(format_args!("SIGHUP: starting remotedaemon again at once"));
                    pause = FIRST_PAUSE;
                    failures = 0;
                }
                Event::Exited(how) => {
                    let ran = started.elapsed();
                    if ran >= RESET_AFTER {
                        pause = FIRST_PAUSE;
                        failures = 0;
                    }
                    failures += 1;
                    if failures <= LOG_FIRST || failures % LOG_EVERY == 0 {
                        self.log.line(format_args!(
                            "remotedaemon {how} after {:.1} s; starting it again in {:.1} s{}",
                            ran.as_secs_f64(),
                            pause.as_secs_f64(),
                            if failures == LOG_FIRST {
                                format!(
                                    " ({failures} times in a row: from now on only every \
                                     {LOG_EVERY}th exit is logged)"
                                )
                            } else if failures > LOG_FIRST {
                                format!(" ({failures} times in a row)")
                            } else {
                                String::new()
                            }
                        ));
                    }
                    if let Some(sig) = self.sleep(pause) {
                        return self.finish(sig);
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
            }
            self.record.restarts += 1;
        }
    }

    /// Start remotedaemon; its pid (also its process group's id).
    fn start(&mut self) -> std::io::Result<u32> {
        use std::os::unix::process::CommandExt;
        let (stdin, hold) = sys::pipe()?;
        let out = self.output.try_clone()?;
        let err = self.output.try_clone()?;
        let child = Command::new(&self.annex)
            .args(["remotedaemon", "--foreground"])
            .current_dir(&self.repo.top)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()?;
        // Dropping the handle neither kills nor waits: we reap with
        // waitpid, which also collects orphaned listeners.
        let pid = child.id();
        drop(child);
        self.stdin = Some(hold);
        self.exited = None;
        self.record.daemon = pid;
        self.record.daemon_since = unix_now();
        self.save();
        self.log.line(format_args!(
            "started {} remotedaemon --foreground (pid {pid})",
            self.annex.display()
        ));
        Ok(pid)
    }

    fn save(&mut self) {
        if let Err(e) = self.lock.write(&self.record) {
            self.log.line(format_args!(
                "cannot write the lock file's record: {}",
                describe(&e)
            ));
        }
    }

    /// Sleep until a signal or remotedaemon's exit.
    fn wait_for_event(&mut self, pid: u32) -> Event {
        loop {
            if let Some(sig) = self.stop {
                return Event::Stop(sig);
            }
            if std::mem::take(&mut self.reload) {
                return Event::Reload;
            }
            if let Some((_, how)) = self.exited.take().filter(|(p, _)| *p == pid) {
                return Event::Exited(how);
            }
            self.wait_signals(PollTimeout::NONE, pid);
        }
    }

    /// Sleep for `pause`; a stop signal cuts it short, and so does SIGHUP
    /// (start now).
    fn sleep(&mut self, pause: Duration) -> Option<i32> {
        let until = Instant::now() + pause;
        while self.stop.is_none() && !self.reload {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.wait_signals(timeout(left), 0);
        }
        if std::mem::take(&mut self.reload) && self.stop.is_none() {
            self.log
                .line(format_args!("SIGHUP: starting remotedaemon now"));
        }
        self.stop
    }

    /// Wait for the signal pipe (or the timeout), then note what came and
    /// reap every child that exited; `daemon`'s end is kept for the loop.
    fn wait_signals(&mut self, wait: PollTimeout, daemon: u32) {
        let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, wait);
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(&self.signals, &mut buf) {
            if n == 0 {
                break;
            }
            for &sig in &buf[..n] {
                match i32::from(sig) {
                    libc::SIGTERM | libc::SIGINT => self.stop = self.stop.or(Some(sig.into())),
                    libc::SIGHUP => self.reload = true,
                    _ => {} // SIGCHLD: reaped below; SIGUSR1 means nothing here.
                }
            }
        }
        self.reap(daemon);
    }

    fn reap(&mut self, daemon: u32) {
        loop {
            let (pid, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exited with status {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("was killed by {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if pid.as_raw() as u32 == daemon && daemon != 0 {
                self.exited = Some((daemon, how));
            }
        }
    }

    /// Is anything left in the process group `pgid`?
    fn group_alive(pgid: u32) -> bool {
        !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH))
    }

    /// Wait (reaping) until the group is gone or `grace` has passed.
    fn wait_group(&mut self, pgid: u32, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        loop {
            self.reap(pgid);
            if !Self::group_alive(pgid) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // SIGCHLD wakes us; the cap catches members that are not our
            // children.
            self.wait_signals(timeout(left.min(Duration::from_millis(50))), pgid);
        }
    }

    /// SIGTERM to the whole group, SIGKILL to what is left after the grace.
    fn end_group(&mut self, pgid: u32) {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGTERM);
        if !self.wait_group(pgid, STOP_GRACE) {
            self.log.line(format_args!(
                "remotedaemon's process group {pgid} did not stop within {} s: SIGKILL",
                STOP_GRACE.as_secs()
            ));
            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            self.wait_group(pgid, KILL_GRACE);
        }
    }

    /// remotedaemon exited by itself: its listeners must not hold the
    /// ports the next one needs.
    fn clear_group(&mut self, pgid: u32) {
        self.stdin = None;
        if Self::group_alive(pgid) {
            self.end_group(pgid);
        }
        self.no_listener_left();
    }

    fn stop_daemon(&mut self, pid: u32) {
        let started = Instant::now();
        self.end_group(pid);
        self.stdin = None;
        self.no_listener_left();
        self.log.line(format_args!(
            "remotedaemon (pid {pid}) and its listeners stopped in {:.2} s",
            started.elapsed().as_secs_f64()
        ));
    }

    /// However they got away (another process group, a remotedaemon that
    /// forked), no listener of this repository outlives its remotedaemon.
    fn no_listener_left(&mut self) {
        let left: Vec<u32> = procs::all()
            .into_iter()
            .filter(|p| p.alive() && p.cwd_is(&self.repo.top) && p.listen_args().is_some())
            .map(|p| p.pid)
            .collect();
        if left.is_empty() {
            return;
        }
        self.log.line(format_args!(
            "stopping listener(s) left behind: pid {}",
            left.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        terminate(&left);
        self.reap(0);
    }

    fn finish(self, sig: i32) -> Result<(), Error> {
        let name = match sig {
            libc::SIGINT => "SIGINT",
            _ => "SIGTERM",
        };
        self.log.line(format_args!(
            "{name}: stopped after {} restart(s); exiting",
            self.record.restarts
        ));
        Ok(())
    }
}

/// SIGTERM to each pid, SIGKILL to those still there after `STOP_GRACE`.
/// For processes that are not (or no longer) our children.
pub fn terminate(pids: &[u32]) {
    let alive = |pid: u32| procs::Proc::read(pid).is_some_and(|p| p.alive());
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let until = Instant::now() + STOP_GRACE;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

fn timeout(d: Duration) -> PollTimeout {
    // Rounded up, so a wait never ends a hair early and spins.
    let ms = d.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
