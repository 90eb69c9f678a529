/* Tests for TLS streams (weft_tls, OpenSSL 3) over loopback: a handshake
 * and echo between a server task on one loop and a client task on another
 * (TLS 1.3, the framed reads, a 400 KB body each way), verification that
 * fails (a CA that did not sign, a host name the certificate does not
 * name), plain bytes where a ClientHello belongs, cancellation and
 * deadlines during the handshake, during a read and during a long write,
 * and descriptors back to their count.
 *
 * Each case makes a throwaway CA, a server certificate it signed (for
 * localhost and 127.0.0.1) and a second, unrelated CA, with the openssl
 * command, in a fresh temporary directory that the case removes: nothing
 * secret is in the repository.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "tls_certs.h"
#include "weft_tls.h"

#define HOST "127.0.0.1"

static char dir[64];
static char ca[128], other_ca[128], cert[128], key[128];

static void make_certs(void) {
  assert_int_equal(wt_certs_make(dir), 0);
  snprintf(ca, sizeof ca, "%s/ca.pem", dir);
  snprintf(other_ca, sizeof other_ca, "%s/other.pem", dir);
  snprintf(cert, sizeof cert, "%s/srv.pem", dir);
  snprintf(key, sizeof key, "%s/srv.key", dir);
}

static void remove_certs(void) {
  assert_int_equal(wt_certs_remove(dir), 0);
}

/* ------------------------------------------------- echo across loops */

typedef struct echo {
  weft_listener_t *l;
  int port;
  weft_tls_ctx_t *sctx, *cctx;
  int server_rc;
  size_t echoed;
  const char *server_version;
} echo_t;

#define BIG (400u * 1024u)

static void *server_main(void *arg) {
  echo_t *e = arg;
  weft_stream_t *s;
  e->server_rc = weft_tcp_accept(e->l, &s);
  if (e->server_rc)
    return NULL;
  if ((e->server_rc = weft_tls_accept(s, e->sctx)) != 0) {
    weft_stream_close(s);
    return NULL;
  }
  e->server_version = weft_tls_version(s);
  char buf[5000];
  ssize_t n;
  while ((n = weft_stream_read(s, buf, sizeof buf)) > 0) {
    if ((e->server_rc = weft_stream_write(s, buf, (size_t)n)) != 0)
      break;
    e->echoed += (size_t)n;
  }
  if (n < 0)
    e->server_rc = (int)n;
  int rc = weft_stream_close(s);
  if (!e->server_rc)
    e->server_rc = rc;
  return NULL;
}

static void *server_thread(void *arg) {
  assert_int_equal(weft_run(server_main, arg, NULL), 0);
  return NULL;
}

/* Reads the big echo while the writer writes. */
typedef struct big_read {
  weft_stream_t *s;
  char *buf;
  ssize_t rc;
} big_read_t;

static void *read_big(void *arg) {
  big_read_t *b = arg;
  b->rc = weft_stream_read_exactly(b->s, b->buf, BIG);
  return NULL;
}

