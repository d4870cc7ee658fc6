#!/bin/sh
# `git annex sync --content` between two repositories over fowl (the prototype
# helper proto-helper.py, design b2 of doc/networks/fowl.md), offline: a fresh
# namespace with loopback only, a local mailbox, A serving with
# `git-annex remotedaemon --foreground` (with the CONNECTDONE workaround of
# doc/upstream/connectdone-race.md), B linked; B syncs with content (gets A's
# MIB MiB file, sends its own 1 MiB file), sha256 and fsck checked; timings
# and the peak total RSS of the fowld processes printed (sync-inner.sh).
# Needs root, git-annex on PATH, target/fowl-venv (install-venv.sh makes it).
# Usage: run-sync.sh [MIB]   (default 64)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
venv=${FOWL_VENV:-$top/target/fowl-venv}
mib=${1:-64}
case $mib in '' | *[!0-9]*) echo "run-sync: MIB must be a number" >&2; exit 2 ;; esac
"$here/install-venv.sh" "$venv" >/dev/null
command -v git-annex >/dev/null || { echo "run-sync: git-annex is not on PATH" >&2; exit 1; }
ns=p2pannex-fowlsync-$$
work=$(mktemp -d /tmp/fowl-sync.XXXXXX)
ip netns add "$ns"
trap 'ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; ip netns del "$ns"; rm -rf "$work"' EXIT INT TERM
ip -n "$ns" link set lo up
if ip -n "$ns" route show table all | grep -v ' dev lo ' | grep -q .; then
	echo "run-sync: namespace has a route other than via lo" >&2; exit 1
fi
export FOWL_VENV="$venv" FOWL_PROTO_LOG="$work/fowld.log" FOWL_MAILBOX=ws://127.0.0.1:4000/v1
rc=0
timeout 1200 ip netns exec "$ns" sh "$here/sync-inner.sh" "$here" "$work" "$mib" || rc=$?
echo "fowld unhandled errors: $(grep -c 'Unhandled Error' "$work/fowld.log" || true)"
exit $rc
