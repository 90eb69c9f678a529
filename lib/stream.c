/* Streams: a connected TCP or Unix-domain socket bound to one loop, read
 * and written by that loop's tasks as await points.
 *
 * Reading: the first read starts libuv reading, and it goes on reading
 * ahead into a 16 KiB buffer while there is room, so a task that reads in
 * a loop costs one read(2) per burst of data and no epoll_ctl per call.
 * When a task waits on an empty buffer, libuv is handed the task's own
 * buffer for the next read (no copy). A full buffer stops reading from the
 * socket until a task takes some: backpressure, and bounded memory. A read
 * whose deadline passes while it waits first takes what the socket holds, so
 * a late loop does not turn bytes that came in time into a timeout.
 *
 * Framed reads (read_exactly, read_until, peek) work in that same buffer:
 * they look at what is buffered and consume only a whole frame, so a frame
 * that is cut (cancel, deadline, end of stream, ENOBUFS) leaves every byte
 * readable. While one waits for a frame longer than the buffer, the buffer
 * grows (doubling) up to the frame's bound (n, or cap), never past it; once
 * drained, a grown buffer is freed, and the next read-ahead takes 16 KiB
 * again. A framed reader is never handed to libuv directly, and it keeps
 * the stream's reading to itself for the whole call, woken or not, so no
 * other read takes bytes from under a frame it has half seen.
 *
 * Writing: a write of up to STAGE_PIECE_MAX bytes, on a stream with
 * nothing queued, is copied into the loop's stage and returns; at the end of
 * the round's steps the loop hands each stream's staged bytes to the kernel
 * in one write(2) (flush_staged, the loop's before-poll phase). The pieces a task writes in
 * a step (a header, then a body) so cost one system call, and the round's
 * replies leave in one burst, while their peers are still busy with the
 * replies before: on a loopback echo benchmark that cut the server's CPU a
 * request by about 2 to 5% (better in 58 of 88 paired rounds of wrk, the
 * order rotating; median ratios 0.93 to 0.99 by batch). A stream whose
 * staged bytes are not the stage's last (another stream staged since) and
 * that writes again, a stage that would overflow, and a close or detach
 * flush what is staged first, so bytes keep their order. Longer writes go
 * out at once: uv_try_write first, so a reply that fits in the socket
 * buffer costs one write(2) and no allocation. What does not fit is copied
 * into a uv_write request, and the call returns; the copies are bounded at
 * 1 MiB per stream by default (weft_stream_set_write_limit), past which a
 * writer waits for the queue to drain.
 *
 * The socket's handle (a uv_tcp_t, or a uv_pipe_t for a Unix-domain socket)
 * is allocated apart from the stream, so a stream can
 * let go of its handle (detach: the fd is duplicated, the handle closed) and
 * take a new one on another loop (attach). A closed stream is freed in the
 * handle's close callback, once libuv is done with both.
 *
 * Filters (TLS, lib/tls.c): a stream may carry a filter (internal.h's
 * weft__filter_ops_t). Then the socket reads into a buffer of the
 * filter's (fbuf), the filter takes those bytes, and the read-ahead buffer
 * holds the plaintext it gives back, so every reader above works as for a
 * plain stream; a reader is never handed to libuv directly. Writes go to
 * the filter a chunk at a time, and what it makes of each is staged or
 * written whole (weft__stream_send_raw); backpressure waits only between
 * chunks, so a cancel never cuts a record in two. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#define RBUF_SIZE 16384
#define WQUEUE_MAX ((size_t)1 << 20)
#define WLIMIT_MIN ((size_t)1 << 10)    /* weft_stream_set_write_limit's bounds */
#define WLIMIT_MAX ((size_t)1 << 30)
#define STAGE_SIZE ((size_t)64 << 10)   /* a loop's stage */
#define STAGE_PIECE_MAX 4096            /* longer writes go out at once */
#define FBUF_SIZE 16384                 /* a filtered stream's socket reads */

typedef struct io_wait io_wait_t;

/* A stream's libuv handle: TCP, or a pipe for a Unix-domain socket. */
typedef union stream_handle {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
} stream_handle_t;

struct weft_stream {
  weft__io_t io;            /* on the loop's I/O list while bound */
  stream_handle_t *h;       /* NULL while detached */
  weft_loop_t *loop;        /* NULL while detached */
  int fd;                   /* the socket while detached, else -1 */
  bool is_unix;             /* AF_UNIX: h is a uv_pipe_t */
  /* Reading. */
  char *rbuf;               /* read-ahead, allocated at the first need */
  size_t rcap;              /* its size: RBUF_SIZE, or more for a frame */
  size_t rhead, rlen;       /* buffered bytes: rbuf[rhead, rhead + rlen) */
  bool reading;             /* uv_read_start is in effect */
  io_wait_t *framer;        /* a framed read in progress (woken or not) */
  int rend;                 /* 0; 1 after end of stream; or the read error */
  io_wait_t *reader;        /* the task waiting to read */
  /* Writing. */
  size_t wqueued;           /* bytes in uv_write requests */
  size_t wmax;              /* the write queue's limit (backpressure) */
  int werr;                 /* the first write error */
  bool wshut;               /* weft_stream_shutdown was called */
  uv_shutdown_t *shut;      /* its request, until libuv is done with it */
  io_wait_t *writer;        /* the task waiting for the queue to shrink */
  size_t wlimit;            /* ... below this many bytes */
  weft__queue_t staged;     /* on loop->stage.streams while it has staged bytes */
  size_t soff, slen;        /* those bytes: loop->stage.buf[soff, soff + slen) */
  /* Who is told when the stream closes or leaves its loop. */
  void (*on_close)(void *arg);
  void *on_close_arg;
  /* A filter (TLS), or NULL. */
  const weft__filter_ops_t *filter;
  void *fctx;               /* its state, which the stream owns */
  char *fbuf;               /* what the socket read, for the filter */
};

