//! The few places that need `unsafe` or raw libc, each with its reason.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::socket::{setsockopt, sockopt};

/// Our stdin, borrowed for the life of the process.
pub fn stdin() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 is open for the whole run (we never close it; a
    // parent that closed it before exec would give us EBADF from read, which
    // the relay reports as an error, not undefined behaviour).
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

/// Our stdout, borrowed for the life of the process.
pub fn stdout() -> BorrowedFd<'static> {
    // SAFETY: as for stdin; `retire_stdout` replaces descriptor 1 in place
    // with dup2, so the number stays valid.
    unsafe { BorrowedFd::borrow_raw(libc::STDOUT_FILENO) }
}

/// Close our end of the stdout pipe so the reader sees EOF, while keeping
/// descriptor 1 open (on /dev/null): a descriptor number that was closed
/// could be reused by the next socket, and stray output would go there.
pub fn retire_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 on two valid descriptors; it atomically closes the
        // old descriptor 1 and makes it a copy of /dev/null.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}

/// A pipe whose ends are not inherited by child processes.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// How long a peer may leave our bytes unacknowledged, or stay silent on
/// an idle connection, before we give up on it, unless `user-timeout` says
/// otherwise. Linux's own bound is tcp_retries2, about 15 minutes, and all
/// that time `git annex get` hangs on a peer that vanished mid-transfer.
pub const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(120);

/// TCP keepalive timing for the default user timeout: a peer that vanished
/// on an idle connection (the change-notification connections remotedaemon
/// keeps open) is noticed after 60 s idle + 6 probes 10 s apart, two
/// minutes in all, the same bound as for bytes in flight.
const KEEPALIVE_IDLE_SECS: u32 = 60;
const KEEPALIVE_INTERVAL_SECS: u32 = 10;
const KEEPALIVE_PROBES: u32 = 6;

/// Options for every TCP socket we own: no Nagle (the P2P protocol is small
/// request/response messages, Nagle cost 25x on small files:
/// doc/git-annex-contract.md, "Nagle"),
/// keepalive, and the user timeout (see `set_user_timeout`).
pub fn tune_tcp(sock: &impl AsFd, user_timeout: Duration) -> io::Result<()> {
    let fd = sock.as_fd();
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    setsockopt(&fd, sockopt::KeepAlive, &true)?;
    set_user_timeout(&fd, user_timeout)
}

