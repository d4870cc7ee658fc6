//! The first exchange of git-annex's P2P protocol, AUTH, and where a
//! repository keeps the token it sends. Only `p2p-annex check` speaks it;
//! the transports relay bytes and never look at them.
//!
//! git-annex's P2P protocol document (doc/design/p2p_protocol.mdwn): the
//! client sends `AUTH <its uuid> <token>` and a newline; the server answers
//! `AUTH-SUCCESS <its uuid>` or `AUTH-FAILURE`. After AUTH-FAILURE
//! git-annex 10.20261026 keeps the connection open (measured), so we read
//! one line, not to the end. The token is a secret: it is never printed,
//! logged, or put in an error message.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Overrides the stored token for every address, as in git-annex.
pub const TOKEN_ENV: &str = "GIT_ANNEX_P2P_AUTHTOKEN";

/// The longest answer line we wait for: `AUTH-SUCCESS` and a UUID are 49
/// bytes.
const MAX_ANSWER: usize = 1024;

/// An auth token. Debug shows where it came from, never what it is.
pub struct Token {
    secret: Vec<u8>,
    pub source: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {}, hidden)", self.source)
    }
}

impl Token {
    /// git-annex's tokens are one word of printable ASCII; anything else
    /// would break the AUTH line.
    pub fn well_formed(&self) -> bool {
        !self.secret.is_empty() && self.secret.iter().all(|b| b.is_ascii_graphic())
    }
}

/// The file under `.git/annex/creds/` holding the token for an address:
/// `<netname>:<address>` with every byte that is not an ASCII letter or
/// digit written as `%XX` in upper-case hex (DESIGN.md; e.g.
/// `tcp%3A10%2E0%2E0%2E2%3A5599`).
pub fn creds_file_name(netname: &str, address: &str) -> String {
    let mut out = String::new();
    for b in format!("{netname}:{address}").bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token this repository sends to `<netname>:<address>`: the
/// environment's, else the first line of its creds file. None when there is
/// neither.
pub fn load_token(git_dir: &Path, netname: &str, address: &str) -> io::Result<Option<Token>> {
    if let Some(v) = std::env::var_os(TOKEN_ENV) {
        use std::os::unix::ffi::OsStrExt;
        return Ok(Some(Token {
            secret: first_line(v.as_bytes()).to_vec(),
            source: TOKEN_ENV.to_string(),
        }));
    }
    let file: PathBuf = git_dir
        .join("annex/creds")
        .join(creds_file_name(netname, address));
    match std::fs::read(&file) {
        Ok(bytes) if !first_line(&bytes).is_empty() => Ok(Some(Token {
            secret: first_line(&bytes).to_vec(),
            source: file.display().to_string(),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn first_line(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == b'\n').next().unwrap_or_default()
}

/// What the server said to our AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `AUTH-SUCCESS <uuid>`: the server's UUID.
    Success(String),
    Failure,
    /// Any other line, made printable and short.
    Other(String),
    /// The connection ended before a whole line came.
    Closed,
    TimedOut,
}

pub fn parse_answer(line: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    if let Some(uuid) = text.strip_prefix("AUTH-SUCCESS ") {
        return Answer::Success(uuid.trim().to_string());
    }
    if text == "AUTH-FAILURE" {
        return Answer::Failure;
    }
    let shown: String = text
        .chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Answer::Other(shown)
}

/// Send AUTH on a connected socket and read the answer, within `timeout`.
/// Errors never mention the token.
pub fn exchange(
    fd: BorrowedFd<'_>,
    uuid: &str,
    token: &Token,
    timeout: Duration,
) -> io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let mut request = format!("AUTH {uuid} ").into_bytes();
    request.extend_from_slice(&token.secret);
    request.push(b'\n');
    let mut rest = &request[..];
    while !rest.is_empty() {
        if !ready(fd, PollFlags::POLLOUT, deadline)? {
            return Ok(Answer::TimedOut);
        }
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Ok(Answer::Closed),
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; MAX_ANSWER];
    let mut have = 0;
    loop {
        if let Some(end) = buf[..have].iter().position(|&b| b == b'\n') {
            return Ok(parse_answer(&buf[..end]));
        }
        if have == buf.len() {
            return Ok(parse_answer(&buf[..have]));
        }
        if !ready(fd, PollFlags::POLLIN, deadline)? {
            return Ok(Answer::TimedOut);
        }
        match nix::unistd::read(fd, &mut buf[have..]) {
            Ok(0) => return Ok(Answer::Closed),
            Ok(n) => have += n,
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(Errno::ECONNRESET) => return Ok(Answer::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Wait for `events` until the deadline (false when it passed).
fn ready(fd: BorrowedFd<'_>, events: PollFlags, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Rounded up, so the last poll does not spin with 0 ms.
        let ms = left.as_millis().saturating_add(1);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(fd, events)], timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            // POLLHUP/POLLERR count as ready: the read or write says what.
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn creds_files_are_named_as_git_annex_names_them() {
        // As found in a real repository after `git annex p2p --link`.
        assert_eq!(
            creds_file_name("tcp", "127.0.0.1:12695"),
            "tcp%3A127%2E0%2E0%2E1%3A12695"
        );
        assert_eq!(
            creds_file_name("my-ygg", "200:ab::1:5"),
            "my%2Dygg%3A200%3Aab%3A%3A1%3A5"
        );
    }

    #[test]
    fn answers() {
        let uuid = "2edcd1c3-2ff5-4322-a4d1-bee984e11e33";
        assert_eq!(
            parse_answer(format!("AUTH-SUCCESS {uuid}").as_bytes()),
            Answer::Success(uuid.into())
        );
        assert_eq!(parse_answer(b"AUTH-FAILURE\r"), Answer::Failure);
        assert_eq!(
            parse_answer(b"ERROR bad\x1b[31m"),
            Answer::Other("ERROR bad?[31m".into())
        );
    }

    fn token(secret: &str) -> Token {
        Token {
            secret: secret.as_bytes().to_vec(),
            source: "test".into(),
        }
    }

    #[test]
    fn the_token_is_never_shown() {
        let t = token("s3cr3t");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(t.well_formed());
        assert!(!token("two words").well_formed());
        assert!(!token("").well_formed());
    }

    #[test]
    fn one_exchange_over_a_socket() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&theirs).read_line(&mut line).unwrap();
            (&theirs).write_all(b"AUTH-FAILURE\n").unwrap();
            line
        });
        let got = exchange(ours.as_fd(), "u-1", &token("tok"), Duration::from_secs(10)).unwrap();
        assert_eq!(got, Answer::Failure);
        assert_eq!(server.join().unwrap(), "AUTH u-1 tok\n");
    }

    #[test]
    fn silence_is_a_timeout_and_a_close_is_closed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let got = exchange(ours.as_fd(), "u", &token("t"), Duration::from_millis(50)).unwrap();
        assert_eq!(got, Answer::TimedOut);
        drop(theirs);
        let got = exchange(ours.as_fd(), "u", &token("t"), Duration::from_secs(10)).unwrap();
        assert_eq!(got, Answer::Closed);
    }
}
