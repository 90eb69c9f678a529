/* Tests for awaitable TCP over loopback (127.0.0.1 only): listen, accept,
 * connect, read (buffered, partial, end of stream), write (including a
 * write far larger than the socket buffer, which goes through the bounded
 * queue, and small writes staged to the end of the round: coalesced, in
 * order, sent before close and while the writer waits elsewhere), close (a reply written just before close arrives; a reader
 * parked on a closed stream learns it), cancellation and deadlines at each
 * await point (a read whose deadline a late loop sees only after the peer's
 * bytes came still gets them; a silent peer still times out), handing a
 * stream to another loop (bytes read ahead travel with it), the three
 * multi-loop accept modes, a crowd of connections accepted a burst per poll
 * of the loop, running out of file descriptors, misuse, and a loop closed
 * with streams left open.
 *
 * File descriptors are counted before and after the cases that open many,
 * so a socket left open fails the test.
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOST "127.0.0.1"

/* Reads exactly len bytes (or fails the test). */
static void read_exactly(weft_stream_t *s, char *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = weft_stream_read(s, buf + got, len - got);
    if (n <= 0)
      fail_msg("read returned %zd after %zu of %zu bytes", n, got, len);
    got += (size_t)n;
  }
}

/* Runs main as weft_run's main task; it must leave no descriptor open. */
static void run_main_closes_fds(weft_fn main) {
  int fds = wt_count_fds();
  assert_int_equal(weft_run(main, NULL, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* ---------------------------------------------------------- one loop */

typedef struct echo_srv {
  weft_listener_t *l;
  int accepted;
  int accept_rc;   /* what the last accept returned */
  size_t echoed;
} echo_srv_t;

/* Serves one connection: echoes until end of stream. */
static void *echo_conn(void *arg) {
  weft_stream_t *s = arg;
  char buf[4096];
  ssize_t n;
  while ((n = weft_stream_read(s, buf, sizeof buf)) > 0)
    if (weft_stream_write(s, buf, (size_t)n) != 0)
      break;
  weft_stream_close(s);
  return NULL;
}

static void *accept_loop(void *arg) {
  echo_srv_t *e = arg;
  weft_stream_t *s;
  while ((e->accept_rc = weft_tcp_accept(e->l, &s)) == 0) {
    e->accepted++;
    if (weft_spawn(NULL, echo_conn, s, NULL) != 0)
      weft_stream_close(s);
  }
  return NULL;
}

static void *echo_main(void *arg) {
  (void)arg;
  echo_srv_t e = {0};
  assert_int_equal(weft_tcp_listen(&e.l, HOST, 0, NULL), 0);
  int port = weft_listener_port(e.l);
  assert_true(port > 0);
  weft_task_t *acc;
  assert_int_equal(weft_spawn(NULL, accept_loop, &e, &acc), 0);

  for (int c = 0; c < 3; c++) {
    weft_stream_t *s;
    assert_int_equal(weft_tcp_connect(&s, HOST, port), 0);
    assert_ptr_equal(weft_stream_loop(s), weft_loop_current());
    char out[100], in[100];
    for (int i = 0; i < 10; i++) {
      int len = snprintf(out, sizeof out, "message %d of client %d", i, c);
      assert_int_equal(weft_stream_write(s, out, (size_t)len), 0);
      read_exactly(s, in, (size_t)len);
      assert_memory_equal(in, out, (size_t)len);
    }
    assert_int_equal(weft_stream_close(s), 0);
  }
  assert_int_equal(e.accepted, 3);
  assert_int_equal(weft_listener_close(e.l), 0);
  assert_int_equal(weft_await(acc, NULL), 0);
  assert_int_equal(e.accept_rc, WEFT_ECLOSED);
  weft_task_release(acc);
  return NULL;
}

static void tcp_echo_one_loop(void **state) {
  run_main_closes_fds(echo_main);
}

/* Reads see what is buffered, a little at a time; the peer's close is end
 * of stream (0, again and again); a write larger than any socket buffer
 * arrives whole and in order while the writer goes on. */
typedef struct bulk {
  weft_listener_t *l;
  size_t size;
  uint64_t sum;   /* of what the server received */
  size_t got;
} bulk_t;

static void *bulk_server(void *arg) {
  bulk_t *b = arg;
  weft_stream_t *s;
  assert_int_equal(weft_tcp_accept(b->l, &s), 0);
  unsigned char buf[1000];
  ssize_t n;
  /* Small reads out of the read-ahead buffer. */
  while ((n = weft_stream_read(s, buf, 7 + b->got % 900)) > 0) {
    for (ssize_t i = 0; i < n; i++)
      b->sum = b->sum * 31 + buf[i];
    b->got += (size_t)n;
  }
  assert_int_equal(n, 0);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), 0);
  /* A reply written right before close still arrives. */
  assert_int_equal(weft_stream_write(s, "bye", 3), 0);
  assert_int_equal(weft_stream_close(s), 0);
  return NULL;
}

static void *bulk_main(void *arg) {
  (void)arg;
  bulk_t b = {.size = 8 << 20};
  assert_int_equal(weft_tcp_listen(&b.l, HOST, 0, NULL), 0);
  weft_task_t *srv;
  assert_int_equal(weft_spawn(NULL, bulk_server, &b, &srv), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, weft_listener_port(b.l)), 0);
  unsigned char *data = malloc(b.size);
  assert_non_null(data);
  uint64_t sum = 0;
  for (size_t i = 0; i < b.size; i++) {
    data[i] = (unsigned char)(i * 7 + i / 4096);
    sum = sum * 31 + data[i];
  }
  /* One call, 8 MiB: queued a megabyte at a time, the rest waits. */
  assert_int_equal(weft_stream_write(s, data, b.size), 0);
  memset(data, 0, b.size); /* the caller's buffer is its own again */
  assert_int_equal(weft_stream_write(s, "", 0), 0);
  /* Closing right after: the queued megabytes still go out, then end of
   * stream. */
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_await(srv, NULL), 0);
  assert_int_equal(b.got, b.size);
  assert_true(b.sum == sum);
  weft_task_release(srv);
  weft_listener_close(b.l);
  free(data);
  return NULL;
}

static void tcp_bulk_and_end_of_stream(void **state) {
  run_main_closes_fds(bulk_main);
}

/* ------------------------------------------------------ staged writes */

static void *accept_one(void *arg);
static void pair(weft_listener_t **l, weft_stream_t **client, weft_stream_t **server);

