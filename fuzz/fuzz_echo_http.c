/* fuzz_echo_http: libFuzzer target for the echo server's HTTP module
 * (samples/echo_http.c with llhttp), built with
 * -fsanitize=fuzzer,address,undefined.
 *
 * Build it (clang; from the repository root):
 *
 *   cmake -S . -B build/fuzz -DWEFT_FUZZ=ON -DCMAKE_C_COMPILER=clang \
 *         -DCMAKE_BUILD_TYPE=RelWithDebInfo
 *   cmake --build build/fuzz --target fuzz_echo_http -j2
 *
 * Run it on a copy of the seed corpus, so the inputs it finds do not land in
 * the repository:
 *
 *   corpus=$(mktemp -d) && cp -R fuzz/corpus/. "$corpus"
 *   build/fuzz/fuzz/fuzz_echo_http "$corpus" -max_total_time=300
 *
 * A crash leaves crash-<sha1> in the current directory; run the target with
 * that file as its only argument to replay it.
 *
 * An input is four configuration bytes, then the bytes a client sends:
 *
 *   byte 0  bit 7 clear: the default limits and buffers. Bit 7 set: small
 *           ones, so short inputs reach every limit: max_request_line
 *           8 + 8 * (bits 0-3), max_header_bytes 8 + 24 * (bits 4-6)
 *   byte 1  small limits: max_headers bits 0-2, max_body 8 * (bits 3-7)
 *   byte 2  small limits: max_pipeline 1 + (bits 0-3), max_output
 *           16 << (bits 4-6)
 *   byte 3  small limits: max_input 16 << (bits 0-2); in every case the
 *           four bytes seed the choice of read sizes and of how much output
 *           is consumed at a time; bits 3-4 clear make every read one byte
 *
 * Each input runs twice, the way a server would run it: reads only while
 * echo_conn_want_input() says so, never more than max_input at once, output
 * consumed, echo_conn_feed(c, NULL, 0) when reads are held off, and nothing
 * fed once echo_conn_should_close() says so. The first run feeds the largest
 * reads allowed and consumes everything each time; the second splits the
 * input at seeded points (one-byte reads included) and consumes seeded
 * amounts. The checks, any of which aborts:
 *
 *   - the two runs produce the same bytes and end the same way;
 *   - the output is a sequence of well-formed responses: a status line of
 *     HTTP/1.1 with a known status, Content-Type: text/plain, one
 *     Content-Length that matches the body (none is sent for HEAD), error
 *     responses and "Connection: close" only last, an error response with
 *     "Connection: close" and its short body, response boundaries where
 *     the module says they are, and a 100 Continue only at the start of a
 *     response or after the last one;
 *   - the held memory never passes echo_conn_memory_bound(), the kept input
 *     never passes max_input, the pipeline never holds more than
 *     max_pipeline responses, and the input limit is never hit;
 *   - the module never stalls: when reads are held off and all output is
 *     written, input is kept, and feeding nothing parses some of it.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echo_http.h"

/* The interim response to "Expect: 100-continue". */
#define CONTINUE_100 "HTTP/1.1 100 Continue\r\n\r\n"

#define REQUIRE(cond)                                                       \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "fuzz_echo_http: %s:%d: check failed: %s\n", __FILE__, \
              __LINE__, #cond);                                             \
      abort();                                                              \
    }                                                                       \
  } while (0)

typedef struct config {
  echo_limits_t lim;
  echo_buffers_t bufs;
  uint32_t seed;
  bool bytewise; /* every read of the second run is one byte */
} config_t;

/* A response, where the module said it ends. */
typedef struct resp {
  uint64_t end;
  bool bodiless;
} resp_t;

/* What one run saw. */
typedef struct run {
  char *out;
  size_t out_len, out_cap;
  resp_t *resp;
  size_t nresp, resp_cap;
  bool failed;
  bool closing;
  uint64_t requests;
  int error_status;
} run_t;

static uint32_t next(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x;
}