static void *client_main(void *arg) {
  echo_t *e = arg;
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, e->port), 0);
  assert_null(weft_tls_version(s));
  assert_int_equal(weft_tls_connect(s, e->cctx, "localhost"), 0);
  assert_string_equal(weft_tls_version(s), "TLSv1.3");
  assert_int_equal(weft_tls_connect(s, e->cctx, "localhost"), WEFT_EINVAL); /* has TLS */

  /* Lines, through the framed reads. */
  char out[100], in[100];
  for (int i = 0; i < 20; i++) {
    int len = snprintf(out, sizeof out, "line %d over TLS\n", i);
    assert_int_equal(weft_stream_write(s, out, (size_t)len), 0);
    assert_int_equal(weft_stream_read_until(s, in, sizeof in, "\n", 1), len);
    assert_memory_equal(in, out, (size_t)len);
  }
  assert_int_equal(weft_stream_write(s, "abcdef", 6), 0);
  assert_int_equal(weft_stream_peek(s, in, 3) > 0, true);
  assert_int_equal(weft_stream_read_exactly(s, in, 6), 6);
  assert_memory_equal(in, "abcdef", 6);

  /* 400 KB each way, read by another task while this one writes. */
  char *big = malloc(BIG), *back = malloc(BIG);
  assert_non_null(big);
  assert_non_null(back);
  for (size_t i = 0; i < BIG; i++)
    big[i] = (char)(i * 7 + i / 1000);
  big_read_t b = {.s = s, .buf = back};
  weft_task_t *rt;
  assert_int_equal(weft_spawn(NULL, read_big, &b, &rt), 0);
  assert_int_equal(weft_stream_write(s, big, BIG), 0);
  assert_int_equal(weft_await(rt, NULL), 0);
  weft_task_release(rt);
  assert_int_equal(b.rc, (ssize_t)BIG);
  assert_memory_equal(back, big, BIG);
  free(big);
  free(back);

  /* close_notify: the server reads end of stream and closes too. */
  assert_int_equal(weft_stream_shutdown(s), 0);
  assert_int_equal(weft_stream_read(s, in, sizeof in), 0);
  assert_int_equal(weft_stream_close(s), 0);
  return NULL;
}

static void tls_echo_two_loops(void **state) {
  make_certs();
  int fds = wt_count_fds();
  echo_t e = {0};
  assert_int_equal(weft_tls_server_ctx(&e.sctx, cert, key), 0);
  assert_int_equal(weft_tls_client_ctx(&e.cctx, ca), 0);
  assert_int_equal(weft_tcp_listen(&e.l, HOST, 0, NULL), 0);
  e.port = weft_listener_port(e.l);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, server_thread, &e), 0);
  assert_int_equal(weft_run(client_main, &e, NULL), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(e.server_rc, 0);
  assert_string_equal(e.server_version, "TLSv1.3");
  assert_true(e.echoed > BIG);
  assert_int_equal(weft_listener_close(e.l), 0);
  weft_tls_ctx_free(e.sctx);
  weft_tls_ctx_free(e.cctx);
  assert_int_equal(wt_count_fds(), fds);
  remove_certs();
}

/* ----------------------------------------------------- one loop cases */

typedef struct one {
  weft_listener_t *l;
  int port;
  weft_tls_ctx_t *sctx;
  int accepts;       /* how many connections the server takes */
  int rc[8];         /* what each weft_tls_accept returned */
  atomic_int done;
  int mode;          /* what the server does after a handshake */
  int read_rc[4];
  char got[64];
} one_t;

enum { SRV_CLOSE, SRV_READ_DEADLINE, SRV_READ_CANCEL };

typedef struct reader {
  weft_stream_t *s;
  ssize_t rc;
} reader_t;

static void *read_one(void *arg) {
  reader_t *r = arg;
  char buf[64];
  r->rc = weft_stream_read(r->s, buf, sizeof buf);
  return NULL;
}

static void *one_server(void *arg) {
  one_t *o = arg;
  for (int i = 0; i < o->accepts; i++) {
    weft_stream_t *s;
    assert_int_equal(weft_tcp_accept(o->l, &s), 0);
    o->rc[i] = weft_tls_accept(s, o->sctx);
    if (o->rc[i] == 0 && o->mode == SRV_READ_DEADLINE) {
      char buf[64];
      /* Nothing comes within 100 ms: the read times out, the stream lives. */
      assert_int_equal(weft_deadline_set(100), 0);
      o->read_rc[0] = (int)weft_stream_read(s, buf, sizeof buf);
      assert_int_equal(weft_deadline_clear(), 0);
      ssize_t n = weft_stream_read_until(s, o->got, sizeof o->got, "\n", 1);
      o->read_rc[1] = (int)n;
      assert_int_equal(weft_stream_write(s, "ok\n", 3), 0);
    } else if (o->rc[i] == 0 && o->mode == SRV_READ_CANCEL) {
      reader_t r = {.s = s};
      weft_task_t *t;
      assert_int_equal(weft_spawn(NULL, read_one, &r, &t), 0);
      assert_int_equal(weft_sleep(50), 0);
      assert_int_equal(weft_task_cancel(t), 0);
      assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
      weft_task_release(t);
      o->read_rc[0] = (int)r.rc;
      o->read_rc[1] = (int)weft_stream_read_until(s, o->got, sizeof o->got, "\n", 1);
      assert_int_equal(weft_stream_write(s, "ok\n", 3), 0);
    }
    weft_stream_close(s);
  }
  atomic_store(&o->done, 1);
  return NULL;
}

