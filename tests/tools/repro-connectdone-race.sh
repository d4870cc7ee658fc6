#!/bin/sh
# Reproduce git-annex's CONNECTDONE race (serving side, P2P/IO.hs
# runRelayService): a first `git fetch` through a P2P remote hangs, or a
# `git push` fails with "send-pack: unexpected disconnect while reading
# sideband packet", because the end of the relayed upload-pack/receive-pack
# is sent before the last of its output.
#
# Needs only git-annex (with the generic P2P transport, 10.20250828 or
# later), git and socat. The network is git-annex's own demo helper
# (doc/special_remotes/p2p/git-annex-p2p-unix-sockets) with /tmp replaced
# by a private directory. Each trial uses fresh repositories: A serves
# (`git-annex remotedaemon --foreground`), B links to it, then
# `git fetch A` (under a timeout: a hang) and `git push A` (exit status).
#
# usage: repro-connectdone-race.sh [options] [TRIALS]   (default 30)
#   --workaround        put a `git` wrapper first on the serving
#                       remotedaemon's PATH that makes upload-pack and
#                       receive-pack exit DELAY seconds late (default 0.3)
#   --delay SECONDS     the wrapper's delay
#   --path-first DIR    put DIR first on the serving remotedaemon's PATH
#                       (another git wrapper to compare)
#   --helper NET=PROG   use the P2P helper PROG as network NET instead of
#                       the demo one; --config KEY=VALUE (may repeat) sets
#                       git config in the serving repository before
#                       `git annex p2p --enable NET`
#   --timeout SECONDS   how long a fetch may take before it counts as hung
#                       (default 20)
#   --max-seconds N     stop starting trials after N seconds (default: none)
#   -v                  one line per trial
# Prints the rates; exits 0 unless the setup itself failed.
set -eu

trials=30 workaround=no delay=0.3 path_first= helper= net=demo timeout=20
max_seconds=0 verbose=no configs=
while [ $# -gt 0 ]; do
	case $1 in
	--workaround) workaround=yes ;;
	--delay) delay=$2; shift ;;
	--path-first) path_first=$(cd "$2" && pwd); shift ;;
	--helper) net=${2%%=*}; helper=${2#*=}; shift ;;
	--config) configs="$configs
$2"; shift ;;
	--timeout) timeout=$2; shift ;;
	--max-seconds) max_seconds=$2; shift ;;
	-v) verbose=yes ;;
	-h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "repro: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) trials=$1 ;;
	esac
	shift
done
case $trials in '' | *[!0-9]*) echo "repro: TRIALS must be a number" >&2; exit 2 ;; esac

for tool in git git-annex socat timeout; do
	command -v $tool >/dev/null 2>&1 || { echo "repro: $tool is not on PATH" >&2; exit 1; }
done
[ -z "$helper" ] || helper=$(cd "$(dirname "$helper")" && pwd)/$(basename "$helper")

work=$(mktemp -d "${TMPDIR:-/tmp}/connectdone-race.XXXXXX")
work=$(cd "$work" && pwd -P)
daemon=

