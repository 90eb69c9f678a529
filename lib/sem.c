/* Counting semaphores (asyncio.Semaphore), for tasks on any loops and plain
 * threads.
 *
 * The count is one atomic word, so an acquire or a post that meets nobody
 * waiting is one atomic operation and no lock. Waiting goes through a wait
 * queue (waitq.c), and a post that finds waiters hands its permit to the
 * oldest one under the queue's lock, so later arrivals (try_acquire
 * included) cannot overtake it: the fast path is taken only while the queue
 * is empty. No wake-up is lost between the two paths: a waiter counts
 * itself in the queue's length and then looks at the count once more, a
 * post adds to the count and then looks at the length, all seq_cst, so at
 * least one of them sees the other. */
#include "internal.h"

#include <stdlib.h>

struct weft_sem {
  atomic_size_t count;
  weft__waitq_t q;
  char name[32];            /* weft_sem_set_name's; "" if none */
};

int weft_sem_new(weft_sem_t **out, size_t permits) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (permits > WEFT_SEM_MAX) {
    weft__misuse("weft_sem_new", "%zu permits is above WEFT_SEM_MAX", permits);
    return WEFT_EINVAL;
  }
  weft_sem_t *sem = weft__calloc(1, sizeof *sem);
  if (!sem)
    return WEFT_ENOMEM;
  atomic_init(&sem->count, permits);
  weft__waitq_init(&sem->q);
  *out = sem;
  return 0;
}

int weft_sem_free(weft_sem_t *sem) {
  if (!sem)
    return 0;
  if (!weft__waitq_idle(&sem->q, "weft_sem_free"))
    return WEFT_EBUSY;
  weft__waitq_destroy(&sem->q);
  free(sem);
  return 0;
}

static bool take(weft_sem_t *sem) {
  size_t v = atomic_load_explicit(&sem->count, memory_order_relaxed);
  while (v > 0)
    if (atomic_compare_exchange_weak_explicit(&sem->count, &v, v - 1, memory_order_seq_cst,
                                              memory_order_relaxed))
      return true;
  return false;
}

int weft_sem_try_acquire(weft_sem_t *sem) {
  if (!sem)
    return WEFT_EINVAL;
  if (atomic_load_explicit(&sem->q.len, memory_order_relaxed) == 0 && take(sem))
    return 0;
  return WEFT_EAGAIN;
}

int weft_sem_acquire(weft_sem_t *sem) {
  weft_task_t *t;
  int err = weft__waiter_caller(&t, "weft_sem_acquire");
  if (err)
    return err;
  if (!sem)
    return WEFT_EINVAL;
  if (atomic_load_explicit(&sem->q.len, memory_order_relaxed) == 0 && take(sem))
    return 0;
  weft__qwait_t w;
  pthread_mutex_lock(&sem->q.lock);
  weft__waitq_enter(&sem->q, &w, t, WEFT_WAIT_SEM, sem, NULL, true);
  /* The second look. Only the oldest waiter may take a permit itself:
   * one that is free while others wait is on its way to them. */
  if (weft__waitq_head(&sem->q) == &w && take(sem)) {
    weft__waitq_leave(&w);
    pthread_mutex_unlock(&sem->q.lock);
    return 0;
  }
  pthread_mutex_unlock(&sem->q.lock);
  return weft__waitq_sleep(&w);
}

int weft_sem_post(weft_sem_t *sem) {
  if (!sem)
    return WEFT_EINVAL;
  size_t v = atomic_load_explicit(&sem->count, memory_order_relaxed);
  do {
    if (v >= WEFT_SEM_MAX)
      return WEFT_ENOBUFS;
  } while (!atomic_compare_exchange_weak_explicit(&sem->count, &v, v + 1, memory_order_seq_cst,
                                                  memory_order_relaxed));
  if (weft__waitq_len(&sem->q) == 0)
    return 0;
  /* Someone waits: the permit is theirs, unless a waiter's own second look
   * took it first. */
  pthread_mutex_lock(&sem->q.lock);
  weft__qwait_t *w = weft__waitq_head(&sem->q);
  if (w && take(sem))
    weft__waitq_grant(w);
  pthread_mutex_unlock(&sem->q.lock);
  return 0;
}

size_t weft_sem_value(const weft_sem_t *sem) {
  return sem ? atomic_load_explicit(&sem->count, memory_order_relaxed) : 0;
}

int weft_sem_set_name(weft_sem_t *sem, const char *name) {
  if (!sem)
    return WEFT_EINVAL;
  return weft__name_set(sem->name, name, "weft_sem_set_name");
}

const char *weft__sem_name(const weft_sem_t *sem) {
  return sem->name;
}
