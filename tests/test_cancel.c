/* Tests for cancellation (task.cancel in asyncio): a task cancelled before it
 * starts never runs, a parked task wakes at once, cancellation is sticky,
 * it travels down to what the task awaits (await and gather) but not through
 * a shield, and weft_task_fail after a cancellation decides the final status.
 *
 * Every test checks the victim's own view (what its await returned, whether
 * it reached its end) as well as the status, and checks "at once" with a
 * generous bound far below the 10 s the victims sleep.
 */
#include "testutil.h"

static void run_main(weft_fn body, void *arg) {
  assert_int_equal(weft_run(body, arg, NULL), 0);
}

/* ----------------------------------------------------------- before start */

static void *cancel_unstarted_main(void *arg) {
  int ran = 0;
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, wt_flag_task, &ran, &t), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  /* Cancelling again before it ended is not an error. */
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_int_equal(ran, 0);
  assert_int_equal(weft_task_status(t), WEFT_ECANCELED);
  weft_task_release(t);
  return NULL;
}

static void cancel_before_start(void **state) {
  run_main(cancel_unstarted_main, NULL);

  /* The same from outside any task, before the loop ever ran. */
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL;
  int ran = 0;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_spawn(loop, wt_flag_task, &ran, &t), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), WEFT_ECANCELED);
  assert_int_equal(ran, 0);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
}

/* ------------------------------------------------------------ parked task */

struct sticky {
  wt_probe_t p;       /* the first sleep, which gets cancelled */
  weft_task_t *other; /* a task to await after the cancellation */
  int sleep_rc, yield_rc, await_rc, sleep0_rc;
  double t_cancelled; /* when the first sleep returned */
  double t_after;     /* when the three later awaits had returned */
};

static void *sticky_task(void *arg) {
  struct sticky *s = arg;
  s->p.started = 1;
  s->p.sleep_rc = weft_sleep(10000);
  s->t_cancelled = wt_now_ms();
  /* Cancellation is sticky: every later await point refuses at once. */
  s->sleep_rc = weft_sleep(10000);
  s->yield_rc = weft_yield();
  s->sleep0_rc = weft_sleep(0);
  s->await_rc = weft_await(s->other, NULL);
  s->t_after = wt_now_ms();
  s->p.ended = 1;
  return NULL;
}

static void *sticky_main(void *arg) {
  struct sticky *s = arg;
  wt_probe_t op;
  weft_task_t *t = NULL;
  wt_probe_init(&op, 300, 0, NULL);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &op, &s->other), 0);
  assert_int_equal(weft_spawn(NULL, sticky_task, s, &t), 0);
  assert_int_equal(weft_sleep(10), 0);
  assert_true(s->p.started);
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  s->p.t_end = wt_now_ms() - t0; /* how long the cancelled task took to end */
  assert_int_equal(weft_task_status(t), WEFT_ECANCELED);
  /* It has ended: cancelling it again changes nothing. */
  assert_int_equal(weft_task_cancel(t), WEFT_EALREADY);
  assert_int_equal(weft_task_status(t), WEFT_ECANCELED);
  weft_task_release(t);
  weft_await(s->other, NULL);
  weft_task_release(s->other);
  return NULL;
}

static void cancel_wakes_sleeper_and_sticks(void **state) {
  struct sticky s;
  memset(&s, 0, sizeof s);
  s.p.sleep_rc = 1;
  s.sleep_rc = s.yield_rc = s.await_rc = s.sleep0_rc = 1;
  run_main(sticky_main, &s);
  assert_int_equal(s.p.sleep_rc, WEFT_ECANCELED);
  /* Woken at once: far less than the 10 s it asked for. */
  assert_true(s.p.t_end < 1000);
  assert_int_equal(s.sleep_rc, WEFT_ECANCELED);
  assert_int_equal(s.yield_rc, WEFT_ECANCELED);
  assert_int_equal(s.sleep0_rc, WEFT_ECANCELED);
  assert_int_equal(s.await_rc, WEFT_ECANCELED);
  /* The later awaits did not wait, not even for the 300 ms task. */
  assert_true(s.t_after - s.t_cancelled < 150);
  assert_true(s.p.ended);
}

static void *ended_main(void *arg) {
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, wt_echo_task, (void *)1, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(weft_task_cancel(t), WEFT_EALREADY);
  /* Nothing happened: the status is still the success. */
  assert_int_equal(weft_task_status(t), 0);
  void *r = NULL;
  assert_int_equal(weft_await(t, &r), 0);
  assert_ptr_equal(r, (void *)1);
  weft_task_release(t);
  assert_int_equal(weft_task_cancel(NULL), WEFT_EINVAL);
  return NULL;
}

