/* Tests for framed reads and stream control (issue "Network breadth"):
 * weft_stream_read_exactly, weft_stream_read_until and weft_stream_peek
 * over the read-ahead buffer (frames longer than it, ENOBUFS and end of
 * stream leaving the bytes readable, cancel and deadline consuming
 * nothing), a split-point fuzz of the framed readers (the same bytes in
 * random chunks must give the same frames), half-close, addresses,
 * TCP options, the write limit, abort (the peer sees a reset), Unix-domain
 * listeners and connects in every mode that applies, and adopting
 * descriptors. Loopback only: 127.0.0.1, ::1 where the machine has it, and
 * socket files under a mkdtemp directory removed after. Every case checks
 * that the process's descriptors are back to their count before it.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define HOST "127.0.0.1"

/* Runs main as weft_run's main task; it must leave no descriptor open. */
static void run_closes_fds(weft_fn main, void *arg) {
  int fds = wt_count_fds();
  assert_int_equal(weft_run(main, arg, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* A connected pair of streams on the calling task's loop: over TCP on
 * host, or (host NULL) over a Unix-domain socket at path. */
typedef struct acc_arg {
  weft_listener_t *l;
  weft_stream_t *s;
  int rc;
} acc_arg_t;

static void *accept_one(void *arg) {
  acc_arg_t *a = arg;
  a->rc = weft_tcp_accept(a->l, &a->s);
  return NULL;
}

static void pair_on(const char *host, const char *path, weft_stream_t **c, weft_stream_t **s) {
  acc_arg_t a = {0};
  if (path)
    assert_int_equal(weft_unix_listen(&a.l, path, NULL), 0);
  else
    assert_int_equal(weft_tcp_listen(&a.l, host, 0, NULL), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, accept_one, &a, &t), 0);
  if (path)
    assert_int_equal(weft_unix_connect(c, path), 0);
  else
    assert_int_equal(weft_tcp_connect(c, host, weft_listener_port(a.l)), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(a.rc, 0);
  *s = a.s;
  assert_int_equal(weft_listener_close(a.l), 0);
}

static void pair(weft_stream_t **c, weft_stream_t **s) {
  pair_on(HOST, NULL, c, s);
}

/* A temporary directory for socket files, removed by tmp_done. */
static char tmpdir[64];
static char *tmp_path(const char *name) {
  static char buf[128];
  if (!tmpdir[0]) {
    strcpy(tmpdir, "/tmp/weft-stream-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
  }
  snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
  return buf;
}
static void tmp_done(void) {
  if (tmpdir[0]) {
    assert_int_equal(rmdir(tmpdir), 0); /* empty: every socket file removed */
    tmpdir[0] = 0;
  }
}

/* ------------------------------------------------------- framed reads */

static void *framed_main(void *arg) {
  (void)arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  char buf[256];
  assert_int_equal(weft_stream_write(c, "one\r\ntwo\r\nthr", 13), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\r\n", 2), 5);
  assert_memory_equal(buf, "one\r\n", 5);
  /* Peek sees without consuming. */
  assert_int_equal(weft_stream_peek(s, buf, 3), 3);
  assert_memory_equal(buf, "two", 3);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\r\n", 2), 5);
  assert_memory_equal(buf, "two\r\n", 5);
  /* cap bytes without the delimiter: ENOBUFS, nothing consumed. */
  assert_int_equal(weft_stream_read_until(s, buf, 3, "\r\n", 2), WEFT_ENOBUFS);
  assert_int_equal(weft_stream_read_exactly(s, buf, 3), 3);
  assert_memory_equal(buf, "thr", 3);
  /* A delimiter split across two writes. */
  assert_int_equal(weft_stream_write(c, "ee\r", 3), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_stream_write(c, "\nfour", 5), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\r\n", 2), 4);
  assert_memory_equal(buf, "ee\r\n", 4);
  assert_int_equal(weft_stream_read_exactly(s, buf, 0), 0);
  /* The end comes: read_exactly consumes nothing, the bytes stay. */
  assert_int_equal(weft_stream_shutdown(c), 0);
  assert_int_equal(weft_stream_read_exactly(s, buf, 10), WEFT_EOF);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), WEFT_EOF);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), 4);
  assert_memory_equal(buf, "four", 4);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), WEFT_EOF);
  assert_int_equal(weft_stream_peek(s, buf, 1), 0);
  /* Bad arguments. */
  assert_int_equal(weft_stream_read_until(s, buf, 1, "\r\n", 2), WEFT_EINVAL);
  assert_int_equal(weft_stream_read_until(s, buf, 10, "", 0), WEFT_EINVAL);
  assert_int_equal(weft_stream_read_until(s, NULL, 10, "x", 1), WEFT_EINVAL);
  assert_int_equal(weft_stream_read_until(NULL, buf, 10, "x", 1), WEFT_EINVAL);
  assert_int_equal(weft_stream_read_exactly(s, NULL, 1), WEFT_EINVAL);
  assert_int_equal(weft_stream_peek(s, buf, 0), WEFT_EINVAL);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(s), 0);
  return NULL;
}

