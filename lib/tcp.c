/* Listeners: a listening TCP port and the loops that accept from it.
 *
 * A listener has a slot per accepting loop. In SINGLE and REUSEPORT modes a
 * slot owns a listening socket, and weft_tcp_accept calls accept4 on it
 * directly from the task; only when the kernel's queue is empty does the
 * task wait, on a uv_poll_t that lives for the length of the waits (so no
 * handle outlives the tasks that use it). In HANDOFF and LEAST_LOADED modes
 * one socket belongs to an acceptor task on the pool's loop 0, which sends
 * each accepted fd over the chosen loop's channel; weft_tcp_accept on that
 * loop receives it and makes the stream there. Handing over an fd rather
 * than a libuv handle is what lets a connection change threads.
 *
 * Closing: shutdown(2) on a listening socket makes it readable and accept
 * fail, which wakes every loop's waiters at once with no message to any of
 * them; the slots' channels are closed too. The listener is reference
 * counted (the application, each accept in progress, each poll handle, the
 * acceptor task, each stream it made), so whatever closes last frees it, on
 * whatever thread.
 *
 * Out of file descriptors, accept fails with EMFILE while the kernel's
 * queue stays readable: a loop that polled again would spin. The accepting
 * task sleeps 100 ms instead and tries again.
 *
 * Accepting waits only when nothing is queued, so a loop that finds many
 * connections waiting hands them out in bursts of ACCEPT_BURST, with a poll
 * of the loop between two bursts. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_BACKLOG 511
#define DEFAULT_QUEUE 256
#define EMFILE_PAUSE_MS 100
/* Connections an accepting loop hands out between two of its polls, at
 * most. Accepting does not wait while connections are queued (in the
 * kernel, or in the loop's channel), and an application starts a task for
 * each, whose first step runs in the next round. A loop that found hundreds
 * queued (it was busy, the machine was loaded, a crowd came at once) would
 * start them all before it polled again, since a round with tasks ready
 * skips its poll (WEFT__POLL_EVERY): every other connection of the loop,
 * the new ones' own first bytes included, would wait for all of them. Under
 * TSan, where a new task's first step costs milliseconds, such a stretch
 * outlasted the echo sample's 5 s idle deadline. Past this many, the next
 * accept waits for the loop's next poll: a timer due at once, so no system
 * call of its own. Small, so that a round stays short where starting a task
 * is dear; a crowd of a thousand still comes in within some sixty polls.
 * (nginx, by default, accepts one connection per event.) */
#define ACCEPT_BURST 16

typedef struct slot {
  weft_listener_t *l;
  int fd;                      /* the listening socket, or -1 (dispatched) */
  _Atomic(weft_loop_t *) loop; /* the loop that accepts from it */
  /* Tasks of that loop waiting for fd to be readable. */
  uv_poll_t *poll;
  weft__io_t io;
  weft__queue_t waiters;
  /* HANDOFF, LEAST_LOADED: fds handed to this loop. */
  weft_chan_t *conns;
  /* Connections handed out since this slot's loop last polled, as far as
   * its accepts can tell (see ACCEPT_BURST): the count starts again after a
   * wait that only a poll ends (the socket's readiness, a timer), not after
   * a wait on the channel, which a message from another thread ends.
   * Touched only on the slot's loop. */
  unsigned burst;
  atomic_long open;            /* streams (and fds on the way) of this loop */
} slot_t;

struct weft_listener {
  weft_listen_mode_t mode;
  weft_pool_t *pool;
  int port;
  unsigned nslots;
  slot_t *slots;               /* one per pool loop (SINGLE: one) */
  slot_t acc;                  /* HANDOFF, LEAST_LOADED: the acceptor's */
  unsigned next;               /* HANDOFF's round-robin */
  atomic_int refs;
  atomic_bool closed;
  char *path;                  /* a Unix-domain listener's file, removed at close */
  dev_t dev;                   /* ... if it is still the file bound (stat) */
  ino_t ino;
};

