#!/usr/bin/env python3
"""Small helpers for tests/bench/bench.sh: generator, sink, resource usage,
start-up timing, idle connections and the results table.

Python only where timing or process accounting needs it; the flow of the
benchmark lives in bench.sh. Standard library only.

    benchtool.py gen SIZE [--unix PATH|--tcp PORT]  SIZE bytes to stdout (or a socket)
    benchtool.py sink PATH|tcp:PORTFILE RESULTS     count bytes of each connection
    benchtool.py hold PATH COUNTFILE          accept on PATH, hold connections open
    benchtool.py rusage OUT -- CMD...         run CMD, write its CPU seconds and max RSS
    benchtool.py cpu PID                      utime+stime+cutime+cstime of PID, seconds
    benchtool.py mem PID...                   summed VmRSS and Pss (KiB) of the PIDs
    benchtool.py descendants PID              PID and every process under it
    benchtool.py size SIZE                    SIZE (4G, 512M, ...) in bytes
    benchtool.py freeport                     a free TCP port on 127.0.0.1
    benchtool.py waitlisten PORT              wait until something listens on PORT
    benchtool.py closer PORTFILE              TCP server that closes each connection at once
    benchtool.py startup N RESULTS NAME=CMD...  time N runs of each command, alternately
    benchtool.py idle PORT N COUNTFILE STOPFILE  open N idle connections, hold them
    benchtool.py report RESULTS               the markdown tables of RESULTS
"""

import os
import socket
import statistics
import subprocess
import sys
import threading
import time

CHUNK = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def die(msg):
    sys.stderr.write("benchtool: %s\n" % msg)
    sys.exit(1)


def pattern():
    """1 MiB of non-zero bytes (not zeros: nothing on the way may treat
    zero pages specially)."""
    seed = bytes(range(1, 256))
    return (seed * (CHUNK // len(seed) + 1))[:CHUNK]


def gen(args):
    size = parse_size(args[0])
    if len(args) == 3 and args[1] == "--unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args[2])
        fd = sock.fileno()
    elif len(args) == 3 and args[1] == "--tcp":
        sock = socket.create_connection(("127.0.0.1", int(args[2])))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
    elif len(args) == 1:
        sock = None
        fd = 1
    else:
        die("usage: gen SIZE [--unix PATH | --tcp PORT]")
    buf = memoryview(pattern())
    left = size
    while left > 0:
        n = os.write(fd, buf[: min(left, CHUNK)])
        left -= n
    if sock is not None:
        sock.shutdown(socket.SHUT_WR)
        # Wait for the sink to close: the transfer is over when it says so.
        while sock.recv(4096):
            pass
        sock.close()


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1:].upper() in units:
        return int(s[:-1]) * units[s[-1:].upper()]
    return int(s)


def size(args):
    print(parse_size(args[0]))


def unix_listener(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(512)
    return srv


def tcp_listener(portfile):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % srv.getsockname()[1])
    os.rename(portfile + ".tmp", portfile)
    return srv


def sink(args):
    """One connection at a time: read to EOF, count, close, append
    `bytes seconds` (accept to EOF) to RESULTS. PATH is a unix socket, or
    tcp:PORTFILE for a TCP sink on 127.0.0.1 (its port written there)."""
    if len(args) != 2:
        die("usage: sink PATH|tcp:PORTFILE RESULTS")
    if args[0].startswith("tcp:"):
        srv = tcp_listener(args[0][4:])
    else:
        srv = unix_listener(args[0])
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    while True:
        conn, _ = srv.accept()
        start = time.perf_counter()
        total = 0
        while True:
            n = conn.recv_into(view)
            if n == 0:
                break
            total += n
        secs = time.perf_counter() - start
        conn.close()
        with open(args[1], "a") as f:
            f.write("%d %.6f\n" % (total, secs))


def hold(args):
    """Accept any number of connections and keep them open; COUNTFILE holds
    how many were accepted so far."""
    if len(args) != 2:
        die("usage: hold PATH COUNTFILE")
    srv = unix_listener(args[0])
    conns = []
    while True:
        conn, _ = srv.accept()
        conns.append(conn)
        tmp = args[1] + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % len(conns))
        os.rename(tmp, args[1])


def rusage(args):
    """Run a command with inherited stdio; write `user+sys seconds` and its
    max RSS in KiB (its own and that of the children it waited for)."""
    if len(args) < 3 or args[1] != "--":
        die("usage: rusage OUT -- CMD...")
    out, cmd = args[0], args[2:]
    proc = subprocess.Popen(cmd)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped by wait4 above
    with open(out, "w") as f:
        f.write("%.3f %d\n" % (ru.ru_utime + ru.ru_stime, ru.ru_maxrss))
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


def cpu_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" field 3 (state) is index 0: utime is field 14.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def cpu(args):
    print("%.3f" % cpu_of(int(args[0])))


def status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, PermissionError):
        pass
    return 0


def mem(args):
    pids = [int(p) for p in args]
    rss = sum(status_kib(p, "VmRSS") for p in pids)
    pss = sum(pss_kib(p) for p in pids)
    print("%d %d %d" % (rss, pss, len(pids)))


def children_of(pid):
    out = []
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def descendants(args):
    todo, seen = [int(args[0])], []
    while todo:
        p = todo.pop()
        seen.append(p)
        try:
            todo += children_of(p)
        except FileNotFoundError:
            pass
    print(" ".join(str(p) for p in seen))


