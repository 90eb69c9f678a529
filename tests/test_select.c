/* Tests for weft_select (Go's select over channels) and weft_wait_any
 * (asyncio.wait(FIRST_COMPLETED)).
 *
 * select: exactly one ready case is performed and the others are not
 * touched; a poll (timeout 0) takes nothing; a finite timeout ends with
 * WEFT_ETIMEDOUT; closed channels are ready with WEFT_ECLOSED; a NULL
 * channel is never ready; bad arguments are refused; ready cases are picked
 * about equally often; a cancel or a deadline ends a waiting select with
 * nothing taken and nothing lost, and a wake-up the select consumed but did
 * not use is passed on to the next waiter of that channel; plain threads,
 * tasks and two loops wake each other; and a stress run of tasks and plain
 * threads selecting over four channels, with random cancels and closes at
 * the end, loses and duplicates nothing.
 *
 * wait_any: the fastest task's index, the others left running; tasks on
 * other loops and a plain thread waiting; a pending cancel, a cancel while
 * waiting and a deadline cancel every task and return the error; an ended
 * task returns at once; bad arguments.
 *
 * No case relies on timing beyond generous lower bounds: cases wait for
 * states (a task parked, a flag set) with bounded polls. cmocka's
 * assertions run on the test's own thread or in tasks of weft_run; pool
 * tasks and helper threads record what they saw, and the test checks it.
 */
#include "testutil.h"

#include <pthread.h>
#include <sched.h>

#define MSG(i) ((void *)(uintptr_t)(i))
#define NUM(p) ((uintptr_t)(p))
#define UNTOUCHED MSG(0xdeadbeef)
#define ERR_UNSET 12345

static weft_select_case_t rcase(weft_chan_t *ch) {
  return (weft_select_case_t){.op = WEFT_SELECT_RECV, .chan = ch, .msg = UNTOUCHED, .err = ERR_UNSET};
}

static weft_select_case_t scase(weft_chan_t *ch, void *msg) {
  return (weft_select_case_t){.op = WEFT_SELECT_SEND, .chan = ch, .msg = msg, .err = ERR_UNSET};
}

static weft_chan_t *chan_of(size_t cap) {
  weft_chan_t *ch = NULL;
  assert_int_equal(weft_chan_new(&ch, cap), 0);
  assert_non_null(ch);
  return ch;
}

/* The channel holds exactly the one message want (taken out and checked). */
static void expect_only(weft_chan_t *ch, uintptr_t want) {
  void *m = NULL;
  assert_int_equal(weft_chan_try_recv(ch, &m), 0);
  assert_int_equal(NUM(m), want);
  assert_int_equal(weft_chan_try_recv(ch, &m), WEFT_EAGAIN);
}

static void expect_empty(weft_chan_t *ch) {
  void *m = NULL;
  assert_int_equal(weft_chan_try_recv(ch, &m), WEFT_EAGAIN);
}

/* Lets the current loop run a few rounds. */
static void rounds(int n) {
  for (int i = 0; i < n; i++)
    assert_int_equal(weft_yield(), 0);
}

/* Waits, from a plain thread, until at least n tasks of loop are parked. */
static void wait_parked(weft_loop_t *loop, size_t n) {
  weft_stats_t st;
  double deadline = wt_now_ms() + 10000;
  for (;;) {
    assert_int_equal(weft_loop_stats(loop, &st), 0);
    if (st.waiting >= n)
      return;
    if (wt_now_ms() > deadline)
      fail_msg("%zu task(s) parked on %s after 10 s, not %zu", st.waiting, weft_loop_name(loop), n);
    uv_sleep(1);
  }
}

/* Waits, from a plain thread, until task has ended (bounded). */
static void wait_ended(weft_task_t *t, unsigned ms) {
  double deadline = wt_now_ms() + ms;
  while (weft_task_status(t) == WEFT_EPENDING) {
    if (wt_now_ms() > deadline)
      fail_msg("a task did not end within %u ms", ms);
    uv_sleep(1);
  }
}

/* A task (or thread) that selects once over its cases and records it. */
typedef struct selector {
  weft_select_case_t c[4];
  size_t n;
  uint64_t timeout_ms;
  uint64_t deadline_ms;  /* nonzero: weft_deadline_push(deadline_ms) first */
  int rc;
  double elapsed_ms;
  atomic_int started, done;
} selector_t;

static void selector_init(selector_t *s, size_t n, uint64_t timeout_ms) {
  memset(s, 0, sizeof *s);
  s->n = n;
  s->timeout_ms = timeout_ms;
  s->rc = ERR_UNSET;
  atomic_init(&s->started, 0);
  atomic_init(&s->done, 0);
}

static void *selector_task(void *arg) {
  selector_t *s = arg;
  atomic_store(&s->started, 1);
  if (s->deadline_ms && weft_deadline_push(s->deadline_ms) != 0)
    return NULL;
  double t0 = wt_now_ms();
  s->rc = weft_select(s->c, s->n, s->timeout_ms);
  s->elapsed_ms = wt_now_ms() - t0;
  if (s->deadline_ms)
    weft_deadline_pop();
  atomic_store(&s->done, 1);
  return NULL;
}

/* A task that sends or receives one message after a sleep. */
typedef struct late {
  weft_chan_t *ch;
  uint64_t delay_ms;
  void *msg;
  int rc;
} late_t;

static void *late_send_task(void *arg) {
  late_t *l = arg;
  if (l->delay_ms)
    weft_sleep(l->delay_ms);
  l->rc = weft_chan_send(l->ch, l->msg);
  return NULL;
}

static void *late_recv_task(void *arg) {
  late_t *l = arg;
  if (l->delay_ms)
    weft_sleep(l->delay_ms);
  l->rc = weft_chan_recv(l->ch, &l->msg);
  return NULL;
}

static void *late_send_thread(void *arg) {
  late_t *l = arg;
  if (l->delay_ms)
    uv_sleep((unsigned)l->delay_ms);
  l->rc = weft_chan_send(l->ch, l->msg);
  return NULL;
}

/* ---------------------------------------------- exactly one ready case */

static void exactly_one_body(void) {
  int picked[2] = {0, 0};
  for (int round = 0; round < 64; round++) {
    weft_chan_t *a = chan_of(2), *b = chan_of(2);
    assert_int_equal(weft_chan_try_send(a, MSG(1)), 0);
    assert_int_equal(weft_chan_try_send(b, MSG(2)), 0);
    weft_select_case_t c[2] = {rcase(a), rcase(b)};
    int rc = weft_select(c, 2, round % 2 ? 0 : WEFT_FOREVER);
    assert_true(rc == 0 || rc == 1);
    picked[rc]++;
    assert_int_equal(c[rc].err, 0);
    assert_int_equal(NUM(c[rc].msg), (uintptr_t)rc + 1);
    /* The other case is not touched, and its channel keeps its message. */
    assert_ptr_equal(c[1 - rc].msg, UNTOUCHED);
    assert_int_equal(c[1 - rc].err, ERR_UNSET);
    expect_empty(rc == 0 ? a : b);
    expect_only(rc == 0 ? b : a, rc == 0 ? 2 : 1);
    weft_chan_release(a);
    weft_chan_release(b);
  }
  assert_true(picked[0] > 0 && picked[1] > 0);

  /* A send into the channel with room, not into the full one. */
  weft_chan_t *full = chan_of(1), *room = chan_of(1), *empty = chan_of(1);
  assert_int_equal(weft_chan_try_send(full, MSG(7)), 0);
  weft_select_case_t s[2] = {scase(full, MSG(10)), scase(room, MSG(11))};
  assert_int_equal(weft_select(s, 2, WEFT_FOREVER), 1);
  assert_int_equal(s[1].err, 0);
  assert_int_equal(s[0].err, ERR_UNSET);
  expect_only(full, 7);
  expect_only(room, 11);

  /* A receive on an empty channel is not ready; the send is. */
  weft_select_case_t m[2] = {rcase(empty), scase(room, MSG(12))};
  assert_int_equal(weft_select(m, 2, 0), 1);
  assert_int_equal(m[1].err, 0);
  assert_ptr_equal(m[0].msg, UNTOUCHED);
  expect_only(room, 12);
  expect_empty(empty);

  /* A send to a full channel is not ready; the receive is. */
  assert_int_equal(weft_chan_try_send(full, MSG(8)), 0);
  assert_int_equal(weft_chan_try_send(room, MSG(13)), 0);
  weft_select_case_t r[2] = {scase(full, MSG(9)), rcase(room)};
  assert_int_equal(weft_select(r, 2, WEFT_FOREVER), 1);
  assert_int_equal(r[1].err, 0);
  assert_int_equal(NUM(r[1].msg), 13);
  expect_only(full, 8);
  expect_empty(room);

  /* A send and a receive both ready: exactly one of them happens. */
  for (int round = 0; round < 32; round++) {
    assert_int_equal(weft_chan_try_send(full, MSG(20)), 0);
    weft_select_case_t x[2] = {rcase(full), scase(room, MSG(21))};
    int rc = weft_select(x, 2, WEFT_FOREVER);
    assert_true(rc == 0 || rc == 1);
    if (rc == 0) {
      assert_int_equal(NUM(x[0].msg), 20);
      expect_empty(full);
      expect_empty(room);
    } else {
      assert_ptr_equal(x[0].msg, UNTOUCHED);
      expect_only(full, 20);
      expect_only(room, 21);
    }
  }

  /* The same channel in two cases: one of them, once. */
  assert_int_equal(weft_chan_try_send(empty, MSG(30)), 0);
  weft_select_case_t d[2] = {rcase(empty), rcase(empty)};
  int rc = weft_select(d, 2, WEFT_FOREVER);
  assert_true(rc == 0 || rc == 1);
  assert_int_equal(NUM(d[rc].msg), 30);
  assert_ptr_equal(d[1 - rc].msg, UNTOUCHED);
  expect_empty(empty);
  /* A send and a receive on one channel of one cell: only one is ready. */
  weft_select_case_t sr[2] = {scase(empty, MSG(31)), rcase(empty)};
  assert_int_equal(weft_select(sr, 2, WEFT_FOREVER), 0);
  sr[0] = scase(empty, MSG(32));
  assert_int_equal(weft_select(sr, 2, WEFT_FOREVER), 1);
  assert_int_equal(NUM(sr[1].msg), 31);
  expect_empty(empty);
  weft_chan_release(full);
  weft_chan_release(room);
  weft_chan_release(empty);
}