typedef struct accept_wait {
  weft__wait_t base;
  weft__queue_t link;
  slot_t *slot;
} accept_wait_t;

/* ------------------------------------------------------------ addresses */

int weft__tcp_addr(const char *host, int port, struct sockaddr_storage *ss) {
  if (port < 0 || port > 65535)
    return WEFT_EINVAL;
  if (!host || strcmp(host, "localhost") == 0)
    host = host ? "127.0.0.1" : "0.0.0.0";
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return WEFT_EINVAL;
}

static socklen_t addr_len(const struct sockaddr_storage *ss) {
  return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int weft__fd_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
      (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
    return -1; /* a Unix-domain socket has no port */
  return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                        : ((struct sockaddr_in *)&ss)->sin_port);
}

/* A bound, listening, non-blocking socket on ss (whose port is set). */
static int open_listener(struct sockaddr_storage *ss, bool reuseport, int backlog, int *out) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
      bind(fd, (struct sockaddr *)ss, addr_len(ss)) != 0 || listen(fd, backlog) != 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  *out = fd;
  return 0;
}

/* ------------------------------------------------------------- lifetime */

static void close_fd_msg(void *msg) {
  close((int)(intptr_t)msg);
}

static void slot_free(slot_t *sl) {
  if (sl->fd >= 0)
    close(sl->fd);
  if (sl->conns) {
    void *msg;
    while (weft_chan_try_recv(sl->conns, &msg) == 0)
      close_fd_msg(msg);
    weft_chan_release(sl->conns);
  }
}

static void listener_ref(weft_listener_t *l) {
  atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
}

static void listener_unref(weft_listener_t *l) {
  if (atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) != 1)
    return;
  for (unsigned i = 0; i < l->nslots; i++)
    slot_free(&l->slots[i]);
  slot_free(&l->acc);
  free(l->slots);
  free(l->path);
  free(l);
}

static void slot_init(slot_t *sl, weft_listener_t *l) {
  sl->l = l;
  sl->fd = -1;
  atomic_init(&sl->loop, NULL);
  weft__queue_init(&sl->waiters);
  atomic_init(&sl->open, 0);
}

/* --------------------------------------------- waiting for a connection */

static void poll_close_cb(uv_handle_t *h) {
  slot_t *sl = h->data;
  free(h);
  listener_unref(sl->l);
}

static void poll_end(slot_t *sl) {
  weft__io_remove(atomic_load_explicit(&sl->loop, memory_order_relaxed), &sl->io);
  uv_close((uv_handle_t *)sl->poll, poll_close_cb);
  sl->poll = NULL;
}

static void poll_force_close(weft__io_t *io) {
  poll_end(weft__container_of(io, slot_t, io));
}

/* Readable (or an error): every waiter tries accept again. */
static void poll_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  slot_t *sl = h->data;
  while (!weft__queue_empty(&sl->waiters)) {
    weft__queue_t *q = weft__queue_head(&sl->waiters);
    weft__queue_remove(q);
    weft__wake(&weft__container_of(q, accept_wait_t, link)->base, 0, WEFT_WAKE_DONE);
  }
  poll_end(sl);
}

static bool accept_interrupt(weft__wait_t *base, int err) {
  (void)err;
  accept_wait_t *w = weft__container_of(base, accept_wait_t, base);
  weft__queue_remove(&w->link);
  if (weft__queue_empty(&w->slot->waiters))
    poll_end(w->slot);
  return true;
}