static void stream_framed_basics(void **state) {
  (void)state;
  run_closes_fds(framed_main, NULL);
}

/* Frames far longer than the 16 KiB read-ahead: a 300 KiB line, a 2 MiB
 * exact read, and a line past its cap (ENOBUFS after cap bytes, which stay
 * readable). */
typedef struct big_writer {
  weft_stream_t *s;
  const char *data;
  size_t len;
} big_writer_t;

static void *big_write(void *arg) {
  big_writer_t *w = arg;
  assert_int_equal(weft_stream_write(w->s, w->data, w->len), 0);
  return NULL;
}

static void *long_frames_main(void *arg) {
  (void)arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  size_t line = 300 << 10, exact = 2 << 20, over = 100 << 10;
  size_t total = line + exact + over;
  char *data = malloc(total), *buf = malloc(exact);
  assert_non_null(data);
  assert_non_null(buf);
  for (size_t i = 0; i < total; i++)
    data[i] = (char)('a' + i % 23);
  data[line - 1] = '\n';
  big_writer_t w = {c, data, total};
  weft_task_t *wt;
  assert_int_equal(weft_spawn(NULL, big_write, &w, &wt), 0);
  assert_int_equal(weft_stream_read_until(s, buf, line + 10, "\n", 1), (ssize_t)line);
  assert_memory_equal(buf, data, line);
  assert_int_equal(weft_stream_read_exactly(s, buf, exact), (ssize_t)exact);
  assert_memory_equal(buf, data + line, exact);
  /* No newline in the last 100 KiB: cap 64 KiB gives ENOBUFS, nothing lost. */
  assert_int_equal(weft_stream_read_until(s, buf, 64 << 10, "\n", 1), WEFT_ENOBUFS);
  assert_int_equal(weft_stream_read_exactly(s, buf, over), (ssize_t)over);
  assert_memory_equal(buf, data + line + exact, over);
  assert_int_equal(weft_await(wt, NULL), 0);
  weft_task_release(wt);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(s), 0);
  free(data);
  free(buf);
  return NULL;
}

static void stream_framed_longer_than_buffer(void **state) {
  (void)state;
  run_closes_fds(long_frames_main, NULL);
}

/* A deadline or a cancel cuts a frame and consumes nothing; the frame
 * completes later from the same bytes. */
typedef struct cut_reader {
  weft_stream_t *s;
  int mode;          /* 0: read_until, 1: read_exactly */
  ssize_t rc;
  bool parked;
} cut_reader_t;

static void *cut_read(void *arg) {
  cut_reader_t *r = arg;
  char buf[64];
  r->parked = true;
  r->rc = r->mode == 0 ? weft_stream_read_until(r->s, buf, sizeof buf, "\n", 1)
                       : weft_stream_read_exactly(r->s, buf, 10);
  return NULL;
}

static void *cut_main(void *arg) {
  (void)arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  char buf[64];
  assert_int_equal(weft_stream_write(c, "part", 4), 0);
  /* A deadline: the partial frame stays. */
  assert_int_equal(weft_deadline_push(50), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_deadline_push(50), 0);
  assert_int_equal(weft_stream_read_exactly(s, buf, 10), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  /* A cancel of each, from another task, while it waits. */
  for (int mode = 0; mode < 2; mode++) {
    cut_reader_t r = {.s = s, .mode = mode, .rc = 1};
    weft_task_t *t;
    assert_int_equal(weft_spawn(NULL, cut_read, &r, &t), 0);
    while (!r.parked)
      assert_int_equal(weft_yield(), 0);
    assert_int_equal(weft_yield(), 0);
    /* The reader is parked: a second reader is refused. */
    assert_int_equal(weft_stream_read(s, buf, 1), WEFT_EBUSY);
    assert_int_equal(weft_stream_read_until(s, buf, 8, "\n", 1), WEFT_EBUSY);
    assert_int_equal(weft_task_cancel(t), 0);
    assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
    weft_task_release(t);
    assert_int_equal(r.rc, WEFT_ECANCELED);
  }
  /* A close of the stream under a parked framed reader: ECLOSED. */
  assert_int_equal(weft_stream_write(c, "-more\n", 6), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), 10);
  assert_memory_equal(buf, "part-more\n", 10);
  cut_reader_t r = {.s = s, .mode = 0, .rc = 1};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, cut_read, &r, &t), 0);
  while (!r.parked)
    assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r.rc, WEFT_ECLOSED);
  assert_int_equal(weft_stream_close(c), 0);
  return NULL;
}

static void stream_framed_cut_consumes_nothing(void **state) {
  (void)state;
  run_closes_fds(cut_main, NULL);
}