struct io_wait {
  weft__wait_t base;
  weft_stream_t *s;
  char *buf;                /* a reader's buffer */
  size_t len;
  ssize_t n;                /* what the call returns */
  bool direct;              /* buf was handed to libuv for the next read */
  bool framed;              /* a framed reader: woken by any new bytes */
  bool closed;              /* a framer's stream was closed under it */
};

typedef struct write_req {
  uv_write_t req;
  size_t len;
  char data[];
} write_req_t;

/* ------------------------------------------------------------ lifetime */

static void stream_free(weft_stream_t *s) {
  if (s->filter)
    s->filter->free(s->fctx);
  free(s->fbuf);
  free(s->rbuf);
  free(s);
}

static void told_closed(weft_stream_t *s) {
  void (*cb)(void *) = s->on_close;
  s->on_close = NULL;
  if (cb)
    cb(s->on_close_arg);
}

void weft__ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
      sa.sa_handler == SIG_DFL) {
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

static void free_stream_cb(uv_handle_t *h) {
  weft_stream_t *s = h->data;
  free(h);
  if (s)
    stream_free(s);
}

static void force_close(weft__io_t *io);
static void stage_flush(weft_stream_t *s);

/* Writing to a connection the peer has closed raises SIGPIPE, which kills
 * the process by default; a stream's write must fail with UV_EPIPE
 * instead. So the first stream sets SIGPIPE to SIG_IGN, unless the
 * application chose a disposition of its own (pool workers block it too). */
static void ignore_sigpipe(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, weft__ignore_sigpipe);
}

/* s takes h, a handle initialised on loop, and is bound to loop. */
static void bind_handle(weft_stream_t *s, weft_loop_t *loop, stream_handle_t *h) {
  h->handle.data = s;
  s->h = h;
  s->loop = loop;
  s->fd = -1;
  weft__io_add(loop, &s->io, &h->handle, force_close);
}

/* A fresh handle of the stream's kind on loop (not yet on a socket). */
static int handle_new(weft_loop_t *loop, bool is_unix, stream_handle_t **out) {
  stream_handle_t *h = weft__malloc(sizeof *h);
  if (!h)
    return WEFT_ENOMEM;
  int err = is_unix ? uv_pipe_init(loop->uv, &h->pipe, 0) : uv_tcp_init(loop->uv, &h->tcp);
  if (err) {
    free(h);
    return err;
  }
  *out = h;
  return 0;
}

static int handle_open(stream_handle_t *h, bool is_unix, int fd) {
  return is_unix ? uv_pipe_open(&h->pipe, fd) : uv_tcp_open(&h->tcp, fd);
}

static int stream_alloc(weft_loop_t *loop, bool is_unix, weft_stream_t **out) {
  ignore_sigpipe();
  weft_stream_t *s = weft__calloc(1, sizeof *s);
  if (!s)
    return WEFT_ENOMEM;
  stream_handle_t *h;
  int err = handle_new(loop, is_unix, &h);
  if (err) {
    free(s);
    return err;
  }
  s->is_unix = is_unix;
  s->wmax = WQUEUE_MAX;
  bind_handle(s, loop, h);
  *out = s;
  return 0;
}

/* A TCP stream for loop with a fresh handle (not yet on a socket). */
int weft__stream_new(weft_loop_t *loop, weft_stream_t **out) {
  return stream_alloc(loop, false, out);
}

/* Closes s's handle; the close callback frees s. */
void weft__stream_close_handle(weft_stream_t *s) {
  weft__io_remove(s->loop, &s->io);
  uv_close(&s->h->handle, free_stream_cb);
}

/* At loop close, for a stream its owner left open. */
static void force_close(weft__io_t *io) {
  weft_stream_t *s = weft__container_of(io, weft_stream_t, io);
  stage_flush(s);
  told_closed(s);
  weft__stream_close_handle(s);
}

uv_tcp_t *weft__stream_handle(weft_stream_t *s) {
  return &s->h->tcp;
}

int weft__sock_check(int fd, bool listening, int *family) {
  if (fd < 0)
    return WEFT_EINVAL;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int type = 0, acc = 0;
  socklen_t tlen = sizeof type, alen = sizeof acc;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) != 0)
    return -errno; /* UV_EBADF, UV_ENOTSOCK */
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6 && ss.ss_family != AF_UNIX)
    return WEFT_EINVAL;
  if (type != SOCK_STREAM || (acc != 0) != listening)
    return WEFT_EINVAL;
  *family = ss.ss_family;
  return 0;
}

/* A stream on loop for the connected socket fd (checked: weft_stream_adopt;
 * else only its family is asked). On failure fd is left to the caller. */
static int stream_open_fd(weft_loop_t *loop, int fd, bool check, weft_stream_t **out) {
  int family, err;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (check) {
    if ((err = weft__sock_check(fd, false, &family)) != 0)
      return err;
  } else {
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
      return -errno;
    family = ss.ss_family;
  }
  weft_stream_t *s;
  if ((err = stream_alloc(loop, family == AF_UNIX, &s)) != 0)
    return err;
  if ((err = handle_open(s->h, s->is_unix, fd)) != 0) {
    weft__stream_close_handle(s);
    return err;
  }
  if (!s->is_unix)
    uv_tcp_nodelay(&s->h->tcp, 1);
  *out = s;
  return 0;
}

int weft__stream_from_fd(weft_loop_t *loop, int fd, void (*on_close)(void *arg), void *arg,
                         weft_stream_t **out) {
  weft_stream_t *s;
  int err = stream_open_fd(loop, fd, false, &s);
  if (err) {
    close(fd);
    return err;
  }
  s->on_close = on_close;
  s->on_close_arg = arg;
  *out = s;
  return 0;
}

int weft_stream_adopt(weft_stream_t **out, int fd) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  weft_loop_t *loop = weft__tls.running;
  if (!loop) {
    weft__misuse("weft_stream_adopt", "no loop runs on this thread");
    return WEFT_ENOTASK;
  }
  return stream_open_fd(loop, fd, true, out);
}

