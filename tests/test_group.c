/* Tests for structured groups (asyncio.TaskGroup): a group's wait returns
 * only when every child has ended; the first child to fail cancels its
 * siblings and is what the wait returns; a cancelled child is not a failure;
 * a group that is cancelling or already waited on refuses new children; and
 * releasing a group with children still running cancels them.
 *
 * Children count themselves in and out through globals, so "after every
 * child has ended" is checked by reading the count when the wait returns.
 */
#include "testutil.h"

#include <errno.h>

static int g_ended;   /* children that reached the end of their body */
static int g_started; /* children that began to run */

static void reset(void) {
  g_ended = 0;
  g_started = 0;
}

static void run_main(weft_fn body, void *arg) {
  assert_int_equal(weft_run(body, arg, NULL), 0);
}

/* A child that sleeps arg milliseconds and counts itself. */
static void *child_ok(void *arg) {
  g_started++;
  weft_sleep((uint64_t)(uintptr_t)arg);
  g_ended++;
  return NULL;
}

/* A child that sleeps arg milliseconds and then fails with -5. */
static void *child_fail(void *arg) {
  g_started++;
  weft_sleep((uint64_t)(uintptr_t)arg);
  weft_task_fail(-5);
  g_ended++;
  return NULL;
}

static void *all_ok_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_non_null(g);
  for (uintptr_t i = 0; i < 3; i++)
    assert_int_equal(weft_group_spawn(g, NULL, child_ok, (void *)(10 + 20 * i)), 0);
  assert_int_equal(weft_group_wait(g), 0);
  /* Every child ran to its end before the wait returned. */
  assert_int_equal(g_ended, 3);
  weft_group_release(g);
  return NULL;
}

static void group_all_succeed(void **state) {
  reset();
  run_main(all_ok_main, NULL);
}

/* A sibling whose unwinding takes more than one step: it awaits a
 * grandchild, so when it is cancelled it must first cancel and wait for the
 * grandchild. The group's wait has to last through all of that. */
static wt_probe_t g_sleeper;     /* a child sleeping 10 s */
static wt_probe_t g_grandchild;  /* sleeping 10 s under an awaiting child */
static int g_awaiter_rc;

static void *child_awaits_grandchild(void *arg) {
  weft_task_t *t = NULL;
  g_started++;
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &g_grandchild, &t), 0);
  g_awaiter_rc = weft_await(t, NULL);
  weft_task_release(t);
  g_ended++;
  return NULL;
}

static void *sleeper_child(void *arg) {
  g_started++;
  wt_probe_task(&g_sleeper);
  g_ended++;
  return NULL;
}

static void *failure_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, sleeper_child, NULL), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_awaits_grandchild, NULL), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_ok, (void *)(uintptr_t)5000), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_fail, (void *)(uintptr_t)20), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_group_wait(g), -5);
  *(double *)arg = wt_now_ms() - t0;
  /* All four children ended before the wait returned; the grandchild too. */
  assert_int_equal(g_ended, 4);
  assert_true(g_grandchild.ended);
  weft_group_release(g);
  return NULL;
}

static void group_failure_cancels_siblings(void **state) {
  double elapsed = 0;
  reset();
  wt_probe_init(&g_sleeper, 10000, 0, NULL);
  wt_probe_init(&g_grandchild, 10000, 0, NULL);
  g_awaiter_rc = 1;
  run_main(failure_main, &elapsed);
  assert_true(elapsed >= 15);
  assert_true(elapsed < 2000);
  assert_int_equal(g_sleeper.sleep_rc, WEFT_ECANCELED);
  assert_int_equal(g_awaiter_rc, WEFT_ECANCELED);
  assert_int_equal(g_grandchild.sleep_rc, WEFT_ECANCELED);
}

static int g_late_ran;

static void *late_child(void *arg) {
  g_late_ran = 1;
  return NULL;
}

static void *spawn_after_failure_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_fail, (void *)(uintptr_t)0), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_ok, (void *)(uintptr_t)10000), 0);
  /* Wait until the first child has failed: the group is cancelling then
   * (its sibling may already have unwound too). */
  while (g_ended < 1)
    assert_int_equal(weft_sleep(1), 0);
  assert_int_equal(weft_group_spawn(g, NULL, late_child, NULL), WEFT_ECANCELED);
  assert_int_equal(weft_group_wait(g), -5);
  assert_int_equal(g_ended, 2);
  weft_group_release(g);
  return NULL;
}

static void group_spawn_after_failure(void **state) {
  reset();
  g_late_ran = 0;
  run_main(spawn_after_failure_main, NULL);
  assert_int_equal(g_late_ran, 0);
}

