/* The echo server from the outside: starts the built samples/echo_server on
 * 127.0.0.1 (any free port, two loops or WORKERS, the mode given), drives it with curl
 * and with raw sockets, and stops it with SIGTERM.
 *
 *   echo_e2e ECHO_SERVER_PATH reuseport|handoff|least-loaded [WORKERS]
 *
 * WORKERS (default 2) is passed as --workers; with 1 the server must also
 * run as a single thread (its loop on the main thread, no pool).
 *
 * Checked: curl GET, POST, POST with Expect: 100-continue, HTTP/1.0 and
 * connection reuse; pipelined requests answered in order on a kept-alive
 * connection; Connection: close and HTTP/1.0 closing; a chunked body echoed
 * whole; every bad-input shape answered 400 and closed; each limit's status (414, 431, 413); the idle
 * and header deadlines; 400 connections at once; 300 connections reset in
 * the middle of a request, after which the server still answers; SIGTERM
 * ends the server with status 0 within 2 s and a line per loop. Counts and
 * durations are bounded (the durations stretched by SLOW in a sanitizer
 * build); nothing leaves the loopback interface.
 */
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "e2e.h"

/* -------------------------------------------------------------- curl */

/* Runs curl with args (a NULL-ended list) and returns its stdout. */
static char *curl(const char *first, ...) {
  char *argv[32];
  int n = 0;
  argv[n++] = "curl";
  argv[n++] = "-s";
  argv[n++] = "-S";
  argv[n++] = "--max-time";
  argv[n++] = "5";
  va_list ap;
  va_start(ap, first);
  for (const char *a = first; a && n < 31; a = va_arg(ap, const char *))
    argv[n++] = (char *)a;
  va_end(ap);
  argv[n] = NULL;
  int fds[2];
  if (pipe(fds) != 0)
    return NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid;
  int rc = posix_spawnp(&pid, "curl", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return NULL;
  }
  static char buf[65536];
  size_t got = 0;
  ssize_t k;
  while (got < sizeof buf - 1 && (k = read(fds[0], buf + got, sizeof buf - 1 - got)) > 0)
    got += (size_t)k;
  buf[got] = 0;
  close(fds[0]);
  int status;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? buf : NULL;
}

static void url(char *out, size_t len, const char *path) {
  snprintf(out, len, "http://127.0.0.1:%d%s", g_port, path);
}

static void check_curl(void) {
  char u[128], u2[128];
  url(u, sizeof u, "/hello/world");
  char *r = curl(u, NULL);
  CHECK(r && strcmp(r, "/hello/world") == 0, "curl GET: %s", r ? r : "(failed)");
  r = curl("--data-binary", "some body text", u, NULL);
  CHECK(r && strcmp(r, "some body text") == 0, "curl POST: %s", r ? r : "(failed)");
  r = curl("--http1.0", u, NULL);
  CHECK(r && strcmp(r, "/hello/world") == 0, "curl HTTP/1.0: %s", r ? r : "(failed)");
  /* Two URLs: curl reuses the kept-alive connection. */
  url(u, sizeof u, "/a");
  url(u2, sizeof u2, "/b");
  r = curl(u, u2, NULL);
  CHECK(r && strcmp(r, "/a/b") == 0, "curl two requests: %s", r ? r : "(failed)");
  r = curl("-i", u, NULL);
  CHECK(r && strstr(r, "HTTP/1.1 200 OK") && strstr(r, "Content-Type: text/plain") &&
            strstr(r, "Content-Length: 2"),
        "curl -i: %s", r ? r : "(failed)");
  /* curl waits for 100 Continue before it sends the body (here up to 5 s,
   * then it sends it anyway): with -i the interim response comes first. */
  r = curl("-i", "-H", "Expect: 100-continue", "--expect100-timeout", "5", "--data-binary",
           "after the 100", u, NULL);
  CHECK(r && strncmp(r, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 42) == 0 &&
            strstr(r, "\r\n\r\nafter the 100"),
        "curl Expect: 100-continue: %s", r ? r : "(failed)");
}

