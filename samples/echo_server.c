/* echo_server: an HTTP/1.1 echo server on a pool of weft loops, one task per
 * connection.
 *
 *   echo_server [--host H] [--port P] [--workers N]
 *               [--mode reuseport|handoff|least-loaded] [limits...]
 *               [--tls-cert CHAIN.pem --tls-key KEY.pem]
 *
 * Every request gets 200 OK with its body echoed back (or its target, when
 * the body is empty); samples/echo_http.c does the HTTP, this file the
 * loops, the sockets and the deadlines. See --help for the limits.
 *
 * --tls-cert and --tls-key: the same echo over HTTPS on the same port
 * (weft_tls: TLS 1.2 and 1.3), on every mode and worker count, with the same
 * limits and deadlines. The handshake runs under the header deadline, from
 * the accept: a client that stalls in it is cut off as a slow header is, and
 * the first request's header deadline runs from the accept too. A
 * connection still in its handshake at SIGTERM is closed at once, as an idle
 * one is. Built without weft_tls (WEFT_TLS OFF), the options are refused.
 *
 * SIGINT or SIGTERM: stop accepting, let requests in flight finish (idle
 * keep-alive connections are closed at once) for up to 1.5 s
 * (weft_pool_drain; a pool of one loop waits the same way), cancel what is
 * left, exit 0 within 2 s, printing what the drain did and one line per
 * loop with the connections and requests it served. With a
 * pool, signals are taken by the main thread with sigwait and the pool's
 * workers block them. SIGUSR1 prints weft_dump's picture of every loop and
 * task on stderr.
 *
 * --workers 1 runs its one loop on the main thread, with no pool, so that
 * the process has a single thread: while a process has one, the kernel
 * skips taking a reference on the file at every system call on a
 * descriptor, and glibc skips the cancellation bookkeeping around every
 * read and write. A second thread, even one that only waits for signals,
 * cost uv_http about 5% more CPU a request here. Signals then come through
 * libuv signal watchers on the loop, and --mode does not apply (one loop
 * accepts on one socket).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <weft.h>
#ifdef ECHO_TLS
#include <weft_tls.h>
#endif

#include "echo_http.h"

#define READ_SIZE 16384
/* After SIGINT or SIGTERM, requests in flight get this long before their
 * tasks are cancelled (the exit comes within 2 s). */
#define STOP_GRACE_MS 1500
#define MAX_LOOPS 256

typedef struct config {
  const char *host;
  int port;
  unsigned workers;
  weft_listen_mode_t mode;
  echo_limits_t limits;
  uint64_t header_timeout_ms;
  uint64_t idle_timeout_ms;
  const char *tls_cert, *tls_key; /* both or neither */
#ifdef ECHO_TLS
  weft_tls_ctx_t *tls;            /* made from them; NULL: plain HTTP */
#endif
} config_t;

/* One per loop: its acceptor and the connections it serves. */
typedef struct loop_state {
  unsigned index;
  weft_loop_t *loop;
  weft_listener_t *l;
  const config_t *cfg;
  atomic_ullong connections, requests;
  atomic_int live;
  /* Connections of this loop (touched only on the loop's thread). */
  struct conn *conns;
} loop_state_t;

typedef struct conn {
  struct conn *prev, *next;
  loop_state_t *ls;
  weft_stream_t *s;
  weft_task_t *task;
  bool idle;                /* waiting for the first byte of a request, or in
                               the TLS handshake */
} conn_t;

static atomic_int g_stopping;

/* Milliseconds, coarse (a few ms steps, a quarter of the cost of the
 * precise clock): enough for second-long deadlines. */
static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Writes what the HTTP side has queued, in one write: the responses of a
 * pipelined batch go out together. */
static int flush(conn_t *c, echo_conn_t *h) {
  size_t n;
  const char *out = echo_conn_output(h, &n);
  if (n == 0)
    return 0;
  int err = weft_stream_write(c->s, out, n);
  if (err == 0)
    echo_conn_consume(h, n);
  return err;
}