static void *spawn_after_wait_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_ok, (void *)(uintptr_t)5), 0);
  assert_int_equal(weft_group_wait(g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, late_child, NULL), WEFT_EINVAL);
  /* Give a wrongly spawned child the chance to run, to catch it. */
  assert_int_equal(weft_sleep(10), 0);
  weft_group_release(g);
  return NULL;
}

static void group_spawn_after_wait(void **state) {
  reset();
  g_late_ran = 0;
  run_main(spawn_after_wait_main, NULL);
  assert_int_equal(g_late_ran, 0);
}

static void *release_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, sleeper_child, NULL), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_ok, (void *)(uintptr_t)10000), 0);
  assert_int_equal(weft_sleep(10), 0);
  assert_int_equal(g_started, 2);
  double t0 = wt_now_ms();
  weft_group_release(g);
  /* The children were cancelled; give them a few rounds to unwind. */
  for (int i = 0; i < 100 && g_ended < 2; i++)
    assert_int_equal(weft_sleep(5), 0);
  assert_int_equal(g_ended, 2);
  assert_true(wt_now_ms() - t0 < 1000);
  return NULL;
}

static void group_release_cancels_children(void **state) {
  reset();
  wt_probe_init(&g_sleeper, 10000, 0, NULL);
  run_main(release_main, NULL);
  assert_int_equal(g_sleeper.sleep_rc, WEFT_ECANCELED);
}

static void *self_cancelling_child(void *arg) {
  g_started++;
  assert_int_equal(weft_task_cancel(weft_task_current()), 0);
  assert_int_equal(weft_yield(), WEFT_ECANCELED);
  g_ended++;
  return NULL;
}

static void *cancelled_child_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, self_cancelling_child, NULL), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_ok, (void *)(uintptr_t)50), 0);
  /* A cancelled child is not a failure: its sibling is left to finish and
   * the group succeeds. */
  assert_int_equal(weft_group_wait(g), 0);
  assert_int_equal(g_ended, 2);
  weft_group_release(g);
  return NULL;
}

static void group_cancelled_child_is_not_failure(void **state) {
  reset();
  run_main(cancelled_child_main, NULL);
}

static void *waiter_task(void *arg) {
  weft_group_t *g = arg;
  return (void *)(intptr_t)weft_group_wait(g);
}

static void *wait_cancelled_main(void *arg) {
  weft_group_t *g = NULL;
  weft_task_t *w = NULL;
  void *r = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, sleeper_child, NULL), 0);
  assert_int_equal(weft_group_spawn(g, NULL, child_awaits_grandchild, NULL), 0);
  assert_int_equal(weft_spawn(NULL, waiter_task, g, &w), 0);
  /* Wait until the grandchild runs: its parent awaits it, and the waiter
   * (which ran before it) is in the group's wait. */
  while (!g_grandchild.started)
    assert_int_equal(weft_sleep(1), 0);
  assert_int_equal(weft_task_cancel(w), 0);
  /* The waiter itself ends cancelled; what its wait returned is its
   * result. */
  assert_int_equal(weft_await(w, &r), WEFT_ECANCELED);
  /* The wait returned the cancellation, after every child ended. */
  assert_int_equal((int)(intptr_t)r, WEFT_ECANCELED);
  assert_int_equal(g_ended, 2);
  weft_task_release(w);
  weft_group_release(g);
  return NULL;
}

static void group_wait_cancelled(void **state) {
  reset();
  wt_probe_init(&g_sleeper, 10000, 0, NULL);
  wt_probe_init(&g_grandchild, 10000, 0, NULL);
  g_awaiter_rc = 1;
  run_main(wait_cancelled_main, NULL);
  assert_int_equal(g_sleeper.sleep_rc, WEFT_ECANCELED);
  assert_int_equal(g_grandchild.sleep_rc, WEFT_ECANCELED);
}

static void *empty_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_wait(g), 0);
  weft_group_release(g);
  assert_int_equal(weft_group_new(NULL), WEFT_EINVAL);
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(NULL, NULL, child_ok, NULL), WEFT_EINVAL);
  assert_int_equal(weft_group_spawn(g, NULL, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_group_wait(g), 0);
  weft_group_release(g);
  return NULL;
}

static void group_empty_and_einval(void **state) {
  reset();
  run_main(empty_main, NULL);
  assert_int_equal(g_started, 0);
}

/* ------------------------------------------------------ across loops */

/* Children on several loops of a pool, waited for from a plain thread and
 * from a task of another loop: the first failure, wherever it happens,
 * cancels the siblings on every loop, and the wait returns it once all have
 * ended. */
typedef struct xchild {
  int fail_after_ms;      /* > 0: fails with -EIO after that long */
  atomic_int rc;          /* what its sleep returned */
  atomic_int ended;
} xchild_t;

