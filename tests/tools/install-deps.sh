#!/bin/sh
# What `make check` needs besides Rust and git, installed when missing:
# mandoc (lint-man), socat (the tests' reference relay), dante-server (the
# socks tests' real SOCKS5 server), tor (the onion tests' real tor), pip for
# python3 (git-annex from PyPI),
# systemd's systemd-analyze (check-dist verifies the service files), and
# iproute2 and util-linux (the unattended tests' namespaces and prlimit),
# python3-venv (the fowl tests' venv). As root it runs apt-get; otherwise it
# names the packages and fails. Then it builds the fowl tests' venv
# (fowl/install-venv.sh: fowl and the mailbox server from PyPI, pinned), so
# test time is not spent on it.
# `make check` and .ci/run both call it, so they cannot drift apart.
#
# usage: tests/tools/install-deps.sh
set -eu

need=
command -v mandoc >/dev/null 2>&1 || need="$need mandoc"
command -v socat >/dev/null 2>&1 || need="$need socat"
python3 -m pip --version >/dev/null 2>&1 || need="$need python3-pip"
command -v danted >/dev/null 2>&1 || [ -x /usr/sbin/danted ] || need="$need dante-server"
command -v tor >/dev/null 2>&1 || [ -x /usr/sbin/tor ] || need="$need tor"
# make check-dist: systemd-analyze verify on the service files.
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
# The unattended tests: network namespaces, routes and ss; prlimit.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need="$need iproute2"
command -v prlimit >/dev/null 2>&1 || need="$need util-linux"
# The fowl tests: a venv of fowl and the mailbox server (Debian splits
# ensurepip, which `python3 -m venv` needs, into python3-venv).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv"

# The fowl tests' venv, once the packages are there.
fowl_venv() {
	"$(dirname "$0")/fowl/install-venv.sh" >/dev/null
}
if [ -z "$need" ]; then
	fowl_venv
	exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "install-deps.sh: missing packages:$need" >&2
	echo "install-deps.sh: install them first (Debian: sudo apt-get install$need), or run this as root" >&2
	exit 1
fi
echo "install-deps.sh: apt-get install$need" >&2
export DEBIAN_FRONTEND=noninteractive
# An index out of step on the mirror fails the update: go on with what was
# fetched, and let the install fail if something it needs is really missing.
apt-get update -qq >&2 || echo "install-deps.sh: apt-get update reported errors; trying the install anyway" >&2
# shellcheck disable=SC2086 # a list of package names
apt-get install -y -qq --no-install-recommends $need >&2
fowl_venv