/* The idle deadline is armed lazily, as nginx arms its timers: each arming
 * runs IDLE_SLACK_MS past the limit, and a read that begins less than half
 * of that after the last arming keeps it (with the coarse clock's lag of a
 * tick, under IDLE_SLACK_MS has then passed). So an idle keep-alive
 * connection is closed between the limit and IDLE_SLACK_MS after it, never
 * before, and a busy one sets its deadline (a precise clock read) a few
 * times a second instead of once a request. */
#define IDLE_SLACK_MS 100

/* first_start: where the first request's header deadline runs from when it
 * began before the first byte (the TLS handshake's start); 0: from the
 * first byte. */
static void serve(conn_t *c, echo_conn_t *h, char *buf, uint64_t first_start) {
  const config_t *cfg = c->ls->cfg;
  uint64_t request_start = 0;
  uint64_t idle_armed = 0; /* now_ms() at the idle deadline's arming; 0: not armed */
  /* Writes run under the deadline of the read before them. */
  weft_deadline_set(cfg->idle_timeout_ms);
  for (;;) {
    if (flush(c, h) != 0 || echo_conn_should_close(h))
      break;
    if (atomic_load_explicit(&g_stopping, memory_order_relaxed) && !echo_conn_in_request(h))
      break;
    if (!echo_conn_want_input(h)) {
      /* Held off by the pipeline limit: the output just went out, so the
       * requests already read can go on. */
      if (echo_conn_feed(h, NULL, 0) != 0) {
        flush(c, h);
        break;
      }
      continue;
    }
    /* The header deadline runs from a request's first byte; between
     * requests, the idle one. */
    uint64_t t = now_ms();
    uint64_t read_end; /* about when the read's deadline falls */
    if (echo_conn_in_request(h)) {
      read_end = request_start + cfg->header_timeout_ms;
      if (read_end <= t)
        break;
      weft_deadline_set(read_end - t);
      idle_armed = 0;
    } else {
      request_start = 0;
      if (idle_armed == 0 || t - idle_armed >= IDLE_SLACK_MS / 2) {
        weft_deadline_set(cfg->idle_timeout_ms + IDLE_SLACK_MS);
        idle_armed = t ? t : 1;
      }
      read_end = idle_armed + cfg->idle_timeout_ms + IDLE_SLACK_MS;
    }
    c->idle = !echo_conn_in_request(h);
    ssize_t got = weft_stream_read(c->s, buf, READ_SIZE);
    c->idle = false;
    if (got <= 0)
      break;
    /* A read returns the bytes that came in time even when the loop, late,
     * saw its deadline first (weft_stream_read): the answer's writes then
     * get a deadline of their own, or the first would fail at once. */
    uint64_t after = now_ms();
    if (after + IDLE_SLACK_MS >= read_end) {
      weft_deadline_set(cfg->idle_timeout_ms);
      idle_armed = 0;
    }
    if (request_start == 0)
      request_start = first_start ? first_start : after;
    first_start = 0;
    if (echo_conn_feed(h, buf, (size_t)got) != 0) {
      weft_deadline_set(cfg->idle_timeout_ms);
      flush(c, h); /* the error response, then close */
      break;
    }
    if (!echo_conn_in_request(h))
      request_start = 0;
  }
  /* Counted once, as the connection ends: the exit lines come after every
   * connection ended. */
  atomic_fetch_add_explicit(&c->ls->requests, echo_conn_requests(h), memory_order_relaxed);
}

