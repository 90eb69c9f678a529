/* uv_http: the baseline that samples/echo_server is measured against.
 *
 *   uv_http [--host H] [--port P]
 *
 * One libuv loop on one thread, written the way one writes libuv by hand:
 * a listening uv_tcp_t, and per connection a uv_tcp_t with TCP_NODELAY, a
 * read buffer of its own and callbacks. The HTTP is the same I/O-free
 * module the echo server uses (samples/echo_http.c), with the same default
 * limits, so that `./run bench-echo` compares the runtimes and not two
 * parsers: every chunk read is fed to it, and what it queued goes out in one
 * write (uv_try_write, then uv_write for whatever the socket did not take).
 *
 * A connection reads only while nothing is being written and the HTTP side
 * wants input: while a uv_write is in flight the output buffer it points
 * into must not move, and the echo server's tasks also wait for a write
 * before they read again. After each write the requests that the pipeline
 * limit held off go on (a feed with no data), as echo_http.h asks.
 *
 * Once ready it prints `uv_http: listening on H:PORT` (with --port 0 the
 * port the kernel chose). SIGINT or SIGTERM closes the listener and every
 * connection, and it exits 0 after printing the connections and requests it
 * served.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "echo_http.h"

/* The echo server reads in chunks of this size too. */
#define READ_SIZE 16384

typedef struct conn {
  uv_tcp_t tcp;             /* first, so the handle's address is the conn's */
  uv_write_t write_req;     /* the one write in flight, if any */
  echo_conn_t *http;        /* the HTTP state: parser, responses not yet sent */
  struct conn *prev, *next; /* on the list of live connections */
  size_t writing;           /* bytes handed to uv_write and not yet done */
  bool reading;             /* uv_read_start is in effect */
  bool failed;              /* feed said to close once the output is out */
  char buf[READ_SIZE];
} conn_t;

static uv_loop_t *loop;
static uv_tcp_t server;
static uv_signal_t sigint_watcher, sigterm_watcher;
static echo_limits_t limits;
static conn_t *conns;
static bool stopping;
static unsigned long long connections_served, requests_served;

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void on_close(uv_handle_t *h) {
  conn_t *c = (conn_t *)h;
  requests_served += echo_conn_requests(c->http);
  echo_conn_free(c->http);
  free(c);
}

/* Closing unlinks at once, so that the stop path never sees a connection
 * twice; the memory goes in on_close, when libuv is done with the handle.
 * After a response the close comes only once all of it is written, as
 * weft_stream_close waits for the writes in the echo server. */
static void conn_close(conn_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  if (c->prev)
    c->prev->next = c->next;
  else
    conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
  uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = (conn_t *)h;
  (void)suggested;
  *buf = uv_buf_init(c->buf, sizeof c->buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_write(uv_write_t *req, int status);

/* After output was taken: the requests read while the pipeline limit held
 * parsing off go on now, as echo_http.h asks after every consume. */
static void conn_resume(conn_t *c) {
  if (!c->failed && echo_conn_feed(c->http, NULL, 0) != 0)
    c->failed = true;
}

/* Moves the connection on after a read or a write: sends what the HTTP side
 * queued, then closes or reads again, as it asks. */
static void conn_pump(conn_t *c) {
  size_t n;
  const char *out;
  while ((out = echo_conn_output(c->http, &n)), n > 0) {
    uv_buf_t b = uv_buf_init((char *)out, (unsigned)n);
    int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (w == UV_EAGAIN)
      w = 0;
    if (w < 0) {
      conn_close(c);
      return;
    }
    echo_conn_consume(c->http, (size_t)w);
    if ((size_t)w < n) {
      /* The socket is full: the rest when it can take it, and no reads
       * meanwhile, since feeding could move the bytes being written. */
      out = echo_conn_output(c->http, &n);
      if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
      }
      b = uv_buf_init((char *)out, (unsigned)n);
      if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        conn_close(c);
        return;
      }
      c->writing = n;
      return;
    }
    conn_resume(c);
  }
  if (c->failed || echo_conn_should_close(c->http)) {
    conn_close(c);
    return;
  }
  /* With the output flushed and parsing resumed, input is wanted; were it
   * not, nothing would ever wake this connection again. */
  if (!echo_conn_want_input(c->http)) {
    conn_close(c);
    return;
  }
  if (!c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
      conn_close(c);
      return;
    }
    c->reading = true;
  }
}