# Everything whose working directory is ours (remotedaemon, helpers, git);
# run it as $(cd / && ours), so the subshell does not find itself.
ours() {
	for p in /proc/[0-9]*; do
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		case $cwd in "$work" | "$work"/*) [ "${p#/proc/}" != $$ ] && echo "${p#/proc/}" ;; esac
	done
	return 0
}
stop_all() {
	[ -z "$daemon" ] || kill "$daemon" 2>/dev/null || true
	pids=$(cd / && ours)
	# shellcheck disable=SC2086 # a list of pids
	[ -z "$pids" ] || kill $pids 2>/dev/null || true
	daemon=
	return 0
}
cleanup() {
	cd /
	stop_all
	sleep 0.2
	pids=$(ours)
	# shellcheck disable=SC2086
	[ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$work/bin" "$work/net" "$work/home" "$work/wrap"
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 P2P_DEMO_DIR="$work/net"
git config --global user.name repro
git config --global user.email repro@example.invalid
git config --global init.defaultBranch main

if [ -z "$helper" ]; then
	# git-annex's demo helper, /tmp replaced by $P2P_DEMO_DIR.
	cat >"$work/bin/git-annex-p2p-demo" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = address ]; then
	date +%s%N
elif [ -z "$2" ]; then
	exec socat - UNIX-CONNECT:"$P2P_DEMO_DIR/$1"
else
	ln -sf "$(realpath "$2")" "$P2P_DEMO_DIR/$1"
fi
EOF
	chmod +x "$work/bin/git-annex-p2p-demo"
else
	ln -s "$helper" "$work/bin/git-annex-p2p-$net"
fi
export PATH="$work/bin:$PATH"

if [ "$workaround" = yes ]; then
	# The workaround: upload-pack and receive-pack exit late, once
	# git-annex has relayed their output.
	real_git=$(command -v git)
	cat >"$work/wrap/git" <<EOF
#!/bin/sh
for a in "\$@"; do
	case \$a in -*) continue ;; esac
	case \$a in upload-pack | receive-pack)
		"$real_git" "\$@"; rc=\$?; sleep $delay; exit \$rc ;;
	esac
	break
done
exec "$real_git" "\$@"
EOF
	chmod +x "$work/wrap/git"
	path_first="$work/wrap"
fi

# Template repositories; each trial works on fresh copies.
mkdir "$work/tA" "$work/tB"
(cd "$work/tA" && git init -q && git annex init -q A &&
	for i in 1 2 3 4 5 6 7 8; do head -c 3000 /dev/urandom | od -x >"f$i.txt"; done &&
	head -c 100000 /dev/urandom >big.bin && git annex add -q big.bin &&
	git add f*.txt && git commit -q -m "A's files")
(cd "$work/tB" && git init -q && git annex init -q B)

hung=0 pushfail=0 done_trials=0 other=0 fetch_ms=0 push_ms=0
now_ms() { date +%s%3N; }
start=$(date +%s)
t=0
while [ $t -lt "$trials" ]; do
	t=$((t + 1))
	if [ "$max_seconds" -gt 0 ] && [ $(($(date +%s) - start)) -ge "$max_seconds" ]; then
		echo "repro: stopped after $((t - 1)) trials (--max-seconds $max_seconds)"
		break
	fi
	rm -rf "$work/A" "$work/B" "$work/net"/*
	cp -a "$work/tA" "$work/A"
	cp -a "$work/tB" "$work/B"
	cd "$work/A"
	printf '%s\n' "$configs" | while IFS= read -r kv; do
		if [ -n "$kv" ]; then git config "${kv%%=*}" "${kv#*=}"; fi
	done
	git annex p2p --enable "$net" >/dev/null
	# remotedaemon serves while its stdin stays open.
	mkfifo "$work/hold"
	PATH="${path_first:+$path_first:}$PATH" git-annex remotedaemon --foreground \
		<"$work/hold" >"$work/daemon.log" 2>&1 &
	daemon=$!
	exec 9>"$work/hold"
	rm -f "$work/hold"
	addr=$(git annex p2p --gen-addresses 2>/dev/null | grep "^p2p-annex::$net:")
	cd "$work/B"
	tries=0
	until echo "$addr" | git annex p2p --link --name A >/dev/null 2>&1; do
		tries=$((tries + 1))
		[ $tries -lt 100 ] || { echo "repro: could not link to A (see $work/daemon.log)" >&2; cat "$work/daemon.log" >&2; exit 1; }
		sleep 0.1
	done
	t0=$(now_ms)
	frc=0
	timeout "$timeout" git fetch -q A 2>"$work/fetch.err" || frc=$?
	t1=$(now_ms)
	echo "from B $t" >"b$t.txt" && git add "b$t.txt" && git commit -q -m "B $t"
	prc=0
	t2=$(now_ms)
	timeout "$timeout" git push -q A main:refs/heads/from-b 2>"$work/push.err" || prc=$?
	t3=$(now_ms)
	result=ok
	if [ $frc -eq 124 ]; then
		hung=$((hung + 1)); result="fetch hung"
	elif [ $frc -ne 0 ]; then
		other=$((other + 1)); result="fetch failed ($frc): $(tail -n1 "$work/fetch.err")"
	else
		fetch_ms=$((fetch_ms + t1 - t0))
	fi
	if [ $prc -ne 0 ]; then
		pushfail=$((pushfail + 1)); result="$result; push failed ($prc): $(grep -m1 -E "unexpected|fatal" "$work/push.err" || tail -n1 "$work/push.err")"
	else
		push_ms=$((push_ms + t3 - t2))
	fi
	done_trials=$t
	[ "$verbose" = yes ] && echo "trial $t: $result"
	exec 9>&-
	stop_all
	wait 2>/dev/null || true
	cd "$work"
done

ok_f=$((done_trials - hung - other))
ok_p=$((done_trials - pushfail))
echo "git-annex $(git-annex version --raw), network $net${path_first:+, remotedaemon PATH starts with ${path_first}}$([ "$workaround" = yes ] && echo " (delay ${delay}s)")"
echo "trials: $done_trials  fetch hung: $hung  fetch failed: $other  push failed: $pushfail"
[ $ok_f -gt 0 ] && echo "mean good fetch: $((fetch_ms / ok_f)) ms"
[ $ok_p -gt 0 ] && echo "mean good push: $((push_ms / ok_p)) ms"
exit 0
