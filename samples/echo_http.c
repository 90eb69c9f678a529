/* The echo server's HTTP/1.1 handling (echo_http.h): request bytes in,
 * response bytes out, no I/O.
 *
 * llhttp parses, compiled in strict mode and with no lenient flag. A scanner
 * in this file looks at every byte of a request's head, and of a chunked
 * body's trailer section, before llhttp does, for what llhttp 8.1 lets
 * through even in strict mode: a bare LF ending the request line or the
 * header block, empty field names, folded lines, control bytes, a request
 * line that is not exactly "method SP target SP HTTP/1.x", and the
 * request-line and header-block limits. The callbacks check the header block
 * as a whole: Transfer-Encoding must be one field saying "chunked", in
 * HTTP/1.1 only; CONNECT is refused; and a body over the limit is refused
 * from its Content-Length or chunk size, before its bytes arrive.
 *
 * The scanner runs first over the bytes that arrived, llhttp is then given
 * the bytes before the first one the scanner refused, and the earlier of the
 * two faults decides the status. Both carry their state from one byte to
 * the next (the scanner takes a run of plain bytes at once, and counts it as
 * it would count the bytes one by one), so the output does not depend on how
 * the input was split into reads; the fuzzer checks that.
 *
 * The output is one buffer: whole responses waiting to be written, then the
 * body of the request in progress, which becomes a response where it lies
 * once its message is complete (its header is slid in front of it). llhttp
 * is paused at the end of every message, so parsing stops exactly between
 * two requests when the pipeline or output limit is reached; the input after
 * that point is kept, bounded, until the server takes output and feeds
 * again.
 */
#include "echo_http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

/* Room for the longest header of a 200 response, and for the longest whole
 * error response. */
#define OK_HEAD_MAX 160
#define ERROR_RESPONSE_MAX 256

/* Empty lines let through before a request line: RFC 9112 section 2.2 asks
 * a server to ignore at least one (some clients send one after a body). */
#define MAX_EMPTY_LINES 4

/* Where the connection is in the current request. */
enum phase {
  PHASE_HEAD,     /* the request line and header block, or the gap before them */
  PHASE_BODY,     /* llhttp reads the body: Content-Length bytes or chunks */
  PHASE_TRAILERS, /* the trailer section after the last chunk */
};

/* What the scanner expects next. Order matters: from SCAN_LINE on, bytes
 * count towards the header block. */
enum scan_state {
  SCAN_START,   /* a request line, or an empty line before one */
  SCAN_REQLINE, /* more of the request line */
  SCAN_LINE,    /* a field line, or the empty line that ends the section */
  SCAN_NAME,    /* more of a field name, up to its colon */
  SCAN_VALUE,   /* more of a field value */
  SCAN_DONE,    /* the section ended */
};

/* The header fields whose values matter. */
enum field {
  FIELD_OTHER,
  FIELD_TE,     /* Transfer-Encoding */
  FIELD_EXPECT, /* Expect */
};

/* The interim response to "Expect: 100-continue" (RFC 9110 section 10.1.1),
 * sent once the head is accepted, before the body is read. */
