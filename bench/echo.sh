#!/usr/bin/env bash
# bench/echo.sh: samples/echo_server beside bench/uv_http (raw libuv, the
# same HTTP module) under wrk, in rounds; prints medians and ratios. With
# --tls: echo_server over HTTPS beside nginx (Debian's nginx-light) serving
# the same one-byte answer over TLS 1.3.
#
#   bench/echo.sh BUILD_DIR [--tls] [--rounds N] [--seconds S]
#
# BUILD_DIR is a release build with echo_server, uv_http and http_module
# built (`./run bench-echo` builds them, installs wrk if missing and calls
# this; with --tls it also needs nginx and openssl). Each server runs
# afresh on 127.0.0.1 (port 0; nginx on a free port it finds) and is stopped with
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

# nginx_start DIR OUT: starts nginx as one process (no master, one worker
# loop, as echo_server --workers 1 is one thread) with DIR/nginx.conf made
# here for a port that is free, and waits (10 s at most) until it accepts
# a connection; sets SERVER_PID and SERVER_PORT. nginx cannot take port 0,
# so a port that another program took meanwhile makes it exit, and another
# port is tried.
nginx_start() {
  local dir=$1 out=$2 try i port
  for ((try = 0; try < 5; try++)); do
    port=$((20000 + (RANDOM % 30000)))
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $dir/nginx.err warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 5s;
  client_body_temp_path $dir/nginx-body;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    default_type text/plain;
    location / { return 200 "/"; }
  }
}
EOF
    : >"$out"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx.err" >"$out" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 200; i++)); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        SERVER_PORT=$port
        return 0
      fi
      server_exited "$SERVER_PID" && break
      sleep 0.05
    done
    server_stop
  done
  err "nginx did not start listening:"
  cat "$out" "$dir/nginx.err" >&2
  return 1
}

# tls_check PORT NAME: true when a TLS client gets TLS 1.3 from the server
# on PORT, so that both servers are timed with the protocol the figures name.
tls_check() {
  local got
  got=$(timeout 10 openssl s_client -connect "127.0.0.1:$1" -brief </dev/null 2>&1)
  grep -q 'Protocol version: TLSv1.3' <<<"$got" && return 0
  err "$2 did not negotiate TLS 1.3:"
  printf '%s\n' "$got" >&2
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

# echo_run DIR SERVER WORKLOAD SECONDS ROUND: starts SERVER (echo, uv or
# nginx) afresh, runs wrk against it for SECONDS with WORKLOAD (plain,
# pipe16, or close: a new connection, and with --tls a full handshake, for
# each request),
# stops it, and appends `SERVER WORKLOAD req_per_s req_per_cpu_s ROUND` to
# DIR/results.
# Returns non-zero when the server failed to start or to exit cleanly, or
# wrk failed.
echo_run() {
  local dir=$1 server=$2 workload=$3 secs=$4 round=$5
  local out=$dir/$server.out wrk_args=() argv=() depth=1 scheme=http
  case $server in
    echo) argv=("$BUILD"/samples/echo_server --host 127.0.0.1 --port 0 --workers 1) ;;
    uv) argv=("$BUILD"/bench/uv_http --host 127.0.0.1 --port 0) ;;
    nginx) argv=(nginx) ;;
  esac
  if ((TLS)); then
    scheme=https
    [[ $server == echo ]] && argv+=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
  fi
  case $workload in
    pipe16) wrk_args=(-s bench/pipeline16.lua) && depth=16 ;;
    close) wrk_args=(-H 'Connection: close') ;;
  esac
  if [[ $server == nginx ]]; then
    nginx_start "$dir" "$out" || return 1
  else
    server_start "$out" "${argv[@]}" || return 1
  fi
  if ((TLS && round == 1)) && [[ $workload == plain ]]; then
    tls_check "$SERVER_PORT" "${argv[0]}" || return 1
  fi
  local pid=$SERVER_PID t0 t1
  t0=$(cpu_ticks "$pid")
  # Bounded, so that a stalled server cannot hold the bench up; in the
  # foreground, so that ^C reaches wrk.
  timeout --foreground $((secs + 30)) wrk -t2 -c64 -d"${secs}s" "${wrk_args[@]}" \
    "$scheme://127.0.0.1:$SERVER_PORT/" >"$dir/wrk.out" 2>&1
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
  [[ $server == nginx ]] && served="(no count from nginx)"
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
  # nginx prints no count.
  if [[ $server != nginx ]] && ((served < got || served - got > 64 * depth)); then
    say "# warning: wrk counted $got requests but the server served $served"
  fi
  [[ -z $errors ]] || say "# warning: wrk reported $errors"
  say "$server $workload $rps $rpc $round" >>"$dir/results"
}