static void *conn_main(void *arg) {
  conn_t *c = arg;
  loop_state_t *ls = c->ls;
  echo_conn_t *h = NULL;
  char *buf = malloc(READ_SIZE);
  uint64_t first_start = 0;
  bool ok = true;
#ifdef ECHO_TLS
  if (ls->cfg->tls) {
    /* The handshake under the header deadline, from the accept; a stop
     * asked meanwhile cancels it (close_idle). */
    first_start = now_ms();
    first_start += !first_start;
    weft_deadline_set(ls->cfg->header_timeout_ms);
    c->idle = true;
    ok = !atomic_load(&g_stopping) && weft_tls_accept(c->s, ls->cfg->tls) == 0;
    c->idle = false;
  }
#endif
  if (ok && buf && echo_conn_new(&h, &ls->cfg->limits) == 0)
    serve(c, h, buf, first_start);
  echo_conn_free(h);
  free(buf);
  weft_deadline_clear();
  weft_stream_close(c->s);
  /* Off the loop's list. */
  if (c->prev)
    c->prev->next = c->next;
  else
    ls->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  weft_task_release(c->task);
  free(c);
  atomic_fetch_sub(&ls->live, 1);
  return NULL;
}

static void *acceptor_main(void *arg) {
  loop_state_t *ls = arg;
  weft_stream_t *s;
  int err;
  while ((err = weft_tcp_accept(ls->l, &s)) == 0) {
    conn_t *c = calloc(1, sizeof *c);
    if (!c) {
      weft_stream_close(s);
      continue;
    }
    c->ls = ls;
    c->s = s;
    atomic_fetch_add(&ls->live, 1);
    atomic_fetch_add_explicit(&ls->connections, 1, memory_order_relaxed);
    if (weft_spawn(NULL, conn_main, c, &c->task) != 0) {
      atomic_fetch_sub(&ls->live, 1);
      weft_stream_close(s);
      free(c);
      continue;
    }
    c->next = ls->conns;
    if (ls->conns)
      ls->conns->prev = c;
    ls->conns = c;
  }
  if (err != WEFT_ECLOSED)
    fprintf(stderr, "echo_server: accept on loop %u: %s\n", ls->index, weft_strerror(err));
  return NULL;
}

/* On the loop's thread, at shutdown: idle keep-alive connections end now. */
static void close_idle(void *arg) {
  loop_state_t *ls = arg;
  for (conn_t *c = ls->conns; c; c = c->next)
    if (c->idle)
      weft_task_cancel(c->task);
}

/* After the loop has closed (its remaining tasks cancelled and unwound):
 * frees the connections accepted so late that their task never started
 * (the loop closed their streams; what is left is ours), and prints the
 * loop's exit line. */
static void loop_state_end(loop_state_t *ls) {
  while (ls->conns) {
    conn_t *c = ls->conns;
    ls->conns = c->next;
    weft_task_release(c->task);
    free(c);
  }
  printf("loop weft-%u: %llu connections, %llu requests\n", ls->index,
         (unsigned long long)atomic_load(&ls->connections),
         (unsigned long long)atomic_load(&ls->requests));
}

/* ------------------------------------------------------ one loop, no pool */

/* ", TLS" in the listening line when it serves HTTPS. */
static const char *tls_note(const config_t *cfg) {
  return cfg->tls_cert ? ", TLS" : "";
}

static void config_free(config_t *cfg) {
#ifdef ECHO_TLS
  weft_tls_ctx_free(cfg->tls);
  cfg->tls = NULL;
#else
  (void)cfg;
#endif
}

/* The state of a --workers 1 run: its loop runs on the main thread. */
typedef struct one_loop {
  loop_state_t ls;
  uv_signal_t signals[3];  /* SIGINT, SIGTERM, SIGUSR1 */
  int nsignals;            /* of them, those initialised */
  bool stop_asked;
  bool failed;             /* the signals could not be watched */
} one_loop_t;

/* On the loop's thread, outside any task: what the main thread's sigwait
 * does for a pool. */
static void on_signal(uv_signal_t *h, int signum) {
  one_loop_t *o = h->data;
  if (signum == SIGUSR1) {
    weft_dump(stderr);
    return;
  }
  if (o->stop_asked)
    return;
  o->stop_asked = true;
  atomic_store(&g_stopping, 1);
  weft_listener_close(o->ls.l);
  close_idle(&o->ls);
}

/* Watches SIGINT, SIGTERM and SIGUSR1 on the loop. False, having said why,
 * where libuv cannot: the server would then not stop cleanly. */