/* The checks of every stream call made by a task: s bound to its loop. */
static int stream_begin(weft_stream_t *s, weft_task_t **t, const char *fn) {
  int err = weft__await_begin(t, fn);
  if (err)
    return err;
  if (!s)
    return WEFT_EINVAL;
  if (!s->h || s->loop != (*t)->loop) {
    weft__misuse(fn, s->h ? "the stream belongs to another loop" : "the stream is detached");
    return WEFT_EPERM;
  }
  return 0;
}

/* ------------------------------------------------------------- reading */

static void wake_io(io_wait_t *w, ssize_t n) {
  w->n = n;
  weft__wake(&w->base, 0, WEFT_WAKE_DONE);
}

/* Makes the read-ahead buffer cap bytes (at least; allocating it, or
 * growing it with its bytes moved to the front). */
static int rbuf_reserve(weft_stream_t *s, size_t cap) {
  if (s->rbuf && s->rcap >= cap)
    return 0;
  if (s->rbuf && s->rhead > 0) {
    memmove(s->rbuf, s->rbuf + s->rhead, s->rlen);
    s->rhead = 0;
  }
  char *p = weft__realloc(s->rbuf, cap);
  if (!p)
    return WEFT_ENOMEM;
  s->rbuf = p;
  s->rcap = cap;
  return 0;
}

/* The free tail of the read-ahead buffer (its bytes moved to the front
 * first if they reach its end). */
