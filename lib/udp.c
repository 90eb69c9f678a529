/* UDP sockets: a datagram socket bound to one loop, received from and sent
 * on by that loop's tasks as await points.
 *
 * No datagram is buffered in user space: the kernel's receive buffer
 * (SO_RCVBUF, weft_udp_opts_t.rcvbuf) is the socket's one bounded queue,
 * and what overflows it is dropped by the kernel, as UDP does. A receive
 * calls recvmsg(2) itself, straight into the caller's buffer, and waits
 * only when the socket holds nothing: on a uv_poll_t of the socket, which
 * watches for readability only while a task waits to receive (and for
 * writability only while a task waits to send). So a datagram leaves the
 * kernel only inside a call that returns it, and a cancel or a deadline
 * that cuts a wait can never lose one. A send calls sendto(2) at once; it
 * waits only when the socket's send buffer is full (EAGAIN), and copies
 * nothing.
 *
 * Lifetime: the socket is reference counted on its loop's thread (the
 * owner's reference, one per call in progress, one for the poll handle), so
 * a task woken by a close (WEFT_ECLOSED) or just before it still finds the
 * struct; the descriptor is closed in the poll handle's close callback,
 * once libuv has stopped watching it. */
#include "internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The largest datagram a socket could carry (IPv6 jumbograms aside). */
#define UDP_LEN_MAX 65535u

struct weft_udp {
  weft__io_t io;            /* on the loop's I/O list until closed */
  uv_poll_t *poll;          /* the socket's watch; freed in its close callback */
  weft_loop_t *loop;
  int fd;
  int port;
  int refs;                 /* loop thread only */
  int events;               /* what the poll watches now */
  bool closed;
  weft__queue_t readers;    /* udp_wait_t of tasks waiting to receive */
  weft__queue_t writers;    /* ... to send */
};

typedef struct udp_wait {
  weft__wait_t base;
  weft__queue_t link;       /* on readers or writers while waiting */
  weft_udp_t *u;
  bool reader;
  /* A reader's call, for a deadline that takes what the socket holds. */
  void *buf;
  size_t len;
  struct sockaddr_storage *from;
  ssize_t n;
  bool took;                /* n is the call's result */
} udp_wait_t;

/* ------------------------------------------------------------ lifetime */

static void udp_unref(weft_udp_t *u) {
  if (--u->refs == 0)
    free(u);
}

static void poll_close_cb(uv_handle_t *h) {
  weft_udp_t *u = h->data;
  free(h);
  close(u->fd);
  u->fd = -1;
  udp_unref(u);
}

static void wake_all(weft__queue_t *list, int result) {
  while (!weft__queue_empty(list)) {
    weft__queue_t *q = weft__queue_head(list);
    weft__queue_remove(q);
    weft__wake(&weft__container_of(q, udp_wait_t, link)->base, result, WEFT_WAKE_DONE);
  }
}

/* Closes u's watch and descriptor; tasks parked on it get WEFT_ECLOSED. */
static void udp_shut(weft_udp_t *u) {
  u->closed = true;
  wake_all(&u->readers, WEFT_ECLOSED);
  wake_all(&u->writers, WEFT_ECLOSED);
  weft__io_remove(u->loop, &u->io);
  uv_close((uv_handle_t *)u->poll, poll_close_cb);
}

/* At loop close, for a socket its owner left open: closed and freed. */
static void force_close(weft__io_t *io) {
  weft_udp_t *u = weft__container_of(io, weft_udp_t, io);
  udp_shut(u);
  udp_unref(u); /* the owner's */
}

/* ------------------------------------------------------------- waiting */

static void poll_cb(uv_poll_t *h, int status, int events);

/* Points the poll at what the parked tasks wait for. */
static int poll_update(weft_udp_t *u) {
  int want = (weft__queue_empty(&u->readers) ? 0 : UV_READABLE) |
             (weft__queue_empty(&u->writers) ? 0 : UV_WRITABLE);
  if (want == u->events)
    return 0;
  int err = want ? uv_poll_start(u->poll, want, poll_cb) : uv_poll_stop(u->poll);
  if (err == 0)
    u->events = want;
  return err;
}

