//! The listener looks after itself: it goes when its parent or its socket
//! file goes, stops cleanly on signals, logs where the user can find it,
//! and enforces its cap and allow-list.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::peers::*;
use crate::support::*;

/// Has the process exited? A zombie counts: it holds no port, no socket.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// A listener whose parent the test can kill; its log is listener.log.
fn listener_under_a_parent(home: &Path, port: u16, socket: &Path) -> (Proc, KillOnDrop) {
    listener_under_sleep(home, home, port, socket, &home.join("listener.log"))
}

fn read_log(home: &Path) -> String {
    std::fs::read_to_string(home.join("listener.log")).unwrap_or_default()
}

#[test]
fn an_orphaned_listener_exits_within_2s_and_frees_its_port() {
    for signal in [Signal::SIGKILL, Signal::SIGTERM] {
        let home = TempDir::new("orphan");
        let socket = home.path().join("annex.sock");
        reversing_server(&socket);
        let port = free_port();
        let (parent, listener) = listener_under_a_parent(home.path(), port, &socket);
        // The listener serves while its parent lives.
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        assert_eq!(exchange(stream, b"ab"), b"ba");
        kill(Pid::from_raw(parent.pid() as i32), signal).expect("kill the parent");
        let start = Instant::now();
        assert!(
            wait_until(Duration::from_secs(2), || gone(listener.0)),
            "listener still running 2 s after its parent got {signal}; log:\n{}",
            read_log(home.path())
        );
        eprintln!(
            "orphan ({signal}): listener gone after {:?}",
            start.elapsed()
        );
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
        assert!(
            read_log(home.path()).contains("parent process"),
            "{}",
            read_log(home.path())
        );
    }
}

#[test]
fn the_listener_exits_when_its_socket_file_is_removed_or_replaced() {
    for replace in [false, true] {
        let home = TempDir::new("socket-gone");
        let socket = home.path().join("annex.sock");
        reversing_server(&socket);
        let (mut listener, port) = tcp_listener(home.path(), &socket, &[]);
        std::fs::remove_file(&socket).expect("remove the socket file");
        if replace {
            // A new remotedaemon's socket at the same path: not ours.
            let _new = UnixListener::bind(&socket).expect("bind a new socket");
        }
        let status = listener.wait_timeout(Duration::from_secs(2));
        assert!(
            status.is_some_and(|s| s.success()),
            "replace={replace}: {status:?}"
        );
        let why = if replace {
            "was replaced"
        } else {
            "was removed"
        };
        listener.wait_for_stderr(why, DEADLINE);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    }
}

#[test]
fn stop_signals_end_open_connections_and_exit_0() {
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let home = TempDir::new("signals");
        let socket = home.path().join("annex.sock");
        reversing_server(&socket);
        let (mut listener, port) = tcp_listener(home.path(), &socket, &[]);
        // An open, idle connection (the server waits for our EOF).
        let mut open = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        open.write_all(b"pending").expect("write");
        listener.wait_for_stderr("connected", DEADLINE);
        kill(Pid::from_raw(listener.pid() as i32), signal).expect("signal");
        let status = listener.expect_exit(Duration::from_secs(3));
        assert_eq!(status.code(), Some(0), "{signal}");
        // The open connection was ended, not left hanging.
        open.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut rest = Vec::new();
        let _ = open.read_to_end(&mut rest);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
        let log = listener.stderr_so_far().join("\n");
        assert!(log.contains(&format!("stopping on {signal}")), "{log}");
        assert!(log.contains("exiting"), "{log}");
    }
}

#[test]
fn with_stderr_on_dev_null_the_log_goes_to_the_repository() {
    let home = TempDir::new("logfile");
    let repo = home.path().join("repo");
    let out = Command::new("git")
        .args(["init", "-q"])
        .arg(&repo)
        .output()
        .expect("git init");
    assert!(out.status.success());
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let mut listener = Proc::spawn(
        p2p(home.path())
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .arg(&socket)
            .current_dir(&repo)
            .stderr(Stdio::null()),
    );
    let log = repo.join(".git/annex/p2p-annex.tcp.log");
    std::fs::create_dir_all(repo.join(".git/annex")).expect("mkdir annex");
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("listening on"))));
    // A payload marker that must never reach the log.
    let secret = b"AUTH 1234 s3cr3t-t0ken";
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut want = secret.to_vec();
    want.reverse();
    assert_eq!(exchange(stream, secret), want);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("bytes in"))));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("starting p2p-annex"), "{text}");
    assert!(text.contains("22 bytes in, 22 bytes out"), "{text}");
    assert!(!text.contains("s3cr3t"), "payload in the log:\n{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).expect("log").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    kill(Pid::from_raw(listener.pid() as i32), Signal::SIGTERM).expect("signal");
    listener.expect_exit(DEADLINE);
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("exiting")
    );
}