static uv_buf_t rbuf_room(weft_stream_t *s) {
  if (s->rhead > 0 && s->rhead + s->rlen == s->rcap) {
    memmove(s->rbuf, s->rbuf + s->rhead, s->rlen);
    s->rhead = 0;
  }
  size_t end = s->rhead + s->rlen;
  size_t room = s->rcap - end;
  return uv_buf_init(s->rbuf + end, room > UINT32_MAX ? UINT32_MAX : (unsigned)room);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  weft_stream_t *s = h->data;
  io_wait_t *r = s->reader;
  if (s->filter) {
    if (!s->fbuf && !(s->fbuf = weft__malloc(FBUF_SIZE))) {
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    *buf = uv_buf_init(s->fbuf, FBUF_SIZE);
    return;
  }
  if (r && !r->framed && s->rlen == 0) {
    r->direct = true;
    *buf = uv_buf_init(r->buf, r->len > UINT32_MAX ? UINT32_MAX : (unsigned)r->len);
    return;
  }
  if (rbuf_reserve(s, RBUF_SIZE) != 0) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = rbuf_room(s);
}

/* Drops the first n buffered bytes. A buffer a frame grew is freed once
 * empty, so a stream holds more than RBUF_SIZE only while a frame needs it. */
static void consume(weft_stream_t *s, size_t n) {
  s->rhead += n;
  s->rlen -= n;
  if (s->rlen > 0)
    return;
  s->rhead = 0;
  if (s->rcap > RBUF_SIZE) {
    free(s->rbuf);
    s->rbuf = NULL;
    s->rcap = 0;
  }
}

static size_t take_buffered(weft_stream_t *s, char *out, size_t len) {
  size_t n = s->rlen < len ? s->rlen : len;
  memcpy(out, s->rbuf + s->rhead, n);
  consume(s, n);
  return n;
}

static void read_stop(weft_stream_t *s) {
  if (s->reading) {
    uv_read_stop(&s->h->stream);
    s->reading = false;
  }
}

/* A filtered stream: pulls what plaintext the filter has into the
 * read-ahead buffer, while there is room; the filter's end or error
 * becomes the stream's. */
static void filter_fill(weft_stream_t *s) {
  if (!s->filter || s->rend)
    return;
  if (rbuf_reserve(s, s->rcap > 0 ? s->rcap : RBUF_SIZE) != 0)
    return; /* the next read reports it (alloc_cb) */
  while (s->rlen < s->rcap) {
    uv_buf_t room = rbuf_room(s);
    ssize_t n = s->filter->pull(s->fctx, s, room.base, room.len);
    if (n > 0) {
      s->rlen += (size_t)n;
      continue;
    }
    if (n < 0) {
      s->rend = n == WEFT_EOF ? 1 : (int)n;
      read_stop(s);
    }
    break;
  }
}

/* Feeds what a filtered stream's socket read to the filter and fills the
 * buffer: the socket's end or error, after what came before it. */
static void filter_take(weft_stream_t *s, ssize_t nread) {
  if (nread > 0) {
    int err = s->filter->feed(s->fctx, s->fbuf, (size_t)nread);
    if (err) {
      s->rend = err;
      read_stop(s);
      return;
    }
  }
  filter_fill(s);
  if (nread < 0 && !s->rend) {
    s->rend = nread == UV_EOF ? 1 : (int)nread;
    read_stop(s);
  }
}

/* What a reader of a filtered stream is woken with. */
static ssize_t filter_result(weft_stream_t *s, io_wait_t *r) {
  if (r->framed)
    return 0;
  if (s->rlen > 0)
    return (ssize_t)take_buffered(s, r->buf, r->len);
  return s->rend == 1 ? 0 : s->rend;
}

static void filter_read_cb(weft_stream_t *s, ssize_t nread) {
  if (nread == 0)
    return;
  filter_take(s, nread);
  io_wait_t *r = s->reader;
  if (r && (s->rlen > 0 || s->rend)) {
    s->reader = NULL;
    wake_io(r, filter_result(s, r));
  }
  if (s->rcap > 0 && s->rlen == s->rcap)
    read_stop(s);
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  weft_stream_t *s = h->data;
  if (s->filter) {
    filter_read_cb(s, nread);
    return;
  }
  io_wait_t *r = s->reader;
  bool direct = r && r->direct && buf->base == r->buf;
  if (r)
    r->direct = false;
  if (nread > 0) {
    if (direct) {
      s->reader = NULL;
      wake_io(r, nread);
      return;
    }
    s->rlen += (size_t)nread;
    if (r) {
      s->reader = NULL;
      /* A framed reader looks at the buffer itself. */
      wake_io(r, r->framed ? 0 : (ssize_t)take_buffered(s, r->buf, r->len));
    }
    if (s->rcap > 0 && s->rlen == s->rcap)
      read_stop(s); /* full: the socket keeps the rest */
    return;
  }
  if (nread == 0)
    return; /* nothing this time (EAGAIN) */
  s->rend = nread == UV_EOF ? 1 : (int)nread;
  read_stop(s);
  if (r) {
    s->reader = NULL;
    wake_io(r, r->framed || s->rend == 1 ? 0 : s->rend);
  }
}

/* Reads from the socket now, without waiting and behind libuv's back (its
 * next read then finds nothing, which it takes in its stride): the count,
 * 0 at end of stream or the socket's error (both recorded, as read_cb
 * records them), or UV_EAGAIN when the socket holds nothing. */
static ssize_t read_now(weft_stream_t *s, char *buf, size_t len) {
  uv_os_fd_t fd;
  if (uv_fileno(&s->h->handle, &fd) != 0)
    return UV_EAGAIN;
  ssize_t n;
  do
    n = recv(fd, buf, len, MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n > 0)
    return n;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return UV_EAGAIN;
  s->rend = n == 0 ? 1 : -errno;
  read_stop(s);
  return s->rend == 1 ? 0 : s->rend;
}

/* A cancel cuts the read at once. A deadline first looks at the socket: a
 * loop that ran late (a long round, a loaded machine) finds the deadline
 * due and the peer's bytes readable in the same poll, and libuv runs due
 * timers before it polls for I/O, so the deadline would win a race the
 * bytes won. A deadline bounds how long the read waited for the peer, not
 * how late the loop is: the read takes what the socket holds (or its end,
 * or its error) and completes, and times out only if nothing is there. The
 * task's next await point then reports the deadline as usual. */
static bool reader_interrupt(weft__wait_t *base, int err) {
  io_wait_t *w = weft__container_of(base, io_wait_t, base);
  weft_stream_t *s = w->s;
  s->reader = NULL;
  if (err == WEFT_ETIMEDOUT && s->filter) {
    /* What the socket holds goes through the filter: woken if that makes
     * plaintext, or ends the stream. */
    if (s->fbuf && s->rlen < s->rcap) {
      ssize_t n = read_now(s, s->fbuf, FBUF_SIZE);
      if (n > 0)
        filter_take(s, n);
    }
    if (s->rlen > 0 || s->rend) {
      wake_io(w, filter_result(s, w));
      return false;
    }
    return true;
  }
  if (err == WEFT_ETIMEDOUT && w->framed && s->rlen < s->rcap) {
    /* A framed reader waits with room in the buffer: what the socket holds
     * goes there, and the reader looks again. */
    uv_buf_t room = rbuf_room(s);
    ssize_t n = read_now(s, room.base, room.len);
    if (n != UV_EAGAIN) {
      if (n > 0 && (s->rlen += (size_t)n) == s->rcap)
        read_stop(s);
      wake_io(w, 0);
      return false;
    }
  } else if (err == WEFT_ETIMEDOUT) {
    WEFT__ASSERT(s->rlen == 0); /* a reader waits only on an empty buffer */
    ssize_t n = read_now(s, w->buf, w->len);
    if (n != UV_EAGAIN) {
      wake_io(w, n);
      return false; /* woken here, with what the socket held */
    }
  }
  return true;
}

static int read_start(weft_stream_t *s) {
  if (s->reading || s->rend)
    return 0;
  int err = uv_read_start(&s->h->stream, alloc_cb, read_cb);
  if (err)
    return err;
  s->reading = true;
  return 0;
}

ssize_t weft_stream_read(weft_stream_t *s, void *buf, size_t len) {
  weft_task_t *t;
  int err = stream_begin(s, &t, "weft_stream_read");
  if (err)
    return err;
  if (!buf || len == 0)
    return WEFT_EINVAL;
  if (s->reader || s->framer) {
    weft__misuse("weft_stream_read", "another task is reading this stream");
    return WEFT_EBUSY;
  }
  filter_fill(s);
  if (s->rlen > 0) {
    size_t n = take_buffered(s, buf, len);
    if ((err = read_start(s)) != 0 && !s->rend)
      s->rend = err; /* reported once the buffer is empty */
    return (ssize_t)n;
  }
  if (s->rend)
    return s->rend == 1 ? 0 : s->rend;
  if ((err = read_start(s)) != 0)
    return err;
  io_wait_t r = {
    .base = {.task = t, .kind = WEFT_WAIT_READ, .interrupt = reader_interrupt, .what = s},
    .s = s, .buf = buf, .len = len,
  };
  s->reader = &r;
  err = weft__park(&r.base);
  return err ? err : r.n;
}

/* -------------------------------------------------------- framed reads */

/* A framed read (read_exactly, read_until, peek) looks at the buffer, and
 * while what it needs is not there waits for more: r is its record for the
 * whole call (s->framer), so a close can tell it even while it is woken and
 * not yet running again. */
static int framed_begin(weft_stream_t *s, weft_task_t **t, io_wait_t *r, const char *fn,
                        bool args_ok) {
  int err = stream_begin(s, t, fn);
  if (err)
    return err;
  if (!args_ok)
    return WEFT_EINVAL;
  if (s->reader || s->framer) {
    weft__misuse(fn, "another task is reading this stream");
    return WEFT_EBUSY;
  }
  *r = (io_wait_t){
    .base = {.task = *t, .kind = WEFT_WAIT_READ, .interrupt = reader_interrupt, .what = s},
    .s = s, .framed = true,
  };
  s->framer = r;
  filter_fill(s);
  return 0;
}

/* Ends a framed read that returns ret (s is still there), and reads ahead
 * on, as weft_stream_read does. */
static ssize_t framed_end(weft_stream_t *s, ssize_t ret) {
  s->framer = NULL;
  int err;
  if (s->rlen > 0 && (err = read_start(s)) != 0 && !s->rend)
    s->rend = err;
  return ret;
}

/* How a framed read reports the stream's end or its error. */
static ssize_t ended(const weft_stream_t *s) {
  return s->rend == 1 ? WEFT_EOF : s->rend;
}

/* Waits (await point) until more than s->rlen bytes are buffered, or the
 * stream ends, the buffer grown toward need bytes (need > s->rlen; a full
 * buffer doubles, never past need). 0: look again; else the error, and
 * after WEFT_ECLOSED s is gone. Every wait checks cancel and deadline
 * anew, so a peer that trickles bytes cannot hold a frame past them. */
static int wait_more(weft_stream_t *s, io_wait_t *r, size_t need, const char *fn) {
  weft_task_t *t;
  int err = weft__await_begin(&t, fn);
  if (err)
    return err;
  if (!s->rbuf || s->rlen == s->rcap) {
    size_t cap = s->rbuf ? s->rcap * 2 : RBUF_SIZE;
    if (s->rbuf && cap > need)
      cap = need;
    if ((err = rbuf_reserve(s, cap)) != 0)
      return err;
  }
  if (s->filter) {
    size_t before = s->rlen;
    filter_fill(s); /* the filter may hold more than the buffer took */
    if (s->rlen > before || s->rend)
      return 0;
  }
  if ((err = read_start(s)) != 0)
    return err;
  r->base.result = 0;
  r->base.interrupted = 0;
  r->n = 0;
  s->reader = r;
  err = weft__park(&r->base);
  if (r->closed)
    return WEFT_ECLOSED;
  return err;
}

ssize_t weft_stream_read_exactly(weft_stream_t *s, void *buf, size_t n) {
  static const char fn[] = "weft_stream_read_exactly";
  weft_task_t *t;
  io_wait_t r;
  int err = framed_begin(s, &t, &r, fn, buf != NULL && n <= SSIZE_MAX);
  if (err)
    return err;
  for (;;) {
    if (s->rlen >= n) {
      if (n > 0) {
        memcpy(buf, s->rbuf + s->rhead, n);
        consume(s, n);
      }
      return framed_end(s, (ssize_t)n);
    }
    if (s->rend)
      return framed_end(s, ended(s));
    if ((err = wait_more(s, &r, n, fn)) != 0)
      return err == WEFT_ECLOSED ? err : framed_end(s, err);
  }
}

/* The length of the first frame ending in delim within p[0, len), or 0.
 * from: where a delimiter may start that the last look did not see. */
static size_t find_delim(const char *p, size_t len, size_t from, const char *delim, size_t dlen) {
  for (size_t i = from; i + dlen <= len; i++) {
    const char *q = memchr(p + i, delim[0], len - dlen + 1 - i);
    if (!q)
      return 0;
    i = (size_t)(q - p);
    if (memcmp(q, delim, dlen) == 0)
      return i + dlen;
  }
  return 0;
}

ssize_t weft_stream_read_until(weft_stream_t *s, void *buf, size_t cap, const void *delim,
                               size_t dlen) {
  static const char fn[] = "weft_stream_read_until";
  weft_task_t *t;
  io_wait_t r;
  int err = framed_begin(s, &t, &r, fn,
                         buf && delim && dlen > 0 && cap >= dlen && cap <= SSIZE_MAX);
  if (err)
    return err;
  size_t seen = 0; /* bytes already searched */
  for (;;) {
    size_t len = s->rlen < cap ? s->rlen : cap;
    size_t from = seen >= dlen ? seen - dlen + 1 : 0;
    size_t n = find_delim(s->rbuf ? s->rbuf + s->rhead : NULL, len, from, delim, dlen);
    if (n > 0) {
      memcpy(buf, s->rbuf + s->rhead, n);
      consume(s, n);
      return framed_end(s, (ssize_t)n);
    }
    if (s->rlen >= cap)
      return framed_end(s, WEFT_ENOBUFS); /* nothing consumed */
    if (s->rend)
      return framed_end(s, ended(s));
    seen = len;
    if ((err = wait_more(s, &r, cap, fn)) != 0)
      return err == WEFT_ECLOSED ? err : framed_end(s, err);
  }
}

ssize_t weft_stream_peek(weft_stream_t *s, void *buf, size_t len) {
  static const char fn[] = "weft_stream_peek";
  weft_task_t *t;
  io_wait_t r;
  int err = framed_begin(s, &t, &r, fn, buf && len > 0);
  if (err)
    return err;
  for (;;) {
    if (s->rlen > 0) {
      size_t n = s->rlen < len ? s->rlen : len;
      memcpy(buf, s->rbuf + s->rhead, n);
      return framed_end(s, (ssize_t)n);
    }
    if (s->rend)
      return framed_end(s, s->rend == 1 ? 0 : s->rend);
    if ((err = wait_more(s, &r, 1, fn)) != 0)
      return err == WEFT_ECLOSED ? err : framed_end(s, err);
  }
}

/* ------------------------------------------------------------- writing */

static void write_cb(uv_write_t *req, int status) {
  write_req_t *wr = weft__container_of(req, write_req_t, req);
  weft_stream_t *s = req->handle->data;
  size_t len = wr->len;
  free(wr);
  if (!s)
    return;
  s->wqueued -= len;
  if (status < 0 && status != UV_ECANCELED && !s->werr)
    s->werr = status;
  io_wait_t *w = s->writer;
  if (w && (s->wqueued < s->wlimit || s->werr)) {
    s->writer = NULL;
    wake_io(w, 0);
  }
}

static bool writer_interrupt(weft__wait_t *base, int err) {
  (void)err;
  io_wait_t *w = weft__container_of(base, io_wait_t, base);
  w->s->writer = NULL;
  return true;
}

/* Waits until fewer than limit bytes are queued (or a write failed, or the
 * stream is closed under the task: then ECLOSED). */
static int wait_queue(weft_stream_t *s, weft_task_t *t, size_t limit) {
  io_wait_t w = {
    .base = {.task = t, .kind = WEFT_WAIT_WRITE, .interrupt = writer_interrupt, .what = s},
    .s = s,
  };
  s->writer = &w;
  s->wlimit = limit;
  int err = weft__park(&w.base);
  return err ? err : (int)w.n;
}

static int queue_write(weft_stream_t *s, const char *p, size_t len) {
  write_req_t *wr = weft__malloc(sizeof *wr + len);
  if (!wr)
    return WEFT_ENOMEM;
  memcpy(wr->data, p, len);
  wr->len = len;
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
  int err = uv_write(&wr->req, &s->h->stream, &b, 1, write_cb);
  if (err) {
    free(wr);
    return err;
  }
  s->wqueued += len;
  return 0;
}

/* Hands p[0, len) to the kernel, as much as the socket takes now: the count
 * taken (0 where it takes nothing now), or the error. Only while nothing
 * is queued. */
static ssize_t write_now(weft_stream_t *s, const char *p, size_t len) {
  uv_buf_t b = uv_buf_init((char *)p, len > UINT32_MAX ? UINT32_MAX : (unsigned)len);
  s->loop->counters.stream_writes++;
  int n = uv_try_write(&s->h->stream, &b, 1);
  return n == UV_EAGAIN ? 0 : n;
}

/* Hands what s staged to the kernel, and what the socket does not take now
 * to its write queue (no wait: a stream stages only while its queue is
 * empty, and a stage holds STAGE_SIZE). A failure, ENOMEM too (the bytes
 * are lost), becomes s->werr, which the next write or close reports. */
static void stage_flush(weft_stream_t *s) {
  if (s->slen == 0)
    return;
  weft__queue_remove(&s->staged);
  const char *p = s->loop->stage.buf + s->soff;
  size_t len = s->slen;
  s->slen = 0;
  if (s->werr)
    return;
  ssize_t n = write_now(s, p, len);
  int err = n < 0 ? (int)n : (size_t)n < len ? queue_write(s, p + n, len - (size_t)n) : 0;
  if (err && !s->werr)
    s->werr = err;
}

/* The loop's before-poll phase: hands each stream's staged bytes to the
 * kernel (one write per stream) and empties the stage. */
static void flush_staged(weft_loop_t *loop) {
  while (!weft__queue_empty(&loop->stage.streams))
    stage_flush(weft__container_of(weft__queue_head(&loop->stage.streams), weft_stream_t, staged));
  loop->stage.len = 0;
}

/* When the loop closes (its streams are closed by then). */
static void stage_free(weft_loop_t *loop) {
  free(loop->stage.buf);
  loop->stage.buf = NULL;
}
/* Stages p[0, len) after what s staged before. False where the bytes must
 * go out at once instead: nothing was staged then. */
static bool stage(weft_stream_t *s, const char *p, size_t len) {
  weft_loop_t *loop = s->loop;
  if (s->slen > 0 && s->soff + s->slen != loop->stage.len)
    stage_flush(s); /* another stream staged since: these go first */
  if (loop->stage.len + len > STAGE_SIZE)
    flush_staged(loop);
  if (s->werr || s->wqueued > 0)
    return false;
  if (!loop->stage.buf) {
    if (!(loop->stage.buf = weft__malloc(STAGE_SIZE)))
      return false;
    loop->stage.phase.before_poll = flush_staged;
    loop->stage.phase.at_close = stage_free;
    weft__loop_phase_add(loop, &loop->stage.phase);
  }
  if (s->slen == 0) {
    s->soff = loop->stage.len;
    weft__queue_insert_tail(&loop->stage.streams, &s->staged);
  }
  memcpy(loop->stage.buf + loop->stage.len, p, len);
  loop->stage.len += len;
  s->slen += len;
  return true;
}

int weft__stream_send_raw(weft_stream_t *s, const char *p, size_t len) {
  if (!s || !s->h)
    return WEFT_EPERM;
  if (s->werr)
    return s->werr;
  if (len == 0)
    return 0;
  /* A record of a staged-size write is a little longer than the write. */
  if (len <= STAGE_PIECE_MAX + 256 && s->wqueued == 0 && stage(s, p, len))
    return 0;
  stage_flush(s);
  if (s->werr)
    return s->werr;
  ssize_t n = s->wqueued == 0 ? write_now(s, p, len) : 0;
  if (n < 0) {
    s->werr = (int)n;
    return (int)n;
  }
  if ((size_t)n < len) {
    int err = queue_write(s, p + n, len - (size_t)n);
    if (err) {
      if (!s->werr)
        s->werr = err;
      return err;
    }
  }
  return 0;
}

/* The write queue is full: waits until it has room again, or returns the
 * error that ended the wait or the stream's write error. */
static int wait_room(weft_stream_t *s, weft_task_t *t) {
  int err = wait_queue(s, t, s->wmax);
  return err ? err : s->werr;
}

/* weft_stream_write on a filtered stream: a chunk at a time, each sealed
 * and sent whole, waiting for room only between chunks. */
static int filter_write(weft_stream_t *s, weft_task_t *t, const char *p, size_t len) {
  int err;
  while (len > 0) {
    if (s->wqueued >= s->wmax) {
      if ((err = wait_room(s, t)) != 0)
        return err;
      continue;
    }
    size_t chunk = len < WEFT__FILTER_CHUNK ? len : WEFT__FILTER_CHUNK;
    if ((err = s->filter->seal(s->fctx, s, p, chunk)) != 0)
      return err;
    if (s->werr)
      return s->werr;
    p += chunk;
    len -= chunk;
  }
  return 0;
}

int weft_stream_write(weft_stream_t *s, const void *buf, size_t len) {
  weft_task_t *t;
  int err = stream_begin(s, &t, "weft_stream_write");
  if (err)
    return err;
  if (!buf && len > 0)
    return WEFT_EINVAL;
  if (s->writer) {
    weft__misuse("weft_stream_write", "another task is waiting to write this stream");
    return WEFT_EBUSY;
  }
  if (s->werr)
    return s->werr;
  if (s->wshut)
    return UV_EPIPE;
  if (len == 0)
    return 0;
  if (s->filter)
    return filter_write(s, t, buf, len);
  if (len <= STAGE_PIECE_MAX && s->wqueued == 0 && stage(s, buf, len))
    return 0;
  stage_flush(s);
  if (s->werr)
    return s->werr;
  const char *p = buf;
  size_t left = len;
  if (s->wqueued == 0) {
    ssize_t n = write_now(s, p, left);
    if (n < 0) {
      s->werr = (int)n;
      return (int)n;
    }
    p += n;
    left -= (size_t)n;
  }
  while (left > 0) {
    if (s->wqueued >= s->wmax) {
      if ((err = wait_room(s, t)) != 0)
        return err;
      continue;
    }
    size_t chunk = s->wmax - s->wqueued;
    if (chunk > left)
      chunk = left;
    if ((err = queue_write(s, p, chunk)) != 0) {
      if (!s->werr && err != WEFT_ENOMEM)
        s->werr = err;
      return err;
    }
    p += chunk;
    left -= chunk;
  }
  return 0;
}

/* ------------------------------------------------------------- closing */

/* Closes a bound stream now: tasks parked on it (and a framed read woken
 * but not yet running again) learn it is gone; the handle's close frees
 * it. */
static void close_now(weft_stream_t *s) {
  if (s->framer)
    s->framer->closed = true;
  if (s->reader) {
    io_wait_t *r = s->reader;
    s->reader = NULL;
    wake_io(r, WEFT_ECLOSED);
  }
  if (s->writer) {
    io_wait_t *w = s->writer;
    s->writer = NULL;
    wake_io(w, WEFT_ECLOSED);
  }
  told_closed(s);
  weft__stream_close_handle(s);
}

/* In a task that may still wait: lets the write queue drain. */
static int flush(weft_stream_t *s, weft_task_t *t) {
  if (s->wqueued == 0 || s->werr)
    return 0;
  return wait_queue(s, t, 1);
}

int weft_stream_close(weft_stream_t *s) {
  if (!s)
    return WEFT_EINVAL;
  if (!s->h) {
    close(s->fd);
    told_closed(s);
    stream_free(s);
    return 0;
  }
  if (weft__tls.running != s->loop) {
    weft__misuse("weft_stream_close", "the stream belongs to another loop");
    return WEFT_EPERM;
  }
  int result = 0;
  if (s->filter && !s->wshut)
    s->filter->close_notify(s->fctx, s);
  stage_flush(s); /* first, so that a wait for the queue covers it */
  weft_task_t *t = weft__current();
  if (t && !s->writer) {
    /* A cancelled task, or one past its deadline, does not wait. */
    result = weft__await_begin(&t, "weft_stream_close");
    if (result == 0)
      result = flush(s, t);
  }
  if (result == 0 && s->werr)
    result = s->werr;
  close_now(s);
  return result;
}

/* --------------------------------------------------- handing to a loop */

static void free_handle_cb(uv_handle_t *h) {
  free(h);
}

int weft_stream_detach(weft_stream_t *s) {
  weft_task_t *t;
  int err = stream_begin(s, &t, "weft_stream_detach");
  if (err)
    return err;
  if (s->reader || s->writer || s->framer || s->shut) {
    weft__misuse("weft_stream_detach", "a task is waiting on the stream");
    return WEFT_EBUSY;
  }
  stage_flush(s);
  if ((err = flush(s, t)) != 0)
    return err;
  if (s->werr)
    return s->werr;
  if (s->reader || s->writer || s->framer || s->shut) {
    /* Another task came to the stream while the queue drained. */
    weft__misuse("weft_stream_detach", "a task is waiting on the stream");
    return WEFT_EBUSY;
  }
  uv_os_fd_t fd;
  if ((err = uv_fileno(&s->h->handle, &fd)) != 0)
    return err;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0)
    return errno == EMFILE ? UV_EMFILE : -errno;
  read_stop(s);
  s->h->handle.data = NULL;
  weft__io_remove(s->loop, &s->io);
  uv_close(&s->h->handle, free_handle_cb);
  s->h = NULL;
  s->loop = NULL;
  s->fd = copy;
  told_closed(s);
  return 0;
}

