#!/usr/bin/env bash
# bench/burst.sh DIR: cold bursts, weft beside Go. For N = 100k and 1M,
# bench/burst.c (DIR/burst, built here from DIR/.., the release tree) and
# bench/go/burst.go (GOMAXPROCS=1) each run in a fresh process, alternating,
# weft first; each prints its wall time from the first spawn to the end of
# the gather, and its RSS per task. Then the ratios weft/Go. Without go the
# weft figures still print. `./run bench` calls this through bench/go.sh;
# no test needs it or Go.
set -uo pipefail
dir=$1
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." || exit 1
cmake --build "$dir/.." --target burst -j2 >/dev/null || { echo "building bench/burst.c failed"; exit 1; }
have_go=0
if command -v go >/dev/null 2>&1; then
  GOTOOLCHAIN=local GOCACHE=${GOCACHE:-$PWD/build/go-cache} \
    go build -o "$dir/go-burst" bench/go/burst.go || { echo "go build bench/go/burst.go failed"; exit 1; }
  have_go=1
else
  echo "# go_burst: not measured, no go (apt-get install golang-go)"
fi
echo "==> cold bursts: N tasks sleeping (i % 1000) ms, gathered; fresh processes"
: >"$dir/burst.out"
for n in 100000 1000000; do
  "$dir/burst" "$n" | tee -a "$dir/burst.out" || exit 1
  if ((have_go)); then
    GOMAXPROCS=1 "$dir/go-burst" "$n" | tee -a "$dir/burst.out" || exit 1
  fi
done
((have_go)) || exit 0
awk '$1 ~ /burst/ { v[$1 " " $2] = $3 }
  END {
    split("100000 1000000", ns, " ")
    for (i = 1; i <= 2; i++) {
      n = ns[i]
      w = v["burst_ms " n]; g = v["go_burst_ms " n]
      if (g > 0) printf "burst_vs_go_wall_%s %.2f x\n", n, w / g
      w = v["burst_rss_per_task " n]; g = v["go_burst_rss_per_task " n]
      if (g > 0) printf "burst_vs_go_rss_%s %.2f x\n", n, w / g
    }
  }' "$dir/burst.out"
