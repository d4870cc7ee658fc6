//! Listen mode: peers accepted and relayed to a unix socket served by the
//! test, as git-annex's remotedaemon would serve it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use crate::support::peers::*;
use crate::support::*;

struct Setup {
    _home: TempDir,
    listener: Proc,
    port: u16,
}

fn start_tcp_listener(tag: &str, path: CopyPath) -> Setup {
    let home = TempDir::new(&format!("{tag}-{}", path.tag()));
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let mut listener = Proc::spawn_logged(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .arg(&socket)
            .stdin(Stdio::null()),
    );
    listener.wait_for_stderr("listening on", DEADLINE);
    Setup {
        _home: home,
        listener,
        port,
    }
}

#[test]
fn serves_connections_in_sequence_splice() {
    serves_connections_in_sequence(CopyPath::Splice);
}

#[test]
fn serves_connections_in_sequence_read_write() {
    serves_connections_in_sequence(CopyPath::ReadWrite);
}

fn serves_connections_in_sequence(path: CopyPath) {
    let mut s = start_tcp_listener("sequence", path);
    for i in 0..20 {
        let data = random_bytes(10_000 + i * 997, i as u64);
        let stream = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
        assert_same_bytes(
            &exchange(stream, &data),
            &reversed(&data),
            "sequential reply",
        );
    }
    let closed = s.listener.wait_for_stderr("closed after", DEADLINE);
    assert!(closed.contains("bytes in"), "{closed}");
    assert!(
        s.listener.wait_timeout(Duration::ZERO).is_none(),
        "listener exited"
    );
}

#[test]
fn serves_connections_in_parallel_splice() {
    serves_connections_in_parallel(CopyPath::Splice);
}

#[test]
fn serves_connections_in_parallel_read_write() {
    serves_connections_in_parallel(CopyPath::ReadWrite);
}

