/* Events (asyncio.Event): a flag that waiters wait to see set, for tasks on
 * any loops and plain threads. A set wakes every waiter through the wait
 * queue (waitq.c); a wait on a set event returns at once without the lock.
 * The flag and the queue's length pair up as a semaphore's count does
 * (sem.c), so a set never misses a waiter that is just arriving. */
#include "internal.h"

#include <stdlib.h>

struct weft_event {
  atomic_bool set;
  weft__waitq_t q;
  char name[32];            /* weft_event_set_name's; "" if none */
};

int weft_event_new(weft_event_t **out) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  weft_event_t *ev = weft__calloc(1, sizeof *ev);
  if (!ev)
    return WEFT_ENOMEM;
  atomic_init(&ev->set, false);
  weft__waitq_init(&ev->q);
  *out = ev;
  return 0;
}

int weft_event_free(weft_event_t *ev) {
  if (!ev)
    return 0;
  if (!weft__waitq_idle(&ev->q, "weft_event_free"))
    return WEFT_EBUSY;
  weft__waitq_destroy(&ev->q);
  free(ev);
  return 0;
}

int weft_event_set(weft_event_t *ev) {
  if (!ev)
    return WEFT_EINVAL;
  atomic_store_explicit(&ev->set, true, memory_order_seq_cst);
  weft__waitq_wake(&ev->q, true);
  return 0;
}

int weft_event_clear(weft_event_t *ev) {
  if (!ev)
    return WEFT_EINVAL;
  atomic_store_explicit(&ev->set, false, memory_order_seq_cst);
  return 0;
}

bool weft_event_is_set(const weft_event_t *ev) {
  return ev && atomic_load_explicit(&ev->set, memory_order_acquire);
}

int weft_event_wait(weft_event_t *ev) {
  weft_task_t *t;
  int err = weft__waiter_caller(&t, "weft_event_wait");
  if (err)
    return err;
  if (!ev)
    return WEFT_EINVAL;
  if (atomic_load_explicit(&ev->set, memory_order_acquire))
    return 0;
  weft__qwait_t w;
  pthread_mutex_lock(&ev->q.lock);
  weft__waitq_enter(&ev->q, &w, t, WEFT_WAIT_EVENT, ev, NULL, true);
  if (atomic_load_explicit(&ev->set, memory_order_seq_cst)) {
    weft__waitq_leave(&w);
    pthread_mutex_unlock(&ev->q.lock);
    return 0;
  }
  pthread_mutex_unlock(&ev->q.lock);
  return weft__waitq_sleep(&w);
}

int weft_event_set_name(weft_event_t *ev, const char *name) {
  if (!ev)
    return WEFT_EINVAL;
  return weft__name_set(ev->name, name, "weft_event_set_name");
}

const char *weft__event_name(const weft_event_t *ev) {
  return ev->name;
}
