#!/bin/sh
# git-annex from the PyPI wheel (a static build), into DIR: for the
# end-to-end tests, and for `make install-git-annex` on distributions whose
# own git-annex predates the generic P2P transport (Debian 12). Idempotent:
# an install that already works is left alone. Prints DIR/bin, the
# directory to put first on PATH.
#
# usage: tests/tools/install-git-annex.sh DIR
#        tests/tools/install-git-annex.sh DIR BINDIR [FINAL-DIR]
#        tests/tools/install-git-annex.sh --uninstall DIR BINDIR
#
# When running git-annex from DIR/bin, set MAGIC=DIR/py/git_annex/magic.mgc
# (the wheel's own file-type database; its Python launcher does the same).
# With BINDIR, it also writes git-annex, git-annex-shell and
# git-remote-p2p-annex into BINDIR: small scripts that set MAGIC and run
# the binary, so they work from PATH with nothing else set. FINAL-DIR is
# where DIR will be at run time (a DESTDIR install); default DIR.
# --uninstall removes those scripts (only ours) and DIR (only if it holds
# the wheel).
set -eu

# The programs users and git run: git-remote-p2p-annex is what git needs for
# p2p-annex:: remotes, and the wheel does not install it; git-annex is
# multicall and dispatches on its name.
NAMES="git-annex git-annex-shell git-remote-p2p-annex"
# The wrappers' second line: uninstall removes only files that carry it.
MARK="# git-annex from PyPI, installed by p2p-annex (make install-git-annex)."

die() {
	echo "install-git-annex.sh: $*" >&2
	exit 1
}

usage='usage: install-git-annex.sh [--uninstall] DIR [BINDIR [FINAL-DIR]]'

if [ "${1:-}" = --uninstall ]; then
	[ $# -eq 3 ] || die "$usage"
	dir=$2 bindir=$3
	for name in $NAMES; do
		f=$bindir/$name
		if [ -f "$f" ] && sed -n 2p "$f" | grep -qxF "$MARK"; then
			rm -f "$f"
		fi
	done
	if [ -x "$dir/py/git_annex/git-annex" ]; then
		rm -rf "$dir"
		# The lib/p2p-annex directory above it, when nothing else is left.
		rmdir "$(dirname "$dir")" 2>/dev/null || true
	fi
	exit 0
fi

[ $# -ge 1 ] && [ $# -le 3 ] || die "$usage"
dir=$1
bindir=${2:-}
final=${3:-}
mkdir -p "$dir" || die "cannot create $dir"
dir=$(cd "$dir" && pwd)
[ -n "$final" ] || final=$dir
case $final in
/*) ;;
*) die "FINAL-DIR must be an absolute path, not '$final'" ;;
esac
case $final in *"'"* | *"
"*) die "FINAL-DIR must not contain a quote or a newline" ;; esac
bin=$dir/bin
exe=$dir/py/git_annex/git-annex

# An install counts as working only if the binary actually runs.
works() {
	[ -x "$bin/git-annex" ] && MAGIC=$dir/py/git_annex/magic.mgc \
		"$bin/git-annex" version --raw >/dev/null 2>&1
}

# pip may be missing on a fresh Debian; as root we can fix that ourselves.
ensure_pip() {
	python3 -m pip --version >/dev/null 2>&1 && return 0
	command -v python3 >/dev/null 2>&1 ||
		die "python3 not found; install it (Debian: apt-get install python3 python3-pip)"
	[ "$(id -u)" -eq 0 ] ||
		die "pip for python3 is missing; install it (Debian: sudo apt-get install python3-pip)"
	command -v apt-get >/dev/null 2>&1 ||
		die "pip for python3 is missing and apt-get is not available; install pip for python3"
	echo "install-git-annex.sh: installing python3-pip with apt-get" >&2
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
		die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null ||
		die "apt-get install python3-pip failed"
	python3 -m pip --version >/dev/null 2>&1 || die "pip still not usable after installing python3-pip"
}

# --target installs never touch the system site-packages, so Debian 12's
# "externally managed environment" guard (PEP 668) does not apply; pip still
# checks it, hence --break-system-packages where pip knows that option.
pip_install() {
	extra=
	if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
		extra=--break-system-packages
	fi
	# shellcheck disable=SC2086 # $extra is one word or nothing
	PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
		$extra --upgrade --target "$dir/py" git-annex >&2 ||
		die "pip install --target $dir/py git-annex failed (see pip's message above)"
}

# Relative links, so a DESTDIR tree still works where it is installed.
make_links() {
	[ -x "$exe" ] || die "pip installed no $exe"
	mkdir -p "$bin"
	for name in $NAMES; do
		ln -sfn ../py/git_annex/git-annex "$bin/$name"
	done
}

# A script per program in BINDIR: MAGIC (unless the user set it), then the
# binary under the program's name.
write_wrappers() {
	mkdir -p "$bindir" || die "cannot create $bindir"
	for name in $NAMES; do
		f=$bindir/$name
		if [ -e "$f" ] && ! sed -n 2p "$f" 2>/dev/null | grep -qxF "$MARK"; then
			die "$f exists and is not ours: remove it first (or choose another BINDIR)"
		fi
		printf '#!/bin/sh\n%s\nMAGIC=${MAGIC:-'"'"'%s/py/git_annex/magic.mgc'"'"'}\nexport MAGIC\nexec '"'"'%s/bin/%s'"'"' "$@"\n' \
			"$MARK" "$final" "$final" "$name" >"$f.tmp" && chmod 0755 "$f.tmp" && mv -f "$f.tmp" "$f" ||
			die "cannot write $f"
	done
}

# Parallel test runs may bootstrap the same DIR at once: serialize them.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$dir/.install.lock"
	flock 9
fi

if ! works; then
	ensure_pip
	pip_install
	make_links
	works || die "$bin/git-annex was installed but does not run"
fi
if [ -n "$bindir" ]; then
	# An install for users: no lock file left in their tree.
	rm -f "$dir/.install.lock"
	write_wrappers
	# The wrappers run where FINAL-DIR is; here that is DIR unless staged.
	if [ "$final" = "$dir" ]; then
		"$bindir/git-annex" version --raw >/dev/null 2>&1 ||
			die "$bindir/git-annex was written but does not run"
	fi
fi
echo "$bin"
