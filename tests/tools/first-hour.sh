#!/bin/sh
# make first-hour: the README's steps, exactly, as a new user on a fresh
# Debian 12 machine takes them: a clone of this commit, `make`,
# `make install` and `make install-git-annex` into a prefix, then the Quick
# start with two repositories on loopback (A serves, B links and syncs
# both ways), `p2p-annex check` in both, and `make uninstall`. It runs with
# a fresh HOME and a PATH of the system's directories plus the prefix (and
# cargo, the one prerequisite the README names), so nothing the README does
# not install can help. Any failing step fails the script. Every step is
# bounded in time; every process it started is gone at the end.
#
# usage: tests/tools/first-hour.sh   (from the top of the source tree;
#        a commit: uncommitted changes are not in the clone)
set -eu

# How A serves: `serve` (p2p-annex serve, as the README's Quick start says:
# supervised, with the CONNECTDONE workaround; any failed sync fails the
# script) or `remotedaemon` (the README's "Without serve": git annex
# remotedaemon, and a sync repeated up to 3 times, as the README says).
SERVE=${FIRST_HOUR_SERVE:-serve}

die() {
	echo "first-hour.sh: FAIL: $*" >&2
	exit 1
}
[ -f Makefile ] && [ -f Cargo.toml ] || die "run it from the top of the source tree"
src=$(pwd)
started=$(date +%s)

# The Rust toolchain is the README's one prerequisite: keep the user's
# rustup and cargo homes (the crates cache included) and cargo on PATH.
cargo_bin=$(dirname "$(command -v cargo)") || die "cargo is missing (the README's prerequisite)"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-first-hour.XXXXXX")
work=$(cd "$work" && pwd -P)
serve_pid=

