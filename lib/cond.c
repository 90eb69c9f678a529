/* Condition variables (asyncio.Condition) over weft mutexes, for tasks on
 * any loops and plain threads.
 *
 * A waiter enters the condition's wait queue (waitq.c) before it lets go of
 * the mutex, so a signal sent by the next holder always finds it. A signal
 * grants the oldest waiter, a broadcast all of them; a waiter cut by a
 * cancel or a deadline before a grant reached it leaves the queue under the
 * queue's lock, so the signal goes to another waiter instead of being lost.
 * Whatever ended the wait, the waiter takes the mutex back before it
 * returns, and that wait is not cut short. */
#include "internal.h"

#include <stdlib.h>

struct weft_cond {
  weft__waitq_t q;
  char name[32];            /* weft_cond_set_name's; "" if none */
};

int weft_cond_new(weft_cond_t **out) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  weft_cond_t *cv = weft__calloc(1, sizeof *cv);
  if (!cv)
    return WEFT_ENOMEM;
  weft__waitq_init(&cv->q);
  *out = cv;
  return 0;
}

int weft_cond_free(weft_cond_t *cv) {
  if (!cv)
    return 0;
  if (!weft__waitq_idle(&cv->q, "weft_cond_free"))
    return WEFT_EBUSY;
  weft__waitq_destroy(&cv->q);
  free(cv);
  return 0;
}

int weft_cond_wait(weft_cond_t *cv, weft_mutex_t *mu) {
  if (!cv || !mu)
    return WEFT_EINVAL;
  void *token = weft__holder_token();
  if (!weft__mutex_held_by(mu, token)) {
    weft__misuse("weft_cond_wait", "the caller does not hold the mutex");
    return WEFT_EPERM;
  }
  weft_task_t *t;
  int err = weft__waiter_caller(&t, "weft_cond_wait");
  if (err)
    return err; /* the mutex was never let go */
  weft__qwait_t w;
  pthread_mutex_lock(&cv->q.lock);
  weft__waitq_enter(&cv->q, &w, t, WEFT_WAIT_COND, cv, token, true);
  pthread_mutex_unlock(&cv->q.lock);
  weft__mutex_release(mu);
  err = weft__waitq_sleep(&w);
  weft__mutex_take(mu, t, token);
  return err;
}

int weft_cond_signal(weft_cond_t *cv) {
  if (!cv)
    return WEFT_EINVAL;
  weft__waitq_wake(&cv->q, false);
  return 0;
}

int weft_cond_broadcast(weft_cond_t *cv) {
  if (!cv)
    return WEFT_EINVAL;
  weft__waitq_wake(&cv->q, true);
  return 0;
}

int weft_cond_set_name(weft_cond_t *cv, const char *name) {
  if (!cv)
    return WEFT_EINVAL;
  return weft__name_set(cv->name, name, "weft_cond_set_name");
}

const char *weft__cond_name(const weft_cond_t *cv) {
  return cv->name;
}