static int wait_readable(slot_t *sl, weft_task_t *t) {
  weft_loop_t *loop = t->loop;
  if (!sl->poll) {
    uv_poll_t *p = weft__malloc(sizeof *p);
    if (!p)
      return WEFT_ENOMEM;
    int err = uv_poll_init(loop->uv, p, sl->fd);
    if (err) {
      free(p);
      return err;
    }
    p->data = sl;
    if ((err = uv_poll_start(p, UV_READABLE, poll_cb)) != 0) {
      uv_close((uv_handle_t *)p, (uv_close_cb)free);
      return err;
    }
    sl->poll = p;
    listener_ref(sl->l);
    weft__io_add(loop, &sl->io, (uv_handle_t *)p, poll_force_close);
  }
  accept_wait_t w = {
    .base = {.task = t, .kind = WEFT_WAIT_ACCEPT, .interrupt = accept_interrupt},
    .slot = sl,
  };
  weft__queue_insert_tail(&sl->waiters, &w.link);
  return weft__park(&w.base);
}

/* ---------------------------------------------- a burst, then a poll */

typedef struct poll_wait {
  weft__wait_t base;
  weft__timer_t timer;
} poll_wait_t;

static void next_poll_fire(weft__timer_t *timer) {
  poll_wait_t *w = weft__container_of(timer, poll_wait_t, timer);
  weft__wake(&w->base, 0, WEFT_WAKE_DONE);
}

static bool next_poll_interrupt(weft__wait_t *base, int err) {
  (void)err;
  poll_wait_t *w = weft__container_of(base, poll_wait_t, base);
  weft__timer_stop(base->task->loop, &w->timer);
  return true;
}

/* Waits (await point) until t's loop has polled libuv. A timer due now does
 * it: a round never skips its poll while a timer is due, and libuv runs the
 * timer in that poll's iteration, just before it polls for I/O. */
static int wait_next_poll(weft_task_t *t) {
  weft_loop_t *loop = t->loop;
  poll_wait_t w = {
    .base = {.task = t, .kind = WEFT_WAIT_ACCEPT, .interrupt = next_poll_interrupt},
  };
  weft__timer_init(&w.timer, next_poll_fire);
  w.base.what = &w.timer;
  weft__timer_start(loop, &w.timer, weft__now(loop));
  return weft__park(&w.base);
}

/* Before an accept from sl hands out another connection: past a burst, the
 * loop polls first, and the count starts again. */
static int burst_check(slot_t *sl, weft_task_t *t) {
  if (sl->burst < ACCEPT_BURST)
    return 0;
  sl->burst = 0;
  return wait_next_poll(t);
}

