//! The command line: which netname, which mode. Parsed strictly, the lexopt
//! way; addresses and socket paths stay `OsString` until a mode converts
//! them on purpose.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use lexopt::prelude::*;

use crate::error::Error;

/// The prefix git-annex puts before a netname to find its helper program.
pub const HELPER_PREFIX: &str = "git-annex-p2p-";

pub const HELP: &str = "\
p2p-annex: git-annex P2P transport helpers for tcp, SOCKS5, unix sockets and Tor

Usage:
  git-annex-p2p-NETNAME ADDRESS              connect: relay stdin/stdout to the peer
  git-annex-p2p-NETNAME address              print this repository's addresses
  git-annex-p2p-NETNAME ADDRESS SOCKETFILE   listen: relay peers to git-annex's socket
  p2p-annex NETNAME ARGS...                  the same, with the netname given
  p2p-annex check [--json]                   in a repository: check git-annex, the
                                             links, remotedaemon, listeners and peers
  p2p-annex status [--json]                  in a repository: its listeners, their
                                             open connections, their last errors
  p2p-annex serve [--no-git-shim] [DIR]      run DIR's `git-annex remotedaemon` in
                                             the foreground (for systemd, procd,
                                             OpenRC): restart it when it dies, stop
                                             it and its listeners on SIGTERM
  git ARGS...                                (a link named git) the git shim serve
                                             puts first on remotedaemon's PATH
  p2p-annex --help | --version

Netnames: tcp (plaintext: only over an encrypting overlay such as WireGuard,
Yggdrasil or Tailscale, or a LAN you trust), socks (through a SOCKS5 proxy:
yggstack, Tor, I2P, ssh -D), unix-sockets, onion (Tor onion services made
through tor's control port, no root), fowl (magic-wormhole through fowl's
fowld), and any name with
`git config p2p-annex.NAME.transport tcp|socks|unix-sockets|onion|fowl` (but
check and status and serve, which are commands).

Configuration is git config p2p-annex.NETNAME.KEY, for example:
  p2p-annex.tcp.address          host to advertise (may repeat)
  p2p-annex.tcp.port             port (picked and stored when unset)
  p2p-annex.tcp.bind             where listen mode binds (may repeat); default
                                 the address's host, :: or 0.0.0.0 for all
  p2p-annex.tcp.connect-timeout  default 30s
  p2p-annex.NETNAME.user-timeout give up on a silent peer, default 2m
  p2p-annex.socks.address        HOST:PORT peers reach us at (may repeat)
  p2p-annex.socks.proxy          HOST:PORT or unix:/PATH, default 127.0.0.1:1080
  p2p-annex.socks.proxy-user     with p2p-annex.socks.proxy-password:
                                 RFC 1929 credentials for the proxy
  p2p-annex.socks.listen         where listen mode binds, default 127.0.0.1
  p2p-annex.socks.connect-timeout  default 60s
  p2p-annex.onion.control        tor's control port, HOST:PORT or unix:/PATH;
                                 default unix:/run/tor/control, 127.0.0.1:9051
  p2p-annex.onion.control-password  for a tor with HashedControlPassword
  p2p-annex.onion.port           virtual port (picked and stored when unset)
  p2p-annex.onion.proxy          tor's SOCKS port, default 127.0.0.1:9050
  p2p-annex.onion.connect-timeout  default 60s
  p2p-annex.fowl.mailbox         magic-wormhole mailbox URL for address mode,
                                 default ws://relay.magic-wormhole.io:4000/v1
  p2p-annex.fowl.fowld           fowl's fowld program, default fowld on PATH
  p2p-annex.unix-sockets.dir     socket directory, default private:
                                 $XDG_RUNTIME_DIR/p2p-annex or /tmp/p2p-annex-UID
  p2p-annex.unix-sockets.trust-uid  another user whose sockets we use
  p2p-annex.unix-sockets.connect-timeout  default 30s
  p2p-annex.NETNAME.allow        peer network allowed in (CIDR; may repeat)
  p2p-annex.NETNAME.max-connections  default 100
  p2p-annex.NETNAME.idle-timeout close idle connections after this; default
                                 never (fowl: 10m)
  p2p-annex.NETNAME.log          listener log (default .git/annex/ when
                                 stderr is /dev/null)

Exit status: 0 done (check: nothing failed), 1 failure, 2 usage error.
See p2p-annex(1).
";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Run {
        netname: String,
        mode: Mode,
    },
    /// `p2p-annex check [--json]`: diagnose this repository and its peers.
    Check {
        json: bool,
    },
    /// `p2p-annex status [--json]`: what this repository's listeners do now.
    Status {
        json: bool,
    },
    /// `p2p-annex serve [--no-git-shim] [DIR]`: supervise remotedaemon.
    Serve(crate::serve::Options),
}

/// Words that are p2p-annex's own commands, never netnames.
pub const RESERVED: [&str; 3] = ["check", "status", "serve"];

#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// Relay stdio to the peer at ADDRESS.
    Connect(OsString),
    /// Print this repository's addresses.
    Address,
    /// Accept peers at ADDRESS and relay each to SOCKETFILE.
    Listen(OsString, PathBuf),
}