static uint64_t stream_writes(void) {
  weft_stats_t st;
  assert_int_equal(weft_loop_stats(weft_loop_current(), &st), 0);
  return st.stream_writes;
}

static void expect_bytes(weft_stream_t *s, const char *want) {
  size_t n = strlen(want);
  char buf[64];
  assert_true(n <= sizeof buf);
  read_exactly(s, buf, n);
  if (memcmp(buf, want, n) != 0)
    fail_msg("read \"%.*s\", want \"%s\"", (int)n, buf, want);
}

/* The small writes of a step wait for the end of the round and go out as
 * one system call a stream; a stream that writes again after another
 * stream staged sends its earlier bytes first; a long write sends what was
 * staged first; close sends what was staged. */
static void *coalesce_main(void *arg) {
  (void)arg;
  weft_listener_t *l1, *l2;
  weft_stream_t *c1, *s1, *c2, *s2;
  pair(&l1, &c1, &s1);
  pair(&l2, &c2, &s2);
  uint64_t w0 = stream_writes();
  assert_int_equal(weft_stream_write(s1, "GET", 3), 0);
  assert_int_equal(weft_stream_write(s1, " / ", 3), 0);
  assert_int_equal(weft_stream_write(s1, "HTTP", 4), 0);
  assert_int_equal(weft_stream_write(s2, "other", 5), 0);
  assert_int_equal(stream_writes() - w0, 0); /* all staged, nothing sent */
  expect_bytes(c1, "GET / HTTP"); /* parks: the round ends, the stage goes */
  expect_bytes(c2, "other");
  assert_int_equal(stream_writes() - w0, 2);

  /* s1, s2, s1: s1's first piece goes at once, to keep its place. */
  assert_int_equal(weft_stream_write(s1, "a", 1), 0);
  assert_int_equal(weft_stream_write(s2, "b", 1), 0);
  assert_int_equal(weft_stream_write(s1, "c", 1), 0);
  assert_int_equal(stream_writes() - w0, 3);
  expect_bytes(c1, "ac");
  expect_bytes(c2, "b");
  assert_int_equal(stream_writes() - w0, 5);

  /* A long write: the staged byte first, then the 5000 at once. */
  static char big[5001];
  memset(big, 'y', sizeof big);
  big[0] = 'x';
  assert_int_equal(weft_stream_write(s1, "x", 1), 0);
  assert_int_equal(weft_stream_write(s1, big + 1, 5000), 0);
  assert_int_equal(stream_writes() - w0, 7);
  char got[5001];
  read_exactly(c1, got, sizeof got);
  assert_memory_equal(got, big, sizeof got);

  /* Close right after a staged write: the bytes, then end of stream. */
  assert_int_equal(weft_stream_write(s1, "bye", 3), 0);
  assert_int_equal(weft_stream_close(s1), 0);
  expect_bytes(c1, "bye");
  assert_int_equal(weft_stream_read(c1, got, sizeof got), 0);
  weft_stream_close(c1);
  weft_stream_close(c2);
  weft_stream_close(s2);
  weft_listener_close(l1);
  weft_listener_close(l2);
  return NULL;
}

static void tcp_writes_coalesce(void **state) {
  (void)state;
  run_main_closes_fds(coalesce_main);
}

/* Staged bytes go out at the end of the writer's round even though it then
 * waits on something else for long. */
static void *write_then_sleep(void *arg) {
  assert_int_equal(weft_stream_write(arg, "ping", 4), 0);
  weft_sleep(60000);
  return NULL;
}

static void *round_end_main(void *arg) {
  (void)arg;
  weft_listener_t *l;
  weft_stream_t *c, *s;
  pair(&l, &c, &s);
  weft_task_t *w;
  assert_int_equal(weft_spawn(NULL, write_then_sleep, s, &w), 0);
  weft_deadline_set(5000);
  expect_bytes(c, "ping");
  weft_task_cancel(w);
  assert_int_equal(weft_await(w, NULL), WEFT_ECANCELED);
  weft_task_release(w);
  weft_stream_close(c);
  weft_stream_close(s);
  weft_listener_close(l);
  return NULL;
}

static void tcp_staged_sent_at_round_end(void **state) {
  (void)state;
  run_main_closes_fds(round_end_main);
}

/* Many streams writing pieces of every size in the same rounds: more than a
 * stage holds, so it also flushes mid-round. Every byte arrives, in order. */
#define MANY_STREAMS 24
#define MANY_PIECES 60

static size_t piece_len(int stream, int i) {
  static const size_t sizes[] = {1, 3000, 4096, 4097, 17, 3999, 9000, 2};
  return sizes[(size_t)(stream + i) % (sizeof sizes / sizeof sizes[0])];
}

static unsigned char piece_byte(int stream, size_t off) {
  return (unsigned char)(stream * 131 + off * 7 + off / 251);
}

typedef struct many {
  weft_stream_t *c[MANY_STREAMS], *s[MANY_STREAMS];
  size_t total[MANY_STREAMS];
} many_t;

typedef struct many_arg {
  many_t *m;
  int i;
} many_arg_t;

static void *many_writer(void *arg) {
  many_arg_t *a = arg;
  unsigned char buf[9000];
  size_t off = 0;
  for (int p = 0; p < MANY_PIECES; p++) {
    size_t n = piece_len(a->i, p);
    for (size_t k = 0; k < n; k++)
      buf[k] = piece_byte(a->i, off + k);
    assert_int_equal(weft_stream_write(a->m->s[a->i], buf, n), 0);
    off += n;
    if (p % 3 == 0)
      weft_yield(); /* a new round: the others' pieces meet this one's */
  }
  assert_int_equal(weft_stream_close(a->m->s[a->i]), 0);
  return NULL;
}

static void *many_reader(void *arg) {
  many_arg_t *a = arg;
  unsigned char buf[5000];
  size_t off = 0;
  ssize_t n;
  while ((n = weft_stream_read(a->m->c[a->i], buf, sizeof buf)) > 0) {
    for (ssize_t k = 0; k < n; k++)
      if (buf[k] != piece_byte(a->i, off + (size_t)k))
        fail_msg("stream %d: byte %zu differs", a->i, off + (size_t)k);
    off += (size_t)n;
  }
  assert_int_equal(n, 0);
  assert_int_equal(off, a->m->total[a->i]);
  weft_stream_close(a->m->c[a->i]);
  return NULL;
}