/* A peer that resets: the framed reader gets the error, the bytes that came
 * stay readable. */
static void *reset_main(void *arg) {
  (void)arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  char buf[64];
  assert_int_equal(weft_stream_write(c, "abc", 3), 0);
  assert_int_equal(weft_stream_peek(s, buf, sizeof buf), 3);
  assert_int_equal(weft_stream_abort(c), 0);
  ssize_t rc = weft_stream_read_until(s, buf, sizeof buf, "\n", 1);
  assert_int_equal(rc, UV_ECONNRESET);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), 3);
  assert_int_equal(weft_stream_close(s), 0);
  return NULL;
}

static void stream_peer_reset_during_frame(void **state) {
  (void)state;
  run_closes_fds(reset_main, NULL);
}

/* ------------------------------------------------ split-point fuzzing */

static uint32_t rnd(uint64_t *st) {
  *st = *st * 6364136223846793005ULL + 1442695040888963407ULL;
  return (uint32_t)(*st >> 33);
}

#define FUZZ_LEN 20000
#define FUZZ_OPS 4000

typedef struct fuzz {
  uint64_t seed;           /* the byte stream and the reader's operations */
  uint64_t split;          /* the chunk sizes */
  unsigned char data[FUZZ_LEN];
  weft_stream_t *w;
  /* What the reader saw: each operation's result and a hash of its bytes. */
  ssize_t rc[FUZZ_OPS];
  uint32_t hash[FUZZ_OPS];
  int nops;
} fuzz_t;

static void fuzz_data(fuzz_t *f) {
  uint64_t st = f->seed;
  for (size_t i = 0; i < FUZZ_LEN; i++) {
    uint32_t r = rnd(&st) % 64;
    /* Delimiters now and then, "\r\n" pieces and lone '\r's. */
    f->data[i] = r < 3 ? '\r' : r < 6 ? '\n' : (unsigned char)('A' + r % 26);
  }
}

static void *fuzz_writer(void *arg) {
  fuzz_t *f = arg;
  uint64_t st = f->split;
  size_t off = 0;
  while (off < FUZZ_LEN) {
    size_t n = 1 + rnd(&st) % (rnd(&st) % 4 == 0 ? 3000 : 17);
    if (n > FUZZ_LEN - off)
      n = FUZZ_LEN - off;
    assert_int_equal(weft_stream_write(f->w, f->data + off, n), 0);
    off += n;
    if (rnd(&st) % 2)
      assert_int_equal(weft_yield(), 0);
  }
  assert_int_equal(weft_stream_shutdown(f->w), 0);
  return NULL;
}

static uint32_t hash(const unsigned char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 16777619u;
  return h;
}

/* The reader: a sequence of framed reads chosen by the seed alone. */
static void fuzz_read(fuzz_t *f, weft_stream_t *s) {
  uint64_t st = f->seed ^ 0x9e3779b97f4a7c15ULL;
  unsigned char buf[4096];
  f->nops = 0;
  while (f->nops < FUZZ_OPS) {
    uint32_t op = rnd(&st) % 3;
    size_t n = 1 + rnd(&st) % (rnd(&st) % 8 == 0 ? 4000 : 60);
    ssize_t rc;
    if (op == 0)
      rc = weft_stream_read_until(s, buf, n + 1, "\r\n", 2);
    else if (op == 1)
      rc = weft_stream_read_until(s, buf, n, "\n", 1);
    else
      rc = weft_stream_read_exactly(s, buf, n);
    f->rc[f->nops] = rc;
    f->hash[f->nops] = rc > 0 ? hash(buf, (size_t)rc) : 0;
    f->nops++;
    if (rc == WEFT_ENOBUFS) {
      /* Take a few of the bytes the frame could not (they stayed). */
      size_t k = 1 + rnd(&st) % 50;
      rc = weft_stream_read_exactly(s, buf, k);
      if (f->nops < FUZZ_OPS) {
        f->rc[f->nops] = rc;
        f->hash[f->nops] = rc > 0 ? hash(buf, (size_t)rc) : 0;
        f->nops++;
      }
    }
    if (rc == WEFT_EOF)
      break;
    assert_true(rc > 0);
  }
}

/* The same reads against the whole stream in memory: what any split must
 * give. */
