/* Tests for timeouts: weft_wait_for (asyncio.wait_for) and the per-task
 * deadline (asyncio.timeout). A task that ends in time gives its own status
 * and result; one that does not is cancelled, and the caller gets
 * WEFT_ETIMEDOUT only after it has unwound. A passed deadline makes every
 * await of the task return WEFT_ETIMEDOUT until it is cleared, and cancels
 * what the task was awaiting.
 *
 * Durations are checked against generous bounds: well above the timeout's
 * lower edge and far below the 10 s the victims sleep.
 */
#include "testutil.h"

static void run_main(weft_fn body, void *arg) {
  assert_int_equal(weft_run(body, arg, NULL), 0);
}

/* ---------------------------------------------------------------- wait_for */

static void *in_time_main(void *arg) {
  wt_probe_t p, q;
  weft_task_t *t = NULL, *u = NULL;
  void *r = NULL;
  wt_probe_init(&p, 20, 0, (void *)0x42);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &t), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_wait_for(t, 1000, &r), 0);
  /* It returned when the task ended, not when the timeout would have. */
  assert_true(wt_now_ms() - t0 < 900);
  assert_ptr_equal(r, (void *)0x42);
  assert_int_equal(p.sleep_rc, 0);
  weft_task_release(t);

  /* A failure in time is the task's own status. */
  wt_probe_init(&q, 10, -5, (void *)0x43);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &q, &u), 0);
  r = NULL;
  assert_int_equal(weft_wait_for(u, 1000, &r), -5);
  assert_ptr_equal(r, (void *)0x43);
  weft_task_release(u);
  return NULL;
}

static void wait_for_in_time(void **state) {
  run_main(in_time_main, NULL);
}

struct slow {
  wt_probe_t p;
  weft_task_t *t;
  int rc;
  double elapsed;
  int ended_at_return;
};

static void *slow_main(void *arg) {
  struct slow *s = arg;
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &s->p, &s->t), 0);
  double t0 = wt_now_ms();
  s->rc = weft_wait_for(s->t, 50, NULL);
  s->elapsed = wt_now_ms() - t0;
  s->ended_at_return = s->p.ended;
  /* The timeout belonged to that one wait: the caller is not timed out. */
  assert_int_equal(weft_sleep(1), 0);
  return NULL;
}

static void wait_for_times_out(void **state) {
  struct slow s;
  memset(&s, 0, sizeof s);
  wt_probe_init(&s.p, 10000, 0, NULL);
  run_main(slow_main, &s);
  assert_int_equal(s.rc, WEFT_ETIMEDOUT);
  assert_true(s.elapsed >= 40);
  assert_true(s.elapsed < 1000);
  /* The slow task was cancelled and had unwound when wait_for returned. */
  assert_int_equal(s.p.sleep_rc, WEFT_ECANCELED);
  assert_true(s.ended_at_return);
  assert_int_equal(weft_task_status(s.t), WEFT_ECANCELED);
  weft_task_release(s.t);
}

static void *wait_for_cancelled_caller(void *arg) {
  struct slow *s = arg;
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &s->p, &s->t), 0);
  s->rc = weft_wait_for(s->t, 5000, NULL);
  s->ended_at_return = s->p.ended;
  return NULL;
}

static void *cancel_waiter_main(void *arg) {
  struct slow *s = arg;
  weft_task_t *w = NULL;
  assert_int_equal(weft_spawn(NULL, wait_for_cancelled_caller, s, &w), 0);
  /* Wait until the awaited task runs (the caller is in wait_for by then). */
  while (!s->p.started)
    assert_int_equal(weft_sleep(1), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(w), 0);
  assert_int_equal(weft_await(w, NULL), WEFT_ECANCELED);
  s->elapsed = wt_now_ms() - t0;
  weft_task_release(w);
  return NULL;
}

static void wait_for_caller_cancelled(void **state) {
  struct slow s;
  memset(&s, 0, sizeof s);
  wt_probe_init(&s.p, 10000, 0, NULL);
  run_main(cancel_waiter_main, &s);
  /* A cancellation is not a timeout, and it reaches the awaited task. */
  assert_int_equal(s.rc, WEFT_ECANCELED);
  assert_true(s.elapsed < 1000);
  assert_int_equal(s.p.sleep_rc, WEFT_ECANCELED);
  assert_true(s.ended_at_return);
  assert_int_equal(weft_task_status(s.t), WEFT_ECANCELED);
  weft_task_release(s.t);
}