static void *exactly_one_task(void *arg) {
  (void)arg;
  exactly_one_body();
  return NULL;
}

static void select_takes_exactly_one(void **state) {
  (void)state;
  exactly_one_body(); /* on a plain thread */
  assert_int_equal(weft_run(exactly_one_task, NULL, NULL), 0);
}

/* ---------------------------------------------------- poll and timeout */

static void poll_timeout_body(void) {
  weft_chan_t *empty = chan_of(1), *full = chan_of(1);
  assert_int_equal(weft_chan_try_send(full, MSG(5)), 0);
  weft_select_case_t c[2] = {rcase(empty), scase(full, MSG(6))};
  /* A poll finds nothing ready and changes nothing. */
  for (int i = 0; i < 10; i++)
    assert_int_equal(weft_select(c, 2, 0), WEFT_EAGAIN);
  assert_ptr_equal(c[0].msg, UNTOUCHED);
  assert_int_equal(c[0].err, ERR_UNSET);
  assert_int_equal(c[1].err, ERR_UNSET);
  expect_empty(empty);
  expect_only(full, 5);
  assert_int_equal(weft_chan_try_send(full, MSG(5)), 0);

  /* A finite timeout: WEFT_ETIMEDOUT after at least that long. */
  uint64_t waits[] = {1, 30, 60};
  for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
    double t0 = wt_now_ms();
    assert_int_equal(weft_select(c, 2, waits[i]), WEFT_ETIMEDOUT);
    double elapsed = wt_now_ms() - t0;
    if (elapsed < (double)waits[i] - 1 || elapsed > 5000)
      fail_msg("select(timeout %llu ms) returned after %.1f ms", (unsigned long long)waits[i],
               elapsed);
  }
  assert_ptr_equal(c[0].msg, UNTOUCHED);
  expect_empty(empty);
  expect_only(full, 5);
  weft_chan_release(empty);
  weft_chan_release(full);
}

static void *poll_timeout_task(void *arg) {
  (void)arg;
  poll_timeout_body();
  return NULL;
}

/* In a libuv callback a poll works, a wait is refused. */
typedef struct cb_sel {
  weft_chan_t *ch;
  int poll_rc, wait_rc, timed_rc;
  void *got;
  int done;
} cb_sel_t;

static void select_cb(void *arg) {
  cb_sel_t *c = arg;
  weft_select_case_t k[1] = {rcase(c->ch)};
  c->poll_rc = weft_select(k, 1, 0);
  c->got = k[0].msg;
  k[0] = rcase(c->ch);
  c->wait_rc = weft_select(k, 1, WEFT_FOREVER);
  c->timed_rc = weft_select(k, 1, 10);
  c->done = 1;
}

static void *cb_main(void *arg) {
  cb_sel_t *c = arg;
  assert_int_equal(weft_loop_call_soon(weft_loop_current(), select_cb, c), 0);
  while (!c->done)
    assert_int_equal(weft_sleep(1), 0);
  return NULL;
}

static void select_poll_and_timeout(void **state) {
  (void)state;
  poll_timeout_body();
  assert_int_equal(weft_run(poll_timeout_task, NULL, NULL), 0);

  cb_sel_t c;
  memset(&c, 0, sizeof c);
  c.ch = chan_of(1);
  assert_int_equal(weft_chan_try_send(c.ch, MSG(3)), 0);
  assert_int_equal(weft_run(cb_main, &c, NULL), 0);
  assert_int_equal(c.poll_rc, 0);
  assert_int_equal(NUM(c.got), 3);
  assert_int_equal(c.wait_rc, WEFT_ENOTASK);
  assert_int_equal(c.timed_rc, WEFT_ENOTASK);
  expect_empty(c.ch);
  weft_chan_release(c.ch);
}

/* WEFT_FOREVER waits until a sender on another loop sends; a finite
 * timeout ends early when a message comes. */