static const char CONTINUE[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* The scanner's state for one head or trailer section. */
typedef struct scan {
  unsigned char state; /* an enum scan_state */
  bool cr;             /* the byte before was a CR, so this one must be LF */
  bool seen;           /* bytes of this section have arrived */
  bool sp_last;        /* the request line's latest byte was SP */
  unsigned char spaces; /* SPs in the request line so far */
  unsigned char empty; /* empty lines before the request line */
  unsigned char vlen;  /* bytes of the version after the second SP */
  size_t line;         /* request-line bytes, CRLF not counted */
  size_t block;        /* header-block bytes, CRLFs counted */
  size_t fields;       /* field lines begun */
  size_t name;         /* bytes of the current field name */
} scan_t;

/* A response in the output, by where it ends. */
typedef struct resp {
  uint64_t end;  /* offset just past it in all the output ever produced */
  bool bodiless; /* it answers HEAD: its body is announced, not sent */
} resp_t;

struct echo_conn {
  echo_limits_t lim;
  size_t max_output;  /* reads are held off at this much pending output */
  size_t max_input;   /* the most unparsed input kept */
  size_t out_bound;   /* the most the output buffer may ever need */
  llhttp_t parser;    /* parser.data points back here */
  enum phase phase;
  scan_t scan;

  /* The request in progress. */
  char *url;            /* its target, echoed when the body is empty */
  size_t url_len, url_cap;
  size_t body_len;      /* body bytes so far, at out[out_done..out_tail) */
  int err_status;       /* the status a callback refused it with, or 0 */
  bool keep_alive;      /* the connection stays open after the response */
  bool say_keep_alive;  /* the response says "Connection: keep-alive" (HTTP/1.0) */
  bool is_head;         /* HEAD: the response carries no body */
  char name[sizeof "transfer-encoding" - 1]; /* the start of the current field name */
  size_t name_len;      /* its whole length */
  unsigned char field;  /* an enum field: the field whose value is kept */
  char value[24];       /* the start of that value */
  size_t value_len;     /* its whole length */
  size_t te_fields;     /* Transfer-Encoding fields seen */
  size_t te_chunked;    /* those that said exactly "chunked" */
  bool expect_continue; /* a field said "Expect: 100-continue" */

  /* Input kept while parsing is paused. */
  char *in;
  size_t in_len, in_cap;

  /* Output: out[out_head..out_done) is whole responses not yet written,
   * out[out_done..out_tail) the body of the request in progress. */
  char *out;
  size_t out_cap, out_head, out_done, out_tail;
  uint64_t produced; /* bytes of whole responses ever put in the output */
  uint64_t consumed; /* bytes of them the server took */
  resp_t *resp;      /* a ring of the responses in the output */
  size_t resp_first, resp_count, resp_cap;

  uint64_t requests;  /* responses produced */
  bool closing;       /* no more parsing: close once the output is written */
  bool failed;        /* closing because of an error: feed returns -1 */
  bool overflow;      /* failed because kept input passed max_input */
  int error_status;   /* the status of the error response, or 0 */
  uint64_t dropped;   /* bytes ignored after closing was decided */
  size_t peak;        /* the most bytes held at once */
};

/* ------------------------------------------------------------ helpers */

static size_t sat_add(size_t a, size_t b) {
  return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static size_t max_size(size_t a, size_t b) {
  return a > b ? a : b;
}

static size_t held_bytes(const echo_conn_t *c) {
  return c->in_cap + c->url_cap + c->out_cap + c->resp_cap * sizeof(resp_t);
}

static void note_held(echo_conn_t *c) {
  size_t now = held_bytes(c);
  if (now > c->peak)
    c->peak = now;
}

/* Grows *buf to hold need bytes, doubling but never past limit. */
static bool grow(char **buf, size_t *cap, size_t need, size_t limit) {
  if (need <= *cap)
    return true;
  if (need > limit)
    return false;
  size_t n = max_size(need, max_size(*cap > SIZE_MAX / 2 ? SIZE_MAX : *cap * 2, 256));
  if (n > limit)
    n = limit;
  char *p = realloc(*buf, n);
  if (p == NULL)
    return false;
  *buf = p;
  *cap = n;
  return true;
}

/* A fault of this file, not of the input. Debug builds and the fuzzer stop
 * at once, so the fuzzer reports it; otherwise the request gets a 500. */
static bool fault(const char *what) {
#if !defined(NDEBUG) || defined(ECHO_HTTP_ABORT_ON_FAULT)
  fprintf(stderr, "echo_http: internal fault: %s\n", what);
  abort();
#else
  (void)what;
  return false;
#endif
}
#define CHECK(cond) ((cond) || fault(#cond))

static bool ascii_ieq(const char *s, size_t n, const char *lit) {
  if (n != strlen(lit))
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char a = (unsigned char)s[i];
    if (a >= 'A' && a <= 'Z')
      a = (unsigned char)(a - 'A' + 'a');
    if (a != (unsigned char)lit[i])
      return false;
  }
  return true;
}

/* RFC 9110's tchar: digits, letters and !#$%&'*+-.^_`|~, one bit a byte. */
static const uint64_t tchar_bits[4] = {0x03ff6cfa00000000u, 0x57ffffffc7fffffeu, 0, 0};

static bool is_tchar(unsigned char b) {
  return (tchar_bits[b >> 6] >> (b & 63)) & 1;
}

static bool is_digit(unsigned char b) {
  return b >= '0' && b <= '9';
}

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 431: return "Request Header Fields Too Large";
  case 501: return "Not Implemented";
  case 505: return "HTTP Version Not Supported";
  default: return "Internal Server Error";
  }
}

/* ------------------------------------------------------------ output */

static size_t out_pending(const echo_conn_t *c) {
  return c->out_done - c->out_head;
}

/* Makes room for extra more bytes after out_tail, moving what is pending to
 * the front first. */
