#!/bin/bash
# git-annex syncing over real overlay networks (issue 7): Yggdrasil and
# WireGuard (wireguard-go, user space) between network namespaces joined by
# veth pairs, with p2p-annex's `tcp` netname as the transport.
#
# usage: tests/overlay/run.sh [--allow-skip] [--bench] P2P-ANNEX GIT-ANNEX-DIR
#
#   P2P-ANNEX      the binary to test (target/release/p2p-annex)
#   GIT-ANNEX-DIR  where tests/tools/install-git-annex.sh puts git-annex
#                  when none is on PATH (target/git-annex)
#   --allow-skip   where root, network namespaces or /dev/net/tun are
#                  missing, say so and exit 0 instead of 1
#   --bench        measure throughput over each overlay (ours, socat, raw)
#                  instead of running the git-annex tests
#
# Needs root and /dev/net/tun; installs yggdrasil, wireguard-go,
# wireguard-tools, iproute2 and socat with apt-get when they are missing.
# Everything it starts it stops by PID, and it deletes its namespaces and
# its temporary directory, also on failure, interrupt or timeout.
#
# The hosts (namespace names carry this shell's PID, so runs do not collide):
#
#   C ------------------ A ------------------ B
#     fd00:ac::2   fd00:ac::1   fd00:ab::1   fd00:ab::2      (veth, nodad)
#   Yggdrasil: A listens on both veths, B and C peer with A; no multicast,
#              no other peers. Each node has a 200::/7 address on ygg0.
#   WireGuard: A 10.99.0.1 <-> B 10.99.0.2, over the A-B veth.
#
# ../shared/DESIGN.md ("Real overlays on one machine") has the facts this
# relies on: the install flags, `nodad`, start order, control sockets.

# "a && b || die" is meant: die when any step fails.
# shellcheck disable=SC2015
set -u -o pipefail

usage() {
	echo "usage: run.sh [--allow-skip] [--bench] P2P-ANNEX GIT-ANNEX-DIR" >&2
	exit 2
}

allow_skip=0
bench=0
while [ $# -gt 0 ]; do
	case $1 in
	--allow-skip) allow_skip=1 ;;
	--bench) bench=1 ;;
	--) shift && break ;;
	-*) usage ;;
	*) break ;;
	esac
	shift
done
[ $# -eq 2 ] || usage
p2p_bin=$1
ga_dir=$2

# Whole-run deadline: the test takes about a minute (the daemons come up
# in well under a second); the benchmark moves 18 GiB.
if [ $bench -eq 1 ]; then budget=${OVERLAY_BUDGET:-1200}; else budget=${OVERLAY_BUDGET:-300}; fi
# Deadline of one git or git-annex command; every command has one. A
# fetch of a few files takes about a second, a sync a few; the serving side
# runs under p2p-annex serve, so none hangs in git-annex's relay race and
# none is retried.
CMD_SECS=60

passed=0
failed=0
skipped=0

# ---------------------------------------------------------------------------
# Output

# Microseconds since the epoch (bash 5).
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
# Seconds since START (from now_us), with DIGITS decimals.
since() { awk -v us=$(($(now_us) - $1)) -v d="$2" 'BEGIN { printf "%." d "f", us / 1e6 }'; }
t_start=$(now_us)

say() { printf '\n== [%s s] %s\n' "$(elapsed)" "$*"; }
note() { printf '   %s\n' "$*"; }
ok() {
	passed=$((passed + 1))
	printf '   ok [%s s]: %s\n' "$(elapsed)" "$*"
}
# Seconds since the start, for the log.
elapsed() { since "$t_start" 1; }

summary() {
	printf '\noverlay: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
}

# A failed check or setup step: say what and stop (cleanup runs on EXIT).
die() {
	failed=$((failed + 1))
	printf '   FAIL: %s\n' "$*" >&2
	exit 1
}

# Where the machine cannot run this at all.
unsupported() {
	echo "run.sh: cannot run the overlay tests here: $*" >&2
	if [ $allow_skip -eq 1 ]; then
		echo "run.sh: skipped (--allow-skip)" >&2
		skipped=1
		summary
		exit 0
	fi
	echo "run.sh: they need root, network namespaces and /dev/net/tun; pass --allow-skip to skip" >&2
	exit 1
}

# ---------------------------------------------------------------------------
# What the machine must have

[ "$(id -u)" -eq 0 ] || unsupported "not running as root"
[ -c /dev/net/tun ] || unsupported "/dev/net/tun does not exist"
{ exec 3<>/dev/net/tun; } 2>/dev/null || unsupported "/dev/net/tun cannot be opened"
exec 3>&-

# Debian package names of the tools, installed when missing (as root).
# --no-install-recommends: wireguard-tools would otherwise pull in a kernel.
need=
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v yggdrasil >/dev/null 2>&1 || need="$need yggdrasil"
command -v wireguard-go >/dev/null 2>&1 || need="$need wireguard-go"
command -v wg >/dev/null 2>&1 || need="$need wireguard-tools"
command -v socat >/dev/null 2>&1 || need="$need socat"
if [ -n "$need" ]; then
	command -v apt-get >/dev/null 2>&1 ||
		unsupported "missing:$need, and there is no apt-get to install them"
	echo "run.sh: installing$need with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || { echo "run.sh: apt-get update failed" >&2; exit 1; }
	# shellcheck disable=SC2086 # a list of package names
	apt-get install -y -qq --no-install-recommends $need >/dev/null ||
		{ echo "run.sh: apt-get install$need failed" >&2; exit 1; }
fi

probe_ns=p2p-probe-$$
ip netns add "$probe_ns" 2>/dev/null || unsupported "cannot create a network namespace (ip netns add)"
ip netns del "$probe_ns"

p2p_bin=$(cd "$(dirname "$p2p_bin")" 2>/dev/null && pwd)/$(basename "$p2p_bin")
[ -x "$p2p_bin" ] || { echo "run.sh: $p2p_bin is missing (run make)" >&2; exit 1; }

if command -v git-annex >/dev/null 2>&1; then
	ga_bin=
else
	ga_bin=$("$(dirname "$0")/../tools/install-git-annex.sh" "$ga_dir") ||
		{ echo "run.sh: cannot install git-annex into $ga_dir" >&2; exit 1; }
	MAGIC=$(cd "$ga_bin/../py/git_annex" && pwd)/magic.mgc
	export MAGIC
fi

# ---------------------------------------------------------------------------
# State, and the cleanup that undoes all of it

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-overlay.XXXXXX") || exit 1
work=$(cd "$work" && pwd -P)
# This shell stays outside $work: every process whose working directory is
# inside it is one this run started (remotedaemon, listeners, helpers).
cd /
mkdir "$work/bin" "$work/home" "$work/log" "$work/run"
chmod 700 "$work"

nsA=p2pA-$$
nsB=p2pB-$$
nsC=p2pC-$$
namespaces=()
# WireGuard interface names are global in practice: wireguard-go's control
# sockets (/var/run/wireguard/NAME.sock) are shared by all namespaces.
wgA=p2pwa$$
wgB=p2pwb$$
# Processes are named by records PID:START, START being the kernel's start
# time of the process (/proc/PID/stat field 22): with it, a PID that was
# reused by someone else's process is never signalled.
pids=() # records of every background process started here

# The start time of PID, or failure when there is no such process.
starttime() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) } # the command name may hold spaces and parentheses
	# shellcheck disable=SC2086 # split into fields on purpose
	set -- $stat
	[ -n "${20:-}" ] && echo "${20}"
}

