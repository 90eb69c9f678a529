/* Waiting on the wake-up fd alone, whichever kind it is: a parked loop with
 * no libuv work of its own blocks here instead of in libuv's poll. */
#include "../internal.h"

#include <errno.h>
#include <poll.h>

int weft__wakefd_wait(const weft__wakefd_t *w, int timeout_ms) {
  struct pollfd p = {.fd = w->rfd, .events = POLLIN};
  int n = poll(&p, 1, timeout_ms);
  if (n < 0)
    return -errno;
  return n > 0;
}
