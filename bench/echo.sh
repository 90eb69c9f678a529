#!/usr/bin/env bash
# bench/echo.sh: samples/echo_server beside bench/uv_http (raw libuv, the
# same HTTP module) under wrk, in rounds; prints medians and ratios.
#
#   bench/echo.sh BUILD_DIR [--rounds N] [--seconds S]
#
# BUILD_DIR is a release build with echo_server, uv_http and http_module
# built (`./run bench-echo` builds them, installs wrk if missing and calls
# this). Each server runs afresh on 127.0.0.1 port 0 and is stopped with
# SIGTERM; a server that does not start, or does not exit cleanly, fails
# the run. The machine is shared: compare the ratios within one run, never
# absolute figures across runs.
set -uo pipefail

say() { printf '%s\n' "$*"; }
err() { printf 'bench-echo: %s\n' "$*" >&2; }
die() {
  err "$*"
  exit 1
}
heading() { printf '\n==> %s\n' "$*"; }

BUILD=${1:-}
[[ -n $BUILD && -x $BUILD/samples/echo_server && -x $BUILD/bench/uv_http ]] ||
  die "usage: bench/echo.sh BUILD_DIR [--rounds N] [--seconds S] (a release build with echo_server and uv_http)"
BUILD=$(readlink -f "$BUILD")
shift
command -v wrk >/dev/null || die "wrk is not installed (Debian: apt-get install wrk)"
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." || exit 1


# The server of a bench-echo run, while one is up: the EXIT trap stops it,
# by this PID and never by name.
SERVER_PID=
SERVER_PORT=
WORK_DIR=
stop_server_on_exit() {
  if [[ -n $SERVER_PID ]]; then
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
}

