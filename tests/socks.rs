//! The socks netname: connect mode through a real SOCKS5 server (danted)
//! and through a hostile one written here, address and listen modes, and
//! real git-annex repositories syncing through danted.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::thread;

use crate::e2e_annex::{Net, sync_in};
use crate::support::annex::Env;
use crate::support::danted::{Auth, Danted, PASSWORD, PEER_NAME, USER};
use crate::support::peers::{exchange, reversed, reversing_server};
use crate::support::*;

/// What one run of connect mode did.
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// `p2p-annex socks ADDRESS`, fed `input` (then EOF), with one-off config.
fn connect(home: &Path, address: &str, config: &[(&str, &str)], input: &[u8]) -> Ran {
    let mut cmd = p2p(home);
    cmd.args(["socks", address])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    with_config(&mut cmd, config);
    let mut proc = Proc::spawn(&mut cmd);
    let mut stdin = proc.child.stdin.take().expect("stdin");
    let mut stdout = proc.child.stdout.take().expect("stdout");
    let mut stderr = proc.child.stderr.take().expect("stderr");
    let input = input.to_vec();
    // A failed run exits without reading: a write error here is expected.
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    let status = proc.expect_exit(DEADLINE);
    feeder.join().expect("feeder");
    Ran {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err,
    }
}

/// A TCP peer for one connection: reads everything, then answers with the
/// reverse, which proves every byte arrived in order before our EOF.
fn reversing_peer() -> (u16, thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind peer");
    let port = listener.local_addr().expect("peer address").port();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("peer read");
        got.reverse();
        s.write_all(&got).expect("peer write");
        got.len()
    });
    (port, handle)
}

// ---------------------------------------------------------------------------
// Through danted, a real SOCKS5 server

#[test]
fn relays_16_mib_through_danted_byte_exact() {
    let Some(proxy) = Danted::start(Auth::None) else {
        return;
    };
    let home = TempDir::new("socks-danted");
    let (port, peer) = reversing_peer();
    let data = random_bytes(16 << 20, 41);
    let ran = connect(
        home.path(),
        &format!("127.0.0.1:{port}"),
        &[("p2p-annex.socks.proxy", &proxy.proxy())],
        &data,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.stderr, "");
    assert_same_bytes(&ran.stdout, &reversed(&data), "through danted");
    assert_eq!(peer.join().expect("peer"), data.len());
    assert_eq!(proxy.connections_to(port), 1, "{}", proxy.log());
}

#[test]
fn names_are_resolved_by_the_proxy() {
    let Some(proxy) = Danted::start(Auth::None) else {
        return;
    };
    // Only danted's /etc/hosts knows this name, as only yggstack knows
    // `<key>.pk.ygg`: we must pass it on, not resolve it.
    assert!(
        (PEER_NAME, 1).to_socket_addrs().is_err(),
        "{PEER_NAME} resolves here: the test would prove nothing"
    );
    let home = TempDir::new("socks-name");
    let (port, peer) = reversing_peer();
    let ran = connect(
        home.path(),
        &format!("{PEER_NAME}:{port}"),
        &[("p2p-annex.socks.proxy", &proxy.proxy())],
        b"resolved by the proxy",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.stdout, reversed(b"resolved by the proxy"));
    peer.join().expect("peer");
}

#[test]
fn danted_failures_name_their_reply_code() {
    let Some(proxy) = Danted::start(Auth::None) else {
        return;
    };
    let home = TempDir::new("socks-danted-fail");
    let p = proxy.proxy();
    let closed = free_port();
    let cases = [
        (
            format!("127.0.0.1:{closed}"),
            format!("cannot connect to 127.0.0.1:{closed}: connection refused (reply 5)"),
        ),
        // danted's rules allow loopback only.
        (
            "192.0.2.1:80".to_string(),
            "cannot connect to 192.0.2.1:80: connection not allowed by ruleset (reply 2)"
                .to_string(),
        ),
        (
            "nosuch.p2p-annex.test:80".to_string(),
            "cannot connect to nosuch.p2p-annex.test:80: host unreachable (reply 4)".to_string(),
        ),
    ];
    for (address, problem) in cases {
        let ran = connect(home.path(), &address, &[("p2p-annex.socks.proxy", &p)], b"");
        eprintln!("danted, {address}: {}", ran.stderr.trim_end());
        assert_eq!(ran.code, Some(1), "{address}: {}", ran.stderr);
        assert_eq!(
            ran.stderr,
            format!("p2p-annex: socks: proxy {p}: {problem}\n")
        );
        assert!(ran.stdout.is_empty());
    }
}