static void config_of(const uint8_t *b, config_t *cfg) {
  echo_limits_default(&cfg->lim);
  cfg->bufs.max_output = ECHO_OUTPUT_LIMIT;
  cfg->bufs.max_input = ECHO_INPUT_LIMIT;
  if (b[0] & 0x80) {
    cfg->lim.max_request_line = 8 + 8 * (size_t)(b[0] & 0x0f);
    cfg->lim.max_header_bytes = 8 + 24 * (size_t)((b[0] >> 4) & 0x07);
    cfg->lim.max_headers = b[1] & 0x07;
    cfg->lim.max_body = 8 * (size_t)(b[1] >> 3);
    cfg->lim.max_pipeline = 1 + (size_t)(b[2] & 0x0f);
    cfg->bufs.max_output = (size_t)16 << ((b[2] >> 4) & 0x07);
    cfg->bufs.max_input = (size_t)16 << (b[3] & 0x07);
  }
  cfg->seed = ((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]) ^
              0x9e3779b9u;
  if (cfg->seed == 0)
    cfg->seed = 1;
  cfg->bytewise = ((b[3] >> 3) & 0x03) == 0;
}

static void add_out(run_t *r, const char *p, size_t n) {
  if (r->out_len + n > r->out_cap) {
    size_t cap = r->out_cap ? r->out_cap : 4096;
    while (cap < r->out_len + n)
      cap *= 2;
    r->out = realloc(r->out, cap);
    REQUIRE(r->out != NULL);
    r->out_cap = cap;
  }
  memcpy(r->out + r->out_len, p, n);
  r->out_len += n;
}

/* Records the responses that appeared since the last look, and checks what
 * the module says about its state. */
static void observe(echo_conn_t *c, const config_t *cfg, run_t *r) {
  size_t pending = echo_conn_pending(c);
  REQUIRE(pending <= cfg->lim.max_pipeline);
  size_t avail;
  echo_conn_output(c, &avail);
  uint64_t last = r->nresp ? r->resp[r->nresp - 1].end : 0;
  for (size_t i = 0; i < pending; i++) {
    uint64_t end;
    bool bodiless;
    REQUIRE(echo_conn_response_info(c, i, &end, &bodiless));
    if (end <= last)
      continue;
    if (r->nresp == r->resp_cap) {
      r->resp_cap = r->resp_cap ? r->resp_cap * 2 : 16;
      r->resp = realloc(r->resp, r->resp_cap * sizeof *r->resp);
      REQUIRE(r->resp != NULL);
    }
    r->resp[r->nresp++] = (resp_t){.end = end, .bodiless = bodiless};
    last = end;
  }
  /* The output is exactly the pending responses' bytes not yet taken, then
   * maybe the 100 Continue of the request in progress. */
  REQUIRE(r->out_len + avail >= last);
  uint64_t beyond = r->out_len + avail - last;
  REQUIRE(beyond == 0 || beyond == sizeof CONTINUE_100 - 1);
  REQUIRE(pending > 0 || avail <= beyond);
  REQUIRE(echo_conn_requests(c) == r->nresp);
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  REQUIRE(st.held_bytes <= st.peak_held_bytes);
  REQUIRE(st.peak_held_bytes <= echo_conn_memory_bound(c));
  REQUIRE(st.held_input <= cfg->bufs.max_input);
  REQUIRE(!st.input_overflow);
  if (echo_conn_should_close(c))
    REQUIRE(!echo_conn_want_input(c) && !echo_conn_in_request(c));
}

/* Plays the server. The first run (split == false) reads as much as it may
 * and takes all output; the second reads and consumes seeded amounts. */
