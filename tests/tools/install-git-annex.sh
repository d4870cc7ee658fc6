#!/bin/sh
# Bootstrap a real git-annex for the end-to-end tests, from the PyPI wheel
# (a static build), into DIR. Idempotent: an install that already works is
# left alone. Prints DIR/bin, the directory to put first on PATH.
#
# usage: tests/tools/install-git-annex.sh DIR
#
# When running git-annex from DIR/bin, set MAGIC=DIR/py/git_annex/magic.mgc
# (the wheel's own file-type database; its Python launcher does the same).
set -eu

die() {
	echo "install-git-annex.sh: $*" >&2
	exit 1
}

[ $# -eq 1 ] || die "usage: install-git-annex.sh DIR"
dir=$1
mkdir -p "$dir" || die "cannot create $dir"
dir=$(cd "$dir" && pwd)
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

make_links() {
	[ -x "$exe" ] || die "pip installed no $exe"
	mkdir -p "$bin"
	# git-remote-p2p-annex: git needs it for p2p-annex:: remotes and the wheel
	# does not install it; git-annex is multicall and dispatches on its name.
	for name in git-annex git-annex-shell git-remote-p2p-annex; do
		ln -sfn "$exe" "$bin/$name"
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
echo "$bin"
