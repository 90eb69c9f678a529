/* The wake-up file descriptor on Linux: one eventfd, read and written. A
 * write adds to its counter and makes it readable; one read takes the whole
 * count, so many rings before the loop looks cost the loop one read. */
#include "../internal.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

int weft__wakefd_open(weft__wakefd_t *w) {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0)
    return errno == ENOMEM ? WEFT_ENOMEM : -errno;
  w->rfd = w->wfd = fd;
  return 0;
}

void weft__wakefd_signal(weft__wakefd_t *w) {
  uint64_t one = 1;
  /* EAGAIN means the counter is full, so the fd is readable anyway. */
  while (write(w->wfd, &one, sizeof one) < 0 && errno == EINTR)
    ;
}

void weft__wakefd_drain(weft__wakefd_t *w) {
  uint64_t count;
  while (read(w->rfd, &count, sizeof count) < 0 && errno == EINTR)
    ;
}

void weft__wakefd_close(weft__wakefd_t *w) {
  close(w->rfd);
  w->rfd = w->wfd = -1;
}
