#!/bin/sh
# Rerun the fowl study (doc/networks/fowl.md): install fowl and the mailbox
# server from PyPI into target/fowl-venv (install-venv.sh, once), make a
# network namespace with loopback only (fowl dials the public transit relay
# by itself: nothing may leave), run fowlstudy.py in it, delete the
# namespace. Needs root.
# Usage: tests/tools/fowl/run-study.sh [OUTDIR] [fowlstudy.py options]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
venv=${FOWL_VENV:-$top/target/fowl-venv}
out=${1:-$top/target/fowl-study}
[ $# -gt 0 ] && shift
"$here/install-venv.sh" "$venv" >/dev/null
"$venv/bin/pip" freeze | grep -iE '^(fowl|magic-wormhole|twisted|autobahn)' || true
ns=p2pannex-fowl-$$
ip netns add "$ns"
trap 'ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; ip netns del "$ns"' EXIT INT TERM
ip -n "$ns" link set lo up
# Only loopback: no interface but lo, no route that leaves it.
if ip -n "$ns" -o link show | grep -v ': lo:' | grep -q .; then
	echo "run-study: namespace has an interface other than lo" >&2; exit 1
fi
if ip -n "$ns" route show table all | grep -v ' dev lo ' | grep -q .; then
	echo "run-study: namespace has a route other than via lo" >&2; exit 1
fi
mkdir -p "$out"
timeout 1800 ip netns exec "$ns" python3 "$here/fowlstudy.py" "$venv" "$out" "$@"