int weft_stream_attach(weft_stream_t *s) {
  ignore_sigpipe();
  if (!s)
    return WEFT_EINVAL;
  if (s->h) {
    weft__misuse("weft_stream_attach", "the stream is not detached");
    return WEFT_EINVAL;
  }
  weft_loop_t *loop = weft__tls.running;
  if (!loop) {
    weft__misuse("weft_stream_attach", "no loop runs on this thread");
    return WEFT_ENOTASK;
  }
  stream_handle_t *h;
  int err = handle_new(loop, s->is_unix, &h);
  if (err)
    return err;
  if ((err = handle_open(h, s->is_unix, s->fd)) != 0) {
    uv_close(&h->handle, free_handle_cb);
    return err;
  }
  bind_handle(s, loop, h);
  return 0;
}

weft_loop_t *weft_stream_loop(const weft_stream_t *s) {
  return s ? s->loop : NULL;
}

/* ------------------------------------------------------------- control */

/* The checks of a call that never suspends: s bound to the calling
 * thread's running loop, or detached (then its holder may call). */
static int stream_here(const weft_stream_t *s, const char *fn) {
  if (!s)
    return WEFT_EINVAL;
  if (s->h && weft__tls.running != s->loop) {
    weft__misuse(fn, "the stream belongs to another loop");
    return WEFT_EPERM;
  }
  return 0;
}

