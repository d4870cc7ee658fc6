#!/bin/sh
# make check-dist: the service files of `p2p-annex serve` as `make install`
# writes them. systemd-analyze verify on the system and the user unit (for
# an instance, as systemctl would start it; against the installed binary
# and man page, which verify looks for), sh -n on the procd and OpenRC
# scripts. Any output of systemd-analyze fails: it only warns about unknown
# keys and bad values.
#
# usage: tests/tools/check-dist.sh MAKE   (run from the top)
set -eu

die() {
	echo "check-dist.sh: $*" >&2
	exit 1
}
[ $# -eq 1 ] || die "usage: check-dist.sh MAKE"
make=$1
[ -f Makefile ] && [ -d dist ] || die "run it from the top of the source tree"
command -v systemd-analyze >/dev/null 2>&1 ||
	die "systemd-analyze is missing (Debian: apt-get install systemd)"
command -v systemd-escape >/dev/null 2>&1 || die "systemd-escape is missing"

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
unset MAKEFLAGS MFLAGS MAKEOVERRIDES 2>/dev/null || true

passed=0
failed=0
check() { # check WHAT COMMAND...
	what=$1
	shift
	if "$@"; then
		passed=$((passed + 1))
		echo "ok   $what"
	else
		failed=$((failed + 1))
		echo "FAIL $what"
	fi
}

# Installed with BINDIR the staging tree's own, so ExecStart names a binary
# that exists (systemd-analyze verify checks it).
stage=$work/stage
bindir=$stage/usr/bin
$make --no-print-directory install DESTDIR= PREFIX="$stage/usr" >"$work/install.log" 2>&1 ||
	{ cat "$work/install.log" >&2; die "make install PREFIX=$stage/usr failed"; }

no_placeholder() {
	! grep -rn '@BINDIR@' "$stage/usr/lib/systemd" "$stage/usr/share/p2p-annex"
}
check "no @BINDIR@ left in the installed service files" no_placeholder

execstart() { # execstart UNIT: ExecStart is the installed binary, serve %f
	grep -qx "ExecStart=$bindir/p2p-annex serve %f" "$1"
}
check "system unit: ExecStart=$bindir/p2p-annex serve %f" execstart "$stage/usr/lib/systemd/system/p2p-annex@.service"
check "user unit: ExecStart=$bindir/p2p-annex serve %f" execstart "$stage/usr/lib/systemd/user/p2p-annex@.service"

instance=$(systemd-escape --path "/srv/my annex")
[ "$instance" = 'srv-my\x20annex' ] || die "systemd-escape --path printed $instance"

verify() { # verify MODE DIR: systemd-analyze verify an instance, silently
	out=$(cd "$2" && MANPATH="$stage/usr/share/man" XDG_RUNTIME_DIR="$work/run" \
		systemd-analyze "$1" verify "p2p-annex@$instance.service" 2>&1) && [ -z "$out" ] || {
		printf '%s\n' "$out" | sed 's/^/     /'
		return 1
	}
}
mkdir -m 0700 "$work/run"
check "systemd-analyze verify p2p-annex@$instance.service (system)" \
	verify --system "$stage/usr/lib/systemd/system"
check "systemd-analyze --user verify p2p-annex@$instance.service" \
	verify --user "$stage/usr/lib/systemd/user"

# The check must be able to fail: a misspelt key and a missing binary.
broken() { # broken SED: the system unit edited must not verify
	mkdir -p "$work/broken"
	sed "$1" "$stage/usr/lib/systemd/system/p2p-annex@.service" >"$work/broken/p2p-annex@.service"
	! verify --system "$work/broken" >/dev/null
}
check "verify fails on a misspelt key (Typo=simple)" broken 's/^Type=/Typo=/'
check "verify fails on a missing ExecStart binary" broken "s|$bindir|$work/nowhere|"

check "sh -n openwrt/p2p-annex.init" sh -n "$stage/usr/share/p2p-annex/openwrt/p2p-annex.init"
check "sh -n openrc/p2p-annex" sh -n "$stage/usr/share/p2p-annex/openrc/p2p-annex"
for f in openwrt/p2p-annex.init openrc/p2p-annex; do
	check "$f is executable (mode 755)" test "$(stat -c %a "$stage/usr/share/p2p-annex/$f")" = 755
done

echo "check-dist: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