static void *many_main(void *arg) {
  (void)arg;
  static many_t m;
  static many_arg_t args[MANY_STREAMS];
  weft_listener_t *l[MANY_STREAMS];
  weft_task_t *t[2 * MANY_STREAMS];
  for (int i = 0; i < MANY_STREAMS; i++) {
    pair(&l[i], &m.c[i], &m.s[i]);
    m.total[i] = 0;
    for (int p = 0; p < MANY_PIECES; p++)
      m.total[i] += piece_len(i, p);
    args[i] = (many_arg_t){.m = &m, .i = i};
  }
  for (int i = 0; i < MANY_STREAMS; i++) {
    assert_int_equal(weft_spawn(NULL, many_writer, &args[i], &t[i]), 0);
    assert_int_equal(weft_spawn(NULL, many_reader, &args[i], &t[MANY_STREAMS + i]), 0);
  }
  for (int i = 0; i < 2 * MANY_STREAMS; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  for (int i = 0; i < MANY_STREAMS; i++)
    weft_listener_close(l[i]);
  return NULL;
}

static void tcp_staged_many_streams(void **state) {
  (void)state;
  run_main_closes_fds(many_main);
}

/* ------------------------------------------- cancel, deadline, close */

typedef struct reader {
  weft_stream_t *s;
  ssize_t rc;
  char buf[64];
  atomic_int started;
} reader_t;

static void *read_once(void *arg) {
  reader_t *r = arg;
  atomic_store(&r->started, 1);
  r->rc = weft_stream_read(r->s, r->buf, sizeof r->buf);
  return NULL;
}

static void *deadline_read(void *arg) {
  reader_t *r = arg;
  weft_deadline_set(50);
  r->rc = weft_stream_read(r->s, r->buf, sizeof r->buf);
  return NULL;
}

static void *accept_one(void *arg) {
  weft_listener_t *l = arg;
  weft_stream_t *s = NULL;
  if (weft_tcp_accept(l, &s) != 0)
    return NULL;
  return s;
}

/* A connected pair on the current loop. */
static void pair(weft_listener_t **l, weft_stream_t **client, weft_stream_t **server) {
  assert_int_equal(weft_tcp_listen(l, HOST, 0, NULL), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, accept_one, *l, &t), 0);
  assert_int_equal(weft_tcp_connect(client, HOST, weft_listener_port(*l)), 0);
  assert_int_equal(weft_await(t, (void **)server), 0);
  assert_non_null(*server);
  weft_task_release(t);
}

static void *waits_main(void *arg) {
  (void)arg;
  weft_listener_t *l;
  weft_stream_t *c, *s;
  pair(&l, &c, &s);

  /* A read cut by its deadline takes nothing: what comes later is read. */
  reader_t r = {.s = s};
  weft_task_t *t;
  double t0 = wt_now_ms();
  assert_int_equal(weft_spawn(NULL, deadline_read, &r, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r.rc, WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 >= 45);
  assert_int_equal(weft_stream_write(c, "later", 5), 0);
  char buf[16];
  read_exactly(s, buf, 5);
  assert_memory_equal(buf, "later", 5);

  /* A cancelled read likewise. */
  memset(&r, 0, sizeof r);
  r.s = s;
  assert_int_equal(weft_spawn(NULL, read_once, &r, &t), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(r.rc, WEFT_ECANCELED);
  assert_int_equal(weft_stream_write(c, "again", 5), 0);
  read_exactly(s, buf, 5);
  assert_memory_equal(buf, "again", 5);

  /* Two readers at once: the second is refused. */
  memset(&r, 0, sizeof r);
  r.s = s;
  assert_int_equal(weft_spawn(NULL, read_once, &r, &t), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_stream_read(s, buf, sizeof buf), WEFT_EBUSY);
  /* Closing the stream wakes the parked reader with ECLOSED. */
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r.rc, WEFT_ECLOSED);
  /* The peer sees end of stream. */
  assert_int_equal(weft_stream_read(c, buf, sizeof buf), 0);
  assert_int_equal(weft_stream_close(c), 0);

  /* A cancelled accept: nothing left behind. */
  assert_int_equal(weft_spawn(NULL, accept_one, l, &t), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  void *res = (void *)1;
  assert_int_equal(weft_await(t, &res), WEFT_ECANCELED);
  assert_null(res);
  weft_task_release(t);

  assert_int_equal(weft_listener_close(l), 0);
  assert_int_equal(weft_listener_close(l), WEFT_ECLOSED);
  return NULL;
}

static void tcp_cancel_deadline_close(void **state) {
  run_main_closes_fds(waits_main);
}

typedef struct conn_try {
  int port;
  int rc;
  weft_stream_t *s;
} conn_try_t;

static void *connect_task(void *arg) {
  conn_try_t *c = arg;
  c->rc = weft_tcp_connect(&c->s, HOST, c->port);
  return NULL;
}

static void *connect_main(void *arg) {
  (void)arg;
  /* A port nobody listens on: refused. */
  weft_listener_t *l;
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, NULL), 0);
  int port = weft_listener_port(l);
  assert_int_equal(weft_listener_close(l), 0);
  weft_stream_t *s = (weft_stream_t *)1;
  assert_int_equal(weft_tcp_connect(&s, HOST, port), UV_ECONNREFUSED);
  assert_null(s);

  /* Cancelled while the connect is under way (parked, its callback not yet
   * run): ECANCELED, and the socket goes away. */
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, NULL), 0);
  int cut = 0;
  for (int i = 0; i < 20; i++) {
    conn_try_t c = {.port = weft_listener_port(l), .rc = 1};
    weft_task_t *t;
    assert_int_equal(weft_spawn(NULL, connect_task, &c, &t), 0);
    assert_int_equal(weft_yield(), 0); /* it runs, and parks in connect */
    assert_int_equal(weft_task_cancel(t), 0);
    assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
    weft_task_release(t);
    if (c.rc == 0)
      weft_stream_close(c.s); /* it had connected before the cancel */
    else
      assert_int_equal(c.rc, WEFT_ECANCELED);
    cut += c.rc == WEFT_ECANCELED;
  }
  assert_true(cut > 0);
  assert_int_equal(weft_listener_close(l), 0);
  return NULL;
}

static void tcp_connect_refused_and_cancelled(void **state) {
  int fds = wt_count_fds();
  assert_int_equal(weft_run(connect_main, NULL, NULL), 0);
  /* Sockets of abandoned connects close with their handles. */
  assert_int_equal(wt_count_fds(), fds);
}