static void on_write(uv_write_t *req, int status) {
  conn_t *c = (conn_t *)req->handle;
  size_t n = c->writing;
  c->writing = 0;
  if (status < 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
    conn_close(c);
    return;
  }
  echo_conn_consume(c->http, n);
  conn_resume(c);
  conn_pump(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = (conn_t *)s;
  if (nread < 0) { /* UV_EOF or an error */
    conn_close(c);
    return;
  }
  if (nread == 0) /* EAGAIN: nothing to do */
    return;
  if (echo_conn_feed(c->http, buf->base, (size_t)nread) != 0)
    c->failed = true;
  conn_pump(c);
}

static void on_connection(uv_stream_t *listener, int status) {
  if (status < 0) {
    fprintf(stderr, "uv_http: accept: %s\n", uv_strerror(status));
    return;
  }
  conn_t *c = malloc(sizeof *c);
  if (!c)
    return;
  memset(c, 0, offsetof(conn_t, buf));
  if (uv_tcp_init(loop, &c->tcp) != 0) {
    free(c);
    return;
  }
  if (echo_conn_new(&c->http, &limits) != 0) {
    /* Not on_close: there is no HTTP state to count and free. */
    uv_close((uv_handle_t *)&c->tcp, free_handle);
    return;
  }
  c->next = conns;
  if (conns)
    conns->prev = c;
  conns = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  connections_served++;
  uv_tcp_nodelay(&c->tcp, 1);
  conn_pump(c);
}

static void on_signal(uv_signal_t *w, int signum) {
  (void)w;
  (void)signum;
  if (stopping)
    return;
  stopping = true;
  uv_close((uv_handle_t *)&server, NULL);
  uv_close((uv_handle_t *)&sigint_watcher, NULL);
  uv_close((uv_handle_t *)&sigterm_watcher, NULL);
  /* A benchmark's server need not drain: every connection ends now. */
  while (conns)
    conn_close(conns);
}

static void usage(FILE *f) {
  fprintf(f, "usage: uv_http [--host H] [--port P]\n"
             "  --host H   address to listen on (default 127.0.0.1)\n"
             "  --port P   port (default 8080; 0 = any, printed)\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"host", required_argument, 0, 'h'},
                                       {"port", required_argument, 0, 'p'},
                                       {"help", no_argument, 0, '?'},
                                       {0, 0, 0, 0}};
  const char *host = "127.0.0.1";
  long port = 8080;
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    char *end;
    switch (ch) {
    case 'h':
      host = optarg;
      break;
    case 'p':
      errno = 0;
      port = strtol(optarg, &end, 10);
      if (errno || *end || end == optarg || port < 0 || port > 65535) {
        fprintf(stderr, "uv_http: --port: not a port: %s\n", optarg);
        return 2;
      }
      break;
    default: {
      bool help = strcmp(argv[optind - 1], "--help") == 0;
      usage(help ? stdout : stderr);
      return help ? 0 : 2;
    }
    }
  }
  if (optind < argc) {
    usage(stderr);
    return 2;
  }

  signal(SIGPIPE, SIG_IGN);
  echo_limits_default(&limits);
  loop = uv_default_loop();

  struct sockaddr_storage addr;
  int err = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr);
  if (err != 0)
    err = uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&addr);
  if (err != 0) {
    fprintf(stderr, "uv_http: --host: not an IP address: %s\n", host);
    return 2;
  }
  if ((err = uv_tcp_init(loop, &server)) != 0 ||
      (err = uv_tcp_bind(&server, (struct sockaddr *)&addr, 0)) != 0 ||
      (err = uv_listen((uv_stream_t *)&server, SOMAXCONN, on_connection)) != 0) {
    fprintf(stderr, "uv_http: listen on %s:%ld: %s\n", host, port, uv_strerror(err));
    return 1;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  int real_port = ntohs(bound.ss_family == AF_INET6
                            ? ((struct sockaddr_in6 *)&bound)->sin6_port
                            : ((struct sockaddr_in *)&bound)->sin_port);

  uv_signal_init(loop, &sigint_watcher);
  uv_signal_init(loop, &sigterm_watcher);
  uv_signal_start(&sigint_watcher, on_signal, SIGINT);
  uv_signal_start(&sigterm_watcher, on_signal, SIGTERM);

  printf("uv_http: listening on %s:%d\n", host, real_port);
  fflush(stdout);

  uv_run(loop, UV_RUN_DEFAULT);
  if ((err = uv_loop_close(loop)) != 0) {
    fprintf(stderr, "uv_http: uv_loop_close: %s\n", uv_strerror(err));
    return 1;
  }
  printf("uv_http: %llu connections, %llu requests\n", connections_served, requests_served);
  return 0;
}