static bool signals_start(one_loop_t *o) {
  static const int signums[3] = {SIGINT, SIGTERM, SIGUSR1};
  uv_loop_t *uv = weft_loop_uv(o->ls.loop);
  for (int i = 0; i < 3; i++) {
    int err = uv_signal_init(uv, &o->signals[i]);
    if (err == 0) {
      o->nsignals++;
      o->signals[i].data = o;
      err = uv_signal_start(&o->signals[i], on_signal, signums[i]);
    }
    if (err != 0) {
      fprintf(stderr, "echo_server: watching %s: %s\n", strsignal(signums[i]),
              uv_strerror(err));
      return false;
    }
  }
  return true;
}

static void signals_close(one_loop_t *o) {
  for (int i = 0; i < o->nsignals; i++)
    uv_close((uv_handle_t *)&o->signals[i], NULL);
}

/* The main task: accepts until a signal closes the listener, then lets the
 * requests in flight finish for up to STOP_GRACE_MS; weft_loop_close
 * cancels what is left. */
static void *one_loop_main(void *arg) {
  one_loop_t *o = arg;
  if (!signals_start(o)) {
    o->failed = true;
    signals_close(o);
    weft_listener_close(o->ls.l);
    return NULL;
  }
  /* Announced once a signal can stop it cleanly. */
  printf("echo_server: listening on %s:%d, 1 loop on the main thread%s\n", o->ls.cfg->host,
         weft_listener_port(o->ls.l), tls_note(o->ls.cfg));
  fflush(stdout);
  acceptor_main(&o->ls);
  uint64_t give_up = now_ms() + STOP_GRACE_MS;
  while (atomic_load(&o->ls.live) > 0 && now_ms() < give_up)
    weft_sleep(10);
  signals_close(o);
  return NULL;
}

static int run_one_loop(const config_t *cfg) {
  one_loop_t o = {.ls = {.index = 0, .cfg = cfg}};
  signal(SIGPIPE, SIG_IGN);
  int err = weft_loop_new(&o.ls.loop, NULL);
  if (err) {
    fprintf(stderr, "echo_server: weft_loop_new: %s\n", weft_strerror(err));
    return 1;
  }
  if ((err = weft_tcp_listen(&o.ls.l, cfg->host, cfg->port, NULL)) != 0) {
    fprintf(stderr, "echo_server: listen on %s:%d: %s\n", cfg->host, cfg->port,
            weft_strerror(err));
    weft_loop_close(o.ls.loop);
    return 1;
  }
  weft_task_t *main_task;
  if ((err = weft_spawn(o.ls.loop, one_loop_main, &o, &main_task)) != 0) {
    fprintf(stderr, "echo_server: spawn: %s\n", weft_strerror(err));
    return 1;
  }
  weft_loop_run_until_complete(o.ls.loop, main_task, NULL);
  weft_task_release(main_task);
  /* Cancels and unwinds whatever is left, and runs the close callbacks. */
  weft_loop_close(o.ls.loop);
  loop_state_end(&o.ls);
  return o.failed ? 1 : 0;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f) {
  fprintf(f,
          "usage: echo_server [options]\n"
          "  --host H             address to listen on (default 127.0.0.1)\n"
          "  --port P             port (default 8080; 0 = any, printed)\n"
          "  --workers N          loops, one thread each (default: one per CPU);\n"
          "                       1: one loop on the main thread, a single thread\n"
          "  --mode M             reuseport (default), handoff or least-loaded\n"
          "  --max-line BYTES     request line limit, 414 beyond (default 8192)\n"
          "  --max-header BYTES   header block limit, 431 beyond (default 16384)\n"
          "  --max-headers N      header fields limit, 431 beyond (default 100)\n"
          "  --max-body BYTES     body limit, 413 beyond (default 1048576)\n"
          "  --max-pipeline N     requests answered but not yet sent (default 16)\n"
          "  --header-timeout MS  from a request's first byte (default 10000)\n"
          "  --idle-timeout MS    keep-alive idle limit (default 5000)\n"
          "  --tls-cert FILE      serve HTTPS: the PEM certificate chain (server's first)\n"
          "  --tls-key FILE       and its PEM private key (unencrypted); the TLS\n"
          "                       handshake runs under the header deadline\n");
}

