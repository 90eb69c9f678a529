/* Tests for the synchronisation primitives (asyncio's Semaphore, Lock,
 * Event and Condition, across loops and threads) and for a group's limit
 * (Go's errgroup.SetLimit):
 *
 * - semaphore: counts, try_acquire, WEFT_ENOBUFS at WEFT_SEM_MAX; a waiting
 *   task lets its loop run; FIFO service; a permit posted while someone
 *   waits is handed to the waiter, not to a try_acquire that comes later; a
 *   cancel or a deadline takes no permit and loses none; a waiter handed a
 *   permit before its cancel keeps it; plain threads and tasks of two loops
 *   on either side; free refuses while someone waits.
 * - mutex: lock, try_lock, WEFT_EDEADLK, WEFT_EPERM for a non-holder (and
 *   nothing changes); held across awaits; FIFO handoff that a try_lock
 *   cannot barge; a cancelled waiter, a waiter handed the lock before its
 *   cancel; a plain thread and a task as holders of one mutex.
 * - event: a set wakes every waiter (tasks of two loops and plain threads),
 *   later waits return at once until a clear; a set followed at once by a
 *   clear still wakes every waiter; cancels and deadlines of waiters.
 * - condition: producers and consumers with predicate loops; signal wakes
 *   exactly one (the longest waiter), broadcast all; WEFT_EPERM without
 *   the mutex; after a cancel or a deadline the waiter holds the mutex
 *   again, and nobody had it meanwhile; a signal racing a cancel is never
 *   lost.
 * - group limit: at most the limit run, every child runs; set_limit after a
 *   spawn; a spawner cut while it waits for room spawns nothing.
 * - stress (each case sized to end well within 10 s under TSan, where
 *   WEFT_TEST_TSAN shrinks it): a million semaphore acquire/post pairs over
 *   tasks of two loops and two plain threads; a mutex-guarded counter with
 *   a yield inside the critical section; random cancels of waiters with a
 *   conservation check.
 *
 * Nothing here relies on timing for correctness: a test waits for a state
 * (tasks parked, counters reached) with a generous bound. Short sleeps only
 * give a wrong implementation the chance to show itself ("still not done
 * after 20 ms"). cmocka's assertions run on the test's own thread only:
 * weft_run's tasks run there; pool tasks and plain threads record what they
 * saw, and the test checks it after joining them.
 */
#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#define BOUND_MS 10000 /* how long any wait for a state may take */

/* ---------------------------------------------------------------- helpers */

/* Lets the current loop run n rounds. */
static void rounds(int n) {
  for (int i = 0; i < n; i++)
    assert_int_equal(weft_yield(), 0);
}

/* In a task: yields until exactly n tasks of its own loop are parked on an
 * await (the caller, which is running, is not among them). */
static void settle(size_t n) {
  double until = wt_now_ms() + BOUND_MS;
  weft_stats_t st;
  for (;;) {
    assert_int_equal(weft_loop_stats(weft_loop_current(), &st), 0);
    if (st.waiting == n)
      return;
    if (wt_now_ms() > until)
      fail_msg("%zu tasks parked after %d ms, expected %zu", st.waiting, BOUND_MS, n);
    assert_int_equal(weft_yield(), 0);
  }
}

/* From a plain thread: waits until exactly n tasks of loop are parked. */
static void loop_settle(weft_loop_t *loop, size_t n) {
  double until = wt_now_ms() + BOUND_MS;
  weft_stats_t st;
  for (;;) {
    assert_int_equal(weft_loop_stats(loop, &st), 0);
    if (st.waiting == n)
      return;
    if (wt_now_ms() > until)
      fail_msg("%zu tasks of %s parked after %d ms, expected %zu", st.waiting,
               weft_loop_name(loop), BOUND_MS, n);
    uv_sleep(1);
  }
}

/* In a task: sleeps 1 ms at a time until *v >= want (bounded). */
static void task_wait_ge(atomic_int *v, int want) {
  double until = wt_now_ms() + BOUND_MS;
  while (atomic_load(v) < want) {
    if (wt_now_ms() > until)
      fail_msg("counter at %d after %d ms, expected %d", atomic_load(v), BOUND_MS, want);
    assert_int_equal(weft_sleep(1), 0);
  }
}

/* In a task: yields until *v != 0 (bounded). */
static void yield_until(atomic_int *v) {
  double until = wt_now_ms() + BOUND_MS;
  while (!atomic_load(v)) {
    if (wt_now_ms() > until)
      fail_msg("still not done after %d ms", BOUND_MS);
    assert_int_equal(weft_yield(), 0);
  }
}

/* A plain thread's pause inside a critical section: a short spin, not
 * sched_yield, which on a loaded machine gives the CPU away for a whole
 * time slice while holding the permit or the lock. */
static void spin_a_little(void) {
  for (volatile int i = 0; i < 200; i = i + 1) {
  }
}

static void atomic_max(atomic_int *m, int v) {
  int cur = atomic_load(m);
  while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
  }
}

/* A small, reproducible random sequence (xorshift). */
static uint32_t rnd(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* One waiter on a primitive: a task or a plain thread that makes one call
 * and records what it returned and in which order it came back. */
typedef struct op {
  weft_sem_t *sem;
  weft_mutex_t *mu;
  weft_event_t *ev;
  weft_cond_t *cv;
  int id;
  bool give_back;        /* sem: post the permit once taken; mutex: unlock */
  bool cancel_self;      /* cancel itself before the call */
  uint64_t deadline_ms;  /* > 0: a deadline scope around the call */
  atomic_int *seq;       /* arrival counter, shared */
  atomic_int started;
  atomic_int done;
  atomic_int rc;         /* 1 until the call returns */
  atomic_int place;      /* the value of *seq when it returned, -1 before */
  atomic_int back_rc;    /* what the post or unlock returned */
} op_t;

static void op_init(op_t *o, int id, atomic_int *seq) {
  memset(o, 0, sizeof *o);
  o->id = id;
  o->seq = seq;
  atomic_init(&o->started, 0);
  atomic_init(&o->done, 0);
  atomic_init(&o->rc, 1);
  atomic_init(&o->place, -1);
  atomic_init(&o->back_rc, 1);
}

static void op_begin(op_t *o) {
  atomic_store(&o->started, 1);
  if (o->cancel_self)
    weft_task_cancel(weft_task_current());
  if (o->deadline_ms > 0)
    weft_deadline_push(o->deadline_ms);
}

static void op_end(op_t *o, int rc) {
  if (o->deadline_ms > 0)
    weft_deadline_pop();
  atomic_store(&o->rc, rc);
  if (o->seq != NULL)
    atomic_store(&o->place, atomic_fetch_add(o->seq, 1));
}

static void *sem_op(void *arg) {
  op_t *o = arg;
  op_begin(o);
  int rc = weft_sem_acquire(o->sem);
  op_end(o, rc);
  if (rc == 0 && o->give_back)
    atomic_store(&o->back_rc, weft_sem_post(o->sem));
  atomic_store(&o->done, 1);
  return NULL;
}

static void *mutex_op(void *arg) {
  op_t *o = arg;
  op_begin(o);
  int rc = weft_mutex_lock(o->mu);
  op_end(o, rc);
  if (rc == 0 && o->give_back)
    atomic_store(&o->back_rc, weft_mutex_unlock(o->mu));
  atomic_store(&o->done, 1);
  return NULL;
}

static void *event_op(void *arg) {
  op_t *o = arg;
  op_begin(o);
  int rc = weft_event_wait(o->ev);
  op_end(o, rc);
  atomic_store(&o->done, 1);
  return NULL;
}

static void spawn_op(weft_loop_t *loop, weft_fn fn, op_t *o, weft_task_t **t) {
  assert_int_equal(weft_spawn(loop, fn, o, t), 0);
}

/* ============================================================ semaphore */

static void sem_counts_and_errors(void **state) {
  weft_sem_t *s = NULL;
  assert_int_equal(weft_sem_new(&s, 2), 0);
  assert_non_null(s);
  assert_int_equal(weft_sem_value(s), 2);
  assert_int_equal(weft_sem_try_acquire(s), 0);
  assert_int_equal(weft_sem_value(s), 1);
  assert_int_equal(weft_sem_try_acquire(s), 0);
  assert_int_equal(weft_sem_value(s), 0);
  assert_int_equal(weft_sem_try_acquire(s), WEFT_EAGAIN);
  assert_int_equal(weft_sem_try_acquire(s), WEFT_EAGAIN);
  assert_int_equal(weft_sem_value(s), 0);
  /* Posts may go beyond the initial count. */
  for (int i = 1; i <= 3; i++) {
    assert_int_equal(weft_sem_post(s), 0);
    assert_int_equal(weft_sem_value(s), (size_t)i);
  }
  /* A plain thread's acquire with a free permit takes it at once. */
  assert_int_equal(weft_sem_acquire(s), 0);
  assert_int_equal(weft_sem_value(s), 2);
  assert_int_equal(weft_sem_try_acquire(s), 0);
  assert_int_equal(weft_sem_try_acquire(s), 0);
  assert_int_equal(weft_sem_try_acquire(s), WEFT_EAGAIN);
  assert_int_equal(weft_sem_free(s), 0);

  s = NULL;
  assert_int_equal(weft_sem_new(&s, 0), 0);
  assert_non_null(s);
  assert_int_equal(weft_sem_value(s), 0);
  assert_int_equal(weft_sem_try_acquire(s), WEFT_EAGAIN);
  assert_int_equal(weft_sem_free(s), 0);

  /* At WEFT_SEM_MAX a post fails and changes nothing. */
  assert_int_equal(weft_sem_new(&s, WEFT_SEM_MAX), 0);
  assert_int_equal(weft_sem_value(s), WEFT_SEM_MAX);
  assert_int_equal(weft_sem_post(s), WEFT_ENOBUFS);
  assert_int_equal(weft_sem_value(s), WEFT_SEM_MAX);
  assert_int_equal(weft_sem_try_acquire(s), 0);
  assert_int_equal(weft_sem_value(s), WEFT_SEM_MAX - 1);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_value(s), WEFT_SEM_MAX);
  assert_int_equal(weft_sem_post(s), WEFT_ENOBUFS);
  assert_int_equal(weft_sem_value(s), WEFT_SEM_MAX);
  assert_int_equal(weft_sem_free(s), 0);
  assert_int_equal(weft_sem_new(&s, WEFT_SEM_MAX - 1), 0);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_post(s), WEFT_ENOBUFS);
  assert_int_equal(weft_sem_value(s), WEFT_SEM_MAX);
  assert_int_equal(weft_sem_free(s), 0);

  /* Bad arguments. */
  assert_int_equal(weft_sem_new(&s, WEFT_SEM_MAX + 1), WEFT_EINVAL);
  assert_int_equal(weft_sem_new(&s, SIZE_MAX), WEFT_EINVAL);
  assert_int_equal(weft_sem_new(NULL, 1), WEFT_EINVAL);
  assert_int_equal(weft_sem_acquire(NULL), WEFT_EINVAL);
  assert_int_equal(weft_sem_try_acquire(NULL), WEFT_EINVAL);
  assert_int_equal(weft_sem_post(NULL), WEFT_EINVAL);
  assert_int_equal(weft_sem_value(NULL), 0);
  assert_int_equal(weft_sem_free(NULL), 0);
}

/* A task that counts the rounds it sees until told to stop. */
typedef struct ticker {
  atomic_int stop;
  atomic_int ticks;
} ticker_t;

static void *ticker_task(void *arg) {
  ticker_t *k = arg;
  while (!atomic_load(&k->stop)) {
    atomic_fetch_add(&k->ticks, 1);
    if (weft_yield() != 0)
      break;
  }
  return NULL;
}

static void *sem_suspends_main(void *arg) {
  weft_sem_t *s = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_sem_new(&s, 0), 0);
  op_t a;
  op_init(&a, 1, &seq);
  a.sem = s;
  ticker_t k;
  atomic_init(&k.stop, 0);
  atomic_init(&k.ticks, 0);
  weft_task_t *ta, *tk;
  spawn_op(NULL, sem_op, &a, &ta);
  assert_int_equal(weft_spawn(NULL, ticker_task, &k, &tk), 0);
  settle(1);
  assert_int_equal(atomic_load(&a.started), 1);
  /* A waits; the loop runs the ticker and this task meanwhile, timers too. */
  int t0 = atomic_load(&k.ticks);
  rounds(20);
  assert_int_equal(weft_sleep(20), 0);
  assert_true(atomic_load(&k.ticks) >= t0 + 10);
  assert_int_equal(atomic_load(&a.done), 0);
  assert_int_equal(atomic_load(&a.rc), 1);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_await(ta, NULL), 0);
  assert_int_equal(atomic_load(&a.rc), 0);
  assert_int_equal(weft_sem_value(s), 0); /* A holds it */

  /* A task's acquire with a free permit returns 0 and takes it. */
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_acquire(s), 0);
  assert_int_equal(weft_sem_value(s), 0);

  atomic_store(&k.stop, 1);
  assert_int_equal(weft_await(tk, NULL), 0);
  weft_task_release(ta);
  weft_task_release(tk);
  assert_int_equal(weft_sem_free(s), 0);
  return NULL;
}