#[test]
fn danted_with_username_and_password() {
    let Some(proxy) = Danted::start(Auth::Password) else {
        return;
    };
    let home = TempDir::new("socks-auth");
    let p = proxy.proxy();
    let (port, peer) = reversing_peer();
    let address = format!("127.0.0.1:{port}");
    let run_with = |entries: &[(&str, &str)]| {
        let mut all = vec![("p2p-annex.socks.proxy", p.as_str())];
        all.extend_from_slice(entries);
        connect(home.path(), &address, &all, b"with a password")
    };
    let user = ("p2p-annex.socks.proxy-user", USER);

    let ok = run_with(&[user, ("p2p-annex.socks.proxy-password", PASSWORD)]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert_eq!(ok.stdout, reversed(b"with a password"));
    peer.join().expect("peer");

    let wrong = run_with(&[user, ("p2p-annex.socks.proxy-password", "not the password")]);
    eprintln!("danted, wrong password: {}", wrong.stderr.trim_end());
    assert_eq!(wrong.code, Some(1));
    assert_eq!(
        wrong.stderr,
        format!(
            "p2p-annex: socks: proxy {p}: username/password authentication failed (status 1); \
             check p2p-annex.socks.proxy-user and p2p-annex.socks.proxy-password\n"
        )
    );
    assert!(!wrong.stderr.contains("not the password"));

    let none = run_with(&[]);
    eprintln!("danted, no credentials: {}", none.stderr.trim_end());
    assert_eq!(none.code, Some(1));
    assert_eq!(
        none.stderr,
        format!(
            "p2p-annex: socks: proxy {p}: the proxy accepts none of the offered authentication \
             methods (none); if it needs a password, set p2p-annex.socks.proxy-user and \
             p2p-annex.socks.proxy-password\n"
        )
    );
}

#[test]
fn a_proxy_that_is_not_running() {
    let home = TempDir::new("socks-noproxy");
    let port = free_port();
    let ran = connect(
        home.path(),
        "127.0.0.1:5599",
        &[("p2p-annex.socks.proxy", &format!("127.0.0.1:{port}"))],
        b"",
    );
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        ran.stderr,
        format!("p2p-annex: socks: cannot connect to proxy 127.0.0.1:{port}: connection refused\n")
    );
    let sock = home.path().join("no-such.sock");
    let ran = connect(
        home.path(),
        "127.0.0.1:5599",
        &[("p2p-annex.socks.proxy", &format!("unix:{}", sock.display()))],
        b"",
    );
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        ran.stderr,
        format!(
            "p2p-annex: socks: cannot connect to proxy unix:{}: no such file or directory\n",
            sock.display()
        )
    );
}

// ---------------------------------------------------------------------------
// Against a hostile SOCKS server

/// Read exactly `n` bytes (fewer if the client closed).
fn take(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut have = 0;
    while have < n {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => have += k,
        }
    }
    buf.truncate(have);
    buf
}

/// Keep the connection open, saying nothing, until the client goes away.
fn hold(s: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// A one-connection SOCKS "server" on loopback running `script`; the
/// thread returns everything the script recorded from the client.
fn hostile(
    script: impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static,
) -> (String, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind hostile proxy");
    let proxy = listener.local_addr().expect("address").to_string();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        script(&mut s)
    });
    (proxy, handle)
}

/// The request for 127.0.0.1:5599, the address the hostile cases use.
const REQUEST: [u8; 10] = [5, 1, 0, 1, 127, 0, 0, 1, 0x15, 0xdf];

/// Greeting, "no authentication", the request; then `reply` and close.
fn replies(reply: Vec<u8>) -> impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static {
    replies_then(reply, false)
}

/// As `replies`, but then keep the connection open in silence when `stall`.
fn replies_then(
    reply: Vec<u8>,
    stall: bool,
) -> impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static {
    move |s| {
        let mut seen = take(s, 3);
        s.write_all(&[5, 0]).expect("method");
        seen.extend(take(s, REQUEST.len()));
        let _ = s.write_all(&reply);
        if stall {
            hold(s);
        }
        seen
    }
}