# The record of PID, printed; failure when it is gone already.
record() {
	local st
	st=$(starttime "$1") && echo "$1:$st"
}

# Remember a process just started (its record, in $pids and $last).
track() {
	last=$(record "$1") && pids+=("$last")
}

# Records of processes, other than this shell, whose working directory is
# DIR (default: $work or anything inside it). One find, not a fork per
# process.
procs_in_work() {
	local pattern=${1:-$work/*} pid
	for pid in $(find /proc/[0-9]*/cwd -maxdepth 0 \( -lname "$pattern" -o -lname "${1:-$work}" \) 2>/dev/null |
		cut -d/ -f3); do
		[ "$pid" = $$ ] || record "$pid"
	done
}

# The command line of a record's process, arguments separated by spaces.
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/${1%%:*}/cmdline"; }

# The process of a record is gone, or a zombie (which holds no port and no
# file), or its PID now names another process.
gone() {
	local pid=${1%%:*} state
	[ "$(starttime "$pid")" = "${1#*:}" ] || return 0
	state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null) || return 0
	[ -z "$state" ] || [ "$state" = Z ] || [ "$state" = X ]
}

# Signal the processes of these records that are still theirs.
signal() {
	local sig=$1 r
	shift
	for r in "$@"; do gone "$r" || kill "-$sig" "${r%%:*}" 2>/dev/null; done
}