/* ------------------------------------------------- handing to a loop */

typedef struct handoff {
  weft_listener_t *l;
  weft_chan_t *ch;
  weft_loop_t *second;
  int rc_first, rc_second;
} handoff_t;

static void *first_half(void *arg) {
  handoff_t *h = arg;
  weft_stream_t *s;
  char buf[5];
  if ((h->rc_first = weft_tcp_accept(h->l, &s)) != 0)
    return NULL;
  /* "hello world" arrived; take "hello", the rest stays read ahead. */
  read_exactly(s, buf, 5);
  assert_memory_equal(buf, "hello", 5);
  if ((h->rc_first = weft_stream_detach(s)) != 0)
    return NULL;
  assert_null(weft_stream_loop(s));
  assert_int_equal(weft_stream_read(s, buf, 1), WEFT_EPERM);
  h->rc_first = weft_chan_send(h->ch, s);
  return NULL;
}

static void *second_half(void *arg) {
  handoff_t *h = arg;
  void *msg;
  if ((h->rc_second = weft_chan_recv(h->ch, &msg)) != 0)
    return NULL;
  weft_stream_t *s = msg;
  if ((h->rc_second = weft_stream_attach(s)) != 0)
    return NULL;
  assert_ptr_equal(weft_stream_loop(s), weft_loop_current());
  char buf[6];
  read_exactly(s, buf, 6);
  assert_memory_equal(buf, " world", 6);
  h->rc_second = weft_stream_write(s, "moved", 5);
  weft_stream_close(s);
  return NULL;
}

/* A reader that comes while detach waits for the write queue: detach
 * refuses (the stream stays bound, the reader is not left parked on a
 * stream that leaves its loop). */
typedef struct flushing {
  weft_stream_t *s;
  ssize_t rc;
} flushing_t;

static void *late_reader(void *arg) {
  flushing_t *f = arg;
  char b;
  f->rc = weft_stream_read(f->s, &b, 1);
  return NULL;
}

static void *drain_all(void *arg) {
  flushing_t *f = arg;
  static char buf[65536];
  size_t got = 0;
  ssize_t n;
  while (got < (4u << 20) && (n = weft_stream_read(f->s, buf, sizeof buf)) > 0)
    got += (size_t)n;
  f->rc = (ssize_t)got;
  return NULL;
}

static void *detach_busy_main(void *arg) {
  (void)arg;
  weft_listener_t *l;
  weft_stream_t *c, *srv;
  pair(&l, &c, &srv);
  char *big = calloc(1, 4u << 20);
  assert_int_equal(weft_stream_write(srv, big, 4u << 20), 0); /* mostly queued */
  free(big);
  flushing_t rd = {.s = srv, .rc = 1}, dr = {.s = c};
  weft_task_t *tr, *td;
  assert_int_equal(weft_spawn(NULL, late_reader, &rd, &tr), 0);
  assert_int_equal(weft_spawn(NULL, drain_all, &dr, &td), 0);
  assert_int_equal(weft_stream_detach(srv), WEFT_EBUSY);
  assert_ptr_equal(weft_stream_loop(srv), weft_loop_current());
  assert_int_equal(weft_await(td, NULL), 0);
  assert_int_equal(dr.rc, 4u << 20);
  /* The reader is still a proper reader of a bound stream. */
  assert_int_equal(weft_stream_write(c, "z", 1), 0);
  assert_int_equal(weft_await(tr, NULL), 0);
  assert_int_equal(rd.rc, 1);
  weft_task_release(tr);
  weft_task_release(td);
  weft_stream_close(c);
  weft_stream_close(srv);
  weft_listener_close(l);
  return NULL;
}

static void tcp_detach_refused_when_busy(void **state) {
  run_main_closes_fds(detach_busy_main);
}

static void tcp_stream_changes_loop(void **state) {
  int fds = wt_count_fds();
  weft_pool_t *pool = wt_pool_of(2);
  handoff_t h = {0};
  h.rc_first = h.rc_second = 1;
  assert_int_equal(weft_chan_new(&h.ch, 1), 0);
  assert_int_equal(weft_tcp_listen(&h.l, HOST, 0, NULL), 0);
  weft_task_t *t[2];
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), first_half, &h, &t[0]), 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), second_half, &h, &t[1]), 0);

  /* The client is a plain blocking socket on this thread. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_storage ss;
  uv_ip4_addr(HOST, weft_listener_port(h.l), (struct sockaddr_in *)&ss);
  assert_int_equal(connect(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
  assert_int_equal(write(fd, "hello world", 11), 11);
  char buf[8];
  size_t got = 0;
  while (got < 5) {
    ssize_t n = read(fd, buf + got, 5 - got);
    assert_true(n > 0);
    got += (size_t)n;
  }
  assert_memory_equal(buf, "moved", 5);
  assert_int_equal(read(fd, buf, 1), 0);
  close(fd);
  assert_int_equal(weft_gather(t, 2, NULL, NULL), 0);
  assert_int_equal(h.rc_first, 0);
  assert_int_equal(h.rc_second, 0);
  weft_task_release(t[0]);
  weft_task_release(t[1]);
  weft_listener_close(h.l);
  weft_chan_release(h.ch);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* --------------------------------------------------- accept modes */

#define MODE_LOOPS 3
#define MODE_CONNS 60

typedef struct mode_srv {
  weft_listener_t *l;
  atomic_int per_loop[MODE_LOOPS];    /* connections accepted */
  atomic_int closed[MODE_LOOPS];      /* ... and closed again */
  int rc[MODE_LOOPS];
} mode_srv_t;

typedef struct mode_conn {
  mode_srv_t *m;
  weft_stream_t *s;
  unsigned index;
} mode_conn_t;

/* Answers each byte with its loop's index, until end of stream. */
static void *mode_conn(void *arg) {
  mode_conn_t *c = arg;
  char b, reply = (char)('0' + c->index);
  while (weft_stream_read(c->s, &b, 1) == 1)
    weft_stream_write(c->s, &reply, 1);
  weft_stream_close(c->s);
  atomic_fetch_add(&c->m->closed[c->index], 1);
  free(c);
  return NULL;
}

typedef struct mode_acceptor {
  mode_srv_t *m;
  unsigned index;
} mode_acceptor_t;