static void cancel_ended_task(void **state) {
  run_main(ended_main, NULL);
}

static int g_yields;

static void *yield_forever(void *arg) {
  int *rc = arg;
  while ((*rc = weft_yield()) == 0)
    g_yields++;
  return NULL;
}

static void *cancel_yielder_main(void *arg) {
  int rc = 1;
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, yield_forever, &rc, &t), 0);
  for (int i = 0; i < 5; i++)
    weft_yield();
  /* The yielder sits in the ready queue, not on a timer: cancelling it still
   * makes its pending yield return WEFT_ECANCELED. */
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_int_equal(rc, WEFT_ECANCELED);
  assert_true(g_yields >= 1);
  weft_task_release(t);
  return NULL;
}

static void cancel_yielding_task(void **state) {
  g_yields = 0;
  run_main(cancel_yielder_main, NULL);
}

static void *self_cancel_task(void *arg) {
  int *rc = arg;
  assert_int_equal(weft_task_cancel(weft_task_current()), 0);
  /* A running task is not interrupted; its next await is. */
  rc[0] = 1;
  rc[1] = weft_yield();
  return NULL;
}

static void cancel_self(void **state) {
  int rc[2] = {0, 0};
  assert_int_equal(weft_run(self_cancel_task, rc, NULL), WEFT_ECANCELED);
  assert_int_equal(rc[0], 1);
  assert_int_equal(rc[1], WEFT_ECANCELED);
}

/* ------------------------------------------------------------ propagation */

struct chain {
  wt_probe_t inner;
  weft_task_t *inner_task;
  int await_rc;
  int inner_status_at_return; /* inner's status when the outer await returned */
};

static void *outer_awaits(void *arg) {
  struct chain *c = arg;
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &c->inner, &c->inner_task), 0);
  c->await_rc = weft_await(c->inner_task, NULL);
  c->inner_status_at_return = weft_task_status(c->inner_task);
  return NULL;
}

static void *chain_main(void *arg) {
  struct chain *c = arg;
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, outer_awaits, c, &t), 0);
  /* Wait until the inner task runs (the outer one awaits it by then). */
  while (!c->inner.started)
    assert_int_equal(weft_sleep(1), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_true(wt_now_ms() - t0 < 1000);
  assert_int_equal(weft_task_status(t), WEFT_ECANCELED);
  weft_task_release(t);
  return NULL;
}

static void cancel_propagates_to_awaited(void **state) {
  struct chain c;
  memset(&c, 0, sizeof c);
  c.await_rc = 1;
  wt_probe_init(&c.inner, 10000, 0, NULL);
  run_main(chain_main, &c);
  assert_int_equal(c.await_rc, WEFT_ECANCELED);
  /* The awaited task was cancelled too, and had unwound before the outer
   * await returned. */
  assert_int_equal(c.inner.sleep_rc, WEFT_ECANCELED);
  assert_true(c.inner.ended);
  assert_int_equal(c.inner_status_at_return, WEFT_ECANCELED);
  assert_int_equal(weft_task_status(c.inner_task), WEFT_ECANCELED);
  weft_task_release(c.inner_task);
}

#define NGATHER 3

struct fan {
  wt_probe_t kids[NGATHER];
  weft_task_t *t[NGATHER];
  int statuses[NGATHER];
  int ended_at_return[NGATHER];
  int gather_rc;
};

static void *outer_gathers(void *arg) {
  struct fan *f = arg;
  for (int i = 0; i < NGATHER; i++)
    assert_int_equal(weft_spawn(NULL, wt_probe_task, &f->kids[i], &f->t[i]), 0);
  f->gather_rc = weft_gather(f->t, NGATHER, NULL, f->statuses);
  for (int i = 0; i < NGATHER; i++)
    f->ended_at_return[i] = f->kids[i].ended;
  return NULL;
}

static void *fan_main(void *arg) {
  struct fan *f = arg;
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, outer_gathers, f, &t), 0);
  /* Wait until every child runs (the outer task gathers them by then). */
  for (int i = 0; i < NGATHER; i++)
    while (!f->kids[i].started)
      assert_int_equal(weft_sleep(1), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_true(wt_now_ms() - t0 < 1000);
  weft_task_release(t);
  return NULL;
}