#[test]
fn the_log_setting_names_the_file() {
    let home = TempDir::new("logkey");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let log = home.path().join("custom.log");
    let mut cmd = p2p(home.path());
    cmd.args(["tcp", &format!("127.0.0.1:{port}")]).arg(&socket);
    with_config(
        &mut cmd,
        &[("p2p-annex.tcp.log", log.to_str().expect("utf-8"))],
    );
    let _listener = Proc::spawn(&mut cmd);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("listening on"))));
}

#[test]
fn connections_beyond_the_cap_are_refused_and_logged() {
    let home = TempDir::new("cap");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let (mut listener, port) = tcp_listener(
        home.path(),
        &socket,
        &[("p2p-annex.tcp.max-connections", "2")],
    );
    // Two open connections, held open (the server waits for our EOF).
    let first = TcpStream::connect(("127.0.0.1", port)).expect("connect 1");
    listener.wait_for_stderr("connected", DEADLINE);
    let second = TcpStream::connect(("127.0.0.1", port)).expect("connect 2");
    listener.wait_for_stderr("connected", DEADLINE);
    // The third is closed at once, without reaching the socket.
    let mut third = TcpStream::connect(("127.0.0.1", port)).expect("connect 3");
    third.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = Vec::new();
    assert_eq!(third.read_to_end(&mut buf).unwrap_or(0), 0);
    let line = listener.wait_for_stderr("refused", DEADLINE);
    assert!(
        line.contains("2 connections open (max-connections)"),
        "{line}"
    );
    // A slot frees up when a connection ends.
    assert_eq!(exchange(first, b"12"), b"21");
    listener.wait_for_stderr("closed after", DEADLINE);
    let fourth = TcpStream::connect(("127.0.0.1", port)).expect("connect 4");
    assert_eq!(exchange(fourth, b"34"), b"43");
    assert_eq!(exchange(second, b"56"), b"65");
}

/// Connect from a chosen loopback source address.
fn connect_from(source: &str, port: u16) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let src: std::net::SocketAddrV4 = format!("{source}:0").parse().expect("source");
    bind(fd.as_raw_fd(), &SockaddrIn::from(src)).expect("bind source");
    let dst: std::net::SocketAddrV4 = format!("127.0.0.1:{port}").parse().expect("dest");
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst)).expect("connect");
    TcpStream::from(fd)
}

#[test]
fn the_allow_list_refuses_other_sources_before_touching_the_socket() {
    let home = TempDir::new("allow");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let allow = [
        ("p2p-annex.tcp.allow", "10.0.0.0/8"),
        ("p2p-annex.tcp.allow", "127.0.0.1"),
    ];
    let (mut listener, port) = tcp_listener(home.path(), &socket, &allow);
    let mut refused = connect_from("127.0.0.2", port);
    refused.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = Vec::new();
    assert_eq!(refused.read_to_end(&mut buf).unwrap_or(0), 0);
    let line = listener.wait_for_stderr("refused", DEADLINE);
    assert!(
        line.contains("127.0.0.2:") && line.contains("not in the allow-list"),
        "{line}"
    );
    assert!(
        !listener
            .stderr_so_far()
            .iter()
            .any(|l| l.contains("connected")),
        "a refused peer reached the socket"
    );
    let allowed = connect_from("127.0.0.1", port);
    assert_eq!(exchange(allowed, b"ok"), b"ko");
}

#[test]
fn bad_limits_are_configuration_errors() {
    let home = TempDir::new("badlimits");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    for (key, value, want) in [
        (
            "p2p-annex.tcp.allow",
            "10.0.0.0/40",
            "p2p-annex.tcp.allow: bad value \"10.0.0.0/40\"",
        ),
        (
            "p2p-annex.tcp.max-connections",
            "0",
            "p2p-annex.tcp.max-connections: bad value \"0\"",
        ),
    ] {
        let mut cmd = p2p(home.path());
        cmd.args(["tcp", &format!("127.0.0.1:{}", free_port())])
            .arg(&socket);
        with_config(&mut cmd, &[(key, value)]);
        let (status, _, stderr) = run(&mut cmd);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
}

#[test]
fn an_idle_timeout_closes_silent_connections_only_when_configured() {
    let home = TempDir::new("idle");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let (mut listener, port) = tcp_listener(
        home.path(),
        &socket,
        &[("p2p-annex.tcp.idle-timeout", "1s")],
    );
    // A connection that says nothing is closed after about a second.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    let line = listener.wait_for_stderr("idle-timeout", DEADLINE);
    assert!(line.contains("closing: idle for"), "{line}");
    // One that keeps talking is not.
    let busy = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut w = busy.try_clone().expect("clone");
    for _ in 0..6 {
        w.write_all(b"x").expect("still open");
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(exchange(busy, b"y"), b"yxxxxxx");
}