static void *xchild_main(void *arg) {
  xchild_t *c = arg;
  if (c->fail_after_ms > 0) {
    atomic_store(&c->rc, weft_sleep((uint64_t)c->fail_after_ms));
    weft_task_fail(-EIO);
  } else {
    atomic_store(&c->rc, weft_sleep(10000));
  }
  atomic_store(&c->ended, 1);
  return NULL;
}

#define NX 6

static void spawn_children(weft_group_t *g, weft_pool_t *pool, xchild_t *c) {
  for (int i = 0; i < NX; i++) {
    c[i] = (xchild_t){.fail_after_ms = i == 3 ? 30 : 0};
    atomic_init(&c[i].rc, 1);
    assert_int_equal(weft_group_spawn(g, weft_pool_loop(pool, (unsigned)i % 2), xchild_main, &c[i]),
                     0);
  }
}

static void check_children(xchild_t *c) {
  for (int i = 0; i < NX; i++) {
    assert_int_equal(atomic_load(&c[i].ended), 1);
    assert_int_equal(atomic_load(&c[i].rc), i == 3 ? 0 : WEFT_ECANCELED);
  }
}

typedef struct xwait {
  weft_pool_t *pool;
  xchild_t c[NX];
  int rc;
} xwait_t;

static void *xwait_task(void *arg) {
  xwait_t *x = arg;
  weft_group_t *g;
  assert_int_equal(weft_group_new(&g), 0);
  spawn_children(g, x->pool, x->c);
  x->rc = weft_group_wait(g);
  weft_group_release(g);
  return NULL;
}

static void group_spans_loops(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  /* From a plain thread. */
  xchild_t c[NX];
  weft_group_t *g;
  double t0 = wt_now_ms();
  assert_int_equal(weft_group_new(&g), 0);
  spawn_children(g, pool, c);
  assert_int_equal(weft_group_wait(g), -EIO);
  check_children(c);
  assert_true(wt_now_ms() - t0 < 5000);
  /* A finished group takes no more children. */
  assert_int_equal(weft_group_spawn(g, weft_pool_loop(pool, 0), xchild_main, &c[0]), WEFT_EINVAL);
  weft_group_release(g);

  /* From a task of a loop that is not the children's. */
  xwait_t x = {.pool = pool};
  assert_int_equal(weft_run(xwait_task, &x, NULL), 0);
  assert_int_equal(x.rc, -EIO);
  check_children(x.c);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* Released with children running on other loops: they are cancelled, and
 * the group lives until the last of them has left it (ASan would see a
 * child touch a freed group). */
static void group_release_across_loops(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  xchild_t c[NX];
  weft_group_t *g;
  assert_int_equal(weft_group_new(&g), 0);
  for (int i = 0; i < NX; i++) {
    c[i] = (xchild_t){0};
    atomic_init(&c[i].rc, 1);
    assert_int_equal(weft_group_spawn(g, weft_pool_loop(pool, (unsigned)i % 2), xchild_main, &c[i]),
                     0);
  }
  weft_group_release(g);
  /* Every child has ended once both loops have no live task. */
  for (unsigned l = 0; l < 2; l++) {
    weft_stats_t st;
    double until = wt_now_ms() + 10000;
    do {
      uv_sleep(1);
      assert_int_equal(weft_loop_stats(weft_pool_loop(pool, l), &st), 0);
    } while (st.live > 0 && wt_now_ms() < until);
    assert_int_equal(st.live, 0);
  }
  for (int i = 0; i < NX; i++) {
    /* Cancelled in its sleep, or before it ever ran. */
    if (atomic_load(&c[i].ended))
      assert_int_equal(atomic_load(&c[i].rc), WEFT_ECANCELED);
    else
      assert_int_equal(atomic_load(&c[i].rc), 1);
  }
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A plain thread may not wait for a group with a child on a loop it owns
 * itself: that loop could never run meanwhile. */
static void group_wait_refuses_own_loop(void **state) {
  weft_loop_t *loop;
  weft_group_t *g;
  xchild_t c = {0};
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, loop, xchild_main, &c), 0);
  assert_int_equal(weft_group_wait(g), WEFT_ENOTASK);
  weft_group_release(g);
  assert_int_equal(weft_loop_close(loop), 0);
  assert_int_equal(atomic_load(&c.ended), 0); /* cancelled before it ran */
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(group_spans_loops),
    cmocka_unit_test(group_release_across_loops),
    cmocka_unit_test(group_wait_refuses_own_loop),
    cmocka_unit_test(group_all_succeed),
    cmocka_unit_test(group_failure_cancels_siblings),
    cmocka_unit_test(group_spawn_after_failure),
    cmocka_unit_test(group_spawn_after_wait),
    cmocka_unit_test(group_release_cancels_children),
    cmocka_unit_test(group_cancelled_child_is_not_failure),
    cmocka_unit_test(group_wait_cancelled),
    cmocka_unit_test(group_empty_and_einval),
};

WT_MAIN("group", tests)
