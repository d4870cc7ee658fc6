# p2p-annex — build, test, install.
# Packagers: make && make install DESTDIR=/tmp/pkg PREFIX=/usr
# Routers and NAS boxes: make static (see README, Packaging).

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
# Service files (`p2p-annex serve`): systemd units, and the procd and
# OpenRC scripts under DATADIR/p2p-annex to copy into /etc/init.d.
SYSTEMDSYSTEMUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSTEMDUSERUNITDIR ?= $(PREFIX)/lib/systemd/user
DATADIR ?= $(PREFIX)/share
DESTDIR ?=
CARGO ?= cargo
CARGOFLAGS ?=

# Netnames installed as links to the binary (git-annex-p2p-NETNAME).
NETNAMES = tcp socks unix-sockets onion
NETNAMES += fowl
MANPAGES = $(wildcard man/*.1)
# dist/ source, installed path, mode; @BINDIR@ in them becomes $(BINDIR).
SERVICE_FILES = \
	dist/systemd/system/p2p-annex@.service $(SYSTEMDSYSTEMUNITDIR)/p2p-annex@.service 0644 \
	dist/systemd/user/p2p-annex@.service $(SYSTEMDUSERUNITDIR)/p2p-annex@.service 0644 \
	dist/openwrt/p2p-annex.init $(DATADIR)/p2p-annex/openwrt/p2p-annex.init 0755 \
	dist/openwrt/p2p-annex.config $(DATADIR)/p2p-annex/openwrt/p2p-annex.config 0644 \
	dist/openrc/p2p-annex $(DATADIR)/p2p-annex/openrc/p2p-annex 0755
# cargo's output directory (CARGO_TARGET_DIR is honoured).
TARGET_DIR = $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
# The binary `make install` copies; point it at a static build to stage a
# tree for another machine (BIN=target/aarch64-unknown-linux-musl/release/p2p-annex).
BIN = $(TARGET_DIR)/release/p2p-annex
# Where the tests and the demo put a git-annex from PyPI when none is on PATH.
GIT_ANNEX_DIR = target/git-annex

# Static builds. rustup ships the std of these two musl targets; aarch64
# links with the rust-lld that comes with every rustup toolchain (no cross
# gcc needed). Distributions with their own toolchain may set the linker.
STATIC_TARGETS = x86_64-unknown-linux-musl aarch64-unknown-linux-musl
AARCH64_LINKER ?= rust-lld
# armv7 (32-bit ARM, hard float): rustup has no std to download for it here,
# so std is built from source with nightly (-Zbuild-std) against Debian's
# armhf musl (unpacked under target/ by cross-deps) and linked by the cross
# gcc, which brings the crt objects musl lacks (crtbegin/crtend) and the
# unwinder (libgcc_eh).
ARMV7 = armv7-unknown-linux-musleabihf
NIGHTLY ?= nightly
ARMV7_CC ?= arm-linux-gnueabihf-gcc
ARMV7_MUSL_ROOT = $(abspath $(TARGET_DIR))/armhf-musl
ARMV7_MUSL ?= $(ARMV7_MUSL_ROOT)/usr/lib/arm-linux-musleabihf
# std links -lunwind; for a static armv7 binary that is libgcc_eh.
ARMV7_UNWIND ?= $(shell $(ARMV7_CC) -print-file-name=libgcc_eh.a 2>/dev/null)
ARMV7_LINKDIR = $(abspath $(TARGET_DIR))/armv7-link
# auto: build and test armv7 in check-cross when the nightly toolchain is
# there (CI machines may not have it); yes: insist on it; no: leave it out.
CROSS_ARMV7 ?= auto
# True when everything static-armv7 needs is installed.
ARMV7_READY = rustup toolchain list 2>/dev/null | grep -q '^$(NIGHTLY)' \
	&& test -d "$$(rustc +$(NIGHTLY) --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library" \
	&& command -v $(ARMV7_CC) >/dev/null && test -f $(ARMV7_MUSL)/libc.a

.PHONY: all install uninstall check check-install check-cross check-vendor check-dist \
	cross-deps lint-man demo bench clean git-annex static static-armv7 vendor \
	check-overlay bench-overlay fuzz-smoke repro-race
.PHONY: install-git-annex uninstall-git-annex check-deps sizes first-hour lint-code check-msrv

all:
	$(CARGO) build --release --locked $(CARGOFLAGS)

# The netname links are relative, so a DESTDIR tree still works after it
# is moved; uninstall removes exactly these files.
install:
	@test -x $(BIN) || { echo "make install: run 'make' first ($(BIN) is missing)" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/p2p-annex
	for n in $(NETNAMES); do ln -sfn p2p-annex $(DESTDIR)$(BINDIR)/git-annex-p2p-$$n; done
	install -m 0644 $(MANPAGES) $(DESTDIR)$(MANDIR)/man1/
	@set -- $(SERVICE_FILES); while [ $$# -ge 3 ]; do \
		echo "install $$1 -> $(DESTDIR)$$2"; \
		install -d "$$(dirname "$(DESTDIR)$$2")" && \
		sed 's|@BINDIR@|$(BINDIR)|g' "$$1" > "$(DESTDIR)$$2.tmp" && \
		chmod "$$3" "$(DESTDIR)$$2.tmp" && mv "$(DESTDIR)$$2.tmp" "$(DESTDIR)$$2" || exit 1; \
		shift 3; \
	done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/p2p-annex
	for n in $(NETNAMES); do rm -f $(DESTDIR)$(BINDIR)/git-annex-p2p-$$n; done
	for m in $(notdir $(MANPAGES)); do rm -f $(DESTDIR)$(MANDIR)/man1/$$m; done
	@set -- $(SERVICE_FILES); while [ $$# -ge 3 ]; do \
		echo "rm -f $(DESTDIR)$$2"; rm -f "$(DESTDIR)$$2"; shift 3; \
	done
	rmdir $(DESTDIR)$(DATADIR)/p2p-annex/openwrt $(DESTDIR)$(DATADIR)/p2p-annex/openrc \
		$(DESTDIR)$(DATADIR)/p2p-annex 2>/dev/null || true

# The whole test suite: unit tests, the binary against real peers, and
# real git-annex repositories syncing through it (git-annex comes from
# PyPI into $(GIT_ANNEX_DIR) when it is not on PATH), and make install.
check: check-deps lint-man git-annex check-install check-dist
	$(CARGO) test --locked $(CARGOFLAGS)

# What check needs besides Rust and git (mandoc, socat, dante-server, pip):
# installed with apt-get when run as root, else named (issue 16).
check-deps:
	@tests/tools/install-deps.sh

# make install into a temporary DESTDIR: the exact tree, working links,
# and an uninstall that leaves no file behind.
check-install: all
	tests/tools/check-install.sh "$(MAKE)" "$(NETNAMES)"

# The service files as installed: systemd-analyze verify on the units
# (system and user), sh -n on the procd and OpenRC scripts.
check-dist: all
	tests/tools/check-dist.sh "$(MAKE)"

git-annex:
	@command -v git-annex >/dev/null 2>&1 || tests/tools/install-git-annex.sh $(GIT_ANNEX_DIR) >/dev/null

# --- git-annex for users (issue 16) -----------------------------------------
# git-annex from PyPI (a static build) for distributions whose git-annex
# predates the generic P2P transport (Debian 12's 10.20230126): the wheel in
# GIT_ANNEX_LIBDIR, and git-annex, git-annex-shell and git-remote-p2p-annex
# in BINDIR as small scripts that set MAGIC (the wheel's file-type database)
# and run it. Needs python3 with pip (installed with apt-get when run as
# root) and PyPI. PREFIX, BINDIR and DESTDIR work as for install.
GIT_ANNEX_LIBDIR ?= $(PREFIX)/lib/p2p-annex/git-annex
install-git-annex:
	tests/tools/install-git-annex.sh $(DESTDIR)$(GIT_ANNEX_LIBDIR) $(DESTDIR)$(BINDIR) $(GIT_ANNEX_LIBDIR) >/dev/null
	@echo "git-annex $$(MAGIC=$(DESTDIR)$(GIT_ANNEX_LIBDIR)/py/git_annex/magic.mgc $(DESTDIR)$(GIT_ANNEX_LIBDIR)/bin/git-annex version --raw) in $(DESTDIR)$(GIT_ANNEX_LIBDIR); git-annex, git-annex-shell, git-remote-p2p-annex in $(DESTDIR)$(BINDIR)"

# Removes the scripts install-git-annex wrote (only those) and the wheel.
uninstall-git-annex:
	tests/tools/install-git-annex.sh --uninstall $(DESTDIR)$(GIT_ANNEX_LIBDIR) $(DESTDIR)$(BINDIR)
# --- end git-annex for users ------------------------------------------------

# mandoc -Tlint exits 0 on warnings with some versions: fail on any output.
# The code's own gates (CI runs them): formatting, and clippy with every
# warning an error, on every target (tests included).
lint-code:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

# A build with the oldest Rust Cargo.toml declares (rust-version), in a
# target directory of its own; rustup installs that toolchain when missing.
# Where rustup cannot reach its server, it says SKIPPED (never a pass).
MSRV = $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
check-msrv:
	@if ! rustup toolchain list | grep -q "^$(MSRV)" && \
		! rustup toolchain install $(MSRV) --profile minimal; then \
		echo "check-msrv: SKIPPED: Rust $(MSRV) is not installed and rustup could not install it"; \
	else \
		echo "CARGO_TARGET_DIR=target/msrv $(CARGO) +$(MSRV) build --locked --all-targets"; \
		CARGO_TARGET_DIR=target/msrv $(CARGO) +$(MSRV) build --locked --all-targets; \
	fi

lint-man:
	@command -v mandoc >/dev/null 2>&1 || { echo "lint-man: mandoc is missing (Debian: apt-get install mandoc)" >&2; exit 1; }
	@out=$$(mandoc -Tlint -W warning $(MANPAGES) 2>&1); \
	if [ -n "$$out" ]; then echo "$$out" >&2; exit 1; fi; echo "man pages: lint clean"

# git-annex over real Yggdrasil and WireGuard between network namespaces
# (root and /dev/net/tun; installs the overlays' Debian packages when
# missing). OVERLAY_FLAGS=--allow-skip passes where they are unavailable.
check-overlay: all git-annex
	tests/overlay/run.sh $(OVERLAY_FLAGS) $(BIN) $(GIT_ANNEX_DIR)

# Throughput over each overlay: p2p-annex, socat, raw TCP (BENCHMARKS.md).
bench-overlay: all git-annex
	tests/overlay/run.sh --bench $(OVERLAY_FLAGS) $(BIN) $(GIT_ANNEX_DIR)

# Fully static, stripped binaries at target/<triple>/release/p2p-annex
# (or under CARGO_TARGET_DIR). Adds the rustup targets it needs. With the
# nightly toolchain std is rebuilt for size with panic=immediate-abort
# (half the size); STATIC_NIGHTLY=no builds with stable only, yes insists
# on nightly. See tests/tools/build-static.sh.
STATIC_NIGHTLY ?= auto
static:
	CARGO="$(CARGO)" CARGOFLAGS="$(CARGOFLAGS)" AARCH64_LINKER=$(AARCH64_LINKER) \
		tests/tools/build-static.sh $(STATIC_NIGHTLY) $(NIGHTLY) $(TARGET_DIR) $(STATIC_TARGETS)

static-armv7:
	@$(ARMV7_READY) || { echo "make static-armv7: needs the $(NIGHTLY) toolchain with rust-src, $(ARMV7_CC) and armhf musl in $(ARMV7_MUSL) (make cross-deps CROSS_ARMV7=yes)" >&2; exit 1; }
	mkdir -p $(ARMV7_LINKDIR)
	ln -sfn $(ARMV7_UNWIND) $(ARMV7_LINKDIR)/libunwind.a
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=$(ARMV7_CC) \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="$$(tests/tools/build-static.sh --abort-flags $(NIGHTLY)) -C link-self-contained=no -C link-arg=-B$(ARMV7_MUSL) -L $(ARMV7_MUSL) -L $(ARMV7_LINKDIR)" \
		$(CARGO) +$(NIGHTLY) build --release --locked $(CARGOFLAGS) \
		-Zbuild-std=std,panic_abort --target $(ARMV7)
	@ls -l $(TARGET_DIR)/$(ARMV7)/release/p2p-annex

# --- binary sizes (issue 16) --------------------------------------------------
# Builds the glibc and static binaries (armv7 too where its toolchain is
# installed) and prints their sizes as the README's table: the README's
# numbers come from here, never from memory.
sizes: all static
	@if $(ARMV7_READY); then $(MAKE) --no-print-directory static-armv7 >/dev/null; \
	else echo "sizes: armv7 left out (make cross-deps CROSS_ARMV7=yes)" >&2; fi
	@tests/tools/sizes.sh $(TARGET_DIR) $(STATIC_TARGETS) $(ARMV7)
# --- end binary sizes ---------------------------------------------------------

# What the static builds and the emulated tests need: rustup's musl targets,
# qemu-user-static (apt, as root) and, for armv7, nightly's rust-src with
# Debian's armhf musl and cross gcc. Idempotent.
cross-deps:
	tests/tools/install-cross.sh $(CROSS_ARMV7) $(NIGHTLY) "$(STATIC_TARGETS)" $(ARMV7_MUSL_ROOT)

# The static binaries, aarch64 and armv7 under qemu-user: --version, the
# netname from the link name, address mode, and random data relayed byte
# for byte through listen and connect modes (tcp and unix-sockets).
check-cross: cross-deps
	@$(MAKE) --no-print-directory static
	@set -e; triples="$(STATIC_TARGETS)"; \
	if [ "$(CROSS_ARMV7)" = no ]; then echo "check-cross: armv7 left out (CROSS_ARMV7=no)"; \
	elif [ "$(CROSS_ARMV7)" = yes ] || $(ARMV7_READY); then \
		$(MAKE) --no-print-directory static-armv7; triples="$$triples $(ARMV7)"; \
	else echo "check-cross: armv7 SKIPPED: no $(NIGHTLY) toolchain with rust-src here (see make cross-deps; CROSS_ARMV7=yes to insist)"; fi; \
	tests/tools/check-cross.sh $$triples

# Offline builds for distributions: the dependencies' sources into vendor/,
# and the cargo configuration that uses them in vendor/cargo-config.toml:
#   make all CARGOFLAGS="--offline --config vendor/cargo-config.toml"
vendor:
	mkdir -p $(TARGET_DIR)
	$(CARGO) vendor --locked vendor > $(TARGET_DIR)/vendor-config.toml
	mv $(TARGET_DIR)/vendor-config.toml vendor/cargo-config.toml
	@echo "vendor/: done; build offline with: make CARGOFLAGS=\"--offline --config vendor/cargo-config.toml\""

# make vendor in a copy of the tree, then an offline build there with an
# empty cargo home: proves a distribution can build without network.
check-vendor:
	tests/tools/check-vendor.sh "$(MAKE)"

# Every fuzz target (fuzz/) for FUZZ_SECONDS each from its corpus: addresses,
# git config, SOCKS5 replies, status answers and tor control-port replies;
# a crash fails. Needs the
# $(NIGHTLY) toolchain (SKIPPED without it, failed under CI) and installs
# cargo-fuzz from crates.io when missing.
FUZZ_TARGETS = address config fowl socks5 status torcontrol
FUZZ_SECONDS ?= 30
fuzz-smoke:
	tests/tools/fuzz-smoke.sh $(NIGHTLY) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Two throwaway repositories syncing a file over tcp on loopback.
demo: all git-annex
	tests/tools/demo.sh $(BIN) $(GIT_ANNEX_DIR)

# git-annex's CONNECTDONE race without p2p-annex (doc/upstream/connectdone-race.md):
# fresh repository pairs over git-annex's socat demo helper, first fetch and
# push, and the hang and push-failure rates. Informational: never fails.
# RACE_TRIALS=N; RACE_FLAGS=--workaround compares with the delay workaround.
RACE_TRIALS ?= 30
RACE_FLAGS ?=
repro-race: git-annex
	@if ! command -v git-annex >/dev/null 2>&1; then \
		PATH="$(abspath $(GIT_ANNEX_DIR))/bin:$$PATH"; \
		MAGIC="$(abspath $(GIT_ANNEX_DIR))/py/git_annex/magic.mgc"; export PATH MAGIC; fi; \
	tests/tools/repro-connectdone-race.sh $(RACE_FLAGS) $(RACE_TRIALS) \
		|| echo "repro-race: the reproduction could not run (informational only)"
# --- the first hour (issue 16) ---------------------------------------------
# The README's steps as a new user takes them, in a clone of this commit with
# a fresh HOME and the system's PATH: make, make install and
# make install-git-annex into a temporary prefix, the Quick start with two
# repositories syncing over tcp on loopback, p2p-annex check, uninstall.
first-hour:
	tests/tools/first-hour.sh
# --- end the first hour -------------------------------------------------------

# --- the fowl study (issue 17) ----------------------------------------------
# Measures the candidate designs of a fowl netname (doc/networks/fowl.md) on
# loopback inside a network namespace with loopback only; installs fowl and
# the mailbox server from PyPI into target/fowl-venv. Then real git-annex over
# the prototype helper: 10 fetch/push rounds and a sync --content. Needs root.
# Not part of check: it times things (about 20 minutes). Results in
# target/fowl-study/ and on the terminal.
.PHONY: fowl-study
FOWL_STUDY_DIR = $(TARGET_DIR)/fowl-study
fowl-study: git-annex
	tests/tools/fowl/run-study.sh $(FOWL_STUDY_DIR)/stock
	tests/tools/fowl/run-study.sh $(FOWL_STUDY_DIR)/nodelay --designs c,a,b2 --n 40 --nodelay
	tests/tools/fowl/run-study.sh $(FOWL_STUDY_DIR)/streams --designs c --n 3 --mib 0 --streams UDUD
	@if ! command -v git-annex >/dev/null 2>&1; then \
		PATH="$(abspath $(GIT_ANNEX_DIR))/bin:$$PATH"; \
		MAGIC="$(abspath $(GIT_ANNEX_DIR))/py/git_annex/magic.mgc"; export PATH MAGIC; fi; \
	tests/tools/fowl/run-annex.sh 10 -v --workaround --timeout 40 && \
	tests/tools/fowl/run-sync.sh 64
# --- end the fowl study ----------------------------------------------------

# p2p-annex against socat helpers, side by side; writes target/bench/results.md
# (see BENCHMARKS.md). Not part of check: it times things. QUICK=1 for a
# quick look with smaller sizes.
bench:
	tests/bench/bench.sh

clean:
	$(CARGO) clean