/* Accepts one connection from sl's socket in task t (await point). */
static int accept_fd(slot_t *sl, weft_task_t *t, int *fd) {
  for (;;) {
    if (atomic_load_explicit(&sl->l->closed, memory_order_acquire))
      return WEFT_ECLOSED;
    int err = burst_check(sl, t);
    if (err)
      return err;
    *fd = accept4(sl->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (*fd >= 0) {
      sl->burst++;
      return 0;
    }
    switch (errno) {
    case EAGAIN:
#if EAGAIN != EWOULDBLOCK
    case EWOULDBLOCK:
#endif
      sl->burst = 0;
      err = wait_readable(sl, t);
      break;
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
      sl->burst = 0;
      err = weft_sleep(EMFILE_PAUSE_MS);
      break;
    case EINVAL:
      /* A listening socket shut down by weft_listener_close. */
      return atomic_load(&sl->l->closed) ? WEFT_ECLOSED : WEFT_EINVAL;
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
      err = 0; /* that connection's trouble, not the listener's (accept(2)) */
      break;
    default:
      return -errno;
    }
    if (err)
      return err;
  }
}

/* ---------------------------------------------------- dispatching modes */

/* The loop a new connection goes to. */
static slot_t *pick(weft_listener_t *l) {
  if (l->mode == WEFT_LISTEN_HANDOFF)
    return &l->slots[l->next++ % l->nslots];
  slot_t *best = &l->slots[0];
  long least = atomic_load_explicit(&best->open, memory_order_relaxed);
  for (unsigned i = 1; i < l->nslots; i++) {
    long n = atomic_load_explicit(&l->slots[i].open, memory_order_relaxed);
    if (n < least) {
      least = n;
      best = &l->slots[i];
    }
  }
  return best;
}

/* Hands fd to a loop: the chosen one, or if its queue is full the next with
 * room; if all are full, waits for the chosen one (backpressure: the
 * kernel's queue holds the rest meanwhile). A loop's count goes up before
 * the send, since the stream may close before the send returns. */
static int dispatch(weft_listener_t *l, int fd) {
  slot_t *first = pick(l);
  void *msg = (void *)(intptr_t)fd;
  int err = WEFT_EAGAIN;
  for (unsigned i = 0; i < l->nslots && err == WEFT_EAGAIN; i++) {
    slot_t *sl = &l->slots[((unsigned)(first - l->slots) + i) % l->nslots];
    atomic_fetch_add_explicit(&sl->open, 1, memory_order_relaxed);
    if ((err = weft_chan_try_send(sl->conns, msg)) != 0)
      atomic_fetch_sub_explicit(&sl->open, 1, memory_order_relaxed);
  }
  if (err == WEFT_EAGAIN) {
    atomic_fetch_add_explicit(&first->open, 1, memory_order_relaxed);
    if ((err = weft_chan_send(first->conns, msg)) != 0)
      atomic_fetch_sub_explicit(&first->open, 1, memory_order_relaxed);
  }
  if (err)
    close(fd);
  return err;
}

static void *acceptor_main(void *arg) {
  weft_listener_t *l = arg;
  weft_task_t *t = weft_task_current();
  int fd, err;
  while ((err = accept_fd(&l->acc, t, &fd)) == 0)
    if ((err = dispatch(l, fd)) != 0 && err != WEFT_ENOMEM)
      break;
  listener_unref(l);
  return NULL;
}

/* ------------------------------------------------------------------ API */

/* Where a listener binds: a literal (or "localhost", 127.0.0.1) at once; a
 * name's first IPv4 address, else its first, as Go's net.Listen does. A
 * name is resolved on weft's resolver threads from a task (an await
 * point), inline on a plain thread; a libuv callback cannot wait. */
static int listen_addr(const char *host, int port, struct sockaddr_storage *ss) {
  if (port < 0 || port > 65535)
    return WEFT_EINVAL;
  if (weft__tcp_addr(host, port, ss) == 0)
    return 0;
  if (!weft__resolve_name_ok(host)) {
    weft__misuse("weft_tcp_listen", "\"%s\" is neither an address nor a host name", host);
    return WEFT_EINVAL;
  }
  weft_task_t *t;
  int err = weft__waiter_caller(&t, "weft_tcp_listen");
  if (err)
    return err;
  weft__addrs_t found;
  if ((err = weft__resolve(t, host, port, true, &found)) != 0)
    return err;
  size_t pick = 0;
  while (pick < found.n && found.a[pick].ss_family != AF_INET)
    pick++;
  *ss = found.a[pick < found.n ? pick : 0];
  return 0;
}

/* weft_tcp_listen's sockets: on addr; under REUSEPORT every socket after
 * the first binds the port the first one got (a port 0 asked for any). */
typedef struct tcp_open {
  struct sockaddr_storage ss;
  bool bound;
} tcp_open_t;

static int tcp_open(void *ctx, bool reuseport, int backlog, int *fd) {
  tcp_open_t *o = ctx;
  int err = open_listener(&o->ss, reuseport, backlog, fd);
  if (!err && reuseport && !o->bound) {
    o->bound = true;
    uint16_t port = htons((uint16_t)weft__fd_port(*fd));
    if (o->ss.ss_family == AF_INET6)
      ((struct sockaddr_in6 *)&o->ss)->sin6_port = port;
    else
      ((struct sockaddr_in *)&o->ss)->sin_port = port;
  }
  return err;
}

int weft_tcp_listen(weft_listener_t **out, const char *host, int port,
                    const weft_listen_opts_t *opts) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  tcp_open_t o = {.bound = false};
  int err = listen_addr(host, port, &o.ss);
  if (err)
    return err;
  return weft__listener_new(out, opts, "weft_tcp_listen", tcp_open, &o, NULL);
}

