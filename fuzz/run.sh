#!/bin/sh
# fuzz.echo_http: runs a libFuzzer target on a copy of the seed corpus for a
# while; any crash, leak or sanitizer report fails it.
#
#   run.sh FUZZER CORPUS ARTIFACT_DIR SECONDS
#
# WEFT_FUZZ_SECONDS in the environment overrides SECONDS. The inputs the run
# finds go into a temporary copy, never into the repository's corpus; an
# input that crashed is kept in ARTIFACT_DIR to replay (run the fuzzer with
# that file as its only argument).
set -u
fuzzer=$1 corpus=$2 artifacts=$3 seconds=${WEFT_FUZZ_SECONDS:-$4}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/weft-corpus.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
cp -R "$corpus/." "$tmp/corpus" 2>/dev/null || { mkdir -p "$tmp/corpus" && cp -R "$corpus/." "$tmp/corpus"; }
mkdir -p "$artifacts"
rm -f "$artifacts"/crash-* "$artifacts"/leak-* "$artifacts"/timeout-* "$artifacts"/oom-*
echo "-- fuzzing with $fuzzer for $seconds s"
rc=0
"$fuzzer" "$tmp/corpus" -max_total_time="$seconds" -artifact_prefix="$artifacts/" \
  -print_final_stats=1 >"$tmp/log" 2>&1 || rc=$?
grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|SUMMARY)' "$tmp/log"
if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$artifacts")" ]; then
  tail -n 30 "$tmp/log"
  echo "fuzz: the fuzzer failed (status $rc); inputs that crashed are in $artifacts"
  exit 1
fi
