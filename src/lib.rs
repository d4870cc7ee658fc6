//! p2p-annex as a library: the modules the `p2p-annex` binary (src/main.rs)
//! is made of, so the fuzz targets (fuzz/) and unit tests reach the very
//! code the binary runs.
//!
//! The pure, reusable parts come first: they do no I/O and take input from
//! outside the process (addresses, git config, SOCKS5 replies, status
//! answers). The program's parts follow; only those `main` calls are public,
//! the rest stay private so the compiler still finds code nothing uses.

// Pure: parsing and formatting, no I/O.
pub mod addr;
pub mod allow;
pub mod fowlcode;
pub mod fowlproto;
pub mod sha256;
pub mod socks5;
pub mod text;
pub mod torcontrol;

// The status wire format and where a listener keeps its files.
pub mod control;

// The one error type, and configuration (its parsers are pure; reading it
// runs `git config`).
pub mod config;
pub mod error;

// The program: the commands `main` dispatches to.
pub mod check;
pub mod cli;
pub mod gitshim;
pub mod net;
pub mod serve;
pub mod status;
pub mod sys;

// The program's inner parts.
pub mod auth;
mod listen;
mod log;
mod mover;
mod private_file;
mod procs;
mod relay;
mod trust;
