/* weft_to_thread: blocking work on libuv's thread pool while the loop keeps
 * running its other tasks. The request lives on the heap, not on the task's
 * stack, because the work cannot be interrupted: a task cancelled while it
 * waits leaves at once, and the request, orphaned, is freed by the loop when
 * the work ends (libuv calls after_work on the loop's thread even then).
 * The orphan's result goes to the cleanup function the caller gave
 * (weft_to_thread_cleanup); without one, a non-NULL result is dropped, and
 * debug mode says so, since it may own memory. */
#include "internal.h"

#include <stdlib.h>

typedef struct offload {
  uv_work_t req;
  weft_fn fn;
  void *arg;
  void *result;
  void (*cleanup)(void *result); /* for the result of an orphan, or NULL */
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
  if (o->wait) {
    weft__wake(o->wait, 0, WEFT_WAKE_DONE);
    return;
  }
  if (o->cleanup)
    o->cleanup(o->result);
  else if (o->result)
    weft__misuse("weft_to_thread", "the result %p of a call whose task left (cancelled or out "
                 "of time) was dropped; weft_to_thread_cleanup hands it to a cleanup function",
                 o->result);
  free(o);
}

static bool offload_interrupt(weft__wait_t *w, int err) {
  offload_wait_t *ow = weft__container_of(w, offload_wait_t, base);
  ow->o->wait = NULL;
  return true;
}

static int to_thread(weft_fn fn, void *arg, void (*cleanup)(void *), void **result,
                     const char *name) {
  weft_task_t *t;
  int err = weft__await_begin(&t, name);
  if (err)
    return err;
  if (!fn) {
    weft__misuse(name, "fn is NULL");
    return WEFT_EINVAL;
  }
  offload_t *o = weft__malloc(sizeof *o);
  if (!o)
    return WEFT_ENOMEM;
  o->fn = fn;
  o->arg = arg;
  o->result = NULL;
  o->cleanup = cleanup;
  offload_wait_t ow = {
    .base = {.task = t, .kind = WEFT_WAIT_THREAD, .interrupt = offload_interrupt},
    .o = o,
  };
  o->wait = &ow.base;
  err = uv_queue_work(t->loop->uv, &o->req, work_cb, after_work_cb);
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

int weft_to_thread(weft_fn fn, void *arg, void **result) {
  return to_thread(fn, arg, NULL, result, "weft_to_thread");
}

int weft_to_thread_cleanup(weft_fn fn, void *arg, void (*cleanup)(void *result),
                           void **result) {
  return to_thread(fn, arg, cleanup, result, "weft_to_thread_cleanup");
}
