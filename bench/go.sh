#!/usr/bin/env bash
# bench/go.sh DIR: Go's select timed as weft-bench times weft_select
# (bench/go/select.go, GOMAXPROCS=1), printed beside select2_ns from
# DIR/weft-bench.out (`./run bench` writes it there, then calls this).
# Without go, or without select2_ns (--across, --help), it says so and
# succeeds: the Go figure is optional. Nothing but `./run bench` needs Go.
# Then bench/burst.sh: cold bursts of 100k and 1M tasks beside Go's.
set -uo pipefail
dir=$1
sel=$(awk '$1 == "select2_ns" { print $2 }' "$dir/weft-bench.out" 2>/dev/null)
[[ -n $sel ]] || exit 0
# Then the cold bursts, weft beside Go (bench/burst.sh), in every case.
burst=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/burst.sh
if ! command -v go >/dev/null 2>&1; then
  echo "# go_select2_ns: not measured, no go (apt-get install golang-go)"
  exec "$burst" "$dir"
fi
echo "==> bench/go/select.go (GOMAXPROCS=1)"
# GOCACHE in the build tree, so that it works without a HOME; a local
# toolchain only, never a download.
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." || exit 1
GOTOOLCHAIN=local GOCACHE=${GOCACHE:-$PWD/build/go-cache} \
  go build -o "$dir/go-select" bench/go/select.go || { echo "go build bench/go/select.go failed"; exit 1; }
"$dir/go-select" | tee "$dir/go-select.out"
rc=${PIPESTATUS[0]}
((rc == 0)) || exit "$rc"
gosel=$(awk '$1 == "go_select2_ns" { print $2 }' "$dir/go-select.out")
echo "==> select over 2 ready channels, + the send that refills: weft and Go"
echo "select2_ns $sel ns"
echo "go_select2_ns $gosel ns"
awk -v w="$sel" -v g="$gosel" 'BEGIN { if (g > 0) printf "select2_vs_go %.2f x\n", w / g }'
exec "$burst" "$dir"
