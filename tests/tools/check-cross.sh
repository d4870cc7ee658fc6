#!/bin/sh
# make check-cross: the static binaries of `make static` (and
# `make static-armv7`) checked as a router would run them. Binaries for
# another architecture run under qemu-user, called explicitly because
# binfmt_misc is often not mounted. For each target: fully static, the
# right machine, --version, the netname taken from the link name, address
# mode (git config from GIT_CONFIG_COUNT and from a repository), and 8 MiB
# of random data relayed byte for byte out and back through listen and
# connect modes, over tcp and over unix-sockets, both ends emulated.
#
# usage: tests/tools/check-cross.sh TRIPLE...
set -eu

die() {
	echo "check-cross.sh: $*" >&2
	exit 1
}
[ $# -ge 1 ] || die "usage: check-cross.sh TRIPLE..."
root=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
for tool in socat git readelf timeout sha256sum cmp; do
	command -v $tool >/dev/null 2>&1 || die "$tool is missing (Debian: apt-get install socat git binutils coreutils diffutils)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-cross.XXXXXX")
# Every process started here, killed by PID at the end, also on failure.
pids=
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# git config isolated from the machine's: only what a check sets applies.
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
unset GIT_DIR GIT_CONFIG_COUNT GIT_CONFIG_PARAMETERS 2>/dev/null || true
mkdir "$HOME"

head -c 8388608 /dev/urandom >"$work/data"
data_sum=$(sha256sum <"$work/data" | cut -d' ' -f1)

passed=0
failed=0
ok() {
	passed=$((passed + 1))
	echo "ok   $triple: $*"
}
fail() {
	failed=$((failed + 1))
	echo "FAIL $triple: $*"
}

# Wait (at most 30 s) until FILE contains PATTERN; 1 if PID died first.
wait_for() {
	file=$1 pattern=$2 pid=$3 n=0
	while ! grep -q -- "$pattern" "$file" 2>/dev/null; do
		kill -0 "$pid" 2>/dev/null || return 1
		n=$((n + 1))
		[ $n -le 300 ] || return 1
		sleep 0.1
	done
}

# run PROGRAM ARGS...: the binary under test (or a link to it), emulated
# if need be, with a deadline.
run() {
	# shellcheck disable=SC2086 # $runner is one word or nothing
	timeout 120 $runner "$@"
}

# Start a listener (netname, address, with optional GIT_CONFIG_* already
# exported by the caller); sets $lpid and $llog. 1 if it did not come up.
start_listener() {
	llog=$1
	shift
	# shellcheck disable=SC2086 # $runner is one word or nothing
	$runner "$bin" "$@" "$d/annex.sock" 2>"$llog" &
	lpid=$!
	pids="$pids $lpid"
	wait_for "$llog" "listening on" "$lpid"
}

stop_listener() {
	kill "$lpid" 2>/dev/null || true
	wait "$lpid" 2>/dev/null || true
}

