# p2p-annex — build, test, install.
# Packagers: make && make install DESTDIR=/tmp/pkg PREFIX=/usr

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=
CARGO ?= cargo
CARGOFLAGS ?=

# Netnames installed as links to the binary (git-annex-p2p-NETNAME).
NETNAMES = tcp unix-sockets
MANPAGES = $(wildcard man/*.1)
BIN = target/release/p2p-annex
# Where the tests and the demo put a git-annex from PyPI when none is on PATH.
GIT_ANNEX_DIR = target/git-annex

.PHONY: all install uninstall check lint-man demo bench clean git-annex

all:
	$(CARGO) build --release --locked $(CARGOFLAGS)

install:
	@test -x $(BIN) || { echo "make install: run 'make' first ($(BIN) is missing)" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/p2p-annex
	for n in $(NETNAMES); do ln -sfn p2p-annex $(DESTDIR)$(BINDIR)/git-annex-p2p-$$n; done
	install -m 0644 $(MANPAGES) $(DESTDIR)$(MANDIR)/man1/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/p2p-annex
	for n in $(NETNAMES); do rm -f $(DESTDIR)$(BINDIR)/git-annex-p2p-$$n; done
	for m in $(notdir $(MANPAGES)); do rm -f $(DESTDIR)$(MANDIR)/man1/$$m; done

# The whole test suite: unit tests, the binary against real peers, and
# real git-annex repositories syncing through it (git-annex comes from
# PyPI into $(GIT_ANNEX_DIR) when it is not on PATH).
check: lint-man git-annex
	$(CARGO) test --locked $(CARGOFLAGS)

git-annex:
	@command -v git-annex >/dev/null 2>&1 || tests/tools/install-git-annex.sh $(GIT_ANNEX_DIR) >/dev/null

# mandoc -Tlint exits 0 on warnings with some versions: fail on any output.
lint-man:
	@command -v mandoc >/dev/null 2>&1 || { echo "lint-man: mandoc is missing (Debian: apt-get install mandoc)" >&2; exit 1; }
	@out=$$(mandoc -Tlint -W warning $(MANPAGES) 2>&1); \
	if [ -n "$$out" ]; then echo "$$out" >&2; exit 1; fi; echo "man pages: lint clean"

# Two throwaway repositories syncing a file over tcp on loopback.
demo: all git-annex
	tests/tools/demo.sh $(BIN) $(GIT_ANNEX_DIR)

# p2p-annex against socat helpers, side by side; writes target/bench/results.md
# (see BENCHMARKS.md). Not part of check: it times things. QUICK=1 for a
# quick look with smaller sizes.
bench:
	tests/bench/bench.sh

clean:
	$(CARGO) clean