/* The stream's socket (see stream_here). */
static int stream_fd(const weft_stream_t *s, const char *fn, int *fd) {
  int err = stream_here(s, fn);
  if (err)
    return err;
  if (!s->h) {
    *fd = s->fd;
    return 0;
  }
  uv_os_fd_t f;
  if ((err = uv_fileno(&s->h->handle, &f)) != 0)
    return err;
  *fd = f;
  return 0;
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  weft_stream_t *s = req->handle->data;
  free(req);
  s->shut = NULL;
  if (status < 0 && status != UV_ECANCELED && !s->werr)
    s->werr = status;
}

int weft_stream_shutdown(weft_stream_t *s) {
  int err = stream_here(s, "weft_stream_shutdown");
  if (err)
    return err;
  if (!s->h) {
    weft__misuse("weft_stream_shutdown", "the stream is detached");
    return WEFT_EPERM;
  }
  if (s->wshut)
    return UV_ENOTCONN; /* as libuv answers a second shutdown */
  if (s->filter)
    s->filter->close_notify(s->fctx, s);
  stage_flush(s); /* staged bytes go before the FIN */
  if (s->werr)
    return s->werr;
  uv_shutdown_t *req = weft__malloc(sizeof *req);
  if (!req)
    return WEFT_ENOMEM;
  if ((err = uv_shutdown(req, &s->h->stream, shutdown_cb)) != 0) {
    free(req);
    return err;
  }
  s->shut = req;
  s->wshut = true;
  return 0;
}