static void *mode_accept(void *arg) {
  mode_acceptor_t *a = arg;
  weft_stream_t *s;
  int rc;
  while ((rc = weft_tcp_accept(a->m->l, &s)) == 0) {
    atomic_fetch_add(&a->m->per_loop[a->index], 1);
    mode_conn_t *c = malloc(sizeof *c);
    *c = (mode_conn_t){.m = a->m, .s = s, .index = a->index};
    weft_spawn(NULL, mode_conn, c, NULL);
  }
  a->m->rc[a->index] = rc;
  return NULL;
}

/* A plain blocking client: connects, and returns the index of the loop
 * that answered. */
static int mode_client(int port, int *fd) {
  struct sockaddr_storage ss;
  uv_ip4_addr(HOST, port, (struct sockaddr_in *)&ss);
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_int_equal(connect(*fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
  char b = 'x', r = 0;
  assert_int_equal(write(*fd, &b, 1), 1);
  assert_int_equal(read(*fd, &r, 1), 1);
  assert_true(r >= '0' && r < '0' + MODE_LOOPS);
  return r - '0';
}

static void run_mode(weft_listen_mode_t mode) {
  int fds = wt_count_fds();
  weft_pool_t *pool = wt_pool_of(MODE_LOOPS);
  mode_srv_t m;
  memset(&m, 0, sizeof m);
  weft_listen_opts_t o = {.mode = mode, .pool = pool};
  assert_int_equal(weft_tcp_listen(&m.l, HOST, 0, &o), 0);
  int port = weft_listener_port(m.l);
  mode_acceptor_t acc[MODE_LOOPS];
  weft_task_t *t[MODE_LOOPS];
  for (unsigned i = 0; i < MODE_LOOPS; i++) {
    acc[i] = (mode_acceptor_t){.m = &m, .index = i};
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), mode_accept, &acc[i], &t[i]), 0);
  }
  /* Clients held open until the end, each checked with a round trip. */
  static int cfd[MODE_CONNS + 10], where[MODE_CONNS + 10];
  int on[MODE_LOOPS] = {0};
  for (int i = 0; i < MODE_CONNS; i++)
    on[where[i] = mode_client(port, &cfd[i])]++;
  int total = 0;
  for (unsigned i = 0; i < MODE_LOOPS; i++) {
    total += atomic_load(&m.per_loop[i]);
    if (mode == WEFT_LISTEN_HANDOFF || mode == WEFT_LISTEN_LEAST_LOADED)
      assert_int_equal(on[i], MODE_CONNS / MODE_LOOPS); /* even */
  }
  assert_int_equal(total, MODE_CONNS);
  int nclients = MODE_CONNS;
  if (mode == WEFT_LISTEN_LEAST_LOADED) {
    /* Ten of loop 1's clients leave: the next ten all go to loop 1. */
    int left = 0;
    for (int i = 0; i < MODE_CONNS && left < 10; i++)
      if (where[i] == 1 && cfd[i] >= 0) {
        close(cfd[i]);
        cfd[i] = -1;
        left++;
      }
    assert_true(wt_wait_ge(&m.closed[1], 10, 5000));
    for (int i = 0; i < 10; i++)
      assert_int_equal(mode_client(port, &cfd[nclients++]), 1);
  }
  for (int i = 0; i < nclients; i++)
    if (cfd[i] >= 0)
      close(cfd[i]);
  assert_int_equal(weft_listener_close(m.l), 0);
  assert_int_equal(weft_gather(t, MODE_LOOPS, NULL, NULL), 0);
  for (unsigned i = 0; i < MODE_LOOPS; i++) {
    assert_int_equal(m.rc[i], WEFT_ECLOSED);
    weft_task_release(t[i]);
  }
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  assert_int_equal(wt_count_fds(), fds);
}

static void tcp_mode_reuseport(void **state) {
  run_mode(WEFT_LISTEN_REUSEPORT);
}

static void tcp_mode_handoff(void **state) {
  run_mode(WEFT_LISTEN_HANDOFF);
}

static void tcp_mode_least_loaded(void **state) {
  run_mode(WEFT_LISTEN_LEAST_LOADED);
}

/* -------------------------------------------- out of file descriptors */

/* The server process is limited to a few descriptors more than it uses;
 * a child process connects more clients than fit. While accept fails with
 * EMFILE the server must not spin (its CPU time over a second stays far
 * below a second), and once the first connections close, the waiting ones
 * are accepted. */
typedef struct emfile_srv {
  weft_listener_t *l;
  atomic_int accepted;
  atomic_int release;       /* close the connections held so far */
  weft_stream_t *held[64];
  int nheld;
} emfile_srv_t;

static void *emfile_accept(void *arg) {
  emfile_srv_t *e = arg;
  weft_stream_t *s;
  while (weft_tcp_accept(e->l, &s) == 0) {
    e->held[e->nheld++] = s;
    atomic_fetch_add(&e->accepted, 1);
    if (e->nheld == 64)
      break;
  }
  return NULL;
}

static void *emfile_releaser(void *arg) {
  emfile_srv_t *e = arg;
  while (!atomic_load(&e->release))
    weft_sleep(5);
  for (int i = 0; i < e->nheld; i++)
    weft_stream_close(e->held[i]);
  e->nheld = 0;
  return NULL;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

#define EMFILE_CLIENTS 12

static void tcp_out_of_fds(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  emfile_srv_t e;
  memset(&e, 0, sizeof e);
  assert_int_equal(weft_tcp_listen(&e.l, HOST, 0, NULL), 0);
  int port = weft_listener_port(e.l);

  pid_t child = fork();
  assert_true(child >= 0);
  if (child == 0) {
    /* The clients: connect (the kernel completes the handshake whether or
     * not the server has accepted), then wait to be killed. */
    struct sockaddr_storage ss;
    uv_ip4_addr(HOST, port, (struct sockaddr_in *)&ss);
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) != 0)
        _exit(2);
    }
    pause();
    _exit(0);
  }

  /* Room for 4 more descriptors than are open now. */
  struct rlimit old, lim;
  getrlimit(RLIMIT_NOFILE, &old);
  lim = old;
  lim.rlim_cur = (rlim_t)wt_count_fds() + 4;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);

  weft_task_t *acc, *rel;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), emfile_accept, &e, &acc), 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), emfile_releaser, &e, &rel), 0);
  /* It accepts what fits, then stalls on EMFILE. */
  assert_true(wt_wait_ge(&e.accepted, 3, 5000));
  uv_sleep(200);
  int stalled_at = atomic_load(&e.accepted);
  assert_true(stalled_at < EMFILE_CLIENTS);
  double cpu0 = cpu_seconds();
  uv_sleep(1000);
  double spent = cpu_seconds() - cpu0;
  assert_int_equal(atomic_load(&e.accepted), stalled_at);
  if (spent > 0.3)
    fail_msg("%.2f s of CPU in one second of EMFILE: accept spins", spent);
  /* Descriptors free up: the rest are accepted. */
  atomic_store(&e.release, 1);
  assert_int_equal(weft_await(rel, NULL), 0);
  setrlimit(RLIMIT_NOFILE, &old);
  assert_true(wt_wait_ge(&e.accepted, EMFILE_CLIENTS, 5000));

  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  weft_listener_close(e.l);
  weft_await(acc, NULL);
  weft_task_release(acc);
  weft_task_release(rel);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------- a loop that is late */

