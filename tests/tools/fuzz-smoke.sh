#!/bin/sh
# make fuzz-smoke: run each fuzz target briefly from a copy of its corpus
# (fuzz/corpus/TARGET stays as committed); a crash, a failed assertion or a
# leak fails. Needs a nightly toolchain (cargo-fuzz builds with sanitizers)
# and cargo-fuzz, which is installed from crates.io when missing (about
# 1.5 minutes). Without nightly it says SKIPPED and passes, except under CI
# (CI set and not empty), where a skipped fuzz run would be a silent gap,
# so it fails.
#
# Usage: fuzz-smoke.sh NIGHTLY SECONDS TARGET...
set -eu
nightly=$1 seconds=$2
shift 2
cd "$(dirname "$0")/../.."

if ! rustup toolchain list 2>/dev/null | grep -q "^$nightly"; then
	echo "" >&2
	echo "######## fuzz-smoke: SKIPPED: no $nightly toolchain (rustup toolchain install $nightly) ########" >&2
	echo "" >&2
	if [ -n "${CI:-}" ]; then
		echo "fuzz-smoke: CI is set: failing rather than skipping" >&2
		exit 1
	fi
	exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz-smoke: installing cargo-fuzz from crates.io" >&2
	cargo install cargo-fuzz --locked
fi

work=target/fuzz-smoke
rm -rf "$work"
mkdir -p "$work"
for t in "$@"; do
	# New inputs go to the copy; the committed corpus is read only.
	mkdir -p "$work/corpus/$t"
	log="$work/$t.log"
	start=$(date +%s)
	if ! cargo +"$nightly" fuzz run -O "$t" "$work/corpus/$t" "fuzz/corpus/$t" -- \
		-max_total_time="$seconds" -print_final_stats=1 \
		-artifact_prefix="$work/" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		echo "fuzz-smoke: $t FAILED (log: $log; the input is in $work/)" >&2
		exit 1
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	echo "fuzz-smoke: $t ok: ${runs:-?} runs in $(($(date +%s) - start)) s (build included)"
done
