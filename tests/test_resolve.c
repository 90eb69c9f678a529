/* Tests for host names and IPv6 in weft_tcp_connect and weft_tcp_listen:
 * "localhost" and "::1" over loopback; a name with several addresses whose
 * first refuses (the connect fails over at once) or never answers (the
 * next attempt starts after Happy Eyeballs' 250 ms and wins, the loser is
 * closed); every address refused; unknown names ("*.invalid" at once, a
 * name DNS does not know under a deadline); a cancel and a deadline while a
 * name waits for a resolver thread, while it resolves, and while the
 * connect attempts run; the resolver's queue limit; the resolver's threads
 * apart from libuv's pool (a name resolves while weft_to_thread work holds
 * every thread of that pool); idle resolver threads ending; misuse.
 *
 * Names with several addresses, and resolutions held open, come from the
 * resolver's test hook (weft__resolve_hook), which answers on the resolver
 * thread instead of getaddrinfo: /etc/hosts cannot be changed by a test,
 * and a loopback "blackhole" needs its own port. The blackhole is a
 * listening socket whose accept queue is full: the kernel drops the SYNs of
 * further connects, which then neither succeed nor fail. Descriptors are
 * counted before and after each case.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

/* The resolver's answer, laid out as lib/internal.h's weft__addrs_t. */
typedef struct wt_addrs {
  size_t n;
  struct sockaddr_storage a[16];
} wt_addrs_t;
extern int (*weft__resolve_hook)(const char *host, int port, wt_addrs_t *out);
extern unsigned weft__resolve_idle_ms;
unsigned weft__resolve_threads(void);

/* ---------------------------------------------------------------- hook */

static struct {
  char name[64];               /* the name the hook answers for */
  struct sockaddr_storage a[4];
  size_t n;
  atomic_int hold;             /* while set, every resolution waits */
  atomic_int entered;          /* resolutions that reached the hook */
  atomic_int left;             /* and left it */
} H;

static int hook(const char *host, int port, wt_addrs_t *out) {
  (void)port;
  atomic_fetch_add(&H.entered, 1);
  while (atomic_load(&H.hold))
    uv_sleep(1);
  int rc = 1;
  if (strcmp(host, H.name) == 0) {
    out->n = H.n;
    memcpy(out->a, H.a, H.n * sizeof H.a[0]);
    rc = 0;
  }
  atomic_fetch_add(&H.left, 1);
  return rc;
}

static void hook_answer(const char *name) {
  snprintf(H.name, sizeof H.name, "%s", name);
  weft__resolve_hook = hook;
}

static void hook_add(int family, int port) {
  struct sockaddr_storage *ss = &H.a[H.n++];
  memset(ss, 0, sizeof *ss);
  if (family == AF_INET6)
    assert_int_equal(uv_ip6_addr("::1", port, (struct sockaddr_in6 *)ss), 0);
  else
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)ss), 0);
}

/* ------------------------------------------------------- raw sockets */

/* A listening socket on the loopback of family (0: none there), its port
 * in *port. */
static int raw_listen(int family, int backlog, int *port) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (family == AF_INET6)
    uv_ip6_addr("::1", 0, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&ss);
  socklen_t len = family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0 ||
      getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                   : ((struct sockaddr_in *)&ss)->sin_port);
  return fd;
}

/* A port on 127.0.0.1 that nobody listens on (refused). */
static int closed_port(void) {
  int port;
  int fd = raw_listen(AF_INET, 1, &port);
  assert_true(fd >= 0);
  close(fd);
  return port;
}

/* How many connections wait in fd's accept queue (accepting them). */
static int drain_accepts(int fd) {
  int n = 0, c;
  fcntl(fd, F_SETFL, O_NONBLOCK);
  while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
    close(c);
    n++;
  }
  return n;
}

/* A blackhole on 127.0.0.1: a listener whose accept queue is full, so a
 * connect to it neither completes nor fails. fill[] gets the sockets that
 * fill it (close them, and the listener, at the end). Returns the
 * listener. */
typedef struct blackhole {
  int lfd, port;
  int fill[16];
  int nfill;
} blackhole_t;