static void cancel_propagates_through_gather(void **state) {
  struct fan f;
  memset(&f, 0, sizeof f);
  f.gather_rc = 1;
  for (int i = 0; i < NGATHER; i++)
    wt_probe_init(&f.kids[i], 10000 + 1000 * (uint64_t)i, 0, NULL);
  run_main(fan_main, &f);
  assert_int_equal(f.gather_rc, WEFT_ECANCELED);
  for (int i = 0; i < NGATHER; i++) {
    assert_int_equal(f.kids[i].sleep_rc, WEFT_ECANCELED);
    assert_true(f.ended_at_return[i]);
    assert_int_equal(weft_task_status(f.t[i]), WEFT_ECANCELED);
    weft_task_release(f.t[i]);
  }
}

/* ------------------------------------------------------------------ shield */

struct shield {
  wt_probe_t inner;
  weft_task_t *inner_task;
  int rc;
  double waited;             /* how long the shielded await lasted */
  int inner_status_at_return;
};

static void *shielded_waiter(void *arg) {
  struct shield *s = arg;
  double t0 = wt_now_ms();
  s->rc = weft_await_shielded(s->inner_task, NULL);
  s->waited = wt_now_ms() - t0;
  s->inner_status_at_return = weft_task_status(s->inner_task);
  return NULL;
}

static void *shield_main(void *arg) {
  struct shield *s = arg;
  weft_task_t *w = NULL;
  void *r = NULL;
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &s->inner, &s->inner_task), 0);
  assert_int_equal(weft_spawn(NULL, shielded_waiter, s, &w), 0);
  assert_int_equal(weft_sleep(20), 0);
  assert_int_equal(weft_task_cancel(w), 0);
  assert_int_equal(weft_await(w, NULL), WEFT_ECANCELED);
  /* The inner task kept running and finishes on its own. */
  assert_int_equal(weft_await(s->inner_task, &r), 0);
  assert_ptr_equal(r, (void *)0x77);
  weft_task_release(w);
  return NULL;
}

static void shielded_await(void **state) {
  struct shield s;
  memset(&s, 0, sizeof s);
  s.rc = 1;
  wt_probe_init(&s.inner, 1000, 0, (void *)0x77);
  run_main(shield_main, &s);
  assert_int_equal(s.rc, WEFT_ECANCELED);
  /* The waiter was released at once, not when the inner task ended. */
  assert_true(s.waited < 200);
  assert_int_equal(s.inner_status_at_return, WEFT_EPENDING);
  assert_int_equal(s.inner.sleep_rc, 0);
  assert_true(s.inner.ended);
  assert_int_equal(weft_task_status(s.inner_task), 0);
  weft_task_release(s.inner_task);
}

static void *shield_ok_main(void *arg) {
  wt_probe_t p;
  weft_task_t *t = NULL;
  void *r = NULL;
  wt_probe_init(&p, 10, -8, (void *)0x88);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &p, &t), 0);
  /* Without a cancellation, a shielded await is a plain await. */
  assert_int_equal(weft_await_shielded(t, &r), -8);
  assert_ptr_equal(r, (void *)0x88);
  weft_task_release(t);
  return NULL;
}

static void shielded_await_plain(void **state) {
  run_main(shield_ok_main, NULL);
}

/* ------------------------------------------------------ fail after cancel */

static void *fail_after_cancel_task(void *arg) {
  int *rc = arg;
  *rc = weft_sleep(10000);
  assert_int_equal(weft_task_fail(-77), 0);
  return (void *)0x7;
}

static void *fail_after_cancel_main(void *arg) {
  int rc = 1;
  weft_task_t *t = NULL;
  void *r = NULL;
  assert_int_equal(weft_spawn(NULL, fail_after_cancel_task, &rc, &t), 0);
  assert_int_equal(weft_sleep(10), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  /* The task saw the cancellation but chose its own final status. */
  assert_int_equal(weft_await(t, &r), -77);
  assert_int_equal(rc, WEFT_ECANCELED);
  assert_ptr_equal(r, (void *)0x7);
  assert_int_equal(weft_task_status(t), -77);
  weft_task_release(t);
  return NULL;
}

static void fail_after_cancel(void **state) {
  run_main(fail_after_cancel_main, NULL);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cancel_before_start),
    cmocka_unit_test(cancel_wakes_sleeper_and_sticks),
    cmocka_unit_test(cancel_ended_task),
    cmocka_unit_test(cancel_yielding_task),
    cmocka_unit_test(cancel_self),
    cmocka_unit_test(cancel_propagates_to_awaited),
    cmocka_unit_test(cancel_propagates_through_gather),
    cmocka_unit_test(shielded_await),
    cmocka_unit_test(shielded_await_plain),
    cmocka_unit_test(fail_after_cancel),
};

WT_MAIN("cancel", tests)