static void sem_acquire_suspends_task(void **state) {
  assert_int_equal(weft_run(sem_suspends_main, NULL, NULL), 0);
}

/* A task that hammers try_acquire until told to stop, counting successes
 * (and giving each permit straight back). */
typedef struct thief {
  weft_sem_t *sem;
  weft_mutex_t *mu;
  atomic_int stop;
  atomic_int stolen;
  atomic_int tries;
} thief_t;

static void *sem_thief_task(void *arg) {
  thief_t *th = arg;
  while (!atomic_load(&th->stop)) {
    atomic_fetch_add(&th->tries, 1);
    if (weft_sem_try_acquire(th->sem) == 0) {
      atomic_fetch_add(&th->stolen, 1);
      weft_sem_post(th->sem);
    }
    if (weft_yield() != 0)
      break;
  }
  return NULL;
}

static void *sem_fifo_main(void *arg) {
  weft_sem_t *s = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_sem_new(&s, 0), 0);
  op_t o[3];
  weft_task_t *t[3];
  /* A, B and C start waiting in that order. */
  for (int i = 0; i < 3; i++) {
    op_init(&o[i], i, &seq);
    o[i].sem = s;
    spawn_op(NULL, sem_op, &o[i], &t[i]);
    settle((size_t)i + 1);
  }
  thief_t th = {.sem = s};
  atomic_init(&th.stop, 0);
  atomic_init(&th.stolen, 0);
  atomic_init(&th.tries, 0);
  weft_task_t *tt;
  assert_int_equal(weft_spawn(NULL, sem_thief_task, &th, &tt), 0);
  rounds(3);
  assert_int_equal(atomic_load(&th.stolen), 0);

  for (int i = 0; i < 3; i++) {
    /* The permit goes to the longest waiter, not to the count. */
    assert_int_equal(weft_sem_post(s), 0);
    assert_int_equal(weft_sem_value(s), 0);
    assert_int_equal(weft_sem_try_acquire(s), WEFT_EAGAIN);
    int tries = atomic_load(&th.tries);
    /* The thief tries in the same rounds as the woken waiter runs. */
    yield_until(&o[i].done);
    rounds(3);
    assert_true(atomic_load(&th.tries) > tries);
    assert_int_equal(atomic_load(&o[i].rc), 0);
    assert_int_equal(atomic_load(&o[i].place), i);
    for (int j = i + 1; j < 3; j++)
      assert_int_equal(atomic_load(&o[j].done), 0);
  }
  assert_int_equal(atomic_load(&th.stolen), 0);
  atomic_store(&th.stop, 1);
  assert_int_equal(weft_await(tt, NULL), 0);
  /* Nobody waits now: a post goes to the count. */
  assert_int_equal(weft_sem_value(s), 0);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_value(s), 1);
  assert_int_equal(weft_sem_try_acquire(s), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  weft_task_release(tt);
  assert_int_equal(weft_sem_free(s), 0);
  return NULL;
}

static void sem_fifo_no_barging(void **state) {
  assert_int_equal(weft_run(sem_fifo_main, NULL, NULL), 0);
}

static void *sem_cancel_main(void *arg) {
  weft_sem_t *s = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_sem_new(&s, 0), 0);
  op_t a, b, c, d, e;
  weft_task_t *ta, *tb, *tc, *td, *te;

  /* A cancelled waiter takes nothing; the next post goes to B behind it. */
  op_init(&a, 1, &seq);
  a.sem = s;
  a.give_back = true;
  op_init(&b, 2, &seq);
  b.sem = s;
  spawn_op(NULL, sem_op, &a, &ta);
  settle(1);
  spawn_op(NULL, sem_op, &b, &tb);
  settle(2);
  assert_int_equal(weft_task_cancel(ta), 0);
  assert_int_equal(weft_await(ta, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&a.rc), WEFT_ECANCELED);
  assert_int_equal(weft_sem_value(s), 0);
  rounds(3);
  assert_int_equal(atomic_load(&b.done), 0);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_await(tb, NULL), 0);
  assert_int_equal(atomic_load(&b.rc), 0);
  assert_int_equal(weft_sem_value(s), 0);
  /* Nobody waits: the next post is counted, not given to A. */
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_value(s), 1);
  assert_int_equal(weft_sem_try_acquire(s), 0);

  /* C is handed a permit, then cancelled before it runs: it keeps the
   * permit (its acquire returns 0, the cancel ends the task) and gives it
   * back, so the count ends at 1, not 0 (lost) nor 2 (duplicated). */
  op_init(&c, 3, &seq);
  c.sem = s;
  c.give_back = true;
  spawn_op(NULL, sem_op, &c, &tc);
  settle(1);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_task_cancel(tc), 0);
  assert_int_equal(weft_await(tc, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&c.rc), 0);
  assert_int_equal(atomic_load(&c.back_rc), 0);
  assert_int_equal(weft_sem_value(s), 1);

  /* A cancel pending when the call begins: ECANCELED at once, even with a
   * permit free, and the permit stays. */
  op_init(&d, 4, &seq);
  d.sem = s;
  d.cancel_self = true;
  spawn_op(NULL, sem_op, &d, &td);
  assert_int_equal(weft_await(td, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&d.rc), WEFT_ECANCELED);
  assert_int_equal(weft_sem_value(s), 1);
  assert_int_equal(weft_sem_try_acquire(s), 0);

  /* wait_for cuts a waiter: it is cancelled and takes nothing. */
  op_init(&e, 5, &seq);
  e.sem = s;
  spawn_op(NULL, sem_op, &e, &te);
  assert_int_equal(weft_wait_for(te, 20, NULL), WEFT_ETIMEDOUT);
  assert_int_equal(atomic_load(&e.rc), WEFT_ECANCELED);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_value(s), 1);

  weft_task_release(ta);
  weft_task_release(tb);
  weft_task_release(tc);
  weft_task_release(td);
  weft_task_release(te);
  assert_int_equal(weft_sem_free(s), 0);
  return NULL;
}

static void sem_cancel_waiter(void **state) {
  assert_int_equal(weft_run(sem_cancel_main, NULL, NULL), 0);
}

static void *sem_deadline_main(void *arg) {
  weft_sem_t *s = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_sem_new(&s, 0), 0);

  /* The caller's own deadline scope. */
  double t0 = wt_now_ms();
  assert_int_equal(weft_deadline_push(30), 0);
  assert_int_equal(weft_sem_acquire(s), WEFT_ETIMEDOUT);
  double el = wt_now_ms() - t0;
  assert_int_equal(weft_deadline_pop(), 0);
  assert_true(el >= 20);
  assert_true(el < 5000);
  assert_int_equal(weft_sem_value(s), 0);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_value(s), 1);
  assert_int_equal(weft_sem_try_acquire(s), 0);

  /* A waiter with a deadline in front of one without: A times out, the
   * post goes to B. */
  op_t a, b;
  weft_task_t *ta, *tb;
  op_init(&a, 1, &seq);
  a.sem = s;
  a.deadline_ms = 30;
  a.give_back = true;
  op_init(&b, 2, &seq);
  b.sem = s;
  spawn_op(NULL, sem_op, &a, &ta);
  settle(1);
  spawn_op(NULL, sem_op, &b, &tb);
  settle(2);
  assert_int_equal(weft_await(ta, NULL), 0);
  assert_int_equal(atomic_load(&a.rc), WEFT_ETIMEDOUT);
  rounds(3);
  assert_int_equal(atomic_load(&b.done), 0);
  assert_int_equal(weft_sem_value(s), 0);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_await(tb, NULL), 0);
  assert_int_equal(atomic_load(&b.rc), 0);
  assert_int_equal(weft_sem_value(s), 0);
  weft_task_release(ta);
  weft_task_release(tb);
  assert_int_equal(weft_sem_free(s), 0);
  return NULL;
}

static void sem_deadline(void **state) {
  assert_int_equal(weft_run(sem_deadline_main, NULL, NULL), 0);
}

/* A plain thread that acquires once (or posts n times). */
static void *sem_op_thread(void *arg) {
  return sem_op(arg);
}

static void *post_task(void *arg) {
  op_t *o = arg;
  atomic_store(&o->started, 1);
  atomic_store(&o->rc, weft_sem_post(o->sem));
  atomic_store(&o->done, 1);
  return NULL;
}

