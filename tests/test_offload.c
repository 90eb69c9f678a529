/* Tests for weft_to_thread (asyncio.to_thread): fn runs on libuv's thread
 * pool and its result comes back, while the calling task's loop keeps
 * running other tasks; a task cancelled (or out of time) while it waits gets
 * its answer at once, and fn, which cannot be interrupted, ends later
 * without harm (its result discarded, nothing written into the task's
 * memory, nothing leaked: the ASan build checks that); bad calls.
 *
 * What fn writes is read by the test after a happens-before edge (the
 * to_thread return, or an atomic it waited on). Assertions are made only on
 * the test's own thread: on it, tasks of weft_run and loops the test runs
 * itself; for pool tasks, values are recorded and checked after an await.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

/* A piece of blocking work: sleeps, records where and that it ran. */
typedef struct work {
  unsigned sleep_ms;
  void *ret;
  pthread_t thread;
  atomic_int started;
  atomic_int done;
} work_t;

static void work_init(work_t *w, unsigned sleep_ms, void *ret) {
  memset(w, 0, sizeof *w);
  w->sleep_ms = sleep_ms;
  w->ret = ret;
  atomic_init(&w->started, 0);
  atomic_init(&w->done, 0);
}

static void *work_fn(void *arg) {
  work_t *w = arg;
  w->thread = pthread_self();
  atomic_store(&w->started, 1);
  if (w->sleep_ms)
    uv_sleep(w->sleep_ms);
  atomic_store(&w->done, 1);
  return w->ret;
}

/* Counts 10 ms ticks until told to stop. ticks is atomic: work on another
 * thread may watch it. */
typedef struct ticker {
  atomic_int ticks;
  bool stop;
} ticker_t;

static void *ticker_task(void *arg) {
  ticker_t *t = arg;
  while (!t->stop && weft_sleep(10) == 0)
    t->ticks++;
  return NULL;
}

/* Work that sleeps like work_fn, then does not return before the ticker
 * has advanced 5 times since it began (or 5 s passed): the loop must keep
 * running while fn has not returned. */
typedef struct tick_work {
  work_t w;
  atomic_int *ticks;
  int ticks_seen;   /* how far the ticker advanced while fn ran */
} tick_work_t;

static void *tick_work_fn(void *arg) {
  tick_work_t *tw = arg;
  int base = atomic_load(tw->ticks);
  void *r = work_fn(&tw->w);
  wt_wait_ge(tw->ticks, base + 5, 5000);
  tw->ticks_seen = atomic_load(tw->ticks) - base;
  return r;
}

/* ------------------------------------------------------------ the result */

static void *result_main(void *arg) {
  ticker_t tick = {0, false};
  work_t w;
  tick_work_t tw;
  weft_task_t *tt = NULL;
  assert_int_equal(weft_spawn(NULL, ticker_task, &tick, &tt), 0);
  weft_yield(); /* the ticker is asleep before the work begins */

  work_init(&tw.w, 200, (void *)(uintptr_t)0xbeef);
  tw.ticks = &tick.ticks;
  tw.ticks_seen = 0;
  void *r = NULL;
  double t0 = wt_now_ms();
  assert_int_equal(weft_to_thread(tick_work_fn, &tw, &r), 0);
  double elapsed = wt_now_ms() - t0;
  assert_ptr_equal(r, (void *)(uintptr_t)0xbeef);
  assert_int_equal(atomic_load(&tw.w.done), 1);
  /* fn ran on another thread, and the loop went on meanwhile: the ticker
   * advanced while fn had not returned (fn waits for 5 ticks, about 50 ms
   * after its 200 ms sleep); a loop blocked for the duration shows none. */
  assert_false(pthread_equal(tw.w.thread, pthread_self()));
  if (tw.ticks_seen < 5)
    fail_msg("the ticker advanced %d times while fn ran", tw.ticks_seen);
  assert_true(elapsed >= 190);
  assert_true(elapsed < 2000);

  /* result may be NULL; a NULL return comes back as NULL. */
  work_init(&w, 1, &w);
  assert_int_equal(weft_to_thread(work_fn, &w, NULL), 0);
  assert_int_equal(atomic_load(&w.done), 1);
  work_init(&w, 0, NULL);
  r = &r;
  assert_int_equal(weft_to_thread(work_fn, &w, &r), 0);
  assert_null(r);

  tick.stop = true;
  assert_int_equal(weft_await(tt, NULL), 0);
  weft_task_release(tt);
  return NULL;
}

static void to_thread_returns_result(void **state) {
  assert_int_equal(weft_run(result_main, NULL, NULL), 0);
}

/* Eight tasks each offload 100 ms of blocking work at once: they overlap on
 * libuv's pool (4 threads by default), about 200 ms in all, not 800. */
#define NPAR 8