static unsigned long long number(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || end == s) {
    fprintf(stderr, "echo_server: %s: not a number: %s\n", what, s);
    exit(2);
  }
  return v;
}

static void parse(int argc, char **argv, config_t *cfg) {
  static const struct option opts[] = {
      {"host", required_argument, 0, 'h'},        {"port", required_argument, 0, 'p'},
      {"workers", required_argument, 0, 'w'},     {"mode", required_argument, 0, 'm'},
      {"max-line", required_argument, 0, 'L'},    {"max-header", required_argument, 0, 'H'},
      {"max-headers", required_argument, 0, 'F'}, {"max-body", required_argument, 0, 'B'},
      {"max-pipeline", required_argument, 0, 'P'}, {"header-timeout", required_argument, 0, 'T'},
      {"idle-timeout", required_argument, 0, 'I'}, {"tls-cert", required_argument, 0, 'C'},
      {"tls-key", required_argument, 0, 'K'},     {"help", no_argument, 0, '?'},
      {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
    case 'h': cfg->host = optarg; break;
    case 'p': cfg->port = (int)number(optarg, "--port"); break;
    case 'w': cfg->workers = (unsigned)number(optarg, "--workers"); break;
    case 'm':
      if (strcmp(optarg, "reuseport") == 0)
        cfg->mode = WEFT_LISTEN_REUSEPORT;
      else if (strcmp(optarg, "handoff") == 0)
        cfg->mode = WEFT_LISTEN_HANDOFF;
      else if (strcmp(optarg, "least-loaded") == 0)
        cfg->mode = WEFT_LISTEN_LEAST_LOADED;
      else {
        fprintf(stderr, "echo_server: --mode: reuseport, handoff or least-loaded\n");
        exit(2);
      }
      break;
    case 'L': cfg->limits.max_request_line = number(optarg, "--max-line"); break;
    case 'H': cfg->limits.max_header_bytes = number(optarg, "--max-header"); break;
    case 'F': cfg->limits.max_headers = number(optarg, "--max-headers"); break;
    case 'B': cfg->limits.max_body = number(optarg, "--max-body"); break;
    case 'P': cfg->limits.max_pipeline = number(optarg, "--max-pipeline"); break;
    case 'T': cfg->header_timeout_ms = number(optarg, "--header-timeout"); break;
    case 'I': cfg->idle_timeout_ms = number(optarg, "--idle-timeout"); break;
    case 'C': cfg->tls_cert = optarg; break;
    case 'K': cfg->tls_key = optarg; break;
    default:
      usage(ch == '?' && strcmp(argv[optind - 1], "--help") == 0 ? stdout : stderr);
      exit(ch == '?' && strcmp(argv[optind - 1], "--help") == 0 ? 0 : 2);
    }
  }
  if (optind < argc || cfg->port < 0 || cfg->port > 65535 || cfg->workers > MAX_LOOPS) {
    usage(stderr);
    exit(2);
  }
  if (cfg->tls_cert || cfg->tls_key) {
#ifndef ECHO_TLS
    fprintf(stderr, "echo_server: --tls-cert/--tls-key: built without TLS (weft_tls: "
                    "configure with -DWEFT_TLS=ON and OpenSSL 3)\n");
    exit(2);
#else
    if (!cfg->tls_cert || !cfg->tls_key) {
      fprintf(stderr, "echo_server: --tls-cert and --tls-key go together\n");
      exit(2);
    }
    int err = weft_tls_server_ctx(&cfg->tls, cfg->tls_cert, cfg->tls_key);
    if (err) {
      fprintf(stderr, "echo_server: --tls-cert %s --tls-key %s: %s%s%s\n", cfg->tls_cert,
              cfg->tls_key, weft_strerror(err), err == WEFT_ETLS ? ": " : "",
              err == WEFT_ETLS ? weft_tls_error() : "");
      exit(2);
    }
#endif
  }
}


