/* Tests for weft_gather (asyncio.gather): it waits for every task even when
 * one fails early, its children run concurrently (the total time is the
 * longest, not the sum), results and statuses land in the order of the
 * tasks array, the return value is the first failure in time, and the
 * argument errors.
 *
 * The children are probe tasks (testutil.h) sleeping chosen times, so each
 * test can say exactly which child ends when.
 */
#include "testutil.h"

static void run_main(weft_fn body, void *arg) {
  assert_int_equal(weft_run(body, arg, NULL), 0);
}

/* Spawns one probe per entry of p on the current loop. */
static void spawn_probes(wt_probe_t *p, weft_task_t **t, size_t n) {
  for (size_t i = 0; i < n; i++)
    assert_int_equal(weft_spawn(NULL, wt_probe_task, &p[i], &t[i]), 0);
}

static void release_all(weft_task_t **t, size_t n) {
  for (size_t i = 0; i < n; i++)
    weft_task_release(t[i]);
}

static void *waits_for_all_main(void *arg) {
  wt_probe_t p[2];
  weft_task_t *t[2];
  void *res[2] = {NULL, NULL};
  int st[2] = {1, 1};
  wt_probe_init(&p[0], 10, -5, (void *)0x10);  /* fails fast */
  wt_probe_init(&p[1], 200, 0, (void *)0x20);  /* succeeds slowly */
  spawn_probes(p, t, 2);
  double t0 = wt_now_ms();
  assert_int_equal(weft_gather(t, 2, res, st), -5);
  double elapsed = wt_now_ms() - t0;
  /* The early failure did not cut the wait short, nor cancel the slow one. */
  assert_true(elapsed >= 180);
  assert_true(p[1].ended);
  assert_int_equal(p[1].sleep_rc, 0);
  assert_int_equal(st[0], -5);
  assert_int_equal(st[1], 0);
  assert_ptr_equal(res[0], (void *)0x10);
  assert_ptr_equal(res[1], (void *)0x20);
  release_all(t, 2);
  return NULL;
}

static void gather_waits_for_all(void **state) {
  run_main(waits_for_all_main, NULL);
}

struct concurrent {
  wt_probe_t p[3];
  double elapsed;
};

static void *concurrent_main(void *arg) {
  struct concurrent *c = arg;
  wt_probe_t *p = c->p;
  weft_task_t *t[3];
  int st[3];
  wt_probe_init(&p[0], 200, 0, NULL);
  wt_probe_init(&p[1], 100, 0, NULL);
  wt_probe_init(&p[2], 300, 0, NULL);
  spawn_probes(p, t, 3);
  double t0 = wt_now_ms();
  assert_int_equal(weft_gather(t, 3, NULL, st), 0);
  c->elapsed = wt_now_ms() - t0;
  for (int i = 0; i < 3; i++)
    assert_int_equal(st[i], 0);
  release_all(t, 3);
  return NULL;
}

static void gather_runs_concurrently(void **state) {
  struct concurrent c;
  memset(&c, 0, sizeof c);
  run_main(concurrent_main, &c);
  /* They overlapped: every child had started before the first one ended. */
  double last_start = c.p[0].t_start, first_end = c.p[0].t_end;
  for (int i = 1; i < 3; i++) {
    if (c.p[i].t_start > last_start)
      last_start = c.p[i].t_start;
    if (c.p[i].t_end < first_end)
      first_end = c.p[i].t_end;
  }
  assert_true(last_start < first_end);
  /* About the longest (300 ms), not the sum (600 ms). */
  assert_true(c.elapsed >= 290);
  assert_true(c.elapsed < 600);
}

static void *empty_main(void *arg) {
  weft_task_t *none[1] = {NULL};
  assert_int_equal(weft_gather(NULL, 0, NULL, NULL), 0);
  assert_int_equal(weft_gather(none, 0, NULL, NULL), 0);
  return NULL;
}

static void gather_empty(void **state) {
  run_main(empty_main, NULL);
}

#define NORDER 5

static void *order_main(void *arg) {
  wt_probe_t p[NORDER];
  weft_task_t *t[NORDER];
  void *res[NORDER];
  int st[NORDER];
  /* Later tasks end first, so an implementation filling results in the
   * order of completion is caught. */
  for (int i = 0; i < NORDER; i++)
    wt_probe_init(&p[i], (uint64_t)(10 * (NORDER - i)), (i == 2) ? -3 : 0,
                  (void *)(uintptr_t)(100 + i));
  spawn_probes(p, t, NORDER);
  assert_int_equal(weft_gather(t, NORDER, res, st), -3);
  for (int i = 0; i < NORDER; i++) {
    assert_ptr_equal(res[i], (void *)(uintptr_t)(100 + i));
    assert_int_equal(st[i], (i == 2) ? -3 : 0);
  }
  /* Either array may be NULL. */
  assert_int_equal(weft_gather(t, NORDER, NULL, NULL), -3);
  assert_int_equal(weft_gather(t, NORDER, res, NULL), -3);
  assert_int_equal(weft_gather(t, NORDER, NULL, st), -3);
  release_all(t, NORDER);
  return NULL;
}

static void gather_results_in_task_order(void **state) {
  run_main(order_main, NULL);
}

static void *first_failure_main(void *arg) {
  wt_probe_t p[3];
  weft_task_t *t[3];
  int st[3];
  wt_probe_init(&p[0], 100, -7, NULL); /* first in the array, fails last */
  wt_probe_init(&p[1], 10, -9, NULL);  /* fails first */
  wt_probe_init(&p[2], 50, 0, NULL);
  spawn_probes(p, t, 3);
  assert_int_equal(weft_gather(t, 3, NULL, st), -9);
  assert_int_equal(st[0], -7);
  assert_int_equal(st[1], -9);
  assert_int_equal(st[2], 0);
  release_all(t, 3);
  return NULL;
}