static void sem_threads_and_loops(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  weft_loop_t *l0 = weft_pool_loop(pool, 0), *l1 = weft_pool_loop(pool, 1);
  weft_sem_t *s = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_sem_new(&s, 0), 0);

  /* A plain thread blocks until a task of a loop posts. */
  op_t th;
  op_init(&th, 1, &seq);
  th.sem = s;
  pthread_t pt;
  assert_int_equal(pthread_create(&pt, NULL, sem_op_thread, &th), 0);
  assert_true(wt_wait_ge(&th.started, 1, BOUND_MS));
  uv_sleep(20);
  assert_int_equal(atomic_load(&th.done), 0);
  op_t p;
  op_init(&p, 2, NULL);
  p.sem = s;
  weft_task_t *tp;
  spawn_op(l0, post_task, &p, &tp);
  assert_int_equal(pthread_join(pt, NULL), 0);
  assert_int_equal(atomic_load(&th.rc), 0);
  assert_int_equal(weft_await(tp, NULL), 0);
  assert_int_equal(atomic_load(&p.rc), 0);
  weft_task_release(tp);
  assert_int_equal(weft_sem_value(s), 0);

  /* A task waits; a plain thread posts, and its own try_acquire right
   * after cannot take the permit handed to the task. */
  op_t a;
  op_init(&a, 3, &seq);
  a.sem = s;
  weft_task_t *ta;
  spawn_op(l1, sem_op, &a, &ta);
  loop_settle(l1, 1);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_try_acquire(s), WEFT_EAGAIN);
  assert_int_equal(weft_await(ta, NULL), 0);
  assert_int_equal(atomic_load(&a.rc), 0);
  assert_int_equal(weft_sem_value(s), 0);
  weft_task_release(ta);

  /* Four tasks on two loops and a plain thread wait; a task of one loop
   * posts three permits, this thread two: each waiter gets exactly one. */
  op_t w[5];
  weft_task_t *tw[4];
  for (int i = 0; i < 4; i++) {
    op_init(&w[i], 10 + i, &seq);
    w[i].sem = s;
    spawn_op(i % 2 ? l1 : l0, sem_op, &w[i], &tw[i]);
  }
  op_init(&w[4], 14, &seq);
  w[4].sem = s;
  assert_int_equal(pthread_create(&pt, NULL, sem_op_thread, &w[4]), 0);
  loop_settle(l0, 2);
  loop_settle(l1, 2);
  assert_true(wt_wait_ge(&w[4].started, 1, BOUND_MS));
  op_t ps[3];
  weft_task_t *tps[3];
  for (int i = 0; i < 3; i++) {
    op_init(&ps[i], 20 + i, NULL);
    ps[i].sem = s;
    spawn_op(l0, post_task, &ps[i], &tps[i]);
  }
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_sem_post(s), 0);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(weft_await(tw[i], NULL), 0);
    assert_int_equal(atomic_load(&w[i].rc), 0);
    weft_task_release(tw[i]);
  }
  assert_int_equal(pthread_join(pt, NULL), 0);
  assert_int_equal(atomic_load(&w[4].rc), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_await(tps[i], NULL), 0);
    assert_int_equal(atomic_load(&ps[i].rc), 0);
    weft_task_release(tps[i]);
  }
  assert_int_equal(weft_sem_value(s), 0);

  /* A task of one loop woken by a post from a task of the other. */
  op_init(&a, 30, &seq);
  a.sem = s;
  spawn_op(l0, sem_op, &a, &ta);
  loop_settle(l0, 1);
  op_init(&p, 31, NULL);
  p.sem = s;
  spawn_op(l1, post_task, &p, &tp);
  assert_int_equal(weft_await(ta, NULL), 0);
  assert_int_equal(atomic_load(&a.rc), 0);
  assert_int_equal(weft_await(tp, NULL), 0);
  weft_task_release(ta);
  weft_task_release(tp);
  assert_int_equal(weft_sem_value(s), 0);

  assert_int_equal(weft_sem_free(s), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void sem_free_busy(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *l0 = weft_pool_loop(pool, 0);
  weft_sem_t *s = NULL;
  assert_int_equal(weft_sem_new(&s, 0), 0);
  op_t a;
  op_init(&a, 1, NULL);
  a.sem = s;
  weft_task_t *ta;
  spawn_op(l0, sem_op, &a, &ta);
  loop_settle(l0, 1);
  /* Refused while a task waits; the semaphore still works. */
  assert_int_equal(weft_sem_free(s), WEFT_EBUSY);
  assert_int_equal(weft_sem_free(s), WEFT_EBUSY);
  assert_int_equal(weft_sem_post(s), 0);
  assert_int_equal(weft_await(ta, NULL), 0);
  assert_int_equal(atomic_load(&a.rc), 0);
  weft_task_release(ta);
  /* A waiter that was cancelled no longer counts. */
  op_init(&a, 2, NULL);
  a.sem = s;
  spawn_op(l0, sem_op, &a, &ta);
  loop_settle(l0, 1);
  assert_int_equal(weft_sem_free(s), WEFT_EBUSY);
  assert_int_equal(weft_task_cancel(ta), 0);
  assert_int_equal(weft_await(ta, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&a.rc), WEFT_ECANCELED);
  weft_task_release(ta);
  assert_int_equal(weft_sem_free(s), 0);
  assert_int_equal(weft_sem_free(NULL), 0);
  assert_int_equal(weft_mutex_free(NULL), 0);
  assert_int_equal(weft_event_free(NULL), 0);
  assert_int_equal(weft_cond_free(NULL), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ---------------------------------------- libuv callbacks cannot wait */

typedef struct cb_check {
  weft_sem_t *sem;
  weft_mutex_t *mu;
  weft_event_t *ev;
  weft_cond_t *cv;
  int acquire, try1, post, try2, lock, trylock, evwait, evset, signal, bcast;
  atomic_int done;
} cb_check_t;

static void sync_cb(void *arg) {
  cb_check_t *c = arg;
  c->acquire = weft_sem_acquire(c->sem); /* none free: would have to wait */
  c->try1 = weft_sem_try_acquire(c->sem);
  c->post = weft_sem_post(c->sem);
  c->try2 = weft_sem_try_acquire(c->sem);
  c->lock = weft_mutex_lock(c->mu);
  c->trylock = weft_mutex_try_lock(c->mu);
  c->evwait = weft_event_wait(c->ev);
  c->evset = weft_event_set(c->ev);
  c->signal = weft_cond_signal(c->cv);
  c->bcast = weft_cond_broadcast(c->cv);
  atomic_store(&c->done, 1);
}

static void sync_in_callbacks(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  cb_check_t c;
  memset(&c, 0, sizeof c);
  atomic_init(&c.done, 0);
  assert_int_equal(weft_sem_new(&c.sem, 0), 0);
  assert_int_equal(weft_mutex_new(&c.mu), 0);
  assert_int_equal(weft_event_new(&c.ev), 0);
  assert_int_equal(weft_cond_new(&c.cv), 0);
  assert_int_equal(weft_loop_call_soon(weft_pool_loop(pool, 0), sync_cb, &c), 0);
  assert_true(wt_wait_ge(&c.done, 1, BOUND_MS));
  assert_int_equal(c.acquire, WEFT_ENOTASK);
  assert_int_equal(c.try1, WEFT_EAGAIN);
  assert_int_equal(c.post, 0);
  assert_int_equal(c.try2, 0);
  assert_int_equal(c.lock, WEFT_ENOTASK);
  assert_int_equal(c.trylock, WEFT_ENOTASK);
  assert_int_equal(c.evwait, WEFT_ENOTASK);
  assert_int_equal(c.evset, 0);
  assert_int_equal(c.signal, 0);
  assert_int_equal(c.bcast, 0);
  assert_int_equal(weft_sem_value(c.sem), 0);
  assert_true(weft_event_is_set(c.ev));
  /* Nothing was left locked nor waiting. */
  assert_int_equal(weft_mutex_try_lock(c.mu), 0);
  assert_int_equal(weft_mutex_unlock(c.mu), 0);
  assert_int_equal(weft_sem_free(c.sem), 0);
  assert_int_equal(weft_mutex_free(c.mu), 0);
  assert_int_equal(weft_event_free(c.ev), 0);
  assert_int_equal(weft_cond_free(c.cv), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ================================================================ mutex */

static void mutex_basics_plain_thread(void **state) {
  weft_mutex_t *mu = NULL;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_non_null(mu);
  assert_int_equal(weft_mutex_unlock(mu), WEFT_EPERM); /* not held */
  assert_int_equal(weft_mutex_lock(mu), 0);
  assert_int_equal(weft_mutex_lock(mu), WEFT_EDEADLK);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK);
  assert_int_equal(weft_mutex_free(mu), WEFT_EBUSY); /* held */
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), WEFT_EPERM);
  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_free(mu), 0);

  assert_int_equal(weft_mutex_new(NULL), WEFT_EINVAL);
  assert_int_equal(weft_mutex_lock(NULL), WEFT_EINVAL);
  assert_int_equal(weft_mutex_try_lock(NULL), WEFT_EINVAL);
  assert_int_equal(weft_mutex_unlock(NULL), WEFT_EINVAL);
  assert_int_equal(weft_mutex_free(NULL), 0);
}

/* A task that tries to take or release a mutex it does not hold. */
typedef struct intruder {
  weft_mutex_t *mu;
  int try_rc, unlock_rc;
} intruder_t;

static void *intruder_task(void *arg) {
  intruder_t *in = arg;
  in->try_rc = weft_mutex_try_lock(in->mu);
  in->unlock_rc = weft_mutex_unlock(in->mu);
  return NULL;
}

static void *mutex_tasks_main(void *arg) {
  weft_mutex_t *mu = NULL;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_mutex_lock(mu), 0);
  assert_int_equal(weft_mutex_lock(mu), WEFT_EDEADLK);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK);
  /* Another task can neither take it nor release it; nothing changes. */
  intruder_t in = {.mu = mu, .try_rc = 1, .unlock_rc = 1};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, intruder_task, &in, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(in.try_rc, WEFT_EAGAIN);
  assert_int_equal(in.unlock_rc, WEFT_EPERM);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK); /* still ours */
  assert_int_equal(weft_mutex_free(mu), WEFT_EBUSY);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), WEFT_EPERM);
  /* Free now: another task takes it with try_lock, we cannot unlock it. */
  in = (intruder_t){.mu = mu, .try_rc = 1, .unlock_rc = 1};
  assert_int_equal(weft_spawn(NULL, intruder_task, &in, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(in.try_rc, 0);
  assert_int_equal(in.unlock_rc, 0); /* it held it, so its unlock worked */
  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

static void mutex_lock_unlock_tasks(void **state) {
  assert_int_equal(weft_run(mutex_tasks_main, NULL, NULL), 0);
}

/* Holders that keep the mutex across sleeps and yields, and check that
 * nobody else is inside meanwhile. */
typedef struct crit {
  weft_mutex_t *mu;
  weft_chan_t *gate; /* the first holder keeps the lock until it closes */
  atomic_int inside;
  atomic_int violations;
  atomic_int seq;
  atomic_int holding; /* the first holder has the lock */
} crit_t;

typedef struct crit_task {
  crit_t *c;
  int id;
  bool wait_gate;
  uint64_t sleep_ms;
  int yields;
  int rc;
  int place;
} crit_task_t;

static void *crit_body(void *arg) {
  crit_task_t *k = arg;
  crit_t *c = k->c;
  k->rc = weft_mutex_lock(c->mu);
  if (k->rc != 0)
    return NULL;
  k->place = atomic_fetch_add(&c->seq, 1);
  if (atomic_exchange(&c->inside, 1) != 0)
    atomic_fetch_add(&c->violations, 1);
  atomic_store(&c->holding, 1);
  if (k->wait_gate) {
    void *m;
    if (weft_chan_recv(c->gate, &m) != WEFT_ECLOSED)
      atomic_fetch_add(&c->violations, 100);
  }
  if (k->sleep_ms > 0 && weft_sleep(k->sleep_ms) != 0)
    atomic_fetch_add(&c->violations, 100);
  for (int i = 0; i < k->yields; i++)
    if (weft_yield() != 0)
      atomic_fetch_add(&c->violations, 100);
  if (atomic_load(&c->inside) != 1)
    atomic_fetch_add(&c->violations, 1);
  atomic_store(&c->inside, 0);
  k->rc = weft_mutex_unlock(c->mu);
  return NULL;
}

static void *mutex_across_awaits_main(void *arg) {
  crit_t c;
  memset(&c, 0, sizeof c);
  assert_int_equal(weft_mutex_new(&c.mu), 0);
  assert_int_equal(weft_chan_new(&c.gate, 1), 0);
  crit_task_t k[4];
  weft_task_t *t[4];
  ticker_t tk;
  atomic_init(&tk.stop, 0);
  atomic_init(&tk.ticks, 0);
  weft_task_t *ttk;
  assert_int_equal(weft_spawn(NULL, ticker_task, &tk, &ttk), 0);
  /* The first holder waits on a gate, sleeps and yields inside; three
   * more queue meanwhile, and each of them sleeps and yields inside too. */
  k[0] = (crit_task_t){
      .c = &c, .id = 0, .wait_gate = true, .sleep_ms = 2, .yields = 5, .rc = 1, .place = -1};
  assert_int_equal(weft_spawn(NULL, crit_body, &k[0], &t[0]), 0);
  yield_until(&c.holding);
  settle(1); /* the holder, at its gate */
  for (int i = 1; i < 4; i++) {
    k[i] = (crit_task_t){.c = &c, .id = i, .sleep_ms = 1, .yields = 3, .rc = 1, .place = -1};
    assert_int_equal(weft_spawn(NULL, crit_body, &k[i], &t[i]), 0);
    settle((size_t)i + 1);
  }
  /* The waiters do not hold the loop: the ticker keeps going. */
  int t0 = atomic_load(&tk.ticks);
  rounds(10);
  assert_true(atomic_load(&tk.ticks) >= t0 + 5);
  assert_int_equal(weft_mutex_try_lock(c.mu), WEFT_EAGAIN);
  for (int i = 1; i < 4; i++)
    assert_int_equal(k[i].place, -1);
  assert_int_equal(weft_chan_close(c.gate), 0);
  assert_int_equal(weft_gather(t, 4, NULL, NULL), 0);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(k[i].rc, 0);
    assert_int_equal(k[i].place, i); /* FIFO */
    weft_task_release(t[i]);
  }
  assert_int_equal(atomic_load(&c.violations), 0);
  atomic_store(&tk.stop, 1);
  assert_int_equal(weft_await(ttk, NULL), 0);
  weft_task_release(ttk);
  weft_chan_release(c.gate);
  assert_int_equal(weft_mutex_free(c.mu), 0);
  return NULL;
}

static void mutex_held_across_awaits(void **state) {
  assert_int_equal(weft_run(mutex_across_awaits_main, NULL, NULL), 0);
}

static void *mutex_thief_task(void *arg) {
  thief_t *th = arg;
  while (!atomic_load(&th->stop)) {
    atomic_fetch_add(&th->tries, 1);
    if (weft_mutex_try_lock(th->mu) == 0) {
      atomic_fetch_add(&th->stolen, 1);
      weft_mutex_unlock(th->mu);
    }
    if (weft_yield() != 0)
      break;
  }
  return NULL;
}

static void *mutex_fifo_main(void *arg) {
  weft_mutex_t *mu = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_mutex_lock(mu), 0);
  thief_t th = {.mu = mu};
  atomic_init(&th.stop, 0);
  atomic_init(&th.stolen, 0);
  atomic_init(&th.tries, 0);
  weft_task_t *tt;
  assert_int_equal(weft_spawn(NULL, mutex_thief_task, &th, &tt), 0);
  op_t o[3];
  weft_task_t *t[3];
  for (int i = 0; i < 3; i++) {
    op_init(&o[i], i, &seq);
    o[i].mu = mu;
    o[i].give_back = true;
    spawn_op(NULL, mutex_op, &o[i], &t[i]);
    settle((size_t)i + 1);
  }
  /* Unlocking hands the lock to A: neither we nor the thief can take it. */
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EAGAIN);
  assert_int_equal(weft_mutex_unlock(mu), WEFT_EPERM);
  /* We queue behind C, so we get it back last. */
  assert_int_equal(weft_mutex_lock(mu), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(atomic_load(&o[i].done), 1);
    assert_int_equal(atomic_load(&o[i].rc), 0);
    assert_int_equal(atomic_load(&o[i].place), i);
    assert_int_equal(atomic_load(&o[i].back_rc), 0);
  }
  assert_true(atomic_load(&th.tries) > 0);
  assert_int_equal(atomic_load(&th.stolen), 0);
  atomic_store(&th.stop, 1);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_await(tt, NULL), 0);
  weft_task_release(tt);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

static void mutex_fifo_handoff(void **state) {
  assert_int_equal(weft_run(mutex_fifo_main, NULL, NULL), 0);
}

