#define _GNU_SOURCE
/* A negative control for the TSan mode: two tasks on two loops of a pool
 * write one plain int with no synchronisation. Built only with TSan, and
 * registered as an expected failure: if this exits 0, TSan is not watching
 * the pool's threads, and the TSan mode's zero reports would mean nothing. */
#include <weft.h>

#include <stdatomic.h>

static int shared; /* deliberately unsynchronised */
static atomic_int running;

static void *writer(void *arg) {
  /* Both writers run at once before either writes: otherwise one could end
   * before the other starts, with the pool's own synchronisation (a lock or
   * an atomic both loops go through) between them, and TSan, rightly, would
   * see no race. Relaxed accesses order nothing for TSan. */
  atomic_fetch_add_explicit(&running, 1, memory_order_relaxed);
  while (atomic_load_explicit(&running, memory_order_relaxed) < 2) {
  }
  for (int i = 0; i < 100000; i++)
    shared += (int)(intptr_t)arg;
  return NULL;
}

int main(void) {
  weft_pool_t *pool;
  weft_pool_opts_t opts = {.workers = 2};
  if (weft_pool_new(&pool, &opts) != 0)
    return 2;
  weft_task_t *t[2];
  for (unsigned i = 0; i < 2; i++)
    if (weft_spawn(weft_pool_loop(pool, i), writer, (void *)(intptr_t)1, &t[i]) != 0)
      return 2;
  weft_gather(t, 2, NULL, NULL);
  weft_task_release(t[0]);
  weft_task_release(t[1]);
  weft_pool_shutdown(pool, WEFT_DRAIN);
  return shared == 0 ? 1 : 0;
}
