#!/bin/sh
# Run by run-sync.sh inside its namespace: sync-inner.sh HERE WORK MIB.
# Everything is made under WORK (an empty directory run-sync.sh created).
set -eu
here=$1 work=$2 mib=$3
case $work in /tmp/fowl-sync.*) ;; *) echo "sync-inner: WORK must be run-sync's" >&2; exit 2 ;; esac
now() { date +%s%3N; }
"$FOWL_VENV/bin/twistd" -n --pidfile= wormhole-mailbox --port tcp:4000:interface=127.0.0.1 \
	--channel-db="$work/relay.sqlite" >"$work/mailbox.log" 2>&1 &
i=0
until python3 -c 'import socket; socket.create_connection(("127.0.0.1", 4000), 1)' 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "sync: no mailbox" >&2; exit 1; }
	sleep 0.2
done
mkdir "$work/bin" "$work/home" "$work/wrap"
ln -s "$here/proto-helper.py" "$work/bin/git-annex-p2p-fowl"
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 PATH="$work/bin:$PATH"
git config --global user.name s
git config --global user.email s@example.invalid
git config --global init.defaultBranch main
# The CONNECTDONE workaround (doc/upstream/connectdone-race.md) for A's remotedaemon.
real_git=$(command -v git)
{
	echo "#!/bin/sh"
	# shellcheck disable=SC2016 # written for the wrapper to expand
	echo 'for a in "$@"; do case $a in -*) continue ;; esac'
	echo "case \$a in upload-pack | receive-pack) \"$real_git\" \"\$@\"; rc=\$?; sleep 0.3; exit \$rc ;; esac; break; done"
	echo "exec \"$real_git\" \"\$@\""
} >"$work/wrap/git"
chmod +x "$work/wrap/git"
mkdir "$work/A" "$work/B"
cd "$work/A"
git init -q
git annex init -q A
head -c $((mib * 1048576)) /dev/urandom >big.bin
echo small >small.txt
git annex add -q big.bin small.txt
git commit -q -m A
git annex p2p --enable fowl >/dev/null
mkfifo "$work/hold"
PATH="$work/wrap:$PATH" git-annex remotedaemon --foreground <"$work/hold" >"$work/daemon.log" 2>&1 &
exec 9>"$work/hold"
addr=$(git annex p2p --gen-addresses 2>/dev/null | grep "^p2p-annex::fowl:")
cd "$work/B"
git init -q
git annex init -q B
head -c 1048576 /dev/urandom >fromb.bin
git annex add -q fromb.bin
git commit -q -m B
t0=$(now)
# A failed link costs up to 4 slots x 5 s: give up after 60 s.
until echo "$addr" | git annex p2p --link --name A >/dev/null 2>&1; do
	[ $(($(now) - t0)) -lt 60000 ] || { echo "sync: link failed" >&2; cat "$work/daemon.log" >&2; exit 1; }
	sleep 0.5
done
t1=$(now)
echo "link: $((t1 - t0)) ms"
(
	peak=0
	while :; do
		s=0
		for p in $(pgrep -f "$FOWL_VENV/bin/fowld" || true); do
			r=$(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
			s=$((s + ${r:-0}))
		done
		if [ "$s" -gt "$peak" ]; then peak=$s; echo "$peak" >"$work/peak"; fi
		sleep 0.2
	done
) &
sampler=$!
rc=0
timeout 300 git annex sync --content --allow-unrelated-histories A >"$work/sync.log" 2>&1 || rc=$?
t2=$(now)
echo "sync --content: rc $rc, $((t2 - t1)) ms"
if [ $rc -ne 0 ]; then
	tail -5 "$work/sync.log"
	rc=0
	timeout 300 git annex sync --content --allow-unrelated-histories A >>"$work/sync.log" 2>&1 || rc=$?
	echo "second sync: rc $rc, $(($(now) - t2)) ms"
fi
kill $sampler
echo "peak RSS of all fowld processes: $(cat "$work/peak" 2>/dev/null || echo '?') KiB"
a=$(sha256sum <"$work/A/big.bin")
b=$(sha256sum <"$work/B/big.bin" 2>/dev/null || echo missing)
if [ "$a" = "$b" ]; then echo "big.bin: sha256 matches ($mib MiB)"; else echo "big.bin: sha256 DIFFERS or missing"; fi
if git annex fsck -q >/dev/null 2>&1; then echo "fsck B: ok"; else echo "fsck B: FAILED"; fi
cd "$work/A"
if git annex contentlocation "$(git -C "$work/B" annex lookupkey fromb.bin)" >/dev/null 2>&1; then
	echo "A has B's file content: ok"
else
	echo "A has B's file content: NO"
fi
grep -E "^(get|copy|pull|push)" "$work/sync.log" | head -8 || true
exec 9>&-
