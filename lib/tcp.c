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
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static int port_of(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
    return -1;
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

int weft_tcp_listen(weft_listener_t **out, const char *host, int port,
                    const weft_listen_opts_t *opts) {
  weft_listen_opts_t defaults = {0};
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (!opts)
    opts = &defaults;
  if ((unsigned)opts->mode > WEFT_LISTEN_LEAST_LOADED) {
    weft__misuse("weft_tcp_listen", "unknown mode %d", (int)opts->mode);
    return WEFT_EINVAL;
  }
  bool dispatched = opts->mode == WEFT_LISTEN_HANDOFF || opts->mode == WEFT_LISTEN_LEAST_LOADED;
  if ((dispatched || opts->mode == WEFT_LISTEN_REUSEPORT) && !opts->pool) {
    weft__misuse("weft_tcp_listen", "this mode needs opts->pool");
    return WEFT_EINVAL;
  }
  struct sockaddr_storage ss;
  int err = weft__tcp_addr(host, port, &ss);
  if (err)
    return err;

  weft_listener_t *l = weft__calloc(1, sizeof *l);
  if (!l)
    return WEFT_ENOMEM;
  l->mode = opts->mode;
  l->pool = opts->mode == WEFT_LISTEN_SINGLE ? NULL : opts->pool;
  l->nslots = l->pool ? weft_pool_size(l->pool) : 1;
  atomic_init(&l->refs, 1);
  atomic_init(&l->closed, false);
  slot_init(&l->acc, l);
  l->slots = weft__calloc(l->nslots, sizeof *l->slots);
  if (!l->slots) {
    free(l);
    return WEFT_ENOMEM;
  }
  for (unsigned i = 0; i < l->nslots; i++) {
    slot_init(&l->slots[i], l);
    if (l->pool)
      atomic_init(&l->slots[i].loop, weft_pool_loop(l->pool, i));
  }

  int backlog = opts->backlog > 0 ? opts->backlog : DEFAULT_BACKLOG;
  if (opts->mode == WEFT_LISTEN_REUSEPORT) {
    /* A socket per loop, all on the first one's port. */
    for (unsigned i = 0; i < l->nslots && !err; i++) {
      err = open_listener(&ss, true, backlog, &l->slots[i].fd);
      if (!err && i == 0) {
        int bound = port_of(l->slots[0].fd);
        if (ss.ss_family == AF_INET6)
          ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)bound);
        else
          ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)bound);
      }
    }
  } else {
    slot_t *sl = dispatched ? &l->acc : &l->slots[0];
    err = open_listener(&ss, false, backlog, &sl->fd);
  }
  if (!err && dispatched) {
    unsigned queue = opts->queue ? opts->queue : DEFAULT_QUEUE;
    for (unsigned i = 0; i < l->nslots && !err; i++)
      err = weft_chan_new(&l->slots[i].conns, queue);
    if (!err) {
      listener_ref(l); /* the acceptor's */
      atomic_init(&l->acc.loop, weft_pool_loop(l->pool, 0));
      err = weft_spawn(weft_pool_loop(l->pool, 0), acceptor_main, l, NULL);
      if (err)
        atomic_fetch_sub(&l->refs, 1);
    }
  }
  if (err) {
    listener_unref(l);
    return err == UV_ENOMEM ? WEFT_ENOMEM : err;
  }
  l->port = port_of(dispatched ? l->acc.fd : l->slots[0].fd);
  *out = l;
  return 0;
}

int weft_listener_port(const weft_listener_t *l) {
  return l ? l->port : -1;
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
  listener_unref(l);
  return 0;
}

/* ------------------------------------------------------------ connect */

/* weft_tcp_connect: a stream (stream.c) on a fresh handle, connected to
 * host:port. A connect cannot be taken back: a cancel or deadline closes the
 * handle, and the connect's callback (UV_ECANCELED) wakes the task. */

typedef struct connect_wait {
  weft__wait_t base;
  uv_connect_t req;
  weft_stream_t *s;
  bool abandoned;           /* interrupted: the handle is closing */
} connect_wait_t;

static void connect_cb(uv_connect_t *req, int status) {
  connect_wait_t *w = req->data;
  if (w->abandoned)
    weft__wake(&w->base, w->base.interrupted,
               w->base.interrupted == WEFT_ECANCELED ? WEFT_WAKE_CANCEL : WEFT_WAKE_DEADLINE);
  else
    weft__wake(&w->base, status, WEFT_WAKE_DONE);
}

static bool connect_interrupt(weft__wait_t *base, int err) {
  (void)err;
  connect_wait_t *w = weft__container_of(base, connect_wait_t, base);
  /* A connect cannot be taken back: closing the handle ends it, and its
   * callback (UV_ECANCELED) wakes the task. */
  w->abandoned = true;
  weft__stream_close_handle(w->s);
  return false;
}

int weft_tcp_connect(weft_stream_t **out, const char *host, int port) {
  weft_task_t *t;
  int err = weft__await_begin(&t, "weft_tcp_connect");
  if (err)
    return err;
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  struct sockaddr_storage ss;
  if ((err = weft__tcp_addr(host, port, &ss)) != 0)
    return err;
  weft_stream_t *s;
  if ((err = weft__stream_new(t->loop, &s)) != 0)
    return err;
  connect_wait_t w = {
    .base = {.task = t, .kind = WEFT_WAIT_CONNECT, .interrupt = connect_interrupt},
    .s = s,
  };
  w.req.data = &w;
  if ((err = uv_tcp_connect(&w.req, weft__stream_handle(s), (const struct sockaddr *)&ss, connect_cb)) != 0) {
    weft__stream_close_handle(s);
    return err;
  }
  err = weft__park(&w.base);
  if (w.abandoned)
    return err;
  if (err) {
    weft__stream_close_handle(s);
    return err;
  }
  uv_tcp_nodelay(weft__stream_handle(s), 1);
  *out = s;
  return 0;
}
