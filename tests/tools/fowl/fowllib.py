"""Drive fowld (JSON lines on stdin/stdout) and a local mailbox for the fowl study.

Stdlib only. Every process started here is in its own session and is killed
(SIGKILL to its process group) by Reaper.close_all(); every wait is bounded.
Must run inside a network namespace with loopback only (fowl dials the public
transit relay by itself): check_isolated() refuses to run otherwise.
"""
import hashlib
import hmac
import json
import os
import queue
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def check_isolated():
    """Refuse to run unless the only routes are loopback ones."""
    out = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                         text=True, check=True).stdout
    out6 = subprocess.run(["ip", "-6", "route", "show", "table", "all"], capture_output=True,
                          text=True, check=True).stdout
    bad = [line for line in (out + out6).splitlines() if line.strip() and " dev lo " not in line + " "]
    if bad:
        sys.exit("fowlstudy: not in a loopback-only namespace (route: %s)" % bad[0])
    try:
        socket.create_connection(("1.1.1.1", 80), 1).close()
        sys.exit("fowlstudy: 1.1.1.1 is reachable: not isolated")
    except OSError:
        pass


class Reaper:
    procs = []

    @classmethod
    def spawn(cls, argv, **kw):
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        cls.procs.append(p)
        return p

    @classmethod
    def kill(cls, p, sig=signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass

    @classmethod
    def close_all(cls):
        for p in cls.procs:
            if p.poll() is None:
                cls.kill(p)


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_port(port, timeout, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end and (proc is None or proc.poll() is None):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_mailbox(venv, workdir, port):
    log = open(os.path.join(workdir, "mailbox.log"), "w")
    p = Reaper.spawn([os.path.join(venv, "bin", "twistd"), "-n", "--pidfile=", "wormhole-mailbox",
                      "--port", "tcp:%d:interface=127.0.0.1" % port,
                      "--channel-db", os.path.join(workdir, "relay.sqlite")],
                     stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    if not wait_port(port, 30, p):
        raise RuntimeError("mailbox did not listen within 30 s (see %s/mailbox.log)" % workdir)
    return p


def derive_code(secret, slot):
    """Code for a slot: numeric nameplate + high-entropy password, both from HMAC(secret)."""
    d = hmac.new(secret, b"p2p-annex fowl slot %d" % slot, hashlib.sha256).digest()
    nameplate = 1000 + int.from_bytes(d[:4], "big") % 9000000
    return "%d-%s" % (nameplate, d[4:20].hex())


class Fowld:
    """One fowld process; its JSON output lines go to a queue (bytes-in/out only counted)."""

    def __init__(self, venv, mailbox, log, nodelay=False, tag=""):
        if nodelay:
            argv = [os.path.join(venv, "bin", "python"), os.path.join(HERE, "fowld_nodelay.py")]
        else:
            argv = [os.path.join(venv, "bin", "fowld")]
        self.t0 = time.monotonic()
        self.p = Reaper.spawn(argv + ["--mailbox", mailbox], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=log, bufsize=0)
        self.q = queue.Queue()
        self.tag = tag
        self.log = log
        self.bytes_lines = 0
        self.nonjson = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                msg = json.loads(line)
            except ValueError:
                self.nonjson.append(line)
                self.log.write("[%s nonjson] %s\n" % (self.tag, line))
                continue
            if msg.get("kind") in ("bytes-in", "bytes-out"):
                self.bytes_lines += 1
                continue
            msg["_t"] = time.monotonic()
            self.log.write("[%s %.3f] %s\n" % (self.tag, msg["_t"] - self.t0, line[:300]))
            self.q.put(msg)
        self.q.put({"kind": "_eof", "_t": time.monotonic()})

    def send(self, **obj):
        try:
            self.p.stdin.write((json.dumps(obj) + "\n").encode())
        except (BrokenPipeError, ValueError):
            pass

    def wait(self, kinds, timeout):
        """Next message whose kind is in kinds; error/closed/_eof/timeout raise."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise FowlError("timeout waiting for %s" % "/".join(kinds))
            try:
                msg = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if msg["kind"] in kinds:
                return msg
            if msg["kind"] in ("error", "closed", "_eof", "listening-failed", "remote-connect-failed"):
                raise FowlError("%s: %s" % (msg["kind"], msg.get("message") or msg.get("result")
                                            or msg.get("reason") or ""))

    def drain_kinds(self):
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def rss(self):
        return rss_kib(self.p.pid)

    def kill(self, sig=signal.SIGKILL):
        Reaper.kill(self.p, sig)


class FowlError(Exception):
    pass


# --- the application behind the tunnel ---------------------------------
# Requests: b"E" + 1 byte -> that byte back; b"U" + u64 len + data -> sha256(data);
# b"D" + u64 len -> len bytes of payload(len). fowl has no half-close, so lengths
# frame everything and the client closes last.

_payloads = {}


def payload(n):
    if n not in _payloads:
        _payloads[n] = random.Random(n).randbytes(n)
    return _payloads[n]


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("eof after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def _serve_one(c, stats):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            op = c.recv(1)
            if not op:
                return
            if op == b"E":
                c.sendall(recv_exact(c, 1))
            elif op == b"U":
                (n,) = struct.unpack(">Q", recv_exact(c, 8))
                h = hashlib.sha256()
                left = n
                while left:
                    chunk = c.recv(min(left, 1 << 20))
                    if not chunk:
                        raise EOFError("upload cut at %d of %d" % (n - left, n))
                    h.update(chunk)
                    left -= len(chunk)
                c.sendall(h.digest())
            elif op == b"D":
                (n,) = struct.unpack(">Q", recv_exact(c, 8))
                c.sendall(payload(n))
            else:
                return
    except (OSError, EOFError) as e:
        stats["errors"].append(str(e))
    finally:
        c.close()


def start_app():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    stats = {"accepted": 0, "errors": []}

    def loop():
        while True:
            c, _ = srv.accept()
            stats["accepted"] += 1
            threading.Thread(target=_serve_one, args=(c, stats), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1], stats


def client_connect(port, timeout=30):
    s = socket.create_connection(("127.0.0.1", port), timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    return s


def echo(s):
    s.sendall(b"Ex")
    if recv_exact(s, 1) != b"x":
        raise FowlError("echo mismatch")


def rtts(s, n):
    out = []
    for _ in range(n):
        t = time.monotonic()
        echo(s)
        out.append(time.monotonic() - t)
    return out


def upload(s, n):
    data = payload(n)
    t = time.monotonic()
    s.sendall(b"U" + struct.pack(">Q", n))
    s.sendall(data)
    got = recv_exact(s, 32)
    dt = time.monotonic() - t
    if got != hashlib.sha256(data).digest():
        raise FowlError("upload sha256 mismatch")
    return dt


def download(s, n):
    t = time.monotonic()
    s.sendall(b"D" + struct.pack(">Q", n))
    h = hashlib.sha256()
    left = n
    while left:
        chunk = s.recv(min(left, 1 << 20))
        if not chunk:
            raise FowlError("download cut at %d of %d" % (n - left, n))
        h.update(chunk)
        left -= len(chunk)
    dt = time.monotonic() - t
    if h.digest() != hashlib.sha256(payload(n)).digest():
        raise FowlError("download sha256 mismatch")
    return dt


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")