static void *wait_for_einval_main(void *arg) {
  assert_int_equal(weft_wait_for(NULL, 10, NULL), WEFT_EINVAL);
  assert_int_equal(weft_wait_for(weft_task_current(), 10, NULL), WEFT_EDEADLK);
  return NULL;
}

static void wait_for_bad_arguments(void **state) {
  run_main(wait_for_einval_main, NULL);
}

/* ---------------------------------------------------------------- deadline */

struct dl {
  int sleep_rc, again_rc, yield_rc, cleared_rc;
  double waited, again_waited;
};

static void *deadline_main(void *arg) {
  struct dl *d = arg;
  assert_int_equal(weft_deadline_set(50), 0);
  double t0 = wt_now_ms();
  d->sleep_rc = weft_sleep(10000);
  d->waited = wt_now_ms() - t0;
  /* The deadline has passed: later awaits refuse at once. */
  t0 = wt_now_ms();
  d->again_rc = weft_sleep(10000);
  d->yield_rc = weft_yield();
  d->again_waited = wt_now_ms() - t0;
  assert_int_equal(weft_deadline_clear(), 0);
  d->cleared_rc = weft_sleep(5);
  return NULL;
}

static void deadline_bounds_awaits(void **state) {
  struct dl d;
  memset(&d, 1, sizeof d);
  d.waited = d.again_waited = 1e9;
  run_main(deadline_main, &d);
  assert_int_equal(d.sleep_rc, WEFT_ETIMEDOUT);
  assert_true(d.waited >= 40);
  assert_true(d.waited < 1000);
  assert_int_equal(d.again_rc, WEFT_ETIMEDOUT);
  assert_int_equal(d.yield_rc, WEFT_ETIMEDOUT);
  assert_true(d.again_waited < 100);
  assert_int_equal(d.cleared_rc, 0);
}

static void *deadline_replace_main(void *arg) {
  /* A new deadline replaces the old one, in both directions. */
  assert_int_equal(weft_deadline_set(30), 0);
  assert_int_equal(weft_deadline_set(5000), 0);
  assert_int_equal(weft_sleep(80), 0);
  assert_int_equal(weft_deadline_set(10000), 0);
  assert_int_equal(weft_deadline_set(30), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 < 1000);
  /* A deadline that is not reached changes nothing. */
  assert_int_equal(weft_deadline_clear(), 0);
  assert_int_equal(weft_deadline_set(1000), 0);
  assert_int_equal(weft_sleep(10), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_deadline_clear(), 0);
  /* Clearing when there is no deadline is fine. */
  assert_int_equal(weft_deadline_clear(), 0);
  return NULL;
}

static void deadline_replace_and_clear(void **state) {
  run_main(deadline_replace_main, NULL);
}

/* A deadline's timer stays armed after a wait it bounded ended otherwise
 * (weft__park): moved later, it must not cut the next wait at the old time;
 * moved earlier, it must cut it in time; cleared, not at all; and a task
 * that ends with it armed must not leave it behind. */
static void *deadline_short_lived(void *arg) {
  (void)arg;
  assert_int_equal(weft_deadline_set(300), 0);
  assert_int_equal(weft_sleep(1), 0);
  return NULL;
}

static void *deadline_moves_main(void *arg) {
  (void)arg;
  /* The times leave a slow build (valgrind on a busy machine) room for
   * the short sleeps to end well before the first deadline. */
  assert_int_equal(weft_deadline_set(400), 0);
  assert_int_equal(weft_sleep(5), 0);
  assert_int_equal(weft_deadline_set(1000), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  double took = wt_now_ms() - t0;
  /* Cut at the new deadline, not at the old one (400 ms). */
  assert_true(took >= 900);
  assert_true(took < 3000);

  assert_int_equal(weft_deadline_set(5000), 0);
  assert_int_equal(weft_sleep(5), 0);
  assert_int_equal(weft_deadline_set(30), 0);
  t0 = wt_now_ms();
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 < 1000);

  assert_int_equal(weft_deadline_set(300), 0);
  assert_int_equal(weft_sleep(5), 0);
  assert_int_equal(weft_deadline_clear(), 0);
  /* Past the cleared deadline: its stale timer must not cut this. */
  assert_int_equal(weft_sleep(400), 0);

  /* Its task freed, the timer would fire into freed memory (ASan and
   * valgrind see that) during the sleep after. */
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, deadline_short_lived, NULL, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_sleep(400), 0);
  return NULL;
}

static void deadline_moves_after_a_wait(void **state) {
  run_main(deadline_moves_main, NULL);
}

