/* Tests for cancellation and time as scopes, the way asyncio and Trio users
 * expect them: a cancel already pending, or a deadline already passed, when
 * a task starts to await other tasks cancels those tasks too; nested
 * deadline scopes (weft_deadline_push / _pop) where the earliest wins;
 * shielded sections (weft_shield_begin / _end) in which a cancelled task
 * can still await its own cleanup; a shielded cross-loop await that is cut
 * after the other loop is gone; and sleeps that never end early.
 *
 * Times: the victims sleep 10 s, so "at once" and "cut by the deadline"
 * have bounds far below that, and "not cut" checks a sleep's own length
 * from below only. */
#include "testutil.h"

#include <pthread.h>

static void run_main(weft_fn body, void *arg) {
  assert_int_equal(weft_run(body, arg, NULL), 0);
}

/* Spins without an await point for ms: the task computes. */
static void compute_ms(double ms) {
  double until = wt_now_ms() + ms;
  while (wt_now_ms() < until)
    ;
}

/* ------------------------------------- a pending cancel reaches the awaited */

typedef struct pending {
  int how;           /* 0 await, 1 gather, 2 wait_for, 3 await after a passed deadline */
  wt_probe_t child[2];
  weft_task_t *t[2];
  int rc;
  int status_after[2];
} pending_t;

static void *pending_parent(void *arg) {
  pending_t *p = arg;
  for (int i = 0; i < 2; i++) {
    wt_probe_init(&p->child[i], 10000, 0, NULL);
    assert_int_equal(weft_spawn(NULL, wt_probe_task, &p->child[i], &p->t[i]), 0);
  }
  if (p->how == 3) {
    assert_int_equal(weft_deadline_push(1), 0);
    compute_ms(20);
  } else {
    assert_int_equal(weft_task_cancel(weft_task_current()), 0);
  }
  switch (p->how) {
  case 0:
  case 3: p->rc = weft_await(p->t[0], NULL); break;
  case 1: p->rc = weft_gather(p->t, 2, NULL, NULL); break;
  case 2: p->rc = weft_wait_for(p->t[0], 1000, NULL); break;
  }
  for (int i = 0; i < 2; i++)
    p->status_after[i] = weft_task_status(p->t[i]);
  return NULL;
}

static void *pending_main(void *arg) {
  pending_t *p = arg;
  weft_task_t *parent;
  assert_int_equal(weft_spawn(NULL, pending_parent, p, &parent), 0);
  weft_await(parent, NULL);
  weft_task_release(parent);
  /* Whatever the parent did not await is still running: end it. */
  for (int i = 0; i < 2; i++) {
    weft_task_cancel(p->t[i]);
    weft_await(p->t[i], NULL);
    weft_task_release(p->t[i]);
  }
  return NULL;
}

static void pending_cancel_reaches_awaited(void **state) {
  static const char *what[] = {"weft_await", "weft_gather", "weft_wait_for(1000)",
                               "weft_await past a deadline"};
  for (int how = 0; how < 4; how++) {
    pending_t p = {.how = how};
    double t0 = wt_now_ms();
    run_main(pending_main, &p);
    int want = how == 3 ? WEFT_ETIMEDOUT : WEFT_ECANCELED;
    if (p.rc != want)
      fail_msg("%s returned %d (%s), not %s", what[how], p.rc, weft_strerror(p.rc),
               weft_strerror(want));
    /* What it awaited was cancelled, and had unwound when the await returned. */
    int awaited = how == 1 ? 2 : 1;
    for (int i = 0; i < awaited; i++) {
      if (p.status_after[i] != WEFT_ECANCELED)
        fail_msg("%s: awaited task %d has status %d (%s) right after, not cancelled", what[how],
                 i, p.status_after[i], weft_strerror(p.status_after[i]));
      /* Cancelled before its first step, it never ran; else its sleep
       * was cut. */
      assert_true(!p.child[i].started || p.child[i].sleep_rc == WEFT_ECANCELED);
    }
    if (how != 1)
      assert_int_equal(p.status_after[1], WEFT_EPENDING);
    assert_true(wt_now_ms() - t0 < 5000);
  }
}