typedef struct par {
  work_t w;
  int rc;
  void *r;
} par_t;

static void *par_task(void *arg) {
  par_t *p = arg;
  p->rc = weft_to_thread(work_fn, &p->w, &p->r);
  return NULL;
}

static void *parallel_main(void *arg) {
  par_t p[NPAR];
  weft_task_t *t[NPAR];
  for (int i = 0; i < NPAR; i++) {
    work_init(&p[i].w, 100, (void *)(uintptr_t)(i + 1));
    p[i].rc = 1;
    p[i].r = NULL;
    assert_int_equal(weft_spawn(NULL, par_task, &p[i], &t[i]), 0);
  }
  double t0 = wt_now_ms();
  assert_int_equal(weft_gather(t, NPAR, NULL, NULL), 0);
  double elapsed = wt_now_ms() - t0;
  assert_true(elapsed >= 95);
  if (elapsed >= 700)
    fail_msg("%d offloads of 100 ms took %.0f ms: they did not overlap", NPAR, elapsed);
  for (int i = 0; i < NPAR; i++) {
    assert_int_equal(p[i].rc, 0);
    assert_ptr_equal(p[i].r, (void *)(uintptr_t)(i + 1));
    weft_task_release(t[i]);
  }
  return NULL;
}

static void to_thread_overlaps(void **state) {
  assert_int_equal(weft_run(parallel_main, NULL, NULL), 0);
}

/* --------------------------------------------------------- cancellation */

typedef struct waiter {
  work_t w;
  int rc;
  void *result;      /* the result slot given to weft_to_thread: written
                        only if it returns 0 */
  double t_returned; /* when weft_to_thread returned */
  int after_rc;      /* an await point after the cancelled one */
} waiter_t;

static void *waiter_task(void *arg) {
  waiter_t *wt = arg;
  wt->result = (void *)(uintptr_t)0x5e1f;
  wt->rc = weft_to_thread(work_fn, &wt->w, &wt->result);
  wt->t_returned = wt_now_ms();
  wt->after_rc = weft_sleep(1);
  return NULL;
}

/* Cancels itself, then offloads. */
static void *precancelled_task(void *arg) {
  waiter_t *wt = arg;
  weft_task_cancel(weft_task_current());
  wt->result = (void *)(uintptr_t)0x5e1f;
  wt->rc = weft_to_thread(work_fn, &wt->w, &wt->result);
  return NULL;
}