# TERM the processes of these records, KILL those still there after 5 s,
# reap our own children.
stop_pids() {
	local r left
	[ $# -gt 0 ] || return 0
	signal TERM "$@"
	for _ in $(seq 100); do
		left=()
		for r in "$@"; do gone "$r" || left+=("$r"); done
		[ ${#left[@]} -eq 0 ] && break
		sleep 0.05
	done
	if [ ${#left[@]} -gt 0 ]; then
		echo "run.sh: killing with SIGKILL:${left[*]%%:*}" >&2
		signal KILL "${left[@]}"
	fi
	for r in "$@"; do wait "${r%%:*}" 2>/dev/null; done
	return 0
}

cleanup() {
	local rc=$? left
	trap - EXIT INT TERM
	[ -n "${watchdog_sleep:-}" ] && signal TERM "$watchdog_sleep"
	# remotedaemons and listeners first (they are not our children), then
	# the daemons we started, then anything else still working in $work.
	# shellcheck disable=SC2046 # a list of PIDs
	stop_pids $(procs_in_work)
	stop_pids "${pids[@]}"
	# shellcheck disable=SC2046 # a list of PIDs
	stop_pids $(procs_in_work)
	for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
	rm -f "/var/run/wireguard/$wgA.sock" "/var/run/wireguard/$wgB.sock"
	if [ $rc -ne 0 ] && [ -n "${KEEP_LOGS:-}" ]; then
		cp -r "$work/log" "$KEEP_LOGS" && echo "run.sh: logs kept in $KEEP_LOGS" >&2
	fi
	rm -rf "$work"
	left=$(ip netns list 2>/dev/null | grep -c -- "-$$\b")
	[ "$left" -eq 0 ] || echo "run.sh: warning: $left namespace(s) of this run remain" >&2
	[ $bench -eq 1 ] || { [ $rc -ne 0 ] && [ $failed -eq 0 ] && failed=1; summary; }
	printf 'run.sh: %s s in all\n' "$(elapsed)"
	exit $rc
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM

# The deadline: the sleep is killed by cleanup; if it ends first, this
# shell gets SIGTERM (handled once the current, itself bounded, command ends).
{
	sleep "$budget" &
	echo $! >"$work/run/watchdog"
	wait $! && echo "run.sh: deadline of ${budget}s reached" >&2 && kill -TERM $$
} &
track $!
for _ in $(seq 100); do [ -s "$work/run/watchdog" ] && break; sleep 0.01; done
watchdog_sleep=$(record "$(cat "$work/run/watchdog")")

# Poll until COMMAND succeeds, for at most SECS seconds.
# usage: wait_until SECS WHAT COMMAND...
wait_until() {
	local secs=$1 what=$2 start
	start=$(now_us)
	shift 2
	until "$@"; do
		if [ $(($(now_us) - start)) -gt $((secs * 1000000)) ]; then
			die "timed out after ${secs}s waiting for $what"
		fi
		sleep 0.05
	done
}

# Start a background process; its output goes to log/NAME.log.
# usage: start NAME NAMESPACE COMMAND...
start() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$ns" "$@" >"$work/log/$name.log" 2>&1 </dev/null &
	track $!
}

# ---------------------------------------------------------------------------
# Running commands in a namespace and a directory, with a deadline

step=0
# usage: run NAMESPACE DIR SECS COMMAND...  → $rc, $out (file), $err (file)
run() {
	local ns=$1 dir=$2 secs=$3
	shift 3
	step=$((step + 1))
	out=$work/log/step$step.out
	err=$work/log/step$step.err
	printf '%s\n' "[$ns] $dir: $*" >"$work/log/step$step.cmd"
	(cd "$dir" && exec ip netns exec "$ns" timeout -k 5 "$secs" "$@") <"${stdin_file:-/dev/null}" >"$out" 2>"$err"
	rc=$?
	return $rc
}

# The last lines of a command's output, indented.
show_tail() { tail -n "${2:-15}" "$1" | sed 's/^/     | /' >&2; }

# Like run, but a failure ends the test. SECRET=1: stdout holds tokens and
# is never shown.
must() {
	local what="$*"
	run "$@" && return 0
	[ $rc -eq 124 ] && what="$what (timed out)"
	printf '   FAIL: exit %d: %s\n' "$rc" "$what" >&2
	show_tail "$err"
	[ "${SECRET:-0}" = 1 ] || show_tail "$out"
	die "command failed"
}

# ---------------------------------------------------------------------------
# Hosts: namespaces and veth pairs

setup_hosts() {
	say "Hosts: namespaces $nsA, $nsB, $nsC joined by veth pairs"
	local ns
	for ns in "$nsA" "$nsB" "$nsC"; do
		ip netns add "$ns" || die "ip netns add $ns"
		namespaces+=("$ns")
		ip -n "$ns" link set lo up || die "lo up in $ns"
	done
	# Created inside the namespaces, so the names cannot collide with the
	# host's interfaces or another run's.
	ip link add ab netns "$nsA" type veth peer name ba netns "$nsB" || die "veth A-B"
	ip link add ac netns "$nsA" type veth peer name ca netns "$nsC" || die "veth A-C"
	# nodad: without it the addresses stay tentative for ~1.6 s and nothing
	# can bind them (DESIGN.md).
	ip -n "$nsA" addr add fd00:ab::1/64 dev ab nodad &&
		ip -n "$nsB" addr add fd00:ab::2/64 dev ba nodad &&
		ip -n "$nsA" addr add fd00:ac::1/64 dev ac nodad &&
		ip -n "$nsC" addr add fd00:ac::2/64 dev ca nodad || die "veth addresses"
	ip -n "$nsA" link set ab up && ip -n "$nsB" link set ba up &&
		ip -n "$nsA" link set ac up && ip -n "$nsC" link set ca up || die "veth up"
	ok "three hosts, veth A-B and A-C"
}

# ---------------------------------------------------------------------------
# Yggdrasil

YGG_PORT=12345 # in a namespace of our own: nothing else can hold it

# Write node NAME's configuration: a new key, no multicast, the given
# Listen and Peers lists (JSON), its own admin socket and TUN name.
ygg_config() {
	local name=$1 listen=$2 peers=$3 key
	yggdrasil -genconf -json >"$work/run/ygg-$name.gen" || die "yggdrasil -genconf"
	key=$(sed -n 's/^[[:space:]]*"PrivateKey": "\([0-9a-f]*\)".*/\1/p' "$work/run/ygg-$name.gen")
	[ ${#key} -eq 128 ] || die "no PrivateKey in yggdrasil -genconf -json output"
	rm -f "$work/run/ygg-$name.gen"
	(umask 077 && cat >"$work/run/ygg-$name.json") <<-EOF
		{
		  "PrivateKey": "$key",
		  "Peers": [$peers],
		  "InterfacePeers": {},
		  "Listen": [$listen],
		  "AdminListen": "unix://$work/run/ygg-$name.sock",
		  "MulticastInterfaces": [],
		  "AllowedPublicKeys": [],
		  "IfName": "ygg0",
		  "IfMTU": 65535,
		  "NodeInfoPrivacy": true,
		  "NodeInfo": null
		}
	EOF
}

has_addr() { ip -n "$1" addr show dev "$2" 2>/dev/null | grep -qF "inet${4:-6} $3/"; }
listening() { ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q .; }

setup_yggdrasil() {
	say "Yggdrasil $(dpkg-query -W -f '${Version}' yggdrasil 2>/dev/null): one node per host, peered over the veths"
	local t0
	t0=$(now_us)
	ygg_config A '"tcp://[fd00:ab::1]:'$YGG_PORT'", "tcp://[fd00:ac::1]:'$YGG_PORT'"' ""
	ygg_config B "" '"tcp://[fd00:ab::1]:'$YGG_PORT'"'
	ygg_config C "" '"tcp://[fd00:ac::1]:'$YGG_PORT'"'
	# The address follows from the key: known before the node runs.
	yggA=$(yggdrasil -useconffile "$work/run/ygg-A.json" -address) &&
		yggB=$(yggdrasil -useconffile "$work/run/ygg-B.json" -address) &&
		yggC=$(yggdrasil -useconffile "$work/run/ygg-C.json" -address) || die "yggdrasil -address"
	# The listening node first: 0.4.7 waits 60 s before re-dialling a peer
	# that refused (DESIGN.md).
	start ygg-A "$nsA" yggdrasil -useconffile "$work/run/ygg-A.json" -logto stdout
	wait_until 10 "A's yggdrasil to listen" listening "$nsA" $YGG_PORT
	start ygg-B "$nsB" yggdrasil -useconffile "$work/run/ygg-B.json" -logto stdout
	start ygg-C "$nsC" yggdrasil -useconffile "$work/run/ygg-C.json" -logto stdout
	# Wait for the addresses, not for log lines.
	wait_until 10 "A's Yggdrasil address on ygg0" has_addr "$nsA" ygg0 "$yggA"
	wait_until 10 "B's Yggdrasil address on ygg0" has_addr "$nsB" ygg0 "$yggB"
	wait_until 10 "C's Yggdrasil address on ygg0" has_addr "$nsC" ygg0 "$yggC"
	note "A $yggA"
	note "B $yggB"
	note "C $yggC"
	ok "three Yggdrasil nodes up in $(since "$t0" 2) s"
}

# ---------------------------------------------------------------------------
# WireGuard (wireguard-go: there is no kernel module here)

WG_PORT=51820
wgaddrA=10.99.0.1
wgaddrB=10.99.0.2

setup_wireguard() {
	say "WireGuard: wireguard-go $(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null), interfaces $wgA (A) and $wgB (B)"
	local t0
	t0=$(now_us)
	(umask 077 && wg genkey >"$work/run/wg-A.key" && wg genkey >"$work/run/wg-B.key") || die "wg genkey"
	local pubA pubB
	pubA=$(wg pubkey <"$work/run/wg-A.key") && pubB=$(wg pubkey <"$work/run/wg-B.key") || die "wg pubkey"
	# -f: in the foreground, so the PID we hold is the daemon's.
	start wg-A "$nsA" wireguard-go -f "$wgA"
	start wg-B "$nsB" wireguard-go -f "$wgB"
	wait_until 10 "wireguard-go's control socket for $wgA" test -S "/var/run/wireguard/$wgA.sock"
	wait_until 10 "wireguard-go's control socket for $wgB" test -S "/var/run/wireguard/$wgB.sock"
	ip netns exec "$nsA" wg set "$wgA" private-key "$work/run/wg-A.key" listen-port $WG_PORT \
		peer "$pubB" allowed-ips "$wgaddrB/32" endpoint "[fd00:ab::2]:$WG_PORT" || die "wg set $wgA"
	ip netns exec "$nsB" wg set "$wgB" private-key "$work/run/wg-B.key" listen-port $WG_PORT \
		peer "$pubA" allowed-ips "$wgaddrA/32" endpoint "[fd00:ab::1]:$WG_PORT" || die "wg set $wgB"
	ip -n "$nsA" addr add "$wgaddrA/24" dev "$wgA" && ip -n "$nsA" link set "$wgA" up &&
		ip -n "$nsB" addr add "$wgaddrB/24" dev "$wgB" && ip -n "$nsB" link set "$wgB" up ||
		die "WireGuard addresses"
	note "A $wgaddrA"
	note "B $wgaddrB"
	ok "two WireGuard interfaces up in $(since "$t0" 2) s"
}

# ---------------------------------------------------------------------------
# git and git-annex

setup_tools() {
	ln -s "$p2p_bin" "$work/bin/git-annex-p2p-tcp"
	ln -s "$p2p_bin" "$work/bin/p2p-annex"
	PATH=$work/bin${ga_bin:+:$ga_bin}:$PATH
	export PATH HOME=$work/home GIT_CONFIG_NOSYSTEM=1
	unset GIT_DIR GIT_WORK_TREE GIT_ANNEX_P2P_AUTHTOKEN
	git config --global user.name "p2p-annex overlay test" &&
		git config --global user.email overlay@p2p-annex.invalid &&
		git config --global init.defaultBranch main || die "git config --global"
	git_annex_version=$(git annex version --raw 2>/dev/null) || die "git-annex does not run"
}

# usage: new_repo NAMESPACE DIR NAME
new_repo() {
	mkdir -p "$2" || die "mkdir $2"
	must "$1" "$2" $CMD_SECS git init -q
	must "$1" "$2" $CMD_SECS git annex init -q "$3"
}

# Random files of the given sizes (bytes) in DIR.
# usage: make_files DIR NAME=SIZE...
make_files() {
	local dir=$1 spec
	shift
	for spec in "$@"; do
		mkdir -p "$dir/$(dirname "${spec%%=*}")"
		head -c "${spec#*=}" /dev/urandom >"$dir/${spec%%=*}" || die "make $spec"
	done
}

# The remotedaemon of DIR (found by command line and working directory:
# it daemonizes, has PPID 1 and no pid file).
remotedaemon_pid() {
	local r
	for r in $(procs_in_work "$1"); do
		case $(cmdline "$r") in *git-annex\ remotedaemon*) echo "$r" ;; esac
	done
}

# Live listen-mode helpers working in DIR.
listener_pids() {
	local r
	for r in $(procs_in_work "$1"); do
		gone "$r" && continue
		case $(cmdline "$r") in git-annex-p2p-* | */git-annex-p2p-*) echo "$r" ;; esac
	done
}
count_is() { [ "$("$2" "$3" | wc -l)" -eq "$1" ]; }

# Serve DIR: `p2p-annex serve` runs remotedaemon with the git shim first on
# its PATH, so no fetch hangs and no push fails in git-annex's relay race
# (doc/upstream/connectdone-race.md). Wait for one listener per enabled
# address.
# usage: start_remotedaemon NAMESPACE DIR
declare -A serve_of
start_remotedaemon() {
	local ns=$1 dir=$2 n
	n=$(wc -l <"$dir/.git/annex/creds/p2paddrs")
	start "serve-$step" "$ns" "$p2p_bin" serve "$dir"
	serve_of[$dir]=$last
	wait_until 30 "remotedaemon under p2p-annex serve in $dir" count_is 1 remotedaemon_pid "$dir"
	wait_until 15 "$n listener(s) under remotedaemon in $dir" count_is "$n" listener_pids "$dir"
	note "serve ${last%%:*}, remotedaemon $(remotedaemon_pid "$dir" | cut -d: -f1), listeners $(listener_pids "$dir" | cut -d: -f1 | tr '\n' ' ')"
}

# serve stops remotedaemon and its listeners on SIGTERM; anything left
# after it is stopped too, and counts as a failure.
stop_remotedaemon() {
	[ -z "${serve_of[$1]:-}" ] || stop_pids "${serve_of[$1]}"
	serve_of[$1]=
	count_is 0 remotedaemon_pid "$1" && count_is 0 listener_pids "$1" && return 0
	# shellcheck disable=SC2046 # lists of PIDs
	stop_pids $(remotedaemon_pid "$1") $(listener_pids "$1")
	die "remotedaemon or its listeners in $1 survived p2p-annex serve's stop"
}

# Connect-mode helpers must exit when git-annex is done with them (git-annex
# does not wait for them in get/copy/drop).
no_helpers_left() {
	count_is 0 listener_pids "$1"
}

# git push to the peer's synced/ branches; the refs must arrive. A serves
# under p2p-annex serve: no error is tolerated.
# usage: push_to_peer NAMESPACE DIR REMOTE PEER-DIR
push_to_peer() {
	local ns=$1 dir=$2 remote=$3 peer=$4
	must "$ns" "$dir" $CMD_SECS git push -q "$remote" main:synced/main git-annex:synced/git-annex
	[ "$(git -C "$peer" rev-parse synced/main)" = "$(git -C "$dir" rev-parse main)" ] ||
		die "after git push, the peer's synced/main is not our main"
}

# A repository links to A as remote peerA, through exactly URL, with a new
# token from A. The token never reaches a variable, the output or the logs.
# usage: link_to A-DIR NAMESPACE DIR URL
link_to() {
	local a=$1 ns=$2 dir=$3 url=$4 line=$work/run/link-line
	SECRET=1 must "$nsA" "$a" $CMD_SECS git annex p2p --gen-addresses
	(umask 077 && grep -F "$url:" "$out" | head -n 1 >"$line")
	rm -f "$out"
	[ -s "$line" ] || die "git annex p2p --gen-addresses printed no line for $url"
	stdin_file=$line must "$ns" "$dir" $CMD_SECS git annex p2p --link --name peerA
	rm -f "$line"
	[ "$(git -C "$dir" remote get-url peerA)" = "$url" ] || die "the remote peerA of $dir is not $url"
}

# Same bytes in both places (the annexed files' content, through the links).
# usage: same_content DIR1 DIR2 FILE...
same_content() {
	local a=$1 b=$2 f
	shift 2
	for f in "$@"; do
		[ -e "$b/$f" ] || die "$b/$f: content is not present"
		cmp -s "$a/$f" "$b/$f" || die "$f differs between $(basename "$(dirname "$a")")/$(basename "$a") and $(basename "$b")"
	done
}

# ---------------------------------------------------------------------------
# The git-annex scenario over one overlay (items 2 and 3 of issue 7)

# usage: annex_over LABEL OVERLAY-ADDRESS-OF-A
annex_over() {
	local label=$1 addr=$2 t0
	t0=$(now_us)
	local top=$work/$label A B port url
	A=$top/A
	B=$top/B
	say "git-annex over $label: A in $nsA, B in $nsB"

	new_repo "$nsA" "$A" A
	make_files "$A" hello.txt=100 one-mib.bin=1048576 big.bin=16777216 \
		small/1=10 small/2=20 small/3=300 small/4=4000 small/5=50000
	local files="hello.txt one-mib.bin big.bin small/1 small/2 small/3 small/4 small/5"
	must "$nsA" "$A" $CMD_SECS git annex add -q .
	must "$nsA" "$A" $CMD_SECS git commit -q -m "A's files"

	# Item 3: no p2p-annex.tcp.address anywhere, so address mode prints
	# every usable address of A, the overlay's among them, unbracketed.
	[ -z "$(git -C "$A" config --get-regexp '^p2p-annex\.tcp\.address' 2>/dev/null)" ] ||
		die "p2p-annex.tcp.address is set; this test needs it unset"
	must "$nsA" "$A" $CMD_SECS git annex p2p --enable tcp
	port=$(git -C "$A" config p2p-annex.tcp.port) || die "address mode stored no port"
	url="p2p-annex::tcp:$addr:$port"
	note "A's enabled addresses (address mode, nothing configured):"
	sed 's/^/     /' "$A/.git/annex/creds/p2paddrs"
	grep -qxF "$url" "$A/.git/annex/creds/p2paddrs" ||
		die "A's addresses do not include its $label address as $url"
	! grep -q '[][]' "$A/.git/annex/creds/p2paddrs" || die "an address is bracketed"
	must "$nsA" "$A" $CMD_SECS git-annex-p2p-tcp address
	grep -qxF "$addr:$port" "$out" || die "git-annex-p2p-tcp address does not print $addr:$port"
	ok "address mode lists A's $label address, unbracketed: $addr:$port"

	start_remotedaemon "$nsA" "$A"

	# B links through exactly the overlay address, with a fresh token.
	new_repo "$nsB" "$B" B
	link_to "$A" "$nsB" "$B" "$url"
	ok "B linked to A through $url"

	# Item 2: fetch, get, fsck.
	must "$nsB" "$B" $CMD_SECS git fetch -q peerA
	must "$nsB" "$B" $CMD_SECS git merge -q --ff-only peerA/main
	must "$nsB" "$B" $CMD_SECS git annex get -q --from peerA .
	# shellcheck disable=SC2086 # a list of file names
	same_content "$A" "$B" $files
	must "$nsB" "$B" $CMD_SECS git annex fsck -q
	must "$nsB" "$B" $CMD_SECS git annex fsck -q --from peerA
	ok "git annex get of 8 files (17 MiB) from A, same bytes; fsck here and fsck --from peerA pass"

	# B's own file: copy --to, then git push.
	make_files "$B" from-b.bin=2097152
	must "$nsB" "$B" $CMD_SECS git annex add -q from-b.bin
	must "$nsB" "$B" $CMD_SECS git commit -q -m "B's file"
	must "$nsB" "$B" $CMD_SECS git annex copy -q --to peerA from-b.bin
	push_to_peer "$nsB" "$B" peerA "$A"
	must "$nsA" "$A" $CMD_SECS git merge -q --ff-only synced/main
	same_content "$B" "$A" from-b.bin
	must "$nsA" "$A" $CMD_SECS git annex fsck -q
	ok "git annex copy --to peerA and git push from B; A merged, has the bytes, fsck passes"

	# Both sides change; git annex sync --content brings them together.
	make_files "$A" from-a2.bin=3000000
	must "$nsA" "$A" $CMD_SECS git annex add -q from-a2.bin
	must "$nsA" "$A" $CMD_SECS git commit -q -m "A's second file"
	make_files "$B" from-b2.bin=1500000
	must "$nsB" "$B" $CMD_SECS git annex add -q from-b2.bin
	must "$nsB" "$B" $CMD_SECS git commit -q -m "B's second file"
	must "$nsB" "$B" $CMD_SECS git annex sync -q --content peerA
	same_content "$A" "$B" from-a2.bin
	must "$nsA" "$A" $CMD_SECS git merge -q --ff-only synced/main
	same_content "$B" "$A" from-b2.bin
	must "$nsA" "$A" $CMD_SECS git annex fsck -q
	must "$nsB" "$B" $CMD_SECS git annex fsck -q
	ok "git annex sync --content: each side got the other's new file; fsck passes on both"

	wait_until 5 "B's connect helpers to exit" no_helpers_left "$B"
	ok "no connect-mode helper left running in B"
	note "$label scenario took $(since "$t0" 1) s"
}

# ---------------------------------------------------------------------------
# Item 4: the allow-list, over Yggdrasil (where the source address is bound
# to the peer's key, so allowing an address is authenticating a node).

allow_list() {
	local top=$work/yggdrasil A B C url port sock touched log sink listener
	A=$top/A
	B=$top/B
	C=$top/C
	say "Allow-list over Yggdrasil: A allows B ($yggB), not C ($yggC)"
	port=$(git -C "$A" config p2p-annex.tcp.port)
	url="p2p-annex::tcp:$yggA:$port"

	# C links while nothing is refused, which proves its token is good.
	new_repo "$nsC" "$C" C
	link_to "$A" "$nsC" "$C" "$url"
	must "$nsC" "$C" $CMD_SECS git fetch -q peerA
	must "$nsC" "$C" $CMD_SECS git merge -q --ff-only peerA/main

	stop_remotedaemon "$A"
	must "$nsA" "$A" $CMD_SECS git config p2p-annex.tcp.allow "$yggB"
	start_remotedaemon "$nsA" "$A"

	must "$nsB" "$B" $CMD_SECS git annex drop -q one-mib.bin
	must "$nsB" "$B" $CMD_SECS git annex get -q --from peerA one-mib.bin
	same_content "$A" "$B" one-mib.bin
	ok "B (allowed) drops and gets again through the listener"

	if run "$nsC" "$C" $CMD_SECS git annex get -q --from peerA one-mib.bin; then
		die "C (not allowed, valid token) got a file from A"
	fi
	[ $rc -ne 124 ] || die "C's git annex get hung instead of failing"
	[ ! -e "$C/one-mib.bin" ] || die "C has the content of one-mib.bin"
	if run "$nsC" "$C" $CMD_SECS git fetch -q peerA; then
		die "C (not allowed, valid token) fetched from A"
	fi
	[ $rc -ne 124 ] || die "C's git fetch hung instead of failing"
	ok "C (not allowed, valid token): git annex get and git fetch fail at once, no content"
	# Under remotedaemon (and serve) the listeners log to
	# .git/annex/p2p-annex.tcp.log.
	log=$A/.git/annex/p2p-annex.tcp.log
	wait_until 10 "a 'refused' line naming C's address in $log" grep -qsE "refused.*$yggC|$yggC.*refused" "$log"
	! grep -E "refused.*$yggB|$yggB.*refused" "$log" >/dev/null || die "the listener refused B: $(grep -m1 "$yggB" "$log")"
	ok "A's listener log: $(grep -m1 -E "refused.*$yggC|$yggC.*refused" "$log" | cut -d' ' -f2-)"
	stop_remotedaemon "$A"

	# The listener's stderr is /dev/null under remotedaemon: run one by hand,
	# with A's configuration, in front of a unix socket that records whether
	# anything ever connected to it.
	sock=$work/run/allow.sock
	touched=$work/run/allow.touched
	log=$work/log/allow-listener.log
	start allow-sink "$nsA" socat -u "UNIX-LISTEN:$sock" "CREATE:$touched"
	sink=$last
	wait_until 10 "the recording socket" test -S "$sock"
	(cd "$A" && exec ip netns exec "$nsA" git-annex-p2p-tcp "$yggA:$((port + 1))" "$sock") \
		</dev/null >/dev/null 2>"$log" &
	track $!
	listener=$last
	wait_until 10 "the hand-run listener" grep -qs "listening on" "$log"
	run "$nsC" "$C" 10 git-annex-p2p-tcp "$yggA:$((port + 1))"
	wait_until 10 "a 'refused' line naming C's address" grep -qE "refused.*$yggC|$yggC.*refused" "$log"
	[ ! -e "$touched" ] || die "C's connection reached the unix socket"
	ok "hand-run listener refused C before touching the unix socket"
	printf 'from B\n' >"$work/run/allow.in"
	stdin_file=$work/run/allow.in run "$nsB" "$B" 10 git-annex-p2p-tcp "$yggA:$((port + 1))"
	wait_until 10 "B's bytes at the unix socket" grep -qx "from B" "$touched"
	ok "B's connection is relayed to the unix socket; C's never touched it"
	stop_pids "$listener" "$sink"
}

# ---------------------------------------------------------------------------
# Item 5: throughput over each overlay: ours, socat, and raw TCP

BENCH_BYTES=${BENCH_BYTES:-1073741824}
BENCH_RUNS=${BENCH_RUNS:-3}
# socat copies 8 KiB at a time unless told: the sinks and the raw baseline
# use 128 KiB, so that they measure the network, not socat. The "socat"
# relay keeps socat's defaults: it is what users write today.
SINK_BLOCK=131072

# socat's spelling of a host and the address family to ask for.
socat_host() { case $1 in *:*) echo "[$1]" ;; *) echo "$1" ;; esac; }
socat_family() { case $1 in *:*) echo 6 ;; *) echo 4 ;; esac; }

# One transfer of BENCH_BYTES from B to A, through KIND; appends the
# seconds to TIMES. Every process runs with its working directory in
# $work, so cleanup finds it whatever happens.
# usage: one_transfer KIND ADDR PORT TIMES
one_transfer() {
	local kind=$1 addr=$2 port=$3 times=$4 sock=$work/run/bench.sock count=$work/run/bench.count
	local host fam t0 t1 sink srv=
	host=$(socat_host "$addr")
	fam=$(socat_family "$addr")
	rm -f "$sock" "$count"
	if [ "$kind" = raw ]; then
		# The floor: TCP straight into the sink, no unix socket in between.
		(cd "$work/run" && exec ip netns exec "$nsA" socat -b $SINK_BLOCK -u "TCP$fam-LISTEN:$port,bind=$host,reuseaddr" STDOUT) \
			2>>"$work/log/bench.log" | wc -c >"$count" &
		sink=$!
	else
		(cd "$work/run" && exec ip netns exec "$nsA" socat -b $SINK_BLOCK -u "UNIX-LISTEN:$sock" STDOUT) \
			2>>"$work/log/bench.log" | wc -c >"$count" &
		sink=$!
		wait_until 10 "the bench sink" test -S "$sock"
		if [ "$kind" = ours ]; then
			(cd "$work/run" && exec ip netns exec "$nsA" git-annex-p2p-tcp "$addr:$port" "$sock") \
				2>>"$work/log/bench.log" &
		else
			# What users write today (DESIGN.md, "Peers and anchors").
			(cd "$work/run" && exec ip netns exec "$nsA" \
				socat "TCP$fam-LISTEN:$port,bind=$host,reuseaddr,fork" "UNIX-CONNECT:$sock") \
				2>>"$work/log/bench.log" &
		fi
		track $!
		srv=$last
	fi
	wait_until 10 "the bench listener" listening "$nsA" "$port"
	t0=$(now_us)
	if [ "$kind" = ours ]; then
		head -c "$BENCH_BYTES" /dev/zero |
			(cd "$work/run" && exec ip netns exec "$nsB" timeout 300 git-annex-p2p-tcp "$addr:$port") >/dev/null ||
			die "$kind: the client failed"
	elif [ "$kind" = socat ]; then
		head -c "$BENCH_BYTES" /dev/zero |
			(cd "$work/run" && exec ip netns exec "$nsB" timeout 300 socat - "TCP$fam:$host:$port,nodelay") >/dev/null ||
			die "$kind: the client failed"
	else
		head -c "$BENCH_BYTES" /dev/zero |
			(cd "$work/run" && exec ip netns exec "$nsB" timeout 300 socat -b $SINK_BLOCK -u - "TCP$fam:$host:$port") ||
			die "$kind: the client failed"
	fi
	wait "$sink"
	t1=$(now_us)
	[ -z "$srv" ] || stop_pids "$srv"
	[ "$(cat "$count")" -eq "$BENCH_BYTES" ] || die "$kind: $(cat "$count") bytes arrived, not $BENCH_BYTES"
	awk -v us=$((t1 - t0)) 'BEGIN { printf "%.3f\n", us / 1e6 }' >>"$times"
}

median() { sort -n | sed -n "$(((BENCH_RUNS + 1) / 2))p"; }

# The kinds take turns (raw, socat, ours, raw, ...), so that a change in
# the machine's load hits all of them alike.
# usage: bench_over LABEL ADDRESS-OF-A   (appends rows to $work/run/table)
bench_over() {
	local label=$1 addr=$2 kind med port=20000 mib=$((BENCH_BYTES / 1048576))
	say "Throughput over $label: $mib MiB from B to A, $BENCH_RUNS runs each"
	for kind in raw socat ours; do : >"$work/run/times-$kind"; done
	for _ in $(seq "$BENCH_RUNS"); do
		for kind in raw socat ours; do
			# A new port each time: no wait for the last one's TIME_WAIT.
			port=$((port + 1))
			one_transfer "$kind" "$addr" "$port" "$work/run/times-$kind"
		done
	done
	for kind in raw socat ours; do
		med=$(median <"$work/run/times-$kind")
		note "$kind: $(tr '\n' ' ' <"$work/run/times-$kind")s"
		awk -v label="$label" -v kind="$kind" -v med="$med" -v bytes="$BENCH_BYTES" \
			-v runs="$(xargs printf '%.2f ' <"$work/run/times-$kind")" \
			'BEGIN { printf "| %s | %s | %.2f s | %.0f MiB/s | %.2f Gbit/s | %s|\n", label, kind, med, bytes / 1048576 / med, bytes * 8 / med / 1e9, runs }' \
			>>"$work/run/table"
	done
}

# ---------------------------------------------------------------------------

setup_hosts
setup_yggdrasil
setup_wireguard
setup_tools
note "git-annex $git_annex_version, $($p2p_bin --version 2>&1 | head -n 1), $(elapsed) s so far"

if [ $bench -eq 1 ]; then
	printf '| overlay | relay | median | MiB/s | Gbit/s | runs (s) |\n|---|---|---|---|---|---|\n' >"$work/run/table"
	# The machine may be shared: the load says how far to trust the numbers.
	load0=$(cut -d' ' -f1-3 /proc/loadavg)
	bench_over "veth, no overlay" fd00:ab::1
	bench_over Yggdrasil "$yggA"
	bench_over WireGuard "$wgaddrA"
	say "Results (median of $BENCH_RUNS, $((BENCH_BYTES / 1048576)) MiB each; load average $load0 before, $(cut -d' ' -f1-3 /proc/loadavg) after; $(nproc) CPUs)"
	cat "$work/run/table"
	exit 0
fi

annex_over yggdrasil "$yggA"
allow_list
annex_over wireguard "$wgaddrA"
stop_remotedaemon "$work/wireguard/A"
[ -z "$(procs_in_work)" ] || die "processes still running in the test directory: $(procs_in_work | tr '\n' ' ')"
ok "every process started is stopped"
