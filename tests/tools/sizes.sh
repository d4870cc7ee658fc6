#!/bin/sh
# make sizes: the size of each binary built under TARGET-DIR, as the
# Markdown table the README's Packaging section shows (paste it there after
# a release build, so the numbers are the current build's), with the rustc
# that built each and whether std went in with panic=immediate-abort.
#
# usage: tests/tools/sizes.sh TARGET-DIR TRIPLE...
set -eu
[ $# -ge 1 ] || { echo "usage: sizes.sh TARGET-DIR TRIPLE..." >&2; exit 2; }
dir=$1
shift
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)

row() { # row NAME FILE
	[ -f "$2" ] || return 0
	bytes=$(stat -c %s "$2")
	rustc=$(readelf -p .comment "$2" 2>/dev/null | grep -o 'rustc version [^ ]*' | head -n 1 | cut -d' ' -f3)
	# A std built with immediate-abort has no panic message to print.
	if grep -q 'panicked at' "$2"; then how="rustc ${rustc:-?}"; else how="rustc ${rustc:-?}, std rebuilt, panic=immediate-abort"; fi
	printf '| `%s` | %s bytes (%s KiB) | %s |\n' "$1" \
		"$(printf '%s' "$bytes" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta')" "$(awk "BEGIN { printf \"%.0f\", $bytes / 1024 }")" "$how"
}

echo "| build | size ($version) | built with |"
echo "|---|---|---|"
row "make (glibc, $(uname -m))" "$dir/release/p2p-annex"
for t in "$@"; do row "$t" "$dir/$t/release/p2p-annex"; done
