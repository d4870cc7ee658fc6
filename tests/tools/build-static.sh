#!/bin/sh
# make static: fully static, stripped musl binaries at
# TARGET-DIR/<triple>/release/p2p-annex, one per TRIPLE. Adds the rustup
# targets it needs (they are as much a build input as the crates).
#
# Where the NIGHTLY toolchain is installed, std is rebuilt with the
# project's size profile (-Zbuild-std) and panic=immediate-abort: no panic
# message, backtrace symbolizer or unwinder is linked in, which halves the
# binary (README, Packaging); nor unwind tables. p2p-annex never panics on outside input, so
# the only thing lost is the message of a bug's panic: the process still
# dies at once (SIGILL/SIGABRT instead of exit 101). Otherwise, or when the
# nightly build fails in auto mode, the stable toolchain builds it as before.
#
# usage: tests/tools/build-static.sh auto|yes|no NIGHTLY TARGET-DIR TRIPLE...
#   auto: nightly when it is there, else stable; yes: nightly or fail;
#   no: stable only.
#        tests/tools/build-static.sh --abort-flags NIGHTLY
#   prints the rustc flags that select immediate-abort on NIGHTLY (for
#   the armv7 build), or nothing when it takes only the older cargo flag.
#
# Environment: CARGO (default cargo), CARGOFLAGS (added to each build),
# AARCH64_LINKER (default rust-lld).
set -eu

die() {
	echo "build-static.sh: $*" >&2
	exit 1
}
say() { echo "build-static.sh: $*" >&2; }

# The spelling changed in late 2025: recent nightlies have a panic strategy
# of its own (rustc -Cpanic=immediate-abort, unstable); older ones had a std
# feature (cargo -Zbuild-std-features=panic_immediate_abort), which the
# recent ones reject. Ask rustc which one it takes rather than guess from
# the version. Prints "rustc FLAGS" or "cargo FLAGS".
# Nothing unwinds once panics abort at once: no unwind tables either
# (.eh_frame was 47 KiB of the x86-64 binary).
no_unwind=-Cforce-unwind-tables=no
abort_flags() {
	if rustc +"$1" -Zunstable-options -Cpanic=immediate-abort --print cfg >/dev/null 2>&1; then
		echo "rustc -Zunstable-options -Cpanic=immediate-abort $no_unwind"
	else
		echo "cargo -Zbuild-std-features=panic_immediate_abort"
	fi
}

if [ "${1:-}" = --abort-flags ]; then
	[ $# -eq 2 ] || die "usage: build-static.sh --abort-flags NIGHTLY"
	case $(abort_flags "$2") in rustc\ *) abort_flags "$2" | cut -d' ' -f2- ;; esac
	exit 0
fi

[ $# -ge 4 ] || die "usage: build-static.sh auto|yes|no NIGHTLY TARGET-DIR TRIPLE..."
mode=$1 nightly=$2 target_dir=$3
shift 3
case $mode in auto | yes | no) ;; *) die "STATIC_NIGHTLY must be auto, yes or no, not '$mode'" ;; esac
cargo=${CARGO:-cargo}
cargoflags=${CARGOFLAGS:-}
aarch64_linker=${AARCH64_LINKER:-rust-lld}

have_target() { # have_target TOOLCHAIN-SYSROOT TRIPLE
	[ -d "$1/lib/rustlib/$2/lib" ]
}

# The stable (default) toolchain's std for each target: always needed, for
# the fallback and for the crt objects below.
sysroot=$(rustc --print sysroot) || die "rustc is missing"
for t in "$@"; do
	have_target "$sysroot" "$t" && continue
	command -v rustup >/dev/null 2>&1 ||
		die "the $t target is not installed and rustup is missing: install the std of $t for your rustc"
	say "rustup target add $t"
	rustup target add "$t" >&2 || die "rustup target add $t failed"
done

