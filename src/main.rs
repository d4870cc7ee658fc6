//! p2p-annex: git-annex's generic P2P transport helpers in one binary.
//! `main` only turns results into messages and exit codes.

use p2p_annex::{check, cli, error, gitshim, net, serve, status, sys, text};

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

use cli::Command;

fn main() {
    // Invoked as `git` (the shim `p2p-annex serve` puts first on
    // remotedaemon's PATH): stand in for git, transparently, before
    // anything else; its descriptors are git's, not ours to close.
    let mut args = std::env::args_os();
    if args
        .next()
        .is_some_and(|a| Path::new(&a).file_name() == Some(OsStr::new("git")))
    {
        shim();
    }
    sys::close_inherited_fds();
    sys::raise_fd_limit();
    // std has already set SIGPIPE to "ignore": a peer or a parent that goes
    // away shows up as EPIPE, which the relay handles, not as a signal.
    let code = match cli::parse(std::env::args_os()) {
        Ok(Command::Help) => print(cli::HELP),
        Ok(Command::Version) => print(&format!("p2p-annex {}\n", env!("CARGO_PKG_VERSION"))),
        Ok(Command::Check { json }) => match check::run(json) {
            Ok(check::Verdict::Passed) => 0,
            Ok(check::Verdict::Failed) => 1,
            Err(e) => fail("check", &e),
        },
        Ok(Command::Status { json }) => match status::run(json) {
            Ok(()) => 0,
            Err(e) => fail("status", &e),
        },
        Ok(Command::Serve(opts)) => match serve::run(opts) {
            Ok(()) => 0,
            Err(e) => {
                // serve's messages are its own text (paths it found, advice
                // over several lines), printed as they are.
                eprintln!("p2p-annex: serve: {e}");
                e.exit_code()
            }
        },
        Ok(Command::Run { netname, mode }) => match net::run(&netname, mode) {
            Ok(()) => 0,
            Err(e) => {
                let code = fail(&netname, &e);
                if code == 2 && matches!(e, error::Error::Usage(_)) {
                    eprintln!("Try 'p2p-annex --help'.");
                }
                code
            }
        },
        Err(e) => {
            eprintln!(
                "p2p-annex: {}\nTry 'p2p-annex --help'.",
                text::printable(&e.to_string())
            );
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// Say what failed, as `p2p-annex: WHAT: message` (messages quote paths
/// and addresses, which may hold anything); the exit status. A closed
/// stdout is said to no one.
fn fail(what: &str, e: &error::Error) -> i32 {
    if !matches!(e, error::Error::Stdout(_)) {
        eprintln!("p2p-annex: {what}: {}", text::printable(&e.to_string()));
    }
    e.exit_code()
}

/// Print to stdout; a closed stdout is not worth a panic.
fn print(text: &str) -> i32 {
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// The `git` shim's ending: the wrapped service's exit status or signal.
fn shim() -> ! {
    match gitshim::run(std::env::args_os().collect()) {
        Ok(gitshim::Ending::Exited(code)) => std::process::exit(code),
        Ok(gitshim::Ending::Killed(sig)) => sys::die_by_signal(sig),
        Err(e) => {
            eprintln!("p2p-annex (as git): {e}");
            std::process::exit(e.exit_code());
        }
    }
}
