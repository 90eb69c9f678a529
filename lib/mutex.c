/* Mutexes (asyncio.Lock) that may be held across await points, for tasks on
 * any loops and plain threads.
 *
 * The lock word is the holder's identity (weft__holder_token: the task, or
 * the thread outside tasks), NULL when free, so taking a free mutex nobody
 * waits for is one compare-and-swap. Waiting goes through a wait queue
 * (waitq.c); an unlock that finds waiters hands the mutex to the oldest,
 * writing its identity into the lock word under the queue's lock, so later
 * arrivals cannot overtake it. The fast path and the queue pair up as the
 * semaphore's do (sem.c): a waiter counts itself in and looks at the word
 * once more, an unlock frees the word and then looks at the count. */
#include "internal.h"

#include <stdlib.h>

struct weft_mutex {
  _Atomic(void *) holder;   /* NULL: free */
  weft__waitq_t q;
  char name[32];            /* weft_mutex_set_name's; "" if none */
};

int weft_mutex_new(weft_mutex_t **out) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  weft_mutex_t *mu = weft__calloc(1, sizeof *mu);
  if (!mu)
    return WEFT_ENOMEM;
  atomic_init(&mu->holder, NULL);
  weft__waitq_init(&mu->q);
  *out = mu;
  return 0;
}

int weft_mutex_free(weft_mutex_t *mu) {
  if (!mu)
    return 0;
  pthread_mutex_lock(&mu->q.lock);
  bool busy = !weft__queue_empty(&mu->q.list) ||
              atomic_load_explicit(&mu->holder, memory_order_relaxed) != NULL;
  pthread_mutex_unlock(&mu->q.lock);
  if (busy) {
    weft__misuse("weft_mutex_free", "the mutex is held or waited on");
    return WEFT_EBUSY;
  }
  weft__waitq_destroy(&mu->q);
  free(mu);
  return 0;
}

static bool take(weft_mutex_t *mu, void *token) {
  void *expected = NULL;
  return atomic_compare_exchange_strong_explicit(&mu->holder, &expected, token,
                                                 memory_order_seq_cst, memory_order_relaxed);
}

bool weft__mutex_held_by(const weft_mutex_t *mu, void *token) {
  return atomic_load_explicit(&mu->holder, memory_order_relaxed) == token;
}

/* Waits for mu in the queue (cut: cancellation and deadlines may end the
 * wait). 0 once token holds it. */
static int take_slow(weft_mutex_t *mu, weft_task_t *t, void *token, bool cut) {
  weft__qwait_t w;
  pthread_mutex_lock(&mu->q.lock);
  weft__waitq_enter(&mu->q, &w, t, WEFT_WAIT_MUTEX, mu, token, cut);
  if (weft__waitq_head(&mu->q) == &w && take(mu, token)) {
    weft__waitq_leave(&w);
    pthread_mutex_unlock(&mu->q.lock);
    return 0;
  }
  pthread_mutex_unlock(&mu->q.lock);
  return weft__waitq_sleep(&w);
}

void weft__mutex_take(weft_mutex_t *mu, weft_task_t *t, void *token) {
  if (atomic_load_explicit(&mu->q.len, memory_order_relaxed) == 0 && take(mu, token))
    return;
  int err = take_slow(mu, t, token, false);
  WEFT__ASSERT(err == 0);
  (void)err;
}

int weft_mutex_lock(weft_mutex_t *mu) {
  weft_task_t *t;
  int err = weft__waiter_caller(&t, "weft_mutex_lock");
  if (err)
    return err;
  if (!mu)
    return WEFT_EINVAL;
  void *token = weft__holder_token();
  if (weft__mutex_held_by(mu, token)) {
    weft__misuse("weft_mutex_lock", "the caller holds the mutex already (it is not recursive)");
    return WEFT_EDEADLK;
  }
  if (atomic_load_explicit(&mu->q.len, memory_order_relaxed) == 0 && take(mu, token))
    return 0;
  return take_slow(mu, t, token, true);
}

int weft_mutex_try_lock(weft_mutex_t *mu) {
  if (!mu)
    return WEFT_EINVAL;
  if (weft__tls.running && !weft__current()) {
    weft__misuse("weft_mutex_try_lock", "called in a libuv callback: no task to hold the mutex");
    return WEFT_ENOTASK;
  }
  void *token = weft__holder_token();
  if (weft__mutex_held_by(mu, token))
    return WEFT_EDEADLK;
  if (atomic_load_explicit(&mu->q.len, memory_order_relaxed) == 0 && take(mu, token))
    return 0;
  return WEFT_EAGAIN;
}

void weft__mutex_release(weft_mutex_t *mu) {
  atomic_store_explicit(&mu->holder, NULL, memory_order_seq_cst);
  if (weft__waitq_len(&mu->q) == 0)
    return;
  /* Someone waits: the mutex is theirs, unless the oldest waiter's own
   * second look took it first. */
  pthread_mutex_lock(&mu->q.lock);
  weft__qwait_t *w = weft__waitq_head(&mu->q);
  if (w && take(mu, w->token))
    weft__waitq_grant(w);
  pthread_mutex_unlock(&mu->q.lock);
}

int weft_mutex_unlock(weft_mutex_t *mu) {
  if (!mu)
    return WEFT_EINVAL;
  if (!weft__mutex_held_by(mu, weft__holder_token())) {
    weft__misuse("weft_mutex_unlock", "the caller does not hold the mutex");
    return WEFT_EPERM;
  }
  weft__mutex_release(mu);
  return 0;
}

int weft_mutex_set_name(weft_mutex_t *mu, const char *name) {
  if (!mu)
    return WEFT_EINVAL;
  return weft__name_set(mu->name, name, "weft_mutex_set_name");
}

const char *weft__mutex_name(const weft_mutex_t *mu) {
  return mu->name;
}