static void *mutex_cancel_main(void *arg) {
  weft_mutex_t *mu = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_mutex_new(&mu), 0);
  op_t a, b, c, d, e;
  weft_task_t *ta, *tb, *tc, *td, *te;

  /* A cancelled waiter does not get the lock; B behind it does. */
  assert_int_equal(weft_mutex_lock(mu), 0);
  op_init(&a, 1, &seq);
  a.mu = mu;
  a.give_back = true;
  op_init(&b, 2, &seq);
  b.mu = mu;
  b.give_back = true;
  spawn_op(NULL, mutex_op, &a, &ta);
  settle(1);
  spawn_op(NULL, mutex_op, &b, &tb);
  settle(2);
  assert_int_equal(weft_task_cancel(ta), 0);
  assert_int_equal(weft_await(ta, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&a.rc), WEFT_ECANCELED);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK); /* still ours */
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_await(tb, NULL), 0);
  assert_int_equal(atomic_load(&b.rc), 0);
  assert_int_equal(atomic_load(&b.back_rc), 0);
  assert_int_equal(weft_mutex_try_lock(mu), 0);

  /* C is handed the lock, then cancelled before it runs: it holds the
   * lock (lock returns 0) and its unlock works. */
  op_init(&c, 3, &seq);
  c.mu = mu;
  c.give_back = true;
  spawn_op(NULL, mutex_op, &c, &tc);
  settle(1);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_task_cancel(tc), 0);
  assert_int_equal(weft_await(tc, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&c.rc), 0);
  assert_int_equal(atomic_load(&c.back_rc), 0);
  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);

  /* A cancel pending when lock is called: ECANCELED, not locked. */
  op_init(&d, 4, &seq);
  d.mu = mu;
  d.cancel_self = true;
  spawn_op(NULL, mutex_op, &d, &td);
  assert_int_equal(weft_await(td, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&d.rc), WEFT_ECANCELED);
  assert_int_equal(weft_mutex_try_lock(mu), 0);

  /* A deadline while waiting: ETIMEDOUT, not locked. */
  op_init(&e, 5, &seq);
  e.mu = mu;
  e.deadline_ms = 20;
  e.give_back = true;
  spawn_op(NULL, mutex_op, &e, &te);
  assert_int_equal(weft_await(te, NULL), 0);
  assert_int_equal(atomic_load(&e.rc), WEFT_ETIMEDOUT);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);

  weft_task_release(ta);
  weft_task_release(tb);
  weft_task_release(tc);
  weft_task_release(td);
  weft_task_release(te);
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

static void mutex_cancel_waiter(void **state) {
  assert_int_equal(weft_run(mutex_cancel_main, NULL, NULL), 0);
}

/* A pool task that checks it cannot touch a mutex a plain thread holds,
 * then locks it, holds it until told, and unlocks. */
typedef struct holder {
  weft_mutex_t *mu;
  weft_chan_t *release; /* closed when the holder may unlock */
  atomic_int try_rc, unlock_rc, lock_rc, held, final_rc;
} holder_t;

static void *holder_task(void *arg) {
  holder_t *h = arg;
  atomic_store(&h->try_rc, weft_mutex_try_lock(h->mu));
  atomic_store(&h->unlock_rc, weft_mutex_unlock(h->mu));
  int rc = weft_mutex_lock(h->mu);
  atomic_store(&h->lock_rc, rc);
  if (rc != 0)
    return NULL;
  atomic_store(&h->held, 1);
  void *m;
  weft_chan_recv(h->release, &m); /* ECLOSED once released */
  atomic_store(&h->final_rc, weft_mutex_unlock(h->mu));
  return NULL;
}

typedef struct thread_locker {
  weft_mutex_t *mu;
  atomic_int started, locked;
  int lock_rc, unlock_rc;
} thread_locker_t;

static void *locker_thread(void *arg) {
  thread_locker_t *l = arg;
  atomic_store(&l->started, 1);
  l->lock_rc = weft_mutex_lock(l->mu);
  atomic_store(&l->locked, 1);
  if (l->lock_rc == 0)
    l->unlock_rc = weft_mutex_unlock(l->mu);
  return NULL;
}

static void mutex_thread_vs_task(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *l0 = weft_pool_loop(pool, 0);
  weft_mutex_t *mu = NULL;
  assert_int_equal(weft_mutex_new(&mu), 0);
  holder_t h;
  memset(&h, 0, sizeof h);
  h.mu = mu;
  atomic_init(&h.try_rc, 1);
  atomic_init(&h.unlock_rc, 1);
  atomic_init(&h.lock_rc, 1);
  atomic_init(&h.held, 0);
  atomic_init(&h.final_rc, 1);
  assert_int_equal(weft_chan_new(&h.release, 1), 0);

  /* This thread holds it; the task waits for it. */
  assert_int_equal(weft_mutex_lock(mu), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(l0, holder_task, &h, &t), 0);
  loop_settle(l0, 1);
  assert_int_equal(atomic_load(&h.try_rc), WEFT_EAGAIN);
  assert_int_equal(atomic_load(&h.unlock_rc), WEFT_EPERM);
  uv_sleep(10);
  assert_int_equal(atomic_load(&h.held), 0);
  assert_int_equal(weft_mutex_free(mu), WEFT_EBUSY);
  assert_int_equal(weft_mutex_unlock(mu), 0);

  /* The task holds it now (handed over); this thread is not the holder. */
  assert_true(wt_wait_ge(&h.held, 1, BOUND_MS));
  assert_int_equal(atomic_load(&h.lock_rc), 0);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EAGAIN);
  assert_int_equal(weft_mutex_unlock(mu), WEFT_EPERM);
  assert_int_equal(weft_mutex_free(mu), WEFT_EBUSY);
  /* Another plain thread blocks until the task lets go. */
  thread_locker_t lk = {.mu = mu, .lock_rc = 1, .unlock_rc = 1};
  atomic_init(&lk.started, 0);
  atomic_init(&lk.locked, 0);
  pthread_t pt;
  assert_int_equal(pthread_create(&pt, NULL, locker_thread, &lk), 0);
  assert_true(wt_wait_ge(&lk.started, 1, BOUND_MS));
  uv_sleep(20);
  assert_int_equal(atomic_load(&lk.locked), 0);
  assert_int_equal(weft_chan_close(h.release), 0);
  assert_int_equal(pthread_join(pt, NULL), 0);
  assert_int_equal(lk.lock_rc, 0);
  assert_int_equal(lk.unlock_rc, 0);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(atomic_load(&h.final_rc), 0);
  weft_task_release(t);
  weft_chan_release(h.release);
  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ================================================================ event */

static void *event_op_thread(void *arg) {
  return event_op(arg);
}

static void *event_set_task(void *arg) {
  return weft_event_set(arg) == 0 ? NULL : (void *)1;
}

#define EV_TASKS 6
#define EV_THREADS 2