static int stream_name(const weft_stream_t *s, struct sockaddr_storage *addr, bool peer,
                       const char *fn) {
  int fd;
  int err = stream_fd(s, fn, &fd);
  if (err)
    return err;
  if (!addr)
    return WEFT_EINVAL;
  memset(addr, 0, sizeof *addr);
  socklen_t len = sizeof *addr;
  int rc = peer ? getpeername(fd, (struct sockaddr *)addr, &len)
                : getsockname(fd, (struct sockaddr *)addr, &len);
  return rc == 0 ? 0 : -errno;
}

int weft_stream_peer(const weft_stream_t *s, struct sockaddr_storage *addr) {
  return stream_name(s, addr, true, "weft_stream_peer");
}

int weft_stream_local(const weft_stream_t *s, struct sockaddr_storage *addr) {
  return stream_name(s, addr, false, "weft_stream_local");
}

/* Sets a TCP stream's socket option. */
static int tcp_option(weft_stream_t *s, const char *fn, int level, int name, int value) {
  int fd;
  int err = stream_fd(s, fn, &fd);
  if (err)
    return err;
  if (s->is_unix)
    return UV_ENOTSUP;
  return setsockopt(fd, level, name, &value, sizeof value) == 0 ? 0 : -errno;
}

int weft_stream_set_nodelay(weft_stream_t *s, bool on) {
  return tcp_option(s, "weft_stream_set_nodelay", IPPROTO_TCP, TCP_NODELAY, on);
}

