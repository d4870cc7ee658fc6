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
// The `git` shim: transparent, never recursive, a service's end held until
// its output was read.
mod gitshim;
// Real git-annex repositories syncing through our helpers.
mod e2e_annex;
// Reliable sync: 40 rounds both ways under `p2p-annex serve`, no hang, no failure.
mod sync_rounds;
// `p2p-annex check` on healthy and broken real git-annex repositories.
mod check;
// Hostile local users and peers: planted sockets, echoed tokens, injections.
mod security;
// `p2p-annex serve` supervising a real remotedaemon.
mod serve;
// The socks netname: danted, a hostile SOCKS server, git-annex through danted.
mod socks;
// Running unattended: binding before the address exists, vanished peers,
// running out of descriptors (network namespaces; root).
mod unattended;
// The configuration keys of --help, the man page, the README and src/ agree.
mod docs;
// The onion netname against a real tor in a network namespace.
mod onion;