# relay NAME LOG ARGS...: send the random data through connect mode (ARGS)
# to the listener whose log is LOG; the echo server sends it back.
relay() {
	name=$1 log=$2
	shift 2
	# shellcheck disable=SC2086 # $runner is one word or nothing
	if ! timeout 300 $runner "$bin" "$@" <"$work/data" >"$d/$name.out" 2>"$d/$name.err"; then
		fail "$name relay: connect mode failed: $(head -c 300 "$d/$name.err")"
		return
	fi
	if ! cmp -s "$work/data" "$d/$name.out"; then
		fail "$name relay: $(wc -c <"$d/$name.out") bytes came back, not the 8388608 sent"
		return
	fi
	if ! wait_for "$log" "closed after .* 8388608 bytes in, 8388608 bytes out" "$lpid"; then
		fail "$name relay: the listener did not log the connection: $(tail -n 3 "$log")"
		return
	fi
	ok "$name relay: 8 MiB of random data out and back through listen and connect, byte for byte (sha256 ${data_sum%"${data_sum#????????????}"}…)"
}

host=$(uname -m)
for triple in "$@"; do
	bin=$target/$triple/release/p2p-annex
	d=$work/$triple
	mkdir -p "$d/bin"
	case $triple in
	x86_64-*) arch=x86_64 machine="X86-64" ;;
	aarch64-*) arch=aarch64 machine="AArch64" ;;
	armv7-*) arch=arm machine="ARM" ;;
	*) die "no qemu known for $triple" ;;
	esac
	runner=
	if [ "$arch" != "$host" ] && ! { [ "$arch" = arm ] && [ "$host" = armv7l ]; }; then
		runner=qemu-$arch-static
		command -v "$runner" >/dev/null 2>&1 ||
			die "$runner is missing (make cross-deps, or apt-get install qemu-user-static)"
	fi
	[ -x "$bin" ] || die "$bin is missing (make static)"
	echo "check-cross: $triple ($(wc -c <"$bin") bytes)${runner:+, under $runner}"

	# Static: no program interpreter, no shared libraries; stripped.
	if readelf -lW "$bin" | grep -q INTERP || readelf -dW "$bin" 2>/dev/null | grep -q NEEDED; then
		fail "not fully static: $(readelf -lW "$bin" | grep -A1 INTERP | tr -s ' ') $(readelf -dW "$bin" | grep NEEDED)"
	elif ! readelf -hW "$bin" | grep -q "Machine: *.*$machine"; then
		fail "not an $machine binary: $(readelf -hW "$bin" | grep Machine:)"
	elif readelf -SW "$bin" | grep -q '\.symtab'; then
		fail "not stripped: it has a symbol table"
	else
		ok "static $machine binary: no interpreter, no shared libraries, stripped"
	fi

	out=$(run "$bin" --version 2>&1) || true
	if [ "$out" = "p2p-annex $version" ]; then ok "--version: $out"; else fail "--version printed '$out', not 'p2p-annex $version'"; fi

	# The netname comes from the link name, as git-annex runs it; git config
	# from the environment.
	ln -s "$bin" "$d/bin/git-annex-p2p-tcp"
	out=$(GIT_CONFIG_COUNT=2 \
		GIT_CONFIG_KEY_0=p2p-annex.tcp.address GIT_CONFIG_VALUE_0=192.0.2.7 \
		GIT_CONFIG_KEY_1=p2p-annex.tcp.port GIT_CONFIG_VALUE_1=5599 \
		run "$d/bin/git-annex-p2p-tcp" address 2>&1) || true
	if [ "$out" = "192.0.2.7:5599" ]; then ok "git-annex-p2p-tcp address (GIT_CONFIG_COUNT): $out"; else fail "git-annex-p2p-tcp address printed '$out', not '192.0.2.7:5599'"; fi

	out=$(run "$bin" unix-sockets address 2>&1) || true
	if printf '%s\n' "$out" | grep -qx '[0-9a-f]\{16\}'; then ok "unix-sockets address: a fresh token"; else fail "unix-sockets address printed '$out'"; fi

	# The real flow: address mode in a repository picks a free port and
	# stores it; the listener then binds that address. Another process may
	# take the port in between: pick again then (at most 3 times).
	git init -q "$d/repo"
	git -C "$d/repo" config p2p-annex.tcp.address 127.0.0.1
	# The echo server stands in for git-annex's socket; -t: after one
	# direction ends, wait for the other (socat's default is 0.5 s).
	socat -t 30 UNIX-LISTEN:"$d/annex.sock",fork EXEC:cat &
	echo_pid=$!
	pids="$pids $echo_pid"
	n=0
	while [ ! -S "$d/annex.sock" ]; do
		n=$((n + 1))
		[ $n -le 300 ] || die "socat did not create $d/annex.sock"
		sleep 0.1
	done
	cd "$d/repo"
	tries=0 up=
	while [ $tries -lt 3 ] && [ -z "$up" ]; do
		tries=$((tries + 1))
		git config --unset p2p-annex.tcp.port || true
		address=$(run "$bin" tcp address 2>&1) || true
		stored=$(git config p2p-annex.tcp.port || true)
		if [ "$address" != "127.0.0.1:$stored" ]; then
			fail "tcp address in a repository printed '$address' (stored port '$stored')"
			address=
			break
		fi
		[ $tries -eq 1 ] && ok "tcp address in a repository: $address, port stored in git config"
		if start_listener "$d/tcp.log" tcp "$address"; then
			up=1
		else
			stop_listener
		fi
	done
	cd "$work"
	if [ -n "$up" ]; then
		relay tcp "$d/tcp.log" tcp "$address"
		if kill -0 "$lpid" 2>/dev/null; then
			ok "tcp listener still serving after the connection"
		else
			fail "tcp listener died: $(tail -n 3 "$d/tcp.log")"
		fi
		stop_listener
	elif [ -n "${address:-}" ]; then
		fail "tcp listener on $address did not start: $(tail -n 3 "$d/tcp.log")"
	fi

	# unix-sockets: socket files in a shared directory, named by token.
	mkdir "$d/net"
	export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=p2p-annex.unix-sockets.dir GIT_CONFIG_VALUE_0="$d/net"
	token=0123456789abcdef
	if start_listener "$d/unix.log" unix-sockets $token; then
		relay unix-sockets "$d/unix.log" unix-sockets $token
		stop_listener
	else
		fail "unix-sockets listener did not start: $(tail -n 3 "$d/unix.log")"
		stop_listener
	fi
	unset GIT_CONFIG_COUNT GIT_CONFIG_KEY_0 GIT_CONFIG_VALUE_0
	kill "$echo_pid" 2>/dev/null || true
	wait "$echo_pid" 2>/dev/null || true
done

echo "check-cross: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