static void fuzz_model(fuzz_t *f, fuzz_t *m) {
  uint64_t st = f->seed ^ 0x9e3779b97f4a7c15ULL;
  size_t off = 0;
  m->nops = 0;
  while (m->nops < FUZZ_OPS) {
    uint32_t op = rnd(&st) % 3;
    size_t n = 1 + rnd(&st) % (rnd(&st) % 8 == 0 ? 4000 : 60);
    size_t left = FUZZ_LEN - off;
    const unsigned char *p = f->data + off;
    ssize_t rc;
    if (op == 2) {
      rc = left >= n ? (ssize_t)n : WEFT_EOF;
    } else {
      const char *d = op == 0 ? "\r\n" : "\n";
      size_t dl = strlen(d), cap = op == 0 ? n + 1 : n;
      size_t lim = left < cap ? left : cap;
      rc = 0;
      for (size_t i = 0; i + dl <= lim; i++)
        if (memcmp(p + i, d, dl) == 0) {
          rc = (ssize_t)(i + dl);
          break;
        }
      if (rc == 0)
        rc = left >= cap ? WEFT_ENOBUFS : WEFT_EOF;
    }
    m->rc[m->nops] = rc;
    m->hash[m->nops] = rc > 0 ? hash(p, (size_t)rc) : 0;
    m->nops++;
    if (rc == WEFT_ENOBUFS) {
      size_t k = 1 + rnd(&st) % 50;
      rc = left >= k ? (ssize_t)k : WEFT_EOF;
      if (m->nops < FUZZ_OPS) {
        m->rc[m->nops] = rc;
        m->hash[m->nops] = rc > 0 ? hash(p, k) : 0;
        m->nops++;
      }
    }
    if (rc == WEFT_EOF)
      break;
    off += (size_t)rc;
  }
}

static void *fuzz_main(void *arg) {
  fuzz_t *f = arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  f->w = c;
  weft_task_t *wt;
  assert_int_equal(weft_spawn(NULL, fuzz_writer, f, &wt), 0);
  fuzz_read(f, s);
  assert_int_equal(weft_await(wt, NULL), 0);
  weft_task_release(wt);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(s), 0);
  return NULL;
}

/* For each seed, several splits must give the very same results: those of
 * the in-memory model, operation by operation, to the end of the stream. */
static void stream_framed_split_fuzz(void **state) {
  (void)state;
  static fuzz_t runs[4], model;
  int fds = wt_count_fds();
  for (uint64_t seed = 1; seed <= 6; seed++) {
    for (int k = 0; k < 4; k++) {
      fuzz_t *f = &runs[k];
      memset(f, 0, sizeof *f);
      f->seed = seed;
      f->split = seed * 1000 + (uint64_t)k;
      fuzz_data(f);
      assert_int_equal(weft_run(fuzz_main, f, NULL), 0);
      assert_true(f->nops > 0);
    }
    model.seed = seed;
    memcpy(model.data, runs[0].data, FUZZ_LEN);
    fuzz_model(&runs[0], &model);
    for (int k = 0; k < 4; k++) {
      assert_int_equal(runs[k].nops, model.nops);
      for (int i = 0; i < model.nops; i++) {
        if (runs[k].rc[i] != model.rc[i] || runs[k].hash[i] != model.hash[i])
          fail_msg("seed %llu split %d op %d: %zd, model %zd", (unsigned long long)seed, k, i,
                   runs[k].rc[i], model.rc[i]);
      }
    }
  }
  assert_int_equal(wt_count_fds(), fds);
}

/* -------------------------------------------------------- stream control */

static void *shutdown_main(void *arg) {
  (void)arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  char buf[64];
  assert_int_equal(weft_stream_write(c, "request", 7), 0);
  assert_int_equal(weft_stream_shutdown(c), 0);
  assert_int_equal(weft_stream_shutdown(c), UV_ENOTCONN);
  assert_int_equal(weft_stream_write(c, "x", 1), UV_EPIPE);
  /* The server reads to the end, then answers: the client still reads. */
  assert_int_equal(weft_stream_read_exactly(s, buf, 7), 7);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), 0);
  assert_int_equal(weft_stream_write(s, "reply", 5), 0);
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_stream_read_exactly(c, buf, 5), 5);
  assert_memory_equal(buf, "reply", 5);
  assert_int_equal(weft_stream_read_exactly(c, buf, 1), WEFT_EOF);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_shutdown(NULL), WEFT_EINVAL);
  return NULL;
}

static void stream_shutdown_half_closes(void **state) {
  (void)state;
  run_closes_fds(shutdown_main, NULL);
}

static int port_of(const struct sockaddr_storage *ss) {
  return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                         : ((const struct sockaddr_in *)ss)->sin_port);
}