# server_exited PID: true once the child PID has exited (a zombie until it
# is waited for) or is gone.
server_exited() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  [[ ${stat##*) } == Z* ]]
}

# server_start OUT CMD...: starts CMD with its output in OUT and waits (10 s
# at most) for its `...: listening on HOST:PORT` line; sets SERVER_PID and
# SERVER_PORT.
server_start() {
  local out=$1 line i
  shift
  # Emptied here, not only by the child's redirection: that one may come
  # after the first look for the line, which would then find an old one.
  : >"$out"
  "$@" >"$out" 2>&1 &
  SERVER_PID=$!
  for ((i = 0; i < 200; i++)); do
    line=$(grep -m 1 ': listening on ' "$out")
    if [[ -n $line ]]; then
      SERVER_PORT=${line##*:}
      SERVER_PORT=${SERVER_PORT%%,*}
      return 0
    fi
    server_exited "$SERVER_PID" && break
    sleep 0.05
  done
  err "$1 did not start listening:"
  cat "$out" >&2
  server_stop
  return 1
}

# server_stop: SIGTERM to the server started last, then waits for it (5 s,
# then SIGKILL). Returns its exit status, 124 when it had to be killed.
server_stop() {
  local pid=$SERVER_PID rc i
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    server_exited "$pid" && break
    sleep 0.05
  done
  if ! server_exited "$pid"; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    SERVER_PID=
    return 124
  fi
  wait "$pid" 2>/dev/null
  rc=$?
  SERVER_PID=
  return "$rc"
}

# cpu_ticks PID: the process's user + system CPU time so far, all of its
# threads, in clock ticks (fields 14 and 15 of /proc/PID/stat; the fields
# are counted after the command name, which may hold spaces).
cpu_ticks() {
  local stat f
  stat=$(cat "/proc/$1/stat") || return 1
  read -r -a f <<<"${stat##*) }"
  say $((f[11] + f[12]))
}

# median: the median of the numbers on stdin, one per line.
median() {
  sort -g | awk '{ v[NR] = $1 }
    END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2];
          else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B: A / B with two decimals.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'
}

# echo_run DIR SERVER WORKLOAD SECONDS ROUND: starts SERVER (echo or uv)
# afresh, runs wrk against it for SECONDS with WORKLOAD (plain or pipe16),
# stops it, and appends `SERVER WORKLOAD req_per_s req_per_cpu_s ROUND` to
# DIR/results.
# Returns non-zero when the server failed to start or to exit cleanly, or
# wrk failed.
echo_run() {
  local dir=$1 server=$2 workload=$3 secs=$4 round=$5
  local out=$dir/$server.out wrk_args=() argv=() depth=1
  case $server in
    echo) argv=("$BUILD"/samples/echo_server --host 127.0.0.1 --port 0 --workers 1) ;;
    uv) argv=("$BUILD"/bench/uv_http --host 127.0.0.1 --port 0) ;;
  esac
  if [[ $workload == pipe16 ]]; then
    wrk_args=(-s bench/pipeline16.lua)
    depth=16
  fi
  server_start "$out" "${argv[@]}" || return 1
  local pid=$SERVER_PID t0 t1
  t0=$(cpu_ticks "$pid")
  # Bounded, so that a stalled server cannot hold the bench up; in the
  # foreground, so that ^C reaches wrk.
  timeout --foreground $((secs + 30)) wrk -t2 -c64 -d"${secs}s" "${wrk_args[@]}" \
    "http://127.0.0.1:$SERVER_PORT/" >"$dir/wrk.out" 2>&1
  local wrk_rc=$?
  t1=$(cpu_ticks "$pid")
  server_stop
  local stop_rc=$?
  if ((wrk_rc != 0)); then
    err "wrk failed against ${argv[0]} (exit $wrk_rc):"
    cat "$dir/wrk.out" >&2
    return 1
  fi
  if ((stop_rc != 0)); then
    err "${argv[0]} did not exit cleanly on SIGTERM (exit $stop_rc):"
    cat "$out" >&2
    return 1
  fi

  # wrk prints "N requests in 5.00s, ..." and "Requests/sec: R"; the
  # server's own count is the sum over its exit lines' "... M requests".
  local got rps served cpu rpc errors
  got=$(awk '/ requests in / { print $1 }' "$dir/wrk.out")
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$dir/wrk.out")
  served=$(awk '/ requests$/ { n += $(NF - 1) } END { print n + 0 }' "$out")
  errors=$(grep -E 'Socket errors|Non-2xx' "$dir/wrk.out" | tr -s ' \n' ' ')
  if [[ -z $got || -z $rps ]]; then
    err "no figures in wrk's output:"
    cat "$dir/wrk.out" >&2
    return 1
  fi
  cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
  rpc=$(awk -v n="$got" -v t=$((t1 - t0)) -v hz="$CLK_TCK" \
    'BEGIN { if (t > 0) printf "%.0f", n * hz / t; else print "nan" }')
  say "# $(printf '%-4s %-6s %8.0f' "$server" "$workload" "$rps") req/s," \
    "server CPU $cpu s, $rpc req/cpu-s; wrk counted $got, the server $served"
  # wrk counts each response it parses; the server may have answered the
  # last batch of each connection (64 x depth) without wrk reading it.
  if ((served < got || served - got > 64 * depth)); then
    say "# warning: wrk counted $got requests but the server served $served"
  fi
  [[ -z $errors ]] || say "# warning: wrk reported $errors"
  say "$server $workload $rps $rpc $round" >>"$dir/results"
}

