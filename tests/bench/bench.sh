#!/bin/bash
# p2p-annex against the socat helpers users write today, side by side in
# one run (`make bench`). Not part of `make check`: it times things.
#
# usage: tests/bench/bench.sh [REPORT]
#   REPORT       where the markdown results go (default target/bench/results.md;
#                every single measurement goes beside it, as .tsv)
# environment:
#   QUICK=1      smaller sizes (1 GiB chain, 64 MiB file) for a quick look
#   REPS=N       runs of each variant, alternately (default 3); medians reported
#   BEFORE=PATH  another p2p-annex binary to compare as "ours-before"
#   STATIC_BIN=PATH  a static (musl) p2p-annex to report too; by default the
#                one `make static` builds, where the Makefile has that target
#   KEEP=1       keep the scratch directory
#
# Needs python3 (the generator, sink and timing helpers in benchtool.py),
# socat (installed with apt-get when run as root) and git; git-annex comes
# from PATH or is installed into target/git-annex as for the tests.
#
# Every process it starts is killed by PID at the end, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TOOL=$ROOT/tests/bench/benchtool.py
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REPORT=${1:-$TARGET/bench/results.md}
REPS=${REPS:-3}
if [ "${QUICK:-}" = 1 ]; then
	CHAIN_SIZE=1G BIG_SIZE=64M
else
	CHAIN_SIZE=4G BIG_SIZE=512M
fi
NFILES=300
SMALL_SIZE=1000
STARTUP_RUNS=50
IDLE_CONNS=100

say() { printf 'bench: [%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
	printf 'bench: %s\n' "$*" >&2
	exit 1
}
# In the foreground only: in the background, $! would be the subshell
# running the function, not python; run python3 "$TOOL" directly there.
py() { python3 "$TOOL" "$@"; }

# ---------------------------------------------------------------------------
# Tools

command -v python3 >/dev/null 2>&1 || die "python3 is missing (Debian: apt-get install python3)"
command -v git >/dev/null 2>&1 || die "git is missing (Debian: apt-get install git)"
if ! command -v socat >/dev/null 2>&1; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
		say "installing socat with apt-get"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends socat >/dev/null
	else
		die "socat is missing: the benchmark compares against it (Debian: sudo apt-get install socat)"
	fi
fi

say "building the release binary"
(cd "$ROOT" && cargo build --release --locked --quiet)
BIN=$TARGET/release/p2p-annex
[ -x "$BIN" ] || die "no $BIN after cargo build"
if [ -z "${STATIC_BIN:-}" ] && make -C "$ROOT" -n static >/dev/null 2>&1; then
	say "building the static binary (make static)"
	make -C "$ROOT" --no-print-directory static >/dev/null
	STATIC_BIN=$(find "$TARGET" -path "*$(uname -m)-unknown-linux-musl*/release/p2p-annex" -type f | head -n 1)
fi
if [ -n "${BEFORE:-}" ]; then [ -x "$BEFORE" ] || die "BEFORE=$BEFORE is not executable"; fi

if git-annex p2p --help 2>&1 | grep -q -- --enable; then
	ANNEX_BIN=$(dirname "$(command -v git-annex)")
else
	say "git-annex from $TARGET/git-annex (installed from PyPI if missing)"
	ANNEX_BIN=$("$ROOT/tests/tools/install-git-annex.sh" "$TARGET/git-annex")
	export MAGIC=$TARGET/git-annex/py/git_annex/magic.mgc
fi

# ---------------------------------------------------------------------------
# Scratch directory, environment, clean-up

WORK=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-bench.XXXXXX")
PIDS=()

