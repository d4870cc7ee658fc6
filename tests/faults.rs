//! Fault injection and load through one listener. Each test says what it
//! injects and what must hold; all data is pseudo-random and checked byte
//! for byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::peers::*;
use crate::support::*;

/// Entries of a /proc directory of the listener; a test that cannot read
/// them cannot measure a leak, so it fails rather than compare zeros.
fn count_entries(dir: &str) -> usize {
    let n = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {dir} to measure the listener: {e}"))
        .count();
    assert!(n > 0, "{dir} is empty: nothing measured");
    n
}

fn fds(pid: u32) -> usize {
    count_entries(&format!("/proc/{pid}/fd"))
}

fn threads(pid: u32) -> usize {
    count_entries(&format!("/proc/{pid}/task"))
}

/// The listener's resident memory; panics when it cannot be read (a
/// memory check of nothing would pass).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status to measure memory: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .filter(|&kib| kib > 0)
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status: nothing measured"))
}

#[test]
fn a_hundred_concurrent_connections_then_2000_short_ones_leak_nothing() {
    // Injected: load. 100 connections at once, 8 MiB each way each, then
    // 2000 short connections one after another.
    const CONNS: u64 = 100;
    const EACH: usize = 8 << 20;
    let home = TempDir::new("load");
    let socket = home.path().join("annex.sock");
    stream_server(&socket);
    let (listener, port) = tcp_listener(home.path(), &socket, &[]);
    let pid = listener.pid();
    let (fds_before, threads_before) = (fds(pid), threads(pid));

    let start = Instant::now();
    let clients: Vec<_> = (0..CONNS)
        .map(|i| thread::spawn(move || stream_client(port, 1000 + i, EACH)))
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| match c.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("connection {i}: {e}")),
            Err(_) => Some(format!("connection {i}: client panicked")),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "load: {CONNS} connections x {} MiB each way in {:.1?}",
        EACH >> 20,
        start.elapsed()
    );

    for i in 0..2000u64 {
        if let Err(e) = stream_client(port, 5000 + i, 100) {
            panic!("short connection {i}: {e}");
        }
    }
    // Every connection's threads and descriptors are released.
    let settled = Instant::now();
    while (fds(pid), threads(pid)) != (fds_before, threads_before) && settled.elapsed() < DEADLINE {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        (fds(pid), threads(pid)),
        (fds_before, threads_before),
        "(fds, threads) of the listener after the load"
    );
}

#[test]
fn a_peer_reset_mid_transfer_ends_only_its_own_connection() {
    // Injected: a TCP RST (SO_LINGER 0) while 32 MiB are still flowing.
    let home = TempDir::new("reset-listener");
    let socket = home.path().join("annex.sock");
    stream_server(&socket);
    let (mut listener, port) = tcp_listener(home.path(), &socket, &[]);
    // A healthy connection runs beside the one that is reset.
    let healthy = thread::spawn(move || stream_client(port, 7, 16 << 20));
    let victim = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut head = 99u64.to_le_bytes().to_vec();
    head.extend_from_slice(&(32u64 << 20).to_le_bytes());
    (&victim).write_all(&head).expect("head");
    let mut some = vec![0u8; 1 << 20];
    Stream::new(99).fill(&mut some);
    (&victim).write_all(&some).expect("first MiB");
    let mut buf = [0u8; 4096];
    (&victim).read_exact(&mut buf).expect("some of the answer");
    nix::sys::socket::setsockopt(
        &victim,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("linger");
    // The listener names a peer by its address: the victim's is our end.
    let victim_at = victim.local_addr().expect("victim address").to_string();
    drop(victim);
    // The victim's last line (`PEER: HOW after ...`), not the healthy
    // connection's nor the victim's "connected".
    let end = loop {
        let line = listener.wait_for_stderr(&format!("{victim_at}: "), DEADLINE);
        if line.contains(" after ") {
            break line;
        }
    };
    assert!(end.contains(&format!("{victim_at}: failed")), "{end}");
    eprintln!("reset: the listener logged {end:?}");
    assert_eq!(healthy.join().expect("healthy client"), Ok(()));
    // And the listener still serves new peers.
    assert_eq!(stream_client(port, 8, 1000), Ok(()));
}

#[test]
fn a_slow_reader_keeps_the_relay_memory_flat() {
    // Injected: git-annex's side reads 64 KiB every 2 ms (about 30 MB/s)
    // while the peer sends 96 MiB as fast as it can. Backpressure must hold
    // the bytes in the kernel's socket buffers, not in our memory.
    const TOTAL: usize = 96 << 20;
    let home = TempDir::new("slow-reader");
    let socket = home.path().join("annex.sock");
    let unix = UnixListener::bind(&socket).expect("bind");
    let reader = thread::spawn(move || {
        let (mut conn, _) = unix.accept().expect("accept");
        let mut s = Stream::new(42);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = conn.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            assert!(s.matches(&buf[..n]), "wrong bytes at or after {total}");
            total += n;
            thread::sleep(Duration::from_millis(2));
        }
        total
    });
    let (listener, port) = tcp_listener(home.path(), &socket, &[]);
    let pid = listener.pid();
    let baseline = rss_kib(pid);
    let sender = thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        send_stream(&mut stream, 42, TOTAL).expect("send");
    });
    let mut peak = baseline;
    while !sender.is_finished() {
        peak = peak.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(50));
    }
    sender.join().expect("sender");
    assert_eq!(reader.join().expect("reader"), TOTAL);
    eprintln!("slow reader: listener RSS {baseline} KiB at rest, {peak} KiB at peak");
    assert!(
        peak < baseline + 16 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB while a slow reader was fed {} MiB",
        TOTAL >> 20
    );
}