static bool out_reserve(echo_conn_t *c, size_t extra) {
  if (c->out_cap - c->out_tail >= extra)
    return true;
  if (c->out_head > 0) {
    memmove(c->out, c->out + c->out_head, c->out_tail - c->out_head);
    c->out_done -= c->out_head;
    c->out_tail -= c->out_head;
    c->out_head = 0;
  }
  size_t need = sat_add(c->out_tail, extra);
  if (!CHECK(need <= c->out_bound))
    return false;
  if (!grow(&c->out, &c->out_cap, need, c->out_bound))
    return false;
  note_held(c);
  return true;
}

/* Makes room in the ring for one more response. Parsing stops at
 * max_pipeline responses, so the ring never needs more. */
static bool resp_reserve(echo_conn_t *c) {
  if (c->resp_count < c->resp_cap)
    return true;
  if (!CHECK(c->resp_count < c->lim.max_pipeline))
    return false;
  size_t n = c->resp_cap < 4 ? 4 : c->resp_cap * 2;
  if (n > c->lim.max_pipeline)
    n = c->lim.max_pipeline;
  resp_t *r = malloc(n * sizeof *r);
  if (r == NULL)
    return false;
  for (size_t i = 0; i < c->resp_count; i++)
    r[i] = c->resp[(c->resp_first + i) % c->resp_cap];
  free(c->resp);
  c->resp = r;
  c->resp_cap = n;
  c->resp_first = 0;
  note_held(c);
  return true;
}

/* The len bytes at out_done are ready to be written now. */
static void produce(echo_conn_t *c, size_t len) {
  c->out_done += len;
  c->out_tail = c->out_done;
  c->produced += len;
}

/* The len bytes at out_done are a whole response now. resp_reserve() must
 * have made room for it. */
static void commit(echo_conn_t *c, size_t len, bool bodiless) {
  produce(c, len);
  c->resp[(c->resp_first + c->resp_count) % c->resp_cap] =
      (resp_t){.end = c->produced, .bodiless = bodiless};
  c->resp_count++;
  c->requests++;
}

/* Ends the connection: no more parsing, and -1 from every feed. An error
 * response goes out when status is not 0 and memory allows; the body of the
 * request in progress is dropped either way. */
static void fail(echo_conn_t *c, int status) {
  c->out_tail = c->out_done;
  c->closing = c->failed = true;
  if (status == 0)
    return;
  c->error_status = status;
  char buf[ERROR_RESPONSE_MAX];
  char body[64];
  int blen = snprintf(body, sizeof body, "%d %s\n", status, reason(status));
  int len = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %d\r\n"
                     "Connection: close\r\n"
                     "\r\n"
                     "%s",
                     status, reason(status), blen, body);
  if (len <= 0 || (size_t)len >= sizeof buf || !resp_reserve(c) || !out_reserve(c, (size_t)len))
    return;
  memcpy(c->out + c->out_done, buf, (size_t)len);
  commit(c, (size_t)len, false);
}