# Processes whose working directory is in $WORK: remotedaemon and its
# listeners (which daemonize, so $! does not know them) and socat's children.
pids_in_work() {
	local p cwd
	for p in /proc/[0-9]*; do
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		case $cwd in "$WORK" | "$WORK"/*) echo "${p#/proc/}" ;; esac
	done
}

cleanup() {
	local code=$? p
	set +e
	for p in "${PIDS[@]}" $(pids_in_work); do
		[ "$p" = $$ ] || kill "$p" 2>/dev/null
	done
	sleep 0.2
	for p in "${PIDS[@]}" $(pids_in_work); do
		[ "$p" = $$ ] || kill -9 "$p" 2>/dev/null
	done
	if [ "${KEEP:-}" = 1 ]; then
		say "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/home" "$WORK/bin" "$WORK/socks" "$WORK/tmp"
export HOME=$WORK/home TMPDIR=$WORK/tmp GIT_CONFIG_NOSYSTEM=1 LC_ALL=C.UTF-8
unset GIT_DIR GIT_WORK_TREE GIT_CONFIG_COUNT GIT_CONFIG_PARAMETERS
export PATH=$WORK/bin:$ANNEX_BIN:$PATH
git config --global user.name "p2p-annex bench"
git config --global user.email bench@p2p-annex.invalid
git config --global init.defaultBranch main
git config --global p2p-annex.unix-sockets.dir "$WORK/socks"
for net in tcp tcprw tcpbefore; do
	git config --global "p2p-annex.$net.address" 127.0.0.1
done
git config --global p2p-annex.tcprw.transport tcp
git config --global p2p-annex.tcpbefore.transport tcp

RES=$WORK/results.tsv
: >"$RES"
rec() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RES"; }

# The helpers, as git-annex finds them on PATH.
ln -s "$BIN" "$WORK/bin/git-annex-p2p-tcp"
ln -s "$BIN" "$WORK/bin/git-annex-p2p-unix-sockets"
printf '#!/bin/sh\nP2P_ANNEX_NO_SPLICE=1 exec "%s" tcprw "$@"\n' "$BIN" >"$WORK/bin/git-annex-p2p-tcprw"
chmod +x "$WORK/bin/git-annex-p2p-tcprw"
if [ -n "${BEFORE:-}" ]; then ln -s "$BEFORE" "$WORK/bin/git-annex-p2p-tcpbefore"; fi

# The anchor: the socat helper a user would write, without and with
# socat's nodelay option. ADDRESS is HOST:PORT; address mode prints the
# port picked here.
socat_helper() { # NAME PORT OPTION
	cat >"$WORK/bin/git-annex-p2p-$1" <<EOF
#!/bin/sh
# git-annex P2P helper with socat, as a user would write it.
if [ "\$#" -eq 1 ] && [ "\$1" = address ]; then
	echo "127.0.0.1:$2"
elif [ "\$#" -eq 1 ]; then
	exec socat - "TCP:\$1$3"
elif [ "\$#" -eq 2 ]; then
	exec socat "TCP-LISTEN:\${1##*:},reuseaddr,fork$3" "UNIX-CONNECT:\$2"
else
	echo "usage: \$0 ADDRESS [SOCKET] | address" >&2
	exit 1
fi
EOF
	chmod +x "$WORK/bin/git-annex-p2p-$1"
}
socat_helper socat "$(py freeport)" ""
socat_helper socatnd "$(py freeport)" ",nodelay"

# Variant name → netname of its helper.
declare -A NET=([ours]=tcp [ours-rw]=tcprw [ours-before]=tcpbefore [socat]=socat
	[socat-nodelay]=socatnd [unix-sockets]=unix-sockets)
RELAYS=(ours ours-rw)
if [ -n "${BEFORE:-}" ]; then RELAYS+=(ours-before); fi
RELAYS+=(socat socat-nodelay)

# Waits until FILE has at least N lines.
wait_lines() { # FILE N
	local _
	for _ in $(seq 3000); do
		if [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; then return 0; fi
		sleep 0.01
	done
	die "timed out waiting for $1"
}

# The items rotated left by N: each round starts with another variant, so
# none always runs first (or right after a slow one).
rotate() { # N ITEM...
	local n=$1
	shift
	n=$((n % $#))
	printf '%s\n' "${@:n+1}" "${@:1:n}"
}

# Arithmetic on decimals (awk: bc is not on every machine).
calc() { awk "BEGIN { printf \"%.6f\\n\", $1 }"; }

secs_since() { # START (from date +%s.%N)
	calc "$(date +%s.%N) - $1"
}

load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_START=$(load)
START=$(date +%s)

# ---------------------------------------------------------------------------
# 6. Binary size

say "binary size"
rec size ours bytes "$(stat -c %s "$BIN")"
if [ -n "${STATIC_BIN:-}" ]; then rec size ours-static bytes "$(stat -c %s "$STATIC_BIN")"; fi
rec size socat bytes "$(stat -c %s "$(command -v socat)")"

# ---------------------------------------------------------------------------
# 4. Connect-mode start-up: connect to a listener that closes at once,
# stdin /dev/null. Run inside a repository, as git-annex runs the helper.

say "connect start-up ($STARTUP_RUNS runs each)"
git init -q "$WORK/repo"
python3 "$TOOL" closer "$WORK/closer.port" &
PIDS+=($!)
wait_lines "$WORK/closer.port" 1
CPORT=$(cat "$WORK/closer.port")
startup=(ours="$WORK/bin/git-annex-p2p-tcp 127.0.0.1:$CPORT")
if [ -n "${STATIC_BIN:-}" ]; then startup+=(ours-static="$STATIC_BIN tcp 127.0.0.1:$CPORT"); fi
startup+=(socat="$WORK/bin/git-annex-p2p-socat 127.0.0.1:$CPORT"
	socat-nodelay="$WORK/bin/git-annex-p2p-socatnd 127.0.0.1:$CPORT")
(cd "$WORK/repo" && py startup "$STARTUP_RUNS" "$RES" "${startup[@]}")

# ---------------------------------------------------------------------------
# 5. Memory: the listener idle, then with idle connections (each has sent
# one short line, as a remotedaemon connection has sent its AUTH).

say "memory ($IDLE_CONNS idle connections)"
memory_run() { # VARIANT LISTEN-COMMAND...
	local v=$1 port sock count pid idle busy pids
	shift
	port=$(py freeport)
	sock=$WORK/hold-$v.sock count=$WORK/hold-$v.count
	rm -f "$count"
	python3 "$TOOL" hold "$sock" "$count" &
	PIDS+=($!)
	local hold=$!
	while [ ! -S "$sock" ]; do sleep 0.01; done
	"$@" "127.0.0.1:$port" "$sock" 2>>"$WORK/listen.log" &
	pid=$!
	PIDS+=("$pid")
	py waitlisten "$port"
	sleep 0.3 # let it settle: nothing to wait for, it is idle
	idle=$(py mem "$pid")
	rm -f "$WORK/idle.out" "$WORK/idle.stop"
	python3 "$TOOL" idle "$port" "$IDLE_CONNS" "$count" "$WORK/idle.stop" >"$WORK/idle.out" &
	local client=$!
	PIDS+=("$client")
	wait_lines "$WORK/idle.out" 1
	pids=$(py descendants "$pid")
	# shellcheck disable=SC2086 # a list of pids
	busy=$(py mem $pids)
	touch "$WORK/idle.stop"
	wait "$client"
	# shellcheck disable=SC2086 # a list of pids; socat's children too
	kill $pids "$hold" 2>/dev/null || true
	wait "$pid" "$hold" 2>/dev/null || true
	local irss ipss brss bpss nproc
	read -r irss ipss _ <<<"$idle"
	read -r brss bpss nproc <<<"$busy"
	rec memory "$v" idle_rss_kib "$irss"
	rec memory "$v" idle_pss_kib "$ipss"
	rec memory "$v" conns_rss_kib "$brss"
	rec memory "$v" conns_pss_kib "$bpss"
	rec memory "$v" added_rss_kib "$((brss - irss))"
	rec memory "$v" processes "$nproc"
}
for _ in $(seq "$REPS"); do
	memory_run ours "$BIN" tcp
	if [ -n "${STATIC_BIN:-}" ]; then memory_run ours-static "$STATIC_BIN" tcp; fi
	memory_run socat "$WORK/bin/git-annex-p2p-socat"
done

# ---------------------------------------------------------------------------
# 1. Chain throughput: generator → connect mode → TCP → listen mode → unix
# socket → sink, and the same bytes with no relay at all: the generator
# straight into the unix socket (the limit of this machine), and straight
# into a TCP socket (what TCP itself costs here).

say "chain throughput ($CHAIN_SIZE per run)"
SINK=$WORK/sink.sock
python3 "$TOOL" sink "$SINK" "$WORK/sink.res" &
PIDS+=($!)
python3 "$TOOL" sink "tcp:$WORK/tcpsink.port" "$WORK/tcpsink.res" &
PIDS+=($!)
wait_lines "$WORK/tcpsink.port" 1
while [ ! -S "$SINK" ]; do sleep 0.01; done
: >"$WORK/sink.res"
: >"$WORK/tcpsink.res"
declare -A LPID LPORT
for v in "${RELAYS[@]}"; do
	LPORT[$v]=$(py freeport)
	"$WORK/bin/git-annex-p2p-${NET[$v]}" "127.0.0.1:${LPORT[$v]}" "$SINK" 2>>"$WORK/listen.log" &
	LPID[$v]=$!
	PIDS+=($!)
	py waitlisten "${LPORT[$v]}"
done

# A forking socat counts its child's CPU time once it has reaped it.
wait_reaped() { # PID
	local _
	for _ in $(seq 1000); do
		[ "$(py descendants "$1")" = "$1" ] && return 0
		sleep 0.01
	done
	die "the children of listener $1 did not exit"
}

chain_run() { # VARIANT SIZE
	local v=$1 size=$2 res=$WORK/sink.res n c0 c1 cc='' bytes secs want
	want=$(py size "$size")
	case $v in
	none)
		n=$(($(wc -l <"$res") + 1))
		py gen "$size" --unix "$SINK"
		;;
	tcp-only)
		res=$WORK/tcpsink.res
		n=$(($(wc -l <"$res") + 1))
		py gen "$size" --tcp "$(cat "$WORK/tcpsink.port")"
		;;
	*)
		n=$(($(wc -l <"$res") + 1))
		c0=$(py cpu "${LPID[$v]}")
		py gen "$size" |
			py rusage "$WORK/ru" -- "$WORK/bin/git-annex-p2p-${NET[$v]}" "127.0.0.1:${LPORT[$v]}" >/dev/null
		wait_reaped "${LPID[$v]}"
		c1=$(py cpu "${LPID[$v]}")
		cc=$(cut -d' ' -f1 "$WORK/ru")
		;;
	esac
	wait_lines "$res" "$n"
	read -r bytes secs < <(sed -n "${n}p" "$res")
	[ "$bytes" = "$want" ] || die "$v: the sink got $bytes bytes, not $want"
	rec chain "$v" wall_s "$secs"
	rec chain "$v" MB_per_s "$(calc "$bytes / $secs / 1000000")"
	if [ -n "$cc" ]; then
		rec chain "$v" cpu_s_per_GiB "$(calc "($cc + $c1 - $c0) * 1073741824 / $bytes")"
		rec chain "$v" connect_cpu_s "$cc"
		rec chain "$v" listen_cpu_s "$(calc "$c1 - $c0")"
	fi
}
# One untimed run of each first: the first run after start-up pays for
# faulting in the sink's buffers and the listeners' pages.
RES_KEEP=$RES RES=$WORK/warm-up.tsv
for v in "${RELAYS[@]}" none tcp-only; do chain_run "$v" 64M; done
RES=$RES_KEEP
for r in $(seq "$REPS"); do
	for v in $(rotate "$r" "${RELAYS[@]}" none tcp-only); do
		chain_run "$v" "$CHAIN_SIZE"
	done
done
for v in "${RELAYS[@]}"; do kill "${LPID[$v]}"; done

# ---------------------------------------------------------------------------
# 2 and 3. Real git-annex: repository A serves on every network through
# remotedaemon; one repository B per variant gets the files from it.

say "git-annex: repository A ($NFILES files of $SMALL_SIZE bytes, one of $BIG_SIZE)"
A=$WORK/a
ANNEX_T=600 # deadline of any one git-annex command, seconds
annex() { timeout "$ANNEX_T" git -C "$1" annex "${@:2}"; }
git init -q "$A"
annex "$A" init -q a
mkdir -p "$A/small"
python3 - "$A/small" "$NFILES" "$SMALL_SIZE" <<'EOF'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, "f%03d" % i), "wb") as f:
        f.write(os.urandom(size))
EOF
head -c "$BIG_SIZE" /dev/urandom >"$A/big.bin"
annex "$A" add -q .
git -C "$A" commit -q -m "files to get"
ANNEX_VARIANTS=(ours ours-rw)
if [ -n "${BEFORE:-}" ]; then ANNEX_VARIANTS+=(ours-before); fi
ANNEX_VARIANTS+=(socat socat-nodelay unix-sockets)
for v in "${ANNEX_VARIANTS[@]}"; do
	annex "$A" p2p --enable "${NET[$v]}" >/dev/null
done
annex "$A" remotedaemon
# Its warning that the lines hold secrets goes to stderr: they stay in $WORK.
(umask 077 && annex "$A" p2p --gen-addresses >"$WORK/addresses" 2>/dev/null)

say "git-annex: one repository per variant"
for v in "${ANNEX_VARIANTS[@]}"; do
	B=$WORK/b-$v
	git init -q "$B"
	annex "$B" init -q "b-$v"
	line=$(grep "^p2p-annex::${NET[$v]}:" "$WORK/addresses" | head -n 1) ||
		die "A has no ${NET[$v]} address"
	# The listeners start a moment after remotedaemon returns.
	linked=
	for _ in $(seq 150); do
		if printf '%s\n' "$line" | annex "$B" p2p --link --name peer >/dev/null 2>&1; then
			linked=1
			break
		fi
		sleep 0.1
	done
	[ -n "$linked" ] || die "$v: git annex p2p --link failed for 15 s"
	# History straight from A's directory: only content goes through the
	# helpers, and git fetch over P2P hits a known git-annex race.
	git -C "$B" fetch -q "$A" '+refs/heads/*:refs/remotes/peer/*'
	annex "$B" merge -q
	git -C "$B" merge -q --ff-only peer/main
	# Untimed: a first get sets up what git-annex sets up once per
	# repository (its databases).
	annex "$B" get -q --from peer small/f000
	annex "$B" drop -q --force small/f000
done

annex_run() { # BENCH VARIANT WHAT EXPECTED
	local B=$WORK/b-$2 t0 secs got
	t0=$(date +%s.%N)
	annex "$B" get -q --from peer "$3"
	secs=$(secs_since "$t0")
	got=$(annex "$B" find --in=here "$3" | wc -l)
	[ "$got" = "$4" ] || die "$2: $got of $4 files arrived"
	rec "$1" "$2" wall_s "$secs"
	annex "$B" drop -q --force "$3"
}

say "git-annex: get of $NFILES small files"
for r in $(seq "$REPS"); do
	for v in $(rotate "$r" "${ANNEX_VARIANTS[@]}"); do annex_run small "$v" small "$NFILES"; done
done
say "git-annex: get of one $BIG_SIZE file"
for r in $(seq "$REPS"); do
	for v in $(rotate "$r" "${ANNEX_VARIANTS[@]}"); do annex_run big "$v" big.bin 1; done
done

# ---------------------------------------------------------------------------
# The report

LOAD_END=$(load)
mkdir -p "$(dirname "$REPORT")"
{
	echo "## Results of tests/bench/bench.sh, $(date -u +%Y-%m-%d)"
	echo
	echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM"
	echo "- kernel: $(uname -srm); $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release 2>/dev/null)"
	echo "- p2p-annex $("$BIN" --version | cut -d' ' -f2) ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')), $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'), git-annex $(git-annex version --raw)"
	echo "- load average at start $LOAD_START, at end $LOAD_END; $(($(date +%s) - START)) s in all"
	echo "- sizes: chain $CHAIN_SIZE per run; $NFILES files of $SMALL_SIZE bytes; one file of $BIG_SIZE; $REPS runs of each variant, alternately"
	py report "$RES"
} >"$REPORT"
cp "$RES" "${REPORT%.md}.tsv"
cat "$REPORT"
say "report written to $REPORT (every measurement in ${REPORT%.md}.tsv)"