/* A shielded await with a pending cancel returns at once and leaves the
 * awaited task alone (asyncio.shield). */
static void *shielded_pending_main(void *arg) {
  wt_probe_t child;
  weft_task_t *t;
  wt_probe_init(&child, 50, 0, NULL);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &child, &t), 0);
  assert_int_equal(weft_task_cancel(weft_task_current()), 0);
  assert_int_equal(weft_await_shielded(t, NULL), WEFT_ECANCELED);
  assert_int_equal(weft_task_status(t), WEFT_EPENDING);
  weft_shield_begin();
  assert_int_equal(weft_await(t, NULL), 0);
  weft_shield_end();
  assert_int_equal(child.sleep_rc, 0);
  weft_task_release(t);
  return NULL;
}

static void pending_cancel_spares_shielded_await(void **state) {
  weft_loop_t *loop;
  weft_task_t *t;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_spawn(loop, shielded_pending_main, NULL, &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
}

/* ------------------------------------------------------ deadline scopes */

static void *nested_main(void *arg) {
  (void)arg;
  /* A helper's own, longer scope does not lift its caller's. */
  double t0 = wt_now_ms();
  assert_int_equal(weft_deadline_push(100), 0);
  assert_int_equal(weft_deadline_push(5000), 0);
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  double took = wt_now_ms() - t0;
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_deadline_pop(), 0);
  /* Deadlines are by the loop's millisecond clock, which may read a coarse
   * tick (a few ms) behind the precise one: hence 90, not 100, below. What
   * is checked is that the outer 100 ms bound the sleep, not the inner 5 s. */
  assert_true(took >= 90 && took < 4000);

  /* An inner, shorter scope ends on time; popped, the outer one is back. */
  assert_int_equal(weft_deadline_push(5000), 0);
  assert_int_equal(weft_deadline_push(50), 0);
  t0 = wt_now_ms();
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  took = wt_now_ms() - t0;
  assert_true(took >= 40 && took < 4000);
  /* Passed: every await of the scope says so at once. */
  assert_int_equal(weft_yield(), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_sleep(20), 0);
  assert_int_equal(weft_deadline_pop(), 0);

  /* The base deadline (weft_deadline_set) bounds the scopes too, and a
   * WEFT_FOREVER scope adds none. */
  assert_int_equal(weft_deadline_set(60), 0);
  assert_int_equal(weft_deadline_push(WEFT_FOREVER), 0);
  t0 = wt_now_ms();
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 < 4000);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_deadline_clear(), 0);
  assert_int_equal(weft_sleep(1), 0);

  /* Bounded nesting, and pops that match no push. */
  for (int i = 0; i < 8; i++)
    assert_int_equal(weft_deadline_push(10000), 0);
  assert_int_equal(weft_deadline_push(10000), WEFT_ENOBUFS);
  for (int i = 0; i < 8; i++)
    assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_deadline_pop(), WEFT_EINVAL);
  assert_int_equal(weft_sleep(1), 0);
  return NULL;
}

static void deadlines_nest(void **state) {
  run_main(nested_main, NULL);
  assert_int_equal(weft_deadline_push(10), WEFT_ENOTASK);
  assert_int_equal(weft_deadline_pop(), WEFT_ENOTASK);
}

/* ---------------------------------------------------------------- shields */

typedef struct cleanup {
  atomic_int parked;        /* the victim sleeps, unshielded */
  atomic_int in_shield;     /* the victim sleeps inside its shield */
  int first_rc, shielded_sleep_rc, child_rc, child_sleep_rc, after_rc;
  double shielded_sleep_ms;
} cleanup_t;