/* Holds the loop's thread for ms, as a step that computes does. */
static void compute_ms(double ms) {
  double until = wt_now_ms() + ms;
  while (wt_now_ms() < until)
    ;
}

/* A read's deadline measures how long the peer was silent, not how late the
 * loop is. Here the reader parks under a 50 ms deadline, the peer's bytes
 * reach the socket at once, and then a step computes for 200 ms: the loop
 * finds the deadline due and the bytes readable in the same poll (libuv runs
 * due timers before it polls for I/O). The read returns the bytes, and the
 * next one the peer's close, rather than WEFT_ETIMEDOUT. */
static void *late_loop_main(void *arg) {
  (void)arg;
  weft_listener_t *l;
  weft_stream_t *c, *s;
  pair(&l, &c, &s);
  /* Longer than a staged write, so it goes to the socket at once. */
  static char big[8192];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (char)('a' + i % 26);

  reader_t r = {.s = s};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, deadline_read, &r, &t), 0);
  assert_int_equal(weft_yield(), 0); /* it runs first, and parks in the read */
  assert_int_equal(weft_stream_write(c, big, sizeof big), 0);
  compute_ms(200);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r.rc, (ssize_t)sizeof r.buf);
  assert_memory_equal(r.buf, big, sizeof r.buf);
  /* The rest follows in order. */
  static char rest[sizeof big];
  read_exactly(s, rest, sizeof big - sizeof r.buf);
  assert_memory_equal(rest, big + sizeof r.buf, sizeof big - sizeof r.buf);

  memset(&r, 0, sizeof r);
  r.s = s;
  r.rc = 1;
  assert_int_equal(weft_spawn(NULL, deadline_read, &r, &t), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_stream_close(c), 0);
  compute_ms(200);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r.rc, 0);

  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_listener_close(l), 0);
  return NULL;
}

static void tcp_late_loop_reads_waiting_bytes(void **state) {
  run_main_closes_fds(late_loop_main);
}

/* A connection that stayed silent still times out when the loop is late:
 * nothing is read, and what the peer sends afterwards is read next. */
static void *late_idle_main(void *arg) {
  (void)arg;
  weft_listener_t *l;
  weft_stream_t *c, *s;
  pair(&l, &c, &s);
  reader_t r = {.s = s};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, deadline_read, &r, &t), 0);
  assert_int_equal(weft_yield(), 0);
  compute_ms(200);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r.rc, WEFT_ETIMEDOUT);
  assert_int_equal(weft_stream_write(c, "later", 5), 0);
  char buf[5];
  read_exactly(s, buf, 5);
  assert_memory_equal(buf, "later", 5);
  assert_int_equal(weft_stream_close(c), 0);
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_listener_close(l), 0);
  return NULL;
}

static void tcp_late_loop_idle_times_out(void **state) {
  run_main_closes_fds(late_idle_main);
}

/* ------------------------------------------------ accepting in bursts */

/* A loop's accepts hand out at most a burst of connections between two of
 * its polls: a task per connection started all at once would hold every
 * other connection of the loop (and the new ones' own first reads) for as
 * long as those tasks take to start. Checked where the connections piled up
 * while the loop was held, in each mode, and where they come one by one
 * through a channel to a loop kept busy by a task that yields in a loop (a
 * loop with tasks ready skips polls). BURST_MOST is lib/tcp.c's
 * ACCEPT_BURST. */
#define BURST_CLIENTS 300
#define BURST_MOST 16

typedef struct burst {
  weft_listener_t *l;
  atomic_int hold;          /* the accepting loop is held while set */
  atomic_int held;
  atomic_int accepted;      /* by loop 1 */
  atomic_int other;         /* by loop 0 */
  atomic_int spin;          /* loop 1's busy task goes on while set */
  uv_prepare_t prep;
  unsigned polls;           /* libuv iterations of loop 1 */
  unsigned span_polls;      /* polls at the start of the current span */
  int span, most;           /* accepted in the span; most in one span */
  weft_stream_t *streams[2][BURST_CLIENTS];
} burst_t;

static void burst_count_poll(uv_prepare_t *h) {
  ((burst_t *)h->data)->polls++;
}

/* On pool loop 1: holds the loop while the connections pile up, then
 * accepts until the listener closes, counting how many it gets between two
 * polls. */
static void *burst_accept(void *arg) {
  burst_t *b = arg;
  assert_int_equal(uv_prepare_init(weft_loop_uv(weft_loop_current()), &b->prep), 0);
  b->prep.data = b;
  assert_int_equal(uv_prepare_start(&b->prep, burst_count_poll), 0);
  atomic_store(&b->held, 1);
  while (atomic_load(&b->hold))
    uv_sleep(1);
  weft_stream_t *s;
  int n = 0;
  while (n < BURST_CLIENTS && weft_tcp_accept(b->l, &s) == 0) {
    if (b->polls != b->span_polls) {
      b->span_polls = b->polls;
      b->span = 0;
    }
    if (++b->span > b->most)
      b->most = b->span;
    b->streams[1][n++] = s;
    atomic_store(&b->accepted, n);
  }
  uv_close((uv_handle_t *)&b->prep, NULL);
  for (int i = 0; i < n; i++)
    weft_stream_close(b->streams[1][i]);
  weft_sleep(5); /* libuv finishes closing the prepare handle */
  return NULL;
}

/* On pool loop 1, busy: steps of 2 ms, yielding in between. */
static void *burst_spin(void *arg) {
  burst_t *b = arg;
  while (atomic_load(&b->spin)) {
    compute_ms(2);
    weft_yield();
  }
  return NULL;
}