/// Bound the time a dead peer can hold a connection, in both of the ways a
/// peer can be waited for (Linux, tcp(7)):
/// - bytes we sent stay unacknowledged: TCP_USER_TIMEOUT ends the
///   connection after `limit` (ETIMEDOUT), where the kernel would retry
///   for about 15 minutes;
/// - we only receive, or nothing moves: no retransmission runs, only
///   keepalive probes; with TCP_USER_TIMEOUT set, the first probe that goes
///   unanswered once `limit` has passed since the peer was last heard ends
///   the connection. So the probes start at half the limit (at most 60 s)
///   and repeat every twelfth of it (at most 10 s): 60 s + 6 x 10 s for
///   the default two minutes, about 5 s for a limit of 5 s.
///
/// Zero leaves both to the kernel's defaults for the user timeout and keeps
/// the default keepalive timing.
pub fn set_user_timeout(sock: &impl AsFd, limit: Duration) -> io::Result<()> {
    let fd = sock.as_fd();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let (idle, interval) = keepalive_timing(limit);
        setsockopt(&fd, sockopt::TcpKeepIdle, &idle)?;
        setsockopt(&fd, sockopt::TcpKeepInterval, &interval)?;
        setsockopt(&fd, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
        let ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
        setsockopt(&fd, sockopt::TcpUserTimeout, &ms)?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (fd, limit);
    Ok(())
}

/// Keepalive idle time and probe interval, in seconds, for a user timeout.
#[cfg(any(target_os = "linux", target_os = "android", test))]
fn keepalive_timing(limit: Duration) -> (u32, u32) {
    if limit.is_zero() {
        return (KEEPALIVE_IDLE_SECS, KEEPALIVE_INTERVAL_SECS);
    }
    let secs = u32::try_from(limit.as_secs()).unwrap_or(u32::MAX);
    (
        (secs / 2).clamp(1, KEEPALIVE_IDLE_SECS),
        (secs / 12).clamp(1, KEEPALIVE_INTERVAL_SECS),
    )
}

/// Let a listening socket bind an address that is not on this host (yet):
/// IP_FREEBIND on Linux. The option lives at the IP level, which Linux also
/// honours on IPv6 sockets (ipv6_setsockopt passes SOL_IP options on), so
/// it works on kernels older than IPV6_FREEBIND (4.15) too. Elsewhere the
/// bind fails with EADDRNOTAVAIL and the listener retries (listen/bind.rs).
pub fn allow_absent_address(sock: &impl AsFd) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = setsockopt(&sock.as_fd(), sockopt::IpFreebind, &true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = sock;
}

/// Raise the soft limit on open descriptors to the hard limit: a listener
/// holds three or four per connection (peer socket, local socket, pipes of
/// the splice path), and Linux's usual soft limit of 1024 is reached long
/// before its hard limit. Where the hard limit is "unlimited" (macOS), the
/// kernel refuses it as a soft limit; the old limit then stays.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Random bits for picking ports and tokens. Not for secrets: git-annex's
/// auth tokens are the secret, and they are not ours to make.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    // No /dev/urandom (a bare chroot): the clock and our pid still differ
    // between two runs.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Close every descriptor above stderr that we inherited. remotedaemon
/// leaks its own descriptors into the listener, its listening unix socket
/// among them: after remotedaemon died, an orphaned listener kept that
/// socket alive, so peers queued on it and hung instead of being refused
/// (measured with git-annex 10.20261026). Pipes leaked the same way would
/// also keep other processes from seeing EOF. Called first thing in main,
/// before we open anything of our own.
pub fn close_inherited_fds() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: close_range(2) only closes descriptors; none above 2 is in
        // use by us yet. It fails with ENOSYS on kernels before 5.9.
        let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        if r == 0 {
            return;
        }
    }
    let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
        .min(65536) as i32;
    for fd in 3..max {
        // SAFETY: as above; EBADF for descriptors that are not open.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Does our stderr go nowhere (/dev/null, or closed)? remotedaemon gives
/// its listeners /dev/null, and then the log must go to a file.
pub fn stderr_goes_nowhere() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        // dev_t and ino_t are not u64 on every target.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.st_dev as u64 == null.dev() && st.st_ino as u64 == null.ino(),
        Err(_) => true,
    }
}

/// Write end of the signal pipe, for the signal handler (-1 until set).
static STOP_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    let saved = nix::errno::Errno::last_raw();
    let fd = STOP_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is a local byte and
    // the descriptor is the non-blocking write end of the stop pipe, which
    // is never closed, so a full pipe drops the byte instead of blocking.
    unsafe {
        libc::write(fd, (&raw const byte).cast(), 1);
    }
    nix::errno::Errno::set_raw(saved);
}

/// Turn SIGTERM, SIGINT and SIGHUP (stop) and SIGUSR1 (look around: see
/// `parent_death_signal`) into a byte holding the signal number on a pipe
/// (the self-pipe trick), so the listener's poll loop sees them. Returns
/// the read end.
pub fn signal_pipe() -> io::Result<OwnedFd> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::os::fd::IntoRawFd;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // Kept open for the life of the process: the handler may run any time.
    STOP_PIPE.store(w.into_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(r)
}

/// The signal `parent_death_signal` asks for.
pub const PARENT_DEATH_SIGNAL: i32 = libc::SIGUSR1;

/// Ask the kernel for SIGUSR1 when our parent goes: a fast path to notice
/// an orphaned listener. Only a hint: it fires when the parent *thread*
/// that forked us exits, which in git-annex's threaded runtime can be any
/// thread while remotedaemon lives on, so the signal only makes the
/// listener check `getppid()` at once rather than at its next tick.
pub fn parent_death_signal() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGUSR1);
}

/// The user we run as (the effective uid, the one the kernel checks).
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) takes nothing, cannot fail and touches no memory
    // of ours (nix has it only behind a feature we do not otherwise need).
    unsafe { libc::geteuid() }
}