# Processes whose working directory is under $work: remotedaemon and the
# listeners it started, serve and its children, anything a step left.
ours() {
	for p in /proc/[0-9]*; do
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		case $cwd in "$work" | "$work"/*) [ "${p#/proc/}" != $$ ] && echo "${p#/proc/}" ;; esac
	done
	return 0
}
cleanup() {
	status=$?
	cd /
	[ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null
	pids=$(ours)
	# shellcheck disable=SC2086 # a list of pids
	[ -n "$pids" ] && kill $pids 2>/dev/null
	rm -rf "$work"
	exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step_no=0
step() {
	step_no=$((step_no + 1))
	printf '\n== %s. %s (%ss)\n' "$step_no" "$*" "$(($(date +%s) - started))"
}
# run SECONDS COMMAND...: the README's command, shown, bounded, and fatal.
run() {
	limit=$1
	shift
	printf '   $ %s\n' "$*"
	timeout "$limit" "$@" || die "'$*' failed or took more than $limit s (exit $?)"
}

# The fresh user: a new HOME, the system's PATH, no git config but their
# identity, nothing from the caller's environment but the toolchain.
prefix=$work/prefix
export HOME="$work/home" PATH="$prefix/bin:$cargo_bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export CARGO_HOME="$cargo_home" RUSTUP_HOME="$rustup_home" LC_ALL=C.UTF-8
unset MAGIC GIT_DIR GIT_WORK_TREE GIT_CONFIG_COUNT GIT_CONFIG_PARAMETERS \
	CARGO_TARGET_DIR CARGOFLAGS MAKEFLAGS MFLAGS MAKEOVERRIDES P2P_ANNEX_TEST_GIT_ANNEX 2>/dev/null || true
mkdir "$HOME"
git config --global user.name "first hour"
git config --global user.email first-hour@example.invalid
git config --global init.defaultBranch main

step "git clone (of $(git -C "$src" rev-parse --short HEAD))"
run 120 git clone -q "$src" "$work/p2p-annex"
cd "$work/p2p-annex"

step "Install: make"
run 1200 make -s
step "Install: make install PREFIX=$prefix"
run 60 make -s install PREFIX="$prefix"
command -v git-annex >/dev/null 2>&1 &&
	echo "   (a git-annex is on the system PATH already: $(command -v git-annex))"
step "Install: make install-git-annex PREFIX=$prefix (Debian 12's git-annex is too old)"
run 600 make -s install-git-annex PREFIX="$prefix"
for prog in p2p-annex git-annex-p2p-tcp git-annex git-annex-shell git-remote-p2p-annex; do
	where=$(command -v "$prog") || die "$prog is not on PATH after the README's install steps"
	echo "   $prog: $where"
done
run 30 git annex version --raw

# Two repositories as a user has them: A with files, B empty.
mkdir "$work/A" "$work/B"
cd "$work/A"
git init -q && git annex init -q A
echo "hello from A" >hello.txt
head -c 1048576 /dev/urandom >random.bin
git annex add -q hello.txt random.bin && git commit -q -m "two files"
cd "$work/B"
git init -q && git annex init -q B

step "Quick start, on A: enable tcp, serve, make an address"
cd "$work/A"
run 30 git config p2p-annex.tcp.address 127.0.0.1
run 60 git annex p2p --enable tcp
port=$(git config p2p-annex.tcp.port) || die "git annex p2p --enable tcp stored no p2p-annex.tcp.port"
case $SERVE in
serve)
	printf '   $ p2p-annex serve   (in a terminal of its own)\n'
	p2p-annex serve >"$work/serve.log" 2>&1 &
	serve_pid=$!
	;;
remotedaemon) run 60 git annex remotedaemon ;;
*) die "SERVE must be serve or remotedaemon" ;;
esac
# Ready when the listener answers: our connect mode exits 0 once a
# listener accepted and closed, 1 while the port is refused.
n=0
until p2p-annex tcp "127.0.0.1:$port" </dev/null >/dev/null 2>&1; do
	n=$((n + 1))
	[ $n -lt 300 ] || {
		[ -f "$work/serve.log" ] && cat "$work/serve.log" >&2
		die "no listener on 127.0.0.1:$port 30 s after starting $SERVE"
	}
	sleep 0.1
done
git annex p2p --gen-addresses >"$work/address" 2>/dev/null || die "git annex p2p --gen-addresses failed"
grep -q "^p2p-annex::tcp:127.0.0.1:$port:" "$work/address" ||
	die "git annex p2p --gen-addresses printed no tcp address for 127.0.0.1:$port"
printf '   $ git annex p2p --gen-addresses\n   %s\n' "$(sed 's/:[^:]*$/:<token>/' "$work/address")"
run 60 p2p-annex check

step "Quick start, on B: link, check, sync --content"
cd "$work/B"
printf '   $ git annex p2p --link --name peerA   (the line pasted)\n'
timeout 60 git annex p2p --link --name peerA <"$work/address" >/dev/null || die "git annex p2p --link failed"
run 60 p2p-annex check
# The README: with plain remotedaemon a first fetch sometimes hangs and a
# push sometimes fails (git-annex's CONNECTDONE race): interrupt and repeat.
sync_tries=0
sync() {
	printf '   $ git annex sync --content peerA\n'
	while :; do
		sync_tries=$((sync_tries + 1))
		timeout 60 git annex sync -q --content peerA && return 0
		[ "$SERVE" = remotedaemon ] && [ $sync_tries -lt 4 ] ||
			die "git annex sync --content peerA failed (try $sync_tries)"
		echo "   (sync failed or hung: the known git-annex race; repeating, as the README says)"
	done
}
sync
for f in hello.txt random.bin; do
	cmp -s "$work/A/$f" "$f" || die "B's $f differs from A's after sync --content"
done
echo "   B has A's files, byte for byte"
echo "hello from B" >from-b.txt
git annex add -q from-b.txt && git commit -q -m "from B"
sync
cd "$work/A"
git annex merge -q >/dev/null 2>&1 || die "git annex merge in A failed"
cmp -s "$work/B/from-b.txt" from-b.txt || die "A has no from-b.txt with B's content after B's sync --content"
echo "   A has B's file, byte for byte"
run 120 git annex fsck -q

step "Stop serving; make uninstall; make uninstall-git-annex"
# Out of $work: ours() runs in a subshell that would otherwise count.
cd /
if [ "$SERVE" = serve ]; then
	kill -TERM "$serve_pid"
	n=0
	while kill -0 "$serve_pid" 2>/dev/null; do
		n=$((n + 1))
		[ $n -lt 150 ] || die "p2p-annex serve still runs 15 s after SIGTERM"
		sleep 0.1
	done
	wait "$serve_pid" || die "p2p-annex serve exited $? after SIGTERM"
	serve_pid=
else
	# remotedaemon has no stop command (README): kill it; its listeners
	# notice and exit by themselves.
	pids=
	for p in $(ours); do
		case $( (tr '\0' ' ' <"/proc/$p/cmdline") 2>/dev/null) in
		*remotedaemon*) pids="$pids $p" ;;
		esac
	done
	[ -n "$pids" ] || die "no remotedaemon runs in A"
	# shellcheck disable=SC2086 # a list of pids
	kill $pids 2>/dev/null || true
fi
n=0
while [ -n "$(ours)" ]; do
	n=$((n + 1))
	[ $n -lt 100 ] || die "still running 10 s after stopping: $(ours | tr '\n' ' ')"
	sleep 0.1
done
echo "   nothing of A's runs any more"
cd "$work/p2p-annex"
run 60 make -s uninstall PREFIX="$prefix"
run 60 make -s uninstall-git-annex PREFIX="$prefix"
left=$(find "$prefix" -type f -o -type l)
[ -z "$left" ] || die "left in $prefix after uninstall: $left"
echo "   $prefix holds no file"

echo
echo "first-hour: ok in $(($(date +%s) - started)) s (serving with $SERVE; sync tries: $sync_tries for 2 syncs)"