static void select_forever_woken_by_other_loop(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(2);
  weft_loop_t *l0 = weft_pool_loop(pool, 0), *l1 = weft_pool_loop(pool, 1);
  weft_chan_t *a = chan_of(1), *b = chan_of(1);

  selector_t s;
  selector_init(&s, 2, WEFT_FOREVER);
  s.c[0] = rcase(a);
  s.c[1] = rcase(b);
  weft_task_t *st = NULL, *lt = NULL;
  assert_int_equal(weft_spawn(l0, selector_task, &s, &st), 0);
  wait_parked(l0, 1);
  uv_sleep(20);
  assert_int_equal(atomic_load(&s.done), 0);
  late_t l = {.ch = b, .delay_ms = 0, .msg = MSG(9), .rc = ERR_UNSET};
  assert_int_equal(weft_spawn(l1, late_send_task, &l, &lt), 0);
  assert_int_equal(weft_await(lt, NULL), 0);
  wait_ended(st, 10000);
  assert_int_equal(weft_await(st, NULL), 0);
  assert_int_equal(l.rc, 0);
  assert_int_equal(s.rc, 1);
  assert_int_equal(s.c[1].err, 0);
  assert_int_equal(NUM(s.c[1].msg), 9);
  assert_ptr_equal(s.c[0].msg, UNTOUCHED);
  expect_empty(a);
  expect_empty(b);
  weft_task_release(st);
  weft_task_release(lt);

  /* A plain thread with a long finite timeout, woken by a task's send. */
  l = (late_t){.ch = a, .delay_ms = 20, .msg = MSG(4), .rc = ERR_UNSET};
  assert_int_equal(weft_spawn(l1, late_send_task, &l, &lt), 0);
  weft_select_case_t c[2] = {rcase(a), rcase(b)};
  double t0 = wt_now_ms();
  assert_int_equal(weft_select(c, 2, 20000), 0);
  assert_true(wt_now_ms() - t0 < 15000);
  assert_int_equal(NUM(c[0].msg), 4);
  assert_int_equal(weft_await(lt, NULL), 0);
  assert_int_equal(l.rc, 0);
  weft_task_release(lt);
  expect_empty(a);
  weft_chan_release(a);
  weft_chan_release(b);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------------ closed channels */

static void *closed_main(void *arg) {
  (void)arg;
  /* RECV on a closed, empty channel: ready with WEFT_ECLOSED. */
  weft_chan_t *open_empty = chan_of(1), *closed = chan_of(2);
  assert_int_equal(weft_chan_close(closed), 0);
  weft_select_case_t c[2] = {rcase(open_empty), rcase(closed)};
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), 1);
  assert_int_equal(c[1].err, WEFT_ECLOSED);
  assert_ptr_equal(c[0].msg, UNTOUCHED);
  c[1] = rcase(closed);
  assert_int_equal(weft_select(c, 2, 0), 1);
  assert_int_equal(c[1].err, WEFT_ECLOSED);

  /* SEND on a closed channel: ready with WEFT_ECLOSED, nothing sent. */
  weft_select_case_t s[2] = {rcase(open_empty), scase(closed, MSG(5))};
  assert_int_equal(weft_select(s, 2, WEFT_FOREVER), 1);
  assert_int_equal(s[1].err, WEFT_ECLOSED);
  void *m;
  assert_int_equal(weft_chan_try_recv(closed, &m), WEFT_ECLOSED);
  weft_chan_release(closed);

  /* RECV on a closed channel that still holds messages: they come first,
   * with err 0, then WEFT_ECLOSED. */
  closed = chan_of(2);
  assert_int_equal(weft_chan_try_send(closed, MSG(1)), 0);
  assert_int_equal(weft_chan_try_send(closed, MSG(2)), 0);
  assert_int_equal(weft_chan_close(closed), 0);
  for (uintptr_t want = 1; want <= 2; want++) {
    c[0] = rcase(open_empty);
    c[1] = rcase(closed);
    assert_int_equal(weft_select(c, 2, WEFT_FOREVER), 1);
    assert_int_equal(c[1].err, 0);
    assert_int_equal(NUM(c[1].msg), want);
  }
  c[1] = rcase(closed);
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), 1);
  assert_int_equal(c[1].err, WEFT_ECLOSED);
  weft_chan_release(closed);

  /* A waiting select is woken by a close: a send case on a full channel. */
  weft_chan_t *full = chan_of(1);
  assert_int_equal(weft_chan_try_send(full, MSG(7)), 0);
  selector_t sel;
  selector_init(&sel, 2, WEFT_FOREVER);
  sel.c[0] = rcase(open_empty);
  sel.c[1] = scase(full, MSG(8));
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(NULL, selector_task, &sel, &t), 0);
  rounds(3);
  assert_int_equal(atomic_load(&sel.done), 0);
  assert_int_equal(weft_chan_close(full), 0);
  assert_int_equal(weft_wait_for(t, 10000, NULL), 0);
  assert_int_equal(sel.rc, 1);
  assert_int_equal(sel.c[1].err, WEFT_ECLOSED);
  assert_int_equal(weft_chan_try_recv(full, &m), 0);
  assert_int_equal(NUM(m), 7);
  assert_int_equal(weft_chan_try_recv(full, &m), WEFT_ECLOSED);
  weft_task_release(t);
  weft_chan_release(full);

  /* ... and a receive case on an empty channel. */
  selector_init(&sel, 1, WEFT_FOREVER);
  sel.c[0] = rcase(open_empty);
  assert_int_equal(weft_spawn(NULL, selector_task, &sel, &t), 0);
  rounds(3);
  assert_int_equal(atomic_load(&sel.done), 0);
  assert_int_equal(weft_chan_close(open_empty), 0);
  assert_int_equal(weft_wait_for(t, 10000, NULL), 0);
  assert_int_equal(sel.rc, 0);
  assert_int_equal(sel.c[0].err, WEFT_ECLOSED);
  weft_task_release(t);
  weft_chan_release(open_empty);
  return NULL;
}

static void select_closed_channels(void **state) {
  (void)state;
  assert_int_equal(weft_run(closed_main, NULL, NULL), 0);
}

/* ------------------------------------------ NULL channels, bad arguments */

static void select_null_chan_and_invalid(void **state) {
  (void)state;
  weft_chan_t *ch = chan_of(1);
  void *m;
  /* A NULL channel is never ready, in either direction. */
  for (int i = 0; i < 50; i++) {
    assert_int_equal(weft_chan_try_send(ch, MSG(i + 1)), 0);
    weft_select_case_t c[3] = {rcase(NULL), scase(NULL, MSG(99)), rcase(ch)};
    assert_int_equal(weft_select(c, 3, WEFT_FOREVER), 2);
    assert_int_equal(NUM(c[2].msg), (uintptr_t)i + 1);
    assert_ptr_equal(c[0].msg, UNTOUCHED);
    assert_int_equal(c[0].err, ERR_UNSET);
    assert_int_equal(c[1].err, ERR_UNSET);
  }
  weft_select_case_t nul[2] = {rcase(NULL), scase(NULL, NULL)};
  assert_int_equal(weft_select(nul, 2, 0), WEFT_EAGAIN);
  double t0 = wt_now_ms();
  assert_int_equal(weft_select(nul, 2, 20), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 >= 19);

  /* The most cases allowed: all NULL but the last. */
  weft_select_case_t *many = calloc(WEFT_SELECT_MAX + 1, sizeof *many);
  assert_non_null(many);
  for (size_t i = 0; i <= WEFT_SELECT_MAX; i++)
    many[i] = rcase(NULL);
  many[WEFT_SELECT_MAX - 1] = rcase(ch);
  assert_int_equal(weft_chan_try_send(ch, MSG(77)), 0);
  assert_int_equal(weft_select(many, WEFT_SELECT_MAX, 0), WEFT_SELECT_MAX - 1);
  assert_int_equal(NUM(many[WEFT_SELECT_MAX - 1].msg), 77);

  /* Bad arguments: refused, and nothing is taken. */
  assert_int_equal(weft_chan_try_send(ch, MSG(78)), 0);
  many[0] = rcase(ch);
  assert_int_equal(weft_select(many, WEFT_SELECT_MAX + 1, 0), WEFT_EINVAL);
  assert_int_equal(weft_select(many, WEFT_SELECT_MAX + 1, WEFT_FOREVER), WEFT_EINVAL);
  assert_int_equal(weft_select(many, 0, 0), WEFT_EINVAL);
  assert_int_equal(weft_select(NULL, 1, 0), WEFT_EINVAL);
  assert_int_equal(weft_select(NULL, 0, WEFT_FOREVER), WEFT_EINVAL);
  int bad_ops[] = {0, 3, -1, WEFT_SELECT_RECV | WEFT_SELECT_SEND | 4};
  for (size_t i = 0; i < sizeof bad_ops / sizeof bad_ops[0]; i++) {
    weft_select_case_t c[2] = {rcase(ch), rcase(NULL)};
    c[1].op = bad_ops[i];
    assert_int_equal(weft_select(c, 2, 0), WEFT_EINVAL);
    assert_int_equal(weft_select(c, 2, WEFT_FOREVER), WEFT_EINVAL);
    assert_ptr_equal(c[0].msg, UNTOUCHED);
  }
  expect_only(ch, 78);
  assert_int_equal(weft_chan_try_recv(ch, &m), WEFT_EAGAIN);
  free(many);
  weft_chan_release(ch);
}

/* --------------------------------------------------------------- fairness */

#define NFAIR 10000

static void select_fair(void **state) {
  (void)state;
  weft_chan_t *ch[2] = {chan_of(1), chan_of(1)};
  assert_int_equal(weft_chan_try_send(ch[0], MSG(100)), 0);
  assert_int_equal(weft_chan_try_send(ch[1], MSG(101)), 0);
  int picked[2] = {0, 0};
  for (int i = 0; i < NFAIR; i++) {
    weft_select_case_t c[2] = {rcase(ch[0]), rcase(ch[1])};
    int rc = weft_select(c, 2, i % 2 ? 0 : WEFT_FOREVER);
    assert_true(rc == 0 || rc == 1);
    assert_int_equal(NUM(c[rc].msg), 100 + (uintptr_t)rc);
    picked[rc]++;
    assert_int_equal(weft_chan_try_send(ch[rc], c[rc].msg), 0); /* ready again */
  }
  printf("picked %d and %d of %d\n", picked[0], picked[1], NFAIR);
  for (int i = 0; i < 2; i++)
    if (picked[i] < NFAIR * 40 / 100 || picked[i] > NFAIR * 60 / 100)
      fail_msg("case %d picked %d times of %d", i, picked[i], NFAIR);

  /* The same for two send cases. */
  void *m;
  picked[0] = picked[1] = 0;
  expect_only(ch[0], 100);
  expect_only(ch[1], 101);
  for (int i = 0; i < NFAIR; i++) {
    weft_select_case_t c[2] = {scase(ch[0], MSG(1)), scase(ch[1], MSG(2))};
    int rc = weft_select(c, 2, WEFT_FOREVER);
    assert_true(rc == 0 || rc == 1);
    picked[rc]++;
    assert_int_equal(weft_chan_try_recv(ch[rc], &m), 0);
    assert_int_equal(NUM(m), (uintptr_t)rc + 1);
  }
  for (int i = 0; i < 2; i++)
    if (picked[i] < NFAIR * 40 / 100 || picked[i] > NFAIR * 60 / 100)
      fail_msg("send case %d picked %d times of %d", i, picked[i], NFAIR);
  weft_chan_release(ch[0]);
  weft_chan_release(ch[1]);
}