/// Read the greeting (`greeting_len` bytes: 3 without credentials, 4 with),
/// answer it with `method_reply` and close.
fn answers_greeting(
    greeting_len: usize,
    method_reply: &'static [u8],
) -> impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static {
    move |s| {
        let seen = take(s, greeting_len);
        let _ = s.write_all(method_reply);
        seen
    }
}

/// Choose username/password, read alice's request, answer `auth_reply`.
fn answers_auth(
    auth_reply: &'static [u8],
) -> impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static {
    move |s| {
        let seen = take(s, 4);
        s.write_all(&[5, 2]).expect("write");
        let _ = take(s, 3 + "alice".len() + "s3cret".len());
        let _ = s.write_all(auth_reply);
        seen
    }
}

/// Run connect mode for 127.0.0.1:5599 against `script`; check the exit
/// status and the stderr line (after `p2p-annex: socks: proxy P: `).
fn expect_failure(
    home: &Path,
    case: &str,
    config: &[(&str, &str)],
    script: impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static,
    problem: &str,
) {
    let (proxy, server) = hostile(script);
    let mut all = vec![("p2p-annex.socks.proxy", proxy.as_str())];
    all.extend_from_slice(config);
    let ran = connect(home, "127.0.0.1:5599", &all, b"never sent");
    server.join().expect("hostile server");
    eprintln!("hostile, {case}: {}", ran.stderr.trim_end());
    assert_eq!(ran.code, Some(1), "{case}: {}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!("p2p-annex: socks: proxy {proxy}: {problem}\n"),
        "{case}"
    );
    assert!(ran.stdout.is_empty(), "{case}: output on stdout");
}

#[test]
fn every_failure_reply_code_is_named() {
    let home = TempDir::new("socks-codes");
    let names = [
        (1, "general SOCKS server failure"),
        (2, "connection not allowed by ruleset"),
        (3, "network unreachable"),
        (4, "host unreachable"),
        (5, "connection refused"),
        (6, "TTL expired"),
        (7, "command not supported"),
        (8, "address type not supported"),
        (9, "unassigned reply code"),
        (0xf0, "onion service descriptor can not be found"),
        (0xf7, "onion service introduction timed out"),
        (0xff, "unassigned reply code"),
    ];
    for (code, name) in names {
        expect_failure(
            home.path(),
            &format!("reply {code}"),
            &[],
            replies(vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]),
            &format!("cannot connect to 127.0.0.1:5599: {name} (reply {code})"),
        );
    }
    // A proxy that says why and hangs up without the bound address.
    expect_failure(
        home.path(),
        "reply 4, cut after the code",
        &[],
        replies(vec![5, 4]),
        "cannot connect to 127.0.0.1:5599: host unreachable (reply 4)",
    );
}

#[test]
fn truncated_replies() {
    let home = TempDir::new("socks-short");
    let h = home.path();
    expect_failure(
        h,
        "closes instead of a method reply",
        &[],
        answers_greeting(3, &[]),
        "short method selection reply (read 0 of 2 bytes)",
    );
    expect_failure(
        h,
        "one byte of the method reply",
        &[],
        answers_greeting(3, &[5]),
        "short method selection reply (read 1 of 2 bytes)",
    );
    expect_failure(
        h,
        "connect reply cut after 2 bytes",
        &[],
        replies(vec![5, 0]),
        "short connect reply (read 2 of 4 bytes)",
    );
    expect_failure(
        h,
        "connect reply cut in the IPv4 address",
        &[],
        replies(vec![5, 0, 0, 1, 127, 0]),
        "short connect reply (read 6 of 10 bytes)",
    );
    let mut long = vec![5, 0, 0, 3, 255];
    long.extend_from_slice(&[b'd'; 20]);
    expect_failure(
        h,
        "255-byte domain cut after 20 bytes",
        &[],
        replies(long),
        "short connect reply (read 25 of 262 bytes)",
    );
}

