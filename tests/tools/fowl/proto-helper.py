#!/usr/bin/env python3
"""A throwaway prototype of `git-annex-p2p-fowl` (design b2 of doc/networks/fowl.md),
to run real git-annex over fowl in the study. Not the product: no cap, no
windows, no status. Stdlib + fowllib; fowld from $FOWL_VENV.

  address                -> prints <secret hex>@<mailbox URL>, secret kept in git
                            config p2p-annex-proto.fowl.secret
  ADDRESS SOCKETFILE     -> listen: K waiting slots, each stream relayed to SOCKETFILE
  ADDRESS                -> connect: slots in random order, relay stdin/stdout
Env: FOWL_VENV, FOWL_MAILBOX (address mode), FOWL_PROTO_LOG (fowld lines; codes!).
"""
import os
import random
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fowllib import Fowld, FowlError, Reaper, client_connect, derive_code  # noqa: E402

K = 4
VENV = os.environ.get("FOWL_VENV", "")
LOG = open(os.environ.get("FOWL_PROTO_LOG", os.devnull), "a", buffering=1)


def die(msg, code=1):
    sys.stderr.write("git-annex-p2p-fowl: %s\n" % msg)
    Reaper.close_all()
    os._exit(code)


def parse(address):
    secret, sep, url = address.partition("@")
    try:
        key = bytes.fromhex(secret)
    except ValueError:
        key = b""
    if not sep or len(key) != 32 or not url.startswith("ws"):
        die("bad address (want <64 hex>@ws://HOST:PORT/v1)", 2)
    return key, url


def gentle_close(f):
    f.send(kind="session-close", timeout=1)
    try:
        f.p.wait(3)
    except subprocess.TimeoutExpired:
        f.kill()


def pump(src, dst, on_eof):
    try:
        while True:
            data = src.recv(65536) if hasattr(src, "recv") else os.read(src, 65536)
            if not data:
                break
            if hasattr(dst, "sendall"):
                dst.sendall(data)
            else:
                os.write(dst, data)
    except OSError:
        pass
    on_eof()


def listen(address, sockfile):
    key, url = parse(address)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    def accept_loop():
        while True:
            c, _ = srv.accept()
            u = socket.socket(socket.AF_UNIX)
            try:
                u.connect(sockfile)
            except OSError:
                c.close()
                continue
            done = threading.Event()
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=pump, args=(a, b, done.set), daemon=True).start()

            def closer(c=c, u=u, done=done):
                done.wait()
                c.close()
                u.close()
            threading.Thread(target=closer, daemon=True).start()

    def slot(j):
        code = derive_code(key, j)
        while True:
            f = Fowld(VENV, url, LOG, tag="L%d" % j)
            try:
                f.wait(["welcome"], 30)
                f.send(kind="set-code", code=code)
                f.send(kind="remote", name="annex", local_connect_port=port)
                f.wait(["peer-connected"], 10 ** 6)
            except FowlError:
                gentle_close(f)
                time.sleep(0.2)
                continue

            def serve(f=f):
                try:
                    f.wait(["incoming-connection"], 3)
                    f.wait(["incoming-done", "incoming-lost"], 3600)
                except FowlError:
                    pass
                gentle_close(f)
            threading.Thread(target=serve, daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    for j in range(K):
        threading.Thread(target=slot, args=(j,), daemon=True).start()
    parent = os.getppid()
    ino = os.stat(sockfile).st_ino
    while True:
        time.sleep(0.5)
        try:
            gone = os.stat(sockfile).st_ino != ino
        except OSError:
            gone = True
        if gone or os.getppid() != parent:
            Reaper.close_all()
            os._exit(0)


def try_slot(code, url):
    c = Fowld(VENV, url, LOG, tag="C")
    try:
        c.wait(["welcome"], 30)
        c.send(kind="set-code", code=code)
        c.send(kind="local", name="annex", bind_interface="127.0.0.1")
        port, end = None, time.monotonic() + 5
        while port is None:
            m = c.wait(["peer-connected", "listening"], max(end - time.monotonic(), 0.01))
            if m["kind"] == "peer-connected":
                end = m["_t"] + 2
            else:
                port = m["listening_port"]
        return c, port
    except FowlError:
        gentle_close(c)
        raise


def connect(address):
    key, url = parse(address)
    order = list(range(K))
    random.shuffle(order)
    for j in order:
        try:
            c, port = try_slot(derive_code(key, j), url)
            break
        except FowlError:
            continue
    else:
        die("no listener answered (%d slots tried)" % K)
    s = client_connect(port, 30)
    s.settimeout(None)
    # The first-connection race: the stream is refused before any byte; git-annex
    # speaks first, so hold its first bytes until the peer has accepted. We cannot
    # see acceptance directly; wait for fowld's outgoing-lost for up to 0.3 s.
    first = os.read(0, 65536)
    for _ in range(10):
        s.sendall(first)
        try:
            m = c.wait(["outgoing-lost", "incoming-connection"], 0.3)
        except FowlError:
            break
        if "policy" in str(m.get("reason", "")):
            s.close()
            s = client_connect(port, 30)
            s.settimeout(None)
            continue
        break
    done = threading.Event()
    threading.Thread(target=pump, args=(0, s, done.set), daemon=True).start()
    threading.Thread(target=pump, args=(s, 1, done.set), daemon=True).start()
    done.wait()
    s.close()
    gentle_close(c)
    Reaper.close_all()
    os._exit(0)


def main():
    a = sys.argv[1:]
    if a == ["address"]:
        r = subprocess.run(["git", "config", "p2p-annex-proto.fowl.secret"], capture_output=True,
                           text=True)
        secret = r.stdout.strip()
        if not secret:
            secret = os.urandom(32).hex()
            subprocess.run(["git", "config", "p2p-annex-proto.fowl.secret", secret], check=True)
        print("%s@%s" % (secret, os.environ["FOWL_MAILBOX"]))
    elif len(a) == 2:
        listen(a[0], a[1])
    elif len(a) == 1:
        connect(a[0])
    else:
        die("usage: address | ADDRESS [SOCKETFILE]", 2)


if __name__ == "__main__":
    main()