static void event_set_wakes_all(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  weft_loop_t *l0 = weft_pool_loop(pool, 0), *l1 = weft_pool_loop(pool, 1);
  weft_event_t *ev = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_event_new(&ev), 0);
  assert_non_null(ev);
  assert_false(weft_event_is_set(ev));

  op_t o[EV_TASKS + EV_THREADS];
  weft_task_t *t[EV_TASKS];
  pthread_t pt[EV_THREADS];
  for (int i = 0; i < EV_TASKS; i++) {
    op_init(&o[i], i, &seq);
    o[i].ev = ev;
    spawn_op(i % 2 ? l1 : l0, event_op, &o[i], &t[i]);
  }
  for (int i = 0; i < EV_THREADS; i++) {
    op_init(&o[EV_TASKS + i], EV_TASKS + i, &seq);
    o[EV_TASKS + i].ev = ev;
    assert_int_equal(pthread_create(&pt[i], NULL, event_op_thread, &o[EV_TASKS + i]), 0);
  }
  loop_settle(l0, EV_TASKS / 2);
  loop_settle(l1, EV_TASKS / 2);
  for (int i = 0; i < EV_THREADS; i++)
    assert_true(wt_wait_ge(&o[EV_TASKS + i].started, 1, BOUND_MS));
  uv_sleep(20);
  assert_int_equal(atomic_load(&seq), 0); /* nobody came back */
  assert_int_equal(weft_event_free(ev), WEFT_EBUSY);
  assert_false(weft_event_is_set(ev));

  assert_int_equal(weft_event_set(ev), 0);
  assert_true(weft_event_is_set(ev));
  assert_true(wt_wait_ge(&seq, EV_TASKS + EV_THREADS, BOUND_MS));
  for (int i = 0; i < EV_TASKS; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  for (int i = 0; i < EV_THREADS; i++)
    assert_int_equal(pthread_join(pt[i], NULL), 0);
  for (int i = 0; i < EV_TASKS + EV_THREADS; i++)
    assert_int_equal(atomic_load(&o[i].rc), 0);

  /* Set: later waits return at once, on a plain thread and in tasks. */
  assert_int_equal(weft_event_set(ev), 0);
  assert_true(weft_event_is_set(ev));
  assert_int_equal(weft_event_wait(ev), 0);
  for (int i = 0; i < 2; i++) {
    op_init(&o[i], i, NULL);
    o[i].ev = ev;
    spawn_op(i ? l1 : l0, event_op, &o[i], &t[i]);
  }
  for (int i = 0; i < 2; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    assert_int_equal(atomic_load(&o[i].rc), 0);
    weft_task_release(t[i]);
  }

  /* Cleared: waits wait again, until the next set. */
  assert_int_equal(weft_event_clear(ev), 0);
  assert_false(weft_event_is_set(ev));
  assert_int_equal(weft_event_clear(ev), 0);
  op_init(&o[0], 0, NULL);
  o[0].ev = ev;
  spawn_op(l1, event_op, &o[0], &t[0]);
  op_init(&o[1], 1, NULL);
  o[1].ev = ev;
  assert_int_equal(pthread_create(&pt[0], NULL, event_op_thread, &o[1]), 0);
  loop_settle(l1, 1);
  assert_true(wt_wait_ge(&o[1].started, 1, BOUND_MS));
  uv_sleep(20);
  assert_int_equal(atomic_load(&o[0].done), 0);
  assert_int_equal(atomic_load(&o[1].done), 0);
  /* Set from a task of the other loop. */
  assert_int_equal(weft_spawn(l0, event_set_task, ev, &t[1]), 0);
  assert_int_equal(weft_await(t[0], NULL), 0);
  assert_int_equal(pthread_join(pt[0], NULL), 0);
  assert_int_equal(atomic_load(&o[0].rc), 0);
  assert_int_equal(atomic_load(&o[1].rc), 0);
  void *res = (void *)2;
  assert_int_equal(weft_await(t[1], &res), 0);
  assert_null(res);
  weft_task_release(t[0]);
  weft_task_release(t[1]);
  assert_true(weft_event_is_set(ev));
  assert_int_equal(weft_event_free(ev), 0);

  assert_int_equal(weft_event_new(NULL), WEFT_EINVAL);
  assert_int_equal(weft_event_set(NULL), WEFT_EINVAL);
  assert_int_equal(weft_event_clear(NULL), WEFT_EINVAL);
  assert_int_equal(weft_event_wait(NULL), WEFT_EINVAL);
  assert_false(weft_event_is_set(NULL));
  assert_int_equal(weft_event_free(NULL), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void *event_cut_main(void *arg) {
  weft_event_t *ev = NULL;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_event_new(&ev), 0);
  op_t o[3];
  weft_task_t *t[3];

  /* A set and a clear in the same step still wake every parked waiter. */
  for (int i = 0; i < 3; i++) {
    op_init(&o[i], i, &seq);
    o[i].ev = ev;
    spawn_op(NULL, event_op, &o[i], &t[i]);
  }
  settle(3);
  assert_int_equal(weft_event_set(ev), 0);
  assert_int_equal(weft_event_clear(ev), 0);
  assert_false(weft_event_is_set(ev));
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    assert_int_equal(atomic_load(&o[i].rc), 0);
    weft_task_release(t[i]);
  }

  /* A cancelled waiter returns ECANCELED; the others keep waiting. */
  for (int i = 0; i < 3; i++) {
    op_init(&o[i], i, &seq);
    o[i].ev = ev;
    spawn_op(NULL, event_op, &o[i], &t[i]);
  }
  settle(3);
  assert_int_equal(weft_event_free(ev), WEFT_EBUSY);
  assert_int_equal(weft_task_cancel(t[1]), 0);
  assert_int_equal(weft_await(t[1], NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&o[1].rc), WEFT_ECANCELED);
  rounds(3);
  assert_int_equal(atomic_load(&o[0].done) + atomic_load(&o[2].done), 0);
  settle(2);
  /* A set reaches a waiter before its cancel: the wait returns 0. */
  assert_int_equal(weft_event_set(ev), 0);
  assert_int_equal(weft_task_cancel(t[2]), 0);
  assert_int_equal(weft_await(t[0], NULL), 0);
  assert_int_equal(atomic_load(&o[0].rc), 0);
  assert_int_equal(weft_await(t[2], NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&o[2].rc), 0);
  for (int i = 0; i < 3; i++)
    weft_task_release(t[i]);

  /* A cancel pending when the wait begins is seen first, even when set. */
  op_init(&o[0], 0, NULL);
  o[0].ev = ev;
  o[0].cancel_self = true;
  spawn_op(NULL, event_op, &o[0], &t[0]);
  assert_int_equal(weft_await(t[0], NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&o[0].rc), WEFT_ECANCELED);
  weft_task_release(t[0]);
  assert_true(weft_event_is_set(ev));

  /* A deadline. */
  assert_int_equal(weft_event_clear(ev), 0);
  assert_int_equal(weft_deadline_push(20), 0);
  assert_int_equal(weft_event_wait(ev), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  /* Nobody waits any more. */
  assert_int_equal(weft_event_free(ev), 0);
  return NULL;
}

static void event_cancel_and_clear(void **state) {
  assert_int_equal(weft_run(event_cut_main, NULL, NULL), 0);
}

/* ============================================================ condition */

#define PC_CAP 4
#if defined(WEFT_TEST_TSAN)
#define PC_ITEMS 2000
#else
#define PC_ITEMS 20000
#endif
#define PC_PRODUCERS 2
#define PC_CONSUMERS 3

typedef struct pc {
  weft_mutex_t *mu;
  weft_cond_t *not_empty, *not_full;
  uintptr_t q[PC_CAP];
  int head, n;
  bool closed;
  atomic_int errors;
  unsigned char *seen; /* PC_PRODUCERS * PC_ITEMS */
} pc_t;

typedef struct pc_worker {
  pc_t *pc;
  int id;
  long count;
  long out_of_order;
  int rc;
} pc_worker_t;

static void pc_produce(pc_worker_t *w) {
  pc_t *pc = w->pc;
  w->rc = 0;
  for (int i = 0; i < PC_ITEMS; i++) {
    if ((w->rc = weft_mutex_lock(pc->mu)) != 0)
      return;
    while (pc->n == PC_CAP) {
      if ((w->rc = weft_cond_wait(pc->not_full, pc->mu)) != 0) {
        weft_mutex_unlock(pc->mu);
        return;
      }
    }
    pc->q[(pc->head + pc->n) % PC_CAP] = ((uintptr_t)w->id << 24) | (uintptr_t)i;
    pc->n++;
    weft_cond_signal(pc->not_empty);
    weft_mutex_unlock(pc->mu);
    w->count++;
  }
}

static void pc_consume(pc_worker_t *w) {
  pc_t *pc = w->pc;
  long last[PC_PRODUCERS];
  for (int i = 0; i < PC_PRODUCERS; i++)
    last[i] = -1;
  w->rc = 0;
  for (;;) {
    if ((w->rc = weft_mutex_lock(pc->mu)) != 0)
      return;
    while (pc->n == 0 && !pc->closed) {
      if ((w->rc = weft_cond_wait(pc->not_empty, pc->mu)) != 0) {
        weft_mutex_unlock(pc->mu);
        return;
      }
    }
    if (pc->n == 0) {
      weft_mutex_unlock(pc->mu);
      return;
    }
    uintptr_t v = pc->q[pc->head];
    pc->head = (pc->head + 1) % PC_CAP;
    pc->n--;
    weft_cond_signal(pc->not_full);
    weft_mutex_unlock(pc->mu);
    unsigned id = (unsigned)(v >> 24);
    long i = (long)(v & 0xffffff);
    if (id >= PC_PRODUCERS || i >= PC_ITEMS) {
      atomic_fetch_add(&pc->errors, 1);
      continue;
    }
    /* One queue, FIFO: each producer's items reach any one consumer in
     * order. */
    if (i <= last[id])
      w->out_of_order++;
    last[id] = i;
    pc->seen[(size_t)id * PC_ITEMS + (size_t)i]++;
    w->count++;
  }
}

static void *pc_producer_task(void *arg) {
  pc_produce(arg);
  return NULL;
}
static void *pc_consumer_task(void *arg) {
  pc_consume(arg);
  return NULL;
}

static void cond_producer_consumer(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  pc_t pc;
  memset(&pc, 0, sizeof pc);
  atomic_init(&pc.errors, 0);
  pc.seen = calloc((size_t)PC_PRODUCERS * PC_ITEMS, 1);
  assert_non_null(pc.seen);
  assert_int_equal(weft_mutex_new(&pc.mu), 0);
  assert_int_equal(weft_cond_new(&pc.not_empty), 0);
  assert_int_equal(weft_cond_new(&pc.not_full), 0);
  pc_worker_t prod[PC_PRODUCERS], cons[PC_CONSUMERS];
  weft_task_t *tp, *tc[PC_CONSUMERS - 1];
  pthread_t pp, pcn;
  for (int i = 0; i < PC_PRODUCERS; i++)
    prod[i] = (pc_worker_t){.pc = &pc, .id = i, .rc = 1};
  for (int i = 0; i < PC_CONSUMERS; i++)
    cons[i] = (pc_worker_t){.pc = &pc, .id = i, .rc = 1};
  /* Consumers: a task on each loop and a plain thread. Producers: a task
   * on loop 0 and a plain thread. */
  for (unsigned i = 0; i < PC_CONSUMERS - 1; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), pc_consumer_task, &cons[i], &tc[i]), 0);
  assert_int_equal(pthread_create(&pcn, NULL, pc_consumer_task, &cons[PC_CONSUMERS - 1]), 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), pc_producer_task, &prod[0], &tp), 0);
  assert_int_equal(pthread_create(&pp, NULL, pc_producer_task, &prod[1]), 0);

  assert_int_equal(weft_await(tp, NULL), 0);
  assert_int_equal(pthread_join(pp, NULL), 0);
  /* Producers done: close, and wake every consumer. */
  assert_int_equal(weft_mutex_lock(pc.mu), 0);
  pc.closed = true;
  assert_int_equal(weft_cond_broadcast(pc.not_empty), 0);
  assert_int_equal(weft_mutex_unlock(pc.mu), 0);
  for (int i = 0; i < PC_CONSUMERS - 1; i++) {
    assert_int_equal(weft_await(tc[i], NULL), 0);
    weft_task_release(tc[i]);
  }
  assert_int_equal(pthread_join(pcn, NULL), 0);
  weft_task_release(tp);

  long produced = 0, consumed = 0;
  for (int i = 0; i < PC_PRODUCERS; i++) {
    assert_int_equal(prod[i].rc, 0);
    produced += prod[i].count;
  }
  for (int i = 0; i < PC_CONSUMERS; i++) {
    assert_int_equal(cons[i].rc, 0);
    assert_int_equal(cons[i].out_of_order, 0);
    consumed += cons[i].count;
  }
  assert_int_equal(atomic_load(&pc.errors), 0);
  assert_int_equal(produced, (long)PC_PRODUCERS * PC_ITEMS);
  assert_int_equal(consumed, produced);
  long bad = 0;
  for (size_t k = 0; k < (size_t)PC_PRODUCERS * PC_ITEMS; k++)
    bad += pc.seen[k] != 1;
  assert_int_equal(bad, 0);
  assert_int_equal(pc.n, 0);
  free(pc.seen);
  assert_int_equal(weft_cond_free(pc.not_empty), 0);
  assert_int_equal(weft_cond_free(pc.not_full), 0);
  assert_int_equal(weft_mutex_free(pc.mu), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A task that waits once on a condition and records how it came back. */
typedef struct cwait {
  weft_mutex_t *mu;
  weft_cond_t *cv;
  int *arrived;          /* under mu */
  int *phase;            /* under mu: read when woken */
  atomic_int *seq;
  bool cancel_self;
  uint64_t deadline_ms;
  atomic_int *other_got; /* another task's "I had the lock" flag */
  atomic_int rc, place, woke_phase, other_seen, try_rc, unlock_rc, done;
} cwait_t;

static void cwait_init(cwait_t *w, weft_mutex_t *mu, weft_cond_t *cv, int *arrived, int *phase,
                       atomic_int *seq) {
  memset(w, 0, sizeof *w);
  w->mu = mu;
  w->cv = cv;
  w->arrived = arrived;
  w->phase = phase;
  w->seq = seq;
  atomic_init(&w->rc, 1);
  atomic_init(&w->place, -1);
  atomic_init(&w->woke_phase, -1);
  atomic_init(&w->other_seen, -1);
  atomic_init(&w->try_rc, 1);
  atomic_init(&w->unlock_rc, 1);
  atomic_init(&w->done, 0);
}

static void *cwait_task(void *arg) {
  cwait_t *w = arg;
  int rc = weft_mutex_lock(w->mu);
  if (rc != 0) {
    atomic_store(&w->rc, 1000 + rc);
    atomic_store(&w->done, 1);
    return NULL;
  }
  (*w->arrived)++;
  if (w->cancel_self)
    weft_task_cancel(weft_task_current());
  if (w->deadline_ms > 0)
    weft_deadline_push(w->deadline_ms);
  rc = weft_cond_wait(w->cv, w->mu);
  if (w->deadline_ms > 0)
    weft_deadline_pop();
  atomic_store(&w->rc, rc);
  /* Whatever the outcome, the waiter holds mu again now. */
  atomic_store(&w->woke_phase, *w->phase);
  if (w->seq != NULL)
    atomic_store(&w->place, atomic_fetch_add(w->seq, 1));
  if (w->other_got != NULL)
    atomic_store(&w->other_seen, atomic_load(w->other_got));
  atomic_store(&w->try_rc, weft_mutex_try_lock(w->mu));
  atomic_store(&w->unlock_rc, weft_mutex_unlock(w->mu));
  atomic_store(&w->done, 1);
  return NULL;
}

/* In a task: the number of waiters that have gone into cond_wait (they
 * hold mu until they are in it, so reading under mu is exact). */
static int arrived_now(weft_mutex_t *mu, int *arrived) {
  assert_int_equal(weft_mutex_lock(mu), 0);
  int n = *arrived;
  assert_int_equal(weft_mutex_unlock(mu), 0);
  return n;
}

static void until_arrived(weft_mutex_t *mu, int *arrived, int n) {
  double until = wt_now_ms() + BOUND_MS;
  while (arrived_now(mu, arrived) < n) {
    if (wt_now_ms() > until)
      fail_msg("%d waiters arrived, expected %d", arrived_now(mu, arrived), n);
    assert_int_equal(weft_sleep(1), 0);
  }
}

#define NCW 4

static void *cond_signal_main(void *arg) {
  weft_mutex_t *mu = NULL;
  weft_cond_t *cv = NULL;
  int arrived = 0, phase = 0;
  atomic_int seq;
  atomic_init(&seq, 0);
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_cond_new(&cv), 0);
  assert_non_null(cv);
  cwait_t w[NCW + 1];
  weft_task_t *t[NCW + 1];
  for (int i = 0; i < NCW; i++) {
    cwait_init(&w[i], mu, cv, &arrived, &phase, &seq);
    assert_int_equal(weft_spawn(NULL, cwait_task, &w[i], &t[i]), 0);
    until_arrived(mu, &arrived, i + 1);
    settle((size_t)i + 1);
  }
  assert_int_equal(weft_cond_free(cv), WEFT_EBUSY);

  /* A signal (made without holding mu) wakes exactly one: the longest
   * waiter. */
  assert_int_equal(weft_cond_signal(cv), 0);
  task_wait_ge(&seq, 1);
  rounds(5);
  assert_int_equal(weft_sleep(5), 0);
  settle(NCW - 1);
  assert_int_equal(atomic_load(&seq), 1);
  assert_int_equal(atomic_load(&w[0].done), 1);
  assert_int_equal(atomic_load(&w[0].rc), 0);
  assert_int_equal(atomic_load(&w[0].place), 0);
  assert_int_equal(atomic_load(&w[0].try_rc), WEFT_EDEADLK);
  assert_int_equal(atomic_load(&w[0].unlock_rc), 0);

  /* A signal made while holding mu: the next one, once we unlock. */
  assert_int_equal(weft_mutex_lock(mu), 0);
  assert_int_equal(weft_cond_signal(cv), 0);
  rounds(3);
  assert_int_equal(atomic_load(&seq), 1); /* it needs mu back first */
  assert_int_equal(weft_mutex_unlock(mu), 0);
  task_wait_ge(&seq, 2);
  rounds(5);
  settle(NCW - 2);
  assert_int_equal(atomic_load(&seq), 2);
  assert_int_equal(atomic_load(&w[1].place), 1);
  assert_int_equal(atomic_load(&w[1].rc), 0);

  /* Broadcast wakes all the rest. */
  assert_int_equal(weft_mutex_lock(mu), 0);
  phase = 1;
  assert_int_equal(weft_cond_broadcast(cv), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  task_wait_ge(&seq, NCW);
  for (int i = 0; i < NCW; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    assert_int_equal(atomic_load(&w[i].rc), 0);
    assert_int_equal(atomic_load(&w[i].woke_phase), i < 2 ? 0 : 1);
    assert_int_equal(atomic_load(&w[i].unlock_rc), 0);
    weft_task_release(t[i]);
  }

  /* A signal or a broadcast with nobody waiting is not remembered. */
  assert_int_equal(weft_cond_signal(cv), 0);
  assert_int_equal(weft_cond_broadcast(cv), 0);
  cwait_init(&w[NCW], mu, cv, &arrived, &phase, &seq);
  assert_int_equal(weft_spawn(NULL, cwait_task, &w[NCW], &t[NCW]), 0);
  until_arrived(mu, &arrived, NCW + 1);
  settle(1);
  rounds(5);
  assert_int_equal(atomic_load(&w[NCW].done), 0);
  assert_int_equal(weft_cond_signal(cv), 0);
  assert_int_equal(weft_await(t[NCW], NULL), 0);
  assert_int_equal(atomic_load(&w[NCW].rc), 0);
  weft_task_release(t[NCW]);

  assert_int_equal(weft_cond_free(cv), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

static void cond_signal_one_broadcast_all(void **state) {
  assert_int_equal(weft_run(cond_signal_main, NULL, NULL), 0);
}

/* cond_wait by a task that does not hold the mutex (another does). */
typedef struct cperm {
  weft_mutex_t *mu;
  weft_cond_t *cv;
  int rc, try_rc;
} cperm_t;

static void *cperm_task(void *arg) {
  cperm_t *p = arg;
  p->rc = weft_cond_wait(p->cv, p->mu);
  p->try_rc = weft_mutex_try_lock(p->mu);
  return NULL;
}

static void *cond_eperm_main(void *arg) {
  weft_mutex_t *mu = NULL;
  weft_cond_t *cv = NULL;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_cond_new(&cv), 0);
  /* Not held by anyone. */
  assert_int_equal(weft_cond_wait(cv, mu), WEFT_EPERM);
  assert_int_equal(weft_mutex_unlock(mu), WEFT_EPERM); /* and not taken */
  /* Held by another task. */
  assert_int_equal(weft_mutex_lock(mu), 0);
  cperm_t p = {.mu = mu, .cv = cv, .rc = 1, .try_rc = 1};
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, cperm_task, &p, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(p.rc, WEFT_EPERM);
  assert_int_equal(p.try_rc, WEFT_EAGAIN);
  assert_int_equal(weft_mutex_try_lock(mu), WEFT_EDEADLK); /* still ours */
  assert_int_equal(weft_mutex_unlock(mu), 0);
  /* Bad arguments. */
  assert_int_equal(weft_cond_new(NULL), WEFT_EINVAL);
  assert_int_equal(weft_cond_wait(NULL, mu), WEFT_EINVAL);
  assert_int_equal(weft_cond_wait(cv, NULL), WEFT_EINVAL);
  assert_int_equal(weft_cond_signal(NULL), WEFT_EINVAL);
  assert_int_equal(weft_cond_broadcast(NULL), WEFT_EINVAL);
  assert_int_equal(weft_cond_free(NULL), 0);
  assert_int_equal(weft_cond_free(cv), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

static void cond_wait_needs_mutex(void **state) {
  /* A plain thread that does not hold it, too. */
  weft_mutex_t *mu = NULL;
  weft_cond_t *cv = NULL;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_cond_new(&cv), 0);
  assert_int_equal(weft_cond_wait(cv, mu), WEFT_EPERM);
  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_cond_free(cv), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  assert_int_equal(weft_run(cond_eperm_main, NULL, NULL), 0);
}

/* A task that takes the mutex once and says so. */
typedef struct grabber {
  weft_mutex_t *mu;
  atomic_int got;
  int rc;
} grabber_t;

static void *grabber_task(void *arg) {
  grabber_t *g = arg;
  g->rc = weft_mutex_lock(g->mu);
  if (g->rc == 0) {
    atomic_store(&g->got, 1);
    weft_yield();
    g->rc = weft_mutex_unlock(g->mu);
  }
  return NULL;
}

/* Parks on a mutex seen by the loop's event hook: a cond waiter that was
 * cut parks there while it takes its mutex back. The hook and the tasks
 * run on the same thread. */
static int g_mutex_parks;

static void count_mutex_parks(const weft_loop_event_t *ev, void *arg) {
  if (ev->kind == WEFT_EV_PARK && ev->wait == WEFT_WAIT_MUTEX)
    g_mutex_parks++;
}

/* weft_run with the hook above on the loop. */
static int run_hooked(weft_fn fn, void *arg) {
  weft_loop_t *loop = NULL;
  weft_loop_opts_t opts;
  memset(&opts, 0, sizeof opts);
  opts.on_event = count_mutex_parks;
  g_mutex_parks = 0;
  assert_int_equal(weft_loop_new(&loop, &opts), 0);
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(loop, fn, arg, &t), 0);
  int st = weft_loop_run_until_complete(loop, t, NULL);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
  return st;
}

static void until_mutex_park(int base) {
  double until = wt_now_ms() + BOUND_MS;
  while (g_mutex_parks <= base) {
    if (wt_now_ms() > until)
      fail_msg("the cut waiter did not queue for its mutex within %d ms", BOUND_MS);
    assert_int_equal(weft_sleep(1), 0);
  }
}

static void *cond_cut_main(void *arg) {
  weft_mutex_t *mu = NULL;
  weft_cond_t *cv = NULL;
  int arrived = 0, phase = 0;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_cond_new(&cv), 0);
  grabber_t g;
  weft_task_t *tw, *tg;
  cwait_t w;

  for (int variant = 0; variant < 2; variant++) {
    /* variant 0: cancelled; 1: its deadline passes. Either way while we
     * hold mu, and a grabber queues for mu behind it. */
    arrived = 0;
    cwait_init(&w, mu, cv, &arrived, &phase, NULL);
    g = (grabber_t){.mu = mu, .rc = 1};
    atomic_init(&g.got, 0);
    w.other_got = &g.got;
    if (variant == 1)
      w.deadline_ms = 30;
    assert_int_equal(weft_spawn(NULL, cwait_task, &w, &tw), 0);
    until_arrived(mu, &arrived, 1);
    settle(1);
    assert_int_equal(weft_mutex_lock(mu), 0);
    int base = g_mutex_parks;
    if (variant == 0)
      assert_int_equal(weft_task_cancel(tw), 0);
    /* Cut (cancelled, or its deadline passed), it wakes and queues for
     * mu, which we hold: it cannot return before we unlock. */
    until_mutex_park(base);
    rounds(3);
    assert_int_equal(atomic_load(&w.done), 0);
    assert_int_equal(weft_spawn(NULL, grabber_task, &g, &tg), 0);
    rounds(5);
    assert_int_equal(atomic_load(&g.got), 0);
    assert_int_equal(atomic_load(&w.done), 0);
    assert_int_equal(weft_mutex_unlock(mu), 0);
    assert_int_equal(weft_await(tw, NULL), variant == 0 ? WEFT_ECANCELED : 0);
    assert_int_equal(atomic_load(&w.rc), variant == 0 ? WEFT_ECANCELED : WEFT_ETIMEDOUT);
    /* It held mu when it came back: its try_lock saw itself as holder,
     * its unlock worked, and the grabber had not had mu meanwhile. */
    assert_int_equal(atomic_load(&w.try_rc), WEFT_EDEADLK);
    assert_int_equal(atomic_load(&w.unlock_rc), 0);
    assert_int_equal(atomic_load(&w.other_seen), 0);
    assert_int_equal(weft_await(tg, NULL), 0);
    assert_int_equal(g.rc, 0);
    assert_int_equal(atomic_load(&g.got), 1);
    weft_task_release(tw);
    weft_task_release(tg);
  }

  /* A cancel pending when cond_wait begins: ECANCELED at once, and the
   * caller still holds mu. */
  arrived = 0;
  cwait_init(&w, mu, cv, &arrived, &phase, NULL);
  w.cancel_self = true;
  assert_int_equal(weft_spawn(NULL, cwait_task, &w, &tw), 0);
  assert_int_equal(weft_await(tw, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&w.rc), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&w.try_rc), WEFT_EDEADLK);
  assert_int_equal(atomic_load(&w.unlock_rc), 0);
  weft_task_release(tw);

  assert_int_equal(weft_mutex_try_lock(mu), 0);
  assert_int_equal(weft_mutex_unlock(mu), 0);
  assert_int_equal(weft_cond_free(cv), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

static void cond_cut_retakes_mutex(void **state) {
  assert_int_equal(run_hooked(cond_cut_main, NULL), 0);
}

/* Two waiters, a signal and a cancel of the first: exactly one of them
 * consumes the signal. Either the first was handed it before the cut (its
 * wait returns 0, the second still waits), or it returns ECANCELED and the
 * second is woken by that signal. */
static void check_one_consumed(cwait_t *w1, weft_task_t *t1, cwait_t *w2, weft_task_t *t2,
                               weft_mutex_t *mu, weft_cond_t *cv, int *phase, bool in_task) {
  int st1 = weft_await(t1, NULL);
  int rc1 = atomic_load(&w1->rc);
  if (rc1 != 0 && rc1 != WEFT_ECANCELED)
    fail_msg("first waiter's cond_wait returned %d (%s)", rc1, weft_strerror(rc1));
  /* Its status is ECANCELED, or 0 if it had taken the signal and ended
   * before a cancel from another thread reached its loop. */
  if (st1 != WEFT_ECANCELED && !(st1 == 0 && rc1 == 0 && !in_task))
    fail_msg("first waiter ended with %d (%s), its wait returned %d", st1, weft_strerror(st1), rc1);
  assert_int_equal(atomic_load(&w1->unlock_rc), 0);
  if (rc1 == WEFT_ECANCELED) {
    /* The signal must reach the second waiter, with no more help. */
    double until = wt_now_ms() + BOUND_MS;
    while (!atomic_load(&w2->done)) {
      if (wt_now_ms() > until)
        fail_msg("the first waiter was cancelled and the signal was lost: the second "
                 "still waits after %d ms",
                 BOUND_MS);
      if (in_task)
        assert_int_equal(weft_sleep(1), 0);
      else
        uv_sleep(1);
    }
    assert_int_equal(weft_await(t2, NULL), 0);
    assert_int_equal(atomic_load(&w2->rc), 0);
    assert_int_equal(atomic_load(&w2->woke_phase), 0);
  } else {
    /* The first consumed it: the second still waits, until a broadcast. */
    if (in_task)
      assert_int_equal(weft_sleep(2), 0);
    else
      uv_sleep(2);
    assert_int_equal(weft_mutex_lock(mu), 0);
    assert_int_equal(atomic_load(&w2->done), 0);
    *phase = 1;
    assert_int_equal(weft_cond_broadcast(cv), 0);
    assert_int_equal(weft_mutex_unlock(mu), 0);
    assert_int_equal(weft_await(t2, NULL), 0);
    assert_int_equal(atomic_load(&w2->rc), 0);
    assert_int_equal(atomic_load(&w2->woke_phase), 1);
  }
  assert_int_equal(atomic_load(&w2->unlock_rc), 0);
}

static void *cond_race_one_loop_main(void *arg) {
  weft_mutex_t *mu = NULL;
  weft_cond_t *cv = NULL;
  int arrived, phase;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_cond_new(&cv), 0);
  for (int order = 0; order < 2; order++) {
    cwait_t w1, w2;
    weft_task_t *t1, *t2;
    arrived = 0;
    phase = 0;
    cwait_init(&w1, mu, cv, &arrived, &phase, NULL);
    cwait_init(&w2, mu, cv, &arrived, &phase, NULL);
    assert_int_equal(weft_spawn(NULL, cwait_task, &w1, &t1), 0);
    until_arrived(mu, &arrived, 1);
    assert_int_equal(weft_spawn(NULL, cwait_task, &w2, &t2), 0);
    until_arrived(mu, &arrived, 2);
    settle(2);
    /* In one step: signal then cancel, or cancel then signal. */
    if (order == 0) {
      assert_int_equal(weft_cond_signal(cv), 0);
      assert_int_equal(weft_task_cancel(t1), 0);
    } else {
      assert_int_equal(weft_task_cancel(t1), 0);
      assert_int_equal(weft_cond_signal(cv), 0);
    }
    check_one_consumed(&w1, t1, &w2, t2, mu, cv, &phase, true);
    if (order == 0)
      /* Handed the signal before the cut: it takes it. */
      assert_int_equal(atomic_load(&w1.rc), 0);
    else
      /* Cut first ("woken at once with ECANCELED"): the signal is not
       * spent on it. */
      assert_int_equal(atomic_load(&w1.rc), WEFT_ECANCELED);
    weft_task_release(t1);
    weft_task_release(t2);
  }
  assert_int_equal(weft_cond_free(cv), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  return NULL;
}

#if defined(WEFT_TEST_TSAN)
#define NRACE 40
#else
#define NRACE 200
#endif

typedef struct racer {
  weft_task_t *t;
  atomic_int go;
  atomic_int ready;
} racer_t;

static void *cancel_racer(void *arg) {
  racer_t *r = arg;
  atomic_store(&r->ready, 1);
  while (!atomic_load(&r->go))
    sched_yield();
  weft_task_cancel(r->t);
  return NULL;
}

/* In a plain thread: until n waiters are in cond_wait. */
static void thread_until_arrived(weft_mutex_t *mu, int *arrived, int n) {
  double until = wt_now_ms() + BOUND_MS;
  for (;;) {
    assert_int_equal(weft_mutex_lock(mu), 0);
    int a = *arrived;
    assert_int_equal(weft_mutex_unlock(mu), 0);
    if (a >= n)
      return;
    if (wt_now_ms() > until)
      fail_msg("%d waiters arrived, expected %d", a, n);
    uv_sleep(1);
  }
}

static void cond_signal_racing_cancel(void **state) {
  assert_int_equal(weft_run(cond_race_one_loop_main, NULL, NULL), 0);

  /* Across threads: the waiters on two loops, the cancel from one plain
   * thread and the signal from another at the same moment. */
  weft_pool_t *pool = wt_pool_of(2);
  weft_mutex_t *mu = NULL;
  weft_cond_t *cv = NULL;
  int arrived, phase;
  assert_int_equal(weft_mutex_new(&mu), 0);
  assert_int_equal(weft_cond_new(&cv), 0);
  int took = 0, cut = 0;
  for (int i = 0; i < NRACE; i++) {
    cwait_t w1, w2;
    weft_task_t *t1, *t2;
    arrived = 0;
    phase = 0;
    cwait_init(&w1, mu, cv, &arrived, &phase, NULL);
    cwait_init(&w2, mu, cv, &arrived, &phase, NULL);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), cwait_task, &w1, &t1), 0);
    thread_until_arrived(mu, &arrived, 1);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)(i + 1) % 2), cwait_task, &w2, &t2),
                     0);
    thread_until_arrived(mu, &arrived, 2);
    racer_t r = {.t = t1};
    atomic_init(&r.go, 0);
    atomic_init(&r.ready, 0);
    pthread_t pt;
    assert_int_equal(pthread_create(&pt, NULL, cancel_racer, &r), 0);
    while (!atomic_load(&r.ready))
      sched_yield();
    atomic_store(&r.go, 1);
    if (i % 3 == 1)
      sched_yield();
    assert_int_equal(weft_cond_signal(cv), 0);
    assert_int_equal(pthread_join(pt, NULL), 0);
    check_one_consumed(&w1, t1, &w2, t2, mu, cv, &phase, false);
    if (atomic_load(&w1.rc) == 0)
      took++;
    else
      cut++;
    weft_task_release(t1);
    weft_task_release(t2);
  }
  printf("%d rounds: the cancelled waiter took the signal %d times, passed it on %d times\n",
         NRACE, took, cut);
  assert_int_equal(weft_cond_free(cv), 0);
  assert_int_equal(weft_mutex_free(mu), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ========================================================= group limit */

typedef struct lim {
  weft_chan_t *gate; /* children wait until it is closed */
  atomic_int running, max, started, ended, spawned;
  int spawn_rc[8];
  int wait_rc;
  int spawned_at_gate;
  int set_rc;
  weft_pool_t *pool;
} lim_t;

static void lim_init(lim_t *l, weft_pool_t *pool) {
  memset(l, 0, sizeof *l);
  atomic_init(&l->running, 0);
  atomic_init(&l->max, 0);
  atomic_init(&l->started, 0);
  atomic_init(&l->ended, 0);
  atomic_init(&l->spawned, 0);
  l->pool = pool;
  l->wait_rc = 1;
  l->spawned_at_gate = -1;
  assert_int_equal(weft_chan_new(&l->gate, 1), 0);
}

static void *lim_child(void *arg) {
  lim_t *l = arg;
  int now = atomic_fetch_add(&l->running, 1) + 1;
  atomic_max(&l->max, now);
  atomic_fetch_add(&l->started, 1);
  void *m;
  weft_chan_recv(l->gate, &m); /* ECLOSED once the gate opens */
  weft_yield();
  atomic_fetch_sub(&l->running, 1);
  atomic_fetch_add(&l->ended, 1);
  return NULL;
}

#define NLIM 6

static void lim_spawn_all(lim_t *l) {
  weft_group_t *g = NULL;
  if (weft_group_new(&g) != 0) {
    l->set_rc = -9999;
    return;
  }
  l->set_rc = weft_group_set_limit(g, 2);
  for (int i = 0; i < NLIM; i++) {
    l->spawn_rc[i] = weft_group_spawn(g, weft_pool_loop(l->pool, (unsigned)i % 2), lim_child, l);
    atomic_fetch_add(&l->spawned, 1);
  }
  l->wait_rc = weft_group_wait(g);
  weft_group_release(g);
}

static void *lim_spawner_thread(void *arg) {
  lim_spawn_all(arg);
  return NULL;
}

static void *lim_spawner_task(void *arg) {
  lim_spawn_all(arg);
  return NULL;
}

/* Opens the gate once two children run, after checking the spawner waits
 * for room meanwhile. In a task of the spawner's loop: if the spawner's
 * wait for room held the thread, this would never run. */
static void *lim_gatekeeper(void *arg) {
  lim_t *l = arg;
  double until = wt_now_ms() + BOUND_MS;
  while ((atomic_load(&l->started) < 2 || atomic_load(&l->spawned) < 2) && wt_now_ms() < until)
    weft_sleep(1);
  weft_sleep(20);
  l->spawned_at_gate = atomic_load(&l->spawned);
  weft_chan_close(l->gate);
  return NULL;
}

static void lim_check(lim_t *l) {
  assert_int_equal(l->set_rc, 0);
  for (int i = 0; i < NLIM; i++)
    assert_int_equal(l->spawn_rc[i], 0);
  assert_int_equal(l->wait_rc, 0);
  assert_int_equal(l->spawned_at_gate, 2); /* the third spawn waited */
  assert_int_equal(atomic_load(&l->started), NLIM);
  assert_int_equal(atomic_load(&l->ended), NLIM);
  assert_int_equal(atomic_load(&l->max), 2);
  assert_int_equal(atomic_load(&l->running), 0);
  weft_chan_release(l->gate);
}

static void *lim_task_main(void *arg) {
  lim_t *l = arg;
  weft_task_t *gk, *sp;
  assert_int_equal(weft_spawn(NULL, lim_gatekeeper, l, &gk), 0);
  assert_int_equal(weft_spawn(NULL, lim_spawner_task, l, &sp), 0);
  assert_int_equal(weft_await(sp, NULL), 0);
  assert_int_equal(weft_await(gk, NULL), 0);
  weft_task_release(gk);
  weft_task_release(sp);
  return NULL;
}

static void group_limit_bounds_concurrency(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  lim_t l;

  /* The spawner a plain thread: it blocks while two children run. */
  lim_init(&l, pool);
  pthread_t pt;
  assert_int_equal(pthread_create(&pt, NULL, lim_spawner_thread, &l), 0);
  assert_true(wt_wait_ge(&l.started, 2, BOUND_MS));
  assert_true(wt_wait_ge(&l.spawned, 2, BOUND_MS));
  uv_sleep(20);
  l.spawned_at_gate = atomic_load(&l.spawned);
  assert_int_equal(atomic_load(&l.started), 2);
  assert_int_equal(weft_chan_close(l.gate), 0);
  assert_int_equal(pthread_join(pt, NULL), 0);
  lim_check(&l);

  /* The spawner a task: its wait for room is an await point. */
  lim_init(&l, pool);
  assert_int_equal(weft_run(lim_task_main, &l, NULL), 0);
  lim_check(&l);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void group_limit_errors(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_set_limit(NULL, 2), WEFT_EINVAL);
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_set_limit(g, WEFT_SEM_MAX + 1), WEFT_EINVAL);
  assert_int_equal(weft_group_set_limit(g, 3), 0);
  assert_int_equal(weft_group_set_limit(g, 1), 0); /* before a spawn: may change */
  lim_t l;
  lim_init(&l, pool);
  assert_int_equal(weft_group_spawn(g, weft_pool_loop(pool, 0), lim_child, &l), 0);
  assert_int_equal(weft_group_set_limit(g, 2), WEFT_EBUSY);
  assert_int_equal(weft_group_set_limit(g, 0), WEFT_EBUSY);
  assert_true(wt_wait_ge(&l.started, 1, BOUND_MS));
  assert_int_equal(weft_chan_close(l.gate), 0);
  assert_int_equal(weft_group_wait(g), 0);
  weft_group_release(g);
  assert_int_equal(atomic_load(&l.ended), 1);
  weft_chan_release(l.gate);

  /* A limit of 0 is no limit. */
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_set_limit(g, 0), 0);
  lim_init(&l, pool);
  for (int i = 0; i < 5; i++)
    assert_int_equal(weft_group_spawn(g, weft_pool_loop(pool, 0), lim_child, &l), 0);
  assert_true(wt_wait_ge(&l.started, 5, BOUND_MS));
  assert_int_equal(weft_chan_close(l.gate), 0);
  assert_int_equal(weft_group_wait(g), 0);
  weft_group_release(g);
  assert_int_equal(atomic_load(&l.max), 5);
  weft_chan_release(l.gate);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A spawner that waits for room and is cut meanwhile spawns nothing. */