static void one_setup(one_t *o, int accepts, int mode) {
  memset(o, 0, sizeof *o);
  assert_int_equal(weft_tls_server_ctx(&o->sctx, cert, key), 0);
  assert_int_equal(weft_tcp_listen(&o->l, HOST, 0, NULL), 0);
  o->port = weft_listener_port(o->l);
  o->accepts = accepts;
  o->mode = mode;
}

static void one_teardown(one_t *o) {
  assert_int_equal(weft_listener_close(o->l), 0);
  weft_tls_ctx_free(o->sctx);
}

/* A client handshake that must fail with WEFT_ETLS and a reason. */
static void connect_fails(int port, const char *ca_file, const char *name, const char *why) {
  weft_tls_ctx_t *c;
  assert_int_equal(weft_tls_client_ctx(&c, ca_file), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, port), 0);
  assert_int_equal(weft_tls_connect(s, c, name), WEFT_ETLS);
  if (!strstr(weft_tls_error(), why))
    fail_msg("weft_tls_error() says \"%s\", not \"%s\"", weft_tls_error(), why);
  assert_null(weft_tls_version(s));
  weft_stream_close(s);
  weft_tls_ctx_free(c);
}

static void *verify_main(void *arg) {
  one_t *o = arg;
  weft_task_t *srv;
  assert_int_equal(weft_spawn(NULL, one_server, o, &srv), 0);
  connect_fails(o->port, other_ca, "localhost", "certificate verify failed");
  connect_fails(o->port, ca, "example.com", "hostname mismatch");
  connect_fails(o->port, ca, "127.0.0.2", "certificate verify failed");
  /* And a client that trusts the right CA by IP address gets in. */
  weft_tls_ctx_t *c;
  assert_int_equal(weft_tls_client_ctx(&c, ca), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, o->port), 0);
  assert_int_equal(weft_tls_connect(s, c, "127.0.0.1"), 0);
  weft_stream_close(s);
  weft_tls_ctx_free(c);
  assert_int_equal(weft_await(srv, NULL), 0);
  weft_task_release(srv);
  for (int i = 0; i < 3; i++)
    assert_int_not_equal(o->rc[i], 0);
  return NULL;
}

static void tls_verify_failures(void **state) {
  make_certs();
  int fds = wt_count_fds();
  one_t o;
  one_setup(&o, 4, SRV_CLOSE);
  assert_int_equal(weft_run(verify_main, &o, NULL), 0);
  one_teardown(&o);
  /* Contexts: missing files, and a key that is not one. */
  weft_tls_ctx_t *c = NULL;
  assert_int_equal(weft_tls_server_ctx(&c, "/nonexistent/cert.pem", key), UV_ENOENT);
  assert_int_equal(weft_tls_server_ctx(&c, cert, ca), WEFT_ETLS);
  assert_int_equal(weft_tls_client_ctx(&c, "/nonexistent/ca.pem"), UV_ENOENT);
  assert_int_equal(weft_tls_server_ctx(NULL, cert, key), WEFT_EINVAL);
  assert_null(c);
  assert_int_equal(wt_count_fds(), fds);
  remove_certs();
}