int weft_listener_port(const weft_listener_t *l) {
  return l ? l->port : -1;
}

/* A listener of opts->mode whose sockets open() makes (unix.c's, adopted
 * ones; the shape weft_tcp_listen builds too). */
int weft__listener_new(weft_listener_t **out, const weft_listen_opts_t *opts, const char *fn,
                       weft__listen_open_fn open, void *ctx, const char *path) {
  weft_listen_opts_t defaults = {0};
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (!opts)
    opts = &defaults;
  if ((unsigned)opts->mode > WEFT_LISTEN_LEAST_LOADED) {
    weft__misuse(fn, "unknown mode %d", (int)opts->mode);
    return WEFT_EINVAL;
  }
  bool dispatched = opts->mode == WEFT_LISTEN_HANDOFF || opts->mode == WEFT_LISTEN_LEAST_LOADED;
  if (opts->mode != WEFT_LISTEN_SINGLE && !opts->pool) {
    weft__misuse(fn, "this mode needs opts->pool");
    return WEFT_EINVAL;
  }
  weft_listener_t *l = weft__calloc(1, sizeof *l);
  if (!l)
    return WEFT_ENOMEM;
  atomic_init(&l->refs, 1);
  atomic_init(&l->closed, false);
  l->mode = opts->mode;
  l->pool = opts->mode == WEFT_LISTEN_SINGLE ? NULL : opts->pool;
  l->nslots = l->pool ? weft_pool_size(l->pool) : 1;
  slot_init(&l->acc, l);
  if (!(l->slots = weft__calloc(l->nslots, sizeof *l->slots))) {
    free(l);
    return WEFT_ENOMEM;
  }
  for (unsigned i = 0; i < l->nslots; i++) {
    slot_init(&l->slots[i], l);
    if (l->pool)
      atomic_init(&l->slots[i].loop, weft_pool_loop(l->pool, i));
  }
  int err = 0;
  if (path && (l->path = weft__malloc(strlen(path) + 1)) != NULL)
    memcpy(l->path, path, strlen(path) + 1);
  else if (path)
    err = WEFT_ENOMEM;
  int backlog = opts->backlog > 0 ? opts->backlog : DEFAULT_BACKLOG;
  /* REUSEPORT: a socket per loop; else one, the acceptor's if dispatched. */
  unsigned nsocks = opts->mode == WEFT_LISTEN_REUSEPORT ? l->nslots : 1;
  for (unsigned i = 0; i < nsocks && !err; i++)
    err = open(ctx, nsocks > 1, backlog, dispatched ? &l->acc.fd : &l->slots[i].fd);
  struct stat st;
  if (!err && l->path && stat(l->path, &st) == 0) {
    l->dev = st.st_dev;
    l->ino = st.st_ino;
  }
  for (unsigned i = 0; dispatched && i < l->nslots && !err; i++)
    err = weft_chan_new(&l->slots[i].conns, opts->queue ? opts->queue : DEFAULT_QUEUE);
  if (!err && dispatched) {
    listener_ref(l); /* the acceptor's */
    atomic_init(&l->acc.loop, weft_pool_loop(l->pool, 0));
    if ((err = weft_spawn(weft_pool_loop(l->pool, 0), acceptor_main, l, NULL)) != 0)
      atomic_fetch_sub(&l->refs, 1);
  }
  if (err) {
    listener_unref(l);
    return err;
  }
  l->port = weft__fd_port(dispatched ? l->acc.fd : l->slots[0].fd);
  *out = l;
  return 0;
}

/* weft_listener_adopt's socket: the descriptor it was given, once. */
static int adopted_open(void *ctx, bool reuseport, int backlog, int *fd) {
  (void)reuseport;
  (void)backlog;
  *fd = *(int *)ctx;
  *(int *)ctx = -1;
  return 0;
}