typedef struct lspawn {
  weft_group_t *g;
  uint64_t deadline_ms;
  int rc;
  int ran;
} lspawn_t;

static void *late_child(void *arg) {
  *(int *)arg = 1;
  return NULL;
}

static void *lspawn_task(void *arg) {
  lspawn_t *s = arg;
  if (s->deadline_ms > 0)
    weft_deadline_push(s->deadline_ms);
  s->rc = weft_group_spawn(s->g, NULL, late_child, &s->ran);
  if (s->deadline_ms > 0)
    weft_deadline_pop();
  return NULL;
}

static void *lim_cancel_main(void *arg) {
  lim_t l;
  lim_init(&l, NULL);
  weft_group_t *g = NULL;
  assert_int_equal(weft_group_new(&g), 0);
  assert_int_equal(weft_group_set_limit(g, 1), 0);
  assert_int_equal(weft_group_spawn(g, NULL, lim_child, &l), 0);
  rounds(3);
  assert_int_equal(atomic_load(&l.started), 1);
  settle(1); /* the child, on the gate */

  lspawn_t s = {.g = g, .rc = 1, .ran = 0};
  weft_task_t *ts;
  assert_int_equal(weft_spawn(NULL, lspawn_task, &s, &ts), 0);
  settle(2); /* and the spawner, waiting for room */
  assert_int_equal(s.rc, 1);
  assert_int_equal(weft_task_cancel(ts), 0);
  assert_int_equal(weft_await(ts, NULL), WEFT_ECANCELED);
  assert_int_equal(s.rc, WEFT_ECANCELED);
  weft_task_release(ts);

  lspawn_t s2 = {.g = g, .deadline_ms = 30, .rc = 1, .ran = 0};
  assert_int_equal(weft_spawn(NULL, lspawn_task, &s2, &ts), 0);
  assert_int_equal(weft_await(ts, NULL), 0);
  assert_int_equal(s2.rc, WEFT_ETIMEDOUT);
  weft_task_release(ts);

  rounds(5);
  assert_int_equal(s.ran, 0);
  assert_int_equal(s2.ran, 0);
  assert_int_equal(atomic_load(&l.started), 1);

  /* The room they waited for is still there for the next spawn. */
  assert_int_equal(weft_chan_close(l.gate), 0);
  int ran3 = 0;
  assert_int_equal(weft_group_spawn(g, NULL, late_child, &ran3), 0);
  assert_int_equal(weft_group_wait(g), 0);
  weft_group_release(g);
  assert_int_equal(ran3, 1);
  assert_int_equal(s.ran, 0);
  assert_int_equal(s2.ran, 0);
  assert_int_equal(atomic_load(&l.ended), 1);
  weft_chan_release(l.gate);
  return NULL;
}