static void *addresses_main(void *arg) {
  const char *host = arg;
  weft_stream_t *c, *s;
  pair_on(host, NULL, &c, &s);
  struct sockaddr_storage cl, cp, sl, sp;
  assert_int_equal(weft_stream_local(c, &cl), 0);
  assert_int_equal(weft_stream_peer(c, &cp), 0);
  assert_int_equal(weft_stream_local(s, &sl), 0);
  assert_int_equal(weft_stream_peer(s, &sp), 0);
  int fam = strchr(host, ':') ? AF_INET6 : AF_INET;
  assert_int_equal(cl.ss_family, fam);
  assert_int_equal(sp.ss_family, fam);
  assert_int_equal(port_of(&cl), port_of(&sp));
  assert_int_equal(port_of(&cp), port_of(&sl));
  char txt[64];
  if (fam == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)&sp)->sin_addr, txt, sizeof txt);
  else
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&sp)->sin6_addr, txt, sizeof txt);
  assert_string_equal(txt, host);
  assert_int_equal(weft_stream_peer(c, NULL), WEFT_EINVAL);
  assert_int_equal(weft_stream_peer(NULL, &cp), WEFT_EINVAL);
  /* Options: TCP's on TCP. */
  assert_int_equal(weft_stream_set_nodelay(c, false), 0);
  assert_int_equal(weft_stream_set_nodelay(c, true), 0);
  assert_int_equal(weft_stream_set_keepalive(c, true, 30), 0);
  assert_int_equal(weft_stream_set_keepalive(c, true, 0), WEFT_EINVAL);
  assert_int_equal(weft_stream_set_keepalive(c, false, 0), 0);
  /* The peer gone: its address is no more. */
  assert_int_equal(weft_stream_abort(s), 0);
  char b;
  assert_true(weft_stream_read(c, &b, 1) < 0);
  int rc = weft_stream_peer(c, &cp);
  assert_true(rc == 0 || rc == UV_ENOTCONN);
  assert_int_equal(weft_stream_close(c), 0);
  return NULL;
}

static bool have_ipv6(void) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0)
    return false;
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

static void stream_addresses_and_options(void **state) {
  (void)state;
  run_closes_fds(addresses_main, (void *)HOST);
  if (have_ipv6())
    run_closes_fds(addresses_main, (void *)"::1");
  else
    printf("no ::1 on this machine: the IPv6 round is skipped\n");
}

/* The options, seen on the socket itself: a stream adopted from our own
 * descriptor. */
static void *options_seen_main(void *arg) {
  (void)arg;
  weft_listener_t *l;
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, NULL), 0);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)weft_listener_port(l))};
  inet_pton(AF_INET, HOST, &a.sin_addr);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  weft_stream_t *c, *s;
  assert_int_equal(weft_stream_adopt(&c, fd), 0);
  assert_int_equal(weft_tcp_accept(l, &s), 0);
  int v = 0;
  socklen_t len = sizeof v;
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
  assert_true(v != 0);
  assert_int_equal(weft_stream_set_nodelay(c, false), 0);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
  assert_int_equal(v, 0);
  assert_int_equal(weft_stream_set_keepalive(c, true, 77), 0);
  assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v, &len), 0);
  assert_true(v != 0);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len), 0);
  assert_int_equal(v, 77);
  /* The adopted stream works as any other. */
  char buf[8];
  assert_int_equal(weft_stream_write(c, "hi\n", 3), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), 3);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_listener_close(l), 0);
  return NULL;
}

static void stream_options_on_the_socket(void **state) {
  (void)state;
  run_closes_fds(options_seen_main, NULL);
}

/* The write limit: a peer that does not read; the queue stops at the limit
 * and the writer waits (its deadline cuts it); raising the limit lets it
 * queue more. */
