#!/usr/bin/env python3
"""For each DIR/trial-N.strace written by `repro-connectdone-race.sh --strace
DIR`: how many bytes remotedaemon read from the relayed git service's stdout
(its 65536-byte reads) and how many it sent to the peer as DATA before its
first CONNECTDONE. A hung fetch or failed push shows bytes read but never
sent.

usage: repro-connectdone-strace.py DIR
"""
import glob
import re
import sys


def calls(lines):
    """(pid, call text) with strace's unfinished/resumed halves joined."""
    pending = {}
    for line in lines:
        m = re.match(r"(\d+)\s+\S+ (.*)", line)
        if not m:
            continue
        pid, rest = m.groups()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")]
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        yield pid, rest


def service(cs, name):
    start = next((k for k, (_, c) in enumerate(cs) if f"CONNECT git-{name}" in c), None)
    if start is None:
        return f"{name}: not run"
    peer = re.search(r"read\((\d+),", cs[start][1]).group(1)
    done = next(
        (k for k in range(start, len(cs)) if cs[k][1].startswith(f'write({peer}, "CONNECTDONE')),
        None,
    )
    if done is None:
        return f"{name}: no CONNECTDONE"
    read = sent = 0
    # The service's last bytes may be read just after CONNECTDONE went out.
    for _, c in cs[start : done + 8]:
        m = re.match(r"read\((\d+), .*, 65536\) = (\d+)", c)
        if m and m.group(1) != peer:
            read += int(m.group(2))
    for _, c in cs[start:done]:
        m = re.match(rf'write\({peer}, "DATA (\d+)\\n"', c)
        if m:
            sent += int(m.group(1))
    return f"{name}: read {read} B, sent {sent} B before CONNECTDONE, lost {read - sent} B"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    files = glob.glob(sys.argv[1] + "/trial-*.strace")
    for f in sorted(files, key=lambda x: int(re.findall(r"(\d+)\.strace$", x)[0])):
        with open(f, errors="replace") as fh:
            cs = list(calls(fh.read().splitlines()))
        trial = re.findall(r"(trial-\d+)", f)[0]
        print(f"{trial}: {service(cs, 'upload-pack')}; {service(cs, 'receive-pack')}")


main()