static void blackhole_open(blackhole_t *b) {
  b->lfd = raw_listen(AF_INET, 0, &b->port);
  assert_true(b->lfd >= 0);
  fcntl(b->lfd, F_SETFL, O_NONBLOCK);
  struct sockaddr_in sin;
  uv_ip4_addr("127.0.0.1", b->port, &sin);
  b->nfill = 0;
  for (;;) {
    assert_true(b->nfill < 16);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    b->fill[b->nfill++] = fd;
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0)
      continue;
    assert_int_equal(errno, EINPROGRESS);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (poll(&p, 1, 200) == 0)
      return; /* this one hangs: the queue is full */
  }
}

static void blackhole_close(blackhole_t *b) {
  for (int i = 0; i < b->nfill; i++)
    close(b->fill[i]);
  close(b->lfd);
}

static bool have_ipv6_loopback(void) {
  int port;
  int fd = raw_listen(AF_INET6, 1, &port);
  if (fd < 0)
    return false;
  close(fd);
  return true;
}

/* --------------------------------------------------------- a server */

typedef struct srv {
  weft_listener_t *l;
  int accepted;
} srv_t;

/* Accepts one connection and echoes one byte back. */
static void *srv_one(void *arg) {
  srv_t *sv = arg;
  weft_stream_t *s;
  if (weft_tcp_accept(sv->l, &s) != 0)
    return NULL;
  sv->accepted++;
  char c;
  if (weft_stream_read(s, &c, 1) == 1)
    weft_stream_write(s, &c, 1);
  weft_stream_close(s);
  return NULL;
}

/* Connects to host:port and exchanges one byte. */
static int ping(const char *host, int port) {
  weft_stream_t *s;
  int err = weft_tcp_connect(&s, host, port);
  if (err)
    return err;
  char c = 'x';
  assert_int_equal(weft_stream_write(s, &c, 1), 0);
  c = 0;
  assert_int_equal(weft_stream_read(s, &c, 1), 1);
  assert_int_equal(c, 'x');
  assert_int_equal(weft_stream_close(s), 0);
  return 0;
}

static void serve_and_ping(const char *listen_host, const char *connect_host) {
  srv_t sv = {0};
  assert_int_equal(weft_tcp_listen(&sv.l, listen_host, 0, NULL), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, srv_one, &sv, &t), 0);
  assert_int_equal(ping(connect_host, weft_listener_port(sv.l)), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(sv.accepted, 1);
  assert_int_equal(weft_listener_close(sv.l), 0);
}

