//! The one error type of p2p-annex, and its messages.
//!
//! Messages follow netcat's voice: lowercase, what failed and why. The
//! program name and netname are added by `main`, so a message reads well as
//! `p2p-annex: tcp: <message>`.

use std::fmt;
use std::io;

use crate::addr::AddrError;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong; `main` exits 2 and points at `--help`.
    Usage(String),
    /// An address given on the command line or in configuration is malformed.
    Addr(AddrError),
    /// A configuration value is malformed, or a required one is missing.
    Config(String),
    /// Could not reach the peer.
    Connect { target: String, cause: io::Error },
    /// The SOCKS proxy failed us: it broke the protocol, did not answer in
    /// time, or could not reach the peer. `problem` never holds credentials.
    Proxy { proxy: String, problem: String },
    /// Tor's control port failed us: refused our authentication, broke the
    /// protocol, or refused a command. `problem` never holds a secret.
    Tor { control: String, problem: String },
    /// fowl failed us: no mailbox, no listener answered, the wormhole or
    /// fowld broke. `problem` never holds the secret or a code.
    Fowl { mailbox: String, problem: String },
    /// Could not set up a listening socket.
    Bind { target: String, cause: io::Error },
    /// The relay failed after the connection was made.
    Relay(io::Error),
    /// A file or peer another local user could have planted: a socket
    /// directory, socket file or log we refuse to use (SECURITY.md).
    Untrusted { path: String, problem: String },
    /// Any other system call failed; `what` says what we were doing.
    Io { what: String, cause: io::Error },
    /// `serve` will not run: the message says why and what to do.
    Refused(String),
    /// Run as the `git` shim, we found no real git to hand the command to;
    /// exit 127, as a shell does for a missing command.
    GitNotFound(String),
    /// A program could not be started (exit 127 when it is missing, 126
    /// otherwise, as a shell does).
    Exec { program: String, cause: io::Error },
    /// A command that needs a repository was run outside one.
    NotInRepository,
    /// Standard output is gone (a closed pipe): `main` exits 1 without a
    /// message, which would be read by no one the output was for.
    Stdout(io::Error),
}

impl Error {
    pub fn io(what: impl Into<String>, cause: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            cause,
        }
    }

    /// Exit status: 2 for usage errors (the caller must change the command),
    /// 127/126 when the `git` shim cannot run git, 1 for everything else
    /// that went wrong at run time.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Addr(_) => 2,
            Error::GitNotFound(_) => 127,
            Error::Exec { cause, .. } if cause.kind() == io::ErrorKind::NotFound => 127,
            Error::Exec { .. } => 126,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Addr(e) => write!(f, "{e}"),
            Error::Config(msg) => write!(f, "{msg}"),
            Error::Connect { target, cause } => {
                write!(f, "cannot connect to {target}: {}", describe(cause))
            }
            Error::Proxy { proxy, problem } => write!(f, "proxy {proxy}: {problem}"),
            Error::Tor { control, problem } => write!(f, "tor control port {control}: {problem}"),
            Error::Fowl { mailbox, problem } => write!(f, "mailbox {mailbox}: {problem}"),
            Error::Bind { target, cause } => {
                write!(f, "cannot listen on {target}: {}", describe(cause))
            }
            Error::Relay(cause) => write!(f, "connection failed: {}", describe(cause)),
            Error::Untrusted { path, problem } => write!(f, "refusing {path}: {problem}"),
            Error::Io { what, cause } => write!(f, "{what}: {}", describe(cause)),
            Error::Refused(msg) => write!(f, "{msg}"),
            Error::GitNotFound(why) => write!(f, "cannot find the real git: {why}"),
            Error::Exec { program, cause } => {
                write!(f, "cannot run {program}: {}", describe(cause))
            }
            Error::NotInRepository => write!(f, "not in a git repository"),
            Error::Stdout(cause) => write!(f, "cannot write the output: {}", describe(cause)),
        }
    }
}

impl std::error::Error for Error {}

impl From<AddrError> for Error {
    fn from(e: AddrError) -> Error {
        Error::Addr(e)
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Error {
        Error::Usage(e.to_string())
    }
}

/// An I/O error as a short lowercase phrase: "connection refused" rather
/// than std's "Connection refused (os error 111)".
pub fn describe(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        // Keep acronyms such as "SOCKS" intact; lowercase only a capitalised word.
        Some(c) if c.is_uppercase() && !chars.next().is_some_and(char::is_uppercase) => c
            .to_lowercase()
            .chain(text[c.len_utf8()..].chars())
            .collect(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_short_phrases() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(describe(&e), "connection refused");
    }

    #[test]
    fn acronyms_keep_their_case() {
        let e = io::Error::other("SOCKS proxy said no");
        assert_eq!(describe(&e), "SOCKS proxy said no");
    }
}
