#!/usr/bin/env python3
"""Measure the three candidate designs for a p2p-annex `fowl` netname on loopback.

Run by run-study.sh inside a loopback-only network namespace (checked here too).
Usage: fowlstudy.py VENV OUTDIR [--designs c,a,b,b2,nameplates] [--n 100] [--mib 64]
       [--nodelay] [--streams UDUD]
Designs: a wormhole per connection (sequential), b a pool of 4 slots with 4 clients
at once, b2 the chosen design (8 slots, bounded waits, gentle close), c one
persistent wormhole with a subchannel per connection.
Writes OUTDIR/results.json and OUTDIR/fowld.log (fowld's JSON lines; they hold the
test codes, which are made from a throwaway secret).
"""
import argparse
import json
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fowllib import (Fowld, FowlError, Reaper, check_isolated, client_connect,  # noqa: E402
                     derive_code, download, echo, free_port, med, pct, rtts, start_app,
                     start_mailbox, upload)

R = {}
LOG = None
ARGS = None
URL = None
APP = None


def say(*a):
    print(*a, flush=True)


def summary(xs):
    return {"n": len(xs), "median_s": round(med(xs), 4), "p90_s": round(pct(xs, 0.9), 4),
            "max_s": round(max(xs), 4) if xs else None}


def new_fowld(tag, nodelay=None):
    return Fowld(ARGS.venv, URL, LOG, nodelay=ARGS.nodelay if nodelay is None else nodelay, tag=tag)


_seen = [0]


def stderr_errors():
    """fowld's unhandled errors logged since the last call."""
    LOG.flush()
    with open(os.path.join(ARGS.out, "fowld.log"), errors="replace") as f:
        f.seek(_seen[0])
        text = f.read()
        _seen[0] = f.tell()
    return {"ValueError fd -1": text.count("file descriptor cannot be a negative integer"),
            "NoTransition got_bytes in local_connect": text.count(
                "FowlFarToNear.got_bytes at"),
            "Unhandled Error": text.count("Unhandled Error")}


# --- listener slots (designs a and b) ------------------------------------

def gentle_close(f):
    """session-close, then SIGTERM, then SIGKILL: a SIGKILLed waiting fowld leaves
    a stale nameplate claim behind (see nameplates())."""
    f.send(kind="session-close", timeout=1)
    try:
        f.p.wait(3)
        return
    except Exception:
        pass
    Reaper.kill(f.p, signal.SIGTERM)
    if f.p.poll() is None:
        f.kill()


class Slot:
    """One waiting fowld on a fixed code; re-armed with a fresh fowld once its
    peer has connected (one wormhole = one connection)."""

    def __init__(self, code, tag, arm_times=None, once=False, gentle=False):
        self.code, self.tag, self.once, self.gentle = code, tag, once, gentle
        self.waiting = None
        self.events = []
        self.arm_times = [] if arm_times is None else arm_times
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        n = 0
        while not self.stop:
            n += 1
            t0 = time.monotonic()
            f = new_fowld("%s#%d" % (self.tag, n))
            self.waiting = f
            if self.stop:
                f.kill()
                return
            try:
                f.wait(["welcome"], 30)
                f.send(kind="set-code", code=self.code)
                f.send(kind="remote", name="annex", local_connect_port=APP)
                f.wait(["code-allocated"], 30)
                self.arm_times.append(time.monotonic() - t0)
                f.wait(["peer-connected"], 3600)
            except FowlError as e:
                self.events.append(str(e))
                if self.gentle:
                    gentle_close(f)
                else:
                    f.kill()
                time.sleep(0.2)
                continue
            # Serve this one connection in the background, then close it.
            self.waiting = None
            threading.Thread(target=self._finish, args=(f,), daemon=True).start()
            if self.once:
                return

    def close(self):
        self.stop = True
        f = self.waiting
        if f is not None:
            f.kill()

    def _finish(self, f):
        try:
            if self.gentle:
                # A peer that never opens a stream (another client that took our
                # code, or one that gave up) is dropped after 3 s.
                f.wait(["incoming-connection"], 3)
            f.wait(["incoming-done", "incoming-lost"], 600)
        except FowlError as e:
            self.events.append("serving: " + str(e))
        f.send(kind="session-close", timeout=2)
        try:
            f.p.wait(5)
        except Exception:
            pass
        f.kill()