/* Turns the request just parsed into its 200 response. */
static bool respond(echo_conn_t *c) {
  bool from_url = c->body_len == 0;
  size_t clen = from_url ? c->url_len : c->body_len;
  const char *conn = !c->keep_alive      ? "Connection: close\r\n"
                     : c->say_keep_alive ? "Connection: keep-alive\r\n"
                                         : "";
  /* Built by hand: this runs once a request, and snprintf was a tenth of
   * the server's own CPU time under pipelined load. */
  static const char start[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ";
  char head[OK_HEAD_MAX], digits[24];
  size_t nd = 0, conn_len = strlen(conn);
  size_t v = clen;
  do
    digits[nd++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  if (!CHECK(sizeof start - 1 + nd + 2 + conn_len + 2 < sizeof head))
    return false;
  char *p = head;
  memcpy(p, start, sizeof start - 1);
  p += sizeof start - 1;
  while (nd > 0)
    *p++ = digits[--nd];
  memcpy(p, "\r\n", 2);
  p += 2;
  memcpy(p, conn, conn_len);
  p += conn_len;
  memcpy(p, "\r\n", 2);
  p += 2;
  int hlen = (int)(p - head);
  size_t sent = c->is_head ? 0 : clen;
  if (c->is_head)
    c->out_tail = c->out_done;
  if (!resp_reserve(c) || !out_reserve(c, (size_t)hlen + (from_url ? sent : 0)))
    return false;
  char *at = c->out + c->out_done;
  if (from_url && sent > 0)
    memcpy(at + hlen, c->url, sent);
  else if (sent > 0)
    memmove(at + hlen, at, sent);
  memcpy(at, head, (size_t)hlen);
  commit(c, (size_t)hlen + sent, c->is_head);
  return true;
}

/* ------------------------------------------------------------ scanner */

static void scan_reset(echo_conn_t *c, bool trailers) {
  memset(&c->scan, 0, sizeof c->scan);
  c->scan.state = trailers ? SCAN_LINE : SCAN_START;
}

/* Counts one byte of the header block; false past the limit. */
static bool count_block(echo_conn_t *c) {
  if (c->scan.block >= c->lim.max_header_bytes)
    return false;
  c->scan.block++;
  return true;
}

/* One byte of the request line (not CR or LF). The version must be
 * HTTP/1.0 or HTTP/1.1; another HTTP/x.y is 505. */
static int reqline_byte(echo_conn_t *c, unsigned char b) {
  static const char proto[] = "HTTP/";
  scan_t *s = &c->scan;
  if (++s->line > c->lim.max_request_line)
    return 414;
  if (b == '\t')
    return 400;
  if (b == ' ') {
    if (s->sp_last || s->line == 1 || ++s->spaces > 2)
      return 400;
    s->sp_last = true;
    return 0;
  }
  s->sp_last = false;
  if (s->spaces < 2)
    return 0;
  unsigned i = s->vlen++;
  if (i < 5)
    return b == (unsigned char)proto[i] ? 0 : 400;
  if (i == 5)
    return b == '1' ? 0 : is_digit(b) ? 505 : 400;
  if (i == 6)
    return b == '.' ? 0 : 400;
  if (i == 7)
    return b == '0' || b == '1' ? 0 : is_digit(b) ? 505 : 400;
  return 400;
}

/* The LF of a CRLF arrived. */
static int line_end(echo_conn_t *c) {
  scan_t *s = &c->scan;
  switch (s->state) {
  case SCAN_START:
    return ++s->empty > MAX_EMPTY_LINES ? 400 : 0;
  case SCAN_REQLINE:
    if (s->spaces != 2 || s->vlen != 8)
      return 400;
    s->state = SCAN_LINE;
    return 0;
  case SCAN_LINE:
    s->state = SCAN_DONE;
    return -1;
  case SCAN_VALUE:
    s->state = SCAN_LINE;
    return 0;
  default:
    return CHECK(false) ? 0 : 500;
  }
}

/* One byte of a head or trailer section: 0 to go on, -1 when it ended the
 * section, or the status that refuses it. */
static int scan_byte(echo_conn_t *c, unsigned char b) {
  scan_t *s = &c->scan;
  s->seen = true;
  if (s->cr) {
    if (b != '\n')
      return 400; /* a bare CR */
    s->cr = false;
    if (s->state >= SCAN_LINE && !count_block(c))
      return 431;
    return line_end(c);
  }
  if (b == '\n')
    return 400; /* a bare LF */
  if (b == '\r') {
    if (s->state == SCAN_NAME)
      return 400; /* a field line without a colon */
    if (s->state >= SCAN_LINE && !count_block(c))
      return 431;
    s->cr = true;
    return 0;
  }
  if ((b < 0x20 && b != '\t') || b == 0x7f)
    return 400; /* NUL and the other control bytes */
  switch (s->state) {
  case SCAN_START:
    s->state = SCAN_REQLINE;
    /* fall through */
  case SCAN_REQLINE:
    return reqline_byte(c, b);
  case SCAN_LINE:
    if (b == ' ' || b == '\t')
      return 400; /* a folded line, or space before the first field */
    if (s->fields++ >= c->lim.max_headers)
      return 431;
    s->state = SCAN_NAME;
    s->name = 0;
    /* fall through */
  case SCAN_NAME:
    if (!count_block(c))
      return 431;
    if (b == ':') {
      if (s->name == 0)
        return 400;
      s->state = SCAN_VALUE;
      return 0;
    }
    if (!is_tchar(b))
      return 400;
    s->name++;
    return 0;
  case SCAN_VALUE:
    return count_block(c) ? 0 : 431;
  default:
    return CHECK(false) ? 0 : 500;
  }
}

/* The room left under a limit that used bytes count against. */
static size_t room(size_t used, size_t limit) {
  return used < limit ? limit - used : 0;
}

/* How many bytes at the front of q[0..n) scan_byte() would only count, with
 * nothing else to decide: the run inside a method or target, a field name
 * or a field value, cut where a limit would be passed. It counts them as
 * scan_byte() would, so the byte after the run goes through scan_byte() and
 * meets the same state, and the same limit, either way. The version is
 * taken whole where it is all there. Most of a head goes this way, about a
 * byte a cycle instead of a state machine's step a byte. */
static size_t plain_run(echo_conn_t *c, const unsigned char *q, size_t n) {
  scan_t *s = &c->scan;
  size_t k = 0, max;
  if (s->cr)
    return 0;
  switch (s->state) {
  case SCAN_REQLINE:
    max = room(s->line, c->lim.max_request_line);
    if (n > max)
      n = max;
    if (s->spaces == 2) {
      if (s->vlen != 0 || n < 8 ||
          (memcmp(q, "HTTP/1.1", 8) != 0 && memcmp(q, "HTTP/1.0", 8) != 0))
        return 0;
      s->vlen = 8;
      k = 8;
    } else {
      while (k < n && q[k] > ' ' && q[k] != 0x7f)
        k++;
    }
    s->line += k;
    if (k > 0)
      s->sp_last = false;
    break;
  case SCAN_NAME:
    max = room(s->block, c->lim.max_header_bytes);
    if (n > max)
      n = max;
    while (k < n && is_tchar(q[k]))
      k++;
    s->name += k;
    s->block += k;
    break;
  case SCAN_VALUE:
    max = room(s->block, c->lim.max_header_bytes);
    if (n > max)
      n = max;
    while (k < n && (q[k] >= ' ' ? q[k] != 0x7f : q[k] == '\t'))
      k++;
    s->block += k;
    break;
  default:
    return 0;
  }
  if (k > 0)
    s->seen = true;
  return k;
}

/* Scans up to n bytes of a head or trailer section. Returns how many may go
 * to llhttp: all n; fewer, with *status set for the byte after them; or up
 * to and including the LF that ends the section, with *end set. */
static size_t scan(echo_conn_t *c, const char *p, size_t n, int *status, bool *end) {
  const unsigned char *q = (const unsigned char *)p;
  size_t i = 0;
  while (i < n) {
    i += plain_run(c, q + i, n - i);
    if (i == n)
      break;
    int r = scan_byte(c, q[i]);
    if (r > 0) {
      *status = r;
      return i;
    }
    i++;
    if (r < 0) {
      *end = true;
      return i;
    }
  }
  return n;
}

/* ------------------------------------------------------------ llhttp callbacks */

static void request_reset(echo_conn_t *c) {
  c->url_len = 0;
  c->body_len = 0;
  c->err_status = 0;
  c->keep_alive = c->say_keep_alive = c->is_head = false;
  c->name_len = 0;
  c->field = FIELD_OTHER;
  c->value_len = 0;
  c->te_fields = c->te_chunked = 0;
  c->expect_continue = false;
}

/* Refuses the request from a callback: llhttp stops with an error, and
 * the response carries this status. */
static int refuse(echo_conn_t *c, int status) {
  if (c->err_status == 0)
    c->err_status = status;
  return -1;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  echo_conn_t *c = p->data;
  if (len == 0)
    return 0;
  size_t need = c->url_len + len;
  /* The scanner bounds the request line, and so the target. */
  if (!CHECK(need <= c->lim.max_request_line))
    return refuse(c, 500);
  if (!grow(&c->url, &c->url_cap, need, c->lim.max_request_line))
    return refuse(c, 500);
  note_held(c);
  memcpy(c->url + c->url_len, at, len);
  c->url_len = need;
  return 0;
}

/* llhttp takes a request with the PRI method as the HTTP/2 connection
 * preface in any version: it waits for the preface's second part instead of
 * ending the head. HTTP/2.0 got its 505 from the scanner already; PRI with
 * HTTP/1.x is refused here. */
static int on_version_complete(llhttp_t *p) {
  echo_conn_t *c = p->data;
  return p->method == HTTP_PRI ? refuse(c, 400) : 0;
}

/* Appends a piece of a header's name or value to a fixed buffer, keeping
 * what fits and counting all of it (a longer one matches nothing). */
static void keep_piece(char *buf, size_t cap, size_t *len, const char *at, size_t n) {
  if (n > 0 && *len < cap)
    memcpy(buf + *len, at, n < cap - *len ? n : cap - *len);
  *len = sat_add(*len, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  echo_conn_t *c = p->data;
  if (c->phase != PHASE_HEAD)
    return 0; /* trailer fields are ignored */
  keep_piece(c->name, sizeof c->name, &c->name_len, at, len);
  return 0;
}

static int on_header_field_complete(llhttp_t *p) {
  echo_conn_t *c = p->data;
  if (c->phase != PHASE_HEAD)
    return 0;
  c->field = FIELD_OTHER;
  if (c->name_len <= sizeof c->name) {
    if (ascii_ieq(c->name, c->name_len, "transfer-encoding")) {
      c->field = FIELD_TE;
      c->te_fields++;
    } else if (ascii_ieq(c->name, c->name_len, "expect")) {
      c->field = FIELD_EXPECT;
    }
  }
  c->name_len = 0;
  c->value_len = 0;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  echo_conn_t *c = p->data;
  if (c->field != FIELD_OTHER)
    keep_piece(c->value, sizeof c->value, &c->value_len, at, len);
  return 0;
}

/* A Transfer-Encoding value counts as chunked only when it is exactly
 * "chunked" (any case) between optional spaces and tabs: no list, no other
 * coding, no parameters. An Expect value asks for 100 Continue when it is
 * exactly "100-continue" the same way; other expectations are ignored. */
static int on_header_value_complete(llhttp_t *p) {
  echo_conn_t *c = p->data;
  enum field f = c->field;
  c->field = FIELD_OTHER;
  if (f == FIELD_OTHER || c->value_len > sizeof c->value)
    return 0;
  size_t a = 0, b = c->value_len;
  while (a < b && (c->value[a] == ' ' || c->value[a] == '\t'))
    a++;
  while (b > a && (c->value[b - 1] == ' ' || c->value[b - 1] == '\t'))
    b--;
  if (f == FIELD_TE && ascii_ieq(c->value + a, b - a, "chunked"))
    c->te_chunked++;
  if (f == FIELD_EXPECT && ascii_ieq(c->value + a, b - a, "100-continue"))
    c->expect_continue = true;
  return 0;
}

/* Puts the 100 Continue in the output, after the responses before it. It is
 * not a response of its own: it belongs to the one that follows it. */
static bool send_continue(echo_conn_t *c) {
  size_t len = sizeof CONTINUE - 1;
  if (!CHECK(c->out_tail == c->out_done) || !out_reserve(c, len))
    return false;
  memcpy(c->out + c->out_done, CONTINUE, len);
  produce(c, len);
  return true;
}

static int on_headers_complete(llhttp_t *p) {
  echo_conn_t *c = p->data;
  c->phase = PHASE_BODY;
  /* The scanner let only HTTP/1.0 and HTTP/1.1 through. */
  if (!CHECK(p->http_major == 1 && p->http_minor <= 1))
    return refuse(c, 500);
  if (p->method == HTTP_CONNECT)
    return refuse(c, 501);
  /* llhttp refuses Content-Length with Transfer-Encoding, and a list that
   * does not end in chunked; it takes "gzip" then "chunked" in two fields,
   * ",chunked", and chunked in HTTP/1.0, which RFC 9112 section 6.1 says
   * must be treated as faulty framing. */
  if (c->te_fields > 0 &&
      (c->te_fields != 1 || c->te_chunked != 1 || p->http_minor == 0))
    return refuse(c, 400);
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->lim.max_body)
    return refuse(c, 413);
  bool says_close = p->flags & F_CONNECTION_CLOSE;
  bool says_keep_alive = p->flags & F_CONNECTION_KEEP_ALIVE;
  c->keep_alive = !says_close && (p->http_minor == 1 || says_keep_alive);
  c->say_keep_alive = c->keep_alive && p->http_minor == 0;
  c->is_head = p->method == HTTP_HEAD;
  /* Only where a body is to come, and never to HTTP/1.0, which has no
   * interim responses (RFC 9110 section 10.1.1). */
  bool body_follows =
      (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  if (c->expect_continue && p->http_minor == 1 && body_follows && !send_continue(c))
    return refuse(c, 500);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  echo_conn_t *c = p->data;
  /* Content-Length and every chunk size were checked against the limit
   * before their bytes came. */
  if (!CHECK(len <= c->lim.max_body - c->body_len))
    return refuse(c, 500);
  if (len == 0)
    return 0;
  if (!out_reserve(c, len))
    return refuse(c, 500);
  memcpy(c->out + c->out_tail, at, len);
  c->out_tail += len;
  c->body_len += len;
  return 0;
}

/* A chunk size line ended: the size is in p->content_length. The last
 * chunk pauses the parser, so the scanner can take over the trailer
 * section from the exact byte where it starts. */
static int on_chunk_header(llhttp_t *p) {
  echo_conn_t *c = p->data;
  if (p->content_length == 0) {
    c->phase = PHASE_TRAILERS;
    scan_reset(c, true);
    return HPE_PAUSED;
  }
  if (p->content_length > c->lim.max_body - c->body_len)
    return refuse(c, 413);
  return 0;
}

/* The request is complete: answer it, then pause so parsing stops right
 * here. */
static int on_message_complete(llhttp_t *p) {
  echo_conn_t *c = p->data;
  if (!respond(c))
    return refuse(c, 500);
  if (!c->keep_alive)
    c->closing = true;
  c->phase = PHASE_HEAD;
  scan_reset(c, false);
  request_reset(c);
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_version_complete = on_version_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

/* ------------------------------------------------------------ parsing */

static bool may_parse(const echo_conn_t *c) {
  return !c->closing && c->resp_count < c->lim.max_pipeline &&
         out_pending(c) < c->max_output;
}

/* Parses p[0..n) while parsing may go on. Returns how many bytes it used;
 * the rest is for later, or dropped if closing was decided. */
static size_t parse(echo_conn_t *c, const char *p, size_t n) {
  size_t pos = 0;
  while (pos < n && may_parse(c)) {
    enum phase was = c->phase;
    size_t len = n - pos;
    int status = 0;
    bool end = false;
    if (was != PHASE_BODY)
      len = scan(c, p + pos, len, &status, &end);
    if (len > 0) {
      llhttp_errno_t e = llhttp_execute(&c->parser, p + pos, len);
      if (e == HPE_PAUSED) {
        /* At the end of a message, or after the last chunk's size line;
         * in a head or trailer section only where the scanner saw it end. */
        size_t at = (size_t)(llhttp_get_error_pos(&c->parser) - (p + pos));
        llhttp_resume(&c->parser);
        if (!CHECK(was == PHASE_BODY || (end && at == len))) {
          fail(c, 500);
          break;
        }
        pos += at;
        /* After a request with Upgrade (answered as plain HTTP, the
         * upgrade ignored), llhttp stops once more before the next
         * request; let it go on. Not after the last chunk's pause: the
         * message has not ended there. */
        if (!c->closing && c->phase == PHASE_HEAD && llhttp_get_upgrade(&c->parser)) {
          if (!CHECK(llhttp_execute(&c->parser, p + pos, 0) == HPE_PAUSED_UPGRADE)) {
            fail(c, 500);
            break;
          }
          llhttp_resume_after_upgrade(&c->parser);
        }
        continue;
      }
      if (e != HPE_OK) {
        fail(c, c->err_status != 0 ? c->err_status : 400);
        break;
      }
      pos += len;
    }
    if (status != 0) {
      fail(c, status);
      break;
    }
    /* A head that ended goes on to a body; a trailer section that ended
     * ends the message, which paused above. */
    if (end && !CHECK(was == PHASE_HEAD && c->phase == PHASE_BODY)) {
      fail(c, 500);
      break;
    }
  }
  return pos;
}

/* Keeps n more unparsed bytes, which fit within max_input. */
static bool keep_input(echo_conn_t *c, const char *p, size_t n) {
  if (!grow(&c->in, &c->in_cap, c->in_len + n, c->max_input))
    return false;
  note_held(c);
  memcpy(c->in + c->in_len, p, n);
  c->in_len += n;
  return true;
}

static void free_input(echo_conn_t *c) {
  free(c->in);
  c->in = NULL;
  c->in_len = c->in_cap = 0;
}

/* ------------------------------------------------------------ API */

void echo_limits_default(echo_limits_t *lim) {
  lim->max_request_line = 8 << 10;
  lim->max_header_bytes = 16 << 10;
  lim->max_headers = 100;
  lim->max_body = 1 << 20;
  lim->max_pipeline = 16;
}

int echo_conn_new(echo_conn_t **c, const echo_limits_t *lim) {
  return echo_conn_new_ex(c, lim, NULL);
}

int echo_conn_new_ex(echo_conn_t **cp, const echo_limits_t *lim, const echo_buffers_t *buf) {
  if (cp == NULL)
    return -EINVAL;
  *cp = NULL;
  echo_limits_t l;
  echo_limits_default(&l);
  if (lim != NULL)
    l = *lim;
  echo_buffers_t b = {.max_output = ECHO_OUTPUT_LIMIT, .max_input = ECHO_INPUT_LIMIT};
  if (buf != NULL)
    b = *buf;
  if (l.max_request_line == 0 || l.max_pipeline == 0 || b.max_output == 0 || b.max_input == 0)
    return -EINVAL;
  echo_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL)
    return -ENOMEM;
  c->lim = l;
  c->max_output = b.max_output;
  c->max_input = b.max_input;
  /* Parsing starts a request only while less than max_output is pending,
   * and a request adds one response: a header and its body or target, or
   * an error response instead, and maybe a 100 Continue before it. */
  c->out_bound = sat_add(b.max_output,
                         sizeof CONTINUE - 1 +
                             max_size(sat_add(OK_HEAD_MAX, max_size(l.max_body, l.max_request_line)),
                                      ERROR_RESPONSE_MAX));
  llhttp_init(&c->parser, HTTP_REQUEST, &settings);
  c->parser.data = c;
  c->phase = PHASE_HEAD;
  scan_reset(c, false);
  request_reset(c);
  *cp = c;
  return 0;
}

void echo_conn_free(echo_conn_t *c) {
  if (c == NULL)
    return;
  free(c->in);
  free(c->url);
  free(c->out);
  free(c->resp);
  free(c);
}

int echo_conn_feed(echo_conn_t *c, const char *data, size_t len) {
  if (c->closing) {
    c->dropped += len;
    return c->failed ? -1 : 0;
  }
  if (c->in_len > 0) {
    size_t used = parse(c, c->in, c->in_len);
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
  }
  if (len > 0) {
    size_t used = !c->closing && c->in_len == 0 ? parse(c, data, len) : 0;
    if (used < len && !c->closing) {
      if (len - used > c->max_input - c->in_len) {
        c->overflow = true;
        fail(c, 0);
      } else if (!keep_input(c, data + used, len - used)) {
        fail(c, 0); /* out of memory */
      }
    }
    if (c->closing)
      c->dropped += len - used;
  }
  if (c->closing) {
    c->dropped += c->in_len;
    free_input(c);
  } else if (c->in_len == 0 && c->in != NULL) {
    free_input(c); /* kept input is rare: do not hold its buffer */
  }
  return c->failed ? -1 : 0;
}

const char *echo_conn_output(echo_conn_t *c, size_t *len) {
  *len = out_pending(c);
  return c->out != NULL ? c->out + c->out_head : "";
}

void echo_conn_consume(echo_conn_t *c, size_t n) {
  size_t pending = out_pending(c);
  if (n > pending) {
#ifndef NDEBUG
    fprintf(stderr, "echo_conn_consume: %zu bytes consumed but only %zu are pending; "
                    "taking all of them\n", n, pending);
#endif
    n = pending;
  }
  c->out_head += n;
  c->consumed += n;
  while (c->resp_count > 0 && c->resp[c->resp_first].end <= c->consumed) {
    c->resp_first = (c->resp_first + 1) % c->resp_cap;
    c->resp_count--;
  }
  if (c->out_head == c->out_tail) {
    c->out_head = c->out_done = c->out_tail = 0;
    /* An idle keep-alive connection should not sit on a big buffer. */
    if (c->out_cap > (64u << 10)) {
      free(c->out);
      c->out = NULL;
      c->out_cap = 0;
    }
  }
}

size_t echo_conn_pending(echo_conn_t *c) {
  return c->resp_count;
}

bool echo_conn_want_input(echo_conn_t *c) {
  /* Kept input goes first: a server that read more before feeding it
   * again could wait for a client that waits for those answers. */
  return may_parse(c) && c->in_len == 0;
}

bool echo_conn_should_close(echo_conn_t *c) {
  return c->closing;
}

bool echo_conn_in_request(echo_conn_t *c) {
  return !c->closing && (c->phase != PHASE_HEAD || c->scan.seen || c->in_len > 0);
}

uint64_t echo_conn_requests(echo_conn_t *c) {
  return c->requests;
}

void echo_conn_get_stats(echo_conn_t *c, echo_conn_stats_t *st) {
  st->held_bytes = held_bytes(c);
  st->peak_held_bytes = c->peak;
  st->held_input = c->in_len;
  st->dropped_bytes = c->dropped;
  st->last_error_status = c->error_status;
  st->input_overflow = c->overflow;
}

size_t echo_conn_memory_bound(echo_conn_t *c) {
  size_t ring = c->lim.max_pipeline > SIZE_MAX / sizeof(resp_t)
                    ? SIZE_MAX
                    : c->lim.max_pipeline * sizeof(resp_t);
  return sat_add(sat_add(c->max_input, c->lim.max_request_line), sat_add(c->out_bound, ring));
}

bool echo_conn_response_info(echo_conn_t *c, size_t i, uint64_t *end, bool *bodiless) {
  if (i >= c->resp_count)
    return false;
  const resp_t *r = &c->resp[(c->resp_first + i) % c->resp_cap];
  *end = r->end;
  *bodiless = r->bodiless;
  return true;
}
