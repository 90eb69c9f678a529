/* Tests for tasks: scheduling order (yield, spawn, sleep), awaiting and
 * reading results, failure through weft_task_fail, handles and their
 * lifetime, and task names.
 *
 * Order is recorded in a global array as tasks run and compared with the
 * order the scheduling rules (DESIGN.md section 2) imply. Rounds are read
 * from weft_loop_stats inside tasks, which is how "starts in a later round"
 * is observed directly rather than inferred from order alone.
 */
#include "testutil.h"

static char g_order[64];
static size_t g_norder;

static void record(char c) {
  if (g_norder < sizeof g_order - 1)
    g_order[g_norder++] = c;
  g_order[g_norder] = '\0';
}

static void reset_order(void) {
  g_norder = 0;
  g_order[0] = '\0';
}

static uint64_t current_round(void) {
  weft_stats_t st;
  assert_int_equal(weft_loop_stats(weft_loop_current(), &st), 0);
  return st.rounds;
}

/* Runs body as the main task of a fresh weft_run and checks it succeeded. */
static void run_main(weft_fn body, void *arg) {
  void *r = NULL;
  assert_int_equal(weft_run(body, arg, &r), 0);
}

/* -------------------------------------------------------------- scheduling */

static void *yielder(void *arg) {
  for (int i = 0; i < 3; i++) {
    record((char)(uintptr_t)arg);
    assert_int_equal(weft_yield(), 0);
  }
  return NULL;
}

static void *yield_main(void *arg) {
  weft_task_t *t[3];
  for (int i = 0; i < 3; i++)
    assert_int_equal(weft_spawn(NULL, yielder, (void *)(uintptr_t)('A' + i), &t[i]), 0);
  assert_int_equal(weft_gather(t, 3, NULL, NULL), 0);
  for (int i = 0; i < 3; i++)
    weft_task_release(t[i]);
  return NULL;
}

static void yield_interleaves(void **state) {
  reset_order();
  run_main(yield_main, NULL);
  /* A yield goes to the back of the queue, so each task runs once per round
   * instead of running to its end. */
  assert_string_equal(g_order, "ABCABCABC");
}

static void *yield_round_task(void *arg) {
  uint64_t *rounds = arg;
  rounds[0] = current_round();
  assert_int_equal(weft_yield(), 0);
  rounds[1] = current_round();
  assert_int_equal(weft_sleep(0), 0);
  rounds[2] = current_round();
  return NULL;
}

static void yield_resumes_next_round(void **state) {
  uint64_t rounds[3] = {0, 0, 0};
  run_main(yield_round_task, rounds);
  /* Both weft_yield and weft_sleep(0) give the loop a new round. */
  assert_true(rounds[1] > rounds[0]);
  assert_true(rounds[2] > rounds[1]);
}

static uint64_t g_child_round;
static int g_child_ran;

static void *round_child(void *arg) {
  g_child_ran = 1;
  g_child_round = current_round();
  record('C');
  return NULL;
}

static void *spawner(void *arg) {
  weft_task_t *t = NULL;
  record('P');
  uint64_t spawn_round = current_round();
  assert_int_equal(weft_spawn(NULL, round_child, NULL, &t), 0);
  /* weft_spawn never suspends and never runs the child on the spot. */
  assert_int_equal(g_child_ran, 0);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_true(g_child_round > spawn_round);
  weft_task_release(t);
  return NULL;
}

static void *sibling(void *arg) {
  /* Ready at the start of the round in which the spawner runs, so it runs
   * in that round, before the newly spawned child. */
  record('Q');
  return NULL;
}

static void *spawn_main(void *arg) {
  weft_task_t *t[2];
  assert_int_equal(weft_spawn(NULL, spawner, NULL, &t[0]), 0);
  assert_int_equal(weft_spawn(NULL, sibling, NULL, &t[1]), 0);
  assert_int_equal(weft_gather(t, 2, NULL, NULL), 0);
  weft_task_release(t[0]);
  weft_task_release(t[1]);
  return NULL;
}

static void spawn_starts_later_round(void **state) {
  reset_order();
  g_child_ran = 0;
  g_child_round = 0;
  run_main(spawn_main, NULL);
  assert_int_equal(g_child_ran, 1);
  assert_string_equal(g_order, "PQC");
}

static void *sleep_recorder(void *arg) {
  uintptr_t v = (uintptr_t)arg;
  assert_int_equal(weft_sleep(v >> 8), 0);
  record((char)(v & 0xff));
  return NULL;
}

static void *sleep_order_main(void *arg) {
  const uintptr_t *specs = arg;
  weft_task_t *t[8];
  size_t n = 0;
  for (; specs[n] != 0; n++)
    assert_int_equal(weft_spawn(NULL, sleep_recorder, (void *)specs[n], &t[n]), 0);
  assert_int_equal(weft_gather(t, n, NULL, NULL), 0);
  for (size_t i = 0; i < n; i++)
    weft_task_release(t[i]);
  return NULL;
}