static void *deadline_child_main(void *arg) {
  struct slow *s = arg;
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &s->p, &s->t), 0);
  assert_int_equal(weft_deadline_set(50), 0);
  double t0 = wt_now_ms();
  s->rc = weft_await(s->t, NULL);
  s->elapsed = wt_now_ms() - t0;
  s->ended_at_return = s->p.ended;
  weft_deadline_clear();
  return NULL;
}

static void deadline_cancels_awaited(void **state) {
  struct slow s;
  memset(&s, 0, sizeof s);
  wt_probe_init(&s.p, 10000, 0, NULL);
  run_main(deadline_child_main, &s);
  assert_int_equal(s.rc, WEFT_ETIMEDOUT);
  assert_true(s.elapsed >= 40);
  assert_true(s.elapsed < 1000);
  assert_int_equal(s.p.sleep_rc, WEFT_ECANCELED);
  assert_true(s.ended_at_return);
  assert_int_equal(weft_task_status(s.t), WEFT_ECANCELED);
  weft_task_release(s.t);
}

struct dl_gather {
  wt_probe_t p[2];
  weft_task_t *t[2];
  int rc;
  int ended_at_return[2];
};

static void *deadline_gather_main(void *arg) {
  struct dl_gather *g = arg;
  for (int i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(NULL, wt_probe_task, &g->p[i], &g->t[i]), 0);
  assert_int_equal(weft_deadline_set(50), 0);
  g->rc = weft_gather(g->t, 2, NULL, NULL);
  for (int i = 0; i < 2; i++)
    g->ended_at_return[i] = g->p[i].ended;
  weft_deadline_clear();
  return NULL;
}

static void deadline_cancels_gathered(void **state) {
  struct dl_gather g;
  memset(&g, 0, sizeof g);
  wt_probe_init(&g.p[0], 10000, 0, NULL);
  wt_probe_init(&g.p[1], 20000, 0, NULL);
  run_main(deadline_gather_main, &g);
  assert_int_equal(g.rc, WEFT_ETIMEDOUT);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(g.p[i].sleep_rc, WEFT_ECANCELED);
    assert_true(g.ended_at_return[i]);
    assert_int_equal(weft_task_status(g.t[i]), WEFT_ECANCELED);
    weft_task_release(g.t[i]);
  }
}

static wt_probe_t g_group_kid;

static void *group_kid(void *arg) {
  wt_probe_task(&g_group_kid);
  return NULL;
}

static void *deadline_group_main(void *arg) {
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_spawn(g, NULL, group_kid, NULL), 0);
  assert_int_equal(weft_deadline_set(50), 0);
  *(int *)arg = weft_group_wait(g);
  assert_true(g_group_kid.ended);
  weft_deadline_clear();
  weft_group_release(g);
  return NULL;
}

static void deadline_cancels_group(void **state) {
  int rc = 1;
  wt_probe_init(&g_group_kid, 10000, 0, NULL);
  run_main(deadline_group_main, &rc);
  assert_int_equal(rc, WEFT_ETIMEDOUT);
  assert_int_equal(g_group_kid.sleep_rc, WEFT_ECANCELED);
}

static void *deadline_shield_main(void *arg) {
  wt_probe_t p;
  weft_task_t *t = NULL;
  void *r = NULL;
  wt_probe_init(&p, 1000, 0, (void *)0x5);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &t), 0);
  assert_int_equal(weft_deadline_set(30), 0);
  double t0 = wt_now_ms();
  /* The shield lets the caller go at its deadline and leaves the task
   * alone. */
  assert_int_equal(weft_await_shielded(t, NULL), WEFT_ETIMEDOUT);
  double waited = wt_now_ms() - t0;
  assert_true(waited >= 20);
  assert_true(waited < 500);
  assert_int_equal(weft_task_status(t), WEFT_EPENDING);
  assert_int_equal(weft_deadline_clear(), 0);
  assert_int_equal(weft_await(t, &r), 0);
  assert_ptr_equal(r, (void *)0x5);
  assert_int_equal(p.sleep_rc, 0);
  weft_task_release(t);
  return NULL;
}

static void deadline_spares_shielded(void **state) {
  run_main(deadline_shield_main, NULL);
}

static void busy_ms(double ms) {
  double end = wt_now_ms() + ms;
  while (wt_now_ms() < end) {
  }
}

struct busy {
  int yield_rc, sleep_rc;
};

static void *deadline_while_running_main(void *arg) {
  struct busy *b = arg;
  assert_int_equal(weft_deadline_set(20), 0);
  /* The deadline passes while the task runs without awaiting. */
  busy_ms(60);
  b->yield_rc = weft_yield();
  b->sleep_rc = weft_sleep(1);
  weft_deadline_clear();
  return NULL;
}