static void *cleanup_victim(void *arg) {
  cleanup_t *c = arg;
  atomic_store(&c->parked, 1);
  c->first_rc = weft_sleep(10000);        /* cancelled here */
  weft_shield_begin();
  /* Its cleanup: a sleep that a second cancel does not cut, and a child
   * it awaits, which is not cancelled with it. */
  atomic_store(&c->in_shield, 1);
  double t0 = wt_now_ms();
  c->shielded_sleep_rc = weft_sleep(100);
  c->shielded_sleep_ms = wt_now_ms() - t0;
  wt_probe_t child;
  weft_task_t *t;
  wt_probe_init(&child, 30, 0, NULL);
  assert_int_equal(weft_spawn(NULL, wt_probe_task, &child, &t), 0);
  c->child_rc = weft_await(t, NULL);
  c->child_sleep_rc = child.sleep_rc;
  weft_task_release(t);
  weft_shield_end();
  c->after_rc = weft_yield();              /* the held cancel, at last */
  return NULL;
}

static void *cleanup_main(void *arg) {
  cleanup_t *c = arg;
  weft_task_t *v;
  assert_int_equal(weft_spawn(NULL, cleanup_victim, c, &v), 0);
  while (!atomic_load(&c->parked))
    assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_task_cancel(v), 0);
  while (!atomic_load(&c->in_shield))
    assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_task_cancel(v), 0); /* already cancelled: held */
  assert_int_equal(weft_await(v, NULL), WEFT_ECANCELED);
  weft_task_release(v);
  return NULL;
}

static void shield_lets_cancelled_task_clean_up(void **state) {
  cleanup_t c = {0};
  run_main(cleanup_main, &c);
  assert_int_equal(c.first_rc, WEFT_ECANCELED);
  assert_int_equal(c.shielded_sleep_rc, 0);
  assert_true(c.shielded_sleep_ms >= 100);
  assert_int_equal(c.child_rc, 0);
  assert_int_equal(c.child_sleep_rc, 0);
  assert_int_equal(c.after_rc, WEFT_ECANCELED);
}

/* A cancel that arrives while the task waits inside its shield does not cut
 * that wait; it takes effect at the first await after the section. */
typedef struct held {
  atomic_int sleeping;
  int shielded_rc, after_rc;
  double shielded_ms;
} held_t;

static void *held_victim(void *arg) {
  held_t *h = arg;
  weft_shield_begin();
  weft_shield_begin(); /* nested: the inner end leaves it shielded */
  weft_shield_end();
  atomic_store(&h->sleeping, 1);
  double t0 = wt_now_ms();
  h->shielded_rc = weft_sleep(150);
  h->shielded_ms = wt_now_ms() - t0;
  weft_shield_end();
  h->after_rc = weft_sleep(10000);
  return NULL;
}

static void *held_main(void *arg) {
  held_t *h = arg;
  weft_task_t *v;
  assert_int_equal(weft_spawn(NULL, held_victim, h, &v), 0);
  while (!atomic_load(&h->sleeping))
    assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_task_cancel(v), 0);
  assert_int_equal(weft_await(v, NULL), WEFT_ECANCELED);
  weft_task_release(v);
  return NULL;
}

static void shield_holds_cancel_until_end(void **state) {
  held_t h = {0};
  double t0 = wt_now_ms();
  run_main(held_main, &h);
  assert_int_equal(h.shielded_rc, 0);
  assert_true(h.shielded_ms >= 150);
  assert_int_equal(h.after_rc, WEFT_ECANCELED);
  assert_true(wt_now_ms() - t0 < 5000);
}

/* Inside a shield the enclosing deadlines do not cut a wait, a scope pushed
 * inside does; after the section the passed deadline is back. */
static void *shield_deadline_main(void *arg) {
  (void)arg;
  assert_int_equal(weft_deadline_push(30), 0);
  weft_shield_begin();
  double t0 = wt_now_ms();
  assert_int_equal(weft_sleep(150), 0);
  assert_true(wt_now_ms() - t0 >= 150);
  /* A scope pushed before the section cannot be popped inside it. */
  assert_int_equal(weft_deadline_pop(), WEFT_EINVAL);
  assert_int_equal(weft_deadline_push(40), 0);
  t0 = wt_now_ms();
  assert_int_equal(weft_sleep(10000), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 < 4000);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_sleep(1), 0);
  weft_shield_end();
  assert_int_equal(weft_yield(), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_yield(), 0);
  /* Ending a section that was never begun does nothing. */
  weft_shield_end();
  assert_int_equal(weft_yield(), 0);
  return NULL;
}

