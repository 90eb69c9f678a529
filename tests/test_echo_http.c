/* Tests for the echo server's HTTP/1.1 module (samples/echo_http.c), run
 * against the real llhttp 8.1 it is built with: the echo of a body, of a
 * target and of a chunked body; keep-alive and close for HTTP/1.1 and 1.0;
 * pipelining (paused at the limit, answered in order, one contiguous
 * output); every limit with its status and the memory it costs; every
 * malformed or smuggling shape, each with a column saying whether llhttp
 * alone refuses it, checked here too, so an llhttp that changes its mind
 * shows up as a failing case rather than a silent gap.
 *
 * Most checks compare the output byte for byte. A session helper plays the
 * server: it feeds input in reads of a chosen size, only when the module
 * wants input, writes (consumes) all output after each feed, and resumes
 * held-back input with a zero-length feed. Every session is also replayed
 * one byte at a time and must give the same output.
 */
#include "testutil.h"

#include <errno.h>
#include <llhttp.h>

#include "echo_http.h"

/* ------------------------------------------------------------ helpers */

#define CHECKF(cond, ...)      \
  do {                         \
    if (!(cond))               \
      fail_msg(__VA_ARGS__);   \
  } while (0)

/* A growable byte string. */
typedef struct buf {
  char *p;
  size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    b->p = realloc(b->p, cap);
    assert_non_null(b->p);
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_addf(buf_t *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  assert_true(n >= 0 && (size_t)n < sizeof tmp);
  buf_add(b, tmp, (size_t)n);
}

static void buf_fill(buf_t *b, char c, size_t n) {
  for (size_t i = 0; i < n; i++)
    buf_add(b, &c, 1);
}

static void buf_free(buf_t *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* The exact 200 response for a body, with conn "" (HTTP/1.1 keep-alive),
 * "close" or "keep-alive". */
static void add_ok(buf_t *b, const char *body, size_t n, const char *conn) {
  buf_addf(b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n", n);
  if (conn[0] != '\0')
    buf_addf(b, "Connection: %s\r\n", conn);
  buf_add(b, "\r\n", 2);
  buf_add(b, body, n);
}

static void add_ok_str(buf_t *b, const char *body, const char *conn) {
  add_ok(b, body, strlen(body), conn);
}

/* The exact error response for a status. */
static void add_error(buf_t *b, int status) {
  const char *reason = status == 400   ? "Bad Request"
                       : status == 413 ? "Content Too Large"
                       : status == 414 ? "URI Too Long"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 501 ? "Not Implemented"
                       : status == 505 ? "HTTP Version Not Supported"
                                       : "?";
  char body[64];
  int n = snprintf(body, sizeof body, "%d %s\n", status, reason);
  buf_addf(b,
           "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
           "Connection: close\r\n\r\n%s",
           status, reason, n, body);
}

static echo_conn_t *conn_new(const echo_limits_t *lim) {
  echo_conn_t *c = NULL;
  assert_int_equal(echo_conn_new(&c, lim), 0);
  assert_non_null(c);
  return c;
}

/* Takes (consumes) all the output. */
static void take(echo_conn_t *c, buf_t *into) {
  size_t n;
  const char *p = echo_conn_output(c, &n);
  buf_add(into, p, n);
  echo_conn_consume(c, n);
  assert_int_equal(echo_conn_pending(c), 0);
}

static void assert_buf_eq(const buf_t *got, const buf_t *want) {
  if (got->len != want->len || memcmp(got->p, want->p, got->len) != 0)
    fail_msg("output differs\n--- got (%zu bytes):\n%.*s\n--- want (%zu bytes):\n%.*s", got->len,
             (int)(got->len > 2000 ? 2000 : got->len), got->p ? got->p : "", want->len,
             (int)(want->len > 2000 ? 2000 : want->len), want->p ? want->p : "");
}

/* What a session saw. */
typedef struct session {
  buf_t out;       /* all the output, in order */
  bool failed;     /* a feed returned -1 */
  bool closing;    /* should_close at the end */
  uint64_t requests;
  echo_conn_stats_t st;
  size_t bound;    /* echo_conn_memory_bound() */
  size_t max_pending;
} session_t;

/* Plays the server over the whole input: reads of `chunk` bytes, only when
 * the module wants input; all output taken after every feed; held-back
 * input resumed with a zero-length feed. */
static void run_session(const echo_limits_t *lim, const echo_buffers_t *bufs, const char *in,
                        size_t len, size_t chunk, session_t *s) {
  echo_conn_t *c = NULL;
  memset(s, 0, sizeof *s);
  assert_int_equal(echo_conn_new_ex(&c, lim, bufs), 0);
  size_t pos = 0;
  for (int guard = 0; guard < 10000000; guard++) {
    size_t p = echo_conn_pending(c);
    if (p > s->max_pending)
      s->max_pending = p;
    take(c, &s->out);
    if (s->failed || echo_conn_should_close(c))
      break;
    int rc;
    if (!echo_conn_want_input(c)) {
      rc = echo_conn_feed(c, NULL, 0);
    } else {
      if (pos == len)
        break;
      size_t n = len - pos < chunk ? len - pos : chunk;
      rc = echo_conn_feed(c, in + pos, n);
      pos += n;
    }
    if (rc != 0) {
      assert_int_equal(rc, -1);
      s->failed = true;
    }
  }
  s->closing = echo_conn_should_close(c);
  s->requests = echo_conn_requests(c);
  echo_conn_get_stats(c, &s->st);
  s->bound = echo_conn_memory_bound(c);
  assert_true(s->st.peak_held_bytes <= s->bound);
  echo_conn_free(c);
}

/* Runs the input whole and one byte at a time; both must give the same
 * output and end, which *s then holds (the whole run's). */
static void run_both(const echo_limits_t *lim, const char *in, size_t len, session_t *s) {
  session_t one;
  run_session(lim, NULL, in, len, len ? len : 1, s);
  run_session(lim, NULL, in, len, 1, &one);
  assert_buf_eq(&one.out, &s->out);
  assert_int_equal(one.failed, s->failed);
  assert_int_equal(one.closing, s->closing);
  assert_int_equal(one.requests, s->requests);
  buf_free(&one.out);
}

static void session_free(session_t *s) {
  buf_free(&s->out);
}

/* Does llhttp on its own (strict mode, no callbacks) refuse the input? */
static bool llhttp_alone_rejects(const char *in, size_t len) {
  llhttp_t p;
  llhttp_init(&p, HTTP_REQUEST, NULL);
  llhttp_errno_t e = llhttp_execute(&p, in, len);
  return e != HPE_OK && e != HPE_PAUSED_UPGRADE && e != HPE_PAUSED_H2_UPGRADE;
}

/* ------------------------------------------------------------ echo */

static void get_echoes_target(void **state) {
  (void)state;
  echo_conn_t *c = conn_new(NULL);
  const char req[] = "GET /hello?x=1 HTTP/1.1\r\nHost: example\r\n\r\n";
  assert_false(echo_conn_in_request(c));
  assert_true(echo_conn_want_input(c));
  assert_int_equal(echo_conn_feed(c, req, sizeof req - 1), 0);
  assert_int_equal(echo_conn_pending(c), 1);
  assert_int_equal(echo_conn_requests(c), 1);
  buf_t got = {0}, want = {0};
  take(c, &got);
  add_ok_str(&want, "/hello?x=1", "");
  assert_buf_eq(&got, &want);
  assert_false(echo_conn_should_close(c));
  assert_true(echo_conn_want_input(c));
  assert_false(echo_conn_in_request(c));
  echo_conn_free(c);
  buf_free(&got);
  buf_free(&want);
}

static void post_echoes_body(void **state) {
  (void)state;
  const char req[] = "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "hello world", "");
  assert_buf_eq(&s.out, &want);
  assert_false(s.failed);
  assert_false(s.closing);
  /* A zero Content-Length is an empty body: the target is echoed. */
  const char zero[] = "PUT /t HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
  session_free(&s);
  run_both(NULL, zero, sizeof zero - 1, &s);
  buf_free(&want);
  add_ok_str(&want, "/t", "");
  assert_buf_eq(&s.out, &want);
  session_free(&s);
  buf_free(&want);
}

#define CONTINUE_100 "HTTP/1.1 100 Continue\r\n\r\n"

/* Expect: 100-continue is answered with 100 Continue as soon as the head
 * is in, before any of the body, and the 200 follows the body. */
static void expect_continue_answered(void **state) {
  (void)state;
  const char head[] =
      "POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
  echo_conn_t *c = conn_new(NULL);
  assert_int_equal(echo_conn_feed(c, head, sizeof head - 1), 0);
  buf_t got = {0}, want = {0};
  take(c, &got);
  buf_add(&want, CONTINUE_100, strlen(CONTINUE_100));
  assert_buf_eq(&got, &want);
  assert_true(echo_conn_want_input(c));
  assert_int_equal(echo_conn_feed(c, "hello", 5), 0);
  take(c, &got);
  add_ok_str(&want, "hello", "");
  assert_buf_eq(&got, &want);
  assert_int_equal(echo_conn_requests(c), 1);
  echo_conn_free(c);
  buf_free(&got);
  buf_free(&want);

  /* Any case, spaces around, a chunked body, a request pipelined behind:
   * the same bytes however the input is split. */
  const char req[] = "PUT /a HTTP/1.1\r\nExpect:  100-CONTINUE \t\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                     "GET /b HTTP/1.1\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_add(&want, CONTINUE_100, strlen(CONTINUE_100));
  add_ok_str(&want, "abc", "");
  add_ok_str(&want, "/b", "");
  assert_buf_eq(&s.out, &want);
  assert_false(s.failed);
  assert_int_equal(s.requests, 2);
  session_free(&s);
  buf_free(&want);
}

/* No 100 Continue without a body, to HTTP/1.0, for another expectation,
 * or for a head that is refused (its error response says it all). */
static void expect_continue_not_sent(void **state) {
  (void)state;
  static const struct {
    const char *req;
    const char *body;
    int status;
  } cases[] = {
      {"GET /g HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", "/g", 200},
      {"POST /z HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", "/z", 200},
      {"POST /o HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok", "ok", 200},
      {"POST /x HTTP/1.1\r\nExpect: 100-continue-please\r\nContent-Length: 2\r\n\r\nok", "ok",
       200},
      {"POST /x HTTP/1.1\r\nExpect: 100-continue, x\r\nContent-Length: 2\r\n\r\nok", "ok", 200},
      {"POST /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n", NULL,
       413},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    session_t s;
    run_both(NULL, cases[i].req, strlen(cases[i].req), &s);
    buf_t want = {0};
    if (cases[i].status == 200)
      add_ok_str(&want, cases[i].body, strstr(cases[i].req, "HTTP/1.0") ? "close" : "");
    else
      add_error(&want, cases[i].status);
    assert_buf_eq(&s.out, &want);
    session_free(&s);
    buf_free(&want);
  }
}

static void chunked_body_echoed_whole(void **state) {
  (void)state;
  /* Three chunks (one with an extension, one with a size in capitals and
   * leading zeros) and a trailer section: the body comes back whole, with a
   * Content-Length, and the trailer field is not part of it. */
  const char req[] = "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n"
                     "1;name=value\r\n \r\n"
                     "00A\r\n0123456789\r\n"
                     "0\r\nX-Trailer: yes\r\n\r\n"
                     "POST /d HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "hello 0123456789", "");
  add_ok_str(&want, "/d", ""); /* an empty chunked body: the target */
  assert_buf_eq(&s.out, &want);
  assert_false(s.failed);
  session_free(&s);
  buf_free(&want);
}

static void head_gets_no_body(void **state) {
  (void)state;
  echo_conn_t *c = conn_new(NULL);
  const char req[] = "HEAD /abc HTTP/1.1\r\n\r\nGET /abc HTTP/1.1\r\n\r\n";
  assert_int_equal(echo_conn_feed(c, req, sizeof req - 1), 0);
  uint64_t end;
  bool bodiless;
  assert_true(echo_conn_response_info(c, 0, &end, &bodiless));
  assert_true(bodiless);
  assert_true(echo_conn_response_info(c, 1, &end, &bodiless));
  assert_false(bodiless);
  assert_false(echo_conn_response_info(c, 2, &end, &bodiless));
  buf_t got = {0}, want = {0};
  take(c, &got);
  /* The HEAD response announces the GET response's length, sends no body. */
  buf_addf(&want, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n");
  add_ok_str(&want, "/abc", "");
  assert_buf_eq(&got, &want);
  assert_int_equal(end, got.len);
  echo_conn_free(c);
  buf_free(&got);
  buf_free(&want);
}

/* A conversation of every kind of request, with its exact answers. */
static void conversation(buf_t *in, buf_t *want) {
  buf_addf(in, "GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
  add_ok_str(want, "/one", "");
  buf_addf(in, "POST /two HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
  add_ok_str(want, "abc", "");
  buf_addf(in, "\r\n"); /* an empty line before a request is let through */
  buf_addf(in, "POST /three HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "2\r\nde\r\n3;x=\"q\"\r\nfgh\r\n0\r\nT: 1\r\n\r\n");
  add_ok_str(want, "defgh", "");
  buf_addf(in, "HEAD /four HTTP/1.1\r\n\r\n");
  buf_addf(want, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n");
  buf_addf(in, "GET /five HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  add_ok_str(want, "/five", "keep-alive");
  buf_addf(in, "DELETE /six HTTP/1.1\r\nConnection: close\r\n\r\n");
  add_ok_str(want, "/six", "close");
}

static void one_byte_at_a_time(void **state) {
  (void)state;
  buf_t in = {0}, want = {0}, got = {0};
  conversation(&in, &want);
  echo_conn_t *c = conn_new(NULL);
  size_t answered = 0;
  for (size_t i = 0; i < in.len; i++) {
    assert_true(echo_conn_want_input(c));
    assert_int_equal(echo_conn_feed(c, in.p + i, 1), 0);
    /* A request is in progress from its first byte until its answer. */
    if (echo_conn_requests(c) > answered) {
      answered = echo_conn_requests(c);
      assert_false(echo_conn_in_request(c));
    } else {
      assert_true(echo_conn_in_request(c));
    }
    take(c, &got);
  }
  assert_int_equal(echo_conn_requests(c), 6);
  assert_true(echo_conn_should_close(c));
  assert_buf_eq(&got, &want);
  echo_conn_free(c);
  buf_free(&in);
  buf_free(&want);
  buf_free(&got);
}

static void any_split_same_output(void **state) {
  (void)state;
  buf_t in = {0}, want = {0};
  conversation(&in, &want);
  for (size_t chunk = 1; chunk <= in.len; chunk++) {
    session_t s;
    run_session(NULL, NULL, in.p, in.len, chunk, &s);
    assert_buf_eq(&s.out, &want);
    assert_true(s.closing);
    assert_false(s.failed);
    session_free(&s);
  }
  buf_free(&in);
  buf_free(&want);
}

/* ------------------------------------------------------------ keep-alive */

static void keep_alive_http11_default(void **state) {
  (void)state;
  const char req[] = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: keep-alive\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "/a", "");
  add_ok_str(&want, "/b", "");
  assert_buf_eq(&s.out, &want);
  assert_false(s.closing);
  session_free(&s);
  buf_free(&want);
}

static void connection_close_honoured(void **state) {
  (void)state;
  /* Whatever follows the request that closes is never parsed, not even a
   * malformed request. */
  const char req[] = "GET /a HTTP/1.1\r\n\r\n"
                     "GET /b HTTP/1.1\r\nConnection: close\r\n\r\n"
                     "GET /c HTTP/1.1\r\n\r\nGARBAGE\n\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "/a", "");
  add_ok_str(&want, "/b", "close");
  assert_buf_eq(&s.out, &want);
  assert_true(s.closing);
  assert_false(s.failed);
  assert_int_equal(s.requests, 2);
  session_free(&s);
  buf_free(&want);
  /* A list with close in it closes too, in any case. */
  const char list[] = "GET /l HTTP/1.1\r\nConnection: keep-alive, CLOSE\r\n\r\nGET /m HTTP/1.1\r\n\r\n";
  run_both(NULL, list, sizeof list - 1, &s);
  add_ok_str(&want, "/l", "close");
  assert_buf_eq(&s.out, &want);
  assert_true(s.closing);
  session_free(&s);
  buf_free(&want);
}

static void http10_closes(void **state) {
  (void)state;
  const char req[] = "POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhiGET /y HTTP/1.0\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "hi", "close");
  assert_buf_eq(&s.out, &want);
  assert_true(s.closing);
  assert_false(s.failed);
  session_free(&s);
  buf_free(&want);
}

static void http10_keep_alive(void **state) {
  (void)state;
  const char req[] = "GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
                     "GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                     "GET /c HTTP/1.0\r\n\r\n"
                     "GET /d HTTP/1.0\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "/a", "keep-alive");
  add_ok_str(&want, "/b", "keep-alive");
  add_ok_str(&want, "/c", "close");
  assert_buf_eq(&s.out, &want);
  assert_true(s.closing);
  session_free(&s);
  buf_free(&want);
}

/* ------------------------------------------------------------ pipelining */

static void pipeline_pauses_at_limit(void **state) {
  (void)state;
  buf_t in = {0}, want = {0}, got = {0};
  for (int i = 0; i < 20; i++) {
    char target[16];
    snprintf(target, sizeof target, "/r%02d", i);
    buf_addf(&in, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", target);
    add_ok_str(&want, target, "");
  }
  echo_conn_t *c = conn_new(NULL);
  assert_int_equal(echo_conn_feed(c, in.p, in.len), 0);
  /* Sixteen answers wait; the rest of the input is kept, reads are held
   * off, and the kept bytes are a request in progress. */
  assert_int_equal(echo_conn_pending(c), 16);
  assert_int_equal(echo_conn_requests(c), 16);
  assert_false(echo_conn_want_input(c));
  assert_true(echo_conn_in_request(c));
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  size_t one = in.len / 20;
  assert_int_equal(st.held_input, 4 * one);
  /* Feeding nothing changes nothing while the answers wait. */
  assert_int_equal(echo_conn_feed(c, NULL, 0), 0);
  assert_int_equal(echo_conn_pending(c), 16);
  /* Taking one answer frees one place in the pipeline. */
  size_t n;
  echo_conn_output(c, &n);
  uint64_t end;
  bool bodiless;
  assert_true(echo_conn_response_info(c, 0, &end, &bodiless));
  buf_add(&got, echo_conn_output(c, &n), (size_t)end);
  echo_conn_consume(c, (size_t)end);
  assert_int_equal(echo_conn_pending(c), 15);
  assert_false(echo_conn_want_input(c)); /* kept input must be parsed first */
  assert_int_equal(echo_conn_feed(c, NULL, 0), 0);
  assert_int_equal(echo_conn_pending(c), 16);
  take(c, &got);
  assert_int_equal(echo_conn_feed(c, NULL, 0), 0);
  assert_int_equal(echo_conn_requests(c), 20);
  assert_true(echo_conn_want_input(c));
  assert_false(echo_conn_in_request(c));
  take(c, &got);
  assert_buf_eq(&got, &want);
  echo_conn_get_stats(c, &st);
  assert_int_equal(st.held_input, 0);
  echo_conn_free(c);
  buf_free(&in);
  buf_free(&want);
  buf_free(&got);
}

static void pipeline_batch_contiguous(void **state) {
  (void)state;
  /* Mixed requests in one read: their answers lie back to back in one
   * buffer, so one write sends them all. */
  const char req[] = "GET /1 HTTP/1.1\r\n\r\n"
                     "POST /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
                     "POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"
                     "GET /4 HTTP/1.1\r\n\r\n";
  echo_conn_t *c = conn_new(NULL);
  assert_int_equal(echo_conn_feed(c, req, sizeof req - 1), 0);
  assert_int_equal(echo_conn_pending(c), 4);
  buf_t want = {0};
  add_ok_str(&want, "/1", "");
  add_ok_str(&want, "body", "");
  add_ok_str(&want, "z", "");
  add_ok_str(&want, "/4", "");
  size_t n;
  const char *out = echo_conn_output(c, &n);
  assert_int_equal(n, want.len);
  assert_memory_equal(out, want.p, n);
  /* The boundaries the module reports are the responses'. */
  uint64_t end;
  bool bodiless;
  size_t first = strlen("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n/1");
  assert_true(echo_conn_response_info(c, 0, &end, &bodiless));
  assert_int_equal(end, first);
  assert_true(echo_conn_response_info(c, 3, &end, &bodiless));
  assert_int_equal(end, want.len);
  echo_conn_free(c);
  buf_free(&want);
}

static void partial_consume_keeps_count(void **state) {
  (void)state;
  const char req[] = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
  echo_conn_t *c = conn_new(NULL);
  assert_int_equal(echo_conn_feed(c, req, sizeof req - 1), 0);
  size_t n, n2;
  const char *out = echo_conn_output(c, &n);
  char copy[512];
  assert_true(n < sizeof copy);
  memcpy(copy, out, n);
  /* A response partly written still counts. */
  echo_conn_consume(c, 10);
  assert_int_equal(echo_conn_pending(c), 2);
  out = echo_conn_output(c, &n2);
  assert_int_equal(n2, n - 10);
  assert_memory_equal(out, copy + 10, n2);
  echo_conn_consume(c, n / 2 - 10);
  assert_int_equal(echo_conn_pending(c), 1);
  /* Consuming more than there is takes all of it. */
  echo_conn_consume(c, n);
  assert_int_equal(echo_conn_pending(c), 0);
  echo_conn_output(c, &n2);
  assert_int_equal(n2, 0);
  echo_conn_free(c);
}

static void output_limit_holds_reads(void **state) {
  (void)state;
  /* With a 1000-byte output limit, parsing stops after the answer that
   * reaches it, and goes on once the server took the output. */
  buf_t in = {0}, want = {0}, body = {0};
  buf_fill(&body, 'b', 600);
  for (int i = 0; i < 3; i++) {
    buf_addf(&in, "POST /p HTTP/1.1\r\nContent-Length: 600\r\n\r\n");
    buf_add(&in, body.p, body.len);
    add_ok(&want, body.p, body.len, "");
  }
  echo_buffers_t bufs = {.max_output = 1000, .max_input = ECHO_INPUT_LIMIT};
  echo_conn_t *c = NULL;
  assert_int_equal(echo_conn_new_ex(&c, NULL, &bufs), 0);
  assert_int_equal(echo_conn_feed(c, in.p, in.len), 0);
  assert_int_equal(echo_conn_pending(c), 2); /* 1 then 2 answers: 680, then 1360 bytes */
  assert_false(echo_conn_want_input(c));
  buf_t got = {0};
  take(c, &got);
  assert_int_equal(echo_conn_feed(c, NULL, 0), 0);
  assert_int_equal(echo_conn_pending(c), 1);
  assert_true(echo_conn_want_input(c));
  take(c, &got);
  assert_buf_eq(&got, &want);
  echo_conn_free(c);

  /* The default limit, 1 MiB: two answers of 600 KiB pass it. */
  buf_free(&in);
  buf_free(&want);
  buf_free(&body);
  buf_free(&got);
  buf_fill(&body, 'q', 600 << 10);
  for (int i = 0; i < 3; i++) {
    buf_addf(&in, "POST /p HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", body.len);
    buf_add(&in, body.p, body.len);
  }
  c = conn_new(NULL);
  size_t pos = 0;
  while (echo_conn_want_input(c)) {
    size_t n = in.len - pos < 16384 ? in.len - pos : 16384;
    assert_int_equal(echo_conn_feed(c, in.p + pos, n), 0);
    pos += n;
  }
  size_t n;
  echo_conn_output(c, &n);
  assert_int_equal(echo_conn_pending(c), 2);
  assert_true(n >= ECHO_OUTPUT_LIMIT);
  assert_true(pos < in.len);
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  assert_true(st.peak_held_bytes <= echo_conn_memory_bound(c));
  echo_conn_free(c);
  buf_free(&in);
  buf_free(&body);
}

static void held_input_bounded(void **state) {
  (void)state;
  /* Requests arriving while the pipeline is full are kept up to
   * max_input; a server that feeds past that (it should not read while
   * reads are held off) gets -1, and the answers already made stay. */
  buf_t in = {0};
  while (in.len < 3000)
    buf_addf(&in, "GET /x HTTP/1.1\r\n\r\n");
  echo_buffers_t bufs = {.max_output = ECHO_OUTPUT_LIMIT, .max_input = 2000};
  echo_limits_t lim;
  echo_limits_default(&lim);
  lim.max_pipeline = 4;
  echo_conn_t *c = NULL;
  assert_int_equal(echo_conn_new_ex(&c, &lim, &bufs), 0);
  size_t one = strlen("GET /x HTTP/1.1\r\n\r\n");
  assert_int_equal(echo_conn_feed(c, in.p, 1000), 0);
  assert_int_equal(echo_conn_pending(c), 4);
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  assert_int_equal(st.held_input, 1000 - 4 * one);
  assert_int_equal(echo_conn_feed(c, in.p + 1000, 2000 - st.held_input), 0);
  echo_conn_get_stats(c, &st);
  assert_int_equal(st.held_input, 2000);
  assert_int_equal(echo_conn_feed(c, in.p + 1000, 1), -1);
  echo_conn_get_stats(c, &st);
  assert_true(st.input_overflow);
  assert_int_equal(st.last_error_status, 0);
  assert_int_equal(st.held_input, 0); /* dropped once the connection failed */
  assert_true(st.peak_held_bytes <= echo_conn_memory_bound(c));
  assert_true(echo_conn_should_close(c));
  assert_false(echo_conn_want_input(c));
  assert_int_equal(echo_conn_pending(c), 4);
  buf_t got = {0}, want = {0};
  for (int i = 0; i < 4; i++)
    add_ok_str(&want, "/x", "");
  take(c, &got);
  assert_buf_eq(&got, &want);
  assert_int_equal(echo_conn_feed(c, NULL, 0), -1);
  echo_conn_free(c);
  buf_free(&in);
  buf_free(&got);
  buf_free(&want);
}

/* ------------------------------------------------------------ bad input */

static void error_response_format(void **state) {
  (void)state;
  echo_conn_t *c = conn_new(NULL);
  const char req[] = "GET /ok HTTP/1.1\r\n\r\nGET / HTTP/1.1\nHost: x\r\n\r\nGET /never HTTP/1.1\r\n\r\n";
  assert_int_equal(echo_conn_feed(c, req, sizeof req - 1), -1);
  buf_t got = {0};
  take(c, &got);
  const char want[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n/ok"
                      "HTTP/1.1 400 Bad Request\r\n"
                      "Content-Type: text/plain\r\n"
                      "Content-Length: 16\r\n"
                      "Connection: close\r\n"
                      "\r\n"
                      "400 Bad Request\n";
  assert_int_equal(got.len, sizeof want - 1);
  assert_memory_equal(got.p, want, got.len);
  assert_true(echo_conn_should_close(c));
  assert_false(echo_conn_want_input(c));
  assert_false(echo_conn_in_request(c));
  assert_int_equal(echo_conn_requests(c), 2);
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  assert_int_equal(st.last_error_status, 400);
  /* Later feeds are dropped and keep saying close. */
  assert_int_equal(echo_conn_feed(c, "GET / HTTP/1.1\r\n\r\n", 18), -1);
  size_t n;
  echo_conn_output(c, &n);
  assert_int_equal(n, 0);
  echo_conn_free(c);
  buf_free(&got);
}

/* One bad shape: its input, and whether llhttp alone refuses it. */
typedef struct shape {
  const char *name;
  const char *in;
  size_t len;
  bool llhttp_rejects;
} shape_t;

#define SHAPE(name, lit, rejects) {name, lit, sizeof(lit) - 1, rejects}

/* Every shape must get exactly one error response with this status (after
 * the answer to a good request before it, where there is one), close,
 * fail the feed, and give the same output fed one byte at a time. */
static void expect_refused(const shape_t *shapes, size_t n, int status) {
  const char good[] = "GET /first HTTP/1.1\r\n\r\n";
  for (size_t i = 0; i < n; i++) {
    const shape_t *s = &shapes[i];
    CHECKF(llhttp_alone_rejects(s->in, s->len) == s->llhttp_rejects,
           "%s: llhttp alone %s it, the table says otherwise", s->name,
           s->llhttp_rejects ? "accepts" : "refuses");
    for (int lead = 0; lead < 2; lead++) {
      buf_t in = {0}, want = {0};
      if (lead) {
        buf_add(&in, good, sizeof good - 1);
        add_ok_str(&want, "/first", "");
      }
      buf_add(&in, s->in, s->len);
      add_error(&want, status);
      session_t ss;
      run_both(NULL, in.p, in.len, &ss);
      CHECKF(ss.out.len == want.len && memcmp(ss.out.p, want.p, want.len) == 0,
             "%s: got\n%.*s\nwanted\n%.*s", s->name, (int)ss.out.len, ss.out.p ? ss.out.p : "",
             (int)want.len, want.p);
      CHECKF(ss.failed && ss.closing, "%s: the connection does not close", s->name);
      CHECKF(ss.st.last_error_status == status, "%s: status %d", s->name, ss.st.last_error_status);
      session_free(&ss);
      buf_free(&in);
      buf_free(&want);
    }
  }
}

static void smuggling_cl_and_te(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("Content-Length, then Transfer-Encoding",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("Transfer-Encoding, then Content-Length",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("Content-Length 0 with chunked",
            "POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true),
      SHAPE("an unknown coding with Content-Length",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", true),
      SHAPE("HTTP/1.0 with both",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void smuggling_duplicate_cl(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("two different Content-Length",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", true),
      SHAPE("two equal Content-Length",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", true),
      SHAPE("a list of equal lengths", "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc", true),
      SHAPE("a list of different lengths", "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabcd",
            true),
      SHAPE("a negative length", "POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\nabc", true),
      SHAPE("a signed length", "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", true),
      SHAPE("a hex length", "POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc", true),
      SHAPE("a space inside the length", "POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\nabc", true),
      SHAPE("an empty length", "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", true),
      SHAPE("a length past 64 bits",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

#define CHUNKED_HEAD "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"

static void bad_chunk_sizes(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("a size that is not hex", CHUNKED_HEAD "zz\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("a negative size", CHUNKED_HEAD "-3\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("a 0x size", CHUNKED_HEAD "0x3\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("a space after the size", CHUNKED_HEAD "3 \r\nabc\r\n0\r\n\r\n", true),
      SHAPE("a space before an extension", CHUNKED_HEAD "3 ;a\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("a size past 64 bits", CHUNKED_HEAD "fffffffffffffffff\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("an empty size line", CHUNKED_HEAD "\r\nabc\r\n0\r\n\r\n", true),
      SHAPE("more data than the size", CHUNKED_HEAD "3\r\nabcd\r\n0\r\n\r\n", true),
      SHAPE("a size line ended by LF", CHUNKED_HEAD "3\nabc\r\n0\r\n\r\n", true),
      SHAPE("chunk data ended by LF", CHUNKED_HEAD "3\r\nabc\n0\r\n\r\n", true),
      SHAPE("chunk data ended by CR", CHUNKED_HEAD "3\r\nabc\r0\r\n\r\n", true),
      SHAPE("the last chunk line ended by LF", CHUNKED_HEAD "3\r\nabc\r\n0\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void bare_cr_and_lf(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      /* llhttp 8.1 takes these: the module's scanner refuses them. */
      SHAPE("a request line ended by LF", "GET / HTTP/1.1\nHost: x\r\n\r\n", false),
      SHAPE("a header block ended by LF", "GET / HTTP/1.1\r\nHost: x\r\n\n", false),
      SHAPE("an LF before the request line", "\nGET / HTTP/1.1\r\n\r\n", false),
      SHAPE("a trailer section ended by LF", CHUNKED_HEAD "0\r\nX: a\r\n\n", false),
      SHAPE("an empty trailer section ended by LF", CHUNKED_HEAD "0\r\n\n", false),
      /* llhttp refuses these itself. */
      SHAPE("a field line ended by LF", "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", true),
      SHAPE("LF everywhere", "GET / HTTP/1.1\nHost: x\n\n", true),
      SHAPE("a CR alone in the request line", "GET / HTTP/1.1\rHost: x\r\n\r\n", true),
      SHAPE("a CR alone in a value", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", true),
      SHAPE("a CR alone ending the block", "GET / HTTP/1.1\r\nHost: x\r\n\rX", true),
      SHAPE("a CR alone in a trailer", CHUNKED_HEAD "0\r\nX: a\rb\r\n\r\n", true),
      SHAPE("a CR alone in a chunk extension", CHUNKED_HEAD "3;a\rb\r\nabc\r\n0\r\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void nul_bytes(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("NUL in the target", "GET /a\0b HTTP/1.1\r\n\r\n", true),
      SHAPE("NUL in a value", "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", true),
      SHAPE("NUL in a name", "GET / HTTP/1.1\r\nHo\0st: x\r\n\r\n", true),
      SHAPE("NUL before the request", "\0GET / HTTP/1.1\r\n\r\n", true),
      SHAPE("NUL in the method", "G\0T / HTTP/1.1\r\n\r\n", true),
      SHAPE("NUL in the version", "GET / HTTP/1.\0\r\n\r\n", true),
      SHAPE("NUL in a trailer", CHUNKED_HEAD "0\r\nX: a\0b\r\n\r\n", true),
      SHAPE("NUL in a chunk extension", CHUNKED_HEAD "3;a=\0\r\nabc\r\n0\r\n\r\n", true),
      /* Other control bytes go the same way. */
      SHAPE("0x01 in a value", "GET / HTTP/1.1\r\nHost: a\001b\r\n\r\n", true),
      SHAPE("DEL in a value", "GET / HTTP/1.1\r\nHost: a\177b\r\n\r\n", true),
      SHAPE("a tab in the target", "GET /a\tb HTTP/1.1\r\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void bad_header_names(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("an empty name", "GET / HTTP/1.1\r\n: x\r\n\r\n", false),
      SHAPE("an empty trailer name", CHUNKED_HEAD "0\r\n: x\r\n\r\n", false),
      SHAPE("a folded line", "GET / HTTP/1.1\r\nHost: x\r\n  y\r\n\r\n", false),
      SHAPE("a folded line with a tab", "GET / HTTP/1.1\r\nHost: x\r\n\ty\r\n\r\n", false),
      SHAPE("a space inside a name", "GET / HTTP/1.1\r\nHo st: x\r\n\r\n", true),
      SHAPE("a space before the colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", true),
      SHAPE("a tab before the colon", "GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", true),
      SHAPE("a separator in a name", "GET / HTTP/1.1\r\nHo@st: x\r\n\r\n", true),
      SHAPE("a parenthesis in a name", "GET / HTTP/1.1\r\nHo(st: x\r\n\r\n", true),
      SHAPE("a byte past ASCII in a name", "GET / HTTP/1.1\r\nHo\200st: x\r\n\r\n", true),
      SHAPE("a line with no colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", true),
      SHAPE("a space before the first field", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void unknown_transfer_codings(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("gzip", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc", true),
      SHAPE("identity", "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", true),
      SHAPE("xchunked", "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", true),
      SHAPE("chunked with a parameter",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked;a=b\r\n\r\n0\r\n\r\n", true),
      SHAPE("chunked, then gzip", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            true),
      SHAPE("chunked twice in a list",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", true),
      SHAPE("chunked in two fields",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\n\r\n", true),
      /* llhttp 8.1 takes these. */
      SHAPE("gzip, then chunked",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false),
      SHAPE("gzip and chunked in two fields",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\n\r\n", false),
      SHAPE("an empty list item, then chunked",
            "POST / HTTP/1.1\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", false),
      SHAPE("an empty coding", "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n", false),
      SHAPE("chunked in HTTP/1.0",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void other_malformed(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      /* llhttp 8.1 takes these. */
      SHAPE("two spaces after the method", "GET  / HTTP/1.1\r\n\r\n", false),
      SHAPE("two spaces before the version", "GET /  HTTP/1.1\r\n\r\n", false),
      SHAPE("no version (HTTP/0.9)", "GET /\r\n\r\n", false),
      SHAPE("an RTSP request", "DESCRIBE / RTSP/1.0\r\n\r\n", false),
      SHAPE("an ICE request", "SOURCE / ICE/1.0\r\n\r\n", false),
      SHAPE("five empty lines first", "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n", false),
      /* llhttp waits for the rest of an HTTP/2 preface after any PRI. */
      SHAPE("PRI in HTTP/1.1", "PRI * HTTP/1.1\r\n\r\n", false),
      /* llhttp refuses these itself. */
      SHAPE("a space after the version", "GET / HTTP/1.1 \r\n\r\n", true),
      SHAPE("an unknown method", "FOO / HTTP/1.1\r\n\r\n", true),
      SHAPE("a method in lower case", "get / HTTP/1.1\r\n\r\n", true),
      SHAPE("a protocol in lower case", "GET / http/1.1\r\n\r\n", true),
      SHAPE("a version of one digit", "GET / HTTP/1\r\n\r\n", true),
      SHAPE("a response instead of a request", "HTTP/1.1 200 OK\r\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 400);
}

static void version_505(void **state) {
  (void)state;
  static const shape_t shapes[] = {
      SHAPE("HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", false),
      SHAPE("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", false),
      SHAPE("the HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
      SHAPE("HTTP/1.2", "GET / HTTP/1.2\r\n\r\n", true),
      SHAPE("HTTP/3.0", "GET / HTTP/3.0\r\n\r\n", true),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 505);
}

static void connect_501(void **state) {
  (void)state;
  /* CONNECT would make the rest of the connection a tunnel (llhttp stops
   * parsing there, and skips a body it announces): refused. */
  static const shape_t shapes[] = {
      SHAPE("CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", false),
      SHAPE("CONNECT with a body", "CONNECT a:1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", false),
  };
  expect_refused(shapes, sizeof shapes / sizeof shapes[0], 501);
}

static void upgrade_ignored(void **state) {
  (void)state;
  /* Upgrade is ignored (RFC 9110 section 7.8 allows it): the request is
   * answered as HTTP and the connection goes on as HTTP. */
  const char req[] = "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                     "POST /up HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
                     "Content-Length: 2\r\n\r\nok"
                     "POST /upc HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n2\r\nch\r\n0\r\n\r\n"
                     "GET /next HTTP/1.1\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "/ws", "");
  add_ok_str(&want, "ok", "");
  add_ok_str(&want, "ch", "");
  add_ok_str(&want, "/next", "");
  assert_buf_eq(&s.out, &want);
  assert_false(s.closing);
  session_free(&s);
  buf_free(&want);
}

static void trailers_checked(void **state) {
  (void)state;
  /* Trailer fields are parsed and checked like header fields, then
   * ignored: a Content-Length among them changes nothing. */
  const char req[] = CHUNKED_HEAD "2\r\nhi\r\n0\r\nContent-Length: 99\r\nX-A: b\r\n\r\n"
                                  "GET /after HTTP/1.1\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "hi", "");
  add_ok_str(&want, "/after", "");
  assert_buf_eq(&s.out, &want);
  session_free(&s);
  buf_free(&want);
  /* Trailers count against the header limits too. */
  echo_limits_t lim;
  echo_limits_default(&lim);
  lim.max_headers = 2;
  const char many[] = CHUNKED_HEAD "0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  run_both(&lim, many, sizeof many - 1, &s);
  add_error(&want, 431);
  assert_buf_eq(&s.out, &want);
  session_free(&s);
  buf_free(&want);
}

static void leading_empty_lines(void **state) {
  (void)state;
  const char req[] = "\r\nGET /a HTTP/1.1\r\n\r\n\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
  session_t s;
  run_both(NULL, req, sizeof req - 1, &s);
  buf_t want = {0};
  add_ok_str(&want, "/a", "");
  add_ok_str(&want, "/b", "");
  assert_buf_eq(&s.out, &want);
  assert_false(s.failed);
  session_free(&s);
  buf_free(&want);
}

/* ------------------------------------------------------------ limits */

/* Feeds a request in 4 KiB reads until the connection fails; checks the
 * status, that it came before `before` bytes were fed, and the memory. */
static void expect_limit(const echo_limits_t *lim, const buf_t *in, int status, size_t before,
                         size_t max_held) {
  echo_conn_t *c = conn_new(lim);
  size_t pos = 0;
  int rc = 0;
  while (rc == 0 && pos < in->len) {
    size_t n = in->len - pos < 4096 ? in->len - pos : 4096;
    rc = echo_conn_feed(c, in->p + pos, n);
    pos += n;
  }
  assert_int_equal(rc, -1);
  CHECKF(pos <= before, "the %d came after %zu bytes", status, pos);
  buf_t got = {0}, want = {0};
  take(c, &got);
  add_error(&want, status);
  assert_buf_eq(&got, &want);
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  CHECKF(st.peak_held_bytes <= max_held, "%zu bytes held for a %d (at most %zu)",
         st.peak_held_bytes, status, max_held);
  assert_true(st.peak_held_bytes <= echo_conn_memory_bound(c));
  echo_conn_free(c);
  buf_free(&got);
  buf_free(&want);
}

/* Expects the input to be answered with a 200 echoing `body`. */
static void expect_ok(const echo_limits_t *lim, const buf_t *in, const char *body, size_t n) {
  session_t s;
  run_session(lim, NULL, in->p, in->len, 4096, &s);
  buf_t want = {0};
  add_ok(&want, body, n, "");
  assert_buf_eq(&s.out, &want);
  assert_false(s.failed);
  session_free(&s);
  buf_free(&want);
}

static void limit_request_line_414(void **state) {
  (void)state;
  echo_limits_t lim;
  echo_limits_default(&lim);
  assert_int_equal(lim.max_request_line, 8192);
  /* "GET " + target + " HTTP/1.1" is exactly 8192 bytes: fine. */
  buf_t target = {0}, in = {0};
  buf_add(&target, "/", 1);
  buf_fill(&target, 'a', 8192 - 13 - 1);
  buf_add(&in, "GET ", 4);
  buf_add(&in, target.p, target.len);
  buf_add(&in, " HTTP/1.1\r\n\r\n", 13);
  expect_ok(&lim, &in, target.p, target.len);
  /* One byte more: 414, as soon as that byte arrives. */
  buf_free(&in);
  buf_add(&target, "a", 1);
  buf_add(&in, "GET ", 4);
  buf_add(&in, target.p, target.len);
  buf_add(&in, " HTTP/1.1\r\n\r\n", 13);
  expect_limit(&lim, &in, 414, 8192 + 4096, 32 << 10);
  /* A target that never ends costs no more. */
  buf_free(&in);
  buf_add(&in, "GET /", 5);
  buf_fill(&in, 'z', 1 << 20);
  expect_limit(&lim, &in, 414, 8192 + 4096, 32 << 10);
  buf_free(&in);
  buf_free(&target);
}

static void limit_header_bytes_431(void **state) {
  (void)state;
  echo_limits_t lim;
  echo_limits_default(&lim);
  assert_int_equal(lim.max_header_bytes, 16384);
  /* Fields of 100 bytes ("X-NN: " + 92 bytes + CRLF) and a last one sized
   * so the block, with its final CRLF, is exactly 16384 bytes. */
  for (int extra = 0; extra < 2; extra++) {
    buf_t in = {0};
    buf_addf(&in, "GET /h HTTP/1.1\r\n");
    size_t block = 0;
    for (int i = 0; i < 90; i++) {
      buf_addf(&in, "X-%02d: ", i);
      buf_fill(&in, 'v', 92);
      buf_addf(&in, "\r\n");
      block += 100;
    }
    size_t last = 16384 - block - 2 - strlen("X-last: \r\n") + (size_t)extra;
    buf_addf(&in, "X-last: ");
    buf_fill(&in, 'w', last);
    buf_addf(&in, "\r\n\r\n");
    if (extra == 0)
      expect_ok(&lim, &in, "/h", 2);
    else
      expect_limit(&lim, &in, 431, in.len, 16 << 10);
    buf_free(&in);
  }
  /* A header block that never ends: 431 after 16 KiB, nothing stored. */
  buf_t in = {0};
  buf_addf(&in, "GET /h HTTP/1.1\r\nX: ");
  buf_fill(&in, 'v', 1 << 20);
  expect_limit(&lim, &in, 431, 16384 + 4096 + 64, 16 << 10);
  buf_free(&in);
  /* The same in a field name that never ends. */
  buf_addf(&in, "GET /h HTTP/1.1\r\n");
  buf_fill(&in, 'n', 1 << 20);
  expect_limit(&lim, &in, 431, 16384 + 4096 + 64, 16 << 10);
  buf_free(&in);
}

static void limit_header_count_431(void **state) {
  (void)state;
  echo_limits_t lim;
  echo_limits_default(&lim);
  assert_int_equal(lim.max_headers, 100);
  for (int fields = 100; fields <= 101; fields++) {
    buf_t in = {0};
    buf_addf(&in, "GET /n HTTP/1.1\r\n");
    for (int i = 0; i < fields; i++)
      buf_addf(&in, "F%d: %d\r\n", i, i);
    buf_addf(&in, "\r\n");
    if (fields == 100)
      expect_ok(&lim, &in, "/n", 2);
    else
      expect_limit(&lim, &in, 431, in.len, 16 << 10);
    buf_free(&in);
  }
}

static void limit_body_413_content_length(void **state) {
  (void)state;
  echo_limits_t lim;
  echo_limits_default(&lim);
  assert_int_equal(lim.max_body, 1 << 20);
  buf_t body = {0}, in = {0};
  buf_fill(&body, 'B', 1 << 20);
  buf_addf(&in, "POST /b HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", body.len);
  buf_add(&in, body.p, body.len);
  expect_ok(&lim, &in, body.p, body.len);
  buf_free(&in);
  /* One byte more: 413 once the head is in, before any of the body. */
  buf_addf(&in, "POST /b HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", body.len + 1);
  size_t head = in.len;
  buf_add(&in, body.p, body.len);
  buf_add(&in, "B", 1);
  expect_limit(&lim, &in, 413, head + 4096, 16 << 10);
  buf_free(&in);
  buf_free(&body);
}

static void limit_body_413_chunked(void **state) {
  (void)state;
  echo_limits_t lim;
  echo_limits_default(&lim);
  buf_t chunk = {0}, body = {0}, in = {0};
  buf_fill(&chunk, 'C', 65536);
  /* Sixteen chunks of 64 KiB make exactly 1 MiB: fine. */
  buf_addf(&in, CHUNKED_HEAD);
  for (int i = 0; i < 16; i++) {
    buf_addf(&in, "10000\r\n");
    buf_add(&in, chunk.p, chunk.len);
    buf_add(&body, chunk.p, chunk.len);
    buf_addf(&in, "\r\n");
  }
  size_t before_last = in.len;
  buf_addf(&in, "0\r\n\r\n");
  expect_ok(&lim, &in, body.p, body.len);
  /* A seventeenth chunk of one byte: 413 from its size line. The body so
   * far was held, so the memory is about 1 MiB (and what the output buffer
   * grew to), within the bound. */
  in.len = before_last;
  buf_addf(&in, "1\r\nC\r\n0\r\n\r\n");
  expect_limit(&lim, &in, 413, in.len, 2 * (1 << 20) + (64 << 10));
  /* One chunk announced at 2 MiB: 413 before any of it, nothing held. */
  buf_free(&in);
  buf_addf(&in, CHUNKED_HEAD "200000\r\n");
  buf_fill(&in, 'C', 2 << 20);
  expect_limit(&lim, &in, 413, 4096, 16 << 10);
  buf_free(&in);
  buf_free(&chunk);
  buf_free(&body);
}

/* ------------------------------------------------------------ the rest */

static void in_request_tracks_progress(void **state) {
  (void)state;
  echo_conn_t *c = conn_new(NULL);
  assert_false(echo_conn_in_request(c));
  assert_int_equal(echo_conn_feed(c, "\r\n", 2), 0);
  assert_true(echo_conn_in_request(c)); /* even an empty line is a start */
  const char head[] = "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n";
  assert_int_equal(echo_conn_feed(c, head, sizeof head - 1), 0);
  assert_true(echo_conn_in_request(c)); /* the body is still to come */
  assert_int_equal(echo_conn_feed(c, "ab", 2), 0);
  assert_true(echo_conn_in_request(c));
  assert_int_equal(echo_conn_feed(c, "c", 1), 0);
  assert_false(echo_conn_in_request(c));
  assert_int_equal(echo_conn_requests(c), 1);
  echo_conn_free(c);
}

static void input_after_close_dropped(void **state) {
  (void)state;
  echo_conn_t *c = conn_new(NULL);
  const char req[] = "GET /x HTTP/1.1\r\nConnection: close\r\n\r\nGET /y HTTP/1.1\r\n\r\n";
  assert_int_equal(echo_conn_feed(c, req, sizeof req - 1), 0);
  assert_true(echo_conn_should_close(c));
  assert_false(echo_conn_want_input(c));
  assert_false(echo_conn_in_request(c));
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  assert_int_equal(st.dropped_bytes, strlen("GET /y HTTP/1.1\r\n\r\n"));
  assert_int_equal(st.held_input, 0);
  assert_int_equal(echo_conn_feed(c, "more", 4), 0); /* a graceful close: 0 */
  echo_conn_get_stats(c, &st);
  assert_int_equal(st.dropped_bytes, strlen("GET /y HTTP/1.1\r\n\r\n") + 4);
  assert_int_equal(echo_conn_pending(c), 1);
  echo_conn_free(c);
}

static void bad_arguments(void **state) {
  (void)state;
  static char sentinel;
  echo_conn_t *c = (echo_conn_t *)&sentinel; /* a failed call sets it to NULL */
  assert_int_equal(echo_conn_new(NULL, NULL), -EINVAL);
  echo_limits_t lim;
  echo_limits_default(&lim);
  lim.max_pipeline = 0;
  assert_int_equal(echo_conn_new(&c, &lim), -EINVAL);
  assert_null(c);
  echo_limits_default(&lim);
  lim.max_request_line = 0;
  assert_int_equal(echo_conn_new(&c, &lim), -EINVAL);
  echo_buffers_t bufs = {.max_output = 0, .max_input = 1};
  assert_int_equal(echo_conn_new_ex(&c, NULL, &bufs), -EINVAL);
  bufs = (echo_buffers_t){.max_output = 1, .max_input = 0};
  assert_int_equal(echo_conn_new_ex(&c, NULL, &bufs), -EINVAL);
  echo_conn_free(NULL);
  /* A fresh connection: nothing to send, a zero feed is harmless. */
  c = conn_new(NULL);
  size_t n = 1;
  assert_non_null(echo_conn_output(c, &n));
  assert_int_equal(n, 0);
  assert_int_equal(echo_conn_feed(c, NULL, 0), 0);
  echo_conn_consume(c, 0);
  assert_int_equal(echo_conn_requests(c), 0);
  echo_conn_free(c);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(get_echoes_target),
    cmocka_unit_test(post_echoes_body),
    cmocka_unit_test(expect_continue_answered),
    cmocka_unit_test(expect_continue_not_sent),
    cmocka_unit_test(chunked_body_echoed_whole),
    cmocka_unit_test(head_gets_no_body),
    cmocka_unit_test(one_byte_at_a_time),
    cmocka_unit_test(any_split_same_output),
    cmocka_unit_test(keep_alive_http11_default),
    cmocka_unit_test(connection_close_honoured),
    cmocka_unit_test(http10_closes),
    cmocka_unit_test(http10_keep_alive),
    cmocka_unit_test(pipeline_pauses_at_limit),
    cmocka_unit_test(pipeline_batch_contiguous),
    cmocka_unit_test(partial_consume_keeps_count),
    cmocka_unit_test(output_limit_holds_reads),
    cmocka_unit_test(held_input_bounded),
    cmocka_unit_test(error_response_format),
    cmocka_unit_test(smuggling_cl_and_te),
    cmocka_unit_test(smuggling_duplicate_cl),
    cmocka_unit_test(bad_chunk_sizes),
    cmocka_unit_test(bare_cr_and_lf),
    cmocka_unit_test(nul_bytes),
    cmocka_unit_test(bad_header_names),
    cmocka_unit_test(unknown_transfer_codings),
    cmocka_unit_test(other_malformed),
    cmocka_unit_test(version_505),
    cmocka_unit_test(connect_501),
    cmocka_unit_test(upgrade_ignored),
    cmocka_unit_test(trailers_checked),
    cmocka_unit_test(leading_empty_lines),
    cmocka_unit_test(limit_request_line_414),
    cmocka_unit_test(limit_header_bytes_431),
    cmocka_unit_test(limit_header_count_431),
    cmocka_unit_test(limit_body_413_content_length),
    cmocka_unit_test(limit_body_413_chunked),
    cmocka_unit_test(in_request_tracks_progress),
    cmocka_unit_test(input_after_close_dropped),
    cmocka_unit_test(bad_arguments),
};

WT_MAIN("echo_http", tests)
