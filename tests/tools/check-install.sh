#!/bin/sh
# make check-install: `make install` into a temporary DESTDIR, as a
# distribution package build does. Checks the exact tree (the binary, one
# relative link per netname, the man pages, the service files, nothing
# else), that the installed links run and take their netname from their
# name, also after the tree is moved, that BINDIR, MANDIR and the service
# file directories are obeyed (and BINDIR written into the service files),
# and that `make uninstall` removes exactly what install put there.
# (tests/tools/check-dist.sh verifies the service files themselves.)
#
# usage: tests/tools/check-install.sh MAKE "NETNAMES"   (run from the top)
set -eu

die() {
	echo "check-install.sh: $*" >&2
	exit 1
}
[ $# -eq 2 ] || die 'usage: check-install.sh MAKE "NETNAMES"'
make=$1 netnames=$2
[ -f Makefile ] && [ -f Cargo.toml ] || die "run it from the top of the source tree"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
# git config isolated from the machine's, for the address-mode check.
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
unset GIT_DIR GIT_CONFIG_COUNT 2>/dev/null || true
# The outer make's command-line variables (PREFIX=..., say) would reach the
# makes below through MAKEFLAGS and change the tree under test.
unset MAKEFLAGS MFLAGS MAKEOVERRIDES 2>/dev/null || true
mkdir "$HOME"

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

# Every file and link under DIR as "PATH TYPE [LINK-TARGET]", sorted.
tree() {
	(cd "$1" && find . -mindepth 1 \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort |
		while read -r p; do
			if [ -L "$p" ]; then echo "$p link $(readlink "$p")"; else echo "$p file"; fi
		done)
}

expected() { # expected BINDIR MANDIR SYSTEMDSYSTEMUNITDIR SYSTEMDUSERUNITDIR DATADIR (relative to DESTDIR)
	{
		echo "$1/p2p-annex file"
		for n in $netnames; do echo "$1/git-annex-p2p-$n link p2p-annex"; done
		for m in man/*.1; do echo "$2/man1/${m#man/} file"; done
		echo "$3/p2p-annex@.service file"
		echo "$4/p2p-annex@.service file"
		echo "$5/p2p-annex/openwrt/p2p-annex.init file"
		echo "$5/p2p-annex/openwrt/p2p-annex.config file"
		echo "$5/p2p-annex/openrc/p2p-annex file"
	} | LC_ALL=C sort
}

services() { # services ROOT BINDIR UNITDIR DATADIR: modes, and BINDIR in the files
	for f in "$3/p2p-annex@.service" "$4/p2p-annex/openwrt/p2p-annex.config"; do
		[ "$(stat -c %a "$1/$f")" = 644 ] || { echo "     $f: mode $(stat -c %a "$1/$f")"; return 1; }
	done
	for f in openwrt/p2p-annex.init openrc/p2p-annex; do
		[ "$(stat -c %a "$1/$4/p2p-annex/$f")" = 755 ] || { echo "     $f: not mode 755"; return 1; }
	done
	grep -qx "ExecStart=/$2/p2p-annex serve %f" "$1/$3/p2p-annex@.service" &&
		grep -qx "PROG=/$2/p2p-annex" "$1/$4/p2p-annex/openwrt/p2p-annex.init" &&
		grep -qx "command=/$2/p2p-annex" "$1/$4/p2p-annex/openrc/p2p-annex" || {
		echo "     the service files do not run /$2/p2p-annex"
		return 1
	}
}

same() { # same EXPECTED ACTUAL: print a diff when they differ
	[ "$1" = "$2" ] && return 0
	printf '%s\n' "$1" >"$work/want"
	printf '%s\n' "$2" >"$work/got"
	diff -u "$work/want" "$work/got" | sed 's/^/     /'
	return 1
}

stage=$work/stage
# Files of other packages already in the tree: uninstall must leave them.
mkdir -p "$stage/usr/bin" "$stage/usr/share/man/man1"
echo other >"$stage/usr/bin/git-annex"
echo other >"$stage/usr/share/man/man1/git-annex.1"
foreign="usr/bin/git-annex file
usr/share/man/man1/git-annex.1 file"

$make --no-print-directory install DESTDIR="$stage" PREFIX=/usr >"$work/install.log" 2>&1 ||
	{ cat "$work/install.log" >&2; die "make install DESTDIR=$stage PREFIX=/usr failed"; }
want=$(printf '%s\n%s\n' "$(expected usr/bin usr/share/man usr/lib/systemd/system usr/lib/systemd/user usr/share)" "$foreign" | LC_ALL=C sort)
check "make install PREFIX=/usr DESTDIR=...: exactly the binary, the netname links, the man pages and the service files" \
	same "$want" "$(tree "$stage")"
check "service files: units 644, scripts 755, all running /usr/bin/p2p-annex" \
	services "$stage" usr/bin usr/lib/systemd/system usr/share

modes() {
	[ "$(stat -c %a "$stage/usr/bin/p2p-annex")" = 755 ] || return 1
	for m in man/*.1; do
		[ "$(stat -c %a "$stage/usr/share/man/man1/${m#man/}")" = 644 ] || return 1
		cmp -s "$m" "$stage/usr/share/man/man1/${m#man/}" || return 1
	done
}
check "binary mode 755; man pages mode 644, identical to man/" modes

runs() { # runs DIR: the installed links run, and take the netname from their name
	out=$("$1/usr/bin/git-annex-p2p-tcp" --version) && [ "$out" = "p2p-annex $version" ] || {
		echo "     git-annex-p2p-tcp --version printed '${out:-}'"
		return 1
	}
	out=$(GIT_CONFIG_COUNT=2 \
		GIT_CONFIG_KEY_0=p2p-annex.tcp.address GIT_CONFIG_VALUE_0=192.0.2.7 \
		GIT_CONFIG_KEY_1=p2p-annex.tcp.port GIT_CONFIG_VALUE_1=5599 \
		"$1/usr/bin/git-annex-p2p-tcp" address) && [ "$out" = "192.0.2.7:5599" ] || {
		echo "     git-annex-p2p-tcp address printed '${out:-}'"
		return 1
	}
	for n in $netnames; do
		"$1/usr/bin/git-annex-p2p-$n" --version >/dev/null || return 1
	done
}
check "installed links run: git-annex-p2p-tcp --version prints 'p2p-annex $version', address mode is tcp's" runs "$stage"
mv "$stage" "$work/moved"
check "the links still work after the DESTDIR tree is moved (relative links)" runs "$work/moved"
mv "$work/moved" "$stage"

$make --no-print-directory uninstall DESTDIR="$stage" PREFIX=/usr >"$work/uninstall.log" 2>&1 ||
	{ cat "$work/uninstall.log" >&2; die "make uninstall failed"; }
check "make uninstall removes every file install put there, and nothing else" same "$foreign" "$(tree "$stage")"

# BINDIR, MANDIR and the service file directories on their own.
other=$work/other
dirs="BINDIR=/opt/pa/sbin MANDIR=/opt/pa/man SYSTEMDSYSTEMUNITDIR=/opt/pa/system SYSTEMDUSERUNITDIR=/opt/pa/user DATADIR=/opt/pa/share"
# shellcheck disable=SC2086 # $dirs is a list of words
$make --no-print-directory install DESTDIR="$other" $dirs >"$work/install2.log" 2>&1 ||
	{ cat "$work/install2.log" >&2; die "make install $dirs failed"; }
check "make install $dirs" \
	same "$(expected opt/pa/sbin opt/pa/man opt/pa/system opt/pa/user opt/pa/share)" "$(tree "$other")"
check "service files run BINDIR's /opt/pa/sbin/p2p-annex" services "$other" opt/pa/sbin opt/pa/system opt/pa/share
# shellcheck disable=SC2086
$make --no-print-directory uninstall DESTDIR="$other" $dirs >/dev/null 2>&1 ||
	die "make uninstall $dirs failed"
check "make uninstall $dirs leaves no file" same "" "$(tree "$other")"

echo "check-install: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
