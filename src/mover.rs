//! How one relay direction moves a batch of bytes from its source to its
//! sink: splice(2) on Linux, so the bytes never pass through user space,
//! and read/write through a buffer everywhere else.
//!
//! The path is chosen once per direction, from the kinds of the two
//! descriptors:
//! - one of them is a pipe (our stdin or stdout when git-annex runs us):
//!   splice straight from the source to the sink;
//! - both are sockets (listen mode): splice into a pipe of our own and from
//!   it into the sink, emptying it before the next batch, so no byte waits
//!   in it when the direction ends;
//! - anything else (a regular file, a tty, /dev/null), a system without
//!   splice, or `P2P_ANNEX_NO_SPLICE=1` (a switch for tests and debugging):
//!   read and write.
//!
//! A splice the kernel refuses for these descriptors (EINVAL, ENOSYS)
//! switches the direction to read and write for good, without losing a
//! byte.
//!
//! A batch is done when every byte taken from the source was handed to the
//! sink: the relay's rules (relay.rs) only ever see whole batches.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Bytes per read on the read/write path: 16384 reads per GiB. 128 KiB
/// and 256 KiB were no faster on the benchmark chain (BENCHMARKS.md).
/// Allocated only when this path is taken, so idle connections and
/// spliced ones do not pay for it.
const COPY_BUF: usize = 64 * 1024;

/// What one step did.
pub enum Step {
    /// This many bytes went from the source to the sink.
    Moved(usize),
    /// The source is at end of file; the sink got everything before it.
    Eof,
    /// Nothing to do yet; poll again.
    Again,
}

/// Which side failed, which the relay's rules depend on: a source error
/// ends the relay, a sink that went away only ends the direction.
pub enum Failure {
    Source(Errno),
    Sink(Errno),
}

/// How this direction moves bytes.
pub enum Mover {
    Copy(Option<Vec<u8>>),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    /// With whether splice has moved bytes in this direction yet: once it
    /// has, EINVAL is no refusal of these descriptors but an error of the
    /// socket (a route that became a black hole gives it).
    Splice(splice::Splice, bool),
}