#define SPEC(ms, c) (((uintptr_t)(ms) << 8) | (uintptr_t)(c))

static void sleep_deadline_order(void **state) {
  /* Spawned in the order A B C D, they must wake in deadline order. The
   * deadlines are 100 ms apart, so that a slow build's steps (valgrind on
   * a busy machine) cannot blur them. */
  static const uintptr_t specs[] = {SPEC(400, 'A'), SPEC(100, 'B'), SPEC(300, 'C'),
                                    SPEC(200, 'D'), 0};
  reset_order();
  run_main(sleep_order_main, (void *)specs);
  assert_string_equal(g_order, "BDCA");
}

static void sleep_equal_deadlines_fifo(void **state) {
  /* Started in the same round with the same delay, their deadlines are
   * equal, and they wake in the order they went to sleep. */
  static const uintptr_t specs[] = {SPEC(20, 'A'), SPEC(20, 'B'), SPEC(20, 'C'),
                                    SPEC(20, 'D'), SPEC(20, 'E'), SPEC(20, 'F'), 0};
  reset_order();
  run_main(sleep_order_main, (void *)specs);
  assert_string_equal(g_order, "ABCDEF");
}

static void *sleep_time_task(void *arg) {
  double t0 = wt_now_ms();
  assert_int_equal(weft_sleep(60), 0);
  *(double *)arg = wt_now_ms() - t0;
  return NULL;
}

static void sleep_lasts(void **state) {
  double elapsed = 0;
  run_main(sleep_time_task, &elapsed);
  /* "At least ms": allow a little for libuv's cached loop time. */
  assert_true(elapsed >= 50);
  assert_true(elapsed < 1000);
}

/* -------------------------------------------------------- await and results */

struct awaiter {
  weft_task_t *target;
  int rc;
  void *result;
};

static void *awaiter_task(void *arg) {
  struct awaiter *a = arg;
  a->rc = weft_await(a->target, &a->result);
  return NULL;
}

static void *await_twice_main(void *arg) {
  wt_probe_t p;
  weft_task_t *t = NULL, *w[2];
  struct awaiter a[2];
  wt_probe_init(&p, 20, 0, (void *)0xabc);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &t), 0);
  /* Two tasks await the same target while it runs... */
  for (int i = 0; i < 2; i++) {
    a[i].target = t;
    a[i].rc = 1;
    a[i].result = NULL;
    assert_int_equal(weft_spawn(NULL, awaiter_task, &a[i], &w[i]), 0);
  }
  assert_int_equal(weft_gather(w, 2, NULL, NULL), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(a[i].rc, 0);
    assert_ptr_equal(a[i].result, (void *)0xabc);
    weft_task_release(w[i]);
  }
  assert_true(p.ended);
  /* ...and after it ended, the result can still be read, again and again. */
  void *r = NULL;
  assert_int_equal(weft_await(t, &r), 0);
  assert_ptr_equal(r, (void *)0xabc);
  r = NULL;
  assert_int_equal(weft_await(t, &r), 0);
  assert_ptr_equal(r, (void *)0xabc);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(weft_task_status(t), 0);
  weft_task_release(t);
  return NULL;
}

static void await_result_many_times(void **state) {
  run_main(await_twice_main, NULL);
}

static void *fail_twice_task(void *arg) {
  assert_int_equal(weft_task_fail(-5), 0);
  assert_int_equal(weft_sleep(1), 0);
  /* The last call wins. */
  assert_int_equal(weft_task_fail(-6), 0);
  return (void *)0x66;
}

static void *failure_main(void *arg) {
  wt_probe_t p;
  weft_task_t *t = NULL, *t2 = NULL;
  void *r = NULL;
  wt_probe_init(&p, 5, -5, (void *)0x55);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &t), 0);
  assert_int_equal(weft_await(t, &r), -5);
  /* A failed task still hands over what it returned. */
  assert_ptr_equal(r, (void *)0x55);
  assert_int_equal(weft_task_status(t), -5);
  assert_int_equal(weft_spawn(NULL, fail_twice_task, NULL, &t2), 0);
  assert_int_equal(weft_await(t2, &r), -6);
  assert_ptr_equal(r, (void *)0x66);
  weft_task_release(t);
  weft_task_release(t2);
  return NULL;
}

static void task_fail_sets_status(void **state) {
  run_main(failure_main, NULL);
}

/* ---------------------------------------------------------------- handles */

static int g_detached_done;

static void *detached_task(void *arg) {
  uintptr_t kind = (uintptr_t)arg;
  if (kind % 3 == 1)
    weft_sleep(kind % 7);
  else if (kind % 3 == 2)
    weft_yield();
  if (kind % 5 == 0)
    weft_task_fail(-5);
  g_detached_done++;
  return NULL;
}

