/* Wait queues: the FIFO of waiters behind semaphores, mutexes, events and
 * condition variables, across loops and plain threads.
 *
 * A waiter record lives on the waiting side's stack. It enters the queue
 * under the queue's lock; whoever grants it (a post, an unlock, a set, a
 * signal) takes it off the list under that lock and wakes it through its
 * waiter (waiter.c: directly on its own loop, through its loop's inbox, or
 * through a plain thread's condition variable). Granting and being cut are
 * decided under the same lock: the interrupt hook takes a record off the
 * list only if no grant took it first, and otherwise lets the grant's wake,
 * already on its way, end the wait with 0. So a grant is never lost to a
 * cancel or a deadline, and never given to a waiter that has gone. */
#include "internal.h"

#include <stdio.h>

void weft__waitq_init(weft__waitq_t *q) {
  pthread_mutex_init(&q->lock, NULL);
  weft__queue_init(&q->list);
  atomic_init(&q->len, 0);
}

void weft__waitq_destroy(weft__waitq_t *q) {
  WEFT__ASSERT(weft__queue_empty(&q->list));
  pthread_mutex_destroy(&q->lock);
}

static void unlink_rec(weft__qwait_t *w) {
  weft__queue_remove(&w->link);
  atomic_fetch_sub_explicit(&w->q->len, 1, memory_order_relaxed);
}

static bool qwait_interrupt(weft__wait_t *base, int err) {
  (void)err;
  weft__qwait_t *w = weft__container_of(base, weft__qwait_t, waiter.base);
  pthread_mutex_lock(&w->q->lock);
  bool waiting = weft__queue_linked(&w->link);
  if (waiting)
    unlink_rec(w);
  pthread_mutex_unlock(&w->q->lock);
  return waiting;
}

void weft__waitq_enter(weft__waitq_t *q, weft__qwait_t *w, weft_task_t *t, weft_wait_kind_t kind,
                       const void *what, void *token, bool cut) {
  w->q = q;
  w->token = token;
  weft__waiter_init(&w->waiter, t, kind, what, cut ? qwait_interrupt : NULL);
  weft__queue_insert_tail(&q->list, &w->link);
  atomic_fetch_add_explicit(&q->len, 1, memory_order_seq_cst);
}

void weft__waitq_leave(weft__qwait_t *w) {
  unlink_rec(w);
  weft__waiter_destroy(&w->waiter);
}

int weft__waitq_sleep(weft__qwait_t *w) {
  int err = weft__waiter_wait(&w->waiter);
  weft__waiter_destroy(&w->waiter);
  return err;
}

weft__qwait_t *weft__waitq_head(weft__waitq_t *q) {
  if (weft__queue_empty(&q->list))
    return NULL;
  return weft__container_of(weft__queue_head(&q->list), weft__qwait_t, link);
}

void weft__waitq_grant(weft__qwait_t *w) {
  unlink_rec(w);
  weft__waiter_wake(&w->waiter, 0);
}

void weft__waitq_wake(weft__waitq_t *q, bool all) {
  if (weft__waitq_len(q) == 0)
    return;
  pthread_mutex_lock(&q->lock);
  weft__qwait_t *w;
  while ((w = weft__waitq_head(q)) != NULL) {
    weft__waitq_grant(w);
    if (!all)
      break;
  }
  pthread_mutex_unlock(&q->lock);
}

bool weft__waitq_idle(weft__waitq_t *q, const char *fn) {
  pthread_mutex_lock(&q->lock);
  bool idle = weft__queue_empty(&q->list);
  pthread_mutex_unlock(&q->lock);
  if (!idle)
    weft__misuse(fn, "tasks or threads wait on it");
  return idle;
}

void *weft__holder_token(void) {
  weft_task_t *t = weft__current();
  return t ? (void *)t : (void *)&weft__tls;
}

int weft__name_set(char dst[32], const char *name, const char *fn) {
  if (!name) {
    weft__misuse(fn, "name is NULL");
    return WEFT_EINVAL;
  }
  snprintf(dst, 32, "%s", name);
  return 0;
}