/* ------------------------------------------------ cancel and deadlines */

typedef struct receiver {
  weft_chan_t *ch;
  void *msg;
  int rc;
  atomic_int done;
} receiver_t;

static void *receiver_task(void *arg) {
  receiver_t *r = arg;
  r->rc = weft_chan_recv(r->ch, &r->msg);
  atomic_store(&r->done, 1);
  return NULL;
}

static void *cancel_main(void *arg) {
  (void)arg;
  weft_chan_t *a = chan_of(1), *b = chan_of(1);

  /* A select cancelled while it waits takes nothing; the next message to
   * its channel goes to the next receiver. */
  for (int round = 0; round < 4; round++) {
    selector_t s;
    selector_init(&s, 2, round % 2 ? WEFT_FOREVER : 60000);
    s.c[0] = rcase(a);
    s.c[1] = round < 2 ? rcase(b) : scase(b, MSG(50)); /* b is full in rounds 2, 3 */
    if (round == 2)
      assert_int_equal(weft_chan_try_send(b, MSG(49)), 0);
    weft_task_t *t = NULL;
    assert_int_equal(weft_spawn(NULL, selector_task, &s, &t), 0);
    rounds(3);
    assert_int_equal(atomic_load(&s.started), 1);
    assert_int_equal(atomic_load(&s.done), 0);
    assert_int_equal(weft_task_cancel(t), 0);
    assert_int_equal(weft_wait_for(t, 10000, NULL), WEFT_ECANCELED);
    assert_int_equal(s.rc, WEFT_ECANCELED);
    assert_ptr_equal(s.c[0].msg, UNTOUCHED);
    weft_task_release(t);

    receiver_t r = {.ch = a, .msg = NULL, .rc = ERR_UNSET};
    assert_int_equal(weft_spawn(NULL, receiver_task, &r, &t), 0);
    rounds(3);
    assert_int_equal(atomic_load(&r.done), 0);
    assert_int_equal(weft_chan_try_send(a, MSG(10 + round)), 0);
    assert_int_equal(weft_wait_for(t, 10000, NULL), 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(NUM(r.msg), 10 + (uintptr_t)round);
    weft_task_release(t);
    expect_empty(a);
  }
  /* The cancelled send cases sent nothing. */
  expect_only(b, 49);

  /* A deadline ends a waiting select with WEFT_ETIMEDOUT; so does a
   * deadline shorter than the select's own timeout. */
  uint64_t timeouts[] = {WEFT_FOREVER, 60000};
  for (int i = 0; i < 2; i++) {
    selector_t s;
    selector_init(&s, 2, timeouts[i]);
    s.deadline_ms = 40;
    s.c[0] = rcase(a);
    s.c[1] = rcase(b);
    weft_task_t *t = NULL;
    assert_int_equal(weft_spawn(NULL, selector_task, &s, &t), 0);
    assert_int_equal(weft_wait_for(t, 10000, NULL), 0);
    assert_int_equal(s.rc, WEFT_ETIMEDOUT);
    assert_true(s.elapsed_ms >= 35);
    assert_ptr_equal(s.c[0].msg, UNTOUCHED);
    weft_task_release(t);
  }
  /* The same in this task, and the popped deadline leaves nothing behind. */
  assert_int_equal(weft_deadline_push(30), 0);
  weft_select_case_t c[2] = {rcase(a), rcase(b)};
  double t0 = wt_now_ms();
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 >= 25);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_int_equal(weft_select(c, 2, 0), WEFT_EAGAIN);
  assert_int_equal(weft_select(c, 2, 5), WEFT_ETIMEDOUT);
  assert_int_equal(weft_chan_try_send(b, MSG(3)), 0);
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), 1);
  assert_int_equal(NUM(c[1].msg), 3);

  /* A cancel pending when the call begins, nothing ready: WEFT_ECANCELED
   * at once, for a wait and for a poll's EAGAIN alike nothing taken. */
  assert_int_equal(weft_task_cancel(weft_task_current()), 0);
  c[0] = rcase(a);
  c[1] = rcase(b);
  t0 = wt_now_ms();
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), WEFT_ECANCELED);
  assert_int_equal(weft_select(c, 2, 60000), WEFT_ECANCELED);
  assert_true(wt_now_ms() - t0 < 5000);
  assert_ptr_equal(c[0].msg, UNTOUCHED);
  /* With a case ready, the pending cancel still wins (weft.h: an await
   * point sees it first, as weft_chan_recv does) and nothing is taken; a
   * poll is no await point and takes the ready case. */
  assert_int_equal(weft_chan_try_send(a, MSG(4)), 0);
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), WEFT_ECANCELED);
  assert_ptr_equal(c[0].msg, UNTOUCHED);
  assert_int_equal(weft_select(c, 2, 0), 0);
  assert_int_equal(NUM(c[0].msg), 4);
  expect_empty(a);
  weft_chan_release(a);
  weft_chan_release(b);
  return NULL;
}