int main(int argc, char **argv) {
  config_t cfg = {.host = "127.0.0.1", .port = 8080, .mode = WEFT_LISTEN_REUSEPORT,
                  .header_timeout_ms = 10000, .idle_timeout_ms = 5000};
  echo_limits_default(&cfg.limits);
  parse(argc, argv, &cfg);
  if (cfg.workers == 1) {
    int rc = run_one_loop(&cfg);
    config_free(&cfg);
    return rc;
  }

  /* Block the signals before any thread starts, so only sigwait sees them. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  weft_pool_t *pool;
  weft_pool_opts_t popts = {.workers = cfg.workers};
  int err = weft_pool_new(&pool, &popts);
  if (err) {
    fprintf(stderr, "echo_server: weft_pool_new: %s\n", weft_strerror(err));
    return 1;
  }
  unsigned n = weft_pool_size(pool);
  weft_listener_t *l;
  weft_listen_opts_t lopts = {.mode = cfg.mode, .pool = pool};
  if ((err = weft_tcp_listen(&l, cfg.host, cfg.port, &lopts)) != 0) {
    fprintf(stderr, "echo_server: listen on %s:%d: %s\n", cfg.host, cfg.port, weft_strerror(err));
    weft_pool_shutdown(pool, WEFT_CANCEL);
    return 1;
  }
  loop_state_t *loops = calloc(n, sizeof *loops);
  weft_task_t **acceptors = calloc(n, sizeof *acceptors);
  if (!loops || !acceptors) {
    fprintf(stderr, "echo_server: out of memory\n");
    return 1;
  }
  for (unsigned i = 0; i < n; i++) {
    loops[i].index = i;
    loops[i].loop = weft_pool_loop(pool, i);
    loops[i].l = l;
    loops[i].cfg = &cfg;
    if ((err = weft_spawn(loops[i].loop, acceptor_main, &loops[i], &acceptors[i])) != 0) {
      fprintf(stderr, "echo_server: spawn: %s\n", weft_strerror(err));
      return 1;
    }
  }
  printf("echo_server: listening on %s:%d, %u loops, mode %s%s\n", cfg.host,
         weft_listener_port(l), n,
         cfg.mode == WEFT_LISTEN_HANDOFF        ? "handoff"
         : cfg.mode == WEFT_LISTEN_LEAST_LOADED ? "least-loaded"
                                                : "reuseport",
         tls_note(&cfg));
  fflush(stdout);

  /* SIGUSR1: a dump of every loop and task, on stderr. */
  int sig;
  while (sigwait(&sigs, &sig) == 0 && sig == SIGUSR1)
    weft_dump(stderr);

  /* Stop accepting; idle connections end now, the others after the
   * request in hand. The pool drains: whatever is still busy after 1.5 s
   * is cancelled, and the report says what. */
  atomic_store(&g_stopping, 1);
  weft_listener_close(l);
  for (unsigned i = 0; i < n; i++)
    weft_loop_call_soon(loops[i].loop, close_idle, &loops[i]);
  weft_gather(acceptors, n, NULL, NULL);
  for (unsigned i = 0; i < n; i++)
    weft_task_release(acceptors[i]);
  weft_drain_report_t report;
  weft_pool_drain(pool, STOP_GRACE_MS, &report);
  printf("echo_server: drained in %llu ms: %llu tasks ended, %llu cancelled%s%s\n",
         (unsigned long long)report.elapsed_ms, (unsigned long long)report.completed,
         (unsigned long long)report.cancelled, report.nnames ? ", the first: " : "",
         report.nnames ? report.names[0] : "");
  for (unsigned i = 0; i < n; i++)
    loop_state_end(&loops[i]);
  free(loops);
  free(acceptors);
  config_free(&cfg);
  return 0;
}