impl Mover {
    /// The cheapest path for this pair of descriptors.
    pub fn choose(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Mover {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(s) = splice::Splice::choose(src, dst) {
            return Mover::Splice(s, false);
        }
        let _ = (src, dst);
        Mover::Copy(None)
    }

    /// Move one batch; blocks until the sink took all of it, as write(2)
    /// does, so a blocked sink is woken the same ways (EPIPE, a socket
    /// shut down by the other direction).
    pub fn step(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<Step, Failure> {
        match self {
            Mover::Copy(buf) => copy(buf.get_or_insert_with(|| vec![0u8; COPY_BUF]), src, dst),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Mover::Splice(s, proven) => match s.step(src, dst, *proven) {
                Ok(result) => {
                    if let Ok(Step::Moved(_)) = result {
                        *proven = true;
                    }
                    result
                }
                Err(splice::Refused { moved }) => {
                    *self = Mover::Copy(None);
                    if moved > 0 {
                        Ok(Step::Moved(moved))
                    } else {
                        self.step(src, dst)
                    }
                }
            },
        }
    }

    #[cfg(test)]
    fn is_splice(&self) -> bool {
        !matches!(self, Mover::Copy(_))
    }
}

fn copy(buf: &mut [u8], src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<Step, Failure> {
    let n = match nix::unistd::read(src, buf) {
        Ok(0) => return Ok(Step::Eof),
        Ok(n) => n,
        Err(Errno::EINTR) | Err(Errno::EAGAIN) => return Ok(Step::Again),
        Err(e) => return Err(Failure::Source(e)),
    };
    write_all(dst, &buf[..n]).map_err(Failure::Sink)?;
    Ok(Step::Moved(n))
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => wait_writable(fd)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A non-blocking sink (a descriptor shared with a parent that set
/// O_NONBLOCK) that is full: wait until it takes more. A sink that hung up
/// wakes us too, and the next write tells why.
fn wait_writable(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod splice {
    use super::*;
    use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl};
    use nix::sys::stat::{SFlag, fstat};
    use std::os::fd::{AsFd, OwnedFd};

    /// Whether `P2P_ANNEX_NO_SPLICE` asks for the read/write path: any value
    /// but empty or `0`. Read once per process.
    pub fn splice_disabled() -> bool {
        static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DISABLED.get_or_init(|| {
            std::env::var_os("P2P_ANNEX_NO_SPLICE").is_some_and(|v| !v.is_empty() && v != "0")
        })
    }

    /// Bytes asked for per splice. The pipe's slots are the real limit: a
    /// slot holds one page or one fragment of a socket buffer, whatever
    /// its length, so asking for more than the pipe holds is fine.
    const SPLICE_LEN: usize = 4 << 20;

    /// Our own pipe between two sockets starts at the kernel's default
    /// size (16 pages). A batch that fills it is bulk data: the pipe then
    /// grows to BULK_PIPE, once, for fewer system calls and wake-ups per
    /// GiB. Measured on the benchmark chain (BENCHMARKS.md): with 64 KiB
    /// the listener used 1.6 to 3 times the CPU and the chain took 1.5 to
    /// 1.7 times as long as with 256 KiB; 1 MiB was not clearly better.
    /// Idle and chatty connections keep small pipes: pipe pages count
    /// against a per-user limit (pipe-user-pages-soft, 64 MiB), past which
    /// every new pipe of the user, git-annex's too, gets only 2 pages.
    /// Best effort: a failure keeps the pipe as it is.
    const DEFAULT_PIPE: usize = 64 * 1024;
    const BULK_PIPE: usize = 256 * 1024;

    /// The kernel cannot splice these descriptors: switch to read and
    /// write. `moved` bytes of this step were delivered before that.
    pub struct Refused {
        pub moved: usize,
    }

    pub enum Splice {
        /// One end is a pipe: splice from the source to the sink.
        Direct { sink_is_pipe: bool },
        /// Both are sockets: through a pipe of our own, made on first use
        /// (an idle connection holds no pipe).
        Piped(Option<Pipe>),
    }

    pub struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
        grown: bool,
    }

    impl Pipe {
        fn new() -> std::io::Result<Pipe> {
            let (r, w) = crate::sys::pipe()?;
            Ok(Pipe { r, w, grown: false })
        }

        /// After a batch of `n` bytes: grow the pipe once bulk data flows,
        /// that is when a batch filled it. A full pipe can hold much less
        /// than its nominal size (a slot per socket buffer fragment, and
        /// fragments can be small), so a batch that left the source still
        /// readable counts as full too. Until the pipe has grown, that
        /// costs one poll per batch.
        fn note_batch(&mut self, n: usize, src: BorrowedFd<'_>) {
            if self.grown || (n < DEFAULT_PIPE && !readable_now(src)) {
                return;
            }
            self.grown = true;
            let _ = fcntl(&self.w, FcntlArg::F_SETPIPE_SZ(BULK_PIPE as i32));
        }
    }

    #[derive(PartialEq)]
    enum Kind {
        Pipe,
        Socket,
        Other,
    }

    fn kind(fd: BorrowedFd<'_>) -> Kind {
        match fstat(fd).map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT) {
            Ok(t) if t == SFlag::S_IFIFO => Kind::Pipe,
            Ok(t) if t == SFlag::S_IFSOCK => Kind::Socket,
            _ => Kind::Other,
        }
    }

    impl Splice {
        pub fn choose(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Option<Splice> {
            if splice_disabled() {
                return None;
            }
            match (kind(src), kind(dst)) {
                (Kind::Other, _) | (_, Kind::Other) => None,
                (Kind::Socket, Kind::Socket) => Some(Splice::Piped(None)),
                (_, dst) => Some(Splice::Direct {
                    sink_is_pipe: dst == Kind::Pipe,
                }),
            }
        }

        /// `proven`: splice has worked for these descriptors before, so
        /// EINVAL is the socket's error, not a refusal.
        pub fn step(
            &mut self,
            src: BorrowedFd<'_>,
            dst: BorrowedFd<'_>,
            proven: bool,
        ) -> Result<Result<Step, Failure>, Refused> {
            match self {
                Splice::Direct { sink_is_pipe } => direct(src, dst, *sink_is_pipe, proven),
                Splice::Piped(Some(pipe)) => {
                    let result = piped(src, dst, pipe.r.as_fd(), pipe.w.as_fd(), proven);
                    if let Ok(Ok(Step::Moved(n))) = result {
                        pipe.note_batch(n, src);
                    }
                    result
                }
                Splice::Piped(pipe) => {
                    // No descriptor or memory left for a pipe: copy instead.
                    *pipe = Some(Pipe::new().map_err(|_| Refused { moved: 0 })?);
                    self.step(src, dst, proven)
                }
            }
        }
    }

    fn readable_now(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// EINVAL: this pair of descriptors cannot be spliced (a file system or
    /// socket family without splice support). ENOSYS: no splice at all
    /// (a seccomp filter, an emulator).
    fn refused(e: Errno) -> bool {
        matches!(e, Errno::EINVAL | Errno::ENOSYS)
    }

    fn splice(
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        len: usize,
        flags: SpliceFFlags,
    ) -> nix::Result<usize> {
        // Never SPLICE_F_MORE: it sets MSG_MORE, which holds back the end
        // of a small message, the very delay TCP_NODELAY is there to
        // avoid. The kernel sets MSG_MORE itself while the pipe holds more.
        nix::fcntl::splice(from, None, to, None, len, flags)
    }

    /// One end is a pipe. Errors come from the socket end, except EPIPE,
    /// which a pipe sink without readers gives.
    fn direct(
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        sink_is_pipe: bool,
        proven: bool,
    ) -> Result<Result<Step, Failure>, Refused> {
        let result = loop {
            // Blocking, like write(2): returns once it moved what the
            // source had, or when the sink hung up.
            match splice(src, dst, SPLICE_LEN, SpliceFFlags::SPLICE_F_MOVE) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        Ok(match result {
            Ok(0) => Ok(Step::Eof),
            Ok(n) => Ok(Step::Moved(n)),
            // A descriptor someone made non-blocking: the sink is full
            // (wait for it), or the source had nothing after all (the
            // relay polls it again).
            Err(Errno::EAGAIN) => wait_writable(dst)
                .map(|()| Step::Again)
                .map_err(Failure::Sink),
            Err(e) if !proven && refused(e) => return Err(Refused { moved: 0 }),
            Err(Errno::EPIPE) => Err(Failure::Sink(Errno::EPIPE)),
            Err(e) if sink_is_pipe => Err(Failure::Source(e)),
            Err(e) => Err(Failure::Sink(e)),
        })
    }

    /// Both ends are sockets: source → our pipe → sink.
    fn piped(
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        pipe_r: BorrowedFd<'_>,
        pipe_w: BorrowedFd<'_>,
        proven: bool,
    ) -> Result<Result<Step, Failure>, Refused> {
        // Our pipe is empty here. Take what the source has without waiting
        // for more: the relay polled, this is what it saw.
        let fill = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let n = loop {
            match splice(src, pipe_w, SPLICE_LEN, fill) {
                Ok(0) => return Ok(Ok(Step::Eof)),
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Ok(Step::Again)),
                Err(e) if !proven && refused(e) => return Err(Refused { moved: 0 }),
                Err(e) => return Ok(Err(Failure::Source(e))),
            }
        };
        // Empty it into the sink before anything else: these bytes are
        // gone from the source, the pipe is the only place they are.
        let mut left = n;
        while left > 0 {
            match splice(pipe_r, dst, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(m) => left -= m.min(left),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    if let Err(e) = wait_writable(dst) {
                        return Ok(Err(Failure::Sink(e)));
                    }
                }
                Err(e) if !proven && refused(e) => {
                    // The sink takes write(2) only: the rest goes out that
                    // way, then the direction stays on read/write.
                    return match copy_out(pipe_r, dst, left) {
                        Ok(()) => Err(Refused { moved: n }),
                        Err(e) => Ok(Err(e)),
                    };
                }
                Err(e) => return Ok(Err(Failure::Sink(e))),
            }
        }
        Ok(Ok(Step::Moved(n)))
    }

    /// The `left` bytes still in our pipe, out to the sink through a buffer.
    fn copy_out(
        pipe_r: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        mut left: usize,
    ) -> Result<(), Failure> {
        let mut buf = vec![0u8; COPY_BUF.min(left)];
        while left > 0 {
            let want = left.min(buf.len());
            let n = match nix::unistd::read(pipe_r, &mut buf[..want]) {
                // Cannot happen: we hold the write end and the bytes are in.
                Ok(0) => return Err(Failure::Source(Errno::EIO)),
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Failure::Source(e)),
            };
            write_all(dst, &buf[..n]).map_err(Failure::Sink)?;
            left -= n;
        }
        Ok(())
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::splice::splice_disabled;
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Runs `mover` from `src` to `dst` until EOF, as the relay would
    /// (one step per readable event; blocking steps need no poll here).
    fn run_to_eof(mut mover: Mover, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> usize {
        let mut total = 0;
        loop {
            match mover.step(src, dst) {
                Ok(Step::Moved(n)) => total += n,
                Ok(Step::Again) => continue,
                Ok(Step::Eof) => return total,
                Err(Failure::Source(e)) => panic!("source failed: {e}"),
                Err(Failure::Sink(e)) => panic!("sink failed: {e}"),
            }
        }
    }

    /// Writes `data` into `w` and closes it on a thread; reads all of `r`.
    fn through(
        data: Vec<u8>,
        mut w: UnixStream,
        mut r: UnixStream,
        relay: impl FnOnce(),
    ) -> Vec<u8> {
        let writer = std::thread::spawn(move || {
            w.write_all(&data).expect("write");
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).expect("read");
            got
        });
        relay();
        writer.join().expect("writer");
        reader.join().expect("reader")
    }

    #[test]
    fn socket_to_socket_moves_every_byte_in_order() {
        let data = bytes(5 << 20);
        let (feed, src) = UnixStream::pair().expect("pair");
        let (dst, out) = UnixStream::pair().expect("pair");
        let mover = Mover::choose(src.as_fd(), dst.as_fd());
        assert_eq!(mover.is_splice(), !splice_disabled());
        let got = through(data.clone(), feed, out, || {
            assert_eq!(run_to_eof(mover, src.as_fd(), dst.as_fd()), data.len());
            dst.shutdown(std::net::Shutdown::Write).expect("shutdown");
        });
        assert!(got == data, "bytes differ");
    }

    #[test]
    fn pipe_to_socket_moves_every_byte_in_order() {
        let data = bytes(3 << 20);
        let (pipe_r, pipe_w) = crate::sys::pipe().expect("pipe");
        let (dst, mut out) = UnixStream::pair().expect("pair");
        let mover = Mover::choose(pipe_r.as_fd(), dst.as_fd());
        assert_eq!(mover.is_splice(), !splice_disabled());
        let input = data.clone();
        let writer = std::thread::spawn(move || {
            std::fs::File::from(pipe_w)
                .write_all(&input)
                .expect("write");
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            out.read_to_end(&mut got).expect("read");
            got
        });
        assert_eq!(run_to_eof(mover, pipe_r.as_fd(), dst.as_fd()), data.len());
        dst.shutdown(std::net::Shutdown::Write).expect("shutdown");
        writer.join().expect("writer");
        assert!(reader.join().expect("reader") == data, "bytes differ");
    }

    #[test]
    fn files_and_devices_take_the_read_write_path() {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let (a, _b) = UnixStream::pair().expect("pair");
        assert!(!Mover::choose(null.as_fd(), a.as_fd()).is_splice());
        assert!(!Mover::choose(a.as_fd(), null.as_fd()).is_splice());
    }

    #[test]
    fn a_refused_splice_falls_back_without_losing_bytes() {
        // splice(2) refuses a pipe to itself (EINVAL): the step must still
        // move the bytes, by read and write, and stay on that path.
        let (r, w) = crate::sys::pipe().expect("pipe");
        nix::unistd::write(&w, b"abc").expect("write");
        let mut mover = Mover::choose(r.as_fd(), w.as_fd());
        assert_eq!(mover.is_splice(), !splice_disabled());
        assert!(matches!(
            mover.step(r.as_fd(), w.as_fd()),
            Ok(Step::Moved(3))
        ));
        assert!(!mover.is_splice());
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(r.as_fd(), &mut buf).expect("read"), 3);
        assert_eq!(&buf[..3], b"abc");
    }
}