int weft_listener_adopt(weft_listener_t **out, int fd, const weft_listen_opts_t *opts) {
  static const char fn[] = "weft_listener_adopt";
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (opts && opts->mode == WEFT_LISTEN_REUSEPORT) {
    weft__misuse(fn, "an adopted socket is one socket: REUSEPORT needs one per loop");
    return UV_ENOTSUP;
  }
  int family;
  int err = weft__sock_check(fd, true, &family);
  if (err)
    return err;
  /* The listener takes a copy, so that on failure fd is the caller's,
   * untouched but for O_NONBLOCK (which accepting needs). */
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0)
    return -errno;
  int flags = fcntl(copy, F_GETFL);
  if (flags < 0 || fcntl(copy, F_SETFL, flags | O_NONBLOCK) != 0) {
    err = -errno;
    close(copy);
    return err;
  }
  int give = copy;
  if ((err = weft__listener_new(out, opts, fn, adopted_open, &give, NULL)) != 0) {
    if (give >= 0)
      close(copy);
    return err;
  }
  close(fd);
  return 0;
}

/* A stream made by this listener closed, or left its loop. */
static void conn_closed(void *arg) {
  slot_t *sl = arg;
  atomic_fetch_sub_explicit(&sl->open, 1, memory_order_relaxed);
  listener_unref(sl->l);
}

/* The slot of the calling task's loop. */
static slot_t *slot_of(weft_listener_t *l, weft_loop_t *loop) {
  if (!l->pool) {
    weft_loop_t *expected = NULL;
    slot_t *sl = &l->slots[0];
    if (atomic_compare_exchange_strong(&sl->loop, &expected, loop) || expected == loop)
      return sl;
    weft__misuse("weft_tcp_accept", "a single listener accepts on one loop only");
    return NULL;
  }
  if (loop->pool != l->pool) {
    weft__misuse("weft_tcp_accept", "the calling task's loop is not in the listener's pool");
    return NULL;
  }
  return &l->slots[loop->pool_index];
}

int weft_tcp_accept(weft_listener_t *l, weft_stream_t **out) {
  weft_task_t *t;
  int err = weft__await_begin(&t, "weft_tcp_accept");
  if (err)
    return err;
  if (!l || !out)
    return WEFT_EINVAL;
  *out = NULL;
  slot_t *sl = slot_of(l, t->loop);
  if (!sl)
    return WEFT_EINVAL;
  listener_ref(l);
  int fd = -1;
  for (;;) {
    if (!sl->conns) {
      if ((err = accept_fd(sl, t, &fd)) == 0)
        atomic_fetch_add_explicit(&sl->open, 1, memory_order_relaxed);
      break;
    }
    void *msg;
    if ((err = burst_check(sl, t)) == 0)
      err = weft_chan_recv(sl->conns, &msg);
    if (err)
      break;
    sl->burst++;
    fd = (int)(intptr_t)msg;
    if (!atomic_load_explicit(&l->closed, memory_order_acquire))
      break;
    close(fd); /* closed meanwhile: not handed out */
    atomic_fetch_sub_explicit(&sl->open, 1, memory_order_relaxed);
  }
  if (err) {
    listener_unref(l);
    return err;
  }
  /* The stream keeps the reference taken for this call. */
  err = weft__stream_from_fd(t->loop, fd, conn_closed, sl, out);
  if (err)
    conn_closed(sl);
  return err;
}