def client_once(code, timeout=20, extra=None):
    """Connect mode, one connection: spawn fowld, set the code, ask for a local
    listener, connect, first echoed byte. Returns (ttfb, socket, fowld)."""
    t0 = time.monotonic()
    c = new_fowld("client")
    try:
        c.wait(["welcome"], timeout)
        c.send(kind="set-code", code=code)
        c.send(kind="local", name="annex", bind_interface="127.0.0.1")
        m = c.wait(["listening"], timeout)
        s = client_connect(m["listening_port"], timeout)
        echo(s)
        return time.monotonic() - t0, s, c
    except Exception:
        c.kill()
        raise


def client_close(s, c):
    s.close()
    try:
        c.wait(["outgoing-done", "outgoing-lost"], 10)
    except FowlError:
        pass
    c.send(kind="session-close", timeout=2)
    try:
        c.p.wait(5)
    except Exception:
        pass
    c.kill()


def design_a():
    """One wormhole per connection, codes from secret + counter (counter known to both
    here; in the product it is a time window or slot number)."""
    say("== design a: one wormhole per connection, %d in a row" % ARGS.n)
    secret = os.urandom(32)
    res = {"ttfb_s": [], "failures": []}
    slot = None
    arm_times = []
    for i in range(ARGS.n):
        code = derive_code(secret, i)
        if slot:
            slot.close()
        slot = Slot(code, "A%d" % i, arm_times, once=True)
        try:
            ttfb, s, c = client_once(code)
            res["ttfb_s"].append(ttfb)
            if i == 0:
                res["rtt_in_stream_s"] = summary(rtts(s, 20))
                if ARGS.mib:
                    n = ARGS.mib << 20
                    res["upload_64MiB_s"] = upload(s, n)
                    res["download_64MiB_s"] = download(s, n)
                    res["rss_client_fowld_kib"] = c.rss()
            client_close(s, c)
        except Exception as e:
            res["failures"].append("%d: %s" % (i, e))
        if i % 10 == 9:
            say("  %d done, %d failures, median ttfb %.3f" % (i + 1, len(res["failures"]),
                                                            med(res["ttfb_s"])))
    slot.close()
    res["listener_arm_s"] = summary(arm_times)
    res["ttfb"] = summary(res.pop("ttfb_s"))
    res["fowld_errors"] = stderr_errors()
    R["a"] = res
    say(json.dumps(res, indent=1))