static void *limit_main(void *arg) {
  (void)arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  assert_int_equal(weft_stream_set_write_limit(c, 100), WEFT_EINVAL);
  assert_int_equal(weft_stream_set_write_limit(c, ((size_t)1 << 30) + 1), WEFT_EINVAL);
  assert_int_equal(weft_stream_set_write_limit(NULL, 4096), WEFT_EINVAL);
  assert_int_equal(weft_stream_set_write_limit(c, 64 << 10), 0);
  size_t big = 32 << 20;
  char *data = calloc(1, big);
  assert_non_null(data);
  assert_int_equal(weft_deadline_push(100), 0);
  assert_int_equal(weft_stream_write(c, data, big), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  size_t q = weft_stream_write_queued(c);
  assert_true(q > 0);
  assert_true(q <= 64 << 10);
  assert_int_equal(weft_stream_set_write_limit(c, 1 << 20), 0);
  assert_int_equal(weft_deadline_push(100), 0);
  assert_int_equal(weft_stream_write(c, data, big), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  q = weft_stream_write_queued(c);
  assert_true(q > 64 << 10);
  assert_true(q <= 1 << 20);
  /* Abort drops the queue at once: the peer gets far less than was
   * written, then the end. (The reset itself is seen by a peer with
   * nothing unread, stream_peer_reset_during_frame; one that still had
   * bytes to read may see end of stream instead, as Linux reports it.) */
  assert_int_equal(weft_stream_abort(c), 0);
  ssize_t n;
  size_t got = 0;
  while ((n = weft_stream_read(s, data, big)) > 0)
    got += (size_t)n;
  assert_true(n == UV_ECONNRESET || n == 0);
  assert_true(got < 2 * big);
  assert_int_equal(weft_stream_close(s), 0);
  free(data);
  return NULL;
}

static void stream_write_limit_and_abort(void **state) {
  (void)state;
  run_closes_fds(limit_main, NULL);
}

/* -------------------------------------------------- Unix-domain sockets */

static void *unix_main(void *arg) {
  (void)arg;
  char path[128];
  snprintf(path, sizeof path, "%s", tmp_path("echo.sock"));
  weft_stream_t *c, *s;
  pair_on(NULL, path, &c, &s);
  /* pair_on closed the listener: its file is gone. */
  struct stat st;
  assert_int_equal(stat(path, &st), -1);
  char buf[64];
  assert_int_equal(weft_stream_write(c, "ping\n", 5), 0);
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), 5);
  assert_int_equal(weft_stream_write(s, "pong\n", 5), 0);
  assert_int_equal(weft_stream_read_until(c, buf, sizeof buf, "\n", 1), 5);
  assert_memory_equal(buf, "pong\n", 5);
  struct sockaddr_storage ss;
  assert_int_equal(weft_stream_local(s, &ss), 0);
  assert_int_equal(ss.ss_family, AF_UNIX);
  assert_string_equal(((struct sockaddr_un *)&ss)->sun_path, path);
  assert_int_equal(weft_stream_peer(c, &ss), 0);
  assert_string_equal(((struct sockaddr_un *)&ss)->sun_path, path);
  assert_int_equal(weft_stream_set_nodelay(c, true), UV_ENOTSUP);
  assert_int_equal(weft_stream_set_keepalive(c, true, 5), UV_ENOTSUP);
  /* Half-close and a stream handed to another loop work the same. */
  assert_int_equal(weft_stream_shutdown(c), 0);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), 0);
  assert_int_equal(weft_stream_detach(s), 0);
  assert_int_equal(weft_stream_attach(s), 0);
  assert_int_equal(weft_stream_write(s, "bye", 3), 0);
  assert_int_equal(weft_stream_read_exactly(c, buf, 3), 3);
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_stream_read_exactly(c, buf, 1), WEFT_EOF);
  assert_int_equal(weft_stream_close(c), 0);

  /* Errors. */
  weft_listener_t *l, *l2;
  weft_stream_t *x;
  assert_int_equal(weft_unix_connect(&x, path), UV_ENOENT);
  char lng[200];
  memset(lng, 'a', sizeof lng - 1);
  lng[sizeof lng - 1] = 0;
  assert_int_equal(weft_unix_listen(&l, lng, NULL), UV_ENAMETOOLONG);
  assert_int_equal(weft_unix_connect(&x, lng), UV_ENAMETOOLONG);
  assert_int_equal(weft_unix_listen(&l, "", NULL), WEFT_EINVAL);
  assert_int_equal(weft_unix_listen(NULL, path, NULL), WEFT_EINVAL);
  assert_int_equal(weft_unix_connect(&x, NULL), WEFT_EINVAL);
  weft_listen_opts_t rp = {.mode = WEFT_LISTEN_REUSEPORT};
  assert_int_equal(weft_unix_listen(&l, path, &rp), UV_ENOTSUP);
  assert_int_equal(weft_unix_listen(&l, path, NULL), 0);
  assert_int_equal(weft_listener_port(l), -1);
  assert_int_equal(weft_unix_listen(&l2, path, NULL), UV_EADDRINUSE);
  assert_int_equal(weft_listener_close(l), 0);
  /* A file nobody listens on: refused. */
  char stale[128];
  snprintf(stale, sizeof stale, "%s", tmp_path("stale.sock"));
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  strcpy(sun.sun_path, stale);
  assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
  close(fd);
  assert_int_equal(weft_unix_connect(&x, stale), UV_ECONNREFUSED);
  unlink(stale);
  return NULL;
}

static void unix_listen_connect_errors(void **state) {
  (void)state;
  run_closes_fds(unix_main, NULL);
  tmp_done();
}

/* A connect while the listener's backlog is full retries until its
 * deadline; cancelled, it ends at once. */
static void *unix_full_main(void *arg) {
  (void)arg;
  char path[128];
  snprintf(path, sizeof path, "%s", tmp_path("full.sock"));
  weft_listener_t *l;
  weft_listen_opts_t o = {.backlog = 1};
  assert_int_equal(weft_unix_listen(&l, path, &o), 0);
  weft_stream_t *cs[8];
  int n = 0, rc = 0;
  assert_int_equal(weft_deadline_push(200), 0);
  while (n < 8 && (rc = weft_unix_connect(&cs[n], path)) == 0)
    n++;
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(rc, WEFT_ETIMEDOUT);
  assert_true(n >= 1);
  for (int i = 0; i < n; i++)
    assert_int_equal(weft_stream_close(cs[i]), 0);
  assert_int_equal(weft_listener_close(l), 0);
  return NULL;
}

