#!/bin/sh
# make check-vendor: the offline build a distribution does. In a copy of
# the source tree (the files git knows, as a release tarball has them):
# `make vendor`, then `make` with --offline, the vendored sources and an
# empty cargo home, so that nothing can come from a registry or a cache.
#
# usage: tests/tools/check-vendor.sh MAKE   (run from the top of a git checkout)
set -eu

die() {
	echo "check-vendor.sh: $*" >&2
	exit 1
}
[ $# -eq 1 ] || die "usage: check-vendor.sh MAKE"
make=$1
git rev-parse --show-toplevel >/dev/null 2>&1 || die "not a git checkout"
# Command-line variables of the outer make must not reach the makes below.
unset MAKEFLAGS MFLAGS MAKEOVERRIDES CARGO_TARGET_DIR 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-vendor.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

src=$work/src
mkdir "$src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$src"

cd "$src"
$make --no-print-directory vendor >"$work/vendor.log" 2>&1 || { cat "$work/vendor.log" >&2; die "make vendor failed"; }
[ -f vendor/cargo-config.toml ] || die "make vendor wrote no vendor/cargo-config.toml"
mkdir "$work/empty-cargo-home"
CARGO_HOME=$work/empty-cargo-home \
	$make --no-print-directory all CARGOFLAGS="--offline --config vendor/cargo-config.toml" >"$work/build.log" 2>&1 ||
	{ cat "$work/build.log" >&2; die "the offline build from vendor/ failed"; }
out=$(target/release/p2p-annex --version)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ "$out" = "p2p-annex $version" ] || die "the offline build printed '$out' for --version"
echo "ok   make vendor, then an offline build with an empty cargo home: $out"
echo "check-vendor: 1 passed, 0 failed"