static void *cancel_main(void *arg) {
  waiter_t wt;
  weft_task_t *t = NULL;
  memset(&wt, 0, sizeof wt);
  work_init(&wt.w, 300, (void *)(uintptr_t)0xbad);
  wt.rc = 1;
  assert_int_equal(weft_spawn(NULL, waiter_task, &wt, &t), 0);
  /* Let fn start on the thread pool. */
  while (atomic_load(&wt.w.started) == 0)
    assert_int_equal(weft_sleep(1), 0);
  assert_int_equal(weft_sleep(20), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  /* At once: long before fn's 300 ms are over. */
  assert_int_equal(wt.rc, WEFT_ECANCELED);
  assert_true(wt.t_returned - t0 < 150);
  assert_int_equal(atomic_load(&wt.w.done), 0);
  assert_ptr_equal(wt.result, (void *)(uintptr_t)0x5e1f);
  assert_int_equal(wt.after_rc, WEFT_ECANCELED); /* sticky */
  weft_task_release(t);

  /* fn ends later: harmless, and the loop carries on; its result is
   * discarded, not written into the slot of a task that has gone. */
  while (atomic_load(&wt.w.done) == 0)
    assert_int_equal(weft_sleep(5), 0);
  assert_int_equal(weft_sleep(50), 0);
  assert_ptr_equal(wt.result, (void *)(uintptr_t)0x5e1f);

  /* The loop's offloading still works. */
  work_t w2;
  void *r = NULL;
  work_init(&w2, 10, &w2);
  assert_int_equal(weft_to_thread(work_fn, &w2, &r), 0);
  assert_ptr_equal(r, &w2);

  /* A deadline that passes meanwhile: WEFT_ETIMEDOUT, at once. */
  assert_int_equal(weft_deadline_set(50), 0);
  work_init(&w2, 300, NULL);
  t0 = wt_now_ms();
  assert_int_equal(weft_to_thread(work_fn, &w2, &r), WEFT_ETIMEDOUT);
  double elapsed = wt_now_ms() - t0;
  assert_true(elapsed >= 40);
  assert_true(elapsed < 250);
  assert_int_equal(weft_deadline_clear(), 0);
  while (atomic_load(&w2.done) == 0)
    assert_int_equal(weft_sleep(5), 0);

  /* A task cancelled before it calls weft_to_thread: the call fails at once
   * and fn never runs. */
  memset(&wt, 0, sizeof wt);
  work_init(&wt.w, 0, NULL);
  wt.rc = 1;
  assert_int_equal(weft_spawn(NULL, precancelled_task, &wt, &t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(wt.rc, WEFT_ECANCELED);
  assert_ptr_equal(wt.result, (void *)(uintptr_t)0x5e1f);
  assert_int_equal(weft_sleep(50), 0);
  assert_int_equal(atomic_load(&wt.w.started), 0);
  return NULL;
}

static void to_thread_cancelled(void **state) {
  assert_int_equal(weft_run(cancel_main, NULL, NULL), 0);
}

/* The task is cancelled and the loop's owner returns at once, while fn is
 * still running: the loop must still close cleanly (and, under the
 * sanitizers, without a leak or a late write into freed memory). */
static waiter_t g_orphan;

static void *orphan_main(void *arg) {
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, waiter_task, &g_orphan, &t), 0);
  while (atomic_load(&g_orphan.w.started) == 0)
    assert_int_equal(weft_sleep(1), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  return NULL;
}

static void to_thread_orphan_outlives_task(void **state) {
  memset(&g_orphan, 0, sizeof g_orphan);
  work_init(&g_orphan.w, 200, NULL);
  g_orphan.rc = 1;
  double t0 = wt_now_ms();
  assert_int_equal(weft_run(orphan_main, NULL, NULL), 0);
  double elapsed = wt_now_ms() - t0;
  assert_true(elapsed < 5000);
  assert_int_equal(g_orphan.rc, WEFT_ECANCELED);
  assert_true(wt_wait_ge(&g_orphan.w.done, 1, 5000));
  uv_sleep(50);
  assert_ptr_equal(g_orphan.result, (void *)(uintptr_t)0x5e1f);
}

/* A cancelled call's result goes to the cleanup the caller gave, once, on
 * the loop's thread, after fn returns; a call that completes keeps its
 * result and never calls the cleanup. (Without it the malloc'd result of
 * the orphan leaked: valgrind's "definitely lost: 26 bytes".) */
typedef struct owned {
  atomic_int gate;        /* fn returns once this is 1 */
  atomic_int started;
  void *made;             /* what fn returned */
  atomic_int cleanups;
  void *cleaned;          /* what the cleanup got */
  pthread_t cleanup_thread;
  pthread_t loop_thread;
} owned_t;

static owned_t g_owned;

static void *owning_fn(void *arg) {
  owned_t *o = arg;
  char *p = malloc(26);
  snprintf(p, 26, "owned by the caller");
  o->made = p;
  atomic_store(&o->started, 1);
  while (atomic_load(&o->gate) == 0)
    uv_sleep(1);
  return p;
}

static void owning_cleanup(void *result) {
  g_owned.cleaned = result;
  g_owned.cleanup_thread = pthread_self();
  atomic_fetch_add(&g_owned.cleanups, 1);
  free(result);
}

static void *owning_task(void *arg) {
  void *r = NULL;
  int rc = weft_to_thread_cleanup(owning_fn, arg, owning_cleanup, &r);
  assert_int_equal(rc, WEFT_ECANCELED);
  assert_null(r);
  return NULL;
}

static void *cleanup_main(void *arg) {
  owned_t *o = arg;
  o->loop_thread = pthread_self();
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, owning_task, o, &t), 0);
  while (atomic_load(&o->started) == 0)
    assert_int_equal(weft_sleep(1), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  /* fn is still running: nothing to clean yet. */
  assert_int_equal(atomic_load(&o->cleanups), 0);
  atomic_store(&o->gate, 1);
  while (atomic_load(&o->cleanups) == 0)
    assert_int_equal(weft_sleep(1), 0);

  /* Completed: the result is the caller's, the cleanup is not called. */
  atomic_store(&o->started, 0);
  void *r = NULL;
  assert_int_equal(weft_to_thread_cleanup(owning_fn, o, owning_cleanup, &r), 0);
  assert_ptr_equal(r, o->made);
  free(r);
  assert_int_equal(atomic_load(&o->cleanups), 1);
  return NULL;
}

static void to_thread_cancelled_result_cleaned(void **state) {
  memset(&g_owned, 0, sizeof g_owned);
  assert_int_equal(weft_run(cleanup_main, &g_owned, NULL), 0);
  assert_int_equal(atomic_load(&g_owned.cleanups), 1);
  assert_non_null(g_owned.cleaned);
  assert_true(pthread_equal(g_owned.cleanup_thread, g_owned.loop_thread));
}

/* ---------------------------------------------------------- bad calls */

static void *einval_main(void *arg) {
  void *r = (void *)1;
  assert_int_equal(weft_to_thread(NULL, NULL, &r), WEFT_EINVAL);
  assert_ptr_equal(r, (void *)1);
  assert_int_equal(weft_to_thread(NULL, NULL, NULL), WEFT_EINVAL);
  return NULL;
}

typedef struct cb_call {
  work_t w;
  int rc;
  int done;
} cb_call_t;

static void to_thread_from_cb(void *arg) {
  cb_call_t *c = arg;
  c->rc = weft_to_thread(work_fn, &c->w, NULL);
  c->done = 1;
}

static void *cb_main(void *arg) {
  cb_call_t *c = arg;
  assert_int_equal(weft_loop_call_soon(weft_loop_current(), to_thread_from_cb, c), 0);
  while (!c->done)
    assert_int_equal(weft_sleep(1), 0);
  return NULL;
}

static void to_thread_bad_calls(void **state) {
  assert_int_equal(weft_run(einval_main, NULL, NULL), 0);

  /* Outside a task: on a plain thread, and in a libuv callback on a loop's
   * thread. fn never runs. */
  work_t w;
  work_init(&w, 0, NULL);
  void *r = (void *)1;
  assert_int_equal(weft_to_thread(work_fn, &w, &r), WEFT_ENOTASK);
  assert_ptr_equal(r, (void *)1);
  cb_call_t c;
  memset(&c, 0, sizeof c);
  work_init(&c.w, 0, NULL);
  c.rc = 1;
  assert_int_equal(weft_run(cb_main, &c, NULL), 0);
  assert_int_equal(c.rc, WEFT_ENOTASK);
  uv_sleep(50);
  assert_int_equal(atomic_load(&w.started), 0);
  assert_int_equal(atomic_load(&c.w.started), 0);
}

/* ------------------------------------------------------- on pool loops */

#define NLOOPS 3
#define PER_LOOP 4

typedef struct pooled {
  work_t w;
  int rc;
  void *r;
} pooled_t;

static void *pooled_task(void *arg) {
  pooled_t *p = arg;
  p->rc = weft_to_thread(work_fn, &p->w, &p->r);
  return NULL;
}

static void to_thread_on_pool_loops(void **state) {
  weft_pool_t *pool = NULL;
  weft_pool_opts_t opts = {.workers = NLOOPS};
  assert_int_equal(weft_pool_new(&pool, &opts), 0);
  static pooled_t p[NLOOPS * PER_LOOP];
  weft_task_t *t[NLOOPS * PER_LOOP];
  static ticker_t tick[NLOOPS];
  weft_task_t *tt[NLOOPS];
  for (int l = 0; l < NLOOPS; l++) {
    tick[l].ticks = 0;
    tick[l].stop = false;
    assert_int_equal(weft_spawn(weft_pool_loop(pool, l), ticker_task, &tick[l], &tt[l]), 0);
  }
  for (int i = 0; i < NLOOPS * PER_LOOP; i++) {
    work_init(&p[i].w, 50, &p[i]);
    p[i].rc = 1;
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i % NLOOPS), pooled_task, &p[i], &t[i]), 0);
  }
  assert_int_equal(weft_gather(t, NLOOPS * PER_LOOP, NULL, NULL), 0);
  for (int i = 0; i < NLOOPS * PER_LOOP; i++) {
    assert_int_equal(p[i].rc, 0);
    assert_ptr_equal(p[i].r, &p[i]);
    assert_int_equal(atomic_load(&p[i].w.done), 1);
    weft_task_release(t[i]);
  }
  /* Cancelling from another thread a pool task that waits in to_thread. */
  pooled_t c;
  weft_task_t *ct = NULL;
  work_init(&c.w, 300, NULL);
  c.rc = 1;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), pooled_task, &c, &ct), 0);
  assert_true(wt_wait_ge(&c.w.started, 1, 5000));
  uv_sleep(20);
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(ct), 0);
  assert_int_equal(weft_await(ct, NULL), WEFT_ECANCELED);
  assert_true(wt_now_ms() - t0 < 200);
  assert_int_equal(c.rc, WEFT_ECANCELED);
  weft_task_release(ct);
  /* Shut down while the orphaned fn may still run: the loop waits for it
   * or frees its request safely, never writes into freed memory. */
  assert_int_equal(weft_pool_shutdown(pool, WEFT_CANCEL), 0);
  for (int l = 0; l < NLOOPS; l++) {
    assert_true(tick[l].ticks > 0);
    weft_task_release(tt[l]);
  }
  assert_true(wt_wait_ge(&c.w.done, 1, 5000));
  uv_sleep(20);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(to_thread_returns_result),
    cmocka_unit_test(to_thread_overlaps),
    cmocka_unit_test(to_thread_cancelled),
    cmocka_unit_test(to_thread_orphan_outlives_task),
    cmocka_unit_test(to_thread_cancelled_result_cleaned),
    cmocka_unit_test(to_thread_bad_calls),
    cmocka_unit_test(to_thread_on_pool_loops),
};

WT_MAIN("offload", tests)
