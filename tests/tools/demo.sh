#!/bin/sh
# make demo: two throwaway repositories sync files over the tcp network on
# loopback, through `p2p-annex serve` (which runs git-annex remotedaemon)
# and p2p-annex, and say what
# happened at each step. Everything lives in a temporary directory that is
# removed at the end, with every process the demo started.
#
# usage: tests/tools/demo.sh PATH-TO-p2p-annex GIT-ANNEX-DIR
set -eu

[ $# -eq 2 ] || { echo "usage: demo.sh PATH-TO-p2p-annex GIT-ANNEX-DIR" >&2; exit 2; }
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -x "$bin" ] || { echo "demo.sh: $bin is missing (run make)" >&2; exit 1; }
ga_dir=$2

work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-annex-demo.XXXXXX")
work=$(cd "$work" && pwd -P)

# Processes whose working directory is one of ours: remotedaemon and the
# listeners it started (it keeps no pid file and does not stop them).
ours() {
	for p in /proc/[0-9]*; do
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		case $cwd in "$work"/*) [ "${p#/proc/}" != $$ ] && echo "${p#/proc/}" ;; esac
	done
}
serve_pid=
cleanup() {
	cd /
	# serve stops remotedaemon and its listeners on SIGTERM.
	if [ -n "$serve_pid" ]; then
		kill "$serve_pid" 2>/dev/null || true
		wait "$serve_pid" 2>/dev/null || true
	fi
	pids=$(ours)
	[ -n "$pids" ] && kill $pids 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$work/bin" "$work/home"
ln -s "$bin" "$work/bin/git-annex-p2p-tcp"
if ! command -v git-annex >/dev/null 2>&1; then
	PATH=$(cd "$ga_dir/bin" && pwd):$PATH
	MAGIC=$(cd "$ga_dir/py/git_annex" && pwd)/magic.mgc
	export MAGIC
fi
export PATH="$work/bin:$PATH" HOME="$work/home" GIT_CONFIG_NOSYSTEM=1
git config --global user.name "p2p-annex demo"
git config --global user.email demo@example.invalid
git config --global init.defaultBranch main

say() { printf '\n== %s\n' "$*"; }
show() { printf '   $ %s\n' "$*"; }

say "Repository A, with two files"
mkdir "$work/A" && cd "$work/A"
git init -q && git annex init -q "A"
echo "hello from A, $(date -u +%Y-%m-%dT%H:%M:%SZ)" >hello.txt
head -c 1048576 /dev/urandom >random.bin
git annex add -q hello.txt random.bin && git commit -q -m "two files"
git annex find | sed 's/^/   /'

say "A enables the tcp network (our address mode picks and stores a port)"
git config p2p-annex.tcp.address 127.0.0.1
show "git annex p2p --enable tcp"
git annex p2p --enable tcp >/dev/null
echo "   p2p-annex.tcp.port = $(git config p2p-annex.tcp.port)"
sed 's/^/   enabled: /' .git/annex/creds/p2paddrs

say "A serves: p2p-annex serve runs git-annex remotedaemon (which runs our listen mode)"
show "p2p-annex serve &"
"$bin" serve 2>"$work/serve.log" &
serve_pid=$!
port=$(git config p2p-annex.tcp.port)
tries=0
# Our own connect mode doubles as the probe: it exits 0 once a listener
# answered and closed, 1 while the port is refused.
until "$bin" tcp "127.0.0.1:$port" </dev/null >/dev/null 2>&1; do
	tries=$((tries + 1))
	[ $tries -lt 100 ] || { echo "demo.sh: the listener did not come up" >&2; cat "$work/serve.log" >&2; exit 1; }
	sleep 0.1
done
for p in $(ours); do
	cmd=$( (tr '\0' ' ' <"/proc/$p/cmdline") 2>/dev/null) || continue
	case $cmd in *remotedaemon* | *git-annex-p2p-* | *" serve ") echo "   pid $p: $cmd" ;; esac
done

say "A makes an address for B (it holds a secret token, masked here)"
git annex p2p --gen-addresses >"$work/address" 2>/dev/null
sed 's/:[^:]*$/:<token>/; s/^/   /' "$work/address"

say "Repository B links to A and fetches its history over tcp"
mkdir "$work/B" && cd "$work/B"
git init -q && git annex init -q "B"
git annex p2p --link --name peerA <"$work/address" >/dev/null
show "git fetch peerA"
# Under serve no first fetch hangs (git-annex's relay race, see
# doc/upstream/connectdone-race.md); the timeout only keeps a demo that
# went wrong from waiting forever.
timeout 60 git fetch -q peerA || { echo "demo.sh: git fetch failed" >&2; exit 1; }
git annex merge -q && git merge -q --ff-only peerA/main
ls | sed 's/^/   /'

say "B gets the content from A over tcp"
show "git annex get"
start=$(date +%s.%N)
git annex get -q .
end=$(date +%s.%N)
echo "   got $(git annex find | wc -l) files in $(awk "BEGIN { printf \"%.2f\", $end - $start }") s"
printf '   hello.txt: %s\n' "$(cat hello.txt)"
a_sum=$(cd "$work/A" && sha256sum random.bin | cut -d' ' -f1)
b_sum=$(sha256sum random.bin | cut -d' ' -f1)
echo "   random.bin sha256 in A: $a_sum"
echo "   random.bin sha256 in B: $b_sum"
[ "$a_sum" = "$b_sum" ] || { echo "demo.sh: content differs!" >&2; exit 1; }

say "B sends a new file to A over tcp"
echo "hello from B" >from-b.txt
git annex add -q from-b.txt && git commit -q -m "from B"
show "git annex copy --to peerA from-b.txt"
git annex copy -q --to peerA from-b.txt
git annex whereis from-b.txt | sed 's/^/   /'
git annex fsck -q && echo "   git annex fsck: ok"

say "Done: files moved both ways between A and B over tcp through p2p-annex"