/* -------------------------------------------------------- raw clients */

static void send_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n <= 0)
      return; /* the server may close early on bad input */
    p += n;
    len -= (size_t)n;
  }
}

static void send_str(int fd, const char *s) {
  send_all(fd, s, strlen(s));
}

/* Buffered reads with a deadline. */
typedef struct reader {
  int fd;
  char buf[1 << 16];
  size_t len;
  bool eof;
} reader_t;

static bool fill(reader_t *r, int timeout_ms) {
  if (r->eof || r->len == sizeof r->buf)
    return false;
  struct pollfd p = {.fd = r->fd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) <= 0)
    return false;
  ssize_t n = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
  if (n <= 0) {
    r->eof = true;
    return false;
  }
  r->len += (size_t)n;
  return true;
}

typedef struct response {
  int status;
  bool close;
  char body[4096];
  size_t body_len;
} response_t;

/* Reads one response (Content-Length framed). False on timeout or EOF. */
static bool read_response(reader_t *r, response_t *out) {
  char *end;
  while (!(end = memmem(r->buf, r->len, "\r\n\r\n", 4)))
    if (!fill(r, 3000 * SLOW))
      return false;
  size_t head = (size_t)(end - r->buf) + 4;
  char h[8192];
  size_t hl = head < sizeof h - 1 ? head : sizeof h - 1;
  memcpy(h, r->buf, hl);
  h[hl] = 0;
  out->status = 0;
  sscanf(h, "HTTP/1.%*d %d", &out->status);
  char *cl = strcasestr(h, "\r\nContent-Length:");
  size_t len = cl ? strtoul(cl + 17, NULL, 10) : 0;
  out->close = strcasestr(h, "\r\nConnection: close") != NULL;
  while (r->len < head + len)
    if (!fill(r, 3000 * SLOW))
      return false;
  out->body_len = len < sizeof out->body - 1 ? len : sizeof out->body - 1;
  memcpy(out->body, r->buf + head, out->body_len);
  out->body[out->body_len] = 0;
  memmove(r->buf, r->buf + head + len, r->len - head - len);
  r->len -= head + len;
  return true;
}

/* The server closes the connection within timeout_ms. */
static bool closes(reader_t *r, int timeout_ms) {
  double until = now_ms() + timeout_ms;
  while (!r->eof && now_ms() < until)
    fill(r, 50);
  return r->eof;
}

static reader_t g_r;