static void select_cancel_and_deadline(void **state) {
  (void)state;
  assert_int_equal(weft_run(cancel_main, NULL, NULL), WEFT_ECANCELED);

  /* A pool task waiting in select, cancelled from this thread. */
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  weft_chan_t *a = chan_of(1), *b = chan_of(1);
  selector_t s;
  selector_init(&s, 2, WEFT_FOREVER);
  s.c[0] = rcase(a);
  s.c[1] = rcase(b);
  weft_task_t *t = NULL;
  assert_int_equal(weft_spawn(loop, selector_task, &s, &t), 0);
  wait_parked(loop, 1);
  assert_int_equal(weft_task_cancel(t), 0);
  wait_ended(t, 10000);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_int_equal(s.rc, WEFT_ECANCELED);
  weft_task_release(t);
  /* Nothing took the next message. */
  assert_int_equal(weft_chan_try_send(a, MSG(8)), 0);
  expect_only(a, 8);
  expect_empty(b);
  weft_chan_release(a);
  weft_chan_release(b);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A select woken on channel a (its wake-up consumed) and then also on b,
 * before it runs; a receiver waits on a behind it. Whatever the select
 * ends with, no message is lost and nobody is left asleep beside one: if it
 * took b's message (or was cancelled), the wake-up it consumed on a must
 * reach the receiver. Mode 0: two sends; mode 1: two sends, then a cancel
 * (the wake won, so the select may still take a message); mode 2: a cancel
 * first, then the two sends (the cancel won: WEFT_ECANCELED). */
static void *baton_main(void *arg) {
  (void)arg;
  weft_chan_t *a = chan_of(1), *b = chan_of(1);
  int outcomes[3][3] = {{0}};
  for (int round = 0; round < 90; round++) {
    int mode = round % 3;
    selector_t s;
    selector_init(&s, 2, WEFT_FOREVER);
    s.c[0] = rcase(a);
    s.c[1] = rcase(b);
    weft_task_t *st = NULL, *rt = NULL;
    assert_int_equal(weft_spawn(NULL, selector_task, &s, &st), 0);
    rounds(3);
    receiver_t r = {.ch = a, .msg = NULL, .rc = ERR_UNSET};
    assert_int_equal(weft_spawn(NULL, receiver_task, &r, &rt), 0);
    rounds(3);
    assert_int_equal(atomic_load(&s.done) + atomic_load(&r.done), 0);

    if (mode == 2)
      assert_int_equal(weft_task_cancel(st), 0);
    assert_int_equal(weft_chan_try_send(a, MSG(1)), 0);
    assert_int_equal(weft_chan_try_send(b, MSG(2)), 0);
    if (mode == 1)
      assert_int_equal(weft_task_cancel(st), 0);
    int st_rc = weft_wait_for(st, 10000, NULL);
    assert_int_equal(st_rc, mode == 0 ? 0 : WEFT_ECANCELED);
    weft_task_release(st);

    if (s.rc == 0) {
      /* It took a's message: b keeps its own, the receiver waits on. */
      outcomes[mode][0]++;
      assert_int_equal(NUM(s.c[0].msg), 1);
      rounds(3);
      assert_int_equal(atomic_load(&r.done), 0);
      expect_only(b, 2);
      assert_int_equal(weft_chan_try_send(a, MSG(3)), 0);
      assert_int_equal(weft_wait_for(rt, 10000, NULL), 0);
      assert_int_equal(NUM(r.msg), 3);
    } else {
      if (s.rc == 1) {
        outcomes[mode][1]++;
        assert_int_equal(NUM(s.c[1].msg), 2);
        assert_ptr_equal(s.c[0].msg, UNTOUCHED);
      } else {
        outcomes[mode][2]++;
        assert_int_equal(s.rc, WEFT_ECANCELED);
        assert_int_not_equal(mode, 0);
        expect_only(b, 2);
      }
      /* a's message is the receiver's: the select passed the wake-up on. */
      int rc = weft_wait_for(rt, 10000, NULL);
      if (rc != 0 || r.rc != 0)
        fail_msg("mode %d: the select returned %d and the receiver waiting behind it on a "
                 "was not woken for a's message (wait_for %d, recv %d)",
                 mode, s.rc, rc, r.rc);
      assert_int_equal(NUM(r.msg), 1);
    }
    if (mode == 2)
      assert_int_equal(s.rc, WEFT_ECANCELED);
    weft_task_release(rt);
    expect_empty(a);
    expect_empty(b);
  }
  for (int mode = 0; mode < 3; mode++)
    printf("mode %d: took a %d, took b %d, cancelled %d\n", mode, outcomes[mode][0],
           outcomes[mode][1], outcomes[mode][2]);
  /* Both starts were tried: the path that passes the wake-up on ran. */
  assert_true(outcomes[0][1] > 0);
  weft_chan_release(a);
  weft_chan_release(b);
  return NULL;
}

static void select_consumed_wake_passed_on(void **state) {
  (void)state;
  assert_int_equal(weft_run(baton_main, NULL, NULL), 0);
}

/* ---------------------------------------- plain threads, tasks, two loops */

static void *plain_selector_thread(void *arg) {
  selector_t *s = arg;
  atomic_store(&s->started, 1);
  s->rc = weft_select(s->c, s->n, s->timeout_ms);
  atomic_store(&s->done, 1);
  return NULL;
}

static void select_plain_threads_and_loops(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(2);
  weft_loop_t *l0 = weft_pool_loop(pool, 0), *l1 = weft_pool_loop(pool, 1);
  weft_chan_t *a = chan_of(1), *b = chan_of(1);
  weft_task_t *t = NULL, *t2 = NULL;

  /* A plain thread blocked in select, woken by a task's send on a loop. */
  late_t l = {.ch = b, .delay_ms = 30, .msg = MSG(5), .rc = ERR_UNSET};
  assert_int_equal(weft_spawn(l1, late_send_task, &l, &t), 0);
  weft_select_case_t c[2] = {rcase(a), rcase(b)};
  assert_int_equal(weft_select(c, 2, WEFT_FOREVER), 1);
  assert_int_equal(NUM(c[1].msg), 5);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(l.rc, 0);
  weft_task_release(t);

  /* ... and a send case on a full channel, woken by a task's receive. */
  assert_int_equal(weft_chan_try_send(a, MSG(6)), 0);
  l = (late_t){.ch = a, .delay_ms = 30, .msg = NULL, .rc = ERR_UNSET};
  assert_int_equal(weft_spawn(l0, late_recv_task, &l, &t), 0);
  weft_select_case_t s2[2] = {scase(a, MSG(7)), rcase(b)};
  assert_int_equal(weft_select(s2, 2, WEFT_FOREVER), 0);
  assert_int_equal(s2[0].err, 0);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(l.rc, 0);
  assert_int_equal(NUM(l.msg), 6);
  weft_task_release(t);
  expect_only(a, 7);

  /* A task blocked in select, woken by a plain thread's send. */
  selector_t s;
  selector_init(&s, 2, WEFT_FOREVER);
  s.c[0] = rcase(a);
  s.c[1] = rcase(b);
  assert_int_equal(weft_spawn(l0, selector_task, &s, &t), 0);
  wait_parked(l0, 1);
  assert_int_equal(weft_chan_send(a, MSG(8)), 0);
  wait_ended(t, 10000);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(s.rc, 0);
  assert_int_equal(NUM(s.c[0].msg), 8);
  weft_task_release(t);

  /* A task blocked in a send case, woken by another plain thread's
   * receive, while this thread blocks in a select of its own on b. */
  assert_int_equal(weft_chan_try_send(a, MSG(9)), 0);
  selector_init(&s, 1, WEFT_FOREVER);
  s.c[0] = scase(a, MSG(10));
  assert_int_equal(weft_spawn(l1, selector_task, &s, &t), 0);
  wait_parked(l1, 1);
  selector_t ps;
  selector_init(&ps, 1, WEFT_FOREVER);
  ps.c[0] = rcase(a);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, plain_selector_thread, &ps), 0);
  assert_true(wt_wait_ge(&ps.done, 1, 10000));
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(ps.rc, 0);
  assert_int_equal(NUM(ps.c[0].msg), 9);
  wait_ended(t, 10000);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(s.rc, 0);
  weft_task_release(t);
  expect_only(a, 10);

  /* A plain thread and a task, each blocked in select over a and b; two
   * sends from tasks of the two loops wake both. */
  selector_init(&s, 2, WEFT_FOREVER);
  s.c[0] = rcase(a);
  s.c[1] = rcase(b);
  selector_init(&ps, 2, WEFT_FOREVER);
  ps.c[0] = rcase(a);
  ps.c[1] = rcase(b);
  assert_int_equal(weft_spawn(l0, selector_task, &s, &t), 0);
  assert_int_equal(pthread_create(&th, NULL, plain_selector_thread, &ps), 0);
  wait_parked(l0, 1);
  assert_true(wt_wait_ge(&ps.started, 1, 10000));
  late_t la = {.ch = a, .delay_ms = 10, .msg = MSG(11), .rc = ERR_UNSET};
  late_t lb = {.ch = b, .delay_ms = 10, .msg = MSG(12), .rc = ERR_UNSET};
  weft_task_t *ta = NULL;
  assert_int_equal(weft_spawn(l1, late_send_task, &la, &ta), 0);
  assert_int_equal(weft_spawn(l0, late_send_task, &lb, &t2), 0);
  if (!wt_wait_ge(&ps.done, 1, 10000) || !wt_wait_ge(&s.done, 1, 10000))
    fail_msg("two sends, two selectors: thread done %d, task done %d", atomic_load(&ps.done),
             atomic_load(&s.done));
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(weft_await(ta, NULL), 0);
  assert_int_equal(weft_await(t2, NULL), 0);
  assert_true(s.rc == 0 || s.rc == 1);
  assert_true(ps.rc == 0 || ps.rc == 1);
  assert_int_not_equal(s.rc, ps.rc);
  uintptr_t got = NUM(s.c[s.rc].msg) + NUM(ps.c[ps.rc].msg);
  assert_int_equal(got, 23);
  expect_empty(a);
  expect_empty(b);
  weft_task_release(t);
  weft_task_release(t2);
  weft_task_release(ta);

  /* A thread's send (chan_send) wakes a thread's select. */
  selector_init(&ps, 2, WEFT_FOREVER);
  ps.c[0] = rcase(a);
  ps.c[1] = rcase(b);
  assert_int_equal(pthread_create(&th, NULL, plain_selector_thread, &ps), 0);
  l = (late_t){.ch = a, .delay_ms = 20, .msg = MSG(13), .rc = ERR_UNSET};
  pthread_t th2;
  assert_int_equal(pthread_create(&th2, NULL, late_send_thread, &l), 0);
  assert_true(wt_wait_ge(&ps.done, 1, 10000));
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(pthread_join(th2, NULL), 0);
  assert_int_equal(ps.rc, 0);
  assert_int_equal(NUM(ps.c[0].msg), 13);

  /* A task waiting with the same channel in two cases: one send wakes it,
   * it takes one message, and leaves no record behind that would swallow
   * the next send's wake-up of another receiver. */
  selector_init(&s, 2, WEFT_FOREVER);
  s.c[0] = rcase(a);
  s.c[1] = rcase(a);
  assert_int_equal(weft_spawn(l0, selector_task, &s, &t), 0);
  wait_parked(l0, 1);
  assert_int_equal(weft_chan_send(a, MSG(14)), 0);
  wait_ended(t, 10000);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_true(s.rc == 0 || s.rc == 1);
  assert_int_equal(NUM(s.c[s.rc].msg), 14);
  assert_ptr_equal(s.c[1 - s.rc].msg, UNTOUCHED);
  weft_task_release(t);
  l = (late_t){.ch = a, .delay_ms = 0, .msg = NULL, .rc = ERR_UNSET};
  assert_int_equal(weft_spawn(l1, late_recv_task, &l, &t), 0);
  wait_parked(l1, 1);
  assert_int_equal(weft_chan_send(a, MSG(15)), 0);
  wait_ended(t, 10000);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_int_equal(l.rc, 0);
  assert_int_equal(NUM(l.msg), 15);
  weft_task_release(t);
  expect_empty(a);

  weft_chan_release(a);
  weft_chan_release(b);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------ stress: conservation */