fn serves_connections_in_parallel(path: CopyPath) {
    let s = start_tcp_listener("parallel", path);
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let port = s.port;
            thread::spawn(move || {
                let data = random_bytes(1 << 20, 100 + i);
                let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                assert_same_bytes(&exchange(stream, &data), &reversed(&data), "parallel reply");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
}

#[test]
fn a_socket_that_refuses_closes_the_peer_and_the_listener_keeps_running() {
    // Injected: git-annex's socket file is there but nobody serves it (a
    // stale socket), so every relay attempt is refused.
    let home = TempDir::new("refusing-socket");
    let socket = home.path().join("stale.sock");
    drop(UnixListener::bind(&socket).expect("bind, then close: a stale socket"));
    let port = free_port();
    let mut listener = Proc::spawn_logged(
        p2p(home.path())
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .arg(&socket),
    );
    listener.wait_for_stderr("listening on", DEADLINE);
    for _ in 0..3 {
        // The peer is closed promptly, without a byte.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut buf = Vec::new();
        assert_eq!(stream.read_to_end(&mut buf).expect("read"), 0);
        let line = listener.wait_for_stderr("cannot connect to", DEADLINE);
        assert!(line.contains("connection refused"), "{line}");
    }
    assert!(
        listener.wait_timeout(Duration::ZERO).is_none(),
        "listener exited"
    );
}

/// git-annex's normal end of a CONNECT session (doc/git-annex-contract.md):
/// it writes CONNECTDONE and closes its socket without reading the
/// client's answer, so our next read of that socket fails with
/// ECONNRESET. Every byte it wrote reaches the peer, and the log calls it
/// a normal end, not a failure.
#[test]
fn git_annex_closing_with_the_answer_unread_is_a_normal_end() {
    let home = TempDir::new("annex-reset");
    let socket = home.path().join("annex.sock");
    let server = UnixListener::bind(&socket).expect("bind the git-annex stand-in");
    let port = free_port();
    let mut listener = Proc::spawn_logged(
        p2p(home.path())
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .arg(&socket)
            .stdin(Stdio::null()),
    );
    listener.wait_for_stderr("listening on", DEADLINE);
    let mut peer = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    peer.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let (mut annex, _) = server.accept().expect("the relayed connection");
    annex.write_all(b"CONNECTDONE 0\n").expect("write");
    let mut got = [0u8; 14];
    peer.read_exact(&mut got)
        .expect("CONNECTDONE reaches the peer");
    assert_eq!(&got, b"CONNECTDONE 0\n");
    peer.write_all(b"CONNECTDONE 0\n").expect("answer");
    // Close only once the answer waits unread in the socket: that makes
    // the reset.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&annex),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).expect("poll");
    assert_eq!(ready, 1, "the answer did not arrive");
    drop(annex);
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).expect("the peer sees the end");
    assert!(rest.is_empty(), "{rest:?}");
    let line = listener.wait_for_stderr(" after ", DEADLINE);
    assert!(line.contains(": closed by git-annex after"), "{line}");
    assert!(line.contains("bytes in, 14 bytes out"), "{line}");
}

/// A port another process holds: the listener does not exit (remotedaemon
/// would never restart it), says so once, keeps watching its socket file,
/// and serves once the port is free, without a restart.
#[test]
fn a_busy_port_is_waited_for_and_served_once_free() {
    let home = TempDir::new("busy");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let start = |home: &Path, socket: &Path| {
        let mut listener = Proc::spawn_logged(
            p2p(home)
                .args(["tcp", &format!("127.0.0.1:{port}")])
                .arg(socket)
                .stdin(Stdio::null()),
        );
        listener.wait_for_stderr(
            &format!("cannot listen on 127.0.0.1:{port}: address already in use; will try again"),
            DEADLINE,
        );
        listener
    };
    let mut listener = start(home.path(), &socket);
    // Waiting is quiet: no exit, no line per try, for 3 s (8 tries).
    assert!(listener.wait_timeout(Duration::from_secs(3)).is_none());
    let said = listener.stderr_so_far();
    assert!(said.is_empty(), "{said:?}");

    // While it waits it still watches its socket file, and signals.
    let other = home.path().join("other.sock");
    let _other = UnixListener::bind(&other).expect("bind");
    let mut watcher = start(home.path(), &other);
    std::fs::remove_file(&other).expect("remove the socket file");
    assert!(watcher.expect_exit(Duration::from_secs(3)).success());
    let _other = UnixListener::bind(&other).expect("bind");
    let watcher = start(home.path(), &other);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watcher.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut watcher = watcher;
    assert!(watcher.expect_exit(Duration::from_secs(3)).success());

    drop(holder);
    let freed = std::time::Instant::now();
    listener.wait_for_stderr(
        &format!("listening on 127.0.0.1:{port}, relaying to"),
        Duration::from_secs(30),
    );
    // The retry delay doubles up to 10 s.
    let took = freed.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert_eq!(exchange(conn, b"abc"), b"cba");
}

#[test]
fn bind_setting_overrides_the_address_host() {
    let home = TempDir::new("bind");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let mut cmd = p2p(home.path());
    // The advertised name is not ours; `bind` says where to listen.
    cmd.args(["tcp", &format!("nas.example.invalid:{port}")])
        .arg(&socket);
    with_config(&mut cmd, &[("p2p-annex.tcp.bind", "::1")]);
    let mut listener = Proc::spawn_logged(&mut cmd);
    let line = listener.wait_for_stderr("listening on", DEADLINE);
    assert!(line.contains(&format!("[::1]:{port}")), "{line}");
    let stream = TcpStream::connect(("::1", port)).expect("connect");
    assert_eq!(exchange(stream, b"xyz"), b"zyx");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "bound beyond the configured address"
    );
}

#[test]
fn connect_and_listen_chain_relays_64_mib_byte_exact_splice() {
    connect_and_listen_chain_relays_64_mib_byte_exact(CopyPath::Splice);
}

#[test]
fn connect_and_listen_chain_relays_64_mib_byte_exact_read_write() {
    connect_and_listen_chain_relays_64_mib_byte_exact(CopyPath::ReadWrite);
}