static void deadline_passes_while_running(void **state) {
  struct busy b = {1, 1};
  run_main(deadline_while_running_main, &b);
  /* Its next await is already too late: "every await after it". */
  assert_int_equal(b.yield_rc, WEFT_ETIMEDOUT);
  assert_int_equal(b.sleep_rc, WEFT_ETIMEDOUT);
}

/* A deadline passes while the task computes, then the task begins waits
 * that nothing else would end. Whether the await point sees the deadline at
 * once (the usual case) or, where the loop's cached time could not show it,
 * the deadline's timer cuts the wait at the next poll, each wait ends with
 * WEFT_ETIMEDOUT, and soon. */
struct late {
  int recv_rc, await_rc, read_rc;
  double recv_ms, await_ms, read_ms;
};

static void *late_sleeper(void *arg) {
  (void)arg;
  weft_sleep(10000);
  return NULL;
}

static void *deadline_then_waits_main(void *arg) {
  struct late *l = arg;
  weft_chan_t *ch;
  weft_task_t *other;
  assert_int_equal(weft_chan_new(&ch, 4), 0);
  assert_int_equal(weft_spawn(NULL, late_sleeper, NULL, &other), 0);
  /* Connected, never accepted: nothing will ever arrive on it. */
  weft_listener_t *lis;
  weft_stream_t *s;
  assert_int_equal(weft_tcp_listen(&lis, "127.0.0.1", 0, NULL), 0);
  assert_int_equal(weft_tcp_connect(&s, "127.0.0.1", weft_listener_port(lis)), 0);

  assert_int_equal(weft_deadline_set(20), 0);
  busy_ms(60);
  void *msg;
  double t0 = wt_now_ms();
  l->recv_rc = weft_chan_recv(ch, &msg);
  l->recv_ms = wt_now_ms() - t0;

  assert_int_equal(weft_deadline_set(20), 0);
  busy_ms(60);
  t0 = wt_now_ms();
  l->await_rc = weft_await(other, NULL);
  l->await_ms = wt_now_ms() - t0;

  assert_int_equal(weft_deadline_set(20), 0);
  busy_ms(60);
  char buf[16];
  t0 = wt_now_ms();
  l->read_rc = (int)weft_stream_read(s, buf, sizeof buf);
  l->read_ms = wt_now_ms() - t0;

  assert_int_equal(weft_deadline_clear(), 0);
  /* Where the deadline's timer cut the await, it cancelled the sleeper too
   * (as weft_wait_for does), and the sleeper has ended. */
  int rc = weft_task_cancel(other);
  assert_true(rc == 0 || rc == WEFT_EALREADY);
  assert_int_equal(weft_await(other, NULL), WEFT_ECANCELED);
  weft_task_release(other);
  assert_int_equal(weft_stream_close(s), 0);
  assert_int_equal(weft_listener_close(lis), 0);
  weft_chan_release(ch);
  return NULL;
}

static void deadline_passed_then_waits(void **state) {
  (void)state;
  struct late l = {1, 1, 1, 1e9, 1e9, 1e9};
  run_main(deadline_then_waits_main, &l);
  assert_int_equal(l.recv_rc, WEFT_ETIMEDOUT);
  assert_int_equal(l.await_rc, WEFT_ETIMEDOUT);
  assert_int_equal(l.read_rc, WEFT_ETIMEDOUT);
  /* Generous: without either check each wait would last until the test's
   * timeout (the sleeper and the socket never answer). */
  assert_true(l.recv_ms < 1000);
  assert_true(l.await_ms < 1000);
  assert_true(l.read_ms < 1000);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(wait_for_in_time),
    cmocka_unit_test(wait_for_times_out),
    cmocka_unit_test(wait_for_caller_cancelled),
    cmocka_unit_test(wait_for_bad_arguments),
    cmocka_unit_test(deadline_bounds_awaits),
    cmocka_unit_test(deadline_replace_and_clear),
    cmocka_unit_test(deadline_moves_after_a_wait),
    cmocka_unit_test(deadline_cancels_awaited),
    cmocka_unit_test(deadline_cancels_gathered),
    cmocka_unit_test(deadline_cancels_group),
    cmocka_unit_test(deadline_spares_shielded),
    cmocka_unit_test(deadline_passes_while_running),
    cmocka_unit_test(deadline_passed_then_waits),
};

WT_MAIN("timeout", tests)