/// The signals the `git` shim passes on to the service it runs.
const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// For the `git` shim: the forwarded signals and SIGCHLD (the child ended)
/// as bytes on a pipe, the same self-pipe as `signal_pipe`. Returns the
/// read end (non-blocking).
pub fn forwarding_signal_pipe() -> io::Result<OwnedFd> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::os::fd::IntoRawFd;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    STOP_PIPE.store(w.into_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    for sig in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
        let sig = Signal::try_from(sig).map_err(io::Error::from)?;
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(r)
}

/// Wait up to a second for signals on the pipe from
/// `forwarding_signal_pipe`, and return their numbers (none on timeout:
/// the caller looks at its child again either way).
pub fn read_signals(pipe: BorrowedFd<'_>) -> Vec<i32> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pipe, PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(1000u16)).unwrap_or(0) <= 0 {
        return Vec::new();
    }
    let mut buf = [0u8; 64];
    match nix::unistd::read(pipe, &mut buf) {
        Ok(n) => buf[..n].iter().map(|&b| i32::from(b)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Send `sig` to `pid`; a child that already went is no error.
pub fn send_signal(pid: i32, sig: i32) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Is this descriptor a pipe (or FIFO)?
pub fn is_pipe(fd: BorrowedFd<'_>) -> bool {
    // mode_t is not u32 on every target.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::stat::fstat(fd)
        .is_ok_and(|st| (st.st_mode as u32 & libc::S_IFMT as u32) == libc::S_IFIFO as u32)
}

/// How many bytes wait unread in the pipe `fd` (either end): FIONREAD.
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at
    // a local that outlives the call; the descriptor is borrowed, so open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Has the reading end of the pipe `fd` (our write end) been closed?
/// poll(2) reports POLLERR on a pipe's write end once no reader is left.
pub fn pipe_reader_gone(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL))
}

/// End this process by signal `sig`, as the child we stood for did, so
/// our parent sees the same ending. No core file: the crash was not ours.
/// Falls back to exit status 128 + `sig` for a signal that does not kill.
pub fn die_by_signal(sig: i32) -> ! {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    if let Ok(signal) = Signal::try_from(sig) {
        // SAFETY: restoring the default disposition installs no handler.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
        let mut set = SigSet::empty();
        set.add(signal);
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        let _ = nix::sys::signal::raise(signal);
    }
    std::process::exit(128 + sig)
}

/// Also write SIGCHLD into the signal pipe (after `signal_pipe`): `serve`
/// learns at once that remotedaemon or an orphaned listener exited, and
/// sleeps in poll otherwise.
pub fn signal_pipe_on_child_exit() -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions.
    unsafe { sigaction(Signal::SIGCHLD, &action) }?;
    Ok(())
}

/// Wait until `fd` is ready for `events`, or `deadline` passes (false).
/// POLLHUP and POLLERR count as ready: the read or write that follows says
/// what happened.
pub fn ready_by(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    deadline: std::time::Instant,
) -> Result<bool, nix::errno::Errno> {
    use nix::poll::{PollFd, PollTimeout, poll};
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Rounded up, so the last poll does not spin with 0 ms.
        let ms = left.as_millis().saturating_add(1);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(fd, events)], timeout) {
            // Nothing yet, or a signal: recheck the clock.
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// Have the kernel send SIGTERM to a child we are about to start when the
/// thread that starts it exits, which for us is when the process dies, by
/// SIGKILL too: a fowld left behind would hold its nameplate and 65 MB.
/// SIGTERM, not SIGKILL: fowld then closes its wormhole and the mailbox
/// frees the nameplate (doc/networks/fowl.md, "Nameplates").
pub fn terminate_with_us(cmd: &mut std::process::Command) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::process::CommandExt;
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only prctl(2), getppid(2) and kill(2), which are
        // async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
                // We may have died before the prctl: then no signal comes.
                if nix::unistd::getppid() != parent {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_follows_the_user_timeout() {
        let secs = Duration::from_secs;
        // The default: 60 s + 6 x 10 s, two minutes, as before.
        assert_eq!(keepalive_timing(DEFAULT_USER_TIMEOUT), (60, 10));
        assert_eq!(keepalive_timing(Duration::ZERO), (60, 10));
        assert_eq!(keepalive_timing(secs(5)), (2, 1));
        assert_eq!(keepalive_timing(secs(30)), (15, 2));
        assert_eq!(keepalive_timing(secs(3600)), (60, 10));
        assert_eq!(keepalive_timing(Duration::from_millis(500)), (1, 1));
    }
}