/* On pool loop 0: takes its share and keeps it open (so LEAST_LOADED keeps
 * sending loop 1 its half). */
static void *burst_other(void *arg) {
  burst_t *b = arg;
  weft_stream_t *s;
  int n = 0;
  while (n < BURST_CLIENTS && weft_tcp_accept(b->l, &s) == 0) {
    b->streams[0][n++] = s;
    atomic_store(&b->other, n);
  }
  for (int i = 0; i < n; i++)
    weft_stream_close(b->streams[0][i]);
  return NULL;
}

/* busy: loop 1 is not held but kept busy while the connections come. */
static void accept_burst_case(weft_listen_mode_t mode, bool busy) {
  FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
  int somaxconn = 0;
  if (f) {
    if (fscanf(f, "%d", &somaxconn) != 1)
      somaxconn = 0;
    fclose(f);
  }
  if (somaxconn < BURST_CLIENTS) {
    print_message("net.core.somaxconn %d holds fewer than %d connections\n", somaxconn,
                  BURST_CLIENTS);
    skip();
  }
  int fds = wt_count_fds();
  weft_pool_t *pool = wt_pool_of(2);
  static burst_t b;
  memset(&b, 0, sizeof b);
  atomic_store(&b.hold, !busy);
  atomic_store(&b.spin, busy);
  weft_listen_opts_t opts = {.mode = mode, .pool = pool, .backlog = BURST_CLIENTS + 16,
                             .queue = BURST_CLIENTS};
  assert_int_equal(weft_tcp_listen(&b.l, HOST, 0, &opts), 0);
  bool dispatched = mode == WEFT_LISTEN_HANDOFF || mode == WEFT_LISTEN_LEAST_LOADED;
  weft_task_t *t[2] = {NULL, NULL}, *spinner = NULL;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), burst_accept, &b, &t[1]), 0);
  if (busy)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), burst_spin, &b, &spinner), 0);
  if (mode != WEFT_LISTEN_SINGLE) /* SINGLE: loop 1 alone accepts */
    assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), burst_other, &b, &t[0]), 0);
  assert_true(wt_wait_ge(&b.held, 1, 5000));

  /* Plain blocking clients: the kernel completes each handshake whether or
   * not the server has accepted. */
  static int client[BURST_CLIENTS];
  struct sockaddr_storage ss;
  uv_ip4_addr(HOST, weft_listener_port(b.l), (struct sockaddr_in *)&ss);
  for (int i = 0; i < BURST_CLIENTS; i++) {
    client[i] = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(client[i] >= 0);
    assert_int_equal(connect(client[i], (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
    if (busy)
      uv_sleep(1); /* one by one, so loop 1 often finds its channel empty */
  }
  /* Handed over: loop 0 took its half once loop 1's half waits for it.
   * REUSEPORT: loop 1's share waits in its own socket's queue already. */
  if (dispatched && !busy)
    assert_true(wt_wait_ge(&b.other, BURST_CLIENTS / 2, 10000));
  atomic_store(&b.hold, 0);
  double until = wt_now_ms() + 20000;
  while (atomic_load(&b.accepted) + atomic_load(&b.other) < BURST_CLIENTS && wt_now_ms() < until)
    uv_sleep(1);
  int accepted = atomic_load(&b.accepted);
  assert_int_equal(accepted + atomic_load(&b.other), BURST_CLIENTS);
  atomic_store(&b.spin, 0);
  if (spinner) {
    assert_int_equal(weft_await(spinner, NULL), 0);
    weft_task_release(spinner);
  }
  assert_int_equal(weft_listener_close(b.l), 0);
  for (int i = 0; i < 2; i++) {
    if (t[i]) {
      assert_int_equal(weft_await(t[i], NULL), 0);
      weft_task_release(t[i]);
    }
  }
  print_message("loop 1 accepted %d, at most %d between two polls\n", accepted, b.most);
  if (mode != WEFT_LISTEN_REUSEPORT) /* there the kernel's hash decides */
    assert_true(accepted > BURST_MOST);
  assert_true(b.most > 0 && b.most <= BURST_MOST);
  for (int i = 0; i < BURST_CLIENTS; i++)
    close(client[i]);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  assert_int_equal(wt_count_fds(), fds);
}

static void tcp_accept_bursts_single(void **state) {
  accept_burst_case(WEFT_LISTEN_SINGLE, false);
}

static void tcp_accept_bursts_reuseport(void **state) {
  accept_burst_case(WEFT_LISTEN_REUSEPORT, false);
}

static void tcp_accept_bursts_handoff(void **state) {
  accept_burst_case(WEFT_LISTEN_HANDOFF, false);
}

static void tcp_accept_bursts_least_loaded(void **state) {
  accept_burst_case(WEFT_LISTEN_LEAST_LOADED, false);
}

static void tcp_accept_bursts_handoff_busy(void **state) {
  accept_burst_case(WEFT_LISTEN_HANDOFF, true);
}

/* ---------------------------------------------------------- misuse */

static void *misuse_main(void *arg) {
  (void)arg;
  weft_listener_t *l = NULL;
  weft_stream_t *s = NULL;
  assert_int_equal(weft_tcp_listen(NULL, HOST, 0, NULL), WEFT_EINVAL);
  assert_int_equal(weft_tcp_listen(&l, "not an address", 0, NULL), WEFT_EINVAL);
  assert_int_equal(weft_tcp_listen(&l, HOST, 70000, NULL), WEFT_EINVAL);
  assert_int_equal(weft_tcp_listen(&l, HOST, -1, NULL), WEFT_EINVAL);
  weft_listen_opts_t o = {.mode = WEFT_LISTEN_HANDOFF};
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, &o), WEFT_EINVAL);
  o.mode = (weft_listen_mode_t)42;
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, &o), WEFT_EINVAL);
  assert_null(l);
  assert_int_equal(weft_tcp_connect(&s, "no where", 80), WEFT_EINVAL);
  assert_int_equal(weft_tcp_connect(NULL, HOST, 80), WEFT_EINVAL);
  assert_int_equal(weft_tcp_accept(NULL, &s), WEFT_EINVAL);
  assert_int_equal(weft_stream_read(NULL, &s, 1), WEFT_EINVAL);
  assert_int_equal(weft_stream_write(NULL, "", 0), WEFT_EINVAL);
  assert_int_equal(weft_stream_close(NULL), WEFT_EINVAL);
  assert_int_equal(weft_stream_attach(NULL), WEFT_EINVAL);
  assert_int_equal(weft_listener_close(NULL), WEFT_EINVAL);
  assert_int_equal(weft_listener_port(NULL), -1);
  assert_null(weft_stream_loop(NULL));

  /* The same port twice. */
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, NULL), 0);
  weft_listener_t *l2 = NULL;
  assert_int_equal(weft_tcp_listen(&l2, HOST, weft_listener_port(l), NULL), UV_EADDRINUSE);

  weft_stream_t *c, *srv;
  weft_listener_close(l);
  pair(&l, &c, &srv);
  char b;
  assert_int_equal(weft_stream_read(c, &b, 0), WEFT_EINVAL);
  assert_int_equal(weft_stream_attach(c), WEFT_EINVAL); /* not detached */
  /* The peer went away: writes fail (UV_EPIPE or UV_ECONNRESET), not
   * SIGPIPE. */
  assert_int_equal(weft_stream_close(srv), 0);
  assert_int_equal(weft_stream_read(c, &b, 1), 0);
  int rc = 0;
  for (int i = 0; i < 100 && rc == 0; i++) {
    rc = weft_stream_write(c, "data", 4);
    if (rc == 0)
      weft_sleep(1);
  }
  assert_true(rc == UV_EPIPE || rc == UV_ECONNRESET);
  assert_int_equal(weft_stream_write(c, "data", 4), rc); /* sticky */
  assert_int_equal(weft_stream_close(c), rc);
  weft_listener_close(l);
  return NULL;
}

