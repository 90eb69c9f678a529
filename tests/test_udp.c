/* Tests for UDP sockets over loopback (127.0.0.1, and ::1 where the machine
 * has it): binding (ephemeral ports, bad hosts and ports, a taken port),
 * datagrams too large, a truncated datagram, an echo between tasks on two
 * loops, a receive cut by a cancel and by a deadline (no datagram lost),
 * a close that wakes a receiver, a port served by every loop of a pool
 * with SO_REUSEPORT, a loop closed with a socket left open, and misuse.
 * Descriptors are counted before and after each case. Nothing waits for a
 * fixed time to be correct: cases wait for states, with generous bounds. */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

#define HOST "127.0.0.1"

static struct sockaddr_storage addr_of(const char *host, int port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0)
    assert_int_equal(uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss), 0);
  return ss;
}

static int port_of_addr(const struct sockaddr_storage *ss) {
  return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                         : ((const struct sockaddr_in *)ss)->sin_port);
}

/* Runs main as weft_run's main task; it must leave no descriptor open. */
static void run_main_closes_fds(weft_fn main, void *arg) {
  int fds = wt_count_fds();
  assert_int_equal(weft_run(main, arg, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* ------------------------------------------------- binding and errors */

static void *bind_main(void *arg) {
  (void)arg;
  weft_udp_t *u = NULL, *v = NULL;
  assert_int_equal(weft_udp_bind(NULL, HOST, 0), WEFT_EINVAL);
  assert_int_equal(weft_udp_bind(&u, "not an address", 0), WEFT_EINVAL);
  assert_null(u);
  assert_int_equal(weft_udp_bind(&u, HOST, 70000), WEFT_EINVAL);
  assert_int_equal(weft_udp_bind(&u, HOST, -1), WEFT_EINVAL);
  weft_udp_opts_t bad = {.rcvbuf = -1};
  assert_int_equal(weft_udp_bind_opts(&u, HOST, 0, &bad), WEFT_EINVAL);
  assert_int_equal(weft_udp_port(NULL), -1);

  assert_int_equal(weft_udp_bind(&u, HOST, 0), 0);
  int port = weft_udp_port(u);
  assert_true(port > 0 && port <= 65535);
  /* The port is taken: a second socket without SO_REUSEPORT fails. */
  assert_int_equal(weft_udp_bind(&v, HOST, port), UV_EADDRINUSE);
  assert_null(v);
  /* NULL and "" are "0.0.0.0"; "localhost" is 127.0.0.1. */
  assert_int_equal(weft_udp_bind(&v, NULL, 0), 0);
  assert_int_equal(weft_udp_close(v), 0);
  assert_int_equal(weft_udp_bind(&v, "", 0), 0);
  assert_int_equal(weft_udp_close(v), 0);
  assert_int_equal(weft_udp_bind(&v, "localhost", 0), 0);
  assert_int_equal(weft_udp_close(v), 0);

  /* Too large: beyond any datagram, and beyond IPv4's payload. */
  static char big[70000];
  struct sockaddr_storage to = addr_of(HOST, port);
  assert_int_equal(weft_udp_send(u, big, sizeof big, (struct sockaddr *)&to), UV_EMSGSIZE);
  assert_int_equal(weft_udp_send(u, big, 65508, (struct sockaddr *)&to), UV_EMSGSIZE);
  assert_int_equal(weft_udp_send(u, big, 10, NULL), WEFT_EINVAL);
  assert_int_equal(weft_udp_send(NULL, big, 10, (struct sockaddr *)&to), WEFT_EINVAL);
  assert_int_equal(weft_udp_recv(NULL, big, 10, NULL), WEFT_EINVAL);
  assert_int_equal(weft_udp_recv(u, NULL, 10, NULL), WEFT_EINVAL);

  /* The largest IPv4 datagram goes, and comes back whole; a short buffer
   * gets the head of the next one and WEFT_ENOBUFS, and the one after is
   * not disturbed. */
  memset(big, 'x', sizeof big);
  assert_int_equal(weft_udp_send(u, big, 65507, (struct sockaddr *)&to), 0);
  static char in[65535];
  struct sockaddr_storage from;
  assert_int_equal(weft_udp_recv(u, in, sizeof in, &from), 65507);
  assert_int_equal(port_of_addr(&from), port);
  assert_int_equal(weft_udp_send(u, "0123456789", 10, (struct sockaddr *)&to), 0);
  assert_int_equal(weft_udp_send(u, "abc", 3, (struct sockaddr *)&to), 0);
  memset(in, 0, 16);
  assert_int_equal(weft_udp_recv(u, in, 4, &from), WEFT_ENOBUFS);
  assert_memory_equal(in, "0123", 4);
  assert_int_equal(weft_udp_recv(u, in, sizeof in, NULL), 3);
  assert_memory_equal(in, "abc", 3);
  /* An empty datagram is one too. */
  assert_int_equal(weft_udp_send(u, NULL, 0, (struct sockaddr *)&to), 0);
  assert_int_equal(weft_udp_recv(u, in, sizeof in, NULL), 0);

  assert_int_equal(weft_udp_close(u), 0);
  assert_int_equal(weft_udp_close(NULL), WEFT_EINVAL);
  return NULL;
}

static void udp_bind_and_errors(void **state) {
  (void)state;
  weft_udp_t *u = NULL;
  /* No loop here at all. */
  assert_int_equal(weft_udp_bind(&u, HOST, 0), WEFT_ENOTASK);
  run_main_closes_fds(bind_main, NULL);
}

/* ------------------------------------------------ echo across two loops */

#define ECHO_COUNT 200

typedef struct echo {
  const char *host;
  atomic_int port;          /* the server's, once bound */
  int served;
  int checked;
} echo_t;

static void *echo_server(void *arg) {
  echo_t *e = arg;
  weft_udp_t *u;
  int err = weft_udp_bind(&u, e->host, 0);
  if (err) {
    atomic_store(&e->port, err);
    return NULL;
  }
  atomic_store(&e->port, weft_udp_port(u));
  char buf[256];
  struct sockaddr_storage from;
  for (;;) {
    ssize_t n = weft_udp_recv(u, buf, sizeof buf, &from);
    assert_true(n >= 0);
    if (n == 4 && memcmp(buf, "quit", 4) == 0)
      break;
    assert_int_equal(weft_udp_send(u, buf, (size_t)n, (struct sockaddr *)&from), 0);
    e->served++;
  }
  assert_int_equal(weft_udp_close(u), 0);
  return NULL;
}

static void *echo_client(void *arg) {
  echo_t *e = arg;
  weft_udp_t *u;
  assert_int_equal(weft_udp_bind(&u, e->host, 0), 0);
  struct sockaddr_storage to = addr_of(e->host, atomic_load(&e->port));
  for (int i = 0; i < ECHO_COUNT; i++) {
    char msg[64], back[64];
    int len = snprintf(msg, sizeof msg, "datagram %d", i);
    assert_int_equal(weft_udp_send(u, msg, (size_t)len, (struct sockaddr *)&to), 0);
    struct sockaddr_storage from;
    assert_int_equal(weft_deadline_push(10000), 0);
    ssize_t n = weft_udp_recv(u, back, sizeof back, &from);
    assert_int_equal(weft_deadline_pop(), 0);
    assert_int_equal(n, len);
    assert_memory_equal(back, msg, (size_t)len);
    assert_int_equal(port_of_addr(&from), atomic_load(&e->port));
    e->checked++;
  }
  assert_int_equal(weft_udp_send(u, "quit", 4, (struct sockaddr *)&to), 0);
  assert_int_equal(weft_udp_close(u), 0);
  return NULL;
}

/* Server on pool loop 0, client on loop 1. */
static void echo_on_pool(const char *host) {
  int fds = wt_count_fds();
  weft_pool_t *pool = wt_pool_of(2);
  echo_t e = {.host = host};
  atomic_init(&e.port, 0);
  weft_task_t *srv, *cli;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), echo_server, &e, &srv), 0);
  double until = wt_now_ms() + 10000;
  while (atomic_load(&e.port) == 0 && wt_now_ms() < until)
    uv_sleep(1);
  int port = atomic_load(&e.port);
  assert_true(port > 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), echo_client, &e, &cli), 0);
  assert_int_equal(weft_await(cli, NULL), 0);
  assert_int_equal(weft_await(srv, NULL), 0);
  weft_task_release(cli);
  weft_task_release(srv);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  assert_int_equal(e.served, ECHO_COUNT);
  assert_int_equal(e.checked, ECHO_COUNT);
  assert_int_equal(wt_count_fds(), fds);
}