static void *detached_main(void *arg) {
  for (uintptr_t i = 0; i < 100; i++)
    assert_int_equal(weft_spawn(NULL, detached_task, (void *)i, NULL), 0);
  while (g_detached_done < 100)
    assert_int_equal(weft_sleep(5), 0);
  weft_stats_t st;
  assert_int_equal(weft_loop_stats(weft_loop_current(), &st), 0);
  assert_int_equal(st.live, 1); /* only main is left */
  return NULL;
}

static void detached_tasks_freed(void **state) {
  /* Nothing to read back: the sanitizer build's leak checker is the judge
   * that a detached task is freed when it ends. */
  g_detached_done = 0;
  run_main(detached_main, NULL);
  assert_int_equal(g_detached_done, 100);
}

static void handle_outlives_task(void **state) {
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL, *early = NULL;
  wt_probe_t p;
  int ran = 0;
  wt_probe_init(&p, 10, 0, (void *)0x99);
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_spawn(loop, wt_probe_task, &p, &t), 0);
  assert_int_equal(weft_task_status(t), WEFT_EPENDING);
  /* A handle released before its task even started: the task still runs,
   * and is freed when it ends. */
  assert_int_equal(weft_spawn(loop, wt_flag_task, &ran, &early), 0);
  weft_task_release(early);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  assert_int_equal(ran, 1);
  /* Long after it ended, on the owner thread outside the loop, the handle
   * reads the same. */
  assert_int_equal(weft_task_status(t), 0);
  assert_int_equal(weft_task_status(t), 0);
  weft_task_release(NULL);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
  assert_int_equal(weft_task_status(NULL), WEFT_EINVAL);
}

static void *self_task(void *arg) {
  weft_task_t **out = arg;
  out[0] = weft_task_current();
  weft_yield();
  /* The same task is current after a suspension. */
  out[1] = weft_task_current();
  return NULL;
}

static void *current_main(void *arg) {
  weft_task_t *seen[2][2], *t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(NULL, self_task, seen[i], &t[i]), 0);
  assert_int_equal(weft_gather(t, 2, NULL, NULL), 0);
  for (int i = 0; i < 2; i++) {
    assert_non_null(seen[i][0]);
    assert_ptr_equal(seen[i][0], seen[i][1]);
    weft_task_release(t[i]);
  }
  assert_ptr_not_equal(seen[0][0], seen[1][0]);
  assert_ptr_not_equal(seen[0][0], weft_task_current());
  return NULL;
}

static void task_current_is_stable(void **state) {
  assert_null(weft_task_current());
  run_main(current_main, NULL);
  assert_null(weft_task_current());
}

/* ------------------------------------------------------------------ names */

static void task_names(void **state) {
  weft_loop_t *loop = NULL;
  weft_task_t *a = NULL, *b = NULL;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_spawn(loop, wt_echo_task, NULL, &a), 0);
  assert_int_equal(weft_spawn(loop, wt_echo_task, NULL, &b), 0);
  const char *na = weft_task_name(a);
  const char *nb = weft_task_name(b);
  assert_non_null(na);
  assert_non_null(nb);
  /* "task-<id>", with a decimal id, distinct per task. */
  assert_int_equal(strncmp(na, "task-", 5), 0);
  assert_true(strlen(na) > 5);
  for (const char *c = na + 5; *c; c++)
    assert_true(*c >= '0' && *c <= '9');
  assert_string_not_equal(na, nb);

  char name[] = "worker";
  assert_int_equal(weft_task_set_name(a, name), 0);
  /* The name is copied, not referenced. */
  name[0] = 'X';
  assert_string_equal(weft_task_name(a), "worker");
  /* Long names are cut to 31 bytes. */
  const char *longname = "0123456789abcdef0123456789abcdef0123456789";
  assert_int_equal(weft_task_set_name(b, longname), 0);
  assert_int_equal(strlen(weft_task_name(b)), 31);
  assert_int_equal(strncmp(weft_task_name(b), longname, 31), 0);

  assert_int_equal(weft_task_set_name(NULL, "x"), WEFT_EINVAL);
  assert_int_equal(weft_task_set_name(a, NULL), WEFT_EINVAL);
  assert_string_equal(weft_task_name(a), "worker");

  assert_int_equal(weft_loop_run_until_complete(loop, a, NULL), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, b, NULL), 0);
  /* The name stays readable after the task ended. */
  assert_string_equal(weft_task_name(a), "worker");
  weft_task_release(a);
  weft_task_release(b);
  assert_int_equal(weft_loop_close(loop), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(yield_interleaves),
    cmocka_unit_test(yield_resumes_next_round),
    cmocka_unit_test(spawn_starts_later_round),
    cmocka_unit_test(sleep_deadline_order),
    cmocka_unit_test(sleep_equal_deadlines_fifo),
    cmocka_unit_test(sleep_lasts),
    cmocka_unit_test(await_result_many_times),
    cmocka_unit_test(task_fail_sets_status),
    cmocka_unit_test(detached_tasks_freed),
    cmocka_unit_test(handle_outlives_task),
    cmocka_unit_test(task_current_is_stable),
    cmocka_unit_test(task_names),
};

WT_MAIN("task", tests)