int weft_stream_set_keepalive(weft_stream_t *s, bool on, unsigned delay_s) {
  static const char fn[] = "weft_stream_set_keepalive";
  if (on && (delay_s == 0 || delay_s > INT_MAX))
    return WEFT_EINVAL;
  int err = tcp_option(s, fn, SOL_SOCKET, SO_KEEPALIVE, on);
  if (err || !on)
    return err;
  return tcp_option(s, fn, IPPROTO_TCP, TCP_KEEPIDLE, (int)delay_s);
}

int weft_stream_set_write_limit(weft_stream_t *s, size_t bytes) {
  int err = stream_here(s, "weft_stream_set_write_limit");
  if (err)
    return err;
  if (bytes < WLIMIT_MIN || bytes > WLIMIT_MAX)
    return WEFT_EINVAL;
  s->wmax = bytes;
  /* A writer waiting for room (not a close or detach waiting for the
   * queue to empty) waits for the new limit. */
  io_wait_t *w = s->writer;
  if (w && s->wlimit > 1) {
    s->wlimit = bytes;
    if (s->wqueued < bytes) {
      s->writer = NULL;
      wake_io(w, 0);
    }
  }
  return 0;
}

size_t weft_stream_write_queued(const weft_stream_t *s) {
  return s ? s->wqueued + s->slen : 0;
}

/* SO_LINGER with a zero timeout: close(2) then resets the connection. */
static void linger_zero(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

int weft_stream_abort(weft_stream_t *s) {
  int fd;
  int err = stream_fd(s, "weft_stream_abort", &fd);
  if (err)
    return err;
  if (!s->is_unix)
    linger_zero(fd);
  if (!s->h) {
    close(s->fd);
    told_closed(s);
    stream_free(s);
    return 0;
  }
  if (s->slen > 0) {
    /* Dropped: the stage's room stays used until the round ends. */
    weft__queue_remove(&s->staged);
    s->slen = 0;
  }
  close_now(s);
  return 0;
}

/* ------------------------------------------------------------- filters */

int weft__stream_set_filter(weft_stream_t *s, const weft__filter_ops_t *ops, void *ctx) {
  if (!s || !ops || s->filter)
    return WEFT_EINVAL;
  if (!s->h || weft__tls.running != s->loop)
    return WEFT_EPERM;
  if (s->reader || s->framer)
    return WEFT_EBUSY;
  /* What was read ahead came from the socket: the filter's. */
  if (s->rlen > 0) {
    int err = ops->feed(ctx, s->rbuf + s->rhead, s->rlen);
    if (err)
      return err;
    consume(s, s->rlen);
  }
  s->filter = ops;
  s->fctx = ctx;
  return 0;
}

void *weft__stream_filter(const weft_stream_t *s, const weft__filter_ops_t *ops) {
  return s && s->filter == ops ? s->fctx : NULL;
}