/* Plain HTTP and random bytes where a ClientHello belongs. */
static void *plain_main(void *arg) {
  one_t *o = arg;
  weft_task_t *srv;
  assert_int_equal(weft_spawn(NULL, one_server, o, &srv), 0);
  static const char *junk[] = {"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                               "\x16\x03\x01\xff\xff random bytes \x01\x02\x03"};
  for (int i = 0; i < 2; i++) {
    weft_stream_t *s;
    assert_int_equal(weft_tcp_connect(&s, HOST, o->port), 0);
    assert_int_equal(weft_stream_write(s, junk[i], strlen(junk[i])), 0);
    char buf[256];
    ssize_t n;
    /* An alert, or nothing, then the end. */
    while ((n = weft_stream_read(s, buf, sizeof buf)) > 0)
      ;
    assert_true(n == 0 || n == UV_ECONNRESET);
    weft_stream_close(s);
  }
  /* The server still serves TLS. */
  weft_tls_ctx_t *c;
  assert_int_equal(weft_tls_client_ctx(&c, ca), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, o->port), 0);
  assert_int_equal(weft_tls_connect(s, c, "localhost"), 0);
  weft_stream_close(s);
  weft_tls_ctx_free(c);
  assert_int_equal(weft_await(srv, NULL), 0);
  weft_task_release(srv);
  assert_int_equal(o->rc[0], WEFT_ETLS);
  assert_int_not_equal(o->rc[1], 0);
  assert_int_equal(o->rc[2], 0);
  return NULL;
}

static void tls_plain_bytes_refused(void **state) {
  make_certs();
  int fds = wt_count_fds();
  one_t o;
  one_setup(&o, 3, SRV_CLOSE);
  assert_int_equal(weft_run(plain_main, &o, NULL), 0);
  one_teardown(&o);
  assert_int_equal(wt_count_fds(), fds);
  remove_certs();
}

/* A handshake the client never starts: cut by a deadline, and by a cancel. */
typedef struct hs {
  weft_listener_t *l;
  weft_tls_ctx_t *sctx;
  int rc;
} hs_t;

static void *accept_handshake(void *arg) {
  hs_t *h = arg;
  weft_stream_t *s;
  assert_int_equal(weft_tcp_accept(h->l, &s), 0);
  h->rc = weft_tls_accept(s, h->sctx);
  weft_stream_close(s);
  return NULL;
}

static void *accept_handshake_deadline(void *arg) {
  hs_t *h = arg;
  weft_stream_t *s;
  assert_int_equal(weft_tcp_accept(h->l, &s), 0);
  assert_int_equal(weft_deadline_set(100), 0);
  h->rc = weft_tls_accept(s, h->sctx);
  weft_deadline_clear();
  weft_stream_close(s);
  return NULL;
}

static void *handshake_cut_main(void *arg) {
  one_t *o = arg;
  hs_t h = {.l = o->l, .sctx = o->sctx};
  /* Deadline. */
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, accept_handshake_deadline, &h, &t), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, o->port), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(h.rc, WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 < 2000);
  weft_stream_close(s);
  /* Cancel. */
  assert_int_equal(weft_spawn(NULL, accept_handshake, &h, &t), 0);
  assert_int_equal(weft_tcp_connect(&s, HOST, o->port), 0);
  assert_int_equal(weft_sleep(50), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  weft_await(t, NULL);
  weft_task_release(t);
  assert_int_equal(h.rc, WEFT_ECANCELED);
  weft_stream_close(s);
  /* A client whose handshake is cut by its own deadline. */
  weft_tls_ctx_t *c;
  assert_int_equal(weft_tls_client_ctx(&c, ca), 0);
  weft_listener_t *mute;
  assert_int_equal(weft_tcp_listen(&mute, HOST, 0, NULL), 0); /* never accepts */
  assert_int_equal(weft_tcp_connect(&s, HOST, weft_listener_port(mute)), 0);
  assert_int_equal(weft_deadline_set(100), 0);
  assert_int_equal(weft_tls_connect(s, c, "localhost"), WEFT_ETIMEDOUT);
  weft_deadline_clear();
  weft_stream_close(s);
  weft_listener_close(mute);
  weft_tls_ctx_free(c);
  return NULL;
}