static void run_closes_fds(weft_fn main) {
  int fds = wt_count_fds();
  assert_int_equal(weft_run(main, NULL, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* ------------------------------------------------------------ cases */

static void *localhost_main(void *arg) {
  (void)arg;
  /* "localhost" resolves (to 127.0.0.1, and ::1 where /etc/hosts says so:
   * the connect fails over to the listener's address either way). */
  serve_and_ping("127.0.0.1", "localhost");
  serve_and_ping("localhost", "localhost");
  serve_and_ping("localhost", "127.0.0.1");
  return NULL;
}

static void resolve_localhost(void **state) {
  (void)state;
  run_closes_fds(localhost_main);
}

static void *ipv6_main(void *arg) {
  (void)arg;
  serve_and_ping("::1", "::1");
  /* A listener on "::" takes IPv6 loopback too. */
  serve_and_ping("::", "::1");
  return NULL;
}

static void resolve_ipv6_literal(void **state) {
  (void)state;
  if (!have_ipv6_loopback())
    skip();
  run_closes_fds(ipv6_main);
}

/* Connects to "multi.test" and closes; g_took: how long the connect took. */
static double g_took;

static void *timed_connect_main(void *arg) {
  (void)arg;
  double t0 = wt_now_ms();
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, "multi.test", 1), 0);
  g_took = wt_now_ms() - t0;
  assert_int_equal(weft_stream_close(s), 0);
  print_message("connected after %.0f ms\n", g_took);
  return NULL;
}

/* The name's first address refuses (::1 on a port nobody listens on, or
 * 127.0.0.1 without IPv6): the next one is tried at once, not 250 ms on. */

static void resolve_failover_on_refusal(void **state) {
  (void)state;
  int good;
  int lfd = raw_listen(AF_INET, 16, &good);
  assert_true(lfd >= 0);
  int refused = closed_port();
  hook_answer("multi.test");
  hook_add(have_ipv6_loopback() ? AF_INET6 : AF_INET, refused);
  hook_add(AF_INET, good);
  int fds = wt_count_fds();
  assert_int_equal(weft_run(timed_connect_main, NULL, NULL), 0);
  /* Well under the attempt delay: the refusal started the next at once
   * (a generous bound for loaded and sanitizer builds). */
  assert_true(g_took < 240);
  assert_int_equal(wt_count_fds(), fds);
  assert_int_equal(drain_accepts(lfd), 1);
  close(lfd);
}

/* The first address never answers: after 250 ms the second is tried, wins,
 * and the first attempt is closed. */
static void resolve_happy_eyeballs_delay(void **state) {
  (void)state;
  int fds = wt_count_fds();
  blackhole_t b;
  blackhole_open(&b);
  int good;
  int lfd = raw_listen(AF_INET, 16, &good);
  assert_true(lfd >= 0);
  hook_answer("multi.test");
  hook_add(AF_INET, b.port);
  hook_add(AF_INET, good);
  int during = wt_count_fds();
  assert_int_equal(weft_run(timed_connect_main, NULL, NULL), 0);
  assert_true(g_took >= 200); /* 250 by the loop's clock, which may lag a step */
  assert_true(g_took < 5000);
  /* The losing attempt's socket is closed, not left hanging. */
  assert_int_equal(wt_count_fds(), during);
  assert_int_equal(drain_accepts(lfd), 1);
  close(lfd);
  blackhole_close(&b);
  assert_int_equal(wt_count_fds(), fds);
}

/* Every address refuses: the first address's error. */
static void *all_refused_main(void *arg) {
  (void)arg;
  weft_stream_t *s = (weft_stream_t *)1;
  assert_int_equal(weft_tcp_connect(&s, "multi.test", 1), UV_ECONNREFUSED);
  assert_null(s);
  return NULL;
}

static void resolve_all_addresses_refused(void **state) {
  (void)state;
  hook_answer("multi.test");
  hook_add(AF_INET, closed_port());
  hook_add(AF_INET, closed_port());
  if (have_ipv6_loopback())
    hook_add(AF_INET6, closed_port());
  run_closes_fds(all_refused_main);
}

/* Unknown names: ".invalid" at once; a name DNS does not know, within a
 * deadline (whatever DNS does here: answers no, fails, or is not there). */
static void *unknown_main(void *arg) {
  (void)arg;
  weft_stream_t *s = (weft_stream_t *)1;
  weft_listener_t *l = (weft_listener_t *)1;
  double t0 = wt_now_ms();
  assert_int_equal(weft_tcp_connect(&s, "no-such-host.invalid", 80), UV_EAI_NONAME);
  assert_null(s);
  assert_int_equal(weft_tcp_connect(&s, "INVALID.", 80), UV_EAI_NONAME);
  assert_int_equal(weft_tcp_listen(&l, "no-such-host.invalid", 0, NULL), UV_EAI_NONAME);
  assert_null(l);
  assert_true(wt_now_ms() - t0 < 1000);
  assert_non_null(strstr(weft_strerror(UV_EAI_NONAME), "unknown"));
  assert_non_null(strstr(weft_strerror(UV_EAI_AGAIN), "try again"));

  assert_int_equal(weft_deadline_push(2000), 0);
  t0 = wt_now_ms();
  int rc = weft_tcp_connect(&s, "weft-no-such-host.test", 80);
  double took = wt_now_ms() - t0;
  assert_int_equal(weft_deadline_pop(), 0);
  print_message("weft-no-such-host.test: %s after %.0f ms\n", weft_strerror(rc), took);
  assert_true(rc == UV_EAI_NONAME || rc == UV_EAI_NODATA || rc == UV_EAI_AGAIN ||
              rc == UV_EAI_FAIL || rc == WEFT_ETIMEDOUT);
  assert_true(took < 4000);
  return NULL;
}

static void resolve_unknown_name(void **state) {
  (void)state;
  assert_int_equal(weft_run(unknown_main, NULL, NULL), 0);
  /* On a plain thread the name resolves inline, with the same answer. */
  weft_listener_t *l = NULL;
  assert_int_equal(weft_tcp_listen(&l, "nothing.invalid", 0, NULL), UV_EAI_NONAME);
  assert_null(l);
}

/* A listener on a name binds its first IPv4 address; from a task the name
 * goes through the resolver threads, from a plain thread inline. */
static void *listen_name_main(void *arg) {
  (void)arg;
  serve_and_ping("multi.test", "127.0.0.1");
  return NULL;
}

static void resolve_listen_on_name(void **state) {
  (void)state;
  hook_answer("multi.test");
  hook_add(AF_INET6, 0);
  hook_add(AF_INET, 0);
  run_closes_fds(listen_name_main);
  int fds = wt_count_fds();
  weft_listener_t *l;
  assert_int_equal(weft_tcp_listen(&l, "multi.test", 0, NULL), 0);
  int port = weft_listener_port(l);
  assert_true(port > 0);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sin;
  uv_ip4_addr("127.0.0.1", port, &sin);
  assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
  close(fd);
  assert_int_equal(weft_listener_close(l), 0);
  assert_int_equal(wt_count_fds(), fds);
}

/* A cut while the name resolves, and while it waits in the queue behind
 * two held resolutions: the task leaves at once, and the requests (held
 * by the threads, or taken out of the queue) are freed: the ASan build
 * fails on a leak. */
typedef struct conn_try {
  const char *host;
  uint64_t deadline_ms;   /* 0: none */
  int rc;
  double took;
} conn_try_t;

static void *conn_try_task(void *arg) {
  conn_try_t *c = arg;
  weft_stream_t *s = NULL;
  if (c->deadline_ms)
    weft_deadline_push(c->deadline_ms);
  double t0 = wt_now_ms();
  c->rc = weft_tcp_connect(&s, c->host, 1);
  c->took = wt_now_ms() - t0;
  if (c->deadline_ms)
    weft_deadline_pop();
  if (c->rc == 0)
    weft_stream_close(s);
  return NULL;
}

static void *cut_resolving_main(void *arg) {
  (void)arg;
  atomic_store(&H.hold, 1);
  conn_try_t held[2] = {{.host = "multi.test"}, {.host = "multi.test"}};
  weft_task_t *ht[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(NULL, conn_try_task, &held[i], &ht[i]), 0);
  /* Both resolver threads are inside the hook. */
  while (atomic_load(&H.entered) < 2)
    assert_int_equal(weft_sleep(1), 0);
  /* Queued behind them: cancelled, and out of time. */
  conn_try_t queued = {.host = "multi.test"};
  conn_try_t late = {.host = "multi.test", .deadline_ms = 100};
  weft_task_t *qt, *lt;
  assert_int_equal(weft_spawn(NULL, conn_try_task, &queued, &qt), 0);
  assert_int_equal(weft_spawn(NULL, conn_try_task, &late, &lt), 0);
  assert_int_equal(weft_sleep(20), 0);
  assert_int_equal(weft_task_cancel(qt), 0);
  assert_int_equal(weft_await(qt, NULL), WEFT_ECANCELED);
  assert_int_equal(queued.rc, WEFT_ECANCELED);
  assert_int_equal(weft_await(lt, NULL), 0);
  assert_int_equal(late.rc, WEFT_ETIMEDOUT);
  /* Being resolved: one cancelled, the other out of time... */
  assert_int_equal(weft_task_cancel(ht[0]), 0);
  assert_int_equal(weft_await(ht[0], NULL), WEFT_ECANCELED);
  assert_int_equal(held[0].rc, WEFT_ECANCELED);
  assert_int_equal(atomic_load(&H.left), 0); /* ...while the threads still hold them */
  assert_int_equal(atomic_load(&H.entered), 2); /* the queued ones never reached a thread */
  /* The other one gets its answer once released. */
  atomic_store(&H.hold, 0);
  assert_int_equal(weft_await(ht[1], NULL), 0);
  assert_int_equal(held[1].rc, 0);
  weft_task_release(ht[0]);
  weft_task_release(ht[1]);
  weft_task_release(qt);
  weft_task_release(lt);
  /* The abandoned answer was freed by its thread. */
  while (atomic_load(&H.left) < 2)
    assert_int_equal(weft_sleep(1), 0);
  return NULL;
}

static void resolve_cut_while_resolving(void **state) {
  (void)state;
  int good;
  int lfd = raw_listen(AF_INET, 16, &good);
  assert_true(lfd >= 0);
  hook_answer("multi.test");
  hook_add(AF_INET, good);
  int fds = wt_count_fds();
  assert_int_equal(weft_run(cut_resolving_main, NULL, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
  assert_int_equal(drain_accepts(lfd), 1);
  close(lfd);
}

/* A cut while the attempts run (one to a blackhole, one started after the
 * delay to another): every attempt is closed. */
static void *cut_connecting_main(void *arg) {
  (void)arg;
  conn_try_t c = {.host = "multi.test", .deadline_ms = 400};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, conn_try_task, &c, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(c.rc, WEFT_ETIMEDOUT);
  assert_true(c.took >= 350 && c.took < 3000);

  c = (conn_try_t){.host = "multi.test"};
  assert_int_equal(weft_spawn(NULL, conn_try_task, &c, &t), 0);
  assert_int_equal(weft_sleep(300), 0); /* both attempts under way */
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(c.rc, WEFT_ECANCELED);
  return NULL;
}

static void resolve_cut_while_connecting(void **state) {
  (void)state;
  blackhole_t b1, b2;
  blackhole_open(&b1);
  blackhole_open(&b2);
  hook_answer("multi.test");
  hook_add(AF_INET, b1.port);
  hook_add(AF_INET, b2.port);
  int fds = wt_count_fds();
  assert_int_equal(weft_run(cut_connecting_main, NULL, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
  blackhole_close(&b1);
  blackhole_close(&b2);
}

/* The queue of names holds 64: past that, WEFT_ENOBUFS at once. */
#define QUEUE_MAX 64

static int g_refused;

static void *queue_full_main(void *arg) {
  (void)arg;
  atomic_store(&H.hold, 1);
  enum { N = 2 + QUEUE_MAX };
  conn_try_t *c = calloc(N, sizeof *c);
  weft_task_t **t = calloc(N, sizeof *t);
  /* Two names held by the two threads, then 64 queued behind them. */
  for (int i = 0; i < N; i++) {
    c[i].host = "multi.test";
    assert_int_equal(weft_spawn(NULL, conn_try_task, &c[i], &t[i]), 0);
    if (i == 1)
      while (atomic_load(&H.entered) < 2)
        assert_int_equal(weft_sleep(1), 0);
  }
  assert_int_equal(weft_sleep(10), 0); /* every task has queued its name */
  weft_stream_t *s;
  double t0 = wt_now_ms();
  assert_int_equal(weft_tcp_connect(&s, "multi.test", 1), WEFT_ENOBUFS);
  assert_true(wt_now_ms() - t0 < 100);
  /* A literal needs no resolver. */
  assert_int_equal(weft_tcp_connect(&s, "127.0.0.1", g_refused), UV_ECONNREFUSED);
  atomic_store(&H.hold, 0);
  assert_int_equal(weft_gather(t, N, NULL, NULL), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(c[i].rc, UV_ECONNREFUSED);
    weft_task_release(t[i]);
  }
  free(c);
  free(t);
  return NULL;
}

static void resolve_queue_limit(void **state) {
  (void)state;
  g_refused = closed_port();
  hook_answer("multi.test");
  hook_add(AF_INET, g_refused);
  run_closes_fds(queue_full_main);
}

/* libuv's pool is full of blocking weft_to_thread work, and a name still
 * resolves: the resolver has threads of its own. */
static atomic_int g_release, g_blocked;

static void *blocking_work(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_blocked, 1);
  while (!atomic_load(&g_release))
    uv_sleep(1);
  return NULL;
}

static void *to_thread_task(void *arg) {
  (void)arg;
  assert_int_equal(weft_to_thread(blocking_work, NULL, NULL), 0);
  return NULL;
}

static void *not_shared_main(void *arg) {
  (void)arg;
  const char *env = getenv("UV_THREADPOOL_SIZE");
  int n = env && atoi(env) > 0 ? atoi(env) : 4;
  weft_task_t **t = calloc((size_t)n, sizeof *t);
  for (int i = 0; i < n; i++)
    assert_int_equal(weft_spawn(NULL, to_thread_task, NULL, &t[i]), 0);
  while (atomic_load(&g_blocked) < n)
    assert_int_equal(weft_sleep(1), 0);
  /* Every libuv pool thread is held. */
  srv_t sv = {0};
  assert_int_equal(weft_tcp_listen(&sv.l, "127.0.0.1", 0, NULL), 0);
  weft_task_t *st;
  assert_int_equal(weft_spawn(NULL, srv_one, &sv, &st), 0);
  assert_int_equal(weft_deadline_push(5000), 0);
  assert_int_equal(ping("localhost", weft_listener_port(sv.l)), 0);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(atomic_load(&g_release), 0);
  assert_int_equal(weft_await(st, NULL), 0);
  weft_task_release(st);
  assert_int_equal(weft_listener_close(sv.l), 0);
  atomic_store(&g_release, 1);
  assert_int_equal(weft_gather(t, (size_t)n, NULL, NULL), 0);
  for (int i = 0; i < n; i++)
    weft_task_release(t[i]);
  free(t);
  return NULL;
}

static void resolve_not_on_libuv_pool(void **state) {
  (void)state;
  run_closes_fds(not_shared_main);
}

/* Idle resolver threads end, and the next name starts one again. */
static void *idle_main(void *arg) {
  (void)arg;
  serve_and_ping("127.0.0.1", "localhost");
  double t0 = wt_now_ms();
  while (weft__resolve_threads() > 0) {
    assert_true(wt_now_ms() - t0 < 5000);
    assert_int_equal(weft_sleep(5), 0);
  }
  serve_and_ping("127.0.0.1", "localhost");
  return NULL;
}

static void resolve_idle_threads_end(void **state) {
  (void)state;
  weft__resolve_idle_ms = 50;
  run_closes_fds(idle_main);
}

static void *misuse_main(void *arg) {
  (void)arg;
  weft_stream_t *s = NULL;
  weft_listener_t *l = NULL;
  char longname[300];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  assert_int_equal(weft_tcp_connect(&s, "not a name", 80), WEFT_EINVAL);
  assert_int_equal(weft_tcp_connect(&s, "", 80), WEFT_EINVAL);
  assert_int_equal(weft_tcp_connect(&s, "a..b", 80), WEFT_EINVAL);
  assert_int_equal(weft_tcp_connect(&s, longname, 80), WEFT_EINVAL);
  assert_int_equal(weft_tcp_connect(&s, "localhost", 70000), WEFT_EINVAL);
  assert_int_equal(weft_tcp_connect(&s, "localhost", -1), WEFT_EINVAL);
  assert_int_equal(weft_tcp_listen(&l, "not a name", 0, NULL), WEFT_EINVAL);
  assert_int_equal(weft_tcp_listen(&l, "localhost", 70000, NULL), WEFT_EINVAL);
  assert_null(s);
  assert_null(l);
  /* A cancel pending as the call begins: nothing is resolved. */
  int entered = atomic_load(&H.entered);
  weft_task_cancel(weft_task_current());
  assert_int_equal(weft_tcp_connect(&s, "multi.test", 80), WEFT_ECANCELED);
  assert_int_equal(weft_tcp_listen(&l, "multi.test", 0, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&H.entered), entered);
  return NULL;
}

/* From a libuv callback a name cannot be waited for. */
static void listen_in_callback(void *arg) {
  weft_listener_t *l = NULL;
  *(int *)arg = weft_tcp_listen(&l, "multi.test", 0, NULL);
}

static void *callback_main(void *arg) {
  (void)arg;
  int rc = 1;
  assert_int_equal(weft_loop_call_soon(weft_loop_current(), listen_in_callback, &rc), 0);
  assert_int_equal(weft_sleep(10), 0);
  assert_int_equal(rc, WEFT_ENOTASK);
  return NULL;
}

static void resolve_misuse(void **state) {
  (void)state;
  hook_answer("multi.test");
  hook_add(AF_INET, 1);
  int fds = wt_count_fds();
  assert_int_equal(weft_run(misuse_main, NULL, NULL), WEFT_ECANCELED);
  assert_int_equal(weft_run(callback_main, NULL, NULL), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, "localhost", 80), WEFT_ENOTASK);
  assert_int_equal(wt_count_fds(), fds);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(resolve_localhost),
    cmocka_unit_test(resolve_ipv6_literal),
    cmocka_unit_test(resolve_failover_on_refusal),
    cmocka_unit_test(resolve_happy_eyeballs_delay),
    cmocka_unit_test(resolve_all_addresses_refused),
    cmocka_unit_test(resolve_unknown_name),
    cmocka_unit_test(resolve_listen_on_name),
    cmocka_unit_test(resolve_cut_while_resolving),
    cmocka_unit_test(resolve_cut_while_connecting),
    cmocka_unit_test(resolve_queue_limit),
    cmocka_unit_test(resolve_not_on_libuv_pool),
    cmocka_unit_test(resolve_idle_threads_end),
    cmocka_unit_test(resolve_misuse),
};

WT_MAIN("resolve", tests)