/* Tasks on two loops and two plain threads select over four channels,
 * each select with a random mix of send, receive and NULL cases and a
 * random timeout; the test's thread cancels random tasks (replacing each
 * with a new one), then closes the channels. Every message has a unique id:
 * an actor takes a fresh id for its next message and keeps it until a
 * select reports it sent, so a message that went out from a select that
 * reported anything else shows up as received but never sent. At the end
 * every message sent was received exactly once or is still in a channel. */
#define ST_CHANS 4
#define ST_TASK_SLOTS 4
#define ST_THREADS 2
#define ST_MAX_IDS (1u << 22)
#define ST_MAX_ACTORS 2048
#ifdef WEFT_TEST_TSAN
#define ST_RUN_MS 1000
#else
#define ST_RUN_MS 2500
#endif

typedef struct stress {
  weft_chan_t *ch[ST_CHANS];
  _Atomic uint64_t *sent_bm, *recv_bm;
  atomic_uint next_id;
  atomic_long sent, received, dup, bad, selects, closed_seen;
  atomic_int stop;
  atomic_int threads_done;
} stress_t;

typedef struct actor {
  stress_t *s;
  uint64_t rng;
  bool is_task;
  int rc;
} actor_t;

static uint32_t rnd(uint64_t *x) {
  *x ^= *x >> 12;
  *x ^= *x << 25;
  *x ^= *x >> 27;
  return (uint32_t)((*x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* Sets bit id; returns whether it was set already. */
static bool bm_set(_Atomic uint64_t *bm, uint32_t id) {
  uint64_t bit = (uint64_t)1 << (id % 64);
  return atomic_fetch_or(&bm[id / 64], bit) & bit;
}

static bool bm_get(_Atomic uint64_t *bm, uint32_t id) {
  return atomic_load(&bm[id / 64]) & ((uint64_t)1 << (id % 64));
}

static void actor_run(actor_t *a) {
  stress_t *s = a->s;
  uint32_t pending = 0; /* the id of the next message to send; 0: none yet */
  a->rc = 0;
  while (!atomic_load(&s->stop)) {
    if (pending == 0) {
      uint32_t id = atomic_fetch_add(&s->next_id, 1);
      pending = id < ST_MAX_IDS ? id : UINT32_MAX;
    }
    weft_select_case_t c[ST_CHANS];
    size_t n = 1 + rnd(&a->rng) % ST_CHANS;
    uint32_t first = rnd(&a->rng);
    for (size_t i = 0; i < n; i++) {
      uint32_t r = rnd(&a->rng);
      /* Distinct channels, or (one select in two) any, repeats included. */
      unsigned k = first % 2 ? (first / 2 + (unsigned)i) % ST_CHANS : (r >> 4) % ST_CHANS;
      weft_chan_t *ch = r % 8 == 0 ? NULL : s->ch[k];
      if ((r >> 3) % 2 && pending != UINT32_MAX)
        c[i] = scase(ch, MSG(pending));
      else
        c[i] = rcase(ch);
    }
    bool any = false;
    for (size_t i = 0; i < n; i++)
      any |= c[i].chan != NULL;
    uint64_t timeout;
    switch (rnd(&a->rng) % 4) {
    case 0: timeout = 0; break;
    case 1: timeout = 1; break;
    case 2: timeout = 3; break;
    default: timeout = any ? WEFT_FOREVER : 1; break; /* the close must end it */
    }
    int rc = weft_select(c, n, timeout);
    atomic_fetch_add_explicit(&s->selects, 1, memory_order_relaxed);
    if (rc >= 0) {
      if ((size_t)rc >= n || c[rc].chan == NULL) {
        atomic_fetch_add(&s->bad, 1);
        continue;
      }
      if (c[rc].err == WEFT_ECLOSED) {
        atomic_fetch_add(&s->closed_seen, 1);
        if (a->is_task) {
          if (weft_yield() != 0)
            return;
        } else {
          sched_yield();
        }
      } else if (c[rc].err != 0) {
        atomic_fetch_add(&s->bad, 1);
      } else if (c[rc].op == WEFT_SELECT_SEND) {
        if (NUM(c[rc].msg) != pending || bm_set(s->sent_bm, pending))
          atomic_fetch_add(&s->bad, 1);
        atomic_fetch_add(&s->sent, 1);
        pending = 0;
      } else {
        uintptr_t id = NUM(c[rc].msg);
        if (id == 0 || id >= ST_MAX_IDS)
          atomic_fetch_add(&s->bad, 1);
        else if (bm_set(s->recv_bm, (uint32_t)id))
          atomic_fetch_add(&s->dup, 1);
        atomic_fetch_add(&s->received, 1);
      }
      /* Nothing else touched: the other cases keep what they had. */
      for (size_t i = 0; i < n; i++)
        if (i != (size_t)rc && (c[i].err != ERR_UNSET ||
                                (c[i].op == WEFT_SELECT_RECV && c[i].msg != UNTOUCHED)))
          atomic_fetch_add(&s->bad, 1);
    } else if (rc == WEFT_EAGAIN || rc == WEFT_ETIMEDOUT) {
      for (size_t i = 0; i < n; i++)
        if (c[i].err != ERR_UNSET || (c[i].op == WEFT_SELECT_RECV && c[i].msg != UNTOUCHED))
          atomic_fetch_add(&s->bad, 1);
      /* A poll that found nothing lets the others run. */
      if (a->is_task) {
        if (weft_yield() != 0)
          return;
      } else {
        sched_yield();
      }
    } else if (rc == WEFT_ECANCELED && a->is_task) {
      a->rc = rc;
      return;
    } else {
      atomic_fetch_add(&s->bad, 1);
      a->rc = rc;
      return;
    }
  }
}

static void *actor_task(void *arg) {
  actor_run(arg);
  return NULL;
}

static void *actor_thread(void *arg) {
  actor_t *a = arg;
  actor_run(a);
  atomic_fetch_add(&a->s->threads_done, 1);
  return NULL;
}

static void select_stress_conservation(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(2);
  stress_t *s = calloc(1, sizeof *s);
  assert_non_null(s);
  s->sent_bm = calloc(ST_MAX_IDS / 64, sizeof *s->sent_bm);
  s->recv_bm = calloc(ST_MAX_IDS / 64, sizeof *s->recv_bm);
  assert_non_null(s->sent_bm);
  assert_non_null(s->recv_bm);
  atomic_init(&s->next_id, 1);
  for (int i = 0; i < ST_CHANS; i++)
    s->ch[i] = chan_of(1 + (size_t)i % 2);
  actor_t *actors = calloc(ST_MAX_ACTORS, sizeof *actors);
  assert_non_null(actors);
  size_t nactors = 0;
  uint64_t rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();

  pthread_t th[ST_THREADS];
  for (int i = 0; i < ST_THREADS; i++) {
    actor_t *a = &actors[nactors++];
    *a = (actor_t){.s = s, .rng = rng + nactors * 7919, .is_task = false};
    assert_int_equal(pthread_create(&th[i], NULL, actor_thread, a), 0);
  }
  weft_task_t *slot[ST_TASK_SLOTS];
  for (int i = 0; i < ST_TASK_SLOTS; i++) {
    actor_t *a = &actors[nactors++];
    *a = (actor_t){.s = s, .rng = rng + nactors * 7919, .is_task = true};
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), actor_task, a, &slot[i]), 0);
  }

  /* Cancel random tasks, each replaced by a fresh one. */
  long cancels = 0;
  double t0 = wt_now_ms();
  while (wt_now_ms() - t0 < ST_RUN_MS && nactors < ST_MAX_ACTORS) {
    uv_sleep(1 + rnd(&rng) % 4);
    int k = (int)(rnd(&rng) % ST_TASK_SLOTS);
    int rc = weft_task_cancel(slot[k]);
    assert_true(rc == 0 || rc == WEFT_EALREADY);
    wait_ended(slot[k], 10000);
    assert_int_equal(weft_await(slot[k], NULL), WEFT_ECANCELED);
    weft_task_release(slot[k]);
    cancels++;
    actor_t *a = &actors[nactors++];
    *a = (actor_t){.s = s, .rng = rng + nactors * 7919, .is_task = true};
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)k % 2), actor_task, a, &slot[k]), 0);
  }

  /* Stop, and close the channels: every select still waiting returns. */
  atomic_store(&s->stop, 1);
  for (int i = 0; i < ST_CHANS; i++)
    assert_int_equal(weft_chan_close(s->ch[i]), 0);
  for (int i = 0; i < ST_TASK_SLOTS; i++) {
    wait_ended(slot[i], 10000);
    int rc = weft_await(slot[i], NULL);
    assert_true(rc == 0 || rc == WEFT_ECANCELED);
    weft_task_release(slot[i]);
  }
  if (!wt_wait_ge(&s->threads_done, ST_THREADS, 10000))
    fail_msg("%d of %d plain threads still selecting 10 s after the close",
             ST_THREADS - atomic_load(&s->threads_done), ST_THREADS);
  for (int i = 0; i < ST_THREADS; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);

  /* What is left in the channels. */
  long left = 0, left_bad = 0;
  for (int i = 0; i < ST_CHANS; i++) {
    void *m;
    int rc;
    while ((rc = weft_chan_try_recv(s->ch[i], &m)) == 0) {
      uintptr_t id = NUM(m);
      if (id == 0 || id >= ST_MAX_IDS || bm_set(s->recv_bm, (uint32_t)id))
        left_bad++;
      left++;
    }
    assert_int_equal(rc, WEFT_ECLOSED);
  }
  long lost = 0, phantom = 0;
  uint32_t top = atomic_load(&s->next_id);
  if (top > ST_MAX_IDS)
    top = ST_MAX_IDS;
  for (uint32_t id = 1; id < top; id++) {
    bool sent = bm_get(s->sent_bm, id), got = bm_get(s->recv_bm, id);
    if (sent && !got)
      lost++;
    else if (got && !sent)
      phantom++;
  }
  long sent = atomic_load(&s->sent), received = atomic_load(&s->received);
  printf("%ld selects, %zu actors, %ld cancels: sent=%ld received=%ld left=%ld closed-seen=%ld\n",
         atomic_load(&s->selects), nactors, cancels, sent, received, left,
         atomic_load(&s->closed_seen));
  if (lost || phantom || atomic_load(&s->dup) || left_bad || atomic_load(&s->bad) ||
      sent != received + left)
    fail_msg("sent=%ld received=%ld left=%ld: lost=%ld received-but-not-sent=%ld duplicated=%ld "
             "bad-left=%ld bad-results=%ld",
             sent, received, left, lost, phantom, atomic_load(&s->dup), left_bad,
             atomic_load(&s->bad));
  assert_true(received > 100);
  assert_true(cancels > 10);
  for (int i = 0; i < ST_CHANS; i++)
    weft_chan_release(s->ch[i]);
  free(actors);
  free(s->sent_bm);
  free(s->recv_bm);
  free(s);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------------------- wait_any */