/* Readable or writable (or an error, which the calls then meet): the tasks
 * waiting for it try again. */
static void poll_cb(uv_poll_t *h, int status, int events) {
  weft_udp_t *u = h->data;
  if (status < 0 || (events & UV_READABLE))
    wake_all(&u->readers, 0);
  if (status < 0 || (events & UV_WRITABLE))
    wake_all(&u->writers, 0);
  poll_update(u);
}

/* Takes one datagram, without waiting: its length, WEFT_ENOBUFS (it was
 * longer than len: buf holds its first len bytes, the rest is gone),
 * UV_EAGAIN (nothing there) or the socket's error. */
static ssize_t recv_now(weft_udp_t *u, void *buf, size_t len, struct sockaddr_storage *from) {
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (from) {
    memset(from, 0, sizeof *from);
    m.msg_name = from;
    m.msg_namelen = sizeof *from;
  }
  ssize_t n;
  do
    n = recvmsg(u->fd, &m, MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n >= 0)
    return (m.msg_flags & MSG_TRUNC) ? WEFT_ENOBUFS : n;
  if (errno == EAGAIN || errno == EWOULDBLOCK)
    return UV_EAGAIN;
  return -errno;
}

/* A cancel cuts the wait at once. A deadline first looks at the socket,
 * as a stream read does (stream.c): a loop that ran late finds the
 * deadline due and a datagram readable in the same poll, and the datagram
 * came in time; the call takes it and the task's next await point reports
 * the deadline. */
static bool udp_interrupt(weft__wait_t *base, int err) {
  udp_wait_t *w = weft__container_of(base, udp_wait_t, base);
  weft_udp_t *u = w->u;
  weft__queue_remove(&w->link);
  poll_update(u);
  if (err == WEFT_ETIMEDOUT && w->reader) {
    ssize_t n = recv_now(u, w->buf, w->len, w->from);
    if (n != UV_EAGAIN) {
      w->took = true;
      w->n = n;
      weft__wake(&w->base, 0, WEFT_WAKE_DONE);
      return false; /* woken here, with the datagram */
    }
  }
  return true;
}

static int udp_wait(weft_udp_t *u, udp_wait_t *w) {
  weft__queue_insert_tail(w->reader ? &u->readers : &u->writers, &w->link);
  int err = poll_update(u);
  if (err) {
    weft__queue_remove(&w->link);
    poll_update(u);
    return err;
  }
  return weft__park(&w->base);
}

/* The checks of every call made by a task on u. */
static int udp_begin(weft_udp_t *u, weft_task_t **t, const char *fn) {
  int err = weft__await_begin(t, fn);
  if (err)
    return err;
  if (!u)
    return WEFT_EINVAL;
  if (u->loop != (*t)->loop) {
    weft__misuse(fn, "the UDP socket belongs to another loop");
    return WEFT_EPERM;
  }
  if (u->closed)
    return WEFT_ECLOSED;
  return 0;
}

/* ------------------------------------------------------------------ API */

