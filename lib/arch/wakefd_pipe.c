/* The wake-up file descriptor where there is no eventfd: a non-blocking
 * pipe. A ring writes one byte (a full pipe is readable anyway); the loop
 * reads until the pipe is empty. */
#include "../internal.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

static int set_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return -errno;
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
    return -errno;
  return 0;
}

int weft__wakefd_open(weft__wakefd_t *w) {
  int fds[2], err;
  if (pipe(fds) < 0)
    return -errno;
  if ((err = set_flags(fds[0])) != 0 || (err = set_flags(fds[1])) != 0) {
    close(fds[0]);
    close(fds[1]);
    return err;
  }
  w->rfd = fds[0];
  w->wfd = fds[1];
  return 0;
}

void weft__wakefd_signal(weft__wakefd_t *w) {
  char c = 1;
  while (write(w->wfd, &c, 1) < 0 && errno == EINTR)
    ;
}

void weft__wakefd_drain(weft__wakefd_t *w) {
  char buf[64];
  ssize_t n;
  do
    n = read(w->rfd, buf, sizeof buf);
  while (n == (ssize_t)sizeof buf || (n < 0 && errno == EINTR));
}

void weft__wakefd_close(weft__wakefd_t *w) {
  close(w->rfd);
  close(w->wfd);
  w->rfd = w->wfd = -1;
}
