#!/bin/sh
# fowl and the magic-wormhole mailbox server from PyPI, at pinned versions,
# in a Python venv: for the fowl tests (tests/support/fowl.rs), the fowl
# study (run-study.sh) and tests/tools/install-deps.sh, which builds it up
# front. Idempotent and safe to run several times at once (a lock): a venv
# whose stamp names the pinned versions is left alone; anything else is
# removed and made again. Fails loudly (exit 1, pip's own message) when PyPI
# cannot be reached. Prints the venv's directory.
#
# usage: tests/tools/fowl/install-venv.sh [VENV]   (default: target/fowl-venv
#        of this repository, or $FOWL_VENV)
set -eu
PINS="fowl==26.8.0 magic-wormhole-mailbox-server==0.8.0"

die() {
	echo "install-venv.sh: $*" >&2
	exit 1
}

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
venv=${1:-${FOWL_VENV:-$top/target/fowl-venv}}
case $venv in /*) ;; *) venv=$(pwd)/$venv ;; esac
parent=$(dirname "$venv")
mkdir -p "$parent" || die "cannot create $parent"
stamp=$venv/.p2p-annex-pins

ready() {
	[ -x "$venv/bin/fowld" ] && [ -x "$venv/bin/twistd" ] &&
		[ "$(cat "$stamp" 2>/dev/null)" = "$PINS" ]
}

# Tests run in parallel and may all ask at once: one builds, the others
# wait for it (the lock file lives beside the venv, which may not exist yet).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$venv.lock"
	flock 9
fi

if ! ready; then
	command -v python3 >/dev/null 2>&1 ||
		die "python3 not found (Debian: apt-get install python3 python3-venv)"
	python3 -c 'import ensurepip, venv' 2>/dev/null ||
		die "python3's venv module cannot make venvs (Debian: apt-get install python3-venv; tests/tools/install-deps.sh does)"
	rm -rf "$venv"
	echo "install-venv.sh: $PINS from PyPI into $venv" >&2
	python3 -m venv "$venv" || die "python3 -m venv $venv failed"
	# A short timeout and few retries: offline, fail in about a minute, not ten.
	# shellcheck disable=SC2086 # the pins are words
	if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --timeout 20 --retries 2 \
		$PINS >&2; then
		rm -rf "$venv"
		die "pip install $PINS failed (is PyPI reachable? see pip's message above)"
	fi
	if [ ! -x "$venv/bin/fowld" ] || [ ! -x "$venv/bin/twistd" ]; then
		rm -rf "$venv"
		die "pip installed no fowld or twistd into $venv"
	fi
	"$venv/bin/python" -c 'import fowl, wormhole_mailbox_server' || {
		rm -rf "$venv"
		die "fowl or the mailbox server does not import in $venv"
	}
	echo "$PINS" >"$stamp"
fi
echo "$venv"
