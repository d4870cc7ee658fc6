#!/bin/sh
# Real git-annex over fowl (the prototype helper, design b2): in a fresh
# loopback-only namespace, a local mailbox, then tests/tools/repro-connectdone-race.sh
# with --helper fowl=proto-helper.py (fresh repository pair per trial: link,
# git fetch, git push). Needs root, git-annex on PATH, target/fowl-venv
# (run-study.sh makes it). Usage: run-annex.sh [TRIALS] [repro options]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
venv=${FOWL_VENV:-$top/target/fowl-venv}
"$here/install-venv.sh" "$venv" >/dev/null
command -v git-annex >/dev/null || { echo "run-annex: git-annex is not on PATH" >&2; exit 1; }
ns=p2pannex-fowlannex-$$
work=$(mktemp -d /tmp/fowl-annex.XXXXXX)
ip netns add "$ns"
trap 'ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; ip netns del "$ns"; rm -rf "$work"' EXIT INT TERM
ip -n "$ns" link set lo up
if ip -n "$ns" route show table all | grep -v ' dev lo ' | grep -q .; then
	echo "run-annex: namespace has a route other than via lo" >&2; exit 1
fi
# shellcheck disable=SC2016 # expanded by the inner shell
FOWL_VENV=$venv FOWL_PROTO_LOG=$work/fowld.log FOWL_MAILBOX=ws://127.0.0.1:4000/v1 \
	timeout 1200 ip netns exec "$ns" sh -c '
	"$FOWL_VENV/bin/twistd" -n --pidfile= wormhole-mailbox --port tcp:4000:interface=127.0.0.1 \
		--channel-db="$1/relay.sqlite" >"$1/mailbox.log" 2>&1 &
	mb=$!
	i=0; until python3 -c "import socket; socket.create_connection((\"127.0.0.1\", 4000), 1)" 2>/dev/null; do
		i=$((i + 1)); [ $i -lt 100 ] || { echo "run-annex: no mailbox" >&2; kill $mb; exit 1; }; sleep 0.2; done
	export FOWL_VENV FOWL_PROTO_LOG FOWL_MAILBOX
	shift
	"$0"/../repro-connectdone-race.sh --helper fowl="$0"/proto-helper.py "$@"
	rc=$?
	kill $mb
	exit $rc' "$here" "$work" "$@"
echo "fowld unhandled errors: $(grep -c 'Unhandled Error' "$work/fowld.log" || true)"
