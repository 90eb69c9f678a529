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
  case UV_EAI_NONAME: return "the host name is unknown (no such name)";
  case UV_EAI_NODATA: return "the host name has no address of a usable family";
  case UV_EAI_AGAIN: return "the host name could not be resolved now (no answer from DNS; try again)";
  case UV_EAI_FAIL: return "the host name could not be resolved (the DNS server failed)";
  default:
    break;
  }
  if (err < 0 && err > -4096)
    return uv_strerror(err);
  return "unknown weft error";
}
