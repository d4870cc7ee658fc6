//! p2p-annex: git-annex's generic P2P transport helpers in one binary.
//! `main` only turns results into messages and exit codes.

mod addr;
mod allow;
mod auth;
mod check;
mod cli;
mod config;
mod error;
mod listen;
mod log;
mod md5;
mod mover;
mod net;
mod procs;
mod relay;
mod report;
mod socks5;
mod status;
mod sys;

use std::io::Write;

use cli::Command;

fn main() {
    sys::close_inherited_fds();
    sys::raise_fd_limit();
    // std has already set SIGPIPE to "ignore": a peer or a parent that goes
    // away shows up as EPIPE, which the relay handles, not as a signal.
    let code = match cli::parse(std::env::args_os()) {
        Ok(Command::Help) => print(cli::HELP),
        Ok(Command::Version) => print(&format!("p2p-annex {}\n", env!("CARGO_PKG_VERSION"))),
        Ok(Command::Check { json }) => check::run(json),
        Ok(Command::Status { json }) => status::run(json),
        Ok(Command::Run { netname, mode }) => match net::run(&netname, mode) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("p2p-annex: {netname}: {e}");
                if e.exit_code() == 2 && matches!(e, error::Error::Usage(_)) {
                    eprintln!("Try 'p2p-annex --help'.");
                }
                e.exit_code()
            }
        },
        Err(e) => {
            eprintln!("p2p-annex: {e}\nTry 'p2p-annex --help'.");
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