def freeport(_args):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def listening(port):
    """From /proc/net/tcp{,6}: no connection is made (a probe connection
    would reach the sink through a socat listener)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state = parts[1], parts[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def waitlisten(args):
    port = int(args[0])
    deadline = time.monotonic() + 30
    while not listening(port):
        if time.monotonic() > deadline:
            die("nothing listens on port %d after 30 s" % port)
        time.sleep(0.01)


def closer(args):
    """Accept and close at once: the peer of the start-up benchmark."""
    srv = tcp_listener(args[0])
    while True:
        conn, _ = srv.accept()
        conn.close()


def startup(args):
    """Wall time from spawn to exit of each NAME=CMD (run by /bin/sh -c
    only to split it: `exec` keeps that shell out of the timing), N times,
    alternately; appends `startup NAME wall_ms VALUE` lines to RESULTS."""
    n, results = int(args[0]), args[1]
    cmds = []
    for spec in args[2:]:
        name, cmd = spec.split("=", 1)
        cmds.append((name, cmd.split()))
    devnull = os.open(os.devnull, os.O_RDWR)
    rows = []
    for _ in range(n):
        for name, cmd in cmds:
            start = time.perf_counter()
            code = subprocess.call(cmd, stdin=devnull, stdout=devnull)
            ms = (time.perf_counter() - start) * 1000
            if code != 0:
                die("%s exited %d" % (" ".join(cmd), code))
            rows.append("startup\t%s\twall_ms\t%.3f\n" % (name, ms))
    with open(results, "a") as f:
        f.writelines(rows)


def idle(args):
    """Open N connections to 127.0.0.1:PORT, each sending one short line
    (as git-annex's AUTH would), wait until the unix side counted them
    (COUNTFILE from `hold`), print ready, and hold them until STOPFILE
    exists."""
    port, n, countfile, stopfile = int(args[0]), int(args[1]), args[2], args[3]
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for c in conns:
        c.sendall(b"AUTH 00000000-0000-0000-0000-000000000000 token\n")
    wait_for(lambda: count_in(countfile) >= n, "the listener to pass %d connections on" % n)
    print("ready", flush=True)
    wait_for(lambda: os.path.exists(stopfile), "the stop file")
    for c in conns:
        c.close()


def count_in(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def wait_for(cond, what, secs=60):
    deadline = time.monotonic() + secs
    while not cond():
        if time.monotonic() > deadline:
            die("gave up waiting for %s after %d s" % (what, secs))
        time.sleep(0.01)


# --------------------------------------------------------------------------
# The report

TITLES = {
    "size": "Binary size",
    "startup": "Connect-mode start-up (connect to a listener that closes at once)",
    "memory": "Memory of the listener",
    "chain": "Chain throughput",
    "small": "git annex get of small files",
    "big": "git annex get of one big file",
}

# Rows in this order; ratios are printed for `ours` against the anchors.
ORDER = ["ours", "ours-static", "ours-rw", "ours-before", "socat", "socat-nodelay",
         "unix-sockets", "none", "tcp-only"]
ANCHORS = ["socat", "socat-nodelay", "none", "tcp-only", "unix-sockets", "ours-rw", "ours-before"]


def order_key(variant):
    return ORDER.index(variant) if variant in ORDER else len(ORDER)


def report(args):
    """RESULTS lines are `bench variant metric value`; per bench, a table
    of medians (variants × metrics) and ours ÷ each anchor."""
    benches = {}
    with open(args[0]) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            bench, variant, metric, value = parts
            b = benches.setdefault(bench, {"metrics": [], "variants": [], "values": {}})
            if metric not in b["metrics"]:
                b["metrics"].append(metric)
            if variant not in b["variants"]:
                b["variants"].append(variant)
            b["values"].setdefault((variant, metric), []).append(float(value))
    out = []
    for bench, b in benches.items():
        metrics, values = b["metrics"], b["values"]
        variants = sorted(b["variants"], key=order_key)
        med = {k: statistics.median(v) for k, v in values.items()}
        runs = max(len(v) for v in values.values())
        out.append("\n### %s\n" % TITLES.get(bench, bench))
        out.append("Medians of %d run%s each." % (runs, "" if runs == 1 else "s"))
        out.append("")
        # The spread of the first metric, so noise is visible.
        first = metrics[0]
        spread = runs > 1
        head = metrics + (["%s min–max" % first] if spread else [])
        out.append("| variant | " + " | ".join(head) + " |")
        out.append("|---" * (len(head) + 1) + "|")
        for v in variants:
            cells = [fmt(med[(v, m)]) if (v, m) in med else "" for m in metrics]
            if spread:
                vals = values.get((v, first), [])
                cells.append("%s–%s" % (fmt(min(vals)), fmt(max(vals))) if vals else "")
            out.append("| %s | %s |" % (v, " | ".join(cells)))
        if "ours" in variants:
            for a in ANCHORS:
                if a not in variants:
                    continue
                cells = []
                for m in metrics:
                    o, x = med.get(("ours", m)), med.get((a, m))
                    cells.append("%.2f" % (o / x) if o is not None and x else "")
                if spread:
                    cells.append("")
                if any(cells):
                    out.append("| *ours ÷ %s* | %s |" % (a, " | ".join(cells)))
    print("\n".join(out))


def fmt(v):
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.3g" % v


COMMANDS = {
    "gen": gen,
    "size": size,
    "sink": sink,
    "hold": hold,
    "rusage": rusage,
    "cpu": cpu,
    "mem": mem,
    "descendants": descendants,
    "freeport": freeport,
    "waitlisten": waitlisten,
    "closer": closer,
    "startup": startup,
    "idle": idle,
    "report": report,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        die("usage: benchtool.py %s ARGS" % "|".join(COMMANDS))
    COMMANDS[sys.argv[1]](sys.argv[2:])