static void shield_spares_outer_deadline(void **state) {
  run_main(shield_deadline_main, NULL);
  /* Outside a task both calls do nothing. */
  weft_shield_begin();
  weft_shield_end();
}

/* -------------------------- a shielded cross-loop await, its loop gone */

/* A task on this loop awaits, shielded, a task of a pool's loop; that task
 * ends, its "ended" answer waits in this loop's inbox, the pool is shut
 * down (its loop freed), and only then is the waiter cancelled. Cutting the
 * shielded wait used to send an "unregister" to the freed loop (a use
 * after free under ASan). */
typedef struct gone {
  weft_pool_t *pool;
  atomic_int release, pool_gone;
  int waiter_rc;
} gone_t;

static void *gone_target(void *arg) {
  gone_t *g = arg;
  while (!atomic_load(&g->release))
    weft_sleep(1);
  return NULL;
}

static weft_task_t *g_gone_target;

static void *gone_waiter(void *arg) {
  gone_t *g = arg;
  g->waiter_rc = weft_await_shielded(g_gone_target, NULL);
  return NULL;
}

static void *gone_shutdown(void *arg) {
  gone_t *g = arg;
  assert_int_equal(weft_pool_shutdown(g->pool, WEFT_DRAIN), 0);
  atomic_store(&g->pool_gone, 1);
  return NULL;
}

static void *gone_main(void *arg) {
  gone_t *g = arg;
  weft_task_t *w;
  assert_int_equal(weft_spawn(weft_pool_loop(g->pool, 0), gone_target, g, &g_gone_target), 0);
  assert_int_equal(weft_spawn(NULL, gone_waiter, g, &w), 0);
  assert_int_equal(weft_yield(), 0); /* the waiter registers with the pool's loop */
  assert_int_equal(weft_yield(), 0);
  atomic_store(&g->release, 1);
  /* No await point from here to the cancel: this loop cannot read its
   * inbox, where the target's answer arrives. */
  while (weft_task_status(g_gone_target) == WEFT_EPENDING)
    ;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, gone_shutdown, g), 0);
  while (!atomic_load(&g->pool_gone))
    ;
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(weft_task_cancel(w), 0);
  assert_int_equal(weft_await(w, NULL), WEFT_ECANCELED);
  weft_task_release(w);
  weft_task_release(g_gone_target);
  return NULL;
}

static void shielded_xloop_await_after_pool_gone(void **state) {
  gone_t g = {.pool = wt_pool_of(1)};
  run_main(gone_main, &g);
  assert_int_equal(g.waiter_rc, WEFT_ECANCELED);
}

/* ------------------------------------------------------- sleeps on time */

/* A sleep never ends early: by the precise clock, each lasts at least what
 * it asked for (one in 300 short sleeps used to end 0.9 ms early, the loop's
 * millisecond clock having been read late in a millisecond). */
static void *never_early_main(void *arg) {
  int *early = arg;
  for (int i = 0; i < 400; i++) {
    uint64_t ms = 1 + (uint64_t)(i % 4);
    /* Start at varied points within a millisecond. */
    compute_ms((i % 10) * 0.1);
    uint64_t t0 = uv_hrtime();
    assert_int_equal(weft_sleep(ms), 0);
    if (uv_hrtime() - t0 < ms * 1000000)
      (*early)++;
  }
  return NULL;
}

static void sleep_never_early(void **state) {
  int early = 0;
  run_main(never_early_main, &early);
  assert_int_equal(early, 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(pending_cancel_reaches_awaited),
    cmocka_unit_test(pending_cancel_spares_shielded_await),
    cmocka_unit_test(deadlines_nest),
    cmocka_unit_test(shield_lets_cancelled_task_clean_up),
    cmocka_unit_test(shield_holds_cancel_until_end),
    cmocka_unit_test(shield_spares_outer_deadline),
    cmocka_unit_test(shielded_xloop_await_after_pool_gone),
    cmocka_unit_test(sleep_never_early),
};

WT_MAIN("scope", tests)