static void group_limit_spawner_cut(void **state) {
  assert_int_equal(weft_run(lim_cancel_main, NULL, NULL), 0);
}

/* =============================================================== stress */

/* Each stress case is sized to end in well under 10 s under TSan (where
 * WEFT_TEST_TSAN divides the work by 10) and under 30 s in a release build
 * on a loaded machine. */
#if defined(WEFT_TEST_TSAN)
#define STRESS_DIV 10
#else
#define STRESS_DIV 1
#endif

#define SEM_PERMITS 3
#define SEM_PAIRS (1000000 / STRESS_DIV)
#define STRESS_TASKS_PER_LOOP 2
#define STRESS_THREADS 2
#define STRESS_WORKERS (2 * STRESS_TASKS_PER_LOOP + STRESS_THREADS)

typedef struct sem_stress {
  weft_sem_t *sem;
  atomic_int inside, max, violations, errors;
  atomic_long pairs;
} sem_stress_t;

typedef struct sem_worker {
  sem_stress_t *s;
  long n;
  bool task;
} sem_worker_t;

static void *sem_worker(void *arg) {
  sem_worker_t *w = arg;
  sem_stress_t *s = w->s;
  for (long i = 0; i < w->n; i++) {
    int rc = weft_sem_acquire(s->sem);
    if (rc != 0) {
      atomic_fetch_add(&s->errors, 1);
      return NULL;
    }
    int now = atomic_fetch_add(&s->inside, 1) + 1;
    if (now > SEM_PERMITS)
      atomic_fetch_add(&s->violations, 1);
    atomic_max(&s->max, now);
    if (i % 16 == 0) {
      if (w->task) {
        if (weft_yield() != 0)
          atomic_fetch_add(&s->errors, 1);
      } else {
        spin_a_little();
      }
    }
    atomic_fetch_sub(&s->inside, 1);
    if (weft_sem_post(s->sem) != 0)
      atomic_fetch_add(&s->errors, 1);
    atomic_fetch_add_explicit(&s->pairs, 1, memory_order_relaxed);
  }
  return NULL;
}