fn connect_and_listen_chain_relays_64_mib_byte_exact(path: CopyPath) {
    let s = start_tcp_listener("chain", path);
    let home = TempDir::new(&format!("chain-client-{}", path.tag()));
    let data = random_bytes(64 << 20, 7);
    let mut client = Proc::spawn(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{}", s.port)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = client.child.stdin.take().expect("stdin");
    let input = data.clone();
    let feeder = thread::spawn(move || stdin.write_all(&input).expect("feed"));
    let mut got = Vec::new();
    client
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut got)
        .expect("read");
    feeder.join().expect("feeder");
    assert_same_bytes(
        &got,
        &reversed(&data),
        "through connect → listen → unix socket",
    );
    assert!(client.expect_exit(DEADLINE).success());
}

/// The pipe descriptors a tcp listener holds while one connection, which
/// has carried bytes both ways, is open.
fn pipes_during_a_connection(path: CopyPath) -> usize {
    let home = TempDir::new(&format!("pipes-{}", path.tag()));
    let socket = home.path().join("annex.sock");
    let server = UnixListener::bind(&socket).expect("bind unix socket");
    // Echoes four bytes at once, then holds the connection until EOF.
    let echo = thread::spawn(move || {
        let (mut conn, _) = server.accept().expect("accept");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("echo read");
        conn.write_all(&buf).expect("echo write");
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    let port = free_port();
    let mut listener = Proc::spawn_logged(
        path.apply(&mut p2p(home.path()))
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .arg(&socket),
    );
    listener.wait_for_stderr("listening on", DEADLINE);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(b"ping").expect("send");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    // A direction makes its pipe before it moves its first byte, so both
    // exist now.
    let pipes = std::fs::read_dir(format!("/proc/{}/fd", listener.pid()))
        .expect("read /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count();
    drop(stream);
    echo.join().expect("echo server");
    pipes
}

#[cfg(target_os = "linux")]
#[test]
fn splice_puts_a_pipe_in_each_direction_and_the_switch_turns_it_off() {
    let spliced = pipes_during_a_connection(CopyPath::Splice);
    let copied = pipes_during_a_connection(CopyPath::ReadWrite);
    // Between two sockets, each direction splices through a pipe of its
    // own (two descriptors); the read/write path needs none.
    assert_eq!(
        spliced,
        copied + 4,
        "pipe descriptors with splice: {spliced}, with P2P_ANNEX_NO_SPLICE=1: {copied}"
    );
}

mod unix_sockets {
    use super::*;

    fn token(home: &Path) -> String {
        let (status, stdout, stderr) = run(p2p(home).args(["unix-sockets", "address"]));
        assert!(status.success(), "{stderr}");
        let token = stdout.trim().to_string();
        assert_eq!(stdout, format!("{token}\n"));
        assert!(
            token.len() >= 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{token:?}"
        );
        token
    }

    fn dir_config(cmd: &mut std::process::Command, dir: &Path) {
        with_config(
            cmd,
            &[(
                "p2p-annex.unix-sockets.dir",
                dir.to_str().expect("utf-8 dir"),
            )],
        );
    }

    #[test]
    fn address_prints_a_fresh_token_each_time() {
        let home = TempDir::new("us-token");
        assert_ne!(token(home.path()), token(home.path()));
    }

    #[test]
    fn connect_through_listen_to_the_socket_splice() {
        connect_through_listen_to_the_socket(CopyPath::Splice);
    }

    #[test]
    fn connect_through_listen_to_the_socket_read_write() {
        connect_through_listen_to_the_socket(CopyPath::ReadWrite);
    }

    fn connect_through_listen_to_the_socket(path: CopyPath) {
        let home = TempDir::new(&format!("us-relay-{}", path.tag()));
        let dir = home.path().join("net");
        std::fs::create_dir(&dir).expect("mkdir");
        let socket: PathBuf = home.path().join("annex.sock");
        reversing_server(&socket);
        let token = token(home.path());
        // Stale socket file from a listener that was killed: replaced.
        drop(UnixListener::bind(dir.join(&token)).expect("stale socket"));
        let mut cmd = p2p(home.path());
        cmd.args(["unix-sockets", &token]).arg(&socket);
        dir_config(&mut cmd, &dir);
        let mut listener = Proc::spawn_logged(path.apply(&mut cmd));
        listener.wait_for_stderr("listening on", DEADLINE);

        let data = random_bytes(3 << 20, 11);
        let link = helper_link(home.path(), "unix-sockets");
        let mut cmd = helper(&link, home.path());
        cmd.arg(&token).stdin(Stdio::piped()).stdout(Stdio::piped());
        dir_config(&mut cmd, &dir);
        let mut client = Proc::spawn(path.apply(&mut cmd));
        let mut stdin = client.child.stdin.take().expect("stdin");
        let input = data.clone();
        let feeder = thread::spawn(move || stdin.write_all(&input).expect("feed"));
        let mut got = Vec::new();
        client
            .child
            .stdout
            .take()
            .expect("stdout")
            .read_to_end(&mut got)
            .expect("read");
        feeder.join().expect("feeder");
        assert_same_bytes(&got, &reversed(&data), "unix-sockets relay");
        assert!(client.expect_exit(DEADLINE).success());
        // A live listener's socket is not taken over by a second one.
        let mut cmd = p2p(home.path());
        cmd.args(["unix-sockets", &token]).arg(&socket);
        dir_config(&mut cmd, &dir);
        let (status, _, stderr) = run(&mut cmd);
        assert_eq!(status.code(), Some(1));
        assert!(stderr.contains("address already in use"), "{stderr}");
        // The socket file is a plain unix socket: anything can connect.
        let mut direct = UnixStream::connect(dir.join(&token)).expect("connect directly");
        direct.write_all(b"12").expect("write");
        direct.shutdown(Shutdown::Write).expect("shutdown");
        let mut reply = String::new();
        direct.read_to_string(&mut reply).expect("read");
        assert_eq!(reply, "21");
    }

    #[test]
    fn bad_tokens_are_refused_before_touching_the_filesystem() {
        let home = TempDir::new("us-bad");
        for bad in ["../etc/passwd", "a/b", ".hidden", "%2E%2E"] {
            let (status, _, stderr) = run(p2p(home.path()).args(["unix-sockets", bad]));
            assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
            assert!(
                stderr.starts_with("p2p-annex: unix-sockets: bad token"),
                "{stderr}"
            );
        }
    }

    #[test]
    fn connect_to_a_missing_token_fails_cleanly() {
        let home = TempDir::new("us-missing");
        let mut cmd = p2p(home.path());
        cmd.args(["unix-sockets", "nosuchtoken"]);
        dir_config(&mut cmd, home.path());
        let (status, _, stderr) = run(&mut cmd);
        assert_eq!(status.code(), Some(1));
        assert!(
            stderr.contains("cannot connect to") && stderr.contains("no such file or directory"),
            "{stderr}"
        );
    }
}

#[test]
fn descriptors_inherited_from_the_parent_are_closed() {
    // remotedaemon leaks its descriptors (its own listening socket among
    // them) into the listener; an orphaned listener must not keep them.
    let home = TempDir::new("inherited-fds");
    let socket = home.path().join("annex.sock");
    reversing_server(&socket);
    let port = free_port();
    let mut listener = Proc::spawn_logged(
        std::process::Command::new("sh")
            .args(["-c", "exec 7</dev/null 9>/dev/null; exec \"$@\"", "sh"])
            .arg(bin())
            .args(["tcp", &format!("127.0.0.1:{port}")])
            .arg(&socket)
            .current_dir(home.path())
            .env("HOME", home.path()),
    );
    listener.wait_for_stderr("listening on", DEADLINE);
    let fd_dir = format!("/proc/{}/fd", listener.pid());
    let fds: Vec<String> = std::fs::read_dir(&fd_dir)
        .expect("read /proc/PID/fd")
        .map(|e| {
            e.expect("fd entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        !fds.contains(&"7".to_string()) && !fds.contains(&"9".to_string()),
        "inherited fds still open: {fds:?}"
    );
}
