//! Integration tests: every test runs the real `p2p-annex` binary against
//! real peers on loopback.

mod support;

// The command line, address mode, and bad input.
mod cli;
// Connect mode against a TCP peer run by the test.
mod connect;
// Listen mode relaying to a unix socket, for tcp and unix-sockets.
mod listen;
// The listener's life: orphans, signals, its log, its cap and allow-list.
mod lifecycle;
// Fault injection and load through one listener.
mod faults;
// p2p-annex status: listeners, live connections, last errors.
mod status;
// Real git-annex repositories syncing through our helpers.
mod e2e_annex;
// `p2p-annex check` on healthy and broken real git-annex repositories.
mod check;
// Hostile local users and peers: planted sockets, echoed tokens, injections.
mod security;
// `p2p-annex serve` supervising a real remotedaemon.
mod serve;
// The socks netname: danted, a hostile SOCKS server, git-annex through danted.
mod socks;
// The configuration keys of --help, the man page, the README and src/ agree.
mod docs;
