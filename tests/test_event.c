/* Tests for the loop's event hook (weft_loop_opts_t.on_event): a small
 * program's events arrive in an order that tells its story. A task is
 * stepped inside a round, parks on what it waits for (with the right wait
 * kind and detail), is woken with the right cause, is stepped again in a
 * later round, and ends with its status.
 *
 * The hook only records into a fixed array; the checks run afterwards on the
 * main thread, outside the scheduler.
 */
#include "testutil.h"

#define MAX_EVENTS 4096

static weft_loop_event_t g_ev[MAX_EVENTS];
static size_t g_nev;
static size_t g_dropped;

static void record_event(const weft_loop_event_t *ev, void *arg) {
  (*(int *)arg)++;
  if (g_nev < MAX_EVENTS)
    g_ev[g_nev++] = *ev;
  else
    g_dropped++;
}

/* Runs fn(arg) on a fresh loop with the recording hook; returns its status. */
static int run_recorded(weft_fn fn, void *arg, weft_task_t **task) {
  static int calls;
  weft_loop_t *loop = NULL;
  weft_loop_opts_t opts;
  memset(&opts, 0, sizeof opts);
  opts.on_event = record_event;
  opts.event_arg = &calls;
  g_nev = 0;
  g_dropped = 0;
  calls = 0;
  assert_int_equal(weft_loop_new(&loop, &opts), 0);
  assert_int_equal(weft_spawn(loop, fn, arg, task), 0);
  int rc = weft_loop_run_until_complete(loop, *task, NULL);
  assert_int_equal(weft_loop_close(loop), 0);
  /* event_arg reached the hook, once per event. */
  assert_int_equal((size_t)calls, g_nev + g_dropped);
  assert_int_equal(g_dropped, 0);
  return rc;
}

/* Index of the first event at or after from that matches kind and task
 * (task NULL matches any task), or -1. */
static long find(size_t from, weft_loop_event_kind_t kind, const weft_task_t *task) {
  for (size_t i = from; i < g_nev; i++) {
    if (g_ev[i].kind == kind && (task == NULL || g_ev[i].task == task))
      return (long)i;
  }
  return -1;
}

static size_t count(weft_loop_event_kind_t kind, const weft_task_t *task) {
  size_t n = 0;
  for (size_t i = 0; i < g_nev; i++) {
    if (g_ev[i].kind == kind && (task == NULL || g_ev[i].task == task))
      n++;
  }
  return n;
}

/* Checks what holds for every recording: time and rounds never go back,
 * ROUND events carry no task and task events carry one, and every task
 * event comes after some ROUND event of the same round number. */
static void check_common(void) {
  uint64_t last_round_seen = 0;
  int any_round = 0;
  for (size_t i = 0; i < g_nev; i++) {
    const weft_loop_event_t *e = &g_ev[i];
    if (i > 0) {
      assert_true(e->time_ns >= g_ev[i - 1].time_ns);
      assert_true(e->round >= g_ev[i - 1].round);
    }
    if (e->kind == WEFT_EV_ROUND) {
      assert_null(e->task);
      last_round_seen = e->round;
      any_round = 1;
    } else {
      assert_non_null(e->task);
    }
    if (e->kind == WEFT_EV_STEP) {
      /* A step always runs inside a round that was announced. */
      assert_true(any_round);
      assert_int_equal(e->round, last_round_seen);
    }
  }
  assert_true(any_round);
}

static void *sleepy(void *arg) {
  assert_int_equal(weft_sleep(20), 0);
  return NULL;
}

static void events_for_a_sleep(void **state) {
  weft_task_t *t = NULL;
  assert_int_equal(run_recorded(sleepy, NULL, &t), 0);
  check_common();

  long spawn = find(0, WEFT_EV_SPAWN, t);
  long step1 = find(0, WEFT_EV_STEP, t);
  long park = find(0, WEFT_EV_PARK, t);
  long wake = find(0, WEFT_EV_WAKE, t);
  long step2 = step1 < 0 ? -1 : find((size_t)step1 + 1, WEFT_EV_STEP, t);
  long done = find(0, WEFT_EV_DONE, t);
  assert_true(spawn >= 0);
  assert_true(step1 >= 0);
  assert_true(park >= 0);
  assert_true(wake >= 0);
  assert_true(step2 >= 0);
  assert_true(done >= 0);
  /* The story, in order. */
  assert_true(spawn < step1);
  assert_true(step1 < park);
  assert_true(park < wake);
  assert_true(wake < step2);
  assert_true(step2 < done);
  /* What the task parked on and why it woke. */
  assert_int_equal(g_ev[park].wait, WEFT_WAIT_SLEEP);
  assert_int_equal(g_ev[park].detail, 20);
  assert_int_equal(g_ev[wake].wait, WEFT_WAIT_SLEEP);
  assert_int_equal(g_ev[wake].detail, WEFT_WAKE_DONE);
  assert_int_equal(g_ev[done].status, 0);
  /* Its second step came in a later round than its first, and that round
   * was announced between the wake-up and the step. */
  assert_true(g_ev[step2].round > g_ev[step1].round);
  long round2 = find((size_t)wake, WEFT_EV_ROUND, NULL);
  assert_true(round2 >= 0 && round2 < step2);
  /* The round that ran the first step counted it as ready. */
  long round1 = -1;
  for (long i = step1; i >= 0; i--) {
    if (g_ev[i].kind == WEFT_EV_ROUND) {
      round1 = i;
      break;
    }
  }
  assert_true(round1 >= 0);
  assert_true(g_ev[round1].count >= 1);
  /* About 20 ms lay between parking and waking. */
  assert_true(g_ev[wake].time_ns - g_ev[park].time_ns >= 15 * 1000000ull);
  assert_int_equal(count(WEFT_EV_DONE, t), 1);
  assert_int_equal(count(WEFT_EV_SPAWN, t), 1);
  weft_task_release(t);
}