static void tls_handshake_cancel_deadline(void **state) {
  make_certs();
  int fds = wt_count_fds();
  one_t o;
  one_setup(&o, 0, SRV_CLOSE);
  assert_int_equal(weft_run(handshake_cut_main, &o, NULL), 0);
  one_teardown(&o);
  assert_int_equal(wt_count_fds(), fds);
  remove_certs();
}

/* After the handshake: a read cut by a deadline, and one cancelled; the
 * stream carries on after each. */
static void *read_cut_main(void *arg) {
  one_t *o = arg;
  weft_task_t *srv;
  assert_int_equal(weft_spawn(NULL, one_server, o, &srv), 0);
  weft_tls_ctx_t *c;
  assert_int_equal(weft_tls_client_ctx(&c, ca), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, HOST, o->port), 0);
  assert_int_equal(weft_tls_connect(s, c, "localhost"), 0);
  assert_int_equal(weft_sleep(250), 0); /* the server's read is cut first */
  assert_int_equal(weft_stream_write(s, "after the cut\n", 14), 0);
  char buf[16];
  assert_int_equal(weft_stream_read_until(s, buf, sizeof buf, "\n", 1), 3);
  assert_memory_equal(buf, "ok\n", 3);
  assert_int_equal(weft_stream_close(s), 0);
  weft_tls_ctx_free(c);
  assert_int_equal(weft_await(srv, NULL), 0);
  weft_task_release(srv);
  assert_int_equal(o->rc[0], 0);
  assert_int_equal(o->read_rc[0], o->mode == SRV_READ_DEADLINE ? WEFT_ETIMEDOUT : WEFT_ECANCELED);
  assert_int_equal(o->read_rc[1], 14);
  assert_memory_equal(o->got, "after the cut\n", 14);
  return NULL;
}

static void tls_read_cancel_deadline(void **state) {
  make_certs();
  int fds = wt_count_fds();
  for (int mode = SRV_READ_DEADLINE; mode <= SRV_READ_CANCEL; mode++) {
    one_t o;
    one_setup(&o, 1, mode);
    assert_int_equal(weft_run(read_cut_main, &o, NULL), 0);
    one_teardown(&o);
  }
  assert_int_equal(wt_count_fds(), fds);
  remove_certs();
}

/* A long write cut while it waits for room (the peer reads nothing, so the
 * socket's buffers and then the write queue fill): by a cancel, by a
 * deadline, and by a cancel after which the writer closes the stream at
 * once. weft_tls.h: a write is sealed a 16 KiB record at a time and each
 * record is sent whole, so the cut leaves whole records queued and the
 * stream usable. Once the peer reads, it must see a prefix of what was
 * written, cut at a record's end, then what is written after the cut and a
 * clean end; after the close that drops the queue, a prefix of what was
 * written and an end or a clear error, never bytes that were not written. */
enum { WCUT_CANCEL, WCUT_DEADLINE, WCUT_CANCEL_CLOSE };

#define WCUT_RECORD ((size_t)16 << 10)  /* the plaintext of one record */
#define WCUT_LIMIT ((size_t)256 << 10)  /* the client's write limit */
#define WCUT_LONG ((size_t)16 << 20)    /* the write that is cut: more than
                                           any socket buffer takes */
#define WCUT_TRAILER "written after the cut\n"

typedef struct wcut {
  int mode;
  weft_listener_t *l;
  int port;
  weft_tls_ctx_t *sctx;
  weft_event_t *go;     /* set when the server may start reading */
  weft_stream_t *s;     /* the client's end; NULL once the writer closed it */
  /* The writer. */
  int entered;          /* the long write began */
  int returned;         /* ... and returned */
  int rc;               /* what it returned */
  int close_rc;         /* WCUT_CANCEL_CLOSE: what its close returned */
  size_t done;          /* bytes of the writes before it, which returned 0 */
  /* The server. */
  int accept_rc;
  char *got;            /* everything it read */
  size_t got_len, got_cap;
  ssize_t end;          /* the read that ended it: 0, or an error */
} wcut_t;