static void tcp_misuse(void **state) {
  run_main_closes_fds(misuse_main);
  /* Await points outside a task. */
  weft_stream_t *s;
  weft_listener_t *l;
  assert_int_equal(weft_tcp_listen(&l, HOST, 0, NULL), 0);
  assert_int_equal(weft_tcp_accept(l, &s), WEFT_ENOTASK);
  assert_int_equal(weft_tcp_connect(&s, HOST, 1), WEFT_ENOTASK);
  assert_int_equal(weft_listener_close(l), 0);
}

/* A stream on another loop is refused; a single listener accepts on one
 * loop only. */
typedef struct wrong_loop {
  weft_stream_t *s;
  weft_listener_t *l;
  int read_rc, write_rc, close_rc, accept_rc;
} wrong_loop_t;

static void *wrong_loop_task(void *arg) {
  wrong_loop_t *w = arg;
  char b;
  weft_stream_t *s;
  w->read_rc = (int)weft_stream_read(w->s, &b, 1);
  w->write_rc = weft_stream_write(w->s, "x", 1);
  w->close_rc = weft_stream_close(w->s);
  w->accept_rc = weft_tcp_accept(w->l, &s);
  return NULL;
}

static void *wrong_loop_main(void *arg) {
  weft_pool_t *pool = arg;
  weft_listener_t *l;
  weft_stream_t *c, *srv;
  pair(&l, &c, &srv);
  wrong_loop_t w = {.s = c, .l = l};
  weft_task_t *t;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), wrong_loop_task, &w, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(w.read_rc, WEFT_EPERM);
  assert_int_equal(w.write_rc, WEFT_EPERM);
  assert_int_equal(w.close_rc, WEFT_EPERM);
  assert_int_equal(w.accept_rc, WEFT_EINVAL);
  weft_stream_close(c);
  weft_stream_close(srv);
  weft_listener_close(l);
  return NULL;
}

static void tcp_wrong_loop(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  assert_int_equal(weft_run(wrong_loop_main, pool, NULL), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A loop closed with streams still open (a task that never closed its
 * own, and one parked in read): the tasks are cancelled, the streams
 * closed and freed (the ASan build sees a leak otherwise), no fd left. */
static void *leaky(void *arg) {
  weft_stream_t **keep = arg;
  weft_listener_t *l;
  weft_stream_t *c, *srv;
  pair(&l, &c, &srv);
  weft_listener_close(l);
  keep[0] = c;
  char b;
  weft_stream_read(srv, &b, 1); /* cancelled by the close */
  return NULL;
}

static void tcp_loop_close_frees_streams(void **state) {
  int fds = wt_count_fds();
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  weft_stream_t *keep[1] = {NULL};
  weft_task_t *t;
  assert_int_equal(weft_spawn(loop, leaky, keep, &t), 0);
  assert_int_equal(weft_loop_set_current(loop), 0);
  for (int i = 0; i < 50 && !keep[0]; i++) {
    weft_task_t *tick;
    assert_int_equal(weft_spawn(loop, wt_echo_task, NULL, &tick), 0);
    weft_loop_run_until_complete(loop, tick, NULL);
    weft_task_release(tick);
  }
  assert_non_null(keep[0]);
  assert_int_equal(weft_loop_close(loop), 0);
  assert_int_equal(weft_task_status(t), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(wt_count_fds(), fds);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(tcp_echo_one_loop),
    cmocka_unit_test(tcp_bulk_and_end_of_stream),
    cmocka_unit_test(tcp_writes_coalesce),
    cmocka_unit_test(tcp_staged_sent_at_round_end),
    cmocka_unit_test(tcp_staged_many_streams),
    cmocka_unit_test(tcp_cancel_deadline_close),
    cmocka_unit_test(tcp_connect_refused_and_cancelled),
    cmocka_unit_test(tcp_stream_changes_loop),
    cmocka_unit_test(tcp_detach_refused_when_busy),
    cmocka_unit_test(tcp_mode_reuseport),
    cmocka_unit_test(tcp_mode_handoff),
    cmocka_unit_test(tcp_mode_least_loaded),
    cmocka_unit_test(tcp_out_of_fds),
    cmocka_unit_test(tcp_late_loop_reads_waiting_bytes),
    cmocka_unit_test(tcp_late_loop_idle_times_out),
    cmocka_unit_test(tcp_accept_bursts_single),
    cmocka_unit_test(tcp_accept_bursts_reuseport),
    cmocka_unit_test(tcp_accept_bursts_handoff),
    cmocka_unit_test(tcp_accept_bursts_least_loaded),
    cmocka_unit_test(tcp_accept_bursts_handoff_busy),
    cmocka_unit_test(tcp_misuse),
    cmocka_unit_test(tcp_wrong_loop),
    cmocka_unit_test(tcp_loop_close_frees_streams),
};

WT_MAIN("tcp", tests)