int weft_listener_close(weft_listener_t *l) {
  if (!l)
    return WEFT_EINVAL;
  if (atomic_exchange(&l->closed, true)) {
    weft__misuse("weft_listener_close", "the listener is already closed");
    return WEFT_ECLOSED;
  }
  /* A shut-down listening socket is readable and refuses accept: every
   * loop waiting on it wakes and finds the listener closed. */
  for (unsigned i = 0; i < l->nslots; i++) {
    if (l->slots[i].fd >= 0)
      shutdown(l->slots[i].fd, SHUT_RDWR);
    if (l->slots[i].conns)
      weft_chan_close(l->slots[i].conns);
  }
  if (l->acc.fd >= 0)
    shutdown(l->acc.fd, SHUT_RDWR);
  /* A Unix-domain listener's file goes with it, unless another socket was
   * bound at that path since. */
  struct stat st;
  if (l->path && stat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
    unlink(l->path);
  listener_unref(l);
  return 0;
}

/* ------------------------------------------------------------ connect */

/* weft_tcp_connect: a name is resolved first (resolve.c, on weft's own
 * threads), then its addresses race as RFC 8305 (Happy Eyeballs v2) says:
 * the families interleaved, the first address's first; the next attempt
 * starts CONNECT_ATTEMPT_DELAY_MS after the last one if none has answered
 * by then, or at once when one fails; the first to connect wins, and every
 * other is closed. Each attempt is a stream (stream.c) on a fresh handle.
 * A connect cannot be taken back: closing the handle ends it, and its
 * callback (UV_ECANCELED) comes later. So the task stays parked until every
 * attempt's callback has come, a winner's losers and a cut's attempts too,
 * which is what lets all of it live on the task's stack. */

#define CONNECT_ATTEMPT_DELAY_MS 250

typedef struct attempt {
  uv_connect_t req;
  struct race *race;
  weft_stream_t *s;         /* NULL once its handle is closing */
  bool pending;             /* its callback is still to come */
} attempt_t;

typedef struct race {
  weft__wait_t base;
  weft__timer_t delay;      /* starts the next attempt */
  weft_loop_t *loop;
  const struct sockaddr_storage *addrs;
  size_t naddrs;
  attempt_t *att;           /* one per address */
  size_t started;           /* attempts started (or failed to) so far */
  size_t pending;           /* attempts whose callback is still to come */
  attempt_t *winner;
  int first_err;            /* the first attempt's failure, reported if all fail */
  bool cut;                 /* cancelled or out of time: everything closes */
  bool woken;
} race_t;

/* RFC 8305, 4: the families take turns, beginning with the first
 * address's; each family keeps its own order. */
static void interleave(const weft__addrs_t *in, struct sockaddr_storage *out) {
  size_t n = 0, i = 0, j = 0;
  int first = in->a[0].ss_family;
  while (n < in->n) {
    while (i < in->n && in->a[i].ss_family != first)
      i++;
    if (i < in->n)
      out[n++] = in->a[i++];
    while (j < in->n && in->a[j].ss_family == first)
      j++;
    if (j < in->n)
      out[n++] = in->a[j++];
  }
}

static void race_close(attempt_t *a) {
  if (a->s) {
    weft__stream_close_handle(a->s);
    a->s = NULL;
  }
}

static void race_fail(race_t *r, int err) {
  if (!r->first_err)
    r->first_err = err;
}

/* Wakes the task once nothing is pending and the race is decided. */
static void race_settle(race_t *r) {
  if (r->woken || r->pending > 0)
    return;
  if (!r->cut && !r->winner && r->started < r->naddrs)
    return;
  r->woken = true;
  weft__timer_stop(r->loop, &r->delay);
  if (r->cut)
    weft__wake(&r->base, r->base.interrupted,
               r->base.interrupted == WEFT_ECANCELED ? WEFT_WAKE_CANCEL : WEFT_WAKE_DEADLINE);
  else
    weft__wake(&r->base, r->winner ? 0 : r->first_err, WEFT_WAKE_DONE);
}

static void attempt_cb(uv_connect_t *req, int status);

/* Starts the next attempt; one that fails at once is followed by the next
 * at once. The delay runs from the last attempt started. */
static void race_next(race_t *r) {
  while (r->started < r->naddrs) {
    attempt_t *a = &r->att[r->started];
    const struct sockaddr *sa = (const struct sockaddr *)&r->addrs[r->started];
    r->started++;
    a->race = r;
    a->req.data = a;
    int err = weft__stream_new(r->loop, &a->s);
    if (err) {
      a->s = NULL;
      race_fail(r, err);
      continue;
    }
    if ((err = uv_tcp_connect(&a->req, weft__stream_handle(a->s), sa, attempt_cb)) != 0) {
      race_close(a);
      race_fail(r, err);
      continue;
    }
    a->pending = true;
    r->pending++;
    if (r->started < r->naddrs) {
      weft__timer_stop(r->loop, &r->delay);
      weft__timer_start(r->loop, &r->delay, weft__now(r->loop) + CONNECT_ATTEMPT_DELAY_MS);
    }
    return;
  }
}

static void race_delay_fire(weft__timer_t *timer) {
  race_t *r = weft__container_of(timer, race_t, delay);
  if (r->cut || r->winner)
    return;
  race_next(r);
  race_settle(r);
}

static void attempt_cb(uv_connect_t *req, int status) {
  attempt_t *a = req->data;
  race_t *r = a->race;
  a->pending = false;
  r->pending--;
  if (r->cut || r->winner || status == UV_ECANCELED) {
    /* A loser, or an attempt the cut closed. */
    race_settle(r);
    return;
  }
  if (status == 0) {
    r->winner = a;
    weft__timer_stop(r->loop, &r->delay);
    for (size_t i = 0; i < r->started; i++)
      if (&r->att[i] != a)
        race_close(&r->att[i]);
  } else {
    race_close(a);
    race_fail(r, status);
    race_next(r);
  }
  race_settle(r);
}

static bool race_interrupt(weft__wait_t *base, int err) {
  (void)err;
  race_t *r = weft__container_of(base, race_t, base);
  /* Every attempt closes, the winner's too; the last callback wakes the
   * task with the cut's error (base.interrupted). */
  r->cut = true;
  weft__timer_stop(r->loop, &r->delay);
  for (size_t i = 0; i < r->started; i++)
    race_close(&r->att[i]);
  r->winner = NULL;
  if (r->pending == 0) {
    r->woken = true;
    return true;
  }
  return false;
}

/* The addresses to try: a literal at once; a name through the resolver. */
static int connect_addrs(weft_task_t **t, const char *host, int port, weft__addrs_t *addrs) {
  if (port < 0 || port > 65535)
    return WEFT_EINVAL;
  addrs->n = 1;
  if (weft__tcp_addr(host, port, &addrs->a[0]) == 0 && (!host || strcmp(host, "localhost") != 0))
    return 0;
  if (!weft__resolve_name_ok(host)) {
    weft__misuse("weft_tcp_connect", "\"%s\" is neither an address nor a host name", host);
    return WEFT_EINVAL;
  }
  int err = weft__resolve(*t, host, port, false, addrs);
  if (err)
    return err;
  /* The task may have been cut as the answer came: see it before any
   * socket opens. */
  return weft__await_begin(t, "weft_tcp_connect");
}

int weft_tcp_connect(weft_stream_t **out, const char *host, int port) {
  weft_task_t *t;
  int err = weft__await_begin(&t, "weft_tcp_connect");
  if (err)
    return err;
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  weft__addrs_t found;
  if ((err = connect_addrs(&t, host, port, &found)) != 0)
    return err;
  struct sockaddr_storage order[WEFT__ADDRS_MAX];
  interleave(&found, order);
  attempt_t *att = weft__calloc(found.n, sizeof *att);
  if (!att)
    return WEFT_ENOMEM;
  race_t r = {
    .base = {.task = t, .kind = WEFT_WAIT_CONNECT, .interrupt = race_interrupt},
    .loop = t->loop,
    .addrs = order,
    .naddrs = found.n,
    .att = att,
  };
  weft__timer_init(&r.delay, race_delay_fire);
  race_next(&r);
  if (r.pending == 0) {
    /* Every address failed at once. */
    free(att);
    return r.first_err;
  }
  err = weft__park(&r.base);
  weft__timer_stop(r.loop, &r.delay);
  if (err == 0) {
    weft_stream_t *s = r.winner->s;
    uv_tcp_nodelay(weft__stream_handle(s), 1);
    *out = s;
  }
  free(att);
  return err;
}