static char wcut_byte(size_t i) {
  return (char)(((uint32_t)i * 2654435761u) >> 24);
}

static void wcut_fill(char *buf, size_t off, size_t len) {
  for (size_t j = 0; j < len; j++)
    buf[j] = wcut_byte(off + j);
}

static void *wcut_writer(void *arg) {
  wcut_t *w = arg;
  char *buf = malloc(WCUT_LONG);
  assert_non_null(buf);
  /* Whole records, until the socket takes no more and the write queue
   * holds half its limit: none of these writes waits, and all of this
   * runs in one step, so the long write below waits for room (parks)
   * before its deadline can pass. */
  while (weft_stream_write_queued(w->s) < WCUT_LIMIT / 2) {
    wcut_fill(buf, w->done, WCUT_RECORD);
    assert_int_equal(weft_stream_write(w->s, buf, WCUT_RECORD), 0);
    w->done += WCUT_RECORD;
  }
  wcut_fill(buf, w->done, WCUT_LONG);
  if (w->mode == WCUT_DEADLINE)
    assert_int_equal(weft_deadline_set(50), 0);
  w->entered = 1;
  w->rc = weft_stream_write(w->s, buf, WCUT_LONG);
  w->returned = 1;
  if (w->mode == WCUT_DEADLINE)
    assert_int_equal(weft_deadline_clear(), 0);
  if (w->mode == WCUT_CANCEL_CLOSE) {
    /* Cancelled: the close does not wait for the queue, which is dropped. */
    w->close_rc = weft_stream_close(w->s);
    w->s = NULL;
  }
  free(buf);
  return NULL;
}

static void *wcut_server(void *arg) {
  wcut_t *w = arg;
  weft_stream_t *s;
  assert_int_equal(weft_tcp_accept(w->l, &s), 0);
  w->accept_rc = weft_tls_accept(s, w->sctx);
  if (w->accept_rc == 0 && weft_event_wait(w->go) == 0) {
    for (;;) {
      if (w->got_cap - w->got_len < WCUT_LIMIT) {
        w->got_cap = w->got_cap ? 2 * w->got_cap : (size_t)8 << 20;
        w->got = realloc(w->got, w->got_cap);
        assert_non_null(w->got);
      }
      ssize_t n = weft_stream_read(s, w->got + w->got_len, WCUT_LIMIT);
      if (n <= 0) {
        w->end = n;
        break;
      }
      w->got_len += (size_t)n;
    }
  }
  weft_stream_close(s);
  return NULL;
}