def design_b():
    """A pool of K waiting nameplates (fixed codes, reused once released); W clients
    at once pick slots at random and try the next one on failure."""
    k, w, per = 4, 4, max(1, ARGS.n // 10)
    say("== design b: pool of %d slots, %d concurrent clients x %d connections" % (k, w, per))
    secret = os.urandom(32)
    codes = [derive_code(secret, j) for j in range(k)]
    slots = [Slot(code, "B%d" % j) for j, code in enumerate(codes)]
    time.sleep(0)
    res = {"ttfb_s": [], "attempt_failures": [], "connection_failures": 0, "attempts": 0}
    lock = threading.Lock()

    def worker(wid):
        rnd = random.Random(wid)
        for _ in range(per):
            order = codes[:]
            rnd.shuffle(order)
            t0 = time.monotonic()
            ok = False
            for code in order:
                with lock:
                    res["attempts"] += 1
                try:
                    _, s, c = client_once(code, timeout=10)
                    t_first = time.monotonic()
                    client_close(s, c)
                    ok = True
                    break
                except Exception as e:
                    with lock:
                        res["attempt_failures"].append(str(e)[:120])
            with lock:
                if ok:
                    res["ttfb_s"].append(t_first - t0)
                else:
                    res["connection_failures"] += 1

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(w)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(900)
    for s in slots:
        s.close()
    res["ttfb_incl_retries"] = summary(res.pop("ttfb_s"))
    res["slot_events"] = [e[:120] for s in slots for e in s.events]
    res["fowld_errors"] = stderr_errors()
    R["b"] = res
    say(json.dumps(res, indent=1))


def client_chosen(code):
    """The chosen design's connect sequence for one slot: bounded waits, a peer
    that is not a listener detected, the first-connection race retried once."""
    t0 = time.monotonic()
    c = new_fowld("client")
    try:
        c.wait(["welcome"], 30)
        c.send(kind="set-code", code=code)
        c.send(kind="local", name="annex", bind_interface="127.0.0.1")
        port, end = None, time.monotonic() + 5
        while port is None:
            left = end - time.monotonic()
            m = c.wait(["peer-connected", "listening"], max(left, 0.01))
            if m["kind"] == "peer-connected":
                # A listener's `remote` makes our `listening` follow at once;
                # none within 2 s: the peer is another client with our code.
                end = m["_t"] + 2
            else:
                port = m["listening_port"]
        for attempt in (1, 2):
            s = client_connect(port, 20)
            try:
                echo(s)
                return time.monotonic() - t0, s, c, attempt
            except EOFError:
                s.close()
                if attempt == 2:
                    raise
    except Exception:
        gentle_close(c)
        raise


def design_b2():
    """The chosen design: K = 8 slots, 4 clients at once, client_chosen(), slots
    closed gently and re-armed."""
    k, w, per = 8, 4, max(1, ARGS.n // 10)
    say("== design b2 (chosen): %d slots, %d concurrent clients x %d connections" % (k, w, per))
    secret = os.urandom(32)
    codes = [derive_code(secret, j) for j in range(k)]
    slots = [Slot(code, "K%d" % j, gentle=True) for j, code in enumerate(codes)]
    res = {"ttfb_s": [], "attempt_failures": [], "connection_failures": [], "attempts": 0,
           "race_retries": 0, "close_s": []}
    lock = threading.Lock()

    def worker(wid):
        rnd = random.Random(1000 + wid)
        for _ in range(per):
            order = codes[:]
            rnd.shuffle(order)
            t0 = time.monotonic()
            err = None
            for code in order:
                with lock:
                    res["attempts"] += 1
                try:
                    _, s, c, attempt = client_chosen(code)
                    t_first = time.monotonic()
                    if attempt == 2:
                        with lock:
                            res["race_retries"] += 1
                    if ARGS.mib and wid == 0 and not res.get("upload_s"):
                        res["upload_s"] = upload(s, ARGS.mib << 20)
                        res["download_s"] = download(s, ARGS.mib << 20)
                    t_close = time.monotonic()
                    client_close(s, c)
                    with lock:
                        res["close_s"].append(time.monotonic() - t_close)
                    err = None
                    break
                except Exception as e:
                    err = str(e)[:120] or type(e).__name__
                    with lock:
                        res["attempt_failures"].append(err)
            with lock:
                if err is None:
                    res["ttfb_s"].append(t_first - t0)
                else:
                    res["connection_failures"].append(err)

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(w)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(900)
    res["rss_waiting_slots_kib"] = sum(s.waiting.rss() for s in slots if s.waiting)
    for s in slots:
        s.close()
    res["ttfb_incl_retries"] = summary(res.pop("ttfb_s"))
    res["client_close"] = summary(res.pop("close_s"))
    res["slot_events"] = [e[:120] for s in slots for e in s.events]
    res["fowld_errors"] = stderr_errors()
    R["b2"] = res
    say(json.dumps(res, indent=1))


def design_c():
    """One persistent dilated wormhole per peer; a subchannel per connection."""
    say("== design c: persistent wormhole, %d connections in a row" % ARGS.n)
    res = {"failures": [], "ttfb_s": []}

    def pair(tag):
        code = derive_code(os.urandom(32), 0)
        srv, cli = new_fowld(tag + "s"), new_fowld(tag + "c")
        srv.wait(["welcome"], 30)
        cli.wait(["welcome"], 30)
        srv.send(kind="set-code", code=code)
        srv.send(kind="remote", name="annex", local_connect_port=APP)
        cli.send(kind="set-code", code=code)
        cli.send(kind="local", name="annex", bind_interface="127.0.0.1")
        return srv, cli, cli.wait(["listening"], 30)["listening_port"]

    t0 = time.monotonic()
    srv, cli, port = pair("C")
    res["setup_to_listening_s"] = time.monotonic() - t0
    for i in range(ARGS.n):
        t = time.monotonic()
        try:
            s = client_connect(port, 20)
            echo(s)
            res["ttfb_s"].append(time.monotonic() - t)
            if "rtt_in_stream_s" not in res:
                res["rtt_in_stream_s"] = summary(rtts(s, 20))
            s.close()
        except Exception as e:
            res["failures"].append("%d: %s" % (i, e))
            if len(res["failures"]) > 5:
                break
    res["ttfb"] = summary(res.pop("ttfb_s"))
    if ARGS.mib:
        n = ARGS.mib << 20
        try:
            s = client_connect(port, 60)
            res["upload_64MiB_s"] = upload(s, n)
            res["download_64MiB_s"] = download(s, n)
            s.close()
        except Exception as e:
            res["failures"].append("64MiB: %s" % e)
    res["rss_kib"] = {"serving_fowld": srv.rss(), "connecting_fowld": cli.rss()}
    res["fowld_errors_sequential"] = stderr_errors()
    # A dead peer: SIGKILL the serving fowld, then a new connection.
    srv.kill()
    t = time.monotonic()
    try:
        s = client_connect(port, 15)
        s.settimeout(15)
        echo(s)
        res["after_peer_killed"] = "echo worked?!"
    except Exception as e:
        res["after_peer_killed"] = "%s after %.1f s" % (e or type(e).__name__, time.monotonic() - t)
    res["connecting_fowld_alive_after_peer_killed"] = cli.p.poll() is None
    res["connecting_fowld_saw"] = [m["kind"] for m in cli.drain_kinds()][-4:]
    cli.kill()
    srv, cli, port = pair("C2")
    # Several bulk streams at once (git-annex runs -J jobs): --streams, U up, D down.
    n = 16 << 20
    kinds = ARGS.streams
    out = {}

    def bulk(j):
        try:
            s = client_connect(port, 60)
            s.settimeout(60)
            out[j] = round(upload(s, n) if kinds[j] == "U" else download(s, n), 3)
            s.close()
        except Exception as e:
            out[j] = "FAILED: %s" % e

    ts = [threading.Thread(target=bulk, args=(j,), daemon=True) for j in range(len(kinds))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    res["concurrent_16MiB_streams"] = {"%d%s" % (j, kinds[j]): out.get(j, "FAILED: no result within 120 s")
                                       for j in range(len(kinds))}
    # After that, does a fresh connection still work?
    try:
        s = client_connect(port, 20)
        echo(s)
        s.close()
        res["after_concurrent"] = "ok"
    except Exception as e:
        res["after_concurrent"] = "FAILED: %s" % e
    srv.kill()
    cli.kill()
    res["fowld_errors_concurrent"] = stderr_errors()
    R["c"] = res
    say(json.dumps(res, indent=1))


def nameplates():
    """Crowded, stale and wrong-password nameplates, each observed for a bounded time."""
    say("== nameplates")
    res = {}
    secret = os.urandom(32)

    def arm(code, tag):
        f = new_fowld(tag)
        f.wait(["welcome"], 30)
        f.send(kind="set-code", code=code)
        f.send(kind="remote", name="annex", local_connect_port=APP)
        f.wait(["code-allocated"], 30)
        return f

    def attempt(code, key, timeout=20):
        t = time.monotonic()
        try:
            _, s, c = client_once(code, timeout)
            client_close(s, c)
            return "connected after %.2f s" % (time.monotonic() - t)
        except Exception as e:
            return "%s after %.1f s" % (e, time.monotonic() - t)

    # Two correct joiners at once.
    code = derive_code(secret, 1)
    lst = arm(code, "crowd-listener")
    out = {}
    ts = [threading.Thread(target=lambda j=j: out.__setitem__(j, attempt(code, j)), daemon=True)
          for j in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(40)
    res["two_joiners_at_once"] = out
    lst.kill()
    # Stale: the waiting side dies (SIGKILL), a fresh one waits on the same code.
    code = derive_code(secret, 2)
    arm(code, "stale-old").kill()
    new = arm(code, "stale-new")
    res["stale_claim_then_rearm"] = attempt(code, "stale")
    res["stale_new_listener_saw"] = [m.get("message") or m["kind"] for m in new.drain_kinds()][-4:]
    new.kill()
    # Stale, waited for: does the claim clear within 60 s?
    time.sleep(60)
    new2 = arm(code, "stale-new2")
    res["stale_after_60s"] = attempt(code, "stale2")
    new2.kill()
    # Clean release: SIGTERM the waiting side, re-arm.
    code = derive_code(secret, 3)
    f = arm(code, "term-old")
    f.kill(signal.SIGTERM)
    new = arm(code, "term-new")
    res["sigterm_then_rearm"] = attempt(code, "term")
    new.kill()
    # Right nameplate, wrong password.
    code = derive_code(secret, 4)
    lst = arm(code, "wrongpw-listener")
    res["wrong_password_joiner"] = attempt(code.split("-")[0] + "-00000000", "wrong")
    try:
        lst.wait(["peer-connected"], 5)
        res["wrong_password_listener"] = "still waiting"
    except FowlError as e:
        res["wrong_password_listener"] = str(e)[:160]
    res["wrong_password_listener_alive"] = lst.p.poll() is None
    lst.kill()
    R["nameplates"] = res
    say(json.dumps(res, indent=1))


def main():
    global LOG, ARGS, URL, APP
    ap = argparse.ArgumentParser()
    ap.add_argument("venv")
    ap.add_argument("out")
    ap.add_argument("--designs", default="c,a,b,b2,nameplates")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--streams", default="UDUD", help="design c: concurrent 16 MiB streams, U up D down")
    ap.add_argument("--nodelay", action="store_true", help="fowld with TCP_NODELAY patched in")
    ARGS = ap.parse_args()
    ARGS.out = os.path.abspath(ARGS.out)
    ARGS.venv = os.path.abspath(ARGS.venv)
    check_isolated()
    os.makedirs(ARGS.out, exist_ok=True)
    LOG = open(os.path.join(ARGS.out, "fowld.log"), "a", buffering=1)
    port = free_port()
    URL = "ws://127.0.0.1:%d/v1" % port
    R["nodelay"] = ARGS.nodelay
    try:
        mb = start_mailbox(ARGS.venv, ARGS.out, port)
        APP, _stats = start_app()
        f = new_fowld("probe")
        t = time.monotonic()
        f.wait(["welcome"], 30)
        R["spawn_to_welcome_s"] = round(time.monotonic() - f.t0, 3)
        f.kill()
        del t
        for d in ARGS.designs.split(","):
            {"a": design_a, "b": design_b, "b2": design_b2, "c": design_c, "nameplates": nameplates}[d]()
        R["rss_mailbox_kib"] = __import__("fowllib").rss_kib(mb.pid)
    finally:
        Reaper.close_all()
        with open(os.path.join(ARGS.out, "results.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)
    say("results in %s/results.json" % ARGS.out)


if __name__ == "__main__":
    main()