/// Parse the whole command line, program name included.
pub fn parse(mut argv: impl Iterator<Item = OsString>) -> Result<Command, Error> {
    let argv0 = argv.next().unwrap_or_default();
    let mut netname = netname_from_argv0(&argv0);
    if let Some(name) = netname.as_deref().filter(|n| RESERVED.contains(n)) {
        return Err(reserved(name));
    }
    let mut positional: Vec<OsString> = Vec::new();
    let mut parser = lexopt::Parser::from_args(argv);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(v) if netname.is_none() && v == "check" => return parse_check(parser),
            Value(v) if netname.is_none() && v == "status" => return parse_status(parser),
            Value(v) if netname.is_none() && v == "serve" => return parse_serve(parser),
            Value(v) if netname.is_none() => netname = Some(parse_netname(&v)?),
            Value(v) => positional.push(v),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let Some(netname) = netname else {
        return Err(Error::Usage("missing NETNAME".into()));
    };
    let mut positional = positional.into_iter();
    let mode = match (positional.next(), positional.next(), positional.next()) {
        (None, _, _) => return Err(Error::Usage("missing ADDRESS".into())),
        (Some(a), None, _) if a == "address" => Mode::Address,
        (Some(a), None, _) => Mode::Connect(a),
        (Some(_), Some(sock), None) if sock.is_empty() => {
            return Err(Error::Usage("empty SOCKETFILE".into()));
        }
        (Some(a), Some(sock), None) => Mode::Listen(a, PathBuf::from(sock)),
        (Some(_), Some(_), Some(extra)) => {
            return Err(Error::Usage(format!(
                "unexpected argument {:?}",
                extra.to_string_lossy()
            )));
        }
    };
    Ok(Command::Run { netname, mode })
}

/// The rest of `p2p-annex check [--json]`.
fn parse_check(parser: lexopt::Parser) -> Result<Command, Error> {
    Ok(parse_json_flag("check", parser)?.map_or(Command::Help, |json| Command::Check { json }))
}

/// The rest of `p2p-annex status [--json]`.
fn parse_status(parser: lexopt::Parser) -> Result<Command, Error> {
    Ok(parse_json_flag("status", parser)?.map_or(Command::Help, |json| Command::Status { json }))
}

/// The rest of `p2p-annex serve [--no-git-shim] [DIR]`.
fn parse_serve(mut parser: lexopt::Parser) -> Result<Command, Error> {
    let mut opts = crate::serve::Options {
        dir: None,
        shim: true,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("no-git-shim") => opts.shim = false,
            Short('h') | Long("help") => return Ok(Command::Help),
            Value(v) if opts.dir.is_none() && !v.is_empty() => opts.dir = Some(PathBuf::from(v)),
            _ => return Err(Error::Usage(format!("serve: {}", arg.unexpected()))),
        }
    }
    Ok(Command::Serve(opts))
}

/// `[--json]` after a command word; None when help was asked for.
fn parse_json_flag(command: &str, mut parser: lexopt::Parser) -> Result<Option<bool>, Error> {
    let mut json = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => json = true,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(Error::Usage(format!("{command}: {}", arg.unexpected()))),
        }
    }
    Ok(Some(json))
}

fn reserved(name: &str) -> Error {
    Error::Usage(format!(
        "{name:?} cannot be a netname: check, status and serve are p2p-annex commands \
         (`p2p-annex check` diagnoses a repository)"
    ))
}

/// `git-annex-p2p-tcp` → `tcp`; anything else (`p2p-annex`) names no netname.
fn netname_from_argv0(argv0: &OsStr) -> Option<String> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    let netname = name.strip_prefix(HELPER_PREFIX)?;
    valid_netname(netname).then(|| netname.to_string())
}

fn parse_netname(v: &OsStr) -> Result<String, Error> {
    match v.to_str() {
        Some(name) if RESERVED.contains(&name) => Err(reserved(name)),
        Some(name) if valid_netname(name) => Ok(name.to_string()),
        _ => Err(Error::Usage(bad_netname(&v.to_string_lossy()))),
    }
}

/// Why a netname is refused, for every place one comes in.
pub fn bad_netname(name: &str) -> String {
    format!(
        "bad netname {} (expected a letter or digit, then letters, digits, '-' or '_')",
        crate::text::printable(&format!("{name:?}"))
    )
}