static void play(const config_t *cfg, const char *in, size_t len, bool split, run_t *r) {
  echo_conn_t *c = NULL;
  REQUIRE(echo_conn_new_ex(&c, &cfg->lim, &cfg->bufs) == 0);
  uint32_t rnd = cfg->seed;
  size_t pos = 0;
  for (;;) {
    observe(c, cfg, r);
    size_t avail;
    const char *out = echo_conn_output(c, &avail);
    if (avail > 0) {
      size_t n = split ? 1 + next(&rnd) % avail : avail;
      add_out(r, out, n);
      echo_conn_consume(c, n);
      continue;
    }
    if (r->failed || echo_conn_should_close(c))
      break;
    int rc;
    if (!echo_conn_want_input(c)) {
      /* Held off with nothing left to write: kept input waits, and feeding
       * nothing must parse some of it, or the module stalled. */
      echo_conn_stats_t before, after;
      echo_conn_get_stats(c, &before);
      REQUIRE(before.held_input > 0);
      rc = echo_conn_feed(c, NULL, 0);
      echo_conn_get_stats(c, &after);
      REQUIRE(after.held_input < before.held_input || echo_conn_pending(c) > 0 ||
              echo_conn_should_close(c));
    } else {
      if (pos == len)
        break;
      size_t most = len - pos < cfg->bufs.max_input ? len - pos : cfg->bufs.max_input;
      size_t n = most;
      if (split) {
        uint32_t x = next(&rnd);
        n = cfg->bytewise || (x & 3) == 0 ? 1 : 1 + (x >> 2) % most;
        if (n > most)
          n = most;
      }
      rc = echo_conn_feed(c, in + pos, n);
      pos += n;
    }
    REQUIRE(rc == 0 || rc == -1);
    if (rc != 0) {
      r->failed = true;
      REQUIRE(echo_conn_should_close(c));
    }
  }
  observe(c, cfg, r);
  r->closing = echo_conn_should_close(c);
  r->requests = echo_conn_requests(c);
  echo_conn_stats_t st;
  echo_conn_get_stats(c, &st);
  r->error_status = st.last_error_status;
  echo_conn_free(c);
}

static bool starts(const char *p, const char *end, const char *lit) {
  size_t n = strlen(lit);
  return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}

static bool ieq(const char *p, size_t n, const char *lit) {
  if (n != strlen(lit))
    return false;
  for (size_t i = 0; i < n; i++) {
    char a = p[i];
    if (a >= 'A' && a <= 'Z')
      a = (char)(a - 'A' + 'a');
    if (a != lit[i])
      return false;
  }
  return true;
}

static const char *reason_of(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 431: return "Request Header Fields Too Large";
  case 501: return "Not Implemented";
  case 505: return "HTTP Version Not Supported";
  default: return NULL;
  }
}