# echo_by_round RESULTS WORKLOAD FIELD NAME: prints echo / uv of FIELD in
# each round of RESULTS, then the median of those ratios.
echo_by_round() {
  local by med
  by=$(awk -v w="$2" -v f="$3" '$2 == w { v[$5, $1] = $f; if ($5 > n) n = $5 }
    END { for (r = 1; r <= n; r++) if (v[r, "uv"] > 0) printf "%.2f\n", v[r, "echo"] / v[r, "uv"] }' "$1")
  med=$(median <<<"$by")
  printf '%s_%s_weft_vs_uv_by_round %s x (median %.2f)\n' "$2" "$4" "$(paste -sd ' ' <<<"$by")" "$med"
}

cmd_bench_echo() {
  local rounds=3 secs=5
  while (($#)); do
    case $1 in
      --rounds) rounds=${2:-} && shift ;;
      --seconds) secs=${2:-} && shift ;;
      *) die "bench-echo: no option '$1' (--rounds N, --seconds S)" ;;
    esac
    shift
  done
  [[ $rounds =~ ^[1-9][0-9]*$ && $secs =~ ^[1-9][0-9]*$ ]] ||
    die "bench-echo: --rounds and --seconds take a whole number above 0"
  CLK_TCK=$(getconf CLK_TCK) || die "getconf CLK_TCK failed"
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench-echo.XXXXXX") || die "mktemp failed"
  # A global for the EXIT trap: it runs after this function's locals are gone.
  WORK_DIR=$dir
  trap 'stop_server_on_exit; rm -rf -- "$WORK_DIR"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  heading "bench-echo: echo_server --workers 1 beside uv_http, under wrk"
  cat <<EOF
# Two servers answer through the same HTTP module (samples/echo_http.c):
#   echo  $BUILD/samples/echo_server --workers 1: one weft loop on a
#         worker thread, a task per connection
#   uv    $BUILD/bench/uv_http: one libuv loop, hand-written callbacks
# Each run starts a server afresh on 127.0.0.1 (port 0), runs
#   wrk -t2 -c64 -d${secs}s [-s bench/pipeline16.lua] http://127.0.0.1:PORT/
# and stops the server with SIGTERM. plain: one request at a time on each
# connection; pipe16: 16 requests pipelined in each write. Rounds: $rounds;
# the two servers take turns in each (echo first in odd rounds, uv first in
# even ones). req/cpu-s: the requests wrk counted over the server's user +
# system CPU time (/proc/PID/stat) during the wrk run. The figures are
# medians over the rounds; *_weft_vs_uv = echo / uv, above 1 where weft's
# server does better. *_by_round: echo / uv within each round (two runs
# side by side, so a change in the machine's load between rounds cancels
# out), and the median of those. http_module_*: the HTTP module both
# servers share (samples/echo_http.c over llhttp) timed alone, no I/O
# (bench/http_module.c): CPU only, no kernel, so far steadier.
EOF
  "$BUILD"/bench/http_module || die "bench-echo: http_module failed"
  local r w s order
  for ((r = 1; r <= rounds; r++)); do
    order=(echo uv)
    ((r % 2 == 0)) && order=(uv echo)
    for w in plain pipe16; do
      for s in "${order[@]}"; do
        echo_run "$dir" "$s" "$w" "$secs" "$r" || die "bench-echo: the $s $w run of round $r failed"
      done
    done
  done

  local rps_echo rps_uv rpc_echo rpc_uv
  for w in plain pipe16; do
    rps_echo=$(awk -v w="$w" '$1 == "echo" && $2 == w { print $3 }' "$dir/results" | median)
    rps_uv=$(awk -v w="$w" '$1 == "uv" && $2 == w { print $3 }' "$dir/results" | median)
    rpc_echo=$(awk -v w="$w" '$1 == "echo" && $2 == w { print $4 }' "$dir/results" | median)
    rpc_uv=$(awk -v w="$w" '$1 == "uv" && $2 == w { print $4 }' "$dir/results" | median)
    printf 'echo_%s_req_per_s %.0f req/s\n' "$w" "$rps_echo"
    printf 'uv_%s_req_per_s %.0f req/s\n' "$w" "$rps_uv"
    printf '%s_req_per_s_weft_vs_uv %s x\n' "$w" "$(ratio "$rps_echo" "$rps_uv")"
    printf 'echo_%s_req_per_cpu_s %.0f req/cpu-s\n' "$w" "$rpc_echo"
    printf 'uv_%s_req_per_cpu_s %.0f req/cpu-s\n' "$w" "$rpc_uv"
    printf '%s_req_per_cpu_s_weft_vs_uv %s x\n' "$w" "$(ratio "$rpc_echo" "$rpc_uv")"
    echo_by_round "$dir/results" "$w" 3 req_per_s
    echo_by_round "$dir/results" "$w" 4 req_per_cpu_s
  done
}


cmd_bench_echo "$@"