static int open_socket(const struct sockaddr_storage *ss, const weft_udp_opts_t *opts, int *out) {
  int fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if ((opts->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
      (opts->rcvbuf > 0 &&
       setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opts->rcvbuf, sizeof opts->rcvbuf) != 0) ||
      bind(fd, (const struct sockaddr *)ss, len) != 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  *out = fd;
  return 0;
}

int weft_udp_bind_opts(weft_udp_t **out, const char *host, int port, const weft_udp_opts_t *opts) {
  weft_udp_opts_t defaults = {0};
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (!opts)
    opts = &defaults;
  if (opts->rcvbuf < 0)
    return WEFT_EINVAL;
  weft_loop_t *loop = weft__tls.running ? weft__tls.running : weft__tls.bound;
  if (!loop) {
    weft__misuse("weft_udp_bind", "no loop runs on this thread, and none is current");
    return WEFT_ENOTASK;
  }
  if (!weft__on_owner(loop)) {
    weft__misuse("weft_udp_bind", "the current loop belongs to another thread");
    return WEFT_EPERM;
  }
  struct sockaddr_storage ss;
  int err = weft__tcp_addr(host && host[0] ? host : NULL, port, &ss);
  if (err)
    return err;
  weft_udp_t *u = weft__calloc(1, sizeof *u);
  uv_poll_t *p = weft__malloc(sizeof *p);
  if (!u || !p) {
    free(u);
    free(p);
    return WEFT_ENOMEM;
  }
  int fd = -1;
  if ((err = open_socket(&ss, opts, &fd)) != 0) {
    free(u);
    free(p);
    return err;
  }
  if ((err = uv_poll_init_socket(loop->uv, p, fd)) != 0) {
    close(fd);
    free(u);
    free(p);
    return err;
  }
  p->data = u;
  u->poll = p;
  u->loop = loop;
  u->fd = fd;
  u->port = weft__fd_port(fd);
  u->refs = 2; /* the owner's and the poll handle's */
  weft__queue_init(&u->readers);
  weft__queue_init(&u->writers);
  weft__io_add(loop, &u->io, (uv_handle_t *)p, force_close);
  *out = u;
  return 0;
}

int weft_udp_bind(weft_udp_t **u, const char *host, int port) {
  return weft_udp_bind_opts(u, host, port, NULL);
}

int weft_udp_port(const weft_udp_t *u) {
  return u ? u->port : -1;
}

ssize_t weft_udp_recv(weft_udp_t *u, void *buf, size_t len, struct sockaddr_storage *from) {
  weft_task_t *t;
  int err = udp_begin(u, &t, "weft_udp_recv");
  if (err)
    return err;
  if (!buf && len > 0)
    return WEFT_EINVAL;
  u->refs++;
  ssize_t n;
  for (;;) {
    if ((n = recv_now(u, buf, len, from)) != UV_EAGAIN)
      break;
    udp_wait_t w = {
      .base = {.task = t, .kind = WEFT_WAIT_DATAGRAM, .interrupt = udp_interrupt, .what = u},
      .u = u, .reader = true, .buf = buf, .len = len, .from = from,
    };
    if ((err = udp_wait(u, &w)) != 0) {
      n = err;
      break;
    }
    if (w.took) {
      n = w.n;
      break;
    }
    if (u->closed) {
      n = WEFT_ECLOSED;
      break;
    }
  }
  udp_unref(u);
  return n;
}

int weft_udp_send(weft_udp_t *u, const void *buf, size_t len, const struct sockaddr *to) {
  weft_task_t *t;
  int err = udp_begin(u, &t, "weft_udp_send");
  if (err)
    return err;
  if ((!buf && len > 0) || !to)
    return WEFT_EINVAL;
  socklen_t tolen;
  if (to->sa_family == AF_INET)
    tolen = sizeof(struct sockaddr_in);
  else if (to->sa_family == AF_INET6)
    tolen = sizeof(struct sockaddr_in6);
  else
    return WEFT_EINVAL;
  if (len > UDP_LEN_MAX)
    return UV_EMSGSIZE;
  u->refs++;
  for (;;) {
    ssize_t n = sendto(u->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL, to, tolen);
    if (n >= 0) {
      err = 0;
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      err = -errno;
      break;
    }
    udp_wait_t w = {
      .base = {.task = t, .kind = WEFT_WAIT_DATAGRAM, .interrupt = udp_interrupt, .what = u},
      .u = u,
    };
    if ((err = udp_wait(u, &w)) != 0)
      break;
    if (u->closed) {
      err = WEFT_ECLOSED;
      break;
    }
  }
  udp_unref(u);
  return err;
}

int weft_udp_close(weft_udp_t *u) {
  if (!u)
    return WEFT_EINVAL;
  if (!weft__on_owner(u->loop)) {
    weft__misuse("weft_udp_close", "the UDP socket belongs to another loop's thread");
    return WEFT_EPERM;
  }
  if (u->closed) {
    weft__misuse("weft_udp_close", "the UDP socket is already closed");
    return WEFT_ECLOSED;
  }
  udp_shut(u);
  udp_unref(u); /* the owner's */
  return 0;
}