static void unix_connect_backlog_full_deadline(void **state) {
  (void)state;
  run_closes_fds(unix_full_main, NULL);
  tmp_done();
}

/* The multi-loop modes on a Unix-domain listener: every connection is
 * served, on the pool's loops. */
typedef struct mode_srv {
  weft_listener_t *l;
  atomic_int served;
  atomic_int accept_done;
  atomic_int in_accept;      /* acceptor tasks inside weft_tcp_accept */
} mode_srv_t;

static void *mode_conn(void *arg) {
  weft_stream_t *s = arg;
  char buf[64];
  ssize_t n = weft_stream_read_until(s, buf, sizeof buf, "\n", 1);
  if (n > 0)
    weft_stream_write(s, buf, (size_t)n);
  weft_stream_close(s);
  return NULL;
}

static void *mode_accept(void *arg) {
  mode_srv_t *m = arg;
  weft_stream_t *s;
  for (;;) {
    atomic_fetch_add(&m->in_accept, 1);
    int rc = weft_tcp_accept(m->l, &s);
    atomic_fetch_sub(&m->in_accept, 1);
    if (rc != 0)
      break;
    atomic_fetch_add(&m->served, 1);
    weft_spawn(NULL, mode_conn, s, NULL);
  }
  atomic_fetch_add(&m->accept_done, 1);
  return NULL;
}

static void *mode_client(void *arg) {
  const char *path = arg;
  for (int i = 0; i < 20; i++) {
    weft_stream_t *c;
    assert_int_equal(weft_unix_connect(&c, path), 0);
    char buf[16];
    assert_int_equal(weft_stream_write(c, "x\n", 2), 0);
    assert_int_equal(weft_stream_read_until(c, buf, sizeof buf, "\n", 1), 2);
    assert_int_equal(weft_stream_close(c), 0);
  }
  return NULL;
}

static void unix_modes(void **state) {
  (void)state;
  int fds = wt_count_fds();
  weft_listen_mode_t modes[] = {WEFT_LISTEN_HANDOFF, WEFT_LISTEN_LEAST_LOADED};
  for (int k = 0; k < 2; k++) {
    weft_pool_t *pool = wt_pool_of(2);
    mode_srv_t m = {0};
    char path[128];
    snprintf(path, sizeof path, "%s", tmp_path("mode.sock"));
    weft_listen_opts_t o = {.mode = modes[k], .pool = pool};
    assert_int_equal(weft_unix_listen(&m.l, path, &o), 0);
    for (unsigned i = 0; i < 2; i++)
      assert_int_equal(weft_spawn(weft_pool_loop(pool, i), mode_accept, &m, NULL), 0);
    assert_int_equal(weft_run(mode_client, path, NULL), 0);
    assert_int_equal(atomic_load(&m.served), 20);
    /* The listener may be closed only once no task can still call accept
     * on it (the handle is gone after the close): both acceptors are
     * inside weft_tcp_accept, and parked there, which a stats answer from
     * each loop (given between two steps) makes sure of. */
    assert_true(wt_wait_ge(&m.in_accept, 2, 10000));
    weft_stats_t st;
    for (unsigned i = 0; i < 2; i++)
      assert_int_equal(weft_loop_stats(weft_pool_loop(pool, i), &st), 0);
    assert_int_equal(atomic_load(&m.in_accept), 2);
    assert_int_equal(weft_listener_close(m.l), 0);
    assert_true(wt_wait_ge(&m.accept_done, 2, 10000));
    assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  }
  tmp_done();
  assert_int_equal(wt_count_fds(), fds);
}

/* ------------------------------------------------------------ adopting */