/* A task that waits at a gate (a channel: closing it opens the gate), then
 * sleeps, then optionally fails. */
typedef struct gated {
  weft_chan_t *gate; /* NULL: no gate */
  uint64_t sleep_ms;
  int fail;
  int gate_rc, sleep_rc;
  atomic_int started, ended;
} gated_t;

static void gated_init(gated_t *g, weft_chan_t *gate, uint64_t sleep_ms, int fail) {
  memset(g, 0, sizeof *g);
  g->gate = gate;
  g->sleep_ms = sleep_ms;
  g->fail = fail;
  g->gate_rc = g->sleep_rc = ERR_UNSET;
  atomic_init(&g->started, 0);
  atomic_init(&g->ended, 0);
}

static void *gated_task(void *arg) {
  gated_t *g = arg;
  atomic_store(&g->started, 1);
  if (g->gate) {
    void *m;
    g->gate_rc = weft_chan_recv(g->gate, &m);
    if (g->gate_rc != WEFT_ECLOSED)
      return NULL;
  }
  if (g->sleep_ms) {
    g->sleep_rc = weft_sleep(g->sleep_ms);
    if (g->sleep_rc != 0)
      return NULL;
  }
  if (g->fail)
    weft_task_fail(g->fail);
  atomic_store(&g->ended, 1);
  return NULL;
}

static void *wait_any_main(void *arg) {
  (void)arg;
  /* Three sleeps: the fastest ends first. */
  gated_t g[3];
  weft_task_t *t[3];
  uint64_t sleeps[3] = {400, 20, 200};
  for (int i = 0; i < 3; i++) {
    gated_init(&g[i], NULL, sleeps[i], 0);
    assert_int_equal(weft_spawn(NULL, gated_task, &g[i], &t[i]), 0);
  }
  size_t idx = 99;
  double t0 = wt_now_ms();
  assert_int_equal(weft_wait_any(t, 3, &idx), 0);
  assert_int_equal(idx, 1);
  assert_true(wt_now_ms() - t0 >= 19);
  assert_int_equal(weft_task_status(t[1]), 0);
  assert_int_equal(weft_gather(t, 3, NULL, NULL), 0);
  for (int i = 0; i < 3; i++)
    weft_task_release(t[i]);

  /* The others keep running, and can be awaited afterwards; a failure
   * counts as an end like any other. */
  weft_chan_t *gate = chan_of(1);
  gated_init(&g[0], gate, 0, 0);
  gated_init(&g[1], NULL, 10, WEFT_EPERM);
  gated_init(&g[2], gate, 5, 0);
  for (int i = 0; i < 3; i++)
    assert_int_equal(weft_spawn(NULL, gated_task, &g[i], &t[i]), 0);
  idx = 99;
  assert_int_equal(weft_wait_any(t, 3, &idx), 0);
  assert_int_equal(idx, 1);
  assert_int_equal(weft_task_status(t[1]), WEFT_EPERM);
  assert_int_equal(weft_task_status(t[0]), WEFT_EPENDING);
  assert_int_equal(weft_task_status(t[2]), WEFT_EPENDING);
  assert_int_equal(atomic_load(&g[0].started), 1);
  assert_int_equal(atomic_load(&g[2].started), 1);
  /* Ended tasks: wait_any returns at once with one of them. */
  idx = 99;
  t0 = wt_now_ms();
  assert_int_equal(weft_wait_any(t, 3, &idx), 0);
  assert_int_equal(idx, 1);
  weft_task_t *rev[3] = {t[2], t[0], t[1]};
  assert_int_equal(weft_wait_any(rev, 3, &idx), 0);
  assert_int_equal(idx, 2);
  assert_true(wt_now_ms() - t0 < 5000);
  assert_int_equal(weft_task_status(t[0]), WEFT_EPENDING);
  assert_int_equal(weft_chan_close(gate), 0);
  assert_int_equal(weft_await(t[0], NULL), 0);
  assert_int_equal(weft_await(t[2], NULL), 0);
  assert_int_equal(atomic_load(&g[0].ended) + atomic_load(&g[2].ended), 2);
  idx = 99;
  assert_int_equal(weft_wait_any(t, 3, &idx), 0);
  assert_true(idx < 3);
  for (int i = 0; i < 3; i++)
    weft_task_release(t[i]);
  weft_chan_release(gate);

  /* Bad arguments. */
  gated_init(&g[0], NULL, 1, 0);
  assert_int_equal(weft_spawn(NULL, gated_task, &g[0], &t[0]), 0);
  assert_int_equal(weft_wait_any(t, 0, &idx), WEFT_EINVAL);
  assert_int_equal(weft_wait_any(NULL, 1, &idx), WEFT_EINVAL);
  weft_task_t *with_null[2] = {t[0], NULL};
  assert_int_equal(weft_wait_any(with_null, 2, &idx), WEFT_EINVAL);
  weft_task_t *with_self[2] = {t[0], weft_task_current()};
  assert_int_equal(weft_wait_any(with_self, 2, &idx), WEFT_EDEADLK);
  /* None of that touched the task. */
  assert_int_equal(weft_await(t[0], NULL), 0);
  assert_int_equal(g[0].sleep_rc, 0);
  weft_task_release(t[0]);
  return NULL;
}

static void wait_any_first_and_rest_running(void **state) {
  (void)state;
  assert_int_equal(weft_run(wait_any_main, NULL, NULL), 0);
}

