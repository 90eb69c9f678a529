/* Unix-domain sockets: weft_unix_listen and weft_unix_connect. They give
 * the listener and stream types of TCP: the listener is tcp.c's, made
 * through weft__listener_new with a socket bound to a path, and its
 * accepts are weft_tcp_accept's; a stream is stream.c's on a uv_pipe_t,
 * chosen by the socket's family. So what is here is only what a path
 * changes: the address, the socket file, and the connect.
 *
 * A connect to a Unix-domain socket completes or fails at once on Linux;
 * only a listener whose backlog is full answers EAGAIN, and then the task
 * sleeps CONNECT_RETRY_MS and tries again (cancel and deadline apply to
 * that sleep). */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CONNECT_RETRY_MS 10

/* The address of path: WEFT_EINVAL (NULL, empty) or UV_ENAMETOOLONG. */
static int unix_addr(const char *path, struct sockaddr_un *sun) {
  if (!path || !*path)
    return WEFT_EINVAL;
  size_t len = strlen(path);
  if (len >= sizeof sun->sun_path)
    return UV_ENAMETOOLONG;
  memset(sun, 0, sizeof *sun);
  sun->sun_family = AF_UNIX;
  memcpy(sun->sun_path, path, len + 1);
  return 0;
}

static int unix_socket(int *fd) {
  *fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  return *fd < 0 ? -errno : 0;
}

typedef struct unix_listen {
  struct sockaddr_un sun;
  bool bound;               /* the file exists because of this call */
} unix_listen_t;

static int unix_open(void *ctx, bool reuseport, int backlog, int *out) {
  unix_listen_t *ul = ctx;
  (void)reuseport; /* refused before */
  int fd;
  int err = unix_socket(&fd);
  if (err)
    return err;
  if (bind(fd, (struct sockaddr *)&ul->sun, sizeof ul->sun) != 0) {
    err = -errno;
    close(fd);
    return err;
  }
  ul->bound = true;
  if (listen(fd, backlog) != 0) {
    err = -errno;
    close(fd);
    return err;
  }
  *out = fd;
  return 0;
}

int weft_unix_listen(weft_listener_t **out, const char *path, const weft_listen_opts_t *opts) {
  static const char fn[] = "weft_unix_listen";
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  unix_listen_t ul = {.bound = false};
  int err = unix_addr(path, &ul.sun);
  if (err)
    return err;
  if (opts && opts->mode == WEFT_LISTEN_REUSEPORT) {
    weft__misuse(fn, "REUSEPORT does not exist for Unix-domain sockets (use HANDOFF)");
    return UV_ENOTSUP;
  }
  err = weft__listener_new(out, opts, fn, unix_open, &ul, path);
  if (err && ul.bound)
    unlink(path); /* made by this call, which failed after */
  return err;
}

int weft_unix_connect(weft_stream_t **out, const char *path) {
  static const char fn[] = "weft_unix_connect";
  weft_task_t *t;
  int err = weft__await_begin(&t, fn);
  if (err)
    return err;
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  struct sockaddr_un sun;
  if ((err = unix_addr(path, &sun)) != 0)
    return err;
  for (;;) {
    int fd;
    if ((err = unix_socket(&fd)) != 0)
      return err;
    int rc;
    do
      rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    while (rc != 0 && errno == EINTR);
    if (rc == 0)
      return weft__stream_from_fd(t->loop, fd, NULL, NULL, out);
    err = errno == EINPROGRESS ? UV_EAGAIN : -errno;
    close(fd);
    if (err != UV_EAGAIN)
      return err;
    /* The listener's backlog is full: try again a little later. */
    if ((err = weft_sleep(CONNECT_RETRY_MS)) != 0)
      return err;
  }
}
