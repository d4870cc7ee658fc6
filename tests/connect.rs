//! Connect mode: stdin/stdout relayed to a real TCP peer run by the test.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// A one-connection TCP peer on loopback; `serve` gets the accepted stream.
fn peer<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (u16, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test peer");
    let port = listener.local_addr().expect("peer address").port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        serve(stream)
    });
    (port, handle)
}

#[test]
fn relays_64_mib_both_ways_at_once_byte_exact_splice() {
    relays_64_mib_both_ways_at_once_byte_exact(CopyPath::Splice);
}

#[test]
fn relays_64_mib_both_ways_at_once_byte_exact_read_write() {
    relays_64_mib_both_ways_at_once_byte_exact(CopyPath::ReadWrite);
}

fn relays_64_mib_both_ways_at_once_byte_exact(path: CopyPath) {
    const SIZE: usize = 64 << 20;
    let home = TempDir::new(&format!("both-ways-{}", path.tag()));
    let to_peer = random_bytes(SIZE, 1);
    let from_peer = random_bytes(SIZE, 2);
    let reply = from_peer.clone();
    // The peer writes its whole reply while reading ours, on two threads,
    // so both directions are busy at the same time, and it shuts its write
    // side as soon as its reply is out, usually long before our 64 MiB have
    // all arrived: the half-close must not cut our direction short.
    let (port, peer) = peer(move |stream| {
        let mut writer = stream.try_clone().expect("clone");
        let w = thread::spawn(move || {
            writer.write_all(&reply).expect("peer write");
            writer.shutdown(Shutdown::Write).expect("peer shutdown");
        });
        let mut got = Vec::new();
        (&stream).read_to_end(&mut got).expect("peer read");
        w.join().expect("peer writer");
        got
    });
    let mut child = Proc::spawn(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = child.child.stdin.take().expect("stdin");
    let mut stdout = child.child.stdout.take().expect("stdout");
    let input = to_peer.clone();
    let feeder = thread::spawn(move || {
        stdin.write_all(&input).expect("feed stdin");
        // Dropping stdin closes it: our EOF must reach the peer.
    });
    let mut got = Vec::new();
    stdout.read_to_end(&mut got).expect("read stdout");
    feeder.join().expect("feeder");
    assert_same_bytes(&got, &from_peer, "peer → stdout");
    assert_same_bytes(&peer.join().expect("peer"), &to_peer, "stdin → peer");
    assert!(child.expect_exit(DEADLINE).success());
}

#[test]
fn half_close_the_peer_sees_our_eof_and_still_answers_splice() {
    half_close_the_peer_sees_our_eof_and_still_answers(CopyPath::Splice);
}

#[test]
fn half_close_the_peer_sees_our_eof_and_still_answers_read_write() {
    half_close_the_peer_sees_our_eof_and_still_answers(CopyPath::ReadWrite);
}

fn half_close_the_peer_sees_our_eof_and_still_answers(path: CopyPath) {
    let home = TempDir::new(&format!("half-close-{}", path.tag()));
    let request = random_bytes(300_000, 3);
    // The peer answers only after our EOF, with a reply derived from all
    // of the request: proof that the EOF came after every byte.
    let (port, peer) = peer(|mut stream| {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("peer read");
        let reply: Vec<u8> = got.iter().rev().copied().collect();
        stream.write_all(&reply).expect("peer reply");
    });
    let mut child = Proc::spawn(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = child.child.stdin.take().expect("stdin");
    stdin.write_all(&request).expect("write request");
    drop(stdin);
    let mut got = Vec::new();
    child
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut got)
        .expect("read reply");
    let want: Vec<u8> = request.iter().rev().copied().collect();
    assert_same_bytes(&got, &want, "reply after half-close");
    peer.join().expect("peer");
    assert!(child.expect_exit(DEADLINE).success());
}

#[test]
fn regular_files_as_stdin_and_stdout() {
    // Neither end can be spliced straight to a socket here: the relay must
    // pick read/write for them, and still deliver every byte.
    let home = TempDir::new("files");
    let request = random_bytes(3 << 20, 4);
    let input = home.path().join("in");
    let output = home.path().join("out");
    std::fs::write(&input, &request).expect("write input file");
    let (port, peer) = peer(|mut stream| {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("peer read");
        let reply: Vec<u8> = got.iter().rev().copied().collect();
        stream.write_all(&reply).expect("peer reply");
    });
    let mut child = Proc::spawn(
        p2p(home.path())
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .stdin(std::fs::File::open(&input).expect("open input"))
            .stdout(std::fs::File::create(&output).expect("create output")),
    );
    peer.join().expect("peer");
    assert!(child.expect_exit(DEADLINE).success());
    let want: Vec<u8> = request.iter().rev().copied().collect();
    assert_same_bytes(
        &std::fs::read(&output).expect("read output file"),
        &want,
        "file → peer → file",
    );
}

#[test]
fn exits_0_when_the_peer_closes() {
    let home = TempDir::new("peer-closes");
    let (port, peer) = peer(|mut stream| {
        stream.write_all(b"AUTH-FAILURE\n").expect("peer write");
        // Dropped here: the peer closes the connection.
    });
    let (status, stdout, stderr) =
        run(p2p(home.path()).args(["tcp", &format!("127.0.0.1:{port}")]));
    peer.join().expect("peer");
    assert_eq!(stdout, "AUTH-FAILURE\n");
    assert_eq!(stderr, "");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn connection_refused_exits_1_with_one_line() {
    let home = TempDir::new("refused");
    let port = free_port();
    let (status, stdout, stderr) =
        run(p2p(home.path()).args(["tcp", &format!("127.0.0.1:{port}")]));
    assert_eq!(status.code(), Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!("p2p-annex: tcp: cannot connect to 127.0.0.1:{port}: connection refused\n")
    );
}

#[test]
fn percent_encoded_addresses_are_decoded() {
    let home = TempDir::new("percent");
    let (port, peer) = peer(|mut stream| stream.write_all(b"hi").expect("peer write"));
    // git-annex passes `%3A` for ':' in some addresses it stores.
    let (status, stdout, _) = run(p2p(home.path()).args(["tcp", &format!("127.0.0.1%3A{port}")]));
    peer.join().expect("peer");
    assert_eq!(stdout, "hi");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn ipv6_unbracketed_and_bracketed() {
    let home = TempDir::new("ipv6");
    for form in ["::1:{}", "[::1]:{}"] {
        let listener = TcpListener::bind("[::1]:0").expect("bind ::1");
        let port = listener.local_addr().expect("addr").port();
        let peer = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"v6").expect("write");
        });
        let address = form.replace("{}", &port.to_string());
        let (status, stdout, stderr) = run(p2p(home.path()).args(["tcp", &address]));
        peer.join().expect("peer");
        assert_eq!(
            (status.code(), stdout.as_str(), stderr.as_str()),
            (Some(0), "v6", ""),
            "{address}"
        );
    }
}