/* A task on loop 0 waiting for tasks on loop 1. */
typedef struct any_waiter {
  weft_task_t **tasks;
  size_t n;
  size_t idx;
  int rc;
  atomic_int done;
} any_waiter_t;

static void *any_waiter_task(void *arg) {
  any_waiter_t *w = arg;
  w->rc = weft_wait_any(w->tasks, w->n, &w->idx);
  atomic_store(&w->done, 1);
  return NULL;
}

static void wait_any_across_loops_and_threads(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(2);
  weft_loop_t *l0 = weft_pool_loop(pool, 0), *l1 = weft_pool_loop(pool, 1);
  weft_chan_t *gate = chan_of(1);
  gated_t g[3];
  weft_task_t *t[3];

  /* A plain thread waiting for tasks of two loops. */
  gated_init(&g[0], gate, 0, 0);
  gated_init(&g[1], NULL, 20, 0);
  gated_init(&g[2], gate, 0, 0);
  assert_int_equal(weft_spawn(l0, gated_task, &g[0], &t[0]), 0);
  assert_int_equal(weft_spawn(l1, gated_task, &g[1], &t[1]), 0);
  assert_int_equal(weft_spawn(l1, gated_task, &g[2], &t[2]), 0);
  size_t idx = 99;
  assert_int_equal(weft_wait_any(t, 3, &idx), 0);
  assert_int_equal(idx, 1);
  assert_int_equal(weft_task_status(t[1]), 0);
  assert_int_equal(weft_task_status(t[0]), WEFT_EPENDING);
  assert_int_equal(weft_task_status(t[2]), WEFT_EPENDING);
  weft_task_release(t[1]);

  /* A task on loop 0 waiting for a task of loop 1 (and one of its own). */
  gated_t f;
  gated_init(&f, NULL, 15, 0);
  weft_task_t *ft = NULL, *wt = NULL;
  assert_int_equal(weft_spawn(l1, gated_task, &f, &ft), 0);
  weft_task_t *set[2] = {t[0], ft};
  any_waiter_t w = {.tasks = set, .n = 2, .idx = 99, .rc = ERR_UNSET};
  atomic_init(&w.done, 0);
  assert_int_equal(weft_spawn(l0, any_waiter_task, &w, &wt), 0);
  assert_int_equal(weft_await(wt, NULL), 0);
  assert_int_equal(w.rc, 0);
  assert_int_equal(w.idx, 1);
  assert_int_equal(weft_task_status(t[0]), WEFT_EPENDING);
  weft_task_release(wt);
  weft_task_release(ft);

  /* The same, the task waiting first and the other loop's task ended by a
   * plain thread's close of the gate. */
  weft_task_t *set2[2] = {t[0], t[2]};
  w = (any_waiter_t){.tasks = set2, .n = 2, .idx = 99, .rc = ERR_UNSET};
  atomic_init(&w.done, 0);
  assert_int_equal(weft_spawn(l0, any_waiter_task, &w, &wt), 0);
  wait_parked(l0, 2); /* t[0] at the gate and the waiter */
  uv_sleep(10);
  assert_int_equal(atomic_load(&w.done), 0);
  assert_int_equal(weft_chan_close(gate), 0);
  wait_ended(wt, 10000);
  assert_int_equal(weft_await(wt, NULL), 0);
  assert_int_equal(w.rc, 0);
  assert_true(w.idx < 2);
  weft_task_release(wt);
  assert_int_equal(weft_await(t[0], NULL), 0);
  assert_int_equal(weft_await(t[2], NULL), 0);
  weft_task_release(t[0]);
  weft_task_release(t[2]);
  weft_chan_release(gate);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void *cut_pending_main(void *arg) {
  (void)arg;
  weft_chan_t *gate = chan_of(1);
  gated_t g[3];
  weft_task_t *t[3];
  for (int i = 0; i < 3; i++) {
    gated_init(&g[i], gate, 0, 0);
    assert_int_equal(weft_spawn(NULL, gated_task, &g[i], &t[i]), 0);
  }
  rounds(3); /* they wait at the gate */
  assert_int_equal(weft_task_cancel(weft_task_current()), 0);
  size_t idx = 99;
  assert_int_equal(weft_wait_any(t, 3, &idx), WEFT_ECANCELED);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_task_status(t[i]), WEFT_ECANCELED);
    assert_int_equal(g[i].gate_rc, WEFT_ECANCELED);
    weft_task_release(t[i]);
  }
  weft_chan_release(gate);
  return NULL;
}

static void *cut_deadline_main(void *arg) {
  (void)arg;
  weft_chan_t *gate = chan_of(1);
  gated_t g[3];
  weft_task_t *t[3];
  for (int i = 0; i < 3; i++) {
    gated_init(&g[i], gate, 0, 0);
    assert_int_equal(weft_spawn(NULL, gated_task, &g[i], &t[i]), 0);
  }
  assert_int_equal(weft_deadline_push(40), 0);
  size_t idx = 99;
  double t0 = wt_now_ms();
  assert_int_equal(weft_wait_any(t, 3, &idx), WEFT_ETIMEDOUT);
  assert_true(wt_now_ms() - t0 >= 35);
  assert_int_equal(weft_deadline_pop(), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_task_status(t[i]), WEFT_ECANCELED);
    weft_task_release(t[i]);
  }
  weft_chan_release(gate);

  /* A deadline already passed when the call begins: the same. */
  gate = chan_of(1);
  for (int i = 0; i < 2; i++) {
    gated_init(&g[i], gate, 0, 0);
    assert_int_equal(weft_spawn(NULL, gated_task, &g[i], &t[i]), 0);
  }
  assert_int_equal(weft_deadline_push(1), 0);
  uv_sleep(5); /* blocks the loop: the deadline passes */
  assert_int_equal(weft_wait_any(t, 2, &idx), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(weft_task_status(t[i]), WEFT_ECANCELED);
    weft_task_release(t[i]);
  }
  weft_chan_release(gate);
  return NULL;
}

static void wait_any_cancel_and_deadline(void **state) {
  (void)state;
  assert_int_equal(weft_run(cut_pending_main, NULL, NULL), WEFT_ECANCELED);
  assert_int_equal(weft_run(cut_deadline_main, NULL, NULL), 0);

  /* A task waiting in wait_any on tasks of another loop, cancelled from a
   * plain thread: they are all cancelled and have ended when it returns. */
  weft_pool_t *pool = wt_pool_of(2);
  weft_loop_t *l0 = weft_pool_loop(pool, 0), *l1 = weft_pool_loop(pool, 1);
  weft_chan_t *gate = chan_of(1);
  gated_t g[3];
  weft_task_t *t[3];
  for (int i = 0; i < 3; i++) {
    gated_init(&g[i], gate, 0, 0);
    assert_int_equal(weft_spawn(i == 2 ? l0 : l1, gated_task, &g[i], &t[i]), 0);
  }
  any_waiter_t w = {.tasks = t, .n = 3, .idx = 99, .rc = ERR_UNSET};
  atomic_init(&w.done, 0);
  weft_task_t *wt = NULL;
  assert_int_equal(weft_spawn(l0, any_waiter_task, &w, &wt), 0);
  wait_parked(l0, 2);
  wait_parked(l1, 2);
  assert_int_equal(weft_task_cancel(wt), 0);
  wait_ended(wt, 10000);
  assert_int_equal(weft_await(wt, NULL), WEFT_ECANCELED);
  assert_int_equal(w.rc, WEFT_ECANCELED);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(weft_task_status(t[i]), WEFT_ECANCELED);
    assert_int_equal(g[i].gate_rc, WEFT_ECANCELED);
    weft_task_release(t[i]);
  }
  weft_task_release(wt);
  weft_chan_release(gate);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(select_takes_exactly_one),
    cmocka_unit_test(select_poll_and_timeout),
    cmocka_unit_test(select_forever_woken_by_other_loop),
    cmocka_unit_test(select_closed_channels),
    cmocka_unit_test(select_null_chan_and_invalid),
    cmocka_unit_test(select_fair),
    cmocka_unit_test(select_cancel_and_deadline),
    cmocka_unit_test(select_consumed_wake_passed_on),
    cmocka_unit_test(select_plain_threads_and_loops),
    cmocka_unit_test(select_stress_conservation),
    cmocka_unit_test(wait_any_first_and_rest_running),
    cmocka_unit_test(wait_any_across_loops_and_threads),
    cmocka_unit_test(wait_any_cancel_and_deadline),
};

WT_MAIN("select", tests)