struct family {
  weft_task_t *child;
  weft_task_t *yielder;
  weft_task_t *victim;
};

static void *yield_once(void *arg) {
  assert_int_equal(weft_yield(), 0);
  return NULL;
}

static void *fails(void *arg) {
  weft_task_fail(-5);
  return NULL;
}

static void *family_main(void *arg) {
  struct family *f = arg;
  wt_probe_t p;
  wt_probe_init(&p, 10000, 0, NULL);
  assert_int_equal(weft_spawn(NULL, yield_once, NULL, &f->yielder), 0);
  assert_int_equal(weft_spawn(NULL, fails, NULL, &f->child), 0);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &f->victim), 0);
  assert_int_equal(weft_await(f->child, NULL), -5);
  assert_int_equal(weft_await(f->yielder, NULL), 0);
  assert_int_equal(weft_task_cancel(f->victim), 0);
  assert_int_equal(weft_await(f->victim, NULL), WEFT_ECANCELED);
  return NULL;
}

static void events_for_join_yield_cancel(void **state) {
  weft_task_t *t = NULL;
  struct family f;
  memset(&f, 0, sizeof f);
  assert_int_equal(run_recorded(family_main, &f, &t), 0);
  check_common();

  /* Main parked on a join and was woken by the child's end. */
  long park = find(0, WEFT_EV_PARK, t);
  assert_true(park >= 0);
  assert_int_equal(g_ev[park].wait, WEFT_WAIT_JOIN);
  long child_done = find(0, WEFT_EV_DONE, f.child);
  assert_true(child_done >= 0);
  assert_int_equal(g_ev[child_done].status, -5);
  long wake = find((size_t)park, WEFT_EV_WAKE, t);
  assert_true(wake > child_done);
  assert_int_equal(g_ev[wake].wait, WEFT_WAIT_JOIN);
  assert_int_equal(g_ev[wake].detail, WEFT_WAKE_DONE);

  /* The yielder parked on a yield. */
  long ypark = find(0, WEFT_EV_PARK, f.yielder);
  assert_true(ypark >= 0);
  assert_int_equal(g_ev[ypark].wait, WEFT_WAIT_YIELD);
  long ydone = find(0, WEFT_EV_DONE, f.yielder);
  assert_true(ydone > ypark);
  assert_int_equal(g_ev[ydone].status, 0);

  /* The victim was woken by its cancellation and ended cancelled. */
  long vpark = find(0, WEFT_EV_PARK, f.victim);
  assert_true(vpark >= 0);
  assert_int_equal(g_ev[vpark].wait, WEFT_WAIT_SLEEP);
  assert_int_equal(g_ev[vpark].detail, 10000);
  long vwake = find((size_t)vpark, WEFT_EV_WAKE, f.victim);
  assert_true(vwake > vpark);
  assert_int_equal(g_ev[vwake].detail, WEFT_WAKE_CANCEL);
  long vdone = find(0, WEFT_EV_DONE, f.victim);
  assert_true(vdone > vwake);
  assert_int_equal(g_ev[vdone].status, WEFT_ECANCELED);

  /* Main ended last. */
  long mdone = find(0, WEFT_EV_DONE, t);
  assert_true(mdone > vdone);
  assert_int_equal(g_ev[mdone].status, 0);
  assert_int_equal(count(WEFT_EV_DONE, NULL), 4);
  assert_int_equal(count(WEFT_EV_SPAWN, NULL), 4);

  weft_task_release(f.child);
  weft_task_release(f.yielder);
  weft_task_release(f.victim);
  weft_task_release(t);
}

static void *deadline_main(void *arg) {
  assert_int_equal(weft_deadline_set(20), 0);
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  weft_deadline_clear();
  return NULL;
}

static void events_for_a_deadline(void **state) {
  weft_task_t *t = NULL;
  assert_int_equal(run_recorded(deadline_main, NULL, &t), 0);
  check_common();
  long park = find(0, WEFT_EV_PARK, t);
  assert_true(park >= 0);
  assert_int_equal(g_ev[park].wait, WEFT_WAIT_SLEEP);
  long wake = find((size_t)park, WEFT_EV_WAKE, t);
  assert_true(wake > park);
  assert_int_equal(g_ev[wake].detail, WEFT_WAKE_DEADLINE);
  weft_task_release(t);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(events_for_a_sleep),
    cmocka_unit_test(events_for_join_yield_cancel),
    cmocka_unit_test(events_for_a_deadline),
};

WT_MAIN("event", tests)