#[test]
fn connect_timeout_is_honoured() {
    let home = TempDir::new("timeout");
    // A listener whose backlog is full drops further SYNs, so the connect
    // hangs until our timeout, on loopback, without needing a black hole.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    nix::sys::socket::listen(
        &listener,
        nix::sys::socket::Backlog::new(0).expect("backlog"),
    )
    .expect("listen 0");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let mut cmd = p2p(home.path());
    cmd.args(["tcp", &addr.to_string()]);
    with_config(&mut cmd, &[("p2p-annex.tcp.connect-timeout", "700ms")]);
    let start = Instant::now();
    let (status, _, stderr) = run(&mut cmd);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("p2p-annex: tcp: cannot connect to {addr}: connection timed out\n")
    );
    // Not a timing assertion on speed: only that the 30 s default was not used.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn exits_when_the_parent_closes_stdout_while_the_peer_is_idle_splice() {
    exits_when_the_parent_closes_stdout_while_the_peer_is_idle(CopyPath::Splice);
}

#[test]
fn exits_when_the_parent_closes_stdout_while_the_peer_is_idle_read_write() {
    exits_when_the_parent_closes_stdout_while_the_peer_is_idle(CopyPath::ReadWrite);
}

fn exits_when_the_parent_closes_stdout_while_the_peer_is_idle(path: CopyPath) {
    let home = TempDir::new(&format!("stdout-closed-{}", path.tag()));
    // The peer accepts and then says nothing, like an idle remotedaemon peer.
    let (port, peer) = peer(|mut stream| {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        sink
    });
    let mut child = Proc::spawn(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = child.child.stdin.take().expect("stdin");
    stdin.write_all(b"last words").expect("write");
    thread::sleep(Duration::from_millis(100));
    // Close stdout only; stdin stays open, as when git-annex is mid-close.
    drop(child.child.stdout.take());
    let status = child.wait_timeout(Duration::from_secs(2));
    assert!(
        status.is_some(),
        "still running 2 s after stdout was closed"
    );
    drop(stdin);
    // What was written before the close was delivered, and the peer saw EOF.
    assert_eq!(peer.join().expect("peer"), b"last words");
}

#[test]
fn exits_when_the_parent_closes_both_pipes_while_the_peer_is_idle_splice() {
    exits_when_the_parent_closes_both_pipes_while_the_peer_is_idle(CopyPath::Splice);
}

#[test]
fn exits_when_the_parent_closes_both_pipes_while_the_peer_is_idle_read_write() {
    exits_when_the_parent_closes_both_pipes_while_the_peer_is_idle(CopyPath::ReadWrite);
}

fn exits_when_the_parent_closes_both_pipes_while_the_peer_is_idle(path: CopyPath) {
    let home = TempDir::new(&format!("both-closed-{}", path.tag()));
    let (port, peer) = peer(|mut stream| {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    });
    let mut child = Proc::spawn(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    thread::sleep(Duration::from_millis(100));
    drop(child.child.stdin.take());
    drop(child.child.stdout.take());
    let status = child.wait_timeout(Duration::from_secs(2));
    assert!(
        status.is_some(),
        "still running 2 s after both pipes were closed"
    );
    peer.join().expect("peer");
}

#[test]
fn a_peer_reset_mid_transfer_exits_non_zero_splice() {
    a_peer_reset_mid_transfer_exits_non_zero(CopyPath::Splice);
}

#[test]
fn a_peer_reset_mid_transfer_exits_non_zero_read_write() {
    a_peer_reset_mid_transfer_exits_non_zero(CopyPath::ReadWrite);
}

fn a_peer_reset_mid_transfer_exits_non_zero(path: CopyPath) {
    let home = TempDir::new(&format!("reset-{}", path.tag()));
    let (port, peer) = peer(|stream| {
        let mut buf = [0u8; 1000];
        let _ = (&stream).read(&mut buf);
        // SO_LINGER 0: close sends RST instead of FIN.
        nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .expect("linger");
    });
    let mut child = Proc::spawn(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.child.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"hello");
    peer.join().expect("peer");
    let status = child.expect_exit(Duration::from_secs(5));
    let mut stderr = String::new();
    child
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "p2p-annex: tcp: connection failed: connection reset by peer\n"
    );
}