#[test]
fn malformed_replies_and_wrong_versions() {
    let home = TempDir::new("socks-malformed");
    let h = home.path();
    let creds = [
        ("p2p-annex.socks.proxy-user", "alice"),
        ("p2p-annex.socks.proxy-password", "s3cret"),
    ];
    expect_failure(
        h,
        "SOCKS4 version in the method reply",
        &[],
        answers_greeting(3, &[4, 0]),
        "bad version 4 in the method selection reply (expected 5; is this a SOCKS5 proxy?)",
    );
    expect_failure(
        h,
        "an HTTP server",
        &[],
        answers_greeting(3, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        "bad version 72 in the method selection reply (expected 5; is this a SOCKS5 proxy?)",
    );
    expect_failure(
        h,
        "SOCKS4 version in the connect reply",
        &[],
        replies(vec![4, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        "bad version 4 in the connect reply (expected 5; is this a SOCKS5 proxy?)",
    );
    expect_failure(
        h,
        "SOCKS version in the authentication reply",
        &creds,
        answers_auth(&[5, 0]),
        "bad version 5 in the authentication reply (expected 1; is this a SOCKS5 proxy?)",
    );
    expect_failure(
        h,
        "authentication refused",
        &creds,
        answers_auth(&[1, 1]),
        "username/password authentication failed (status 1); check p2p-annex.socks.proxy-user \
         and p2p-annex.socks.proxy-password",
    );
    expect_failure(
        h,
        "no acceptable method",
        &[],
        answers_greeting(3, &[5, 0xff]),
        "the proxy accepts none of the offered authentication methods (none); if it needs a \
         password, set p2p-annex.socks.proxy-user and p2p-annex.socks.proxy-password",
    );
    expect_failure(
        h,
        "no acceptable method, credentials offered",
        &creds,
        answers_greeting(4, &[5, 0xff]),
        "the proxy accepts none of the offered authentication methods (none, username/password)",
    );
    expect_failure(
        h,
        "a method that was not offered",
        &[],
        answers_greeting(3, &[5, 2]),
        "the proxy chose authentication method 2, which was not offered",
    );
    expect_failure(
        h,
        "empty bound domain",
        &[],
        replies(vec![5, 0, 0, 3, 0, 0, 0]),
        "malformed connect reply: empty bound domain name",
    );
    expect_failure(
        h,
        "unknown address type",
        &[],
        replies(vec![5, 0, 0, 2, 0, 0, 0, 0, 0, 0]),
        "malformed connect reply: unknown address type 2",
    );
}

#[test]
fn a_proxy_that_never_answers_times_out() {
    let home = TempDir::new("socks-silent");
    let h = home.path();
    let quick = [("p2p-annex.socks.connect-timeout", "500ms")];
    let budget = "p2p-annex.socks.connect-timeout is 500ms";
    expect_failure(
        h,
        "silent after the greeting",
        &quick,
        |s| {
            let seen = take(s, 3);
            hold(s);
            seen
        },
        &format!("timed out waiting for the method selection reply (read 0 of 2 bytes; {budget})"),
    );
    expect_failure(
        h,
        "silent after the connect request",
        &quick,
        replies_then(vec![], true),
        &format!("timed out waiting for the connect reply (read 0 of 4 bytes; {budget})"),
    );
    expect_failure(
        h,
        "stalls inside the connect reply",
        &quick,
        replies_then(vec![5, 0, 0, 1, 127], true),
        &format!("timed out waiting for the connect reply (read 5 of 10 bytes; {budget})"),
    );
}

#[test]
fn the_longest_reply_is_read_exactly_and_what_follows_is_relayed() {
    let home = TempDir::new("socks-maxreply");
    // A 255-byte bound domain, sent one byte per write, then the peer's
    // first bytes at once: not one of them may be taken for the reply.
    let (proxy, server) = hostile(|s| {
        let seen = take(s, 3);
        s.write_all(&[5, 0]).expect("method");
        let _ = take(s, REQUEST.len());
        let mut reply = vec![5, 0, 0, 3, 255];
        reply.extend_from_slice(&[b'x'; 255]);
        reply.extend_from_slice(&[0x12, 0x34]);
        for b in reply {
            s.write_all(&[b]).expect("reply byte");
        }
        s.write_all(b"\x05\x00peer data right after the reply")
            .expect("payload");
        s.shutdown(Shutdown::Write).expect("shutdown");
        hold(s);
        seen
    });
    let ran = connect(
        home.path(),
        "127.0.0.1:5599",
        &[("p2p-annex.socks.proxy", &proxy)],
        b"",
    );
    server.join().expect("server");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.stdout, b"\x05\x00peer data right after the reply");
}

/// What our client sends, byte for byte, for each kind of address.
#[test]
fn requests_on_the_wire() {
    let home = TempDir::new("socks-wire");
    let key = "d40d4a7153cf288ea28f1865f6cfe95143a478b5c8c9e7cb002a0633d10a53eb";
    let ygg = format!("{key}.pk.ygg");
    let mut domain_request = vec![5, 1, 0, 3, ygg.len() as u8];
    domain_request.extend_from_slice(ygg.as_bytes());
    domain_request.extend_from_slice(&12345u16.to_be_bytes());
    let mut v6_request = vec![5, 1, 0, 4, 0x02, 0x00, 0xab, 0xcd];
    v6_request.extend_from_slice(&[0; 10]);
    v6_request.extend_from_slice(&[0, 1, 0x15, 0xdf]);
    let cases: [(String, Vec<u8>); 4] = [
        ("127.0.0.1:5599".into(), REQUEST.to_vec()),
        ("200:abcd::1:5599".into(), v6_request.clone()),
        // Bracketed and percent-encoded forms mean the same.
        ("%5B200:abcd::1%5D:5599".into(), v6_request),
        (format!("{ygg}:12345"), domain_request),
    ];
    for (address, want) in cases {
        let n = want.len();
        let (proxy, server) = hostile(move |s| {
            let mut seen = take(s, 3);
            s.write_all(&[5, 0]).expect("method");
            seen.extend(take(s, n));
            s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("reply");
            s.write_all(b"ok").expect("payload");
            seen
        });
        let ran = connect(
            home.path(),
            &address,
            &[("p2p-annex.socks.proxy", &proxy)],
            b"",
        );
        let seen = server.join().expect("server");
        assert_eq!(ran.code, Some(0), "{address}: {}", ran.stderr);
        assert_eq!(ran.stdout, b"ok", "{address}");
        assert_eq!(&seen[..3], [5, 1, 0], "{address}: greeting");
        assert_eq!(&seen[3..], want, "{address}: request");
    }

    // With credentials: both methods offered, then RFC 1929's request.
    let (proxy, server) = hostile(|s| {
        let mut seen = take(s, 4);
        s.write_all(&[5, 2]).expect("method");
        seen.extend(take(s, 3 + 5 + 12));
        s.write_all(&[1, 0]).expect("auth ok");
        seen.extend(take(s, REQUEST.len()));
        s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("reply");
        seen
    });
    let ran = connect(
        home.path(),
        "127.0.0.1:5599",
        &[
            ("p2p-annex.socks.proxy", &proxy),
            ("p2p-annex.socks.proxy-user", "alice"),
            ("p2p-annex.socks.proxy-password", "with a space"),
        ],
        b"",
    );
    let seen = server.join().expect("server");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut want = vec![5, 2, 0, 2, 1, 5];
    want.extend_from_slice(b"alice");
    want.push(12);
    want.extend_from_slice(b"with a space");
    want.extend_from_slice(&REQUEST);
    assert_eq!(seen, want);
}

#[test]
fn addresses_a_proxy_cannot_take_are_refused_before_connecting() {
    let home = TempDir::new("socks-zone");
    // No proxy runs: the error must come before any attempt to reach one.
    let ran = connect(home.path(), "fe80::1%25eth0:5599", &[], b"");
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with(
            "p2p-annex: socks: fe80::1%eth0: a zone index means nothing to a SOCKS proxy\n"
        ),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_unix_socket_proxy_as_yggstack_socks_path_gives() {
    let home = TempDir::new("socks-unixproxy");
    let path = home.path().join("yggstack.sock");
    let listener = UnixListener::bind(&path).expect("bind proxy socket");
    // A minimal proxy: handshake, then the reversing peer itself.
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let greeting = take(&mut s, 3);
        s.write_all(&[5, 0]).expect("method");
        let request = take(&mut s, 5 + "abcdefghij.pk.ygg".len() + 2);
        s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("reply");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got.reverse();
        s.write_all(&got).expect("write");
        (greeting, request)
    });
    let data = random_bytes(1 << 20, 43);
    let ran = connect(
        home.path(),
        "abcdefghij.pk.ygg:80",
        &[("p2p-annex.socks.proxy", &format!("unix:{}", path.display()))],
        &data,
    );
    let (greeting, request) = server.join().expect("server");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_same_bytes(&ran.stdout, &reversed(&data), "through a unix-socket proxy");
    assert_eq!(greeting, [5, 1, 0]);
    assert_eq!(request, b"\x05\x01\x00\x03\x11abcdefghij.pk.ygg\x00\x50");
}

// ---------------------------------------------------------------------------
// Address and listen modes

#[test]
fn address_mode_prints_what_is_configured() {
    let home = TempDir::new("socks-address");
    let key = "d40d4a7153cf288ea28f1865f6cfe95143a478b5c8c9e7cb002a0633d10a53eb";
    let ygg = format!("{key}.pk.ygg:12345");
    let mut cmd = p2p(home.path());
    cmd.args(["socks", "address"]);
    with_config(
        &mut cmd,
        &[
            ("p2p-annex.socks.address", &ygg),
            ("p2p-annex.socks.address", "abc234.onion:80"),
        ],
    );
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, format!("{ygg}\nabc234.onion:80\n"));

    let (status, stdout, stderr) = run(p2p(home.path()).args(["socks", "address"]));
    eprintln!("address mode, nothing configured: {}", stderr.trim_end());
    assert_eq!(status.code(), Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with("p2p-annex: socks: p2p-annex.socks.address is not set: "),
        "{stderr}"
    );
    for needle in [
        "pk.ygg",
        "yggstack -remote-tcp",
        ".onion",
        "HiddenServicePort",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn listen_binds_loopback_on_the_address_port() {
    let home = TempDir::new("socks-listen");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let key = "d40d4a7153cf288ea28f1865f6cfe95143a478b5c8c9e7cb002a0633d10a53eb";
    let mut listener = Proc::spawn_logged(
        p2p(home.path())
            .args(["socks", &format!("{key}.pk.ygg:{port}")])
            .arg(&socket)
            .stdin(Stdio::null()),
    );
    let line = listener.wait_for_stderr("listening on", DEADLINE);
    assert!(line.contains(&format!(" 127.0.0.1:{port},")), "{line}");
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let data = random_bytes(300_000, 44);
    assert_same_bytes(&exchange(stream, &data), &reversed(&data), "listen relay");
    let closed = listener.wait_for_stderr("closed after", DEADLINE);
    assert!(closed.contains("300000 bytes in"), "{closed}");
}

#[test]
fn listen_key_sets_where_tor_forwards() {
    // HiddenServicePort 80 127.0.0.1:PORT: the address's port is not ours.
    let home = TempDir::new("socks-listen-key");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let mut cmd = p2p(home.path());
    cmd.args(["socks", "abc234.onion:80"])
        .arg(&socket)
        .stdin(Stdio::null());
    with_config(
        &mut cmd,
        &[("p2p-annex.socks.listen", &format!("127.0.0.1:{port}"))],
    );
    let mut listener = Proc::spawn_logged(&mut cmd);
    let line = listener.wait_for_stderr("listening on", DEADLINE);
    assert!(line.contains(&format!(" 127.0.0.1:{port},")), "{line}");
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert_eq!(exchange(stream, b"onion"), b"noino");
}

// ---------------------------------------------------------------------------
// Real git-annex repositories through danted

#[test]
fn git_annex_syncs_through_danted() {
    let Some(proxy) = Danted::start(Auth::None) else {
        return;
    };
    let env = Env::new("e2e-socks");
    env.global_config("p2p-annex.socks.proxy", &proxy.proxy());
    let port = free_port();
    sync_in(
        &env,
        Net::Socks {
            netname: "socks",
            host: "127.0.0.1",
            port,
        },
    );
    // Every connection of B went through the proxy.
    let through = proxy.connections_to(port);
    eprintln!("e2e socks: danted made {through} connections to A's listener");
    assert!(through >= 3, "danted log:\n{}", proxy.log());
}

#[test]
fn git_annex_syncs_over_a_user_defined_netname() {
    let Some(proxy) = Danted::start(Auth::Password) else {
        return;
    };
    let env = Env::new("e2e-myygg");
    env.link_helper("myygg");
    for (key, value) in [
        ("transport", "socks"),
        ("proxy", proxy.proxy().as_str()),
        ("proxy-user", USER),
        ("proxy-password", PASSWORD),
    ] {
        env.global_config(&format!("p2p-annex.myygg.{key}"), value);
    }
    let port = free_port();
    // A name only the proxy resolves, like yggstack's `<key>.pk.ygg`.
    sync_in(
        &env,
        Net::Socks {
            netname: "myygg",
            host: PEER_NAME,
            port,
        },
    );
    let through = proxy.connections_to(port);
    eprintln!("e2e myygg: danted made {through} connections to A's listener");
    assert!(through >= 3, "danted log:\n{}", proxy.log());
}
