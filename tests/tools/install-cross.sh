#!/bin/sh
# Install what the static builds and the emulated tests need, and nothing
# that is already there: rustup's std for the musl TARGETS, Debian's
# qemu-user-static (as root) and, for armv7, the nightly toolchain's
# rust-src, Debian's arm cross gcc (as root) and Debian's armhf musl,
# unpacked into MUSL-ROOT.
#
# usage: tests/tools/install-cross.sh ARMV7 NIGHTLY "TARGETS" MUSL-ROOT
#   ARMV7: auto (armv7 pieces only when the NIGHTLY toolchain is installed;
#   problems are reported and armv7 is left out), yes (fail without them),
#   no (leave armv7 alone). The nightly toolchain itself is never
#   installed here: a whole toolchain is not a build dependency to fetch
#   behind the user's back.
set -eu

die() {
	echo "install-cross.sh: $*" >&2
	exit 1
}
say() { echo "install-cross.sh: $*" >&2; }

[ $# -eq 4 ] || die 'usage: install-cross.sh auto|yes|no NIGHTLY "TARGETS" MUSL-ROOT'
armv7=$1 nightly=$2 targets=$3 musl_root=$4
case $armv7 in auto | yes | no) ;; *) die "ARMV7 must be auto, yes or no, not '$armv7'" ;; esac

is_root() { [ "$(id -u)" -eq 0 ]; }

updated=
apt_install() {
	is_root || return 1
	command -v apt-get >/dev/null 2>&1 || return 1
	export DEBIAN_FRONTEND=noninteractive
	if [ -z "$updated" ]; then
		# An index out of step on the mirror fails the update: go on with
		# what was fetched, and let the install below fail if something
		# it needs is really missing.
		apt-get update -qq >&2 || say "apt-get update reported errors; trying the install anyway"
		updated=1
	fi
	say "apt-get install $*"
	apt-get install -y -qq --no-install-recommends "$@" >&2
}

# rustup's prebuilt std for the musl targets.
command -v rustup >/dev/null 2>&1 ||
	die "rustup is missing: install the std of $targets for your rustc another way, or install rustup"
sysroot=$(rustc --print sysroot)
for t in $targets; do
	[ -d "$sysroot/lib/rustlib/$t" ] && continue
	say "rustup target add $t"
	rustup target add "$t" >&2 || die "rustup target add $t failed"
done

# qemu-user, called explicitly (binfmt_misc is often not mounted, e.g. in
# containers and CI machines).
if ! command -v qemu-aarch64-static >/dev/null 2>&1; then
	apt_install qemu-user-static ||
		die "qemu-aarch64-static is missing; as root: apt-get install qemu-user-static"
fi

[ "$armv7" = no ] && exit 0

# armv7 from here: problems are fatal only with ARMV7=yes.
armv7_fail() {
	[ "$armv7" = yes ] && die "$*"
	say "armv7 left out: $*"
	exit 0
}

rustup toolchain list | grep -q "^$nightly" ||
	armv7_fail "no $nightly toolchain (rustup toolchain install $nightly --profile minimal)"
nsysroot=$(rustc +"$nightly" --print sysroot)
if [ ! -d "$nsysroot/lib/rustlib/src/rust/library" ]; then
	say "rustup component add rust-src --toolchain $nightly"
	rustup component add rust-src --toolchain "$nightly" >&2 ||
		armv7_fail "rustup component add rust-src --toolchain $nightly failed"
fi

# The cross gcc is an ordinary amd64 package: it links, and brings the start
# files musl lacks (crtbegin/crtend) and the unwinder (libgcc_eh).
if ! command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1; then
	apt_install gcc-arm-linux-gnueabihf ||
		armv7_fail "arm-linux-gnueabihf-gcc is missing; as root: apt-get install gcc-arm-linux-gnueabihf"
fi

# Debian's armhf musl (libc.a and crt*.o), unpacked under MUSL-ROOT rather
# than installed: installing it would need `dpkg --add-architecture armhf`,
# which makes every later `apt-get update` on the machine fetch armhf
# indexes too (and fail whenever one of them is out of step on the
# mirror, as bookworm-security's was here). So apt runs with its own
# state, for armhf only, using the machine's sources and keys.
if [ ! -f "$musl_root/usr/lib/arm-linux-musleabihf/libc.a" ]; then
	command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
		armv7_fail "needs apt-get and dpkg-deb to fetch Debian's musl-dev:armhf (or set ARMV7_MUSL to an armhf musl)"
	apt=$musl_root.apt
	rm -rf "$apt"
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
	: >"$apt/status"
	set -- -o APT::Architecture=armhf -o APT::Architectures::=armhf \
		-o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" \
		-o Dir::State::status="$apt/status" -o Debug::NoLocking=1
	is_root && set -- "$@" -o APT::Sandbox::User=root
	say "fetching Debian's musl-dev:armhf into $musl_root"
	# An index of another suite that fails (out of step on the mirror) does
	# not matter as long as the download below finds the package.
	apt-get "$@" update -qq >"$apt/update.log" 2>&1 ||
		say "apt-get update (armhf) reported errors; trying the download anyway"
	(cd "$apt/debs" && apt-get "$@" download musl-dev >&2) || {
		cat "$apt/update.log" >&2
		armv7_fail "cannot download musl-dev:armhf"
	}
	mkdir -p "$musl_root"
	dpkg-deb -x "$apt"/debs/musl-dev_*.deb "$musl_root"
	rm -rf "$apt"
	[ -f "$musl_root/usr/lib/arm-linux-musleabihf/libc.a" ] ||
		armv7_fail "musl-dev:armhf has no usr/lib/arm-linux-musleabihf/libc.a"
fi
exit 0
