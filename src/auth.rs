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
use nix::poll::PollFlags;

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
/// digit written as `%XX` in upper-case hex (doc/git-annex-contract.md,
/// "Tokens"; e.g.
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

/// What redacted text shows where a secret was.
pub const REDACTED: &str = "<redacted>";

/// Shortest line of a creds file taken for a secret to redact: git-annex's
/// tokens are far longer, and redacting short words would garble output.
const MIN_SECRET: usize = 8;

/// Every secret this repository knows, to keep out of what we print: the
/// lines of its `.git/annex/creds/` files (the tokens it sends, and those
/// it accepts) and the environment's token. Not the enabled addresses
/// (`p2paddrs`), which are meant to be shared.
pub fn known_secrets(git_dir: &Path) -> Vec<Vec<u8>> {
    let mut secrets = Vec::new();
    if let Some(v) = std::env::var_os(TOKEN_ENV) {
        use std::os::unix::ffi::OsStrExt;
        secrets.push(first_line(v.as_bytes()).to_vec());
    }
    let creds = git_dir.join("annex/creds");
    for entry in std::fs::read_dir(creds).into_iter().flatten().flatten() {
        if entry.file_name() == "p2paddrs" {
            continue;
        }
        if let Ok(bytes) = std::fs::read(entry.path()) {
            secrets.extend(bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec));
        }
    }
    // The secrets of fowl addresses (`net::fowl`).
    for entry in std::fs::read_dir(git_dir.join("annex"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("p2p-annex.") && name.ends_with(".secret") {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                secrets.extend(bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec));
            }
        }
    }
    secrets.retain(|s| s.len() >= MIN_SECRET && s.iter().all(u8::is_ascii_graphic));
    secrets
}

/// `text` with every secret in it replaced by `REDACTED`, compared byte for
/// byte without regard to ASCII case (a peer may echo it changed).
pub fn redact(text: &str, secrets: &[Vec<u8>]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for secret in secrets {
        bytes = redact_one(&bytes, secret, false);
    }
    // Secrets are ASCII, so whole ones were cut out at character bounds.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One secret out of `text`; with `cut` (text that may end in the middle
/// of the secret, as a line we stopped reading does), a start of the
/// secret at its very end too.
fn redact_one(text: &[u8], secret: &[u8], cut: bool) -> Vec<u8> {
    if secret.is_empty() {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.len() >= secret.len() && rest[..secret.len()].eq_ignore_ascii_case(secret) {
            out.extend_from_slice(REDACTED.as_bytes());
            i += secret.len();
        } else if cut
            && rest.len() < secret.len()
            && secret[..rest.len()].eq_ignore_ascii_case(rest)
        {
            out.extend_from_slice(REDACTED.as_bytes());
            i = text.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
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
        // The answer is parsed, and may be shown, only with our token cut
        // out: a hostile peer echoes it, in any case, across several reads.
        if let Some(end) = buf[..have].iter().position(|&b| b == b'\n') {
            return Ok(parse_answer(&redact_one(&buf[..end], &token.secret, false)));
        }
        if have == buf.len() {
            return Ok(parse_answer(&redact_one(&buf[..have], &token.secret, true)));
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
    Ok(crate::sys::ready_by(fd, events, deadline)?)
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
    fn secrets_are_redacted_in_any_case() {
        let s = vec![b"Secret-Token-42".to_vec()];
        assert_eq!(
            redact("AUTH u Secret-Token-42 and sECRET-tOKEN-42!", &s),
            "AUTH u <redacted> and <redacted>!"
        );
        assert_eq!(redact("nothing here", &s), "nothing here");
        assert_eq!(
            redact_one(b"echo: Secret-To", &s[0], true),
            b"echo: <redacted>".to_vec()
        );
        assert_eq!(
            redact_one(b"echo: Secret-To", &s[0], false),
            b"echo: Secret-To"
        );
    }

    #[test]
    fn an_echoed_token_never_reaches_the_answer() {
        for echo in [
            &b"AUTH u-1 tok3n-s3cret\n"[..],
            b"AUTH-SUCCESS TOK3N-S3CRET\n",
            b"ERROR tok3n-s3cret tok3n-s3cret\n",
        ] {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let server = std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(&theirs).read_line(&mut line).unwrap();
                // Split across reads.
                for chunk in echo.chunks(5) {
                    (&theirs).write_all(chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let got = exchange(
                ours.as_fd(),
                "u-1",
                &token("tok3n-s3cret"),
                Duration::from_secs(10),
            )
            .unwrap();
            server.join().unwrap();
            let shown = format!("{got:?}").to_ascii_lowercase();
            assert!(!shown.contains("tok3n"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
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
