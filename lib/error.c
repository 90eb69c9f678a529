/* Error names: weft_strerror names weft's own codes and defers to libuv for
 * the rest (weft's codes equal libuv's where libuv has one). How weft
 * complains about misuse is diag.c's. */
#include "internal.h"


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
