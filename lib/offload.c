/* weft_to_thread: blocking work on libuv's thread pool while the loop keeps
 * running its other tasks. The request lives on the heap, not on the task's
 * stack, because the work cannot be interrupted: a task cancelled while it
 * waits leaves at once, and the request, orphaned, is freed by the loop when
 * the work ends (libuv calls after_work on the loop's thread even then). */
#include "internal.h"

#include <stdlib.h>

typedef struct offload {
  uv_work_t req;
  weft_fn fn;
  void *arg;
  void *result;
  weft__wait_t *wait;  /* the parked task's wait; NULL once it left */
} offload_t;

typedef struct offload_wait {
  weft__wait_t base;
  offload_t *o;
} offload_wait_t;

static void work_cb(uv_work_t *req) {
  offload_t *o = weft__container_of(req, offload_t, req);
  o->result = o->fn(o->arg);
}

static void after_work_cb(uv_work_t *req, int status) {
  offload_t *o = weft__container_of(req, offload_t, req);
  (void)status;  /* UV_ECANCELED only for uv_cancel, which weft never calls */
  if (o->wait)
    weft__wake(o->wait, 0, WEFT_WAKE_DONE);
  else
    free(o);
}

static bool offload_interrupt(weft__wait_t *w, int err) {
  offload_wait_t *ow = weft__container_of(w, offload_wait_t, base);
  ow->o->wait = NULL;
  return true;
}

int weft_to_thread(weft_fn fn, void *arg, void **result) {
  weft_task_t *t;
  int err = weft__await_begin(&t, "weft_to_thread");
  if (err)
    return err;
  if (!fn) {
    weft__misuse("weft_to_thread", "fn is NULL");
    return WEFT_EINVAL;
  }
  offload_t *o = weft__malloc(sizeof *o);
  if (!o)
    return WEFT_ENOMEM;
  o->fn = fn;
  o->arg = arg;
  o->result = NULL;
  offload_wait_t ow = {
    .base = {.task = t, .kind = WEFT_WAIT_THREAD, .interrupt = offload_interrupt},
    .o = o,
  };
  o->wait = &ow.base;
  err = uv_queue_work(&t->loop->uv, &o->req, work_cb, after_work_cb);
  if (err) {
    free(o);
    return err == UV_ENOMEM ? WEFT_ENOMEM : err;
  }
  err = weft__park(&ow.base);
  if (err)
    return err;  /* cancelled or out of time: o is the loop's to free */
  if (result)
    *result = o->result;
  free(o);
  return 0;
}