static void *wcut_main(void *arg) {
  wcut_t *w = arg;
  assert_int_equal(weft_event_new(&w->go), 0);
  weft_task_t *srv, *wr;
  assert_int_equal(weft_spawn(NULL, wcut_server, w, &srv), 0);
  weft_tls_ctx_t *c;
  assert_int_equal(weft_tls_client_ctx(&c, ca), 0);
  assert_int_equal(weft_tcp_connect(&w->s, HOST, w->port), 0);
  assert_int_equal(weft_tls_connect(w->s, c, "localhost"), 0);
  assert_int_equal(weft_stream_set_write_limit(w->s, WCUT_LIMIT), 0);
  assert_int_equal(weft_spawn(NULL, wcut_writer, w, &wr), 0);
  /* Until the long write waits for room: it has begun, not returned, and
   * the queue is at its limit (a writer is woken only below it). The
   * deadline may cut it meanwhile. */
  while (!w->returned && !(w->entered && weft_stream_write_queued(w->s) >= WCUT_LIMIT))
    assert_int_equal(weft_sleep(1), 0);
  if (w->mode == WCUT_DEADLINE) {
    assert_int_equal(weft_await(wr, NULL), 0);
    assert_int_equal(w->rc, WEFT_ETIMEDOUT);
  } else {
    assert_false(w->returned);
    assert_int_equal(weft_task_cancel(wr), 0);
    assert_int_equal(weft_await(wr, NULL), WEFT_ECANCELED);
    assert_int_equal(w->rc, WEFT_ECANCELED);
  }
  weft_task_release(wr);
  assert_int_equal(weft_event_set(w->go), 0);
  if (w->mode == WCUT_CANCEL_CLOSE) {
    assert_int_equal(w->close_rc, WEFT_ECANCELED);
    assert_null(w->s);
  } else {
    /* The stream goes on: this write waits for room while the server
     * reads, and the close_notify comes after it. */
    assert_true(weft_stream_write_queued(w->s) > 0);
    assert_int_equal(weft_stream_write(w->s, WCUT_TRAILER, strlen(WCUT_TRAILER)), 0);
    assert_int_equal(weft_stream_shutdown(w->s), 0);
    char byte;
    assert_int_equal(weft_stream_read(w->s, &byte, 1), 0); /* the server's close_notify */
    assert_int_equal(weft_stream_close(w->s), 0);
  }
  assert_int_equal(weft_await(srv, NULL), 0);
  weft_task_release(srv);
  weft_tls_ctx_free(c);
  assert_int_equal(weft_event_free(w->go), 0);
  return NULL;
}

static void wcut_check(const wcut_t *w) {
  assert_int_equal(w->accept_rc, 0);
  size_t data = w->got_len;
  if (w->mode == WCUT_CANCEL_CLOSE) {
    /* The queue was dropped, perhaps in the middle of a record: the end of
     * what reached the peer, or an error, is all it sees of that. */
    if (w->end != 0 && w->end != WEFT_ETLS && w->end != UV_ECONNRESET)
      fail_msg("the read after the dropped queue ended with %s", weft_strerror((int)w->end));
    assert_true(data < w->done + WCUT_LONG);
  } else {
    size_t tlen = strlen(WCUT_TRAILER);
    assert_int_equal(w->end, 0);
    assert_true(data >= tlen);
    data -= tlen;
    assert_memory_equal(w->got + data, WCUT_TRAILER, tlen);
    /* The writes before the long one, and whole records of the long one. */
    assert_true(data >= w->done);
    assert_true(data < w->done + WCUT_LONG);
    assert_int_equal((data - w->done) % WCUT_RECORD, 0);
  }
  for (size_t i = 0; i < data; i++)
    if (w->got[i] != wcut_byte(i))
      fail_msg("byte %zu of %zu is not what was written", i, data);
}

static void tls_write_cancel_deadline(void **state) {
  make_certs();
  int fds = wt_count_fds();
  for (int mode = WCUT_CANCEL; mode <= WCUT_CANCEL_CLOSE; mode++) {
    wcut_t w = {.mode = mode};
    assert_int_equal(weft_tls_server_ctx(&w.sctx, cert, key), 0);
    assert_int_equal(weft_tcp_listen(&w.l, HOST, 0, NULL), 0);
    w.port = weft_listener_port(w.l);
    assert_int_equal(weft_run(wcut_main, &w, NULL), 0);
    wcut_check(&w);
    assert_int_equal(weft_listener_close(w.l), 0);
    weft_tls_ctx_free(w.sctx);
    free(w.got);
  }
  assert_int_equal(wt_count_fds(), fds);
  remove_certs();
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(tls_echo_two_loops),
    cmocka_unit_test(tls_verify_failures),
    cmocka_unit_test(tls_plain_bytes_refused),
    cmocka_unit_test(tls_handshake_cancel_deadline),
    cmocka_unit_test(tls_read_cancel_deadline),
    cmocka_unit_test(tls_write_cancel_deadline),
};

WT_MAIN("tls", tests)