# echo_by_round RESULTS WORKLOAD FIELD NAME: prints echo / PEER of FIELD in
# each round of RESULTS, then the median of those ratios.
echo_by_round() {
  local by med
  by=$(awk -v w="$2" -v f="$3" -v p="$PEER" '$2 == w { v[$5, $1] = $f; if ($5 > n) n = $5 }
    END { for (r = 1; r <= n; r++) if (v[r, p] > 0) printf "%.2f\n", v[r, "echo"] / v[r, p] }' "$1")
  med=$(median <<<"$by")
  printf '%s%s_%s_weft_vs_%s_by_round %s x (median %.2f)\n' "$PREFIX" "$2" "$4" "$PEER" \
    "$(paste -sd ' ' <<<"$by")" "$med"
}

cmd_bench_echo() {
  local rounds=3 secs=5
  TLS=0
  while (($#)); do
    case $1 in
      --tls) TLS=1 ;;
      --rounds) rounds=${2:-} && shift ;;
      --seconds) secs=${2:-} && shift ;;
      *) die "bench-echo: no option '$1' (--tls, --rounds N, --seconds S)" ;;
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

  local workloads=(plain pipe16)
  if ((TLS)); then
    PEER=nginx PREFIX=tls_
    workloads=(plain pipe16 close)
    command -v nginx >/dev/null || die "nginx is not installed (Debian: apt-get install nginx-light)"
    # A throwaway key and certificate for both servers (P-256 ECDSA, the
    # kind a public CA issues today), valid for two days; not kept.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
      -keyout "$dir/key.pem" -out "$dir/cert.pem" >"$dir/openssl.out" 2>&1 ||
      die "openssl could not make a certificate: $(cat "$dir/openssl.out")"
    heading "bench-echo --tls: echo_server --workers 1 over TLS 1.3 beside nginx, under wrk"
    cat <<EOF
# Two single-threaded HTTPS servers answer GET / with the one byte "/",
# over TLS 1.3 with the same P-256 certificate:
#   echo   $BUILD/samples/echo_server --workers 1 --tls-cert --tls-key:
#          one weft loop on the main thread, a task per connection, weft_tls
#          over OpenSSL's memory BIOs
#   nginx  $(nginx -v 2>&1 | sed 's/^nginx version: //'), master_process off, worker_processes 1,
#          return 200 "/", session tickets off (weft_tls sends none);
#          its answer carries Server and Date headers too (~60 bytes more)
# Both link the same libssl ($(openssl version | cut -d' ' -f1-2)). Each run starts a server afresh,
# checks once (round 1) that openssl s_client negotiates TLSv1.3, runs
#   wrk -t2 -c64 -d${secs}s [-s bench/pipeline16.lua | -H 'Connection: close'] https://127.0.0.1:PORT/
# and stops the server with SIGTERM. plain: keep-alive, one request at a
# time on each connection; pipe16: 16 requests pipelined in each write;
# close: a new connection and a full handshake (ECDHE x25519 + an ECDSA
# signature) for every request, so its req/cpu-s is the handshake cost.
# Rounds: $rounds, the two servers taking turns (echo first in odd rounds).
# req/cpu-s: requests wrk counted over the server's user + system CPU
# (/proc/PID/stat) during the run; *_weft_vs_nginx = echo / nginx, above 1
# where weft's server does better; *_by_round: that ratio within each round,
# and its median. wrk itself needs more CPU than either server for
# handshakes, so on 2 cores close's req/s is the client's limit, not the
# server's: compare req/cpu-s. ktls_*: whether this machine could run
# kernel TLS at all (bench/ktls_probe.c).
EOF
    "$BUILD"/bench/ktls_probe || die "bench-echo: ktls_probe failed"
  else
    PEER=uv PREFIX=
    heading "bench-echo: echo_server --workers 1 beside uv_http, under wrk"
    cat <<EOF
# Two servers answer through the same HTTP module (samples/echo_http.c):
#   echo  $BUILD/samples/echo_server --workers 1: one weft loop on the
#         main thread, a task per connection
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
  fi
  local r w s order
  for ((r = 1; r <= rounds; r++)); do
    order=(echo "$PEER")
    ((r % 2 == 0)) && order=("$PEER" echo)
    for w in "${workloads[@]}"; do
      for s in "${order[@]}"; do
        echo_run "$dir" "$s" "$w" "$secs" "$r" || die "bench-echo: the $s $w run of round $r failed"
      done
    done
  done

  local rps_echo rps_peer rpc_echo rpc_peer
  for w in "${workloads[@]}"; do
    rps_echo=$(awk -v w="$w" '$1 == "echo" && $2 == w { print $3 }' "$dir/results" | median)
    rps_peer=$(awk -v w="$w" -v p="$PEER" '$1 == p && $2 == w { print $3 }' "$dir/results" | median)
    rpc_echo=$(awk -v w="$w" '$1 == "echo" && $2 == w { print $4 }' "$dir/results" | median)
    rpc_peer=$(awk -v w="$w" -v p="$PEER" '$1 == p && $2 == w { print $4 }' "$dir/results" | median)
    printf '%secho_%s_req_per_s %.0f req/s\n' "$PREFIX" "$w" "$rps_echo"
    printf '%s%s_%s_req_per_s %.0f req/s\n' "$PREFIX" "$PEER" "$w" "$rps_peer"
    printf '%s%s_req_per_s_weft_vs_%s %s x\n' "$PREFIX" "$w" "$PEER" "$(ratio "$rps_echo" "$rps_peer")"
    printf '%secho_%s_req_per_cpu_s %.0f req/cpu-s\n' "$PREFIX" "$w" "$rpc_echo"
    printf '%s%s_%s_req_per_cpu_s %.0f req/cpu-s\n' "$PREFIX" "$PEER" "$w" "$rpc_peer"
    printf '%s%s_req_per_cpu_s_weft_vs_%s %s x\n' "$PREFIX" "$w" "$PEER" "$(ratio "$rpc_echo" "$rpc_peer")"
    echo_by_round "$dir/results" "$w" 3 req_per_s
    echo_by_round "$dir/results" "$w" 4 req_per_cpu_s
  done
}

cmd_bench_echo "$@"