static void stress_sem_pairs(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  sem_stress_t s;
  memset(&s, 0, sizeof s);
  atomic_init(&s.inside, 0);
  atomic_init(&s.max, 0);
  atomic_init(&s.violations, 0);
  atomic_init(&s.errors, 0);
  atomic_init(&s.pairs, 0);
  assert_int_equal(weft_sem_new(&s.sem, SEM_PERMITS), 0);
  sem_worker_t w[STRESS_WORKERS];
  weft_task_t *t[2 * STRESS_TASKS_PER_LOOP];
  pthread_t pt[STRESS_THREADS];
  long per = SEM_PAIRS / STRESS_WORKERS;
  double t0 = wt_now_ms();
  for (int i = 0; i < STRESS_WORKERS; i++) {
    w[i] = (sem_worker_t){.s = &s, .n = per, .task = i < 2 * STRESS_TASKS_PER_LOOP};
    if (i == 0)
      w[i].n += SEM_PAIRS - per * STRESS_WORKERS;
    if (w[i].task)
      assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), sem_worker, &w[i], &t[i]),
                       0);
    else
      assert_int_equal(
          pthread_create(&pt[i - 2 * STRESS_TASKS_PER_LOOP], NULL, sem_worker, &w[i]), 0);
  }
  for (int i = 0; i < 2 * STRESS_TASKS_PER_LOOP; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  for (int i = 0; i < STRESS_THREADS; i++)
    assert_int_equal(pthread_join(pt[i], NULL), 0);
  printf("%ld acquire/post pairs in %.0f ms, at most %d inside\n", (long)atomic_load(&s.pairs),
         wt_now_ms() - t0, atomic_load(&s.max));
  assert_int_equal(atomic_load(&s.errors), 0);
  assert_int_equal(atomic_load(&s.violations), 0);
  assert_true(atomic_load(&s.max) <= SEM_PERMITS);
  assert_int_equal(atomic_load(&s.pairs), SEM_PAIRS);
  assert_int_equal(weft_sem_value(s.sem), SEM_PERMITS);
  assert_int_equal(weft_sem_free(s.sem), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

#define MUTEX_OPS (200000 / STRESS_DIV)

typedef struct mu_stress {
  weft_mutex_t *mu;
  long counter; /* plain: only the mutex orders it (TSan checks) */
  atomic_int inside, violations, errors;
} mu_stress_t;

typedef struct mu_worker {
  mu_stress_t *m;
  long n;
  bool task;
} mu_worker_t;

static void *mu_worker(void *arg) {
  mu_worker_t *w = arg;
  mu_stress_t *m = w->m;
  for (long i = 0; i < w->n; i++) {
    if (weft_mutex_lock(m->mu) != 0) {
      atomic_fetch_add(&m->errors, 1);
      return NULL;
    }
    if (atomic_exchange(&m->inside, 1) != 0)
      atomic_fetch_add(&m->violations, 1);
    long c = m->counter;
    if (w->task) {
      if (weft_yield() != 0)
        atomic_fetch_add(&m->errors, 1);
    } else if (i % 8 == 0) {
      spin_a_little();
    }
    m->counter = c + 1;
    atomic_store(&m->inside, 0);
    if (weft_mutex_unlock(m->mu) != 0)
      atomic_fetch_add(&m->errors, 1);
  }
  return NULL;
}

static void stress_mutex_counter(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  mu_stress_t m;
  memset(&m, 0, sizeof m);
  atomic_init(&m.inside, 0);
  atomic_init(&m.violations, 0);
  atomic_init(&m.errors, 0);
  assert_int_equal(weft_mutex_new(&m.mu), 0);
  mu_worker_t w[STRESS_WORKERS];
  weft_task_t *t[2 * STRESS_TASKS_PER_LOOP];
  pthread_t pt[STRESS_THREADS];
  long per = MUTEX_OPS / STRESS_WORKERS;
  double t0 = wt_now_ms();
  for (int i = 0; i < STRESS_WORKERS; i++) {
    w[i] = (mu_worker_t){.m = &m, .n = per, .task = i < 2 * STRESS_TASKS_PER_LOOP};
    if (w[i].task)
      assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), mu_worker, &w[i], &t[i]),
                       0);
    else
      assert_int_equal(pthread_create(&pt[i - 2 * STRESS_TASKS_PER_LOOP], NULL, mu_worker, &w[i]),
                       0);
  }
  for (int i = 0; i < 2 * STRESS_TASKS_PER_LOOP; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  for (int i = 0; i < STRESS_THREADS; i++)
    assert_int_equal(pthread_join(pt[i], NULL), 0);
  printf("%ld locked increments in %.0f ms\n", per * STRESS_WORKERS, wt_now_ms() - t0);
  assert_int_equal(atomic_load(&m.errors), 0);
  assert_int_equal(atomic_load(&m.violations), 0);
  assert_int_equal(weft_mutex_lock(m.mu), 0);
  assert_int_equal(m.counter, per * STRESS_WORKERS);
  assert_int_equal(weft_mutex_unlock(m.mu), 0);
  assert_int_equal(weft_mutex_free(m.mu), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* Tasks of two loops and two plain threads take a permit of a semaphore of
 * 2, then the mutex, and give both back; the test's thread cancels tasks at
 * random, wherever they are. At the end every permit is back, the mutex is
 * free, and the counter the mutex guards counts exactly the locks taken. */
#define CX_PERMITS 2
#define CX_TASKS 16
#define CX_ITERS 20
#define CX_ROUNDS (60 / (STRESS_DIV > 1 ? 3 : 1))

typedef struct cx {
  weft_sem_t *sem;
  weft_mutex_t *mu;
  long counter;            /* under mu */
  atomic_int sem_inside, mu_inside, violations, errors;
  atomic_long locks;       /* locks taken */
  atomic_long sem_cut, mu_cut;
  atomic_int stop;
} cx_t;

typedef struct cx_worker {
  cx_t *c;
  bool task;
  atomic_int ended;
} cx_worker_t;

static void *cx_body(void *arg) {
  cx_worker_t *w = arg;
  cx_t *c = w->c;
  for (int i = 0; w->task ? i < CX_ITERS : !atomic_load(&c->stop); i++) {
    int rc = weft_sem_acquire(c->sem);
    if (rc != 0) {
      if (rc != WEFT_ECANCELED || !w->task)
        atomic_fetch_add(&c->errors, 1);
      atomic_fetch_add(&c->sem_cut, 1);
      break;
    }
    if (atomic_fetch_add(&c->sem_inside, 1) + 1 > CX_PERMITS)
      atomic_fetch_add(&c->violations, 1);
    rc = weft_mutex_lock(c->mu);
    if (rc == 0) {
      if (atomic_exchange(&c->mu_inside, 1) != 0)
        atomic_fetch_add(&c->violations, 1);
      c->counter++;
      atomic_fetch_add(&c->locks, 1);
      if (w->task)
        weft_yield(); /* ECANCELED once cancelled: the lock is still ours */
      atomic_store(&c->mu_inside, 0);
      if (weft_mutex_unlock(c->mu) != 0)
        atomic_fetch_add(&c->errors, 1);
    } else {
      if (rc != WEFT_ECANCELED || !w->task)
        atomic_fetch_add(&c->errors, 1);
      atomic_fetch_add(&c->mu_cut, 1);
    }
    atomic_fetch_sub(&c->sem_inside, 1);
    if (weft_sem_post(c->sem) != 0)
      atomic_fetch_add(&c->errors, 1);
    if (rc != 0)
      break;
    if (w->task && weft_yield() != 0)
      break;
  }
  atomic_store(&w->ended, 1);
  return NULL;
}

static void stress_random_cancels(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  cx_t c;
  memset(&c, 0, sizeof c);
  atomic_init(&c.sem_inside, 0);
  atomic_init(&c.mu_inside, 0);
  atomic_init(&c.violations, 0);
  atomic_init(&c.errors, 0);
  atomic_init(&c.locks, 0);
  atomic_init(&c.sem_cut, 0);
  atomic_init(&c.mu_cut, 0);
  atomic_init(&c.stop, 0);
  assert_int_equal(weft_sem_new(&c.sem, CX_PERMITS), 0);
  assert_int_equal(weft_mutex_new(&c.mu), 0);
  cx_worker_t th[2];
  pthread_t pt[2];
  for (int i = 0; i < 2; i++) {
    th[i] = (cx_worker_t){.c = &c, .task = false};
    atomic_init(&th[i].ended, 0);
    assert_int_equal(pthread_create(&pt[i], NULL, cx_body, &th[i]), 0);
  }
  uint32_t seed = 0x9e3779b9u;
  int cancelled = 0;
  double t0 = wt_now_ms();
  for (int r = 0; r < CX_ROUNDS; r++) {
    cx_worker_t w[CX_TASKS];
    weft_task_t *t[CX_TASKS];
    for (int i = 0; i < CX_TASKS; i++) {
      w[i] = (cx_worker_t){.c = &c, .task = true};
      atomic_init(&w[i].ended, 0);
      assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), cx_body, &w[i], &t[i]),
                       0);
    }
    for (int i = 0; i < CX_TASKS; i++) {
      uint32_t x = rnd(&seed);
      if (x % 3 == 0)
        continue;
      if (x & 0x10)
        uv_sleep(x % 2);
      else
        sched_yield();
      int rc = weft_task_cancel(t[i]);
      if (rc != 0 && rc != WEFT_EALREADY)
        fail_msg("cancel returned %d (%s)", rc, weft_strerror(rc));
      cancelled += rc == 0;
    }
    for (int i = 0; i < CX_TASKS; i++) {
      int st = weft_await(t[i], NULL);
      if (st != 0 && st != WEFT_ECANCELED)
        fail_msg("task ended with %d (%s)", st, weft_strerror(st));
      /* A task cancelled before it started never ran its body. */
      if (st == 0)
        assert_int_equal(atomic_load(&w[i].ended), 1);
      weft_task_release(t[i]);
    }
  }
  atomic_store(&c.stop, 1);
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_join(pt[i], NULL), 0);
  printf("%d rounds in %.0f ms: %d cancels, %ld locks, %ld cut at the semaphore, %ld at the "
         "mutex\n",
         CX_ROUNDS, wt_now_ms() - t0, cancelled, (long)atomic_load(&c.locks),
         (long)atomic_load(&c.sem_cut), (long)atomic_load(&c.mu_cut));
  assert_int_equal(atomic_load(&c.errors), 0);
  assert_int_equal(atomic_load(&c.violations), 0);
  /* Conservation: every permit is back, the mutex is free. */
  assert_int_equal(weft_sem_value(c.sem), CX_PERMITS);
  for (int i = 0; i < CX_PERMITS; i++)
    assert_int_equal(weft_sem_try_acquire(c.sem), 0);
  assert_int_equal(weft_sem_try_acquire(c.sem), WEFT_EAGAIN);
  assert_int_equal(weft_mutex_try_lock(c.mu), 0);
  assert_int_equal(c.counter, atomic_load(&c.locks));
  assert_int_equal(weft_mutex_unlock(c.mu), 0);
  assert_int_equal(weft_sem_free(c.sem), 0);
  assert_int_equal(weft_mutex_free(c.mu), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(sem_counts_and_errors),
    cmocka_unit_test(sem_acquire_suspends_task),
    cmocka_unit_test(sem_fifo_no_barging),
    cmocka_unit_test(sem_cancel_waiter),
    cmocka_unit_test(sem_deadline),
    cmocka_unit_test(sem_threads_and_loops),
    cmocka_unit_test(sem_free_busy),
    cmocka_unit_test(sync_in_callbacks),
    cmocka_unit_test(mutex_basics_plain_thread),
    cmocka_unit_test(mutex_lock_unlock_tasks),
    cmocka_unit_test(mutex_held_across_awaits),
    cmocka_unit_test(mutex_fifo_handoff),
    cmocka_unit_test(mutex_cancel_waiter),
    cmocka_unit_test(mutex_thread_vs_task),
    cmocka_unit_test(event_set_wakes_all),
    cmocka_unit_test(event_cancel_and_clear),
    cmocka_unit_test(cond_producer_consumer),
    cmocka_unit_test(cond_signal_one_broadcast_all),
    cmocka_unit_test(cond_wait_needs_mutex),
    cmocka_unit_test(cond_cut_retakes_mutex),
    cmocka_unit_test(cond_signal_racing_cancel),
    cmocka_unit_test(group_limit_bounds_concurrency),
    cmocka_unit_test(group_limit_errors),
    cmocka_unit_test(group_limit_spawner_cut),
    cmocka_unit_test(stress_sem_pairs),
    cmocka_unit_test(stress_mutex_counter),
    cmocka_unit_test(stress_random_cancels),
};

WT_MAIN("sync", tests)
