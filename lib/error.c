/* Error names and the two ways weft complains: weft__misuse, a sentence on
 * stderr for an API misuse (debug builds, or WEFT_DEBUG=1), always followed
 * by an error code to the caller; and weft__fatal, for a broken invariant
 * that cannot be survived (a smashed stack), which prints and aborts. */
#include "internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const char *weft_strerror(int err) {
  switch (err) {
  case 0: return "success";
  case WEFT_ENOTASK: return "an await point was called outside a task";
  case WEFT_EPENDING: return "the task has not ended yet";
  case WEFT_ECLOSED: return "the object is closed";
  case WEFT_EDEADLK: return "a task cannot await itself";
  case WEFT_EALREADY: return "the task has already ended";
  case WEFT_ECANCELED: return "the task was cancelled";
  case WEFT_ETIMEDOUT: return "the timeout or deadline passed";
  case WEFT_EBUSY: return "busy: the loop is running, or a loop already runs on this thread";
  case WEFT_EPERM: return "the loop belongs to another thread";
  case WEFT_ESHUTDOWN: return "the loop or pool is shutting down and takes no more work";
  default:
    break;
  }
  if (err < 0 && err > -4096)
    return uv_strerror(err);
  return "unknown weft error";
}

bool weft__debug_enabled(void) {
#if defined(WEFT_DEBUG_BUILD)
  return true;
#else
  static int debug_state = -1;
  int d = __atomic_load_n(&debug_state, __ATOMIC_RELAXED);
  if (d < 0) {
    const char *env = getenv("WEFT_DEBUG");
    d = env && env[0] && strcmp(env, "0") != 0;
    __atomic_store_n(&debug_state, d, __ATOMIC_RELAXED);
  }
  return d != 0;
#endif
}

void weft__misuse(const char *fn, const char *fmt, ...) {
  if (!weft__debug_enabled())
    return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "weft: %s: %s\n", fn, msg);
}

void weft__fatal(const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "weft: fatal: %s\n", msg);
  abort();
}