# Is the nightly route open? Adds rust-src when the toolchain is there.
nightly_ok() {
	[ "$mode" = no ] && return 1
	command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q "^$nightly" || {
		[ "$mode" = yes ] && die "no $nightly toolchain (rustup toolchain install $nightly --profile minimal)"
		say "no $nightly toolchain: stable build (rustup toolchain install $nightly --profile minimal for binaries half the size)"
		return 1
	}
	nsysroot=$(rustc +"$nightly" --print sysroot)
	if [ ! -d "$nsysroot/lib/rustlib/src/rust/library" ]; then
		say "rustup component add rust-src --toolchain $nightly"
		rustup component add rust-src --toolchain "$nightly" >&2 || {
			[ "$mode" = yes ] && die "rustup component add rust-src --toolchain $nightly failed"
			say "no rust-src for $nightly: stable build"
			return 1
		}
	fi
	case $(abort_flags "$nightly") in
	rustc\ *) rflags=$(abort_flags "$nightly" | cut -d' ' -f2-) cflags= ;;
	*) rflags=$no_unwind cflags=$(abort_flags "$nightly" | cut -d' ' -f2-) ;;
	esac
	return 0
}

# Environment name of a cargo per-target setting: aarch64-unknown-linux-musl
# -> AARCH64_UNKNOWN_LINUX_MUSL.
upper() { echo "$1" | tr 'a-z-' 'A-Z_'; }

# The musl start files and libc come with a target's rustup std, in
# lib/self-contained. nightly gets them from its own std of the target
# when rustup has one; otherwise (rustup's mirror may lack a nightly std)
# from the stable toolchain's, named to the linker explicitly, for a
# non-PIE static binary (the start files of static-pie differ).
crt_flags() { # crt_flags TRIPLE
	have_target "$nsysroot" "$1" && return 0
	rustup target add --toolchain "$nightly" "$1" >/dev/null 2>&1 && have_target "$nsysroot" "$1" && return 0
	sc=$sysroot/lib/rustlib/$1/lib/self-contained
	[ -f "$sc/crt1.o" ] || return 1
	printf '%s' "-C relocation-model=static -C link-self-contained=no -L $sc \
-Zpre-link-arg=$sc/crt1.o -Zpre-link-arg=$sc/crti.o -Zpre-link-arg=$sc/crtbegin.o \
-Clink-arg=$sc/crtend.o -Clink-arg=$sc/crtn.o"
}

build() { # build TRIPLE stable|nightly
	t=$1
	u=$(upper "$t")
	# aarch64 links with rust-lld (no cross gcc); x86_64 with the host's cc.
	linker=
	case $t in aarch64-*) linker="CARGO_TARGET_${u}_LINKER=$aarch64_linker" ;; esac
	if [ "$2" = nightly ]; then
		extra=$(crt_flags "$t") || {
			say "$t: no musl start files for $nightly"
			return 1
		}
		# shellcheck disable=SC2086 # flag lists; $linker is one word or nothing
		env $linker "CARGO_TARGET_${u}_RUSTFLAGS=$rflags $extra" \
			$cargo +"$nightly" build --release --locked $cargoflags \
			-Zbuild-std=std,panic_abort $cflags --target "$t"
	else
		# shellcheck disable=SC2086
		env $linker $cargo build --release --locked $cargoflags --target "$t"
	fi
}

use_nightly=no
nightly_ok && use_nightly=yes
for t in "$@"; do
	how=stable
	if [ "$use_nightly" = yes ] && build "$t" nightly; then
		how="$nightly -Zbuild-std, panic=immediate-abort"
	else
		if [ "$use_nightly" = yes ]; then
			[ "$mode" = yes ] && die "$t: the $nightly build failed"
			say "$t: the $nightly build failed; building with stable"
		fi
		build "$t" stable || die "$t: build failed"
	fi
	f=$target_dir/$t/release/p2p-annex
	printf '%s: %s bytes (%s)\n' "$f" "$(stat -c %s "$f")" "$how"
done