/// Netnames become part of program names, git config keys and the command
/// lines `check` suggests: `[A-Za-z0-9][A-Za-z0-9_-]*`, nothing a shell or
/// git config would read differently.
pub fn valid_netname(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, Error> {
        parse(args.iter().map(OsString::from))
    }

    fn cmd(netname: &str, mode: Mode) -> Command {
        Command::Run {
            netname: netname.into(),
            mode,
        }
    }

    #[test]
    fn netname_from_the_program_name() {
        assert_eq!(
            run(&["/usr/bin/git-annex-p2p-tcp", "10.0.0.1:5599"]).unwrap(),
            cmd("tcp", Mode::Connect("10.0.0.1:5599".into()))
        );
        assert_eq!(
            run(&["git-annex-p2p-unix-sockets", "address"]).unwrap(),
            cmd("unix-sockets", Mode::Address)
        );
        assert_eq!(
            run(&["git-annex-p2p-myygg", "a:1", ".git/annex/p2p/x"]).unwrap(),
            cmd(
                "myygg",
                Mode::Listen("a:1".into(), ".git/annex/p2p/x".into())
            )
        );
    }

    #[test]
    fn netname_as_the_first_argument() {
        assert_eq!(
            run(&["p2p-annex", "tcp", "address"]).unwrap(),
            cmd("tcp", Mode::Address)
        );
        assert_eq!(
            run(&["./target/p2p-annex", "tcp", "--", "h:1"]).unwrap(),
            cmd("tcp", Mode::Connect("h:1".into()))
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(run(&["p2p-annex", "--help"]).unwrap(), Command::Help);
        assert_eq!(run(&["p2p-annex", "-h"]).unwrap(), Command::Help);
        assert_eq!(
            run(&["git-annex-p2p-tcp", "--version"]).unwrap(),
            Command::Version
        );
        assert_eq!(run(&["p2p-annex", "-V"]).unwrap(), Command::Version);
    }

    #[test]
    fn usage_errors() {
        let usage = |args: &[&str]| match run(args) {
            Err(Error::Usage(msg)) => msg,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        };
        assert_eq!(usage(&["p2p-annex"]), "missing NETNAME");
        assert_eq!(usage(&["p2p-annex", "tcp"]), "missing ADDRESS");
        assert_eq!(usage(&["git-annex-p2p-tcp"]), "missing ADDRESS");
        assert_eq!(
            usage(&["git-annex-p2p-tcp", "a:1", "s", "extra"]),
            "unexpected argument \"extra\""
        );
        assert!(usage(&["git-annex-p2p-tcp", "--frobnicate"]).contains("--frobnicate"));
        assert!(usage(&["p2p-annex", "../x", "address"]).starts_with("bad netname"));
        assert!(usage(&["p2p-annex", "", "address"]).starts_with("bad netname"));
        assert_eq!(
            usage(&["p2p-annex", "my.net", "address"]),
            "bad netname \"my.net\" (expected a letter or digit, then letters, digits, '-' or '_')"
        );
        assert!(usage(&["p2p-annex", "_x", "address"]).starts_with("bad netname"));
        assert!(usage(&["p2p-annex", "x;id", "address"]).starts_with("bad netname"));
    }

    #[test]
    fn check_and_status_are_commands_not_netnames() {
        assert_eq!(
            run(&["p2p-annex", "check"]).unwrap(),
            Command::Check { json: false }
        );
        assert_eq!(
            run(&["p2p-annex", "check", "--json"]).unwrap(),
            Command::Check { json: true }
        );
        let usage = |args: &[&str]| match run(args) {
            Err(Error::Usage(msg)) => msg,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        };
        assert!(usage(&["p2p-annex", "check", "--frob"]).starts_with("check: "));
        assert!(usage(&["p2p-annex", "check", "extra"]).starts_with("check: "));
        assert_eq!(
            run(&["p2p-annex", "status", "--json"]).unwrap(),
            Command::Status { json: true }
        );
        assert!(usage(&["p2p-annex", "status", "address"]).starts_with("status: "));
        let serve = |dir: Option<&str>, shim| {
            Command::Serve(crate::serve::Options {
                dir: dir.map(PathBuf::from),
                shim,
            })
        };
        assert_eq!(run(&["p2p-annex", "serve"]).unwrap(), serve(None, true));
        assert_eq!(
            run(&["p2p-annex", "serve", "/srv/annex"]).unwrap(),
            serve(Some("/srv/annex"), true)
        );
        assert_eq!(
            run(&["p2p-annex", "serve", "--no-git-shim", "r"]).unwrap(),
            serve(Some("r"), false)
        );
        assert!(usage(&["p2p-annex", "serve", "a", "b"]).starts_with("serve: "));
        assert!(usage(&["p2p-annex", "serve", "--json"]).starts_with("serve: "));
        for args in [
            &["git-annex-p2p-check", "10.0.0.1:1"][..],
            &["git-annex-p2p-status", "address"],
            &["git-annex-p2p-serve", "address"],
        ] {
            let msg = usage(args);
            assert!(msg.contains("cannot be a netname"), "{args:?}: {msg}");
        }
        // The helper form takes addresses, never the command.
        assert_eq!(
            run(&["git-annex-p2p-tcp", "check"]).unwrap(),
            cmd("tcp", Mode::Connect("check".into()))
        );
    }

    #[test]
    fn an_empty_or_odd_program_name_is_not_a_netname() {
        assert_eq!(netname_from_argv0(OsStr::new("git-annex-p2p-")), None);
        assert_eq!(netname_from_argv0(OsStr::new("")), None);
        assert_eq!(netname_from_argv0(OsStr::new("p2p-annex")), None);
    }
}