static void *adopt_main(void *arg) {
  (void)arg;
  /* A socket pair: one end a stream, the other plain. */
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  weft_stream_t *s;
  assert_int_equal(weft_stream_adopt(&s, sv[0]), 0);
  assert_int_equal(write(sv[1], "line\n", 5), 5);
  char buf[16];
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), 5);
  assert_int_equal(weft_stream_write(s, "ok", 2), 0);
  assert_int_equal(weft_stream_close(s), 0); /* closes sv[0] */
  assert_int_equal(read(sv[1], buf, sizeof buf), 2);
  assert_int_equal(read(sv[1], buf, sizeof buf), 0);
  close(sv[1]);

  /* Refused, the descriptor stays the caller's. */
  int p[2];
  assert_int_equal(pipe(p), 0);
  assert_int_equal(weft_stream_adopt(&s, p[0]), UV_ENOTSOCK);
  assert_int_equal(weft_stream_adopt(&s, -1), WEFT_EINVAL);
  assert_int_equal(weft_stream_adopt(NULL, p[0]), WEFT_EINVAL);
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  assert_int_equal(weft_stream_adopt(&s, u), WEFT_EINVAL);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  inet_pton(AF_INET, HOST, &a.sin_addr);
  assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(lfd, 8), 0);
  assert_int_equal(weft_stream_adopt(&s, lfd), WEFT_EINVAL);
  assert_int_equal(fcntl(p[0], F_GETFD), 0); /* still open */
  close(p[0]);
  close(p[1]);

  /* A listener from the listening socket. */
  weft_listener_t *l;
  assert_int_equal(weft_listener_adopt(&l, u, NULL), WEFT_EINVAL);
  close(u);
  weft_listen_opts_t rp = {.mode = WEFT_LISTEN_REUSEPORT};
  assert_int_equal(weft_listener_adopt(&l, lfd, &rp), UV_ENOTSUP);
  assert_int_equal(weft_listener_adopt(&l, lfd, NULL), 0);
  int port = weft_listener_port(l);
  assert_true(port > 0);
  acc_arg_t acc = {.l = l};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, accept_one, &acc, &t), 0);
  weft_stream_t *c;
  assert_int_equal(weft_tcp_connect(&c, HOST, port), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(acc.rc, 0);
  assert_int_equal(weft_stream_write(c, "abc", 3), 0);
  assert_int_equal(weft_stream_read_exactly(acc.s, buf, 3), 3);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(acc.s), 0);
  assert_int_equal(weft_listener_close(l), 0);

  /* A Unix-domain listening socket too; its file is the caller's. */
  char path[128];
  snprintf(path, sizeof path, "%s", tmp_path("adopt.sock"));
  int ufd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  strcpy(sun.sun_path, path);
  assert_int_equal(bind(ufd, (struct sockaddr *)&sun, sizeof sun), 0);
  assert_int_equal(listen(ufd, 8), 0);
  assert_int_equal(weft_listener_adopt(&l, ufd, NULL), 0);
  acc = (acc_arg_t){.l = l};
  assert_int_equal(weft_spawn(NULL, accept_one, &acc, &t), 0);
  assert_int_equal(weft_unix_connect(&c, path), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(acc.rc, 0);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(acc.s), 0);
  assert_int_equal(weft_listener_close(l), 0);
  assert_int_equal(unlink(path), 0);
  return NULL;
}

static void stream_adopt_descriptors(void **state) {
  (void)state;
  run_closes_fds(adopt_main, NULL);
  /* Outside a loop: no loop to bind to. */
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  weft_stream_t *s;
  assert_int_equal(weft_stream_adopt(&s, sv[0]), WEFT_ENOTASK);
  close(sv[0]);
  close(sv[1]);
  tmp_done();
}

/* Calls from outside a task, and on another loop's stream. */
static void *wrong_loop_task(void *arg) {
  weft_stream_t *s = arg;
  char buf[4];
  struct sockaddr_storage ss;
  assert_int_equal(weft_stream_read_until(s, buf, 4, "\n", 1), WEFT_EPERM);
  assert_int_equal(weft_stream_read_exactly(s, buf, 1), WEFT_EPERM);
  assert_int_equal(weft_stream_shutdown(s), WEFT_EPERM);
  assert_int_equal(weft_stream_peer(s, &ss), WEFT_EPERM);
  assert_int_equal(weft_stream_set_write_limit(s, 4096), WEFT_EPERM);
  assert_int_equal(weft_stream_abort(s), WEFT_EPERM);
  return NULL;
}

static void *misuse_main(void *arg) {
  weft_pool_t *pool = arg;
  weft_stream_t *c, *s;
  pair(&c, &s);
  weft_task_t *t;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), wrong_loop_task, c, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(s), 0);
  return NULL;
}

static void stream_misuse(void **state) {
  (void)state;
  char buf[4];
  assert_int_equal(weft_stream_read_until(NULL, buf, 4, "\n", 1), WEFT_ENOTASK);
  assert_int_equal(weft_unix_connect(NULL, "/x"), WEFT_ENOTASK);
  weft_pool_t *pool = wt_pool_of(1);
  run_closes_fds(misuse_main, pool);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(stream_framed_basics),
    cmocka_unit_test(stream_framed_longer_than_buffer),
    cmocka_unit_test(stream_framed_cut_consumes_nothing),
    cmocka_unit_test(stream_peer_reset_during_frame),
    cmocka_unit_test(stream_framed_split_fuzz),
    cmocka_unit_test(stream_shutdown_half_closes),
    cmocka_unit_test(stream_addresses_and_options),
    cmocka_unit_test(stream_options_on_the_socket),
    cmocka_unit_test(stream_write_limit_and_abort),
    cmocka_unit_test(unix_listen_connect_errors),
    cmocka_unit_test(unix_connect_backlog_full_deadline),
    cmocka_unit_test(unix_modes),
    cmocka_unit_test(stream_adopt_descriptors),
    cmocka_unit_test(stream_misuse),
  };
  return wt_main(argc, argv, "stream", tests, sizeof tests / sizeof tests[0]);
}