static void check_pipelining(void) {
  reader_t *r = &g_r;
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  char reqs[4096];
  size_t len = 0;
  for (int i = 0; i < 20; i++)
    len += (size_t)snprintf(reqs + len, sizeof reqs - len,
                            "GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
  send_all(r->fd, reqs, len);
  for (int i = 0; i < 20; i++) {
    response_t resp;
    char want[16];
    snprintf(want, sizeof want, "/p%d", i);
    bool ok = read_response(r, &resp);
    CHECK(ok && resp.status == 200 && strcmp(resp.body, want) == 0,
          "pipelined response %d: status %d body %s", i, ok ? resp.status : -1,
          ok ? resp.body : "");
  }
  /* Still open: one more, with a body, then Connection: close. */
  send_str(r->fd, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde");
  response_t resp;
  CHECK(read_response(r, &resp) && strcmp(resp.body, "abcde") == 0, "kept alive");
  send_str(r->fd, "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  CHECK(read_response(r, &resp) && resp.close && strcmp(resp.body, "/last") == 0,
        "Connection: close answered");
  CHECK(closes(r, 2000 * SLOW), "closed after Connection: close");
  close(r->fd);

  /* HTTP/1.0: closes unless asked to keep alive. */
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  send_str(r->fd, "GET /old HTTP/1.0\r\n\r\n");
  CHECK(read_response(r, &resp) && strcmp(resp.body, "/old") == 0, "HTTP/1.0 answered");
  CHECK(closes(r, 2000 * SLOW), "HTTP/1.0 closed");
  close(r->fd);
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  send_str(r->fd, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  CHECK(read_response(r, &resp) && strcmp(resp.body, "/ka") == 0, "HTTP/1.0 keep-alive");
  send_str(r->fd, "GET /ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  CHECK(read_response(r, &resp) && strcmp(resp.body, "/ka2") == 0, "HTTP/1.0 kept alive");
  close(r->fd);

  /* A chunked body, echoed whole. */
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  send_str(r->fd, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  CHECK(read_response(r, &resp) && strcmp(resp.body, "hello world") == 0, "chunked: %s",
        resp.body);
  close(r->fd);
}

/* Sends req (len bytes) on a fresh connection: the answer must be status,
 * and the connection must close. */
static void expect_status(const char *what, const char *req, size_t len, int status) {
  reader_t *r = &g_r;
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  send_all(r->fd, req, len);
  response_t resp;
  bool ok = read_response(r, &resp);
  CHECK(ok && resp.status == status, "%s: status %d, wanted %d", what, ok ? resp.status : -1,
        status);
  CHECK(closes(r, 2000 * SLOW), "%s: not closed", what);
  close(r->fd);
}

static void check_bad_input(void) {
  static const struct {
    const char *what, *req;
  } bad[] = {
      {"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
      {"two CLs", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
                  "abcdef"},
      {"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "zz\r\nhello\r\n0\r\n\r\n"},
      {"bare LF", "GET / HTTP/1.1\nHost: x\n\n"},
      {"bare CR", "GET / HTTP/1.1\rHost: x\r\n\r\n"},
      {"bad header name", "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"},
      {"garbage", "\x01\x02\x03 nonsense\r\n\r\n"},
      {"unknown coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_status(bad[i].what, bad[i].req, strlen(bad[i].req), 400);
  static const char nul[] = "GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n";
  expect_status("NUL", nul, sizeof nul - 1, 400);

  /* The limits. */
  static char big[1 << 16];
  size_t n = (size_t)snprintf(big, sizeof big, "GET /");
  memset(big + n, 'a', 9000);
  n += 9000;
  n += (size_t)snprintf(big + n, sizeof big - n, " HTTP/1.1\r\nHost: x\r\n\r\n");
  expect_status("long request line", big, n, 414);
  n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(big + n, 'b', 17000);
  n += 17000;
  n += (size_t)snprintf(big + n, sizeof big - n, "\r\n\r\n");
  expect_status("big header block", big, n, 431);
  n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\n");
  for (int i = 0; i < 101; i++)
    n += (size_t)snprintf(big + n, sizeof big - n, "X-H%d: v\r\n", i);
  n += (size_t)snprintf(big + n, sizeof big - n, "\r\n");
  expect_status("101 header fields", big, n, 431);
  n = (size_t)snprintf(big, sizeof big,
                       "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n");
  memset(big + n, 'c', 1000);
  expect_status("2 MB body", big, n + 1000, 413);
}

/* 400 connections at once, each with a request in flight. */
static void check_many(void) {
  enum { N = 400 };
  static int fds[N];
  for (int i = 0; i < N; i++)
    fds[i] = conn_open();
  for (int i = 0; i < N; i++) {
    char req[64];
    snprintf(req, sizeof req, "GET /m%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    send_str(fds[i], req);
  }
  /* What went wrong tells a server that closed (or reset) a connection with
   * a request waiting from one that was too slow to answer it. */
  int ok = 0, wrong = 0, closed = 0, silent = 0;
  double t0 = now_ms();
  for (int i = 0; i < N; i++) {
    reader_t *r = &g_r;
    memset(r, 0, sizeof *r);
    r->fd = fds[i];
    response_t resp;
    char want[16];
    snprintf(want, sizeof want, "/m%d", i);
    const char *how = NULL;
    if (!read_response(r, &resp)) {
      how = r->eof ? "closed unanswered" : "not answered";
      closed += r->eof;
      silent += !r->eof;
    } else if (strcmp(resp.body, want) != 0) {
      how = "answered wrongly";
      wrong++;
    } else {
      ok++;
    }
    if (how && wrong + closed + silent <= 10)
      fprintf(stderr, "connection %d: %s, %.0f ms after the requests went out\n", i, how,
              now_ms() - t0);
    close(fds[i]);
  }
  CHECK(ok == N, "%d of %d concurrent connections answered (%d wrongly, %d closed, %d silent)",
        ok, N, wrong, closed, silent);
}

/* Connections reset in the middle of a request; the server keeps going. */
static void check_resets(void) {
  for (int i = 0; i < 300; i++) {
    int fd = conn_open();
    send_str(fd, i % 2 ? "GET /reset HTTP/1.1\r\nHo" : "POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nab");
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd); /* RST */
  }
  reader_t *r = &g_r;
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  send_str(r->fd, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
  response_t resp;
  CHECK(read_response(r, &resp) && strcmp(resp.body, "/after") == 0,
        "no answer after the resets");
  close(r->fd);
}

/* With --idle-timeout 300 and --header-timeout 300 (a server of its own). */
static void check_deadlines(void) {
  reader_t *r = &g_r;
  response_t resp;
  memset(r, 0, sizeof *r);
  r->fd = conn_open();
  /* From before the request: the server's idle time starts when it has
   * answered, which may be well before this client reads the answer. */
  double t0 = now_ms();
  send_str(r->fd, "GET /i HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(read_response(r, &resp), "answered");
  CHECK(closes(r, 3000 * SLOW), "idle connection not closed");
  double took = now_ms() - t0;
  CHECK(took > 200 && took < 2000 * SLOW, "idle close after %.0f ms", took);
  close(r->fd);

  memset(r, 0, sizeof *r);
  /* From before the connection: the header deadline starts when the
   * server accepts it, which may be before conn_open returns. */
  t0 = now_ms();
  r->fd = conn_open();
  send_str(r->fd, "GET /slow HTTP/1.1\r\nHo");
  usleep(150 * 1000);
  send_str(r->fd, "st: x\r\nX-"); /* still trickling: the deadline holds */
  CHECK(closes(r, 3000 * SLOW), "slow header not cut");
  took = now_ms() - t0;
  CHECK(took > 200 && took < 2000 * SLOW, "header deadline after %.0f ms", took);
  close(r->fd);
}

/* With --workers 1, after it served requests: no thread but the main one. */
static void check_one_thread(const server_t *s) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/task", (long)s->pid);
  DIR *d = opendir(path);
  CHECK(d != NULL, "cannot list %s", path);
  if (!d)
    return;
  int threads = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.')
      threads++;
  closedir(d);
  CHECK(threads == 1, "--workers 1 runs %d threads, not 1", threads);
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: echo_e2e ECHO_SERVER reuseport|handoff|least-loaded [WORKERS]\n");
    return 2;
  }
  if (argc == 4)
    g_workers = argv[3];
  signal(SIGPIPE, SIG_IGN);
  server_t s;
  server_start(&s, argv[1], argv[2], NULL, NULL);
  check_curl();
  if (strcmp(g_workers, "1") == 0)
    check_one_thread(&s);
  check_pipelining();
  check_bad_input();
  check_many();
  check_resets();
  /* An idle connection open while SIGTERM comes: closed, not waited for. */
  int idle = conn_open();
  server_stop(&s, true);
  close(idle);

  static const char *const short_deadlines[] = {"--idle-timeout", "300", "--header-timeout",
                                                 "300", NULL};
  server_start(&s, argv[1], argv[2], NULL, short_deadlines);
  check_deadlines();
  server_stop(&s, true);

  if (g_failures) {
    fprintf(stderr, "%d checks failed\n", g_failures);
    return 1;
  }
  printf("echo_e2e %s, %s workers: all checks passed\n", argv[2], g_workers);
  return 0;
}
