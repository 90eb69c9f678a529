/* Tests for TLS streams (weft_tls, OpenSSL 3) over loopback: a handshake
 * and echo between a server task on one loop and a client task on another
 * (TLS 1.3, the framed reads, a 400 KB body each way), verification that
 * fails (a CA that did not sign, a host name the certificate does not
 * name), plain bytes where a ClientHello belongs, cancellation and
 * deadlines during the handshake and during a read, and descriptors back
 * to their count.
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

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(tls_echo_two_loops),
    cmocka_unit_test(tls_verify_failures),
    cmocka_unit_test(tls_plain_bytes_refused),
    cmocka_unit_test(tls_handshake_cancel_deadline),
    cmocka_unit_test(tls_read_cancel_deadline),
};

WT_MAIN("tls", tests)
