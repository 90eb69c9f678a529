/* One waiter: whoever waits for something that another thread, another
 * loop or a callback of its own loop will bring, and the one way to wake it
 * from anywhere. A waiter has two backends:
 *
 *   - a task: it parks on its loop (weft__park) with the waiter's wait
 *     record, so cancellation and deadlines cut it through the record's
 *     interrupt hook, as every await point's;
 *   - a plain thread (one that runs no loop, e.g. main driving a pool): it
 *     blocks on the waiter's own condition variable.
 *
 * weft__waiter_wake picks the way: a task of the loop this thread runs is
 * made ready at once; a task of another loop is woken through that loop's
 * inbox (so a busy loop pays no system call); a plain thread is signalled.
 * A wake that comes before the wait (a plain thread not yet blocked, or a
 * task of this thread still running its step) is kept and the wait returns
 * at once. weft__waiter_post runs a piece of work on the waiter's side
 * under the same rules, for the waits whose state only the waiting side may
 * touch (a join's count of what is still pending).
 *
 * A waiter lives on the waiting side's stack, or inside a request, for the
 * length of the wait; a waker touches it no more once it has woken it
 * (the plain backend's signal is sent under its lock, which the waiter
 * takes before it returns). libdill's clause and trigger are the model. */
#include "internal.h"

#include <errno.h>
#include <time.h>

static weft_wake_cause_t cause_of(int result) {
  return result == 0 ? WEFT_WAKE_DONE
       : result == WEFT_ECANCELED ? WEFT_WAKE_CANCEL
       : result == WEFT_ETIMEDOUT ? WEFT_WAKE_DEADLINE
       : WEFT_WAKE_DONE;
}

void weft__waiter_init(weft__waiter_t *w, weft_task_t *t, weft_wait_kind_t kind, const void *what,
                       bool (*interrupt)(weft__wait_t *w, int err)) {
  *w = (weft__waiter_t){
    .base = {.task = t, .kind = kind, .what = what, .interrupt = interrupt},
    .loop = t ? t->loop : NULL,
  };
  if (!t) {
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
  }
}

void weft__waiter_destroy(weft__waiter_t *w) {
  if (!w->loop) {
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
  }
}

/* A wake from another thread, run on the task's loop. */
static void wake_run(weft__msg_t *m, weft_loop_t *loop) {
  (void)loop;
  weft__waiter_t *w = weft__container_of(m, weft__waiter_t, msg);
  weft__waiter_wake(w, w->result);
}

/* The task's side of a wake: on the task's own thread. */
static void wake_task(weft__waiter_t *w, int result) {
  weft_task_t *t = w->base.task;
  if (t->state == WEFT__WAITING && t->wait == &w->base) {
    weft__wake(&w->base, result, cause_of(result));
  } else {
    /* Still running the step that will wait: the wait returns at once. */
    w->done = true;
    w->result = result;
  }
}

void weft__waiter_wake(weft__waiter_t *w, int result) {
  if (!w->loop) {
    if (w->posting) {
      /* Inside weft__waiter_post's work, which holds the lock. posting is
       * read unlocked: only a post sets it, under the lock, so a waker
       * that is not inside a post reads false for a waiter whose every
       * wake comes from posts (a join), or that never posts (a group).
       * Do not wake a plain waiter from outside its posts while others
       * post to it. */
      w->done = true;
      w->result = result;
      pthread_cond_signal(&w->cond);
      return;
    }
    pthread_mutex_lock(&w->lock);
    w->done = true;
    w->result = result;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    return;
  }
  if (w->loop == weft__tls.running) {
    wake_task(w, result);
    return;
  }
  w->result = result;
  w->msg.run = wake_run;
  /* A loop keeps its inbox open while any of its tasks lives, and this one
   * waits here. */
  if (weft__inbox_push(w->loop, &w->msg, false) != 0)
    weft__fatal("a waiting task's loop no longer takes messages");
}

void weft__waiter_post(weft__waiter_t *w, weft__msg_t *m) {
  if (!w->loop) {
    pthread_mutex_lock(&w->lock);
    w->posting = true;
    m->run(m, NULL);
    w->posting = false;
    pthread_mutex_unlock(&w->lock);
    return;
  }
  if (w->loop == weft__tls.running) {
    m->run(m, w->loop);
    return;
  }
  if (weft__inbox_push(w->loop, m, false) != 0)
    weft__fatal("a waiting task's loop no longer takes messages");
}

/* Work posted from the waiting plain thread itself, before it blocks. */
void weft__waiter_lock(weft__waiter_t *w) {
  if (!w->loop) {
    pthread_mutex_lock(&w->lock);
    w->posting = true;
  }
}

void weft__waiter_unlock(weft__waiter_t *w) {
  if (!w->loop) {
    w->posting = false;
    pthread_mutex_unlock(&w->lock);
  }
}

int weft__waiter_wait(weft__waiter_t *w) {
  if (w->loop) {
    if (w->done)
      return w->result;
    return weft__park(&w->base);
  }
  pthread_mutex_lock(&w->lock);
  while (!w->done)
    pthread_cond_wait(&w->cond, &w->lock);
  int result = w->result;
  pthread_mutex_unlock(&w->lock);
  return result;
}

int weft__waiter_wait_ms(weft__waiter_t *w, const struct timespec *until) {
  WEFT__ASSERT(!w->loop);
  int result = WEFT_ETIMEDOUT;
  pthread_mutex_lock(&w->lock);
  while (!w->done)
    if (pthread_cond_timedwait(&w->cond, &w->lock, until) == ETIMEDOUT)
      break;
  if (w->done)
    result = w->result;
  pthread_mutex_unlock(&w->lock);
  return result;
}