static void gather_first_failure_in_time(void **state) {
  run_main(first_failure_main, NULL);
}

static void *first_failure_ended_main(void *arg) {
  wt_probe_t p[3];
  weft_task_t *t[3];
  int st[3];
  wt_probe_init(&p[0], 60, -7, NULL); /* first in the array, fails last */
  wt_probe_init(&p[1], 10, -9, NULL); /* fails first */
  wt_probe_init(&p[2], 0, 0, NULL);
  spawn_probes(p, t, 3);
  while (!(p[0].ended && p[1].ended && p[2].ended))
    assert_int_equal(weft_sleep(5), 0);
  /* Every task ended before the gather began, and the rule is still the
   * order in which they ended, not their order in the array. p[1] sleeps
   * less and normally ends first; a loaded machine (a slow sanitizer build
   * starting the tasks far apart) may reverse that, and the rule holds the
   * same way. */
  int first = p[1].t_end < p[0].t_end ? -9 : -7;
  assert_int_equal(weft_gather(t, 3, NULL, st), first);
  assert_int_equal(st[0], -7);
  assert_int_equal(st[1], -9);
  release_all(t, 3);
  return NULL;
}

static void gather_first_failure_among_ended(void **state) {
  run_main(first_failure_ended_main, NULL);
}

static void *ended_main(void *arg) {
  wt_probe_t p[2];
  weft_task_t *t[2];
  void *res[2];
  int st[2];
  wt_probe_init(&p[0], 0, 0, (void *)1);
  wt_probe_init(&p[1], 0, -4, (void *)2);
  spawn_probes(p, t, 2);
  assert_int_equal(weft_sleep(20), 0);
  assert_true(p[0].ended && p[1].ended);
  /* Gathering tasks that already ended returns at once with their
   * outcome: without waiting, so the loop goes through no round meanwhile
   * (and no switch into a task). */
  weft_stats_t before, after;
  assert_int_equal(weft_loop_stats(weft_loop_current(), &before), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_gather(t, 2, res, st), -4);
  assert_true(wt_now_ms() - t0 < 1000);
  assert_int_equal(weft_loop_stats(weft_loop_current(), &after), 0);
  assert_int_equal(after.rounds, before.rounds);
  assert_int_equal(after.switches, before.switches);
  assert_ptr_equal(res[0], (void *)1);
  assert_ptr_equal(res[1], (void *)2);
  assert_int_equal(st[0], 0);
  assert_int_equal(st[1], -4);
  release_all(t, 2);
  return NULL;
}

static void gather_ended_tasks(void **state) {
  run_main(ended_main, NULL);
}

static void *cancelled_child_main(void *arg) {
  wt_probe_t p[2];
  weft_task_t *t[2];
  int st[2];
  wt_probe_init(&p[0], 10000, 0, NULL);
  wt_probe_init(&p[1], 50, 0, NULL);
  spawn_probes(p, t, 2);
  weft_yield();
  assert_int_equal(weft_task_cancel(t[0]), 0);
  /* A cancelled child is not a success; its sibling still runs to its end. */
  assert_int_equal(weft_gather(t, 2, NULL, st), WEFT_ECANCELED);
  assert_int_equal(st[0], WEFT_ECANCELED);
  assert_int_equal(st[1], 0);
  assert_int_equal(p[1].sleep_rc, 0);
  release_all(t, 2);
  return NULL;
}

static void gather_cancelled_child(void **state) {
  run_main(cancelled_child_main, NULL);
}

static void *einval_main(void *arg) {
  wt_probe_t p;
  weft_task_t *t[3];
  wt_probe_init(&p, 5, 0, NULL);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &t[0]), 0);
  t[1] = NULL;
  t[2] = weft_task_current();
  assert_int_equal(weft_gather(NULL, 1, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_gather(t, 2, NULL, NULL), WEFT_EINVAL);
  /* The caller among the tasks would wait for itself forever. */
  assert_int_equal(weft_gather(&t[2], 1, NULL, NULL), WEFT_EDEADLK);
  t[1] = t[2];
  assert_int_equal(weft_gather(t, 2, NULL, NULL), WEFT_EDEADLK);
  /* The refused calls left the child alone. */
  assert_int_equal(weft_await(t[0], NULL), 0);
  assert_int_equal(p.sleep_rc, 0);
  weft_task_release(t[0]);
  return NULL;
}

static void gather_bad_arguments(void **state) {
  run_main(einval_main, NULL);
}

static void *many_main(void *arg) {
  enum { N = 500 };
  static wt_probe_t p[N];
  static weft_task_t *t[N];
  static int st[N];
  for (int i = 0; i < N; i++)
    wt_probe_init(&p[i], (uint64_t)(i % 17), 0, NULL);
  spawn_probes(p, t, N);
  assert_int_equal(weft_gather(t, N, NULL, st), 0);
  for (int i = 0; i < N; i++) {
    assert_true(p[i].ended);
    assert_int_equal(st[i], 0);
  }
  release_all(t, N);
  return NULL;
}

static void gather_many(void **state) {
  run_main(many_main, NULL);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(gather_waits_for_all),
    cmocka_unit_test(gather_runs_concurrently),
    cmocka_unit_test(gather_empty),
    cmocka_unit_test(gather_results_in_task_order),
    cmocka_unit_test(gather_first_failure_in_time),
    cmocka_unit_test(gather_first_failure_among_ended),
    cmocka_unit_test(gather_ended_tasks),
    cmocka_unit_test(gather_cancelled_child),
    cmocka_unit_test(gather_bad_arguments),
    cmocka_unit_test(gather_many),
};

WT_MAIN("gather", tests)
