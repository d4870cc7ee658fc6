//! Test peers: servers and clients that check every byte.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;

pub use super::Stream;

/// A unix socket server that answers each connection with the reverse of
/// everything it read, after the client's EOF: a reply that proves every
/// byte arrived, in order, before the EOF.
pub fn reversing_server(path: &Path) -> thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind unix socket");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            thread::spawn(move || {
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).is_ok() {
                    got.reverse();
                    let _ = conn.write_all(&got);
                }
            });
        }
    })
}

/// Send `data`, half-close, and return the whole reply.
pub fn exchange(mut stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().expect("clone");
    let data = data.to_vec();
    let w = thread::spawn(move || {
        writer.write_all(&data).expect("send");
        writer.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read reply");
    w.join().expect("writer");
    reply
}

pub fn reversed(data: &[u8]) -> Vec<u8> {
    data.iter().rev().copied().collect()
}

/// Send `len` bytes of `Stream::new(seed)` and shut the write side.
pub fn send_stream(mut w: impl Write, seed: u64, len: usize) -> std::io::Result<()> {
    let mut s = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        s.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Read to EOF and check it is exactly `len` bytes of `Stream::new(seed)`.
pub fn check_stream(mut r: impl Read, seed: u64, len: usize) -> Result<(), String> {
    let mut s = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("read after {total} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if total + n > len || !s.matches(&buf[..n]) {
            return Err(format!("wrong bytes at or after offset {total}"));
        }
        total += n;
    }
    if total == len {
        Ok(())
    } else {
        Err(format!("got {total} bytes, want {len}"))
    }
}

/// The stream a `stream_server` answers with, for a client seed.
pub fn answer_seed(seed: u64) -> u64 {
    seed ^ 0x5a5a_5a5a_5a5a_5a5a
}

/// A unix socket server for both-ways load: each connection starts with an
/// 8-byte seed and a 8-byte length; the server sends `len` bytes of
/// `Stream::new(answer_seed(seed))` while it checks that the client sends
/// `len` bytes of `Stream::new(seed)` and then EOF; then it writes one
/// verdict byte, `Y` or `N`, and closes.
pub fn stream_server(path: &Path) -> thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind unix socket");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            thread::spawn(move || {
                answer_streams(&conn, |c, seed, len| check_stream(c, seed, len));
            });
        }
    })
}

/// One connection of `stream_server` or `framed_stream_server`: read the
/// seed and length, send the answer stream while `check` reads the
/// client's, then write the verdict byte. False when no header came.
fn answer_streams(
    conn: &UnixStream,
    check: impl FnOnce(&UnixStream, u64, usize) -> Result<(), String>,
) -> bool {
    let mut head = [0u8; 16];
    if (&*conn).read_exact(&mut head).is_err() {
        return false;
    }
    let seed = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) as usize;
    let writer = conn.try_clone().expect("clone");
    let sender = thread::spawn(move || send_stream(writer, answer_seed(seed), len));
    let verdict = check(conn, seed, len);
    let sent = sender.join().expect("sender");
    let ok = verdict.is_ok() && sent.is_ok();
    let _ = (&*conn).write_all(if ok { b"Y" } else { b"N" });
    true
}

/// One client of `stream_server` through TCP: sends and checks `len` bytes
/// each way. Returns an error saying what went wrong.
pub fn stream_client(port: u16, seed: u64, len: usize) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let mut head = seed.to_le_bytes().to_vec();
    head.extend_from_slice(&(len as u64).to_le_bytes());
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&head)?;
        send_stream(&mut writer, seed, len)?;
        writer.shutdown(Shutdown::Write)
    });
    // The answer is `len` bytes then the verdict byte.
    let mut s = Stream::new(answer_seed(seed));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let mut tail = Vec::new();
    loop {
        let n = (&stream)
            .read(&mut buf)
            .map_err(|e| format!("read after {total}: {e}"))?;
        if n == 0 {
            break;
        }
        let body = n.min(len - total);
        if !s.matches(&buf[..body]) {
            return Err(format!("wrong bytes at or after offset {total}"));
        }
        total += body;
        tail.extend_from_slice(&buf[body..n]);
    }
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    match (total == len, tail.as_slice()) {
        (true, b"Y") => Ok(()),
        (true, b"N") => Err("the server saw wrong bytes".into()),
        _ => Err(format!("got {total} of {len} bytes, then {tail:?}")),
    }
}

/// Read exactly `len` bytes and check they are `Stream::new(seed)`; does
/// not wait for EOF.
pub fn check_exact(mut r: impl Read, seed: u64, len: usize) -> Result<(), String> {
    let mut s = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    while total < len {
        let want = buf.len().min(len - total);
        let n = r
            .read(&mut buf[..want])
            .map_err(|e| format!("read after {total} of {len} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {total} of {len} bytes"));
        }
        if !s.matches(&buf[..n]) {
            return Err(format!("wrong bytes at or after offset {total}"));
        }
        total += n;
    }
    Ok(())
}

/// `stream_server` for transports without half-close (fowl): lengths frame
/// everything. Each connection starts with an 8-byte seed and an 8-byte
/// length; the server sends `len` bytes of `Stream::new(answer_seed(seed))`
/// while it checks `len` bytes of `Stream::new(seed)` from the client, then
/// writes one verdict byte, `Y` or `N`, and waits for the client to close
/// first. Returns the number of connections accepted so far.
pub fn framed_stream_server(path: &Path) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = UnixListener::bind(path).expect("bind unix socket");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                if !answer_streams(&conn, |c, seed, len| check_exact(c, seed, len)) {
                    return;
                }
                // The client closes first; a bound, should it never.
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(300)));
                let mut rest = Vec::new();
                let _ = (&conn).read_to_end(&mut rest);
            });
        }
    });
    accepted
}