static void udp_echo_two_loops(void **state) {
  (void)state;
  echo_on_pool(HOST);
}

/* Whether the machine has an IPv6 loopback to bind. */
static void *probe_ipv6(void *arg) {
  weft_udp_t *u;
  int err = weft_udp_bind(&u, "::1", 0);
  if (err == 0)
    weft_udp_close(u);
  *(int *)arg = err;
  return NULL;
}

static void udp_echo_ipv6(void **state) {
  (void)state;
  int err = 1;
  assert_int_equal(weft_run(probe_ipv6, &err, NULL), 0);
  if (err == UV_EADDRNOTAVAIL || err == UV_EAFNOSUPPORT) {
    printf("udp: no IPv6 loopback here (%s): skipped\n", weft_strerror(err));
    skip();
  }
  assert_int_equal(err, 0);
  echo_on_pool("::1");
}

/* --------------------------------------------- cancel, deadline, close */

typedef struct rx {
  weft_udp_t *u;
  int entered;
  ssize_t rc;
  char buf[64];
} rx_t;

static void *receiver(void *arg) {
  rx_t *r = arg;
  r->entered = 1;
  r->rc = weft_udp_recv(r->u, r->buf, sizeof r->buf, NULL);
  return NULL;
}

/* Yields until r's task has parked in its receive (it parks in the step
 * that sets entered). */
