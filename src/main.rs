//! p2p-annex: git-annex's generic P2P transport helpers in one binary.
//! `main` only turns results into messages and exit codes.

mod addr;
mod allow;
mod auth;
mod check;
mod cli;
mod config;
mod error;
mod gitshim;
mod listen;
mod log;
mod md5;
mod mover;
mod net;
mod procs;
mod relay;
mod report;
mod serve;
mod sha256;
mod socks5;
mod status;
mod sys;
mod text;
mod torcontrol;
mod trust;

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
        Ok(Command::Check { json }) => check::run(json),
        Ok(Command::Status { json }) => status::run(json),
        Ok(Command::Serve(opts)) => match serve::run(opts) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("p2p-annex: serve: {e}");
                e.exit_code()
            }
        },
        Ok(Command::Run { netname, mode }) => match net::run(&netname, mode) {
            Ok(()) => 0,
            Err(e) => {
                // Messages quote paths and addresses, which may hold anything.
                eprintln!("p2p-annex: {netname}: {}", text::printable(&e.to_string()));
                if e.exit_code() == 2 && matches!(e, error::Error::Usage(_)) {
                    eprintln!("Try 'p2p-annex --help'.");
                }
                e.exit_code()
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