/* Checks that the output is the recorded responses, each well formed. */
static void check_responses(const run_t *r) {
  /* After the last response, at most the 100 Continue of a request that
   * never ended. */
  uint64_t done = r->nresp == 0 ? 0 : r->resp[r->nresp - 1].end;
  REQUIRE(done == r->out_len ||
          (r->out_len - done == sizeof CONTINUE_100 - 1 &&
           starts(r->out + done, r->out + r->out_len, CONTINUE_100)));
  uint64_t start = 0;
  for (size_t k = 0; k < r->nresp; k++) {
    const char *p = r->out + start;
    const char *end = r->out + r->resp[k].end;
    bool last = k + 1 == r->nresp;
    /* A 100 Continue belongs to the response after it. */
    if (starts(p, end, CONTINUE_100))
      p += sizeof CONTINUE_100 - 1;
    REQUIRE(starts(p, end, "HTTP/1.1 "));
    p += 9;
    REQUIRE(end - p >= 4 && p[0] >= '1' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' &&
            p[2] >= '0' && p[2] <= '9' && p[3] == ' ');
    int status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    const char *reason = reason_of(status);
    REQUIRE(reason != NULL);
    p += 4;
    REQUIRE(starts(p, end, reason));
    p += strlen(reason);
    REQUIRE(starts(p, end, "\r\n"));
    p += 2;
    int content_type = 0, content_length = 0, connection = 0;
    bool says_close = false;
    uint64_t clen = 0;
    for (;;) {
      REQUIRE(p < end);
      if (starts(p, end, "\r\n")) {
        p += 2;
        break;
      }
      const char *colon = memchr(p, ':', (size_t)(end - p));
      REQUIRE(colon != NULL && colon > p);
      const char *eol = colon;
      while (eol + 1 < end && !(eol[0] == '\r' && eol[1] == '\n'))
        eol++;
      REQUIRE(eol + 1 < end);
      REQUIRE(colon[1] == ' ');
      const char *v = colon + 2;
      size_t vlen = (size_t)(eol - v);
      for (const char *q = p; q < eol; q++)
        REQUIRE((unsigned char)*q >= 0x20 && (unsigned char)*q < 0x7f);
      if (ieq(p, (size_t)(colon - p), "content-type")) {
        content_type++;
        REQUIRE(ieq(v, vlen, "text/plain"));
      } else if (ieq(p, (size_t)(colon - p), "content-length")) {
        content_length++;
        REQUIRE(vlen > 0 && vlen <= 19);
        for (size_t i = 0; i < vlen; i++) {
          REQUIRE(v[i] >= '0' && v[i] <= '9');
          clen = clen * 10 + (uint64_t)(v[i] - '0');
        }
      } else if (ieq(p, (size_t)(colon - p), "connection")) {
        connection++;
        says_close = ieq(v, vlen, "close");
        REQUIRE(says_close || ieq(v, vlen, "keep-alive"));
      } else {
        REQUIRE(!"an unexpected header field");
      }
      p = eol + 2;
    }
    REQUIRE(content_type == 1 && content_length == 1 && connection <= 1);
    size_t body = (size_t)(end - p);
    REQUIRE(body == (r->resp[k].bodiless ? 0 : clen));
    /* Nothing follows a response that closes the connection. */
    if (says_close)
      REQUIRE(last);
    if (status != 200) {
      REQUIRE(says_close && !r->resp[k].bodiless);
      char want[64];
      int n = snprintf(want, sizeof want, "%d %s\n", status, reason);
      REQUIRE(body == (size_t)n && memcmp(p, want, body) == 0);
      REQUIRE(r->error_status == status);
    }
    start = r->resp[k].end;
  }
  /* How it ended: an error response closes and fails the connection; a
   * graceful close comes after a response that said so. */
  if (r->error_status != 0)
    REQUIRE(r->failed && r->closing && r->nresp > 0);
  if (r->closing && !r->failed) {
    REQUIRE(r->nresp > 0);
    const char *p = r->out + (r->nresp > 1 ? r->resp[r->nresp - 2].end : 0);
    const char *end = r->out + r->resp[r->nresp - 1].end;
    if (starts(p, end, CONTINUE_100))
      p += sizeof CONTINUE_100 - 1;
    bool found = false;
    for (; p + 19 <= end && !(p[0] == '\r' && p[1] == '\n' && p[2] == '\r'); p++)
      if (memcmp(p, "\r\nConnection: close", 19) == 0)
        found = true;
    REQUIRE(found);
  }
  if (r->failed)
    REQUIRE(r->closing);
}

static void run_free(run_t *r) {
  free(r->out);
  free(r->resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4)
    return 0;
  config_t cfg;
  config_of(data, &cfg);
  const char *in = (const char *)data + 4;
  size_t len = size - 4;

  run_t whole = {0}, split = {0};
  play(&cfg, in, len, false, &whole);
  play(&cfg, in, len, true, &split);
  check_responses(&whole);
  check_responses(&split);
  REQUIRE(whole.out_len == split.out_len);
  REQUIRE(whole.out_len == 0 || memcmp(whole.out, split.out, whole.out_len) == 0);
  REQUIRE(whole.nresp == split.nresp);
  for (size_t i = 0; i < whole.nresp; i++)
    REQUIRE(whole.resp[i].end == split.resp[i].end &&
            whole.resp[i].bodiless == split.resp[i].bodiless);
  REQUIRE(whole.failed == split.failed && whole.closing == split.closing);
  REQUIRE(whole.requests == split.requests && whole.error_status == split.error_status);
  run_free(&whole);
  run_free(&split);
  return 0;
}