static void until_entered(rx_t *r) {
  for (int i = 0; i < 1000 && !r->entered; i++)
    weft_yield();
  assert_true(r->entered);
}

static void *cancel_main(void *arg) {
  (void)arg;
  weft_udp_t *u;
  assert_int_equal(weft_udp_bind(&u, HOST, 0), 0);
  struct sockaddr_storage to = addr_of(HOST, weft_udp_port(u));

  /* A receiver cancelled while it waits. */
  rx_t r = {.u = u, .rc = 1};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, receiver, &r, &t), 0);
  until_entered(&r);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(r.rc, WEFT_ECANCELED);

  /* The datagram sent after the cut is not lost: the next receiver has it. */
  assert_int_equal(weft_udp_send(u, "after", 5, (struct sockaddr *)&to), 0);
  rx_t r2 = {.u = u, .rc = 1};
  assert_int_equal(weft_spawn(NULL, receiver, &r2, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(r2.rc, 5);
  assert_memory_equal(r2.buf, "after", 5);

  /* A deadline: nothing comes, the receive times out no earlier than it. */
  double t0 = wt_now_ms();
  assert_int_equal(weft_deadline_push(50), 0);
  char buf[16];
  assert_int_equal(weft_udp_recv(u, buf, sizeof buf, NULL), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_true(wt_now_ms() - t0 >= 49.0);
  /* A deadline passed before the call ends it at once, like every await
   * point's: a datagram waiting there is not taken. */
  assert_int_equal(weft_udp_send(u, "late", 4, (struct sockaddr *)&to), 0);
  assert_int_equal(weft_deadline_push(0), 0);
  assert_int_equal(weft_udp_recv(u, buf, sizeof buf, NULL), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  /* ... and it is still there afterwards. */
  assert_int_equal(weft_udp_recv(u, buf, sizeof buf, NULL), 4);
  assert_memory_equal(buf, "late", 4);

  /* A task cancelled before its receive begins takes nothing. */
  assert_int_equal(weft_udp_send(u, "kept", 4, (struct sockaddr *)&to), 0);
  rx_t r3 = {.u = u, .rc = 1};
  assert_int_equal(weft_spawn(NULL, receiver, &r3, &t), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  weft_await(t, NULL);
  weft_task_release(t);
  assert_int_equal(r3.entered, 0);
  assert_int_equal(weft_udp_recv(u, buf, sizeof buf, NULL), 4);
  assert_memory_equal(buf, "kept", 4);

  assert_int_equal(weft_udp_close(u), 0);
  return NULL;
}

static void udp_recv_cancel_and_deadline(void **state) {
  (void)state;
  run_main_closes_fds(cancel_main, NULL);
}

static void *close_main(void *arg) {
  (void)arg;
  weft_udp_t *u;
  assert_int_equal(weft_udp_bind(&u, HOST, 0), 0);
  rx_t r1 = {.u = u, .rc = 1}, r2 = {.u = u, .rc = 1};
  weft_task_t *t1, *t2;
  assert_int_equal(weft_spawn(NULL, receiver, &r1, &t1), 0);
  assert_int_equal(weft_spawn(NULL, receiver, &r2, &t2), 0);
  until_entered(&r1);
  until_entered(&r2);
  assert_int_equal(weft_udp_close(u), 0);
  assert_int_equal(weft_await(t1, NULL), 0);
  assert_int_equal(weft_await(t2, NULL), 0);
  weft_task_release(t1);
  weft_task_release(t2);
  assert_int_equal(r1.rc, WEFT_ECLOSED);
  assert_int_equal(r2.rc, WEFT_ECLOSED);
  return NULL;
}

static void udp_close_wakes_recv(void **state) {
  (void)state;
  run_main_closes_fds(close_main, NULL);
}

/* ---------------------------------------------- one port, every loop */

#define RP_LOOPS 2
#define RP_CLIENTS 32
#define RP_EACH 10

typedef struct rp {
  atomic_int port;
  atomic_int bound;
  atomic_int total;
  atomic_int per_loop[RP_LOOPS];
} rp_t;

typedef struct rp_srv {
  rp_t *rp;
  int index;
  int port;                 /* 0 for the first */
  int err;
} rp_srv_t;

static void *rp_server(void *arg) {
  rp_srv_t *s = arg;
  weft_udp_t *u;
  weft_udp_opts_t opts = {.reuseport = true};
  if ((s->err = weft_udp_bind_opts(&u, HOST, s->port, &opts)) != 0) {
    atomic_fetch_add(&s->rp->bound, 1);
    return NULL;
  }
  if (s->port == 0)
    atomic_store(&s->rp->port, weft_udp_port(u));
  else
    assert_int_equal(weft_udp_port(u), s->port);
  atomic_fetch_add(&s->rp->bound, 1);
  char buf[64];
  struct sockaddr_storage from;
  ssize_t n;
  while ((n = weft_udp_recv(u, buf, sizeof buf, &from)) >= 0) {
    atomic_fetch_add(&s->rp->per_loop[s->index], 1);
    atomic_fetch_add(&s->rp->total, 1);
    assert_int_equal(weft_udp_send(u, buf, (size_t)n, (struct sockaddr *)&from), 0);
  }
  assert_int_equal(n, WEFT_ECANCELED);
  assert_int_equal(weft_udp_close(u), 0);
  return NULL;
}

static void *rp_client(void *arg) {
  rp_t *rp = arg;
  weft_udp_t *u;
  assert_int_equal(weft_udp_bind(&u, HOST, 0), 0);
  struct sockaddr_storage to = addr_of(HOST, atomic_load(&rp->port));
  for (int i = 0; i < RP_EACH; i++) {
    char back[16];
    assert_int_equal(weft_udp_send(u, "ping", 4, (struct sockaddr *)&to), 0);
    assert_int_equal(weft_deadline_push(10000), 0);
    assert_int_equal(weft_udp_recv(u, back, sizeof back, NULL), 4);
    assert_int_equal(weft_deadline_pop(), 0);
  }
  assert_int_equal(weft_udp_close(u), 0);
  return NULL;
}

static void *rp_clients_main(void *arg) {
  weft_task_t *t[RP_CLIENTS];
  for (int i = 0; i < RP_CLIENTS; i++)
    assert_int_equal(weft_spawn(NULL, rp_client, arg, &t[i]), 0);
  int statuses[RP_CLIENTS];
  assert_int_equal(weft_gather(t, RP_CLIENTS, NULL, statuses), 0);
  for (int i = 0; i < RP_CLIENTS; i++)
    weft_task_release(t[i]);
  return NULL;
}

static void udp_reuseport_pool(void **state) {
  (void)state;
  int fds = wt_count_fds();
  weft_pool_t *pool = wt_pool_of(RP_LOOPS);
  rp_t rp;
  memset(&rp, 0, sizeof rp);
  rp_srv_t srv[RP_LOOPS];
  weft_task_t *st[RP_LOOPS];
  for (int i = 0; i < RP_LOOPS; i++) {
    srv[i] = (rp_srv_t){.rp = &rp, .index = i, .port = i == 0 ? 0 : atomic_load(&rp.port)};
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i), rp_server, &srv[i], &st[i]), 0);
    assert_true(wt_wait_ge(&rp.bound, i + 1, 10000));
    assert_int_equal(srv[i].err, 0);
  }
  assert_int_equal(weft_run(rp_clients_main, &rp, NULL), 0);
  /* Every datagram was received by one of the loops, and the kernel spread
   * thirty-two senders over both (all on one: a chance of 2^-31). */
  assert_int_equal(atomic_load(&rp.total), RP_CLIENTS * RP_EACH);
  for (int i = 0; i < RP_LOOPS; i++) {
    printf("udp: loop %d received %d\n", i, atomic_load(&rp.per_loop[i]));
    assert_true(atomic_load(&rp.per_loop[i]) > 0);
  }
  for (int i = 0; i < RP_LOOPS; i++) {
    assert_int_equal(weft_task_cancel(st[i]), 0);
    assert_int_equal(weft_await(st[i], NULL), WEFT_ECANCELED);
    weft_task_release(st[i]);
  }
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* ---------------------------------------------------------- misuse */

typedef struct wrong {
  weft_udp_t *u;
  int rc_recv, rc_send, rc_close;
} wrong_t;

static void *use_from_other_loop(void *arg) {
  wrong_t *w = arg;
  char buf[8];
  struct sockaddr_storage to = addr_of(HOST, 9);
  w->rc_recv = (int)weft_udp_recv(w->u, buf, sizeof buf, NULL);
  w->rc_send = weft_udp_send(w->u, "x", 1, (struct sockaddr *)&to);
  w->rc_close = weft_udp_close(w->u);
  return NULL;
}

static void *wrong_main(void *arg) {
  weft_pool_t *pool = arg;
  wrong_t w = {0};
  assert_int_equal(weft_udp_bind(&w.u, HOST, 0), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), use_from_other_loop, &w, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(w.rc_recv, WEFT_EPERM);
  assert_int_equal(w.rc_send, WEFT_EPERM);
  assert_int_equal(w.rc_close, WEFT_EPERM);
  /* An address of neither family. */
  struct sockaddr_storage odd;
  memset(&odd, 0, sizeof odd);
  odd.ss_family = AF_UNIX;
  assert_int_equal(weft_udp_send(w.u, "x", 1, (struct sockaddr *)&odd), WEFT_EINVAL);
  assert_int_equal(weft_udp_close(w.u), 0);
  return NULL;
}

static void udp_wrong_loop(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(1);
  int fds = wt_count_fds();
  assert_int_equal(weft_run(wrong_main, pool, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void *until_entered_task(void *arg) {
  until_entered(arg);
  return NULL;
}

/* A socket left open, with a task parked on it, when its loop closes: the
 * loop closes and frees it. Outside any task, with the loop current. */
static void udp_loop_close_frees_socket(void **state) {
  (void)state;
  int fds = wt_count_fds();
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_loop_set_current(loop), 0);
  weft_udp_t *u;
  assert_int_equal(weft_udp_bind(&u, HOST, 0), 0);
  rx_t r = {.u = u, .rc = 1};
  weft_task_t *t;
  assert_int_equal(weft_spawn(loop, receiver, &r, &t), 0);
  weft_task_release(t);
  /* Runs the loop until the receiver has parked. */
  assert_int_equal(weft_spawn(loop, until_entered_task, &r, &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  weft_udp_t *v;
  assert_int_equal(weft_udp_bind(&v, HOST, 0), 0);
  assert_int_equal(weft_udp_close(v), 0); /* closed outside a run */
  assert_int_equal(weft_loop_close(loop), 0);
  assert_int_equal(r.entered, 1);
  assert_int_equal(r.rc, WEFT_ECANCELED);
  assert_int_equal(weft_loop_set_current(NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(udp_bind_and_errors),
    cmocka_unit_test(udp_echo_two_loops),
    cmocka_unit_test(udp_echo_ipv6),
    cmocka_unit_test(udp_recv_cancel_and_deadline),
    cmocka_unit_test(udp_close_wakes_recv),
    cmocka_unit_test(udp_reuseport_pool),
    cmocka_unit_test(udp_wrong_loop),
    cmocka_unit_test(udp_loop_close_frees_socket),
  };
  return wt_main(argc, argv, "udp", tests, sizeof tests / sizeof tests[0]);
}
