/* Tests for seeing inside the loops: counters that add up across a pool's
 * loops under load (and snapshots taken from other threads), loop and task
 * names, the slow-step warning (one line for one long step, none for
 * ordinary ones), and weft_dump's description of a task in each wait
 * state.
 */
#include "testutil.h"

#include <ctype.h>
#include <pthread.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdbool.h>

/* ------------------------------------------------------------- counters */

static void *busy_task(void *arg) {
  uintptr_t i = (uintptr_t)arg;
  for (unsigned k = 0; k < i % 4; k++)
    weft_yield();
  if (i % 7 == 0)
    weft_task_fail(WEFT_EINVAL);
  if (i % 11 == 0)
    weft_sleep(10000); /* cancelled below */
  return NULL;
}

#if defined(WEFT_TEST_TSAN)
/* TSan makes a fiber per live task at milliseconds each: 3000 took 23 to
 * 27 s of a 30 s bound. */
#define NLOAD 600
#else
#define NLOAD 3000
#endif

static void stats_add_up(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  weft_stats_t before, after, per[3];
  assert_int_equal(weft_pool_stats(pool, &before, NULL), 0);
  static weft_task_t *t[NLOAD];
  for (uintptr_t i = 0; i < NLOAD; i++)
    assert_int_equal(weft_spawn(weft_pool_next(pool), busy_task, (void *)i, &t[i]), 0);
  for (uintptr_t i = 0; i < NLOAD; i += 11)
    weft_task_cancel(t[i]);
  /* Snapshots while the work goes on: each is consistent on its own. */
  for (int k = 0; k < 5; k++) {
    weft_stats_t mid;
    assert_int_equal(weft_pool_stats(pool, &mid, per), 0);
    assert_true(mid.finished + mid.failed + mid.cancelled + mid.live == mid.spawned);
    for (int i = 0; i < 3; i++)
      assert_true(per[i].finished + per[i].failed + per[i].cancelled + per[i].live ==
                  per[i].spawned);
  }
  weft_gather(t, NLOAD, NULL, NULL);
  size_t ok = 0, failed = 0, cancelled = 0;
  for (int i = 0; i < NLOAD; i++) {
    int st = weft_task_status(t[i]);
    ok += st == 0;
    failed += st == WEFT_EINVAL;
    cancelled += st == WEFT_ECANCELED;
    weft_task_release(t[i]);
  }
  assert_int_equal(weft_pool_stats(pool, &after, per), 0);
  assert_int_equal(after.spawned - before.spawned, NLOAD);
  assert_int_equal(after.finished - before.finished, ok);
  assert_int_equal(after.failed - before.failed, failed);
  assert_int_equal(after.cancelled - before.cancelled, cancelled);
  assert_int_equal(after.live, 0);
  /* The sum is the sum of the loops; every loop got a third. */
  uint64_t spawned = 0, switches = 0;
  for (int i = 0; i < 3; i++) {
    spawned += per[i].spawned;
    switches += per[i].switches;
    assert_true(per[i].spawned >= NLOAD / 3);
    assert_true(per[i].busy_ns > 0);
  }
  assert_int_equal(spawned, after.spawned);
  assert_int_equal(switches, after.switches);
  assert_true(after.inbox_in >= NLOAD);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* Parked time grows while a loop waits, busy time while it runs. */
static void *spin_ms(void *arg) {
  double until = wt_now_ms() + (double)(uintptr_t)arg;
  while (wt_now_ms() < until)
    ;
  return NULL;
}

static void *ask_other(void *arg) {
  weft_stats_t st;
  return (void *)(intptr_t)weft_loop_stats(arg, &st);
}

/* From a thread that runs a loop, another loop's stats are refused: the
 * call would block that loop, and two loops asking each other would wait
 * for ever. */
static void stats_refused_from_another_loop(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  weft_task_t *t[2];
  for (unsigned i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), ask_other, weft_pool_loop(pool, 1 - i),
                                &t[i]), 0);
  void *rc[2];
  assert_int_equal(weft_gather(t, 2, rc, NULL), 0);
  for (unsigned i = 0; i < 2; i++) {
    assert_int_equal((intptr_t)rc[i], WEFT_EBUSY);
    weft_task_release(t[i]);
  }
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void stats_busy_and_parked(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  weft_stats_t a, b, c;
  assert_int_equal(weft_loop_stats(loop, &a), 0);
  uv_sleep(200);
  assert_int_equal(weft_loop_stats(loop, &b), 0);
  assert_true(b.parked_ns - a.parked_ns >= 150 * 1000000ull);
  weft_task_t *t;
  assert_int_equal(weft_spawn(loop, spin_ms, (void *)200, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_loop_stats(loop, &c), 0);
  assert_true(c.busy_ns - b.busy_ns >= 150 * 1000000ull);
  assert_true(c.longest_step_ns >= 150 * 1000000ull);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ---------------------------------------------------------------- names */

static void *name_task(void *arg) {
  const char **out = arg;
  out[0] = weft_loop_name(weft_loop_current());
  out[1] = weft_task_name(weft_task_current());
  return NULL;
}

static void names(void **state) {
  weft_loop_t *a, *b;
  weft_loop_opts_t o = {.name = "frontend"};
  assert_int_equal(weft_loop_new(&a, NULL), 0);
  assert_int_equal(weft_loop_new(&b, &o), 0);
  assert_true(strncmp(weft_loop_name(a), "loop-", 5) == 0);
  assert_string_equal(weft_loop_name(b), "frontend");
  assert_string_equal(weft_loop_name(NULL), "(null)");
  weft_loop_close(a);
  weft_loop_close(b);

  weft_pool_t *pool = wt_pool_of(2);
  const char *seen[2];
  weft_task_t *t;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), name_task, seen, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  assert_string_equal(seen[0], "weft-1");
  char want[32];
  snprintf(want, sizeof want, "task-");
  assert_true(strncmp(seen[1], want, 5) == 0);
  assert_string_equal(weft_task_name(t), seen[1]);
  weft_task_release(t);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------------------ slow steps */

typedef struct log_capture {
  pthread_mutex_t lock;
  int lines;
  char last[512];
  atomic_int stalls;         /* "stall:" lines, from the watchdog */
  atomic_bool seen_spin;     /* a call stack line named observe_spin_here */
  char stall[512];           /* the first of them */
  int slow;                  /* "slow step" lines, after a step */
  char slow_line[512];
} log_capture_t;

static void capture(const char *line, void *arg) {
  log_capture_t *c = arg;
  pthread_mutex_lock(&c->lock);
  c->lines++;
  snprintf(c->last, sizeof c->last, "%s", line);
  if (strstr(line, "observe_spin_here"))
    atomic_store(&c->seen_spin, true);
  if (strstr(line, "stall:")) {
    if (atomic_load(&c->stalls) == 0)
      snprintf(c->stall, sizeof c->stall, "%s", line);
    atomic_fetch_add(&c->stalls, 1);
  } else if (strstr(line, "slow step")) {
    c->slow++;
    snprintf(c->slow_line, sizeof c->slow_line, "%s", line);
  }
  pthread_mutex_unlock(&c->lock);
}

static void *many_short_steps(void *arg) {
  (void)arg;
  for (int i = 0; i < 2000; i++)
    weft_yield();
  weft_sleep(20);
  return NULL;
}

static void slow_step_warning(void **state) {
  log_capture_t c = {.lock = PTHREAD_MUTEX_INITIALIZER};
  weft_log_set(capture, &c);
  weft_loop_t *loop;
  /* 400 ms: a loaded machine can preempt an ordinary step for tens of ms
   * (wall time counts), never near this. */
  weft_loop_opts_t o = {.name = "watched", .slow_step_ms = 400};
  assert_int_equal(weft_loop_new(&loop, &o), 0);
  weft_task_t *t;
  /* Ordinary steps: no line. */
  assert_int_equal(weft_spawn(loop, many_short_steps, NULL, &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  pthread_mutex_lock(&c.lock);
  assert_int_equal(c.lines, 0);
  pthread_mutex_unlock(&c.lock);
  /* One 800 ms step: exactly one line after it, naming the task, the loop
   * and the time (the watchdog's lines while it ran: stall_line_*). */
  assert_int_equal(weft_spawn(loop, spin_ms, (void *)800, &t), 0);
  assert_int_equal(weft_task_set_name(t, "spinner"), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  /* The watchdog's thread may still be logging the stall it saw: the
   * counts are read together, under the capture's lock. */
  pthread_mutex_lock(&c.lock);
  int slow = c.slow, lines = c.lines, stalls = atomic_load(&c.stalls);
  char slow_line[sizeof c.slow_line];
  memcpy(slow_line, c.slow_line, sizeof slow_line);
  pthread_mutex_unlock(&c.lock);
  assert_int_equal(slow, 1);
  assert_int_equal(lines, slow + stalls);
  assert_non_null(strstr(slow_line, "spinner"));
  assert_non_null(strstr(slow_line, "watched"));
  assert_non_null(strstr(slow_line, " ms"));
  weft_stats_t st;
  assert_int_equal(weft_loop_stats(loop, &st), 0);
  assert_int_equal(st.slow_steps, 1);
  assert_int_equal(weft_loop_close(loop), 0);
  weft_log_set(NULL, NULL);
}

/* A step that spins until the watchdog has reported it, its call stack
 * included (bounded: a sanitizer may defer the signal that takes it). */
__attribute__((noinline)) void observe_spin_here(log_capture_t *c) {
  double until = wt_now_ms() + 10000;
  volatile unsigned long x = 0;
  while (!atomic_load(&c->seen_spin) && wt_now_ms() < until) {
    /* Mostly here, not in a call: a call stack taken now starts in this
     * function (a signal that lands in clock_gettime shows its caller
     * only). Each stall line takes one; they come at growing intervals. */
    for (int i = 0; i < 200000; i++)
      x += (unsigned long)i;
  }
}

static void *spin_until_stall(void *arg) {
  observe_spin_here(arg);
  return NULL;
}

/* Seastar's stall detector: the line comes while the step still runs,
 * naming the task and the loop. */
static void stall_line_while_step_runs(void **state) {
  log_capture_t c = {.lock = PTHREAD_MUTEX_INITIALIZER};
  weft_log_set(capture, &c);
  weft_loop_t *loop;
  weft_loop_opts_t o = {.name = "stalled", .slow_step_ms = 50};
  assert_int_equal(weft_loop_new(&loop, &o), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn_named(loop, spin_until_stall, &c, "hog", &t), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  /* The step ended only because the stall lines had come. */
  assert_true(atomic_load(&c.stalls) >= 1);
  printf("stall lines: %d\n", atomic_load(&c.stalls));
  assert_true(wt_now_ms() - t0 < 10000);
  assert_non_null(strstr(c.stall, "task hog has held loop stalled for "));
  assert_non_null(strstr(c.stall, "still runs"));
  /* The stalled thread's call stack, taken by a signal while it spun. A
   * TSan build delivers a signal only at its next interceptor, which the
   * spin reaches (the mutex), so every build shows it. */
  assert_true(atomic_load(&c.seen_spin));
  /* And the line after the step, with its whole length. */
  assert_int_equal(c.slow, 1);
  assert_int_equal(weft_loop_close(loop), 0);
  weft_log_set(NULL, NULL);
}

typedef struct holder {
  atomic_int started;
  atomic_int release;
} holder_t;

static void *hold_loop(void *arg) {
  holder_t *h = arg;
  atomic_store(&h->started, 1);
  double until = wt_now_ms() + 10000;
  while (!atomic_load(&h->release) && wt_now_ms() < until)
    ;
  return NULL;
}

/* A task that holds a pool's loop: a dump and the stats from a plain
 * thread name it at once, without waiting for the step to end. */
static void dump_names_the_holder(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  holder_t h;
  atomic_init(&h.started, 0);
  atomic_init(&h.release, 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn_named(weft_pool_loop(pool, 0), hold_loop, &h, "spinner", &t), 0);
  assert_true(wt_wait_ge(&h.started, 1, 5000));
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  double t0 = wt_now_ms();
  weft_dump(mem);
  double took = wt_now_ms() - t0;
  fclose(mem);
  printf("dump of a held loop took %.1f ms\n", took);
  assert_non_null(strstr(text, "loop weft-0: held by task spinner for "));
  assert_non_null(strstr(text, "loop weft-1: 0 live tasks"));
  /* Not the second it would wait for a silent loop. */
  assert_true(took < 900);
  free(text);

  weft_stats_t st;
  t0 = wt_now_ms();
  /* The step has held its loop 100 ms or more (a stall): stats name it
   * rather than wait for it. */
  assert_int_equal(weft_loop_stats(weft_pool_loop(pool, 0), &st), WEFT_EAGAIN);
  printf("stats of a held loop took %.1f ms\n", wt_now_ms() - t0);
  assert_string_equal(st.held_by, "spinner");
  assert_int_equal(st.spawned, 0);
  assert_int_equal(weft_loop_stats(weft_pool_loop(pool, 1), &st), 0);
  assert_string_equal(st.held_by, "");

  atomic_store(&h.release, 1);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_loop_stats(weft_pool_loop(pool, 0), &st), 0);
  assert_string_equal(st.held_by, "");
  assert_int_equal(st.spawned, 1);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------------------------ dump */

typedef struct named_objs {
  weft_chan_t *inbox, *done;
  weft_sem_t *sem;
  weft_mutex_t *mu;
  weft_event_t *ev;
} named_objs_t;

static void *recv_inbox(void *arg) {
  named_objs_t *o = arg;
  void *m;
  weft_chan_recv(o->inbox, &m);
  return NULL;
}

static void *acquire_sem(void *arg) {
  named_objs_t *o = arg;
  if (weft_sem_acquire(o->sem) == 0)
    weft_sem_post(o->sem);
  return NULL;
}

static void *wait_event(void *arg) {
  named_objs_t *o = arg;
  weft_event_wait(o->ev);
  return NULL;
}

static void *select_both(void *arg) {
  named_objs_t *o = arg;
  weft_select_case_t c[2] = {{.op = WEFT_SELECT_RECV, .chan = o->inbox},
                             {.op = WEFT_SELECT_RECV, .chan = o->done}};
  weft_select(c, 2, WEFT_FOREVER);
  return NULL;
}

static void *lock_mutex(void *arg) {
  named_objs_t *o = arg;
  if (weft_mutex_lock(o->mu) == 0)
    weft_mutex_unlock(o->mu);
  return NULL;
}

/* Tasks named at spawn, waiting on named objects: the dump says which. */
static void dump_uses_names(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  named_objs_t o;
  assert_int_equal(weft_chan_new(&o.inbox, 4), 0);
  assert_int_equal(weft_chan_new(&o.done, 1), 0);
  assert_int_equal(weft_sem_new(&o.sem, 0), 0);
  assert_int_equal(weft_mutex_new(&o.mu), 0);
  assert_int_equal(weft_event_new(&o.ev), 0);
  assert_int_equal(weft_chan_set_name(o.inbox, "room-inbox"), 0);
  assert_int_equal(weft_chan_set_name(o.done, "shutdown"), 0);
  assert_int_equal(weft_sem_set_name(o.sem, "admissions"), 0);
  assert_int_equal(weft_mutex_set_name(o.mu, "stats-lock"), 0);
  assert_int_equal(weft_event_set_name(o.ev, "stopping"), 0);
  assert_int_equal(weft_chan_set_name(NULL, "x"), WEFT_EINVAL);
  assert_int_equal(weft_sem_set_name(o.sem, NULL), WEFT_EINVAL);
  assert_int_equal(weft_mutex_try_lock(o.mu), 0); /* this thread holds it */
  weft_fn fns[5] = {recv_inbox, acquire_sem, wait_event, select_both, lock_mutex};
  const char *names[5] = {"reader", "admit", "waiter", "selector", "locker"};
  weft_task_t *t[5];
  for (int i = 0; i < 5; i++)
    assert_int_equal(weft_spawn_named(loop, fns[i], &o, names[i], &t[i]), 0);
  weft_stats_t st;
  double until = wt_now_ms() + 5000;
  do {
    assert_int_equal(weft_loop_stats(loop, &st), 0);
  } while (st.waiting < 5 && wt_now_ms() < until);
  assert_int_equal(st.waiting, 5);
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  weft_dump(mem);
  fclose(mem);
  assert_non_null(strstr(text, "reader: waiting on channel \"room-inbox\" (recv)"));
  assert_non_null(strstr(text, "admit: waiting on semaphore \"admissions\""));
  assert_non_null(strstr(text, "waiter: waiting on event \"stopping\""));
  assert_non_null(strstr(text, "selector: waiting on select over 2 cases: recv \"room-inbox\", "
                               "recv \"shutdown\""));
  assert_non_null(strstr(text, "locker: waiting on mutex \"stats-lock\""));
  free(text);
  assert_int_equal(weft_chan_try_send(o.inbox, NULL), 0);
  assert_int_equal(weft_chan_close(o.done), 0);
  assert_int_equal(weft_sem_post(o.sem), 0);
  assert_int_equal(weft_event_set(o.ev), 0);
  assert_int_equal(weft_mutex_unlock(o.mu), 0);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  weft_chan_release(o.inbox);
  weft_chan_release(o.done);
  assert_int_equal(weft_sem_free(o.sem), 0);
  assert_int_equal(weft_mutex_free(o.mu), 0);
  assert_int_equal(weft_event_free(o.ev), 0);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}


typedef struct dump_fixture {
  weft_chan_t *ch;
  weft_listener_t *l;
  weft_stream_t *client, *server;
  char *text;
  size_t len;
} dump_fixture_t;

static void *sleeper(void *arg) {
  (void)arg;
  weft_sleep(60000);
  return NULL;
}

static void *joiner(void *arg) {
  weft_await(arg, NULL);
  return NULL;
}

static void *chan_waiter(void *arg) {
  dump_fixture_t *f = arg;
  void *m;
  weft_chan_recv(f->ch, &m);
  return NULL;
}

static void *stream_reader(void *arg) {
  dump_fixture_t *f = arg;
  char b;
  weft_stream_read(f->server, &b, 1);
  return NULL;
}

static void *accept_one(void *arg) {
  dump_fixture_t *f = arg;
  weft_tcp_accept(f->l, &f->server);
  return NULL;
}

static void *dump_main(void *arg) {
  dump_fixture_t *f = arg;
  assert_int_equal(weft_chan_new(&f->ch, 1), 0);
  assert_int_equal(weft_tcp_listen(&f->l, "127.0.0.1", 0, NULL), 0);
  weft_task_t *acc;
  assert_int_equal(weft_spawn(NULL, accept_one, f, &acc), 0);
  assert_int_equal(weft_tcp_connect(&f->client, "127.0.0.1", weft_listener_port(f->l)), 0);
  assert_int_equal(weft_await(acc, NULL), 0);
  weft_task_release(acc);

  weft_task_t *t[5];
  assert_int_equal(weft_spawn(NULL, sleeper, NULL, &t[0]), 0);
  weft_task_set_name(t[0], "the-sleeper");
  assert_int_equal(weft_spawn(NULL, joiner, t[0], &t[1]), 0);
  weft_task_set_name(t[1], "the-joiner");
  assert_int_equal(weft_spawn(NULL, chan_waiter, f, &t[2]), 0);
  weft_task_set_name(t[2], "the-chan-waiter");
  assert_int_equal(weft_spawn(NULL, stream_reader, f, &t[3]), 0);
  weft_task_set_name(t[3], "the-reader");
  assert_int_equal(weft_spawn(NULL, sleeper, NULL, &t[4]), 0);
  weft_task_set_name(t[4], "not-started");
  for (int i = 0; i < 3; i++)
    weft_yield();
  /* t[4] was spawned last and ran too; a new one stays unstarted. */
  weft_task_t *fresh;
  assert_int_equal(weft_spawn(NULL, sleeper, NULL, &fresh), 0);
  weft_task_set_name(fresh, "fresh-one");
  weft_task_set_name(weft_task_current(), "the-dumper");
  FILE *mem = open_memstream(&f->text, &f->len);
  weft_dump(mem);
  fclose(mem);
  weft_task_cancel(fresh);
  weft_task_release(fresh);
  for (int i = 0; i < 5; i++) {
    weft_task_cancel(t[i]);
    weft_await(t[i], NULL);
    weft_task_release(t[i]);
  }
  weft_stream_close(f->client);
  weft_stream_close(f->server);
  weft_listener_close(f->l);
  weft_chan_release(f->ch);
  return NULL;
}

static bool line_has(const char *text, const char *task, const char *what) {
  for (const char *p = strstr(text, task); p; p = strstr(p + 1, task)) {
    const char *eol = strchr(p, '\n');
    const char *w = strstr(p, what);
    if (w && (!eol || w < eol))
      return true;
  }
  return false;
}

static void dump_wait_states(void **state) {
  dump_fixture_t f = {0};
  assert_int_equal(weft_run(dump_main, &f, NULL), 0);
  assert_non_null(f.text);
  const char *x = f.text;
  if (!(line_has(x, "the-sleeper", "waiting on sleep until +") &&
        line_has(x, "the-joiner", "waiting on join of task the-sleeper") &&
        line_has(x, "the-chan-waiter", "waiting on channel ") &&
        line_has(x, "the-chan-waiter", " (recv)") &&
        line_has(x, "the-reader", "waiting on stream read") &&
        line_has(x, "fresh-one", "ready, not started") &&
        line_has(x, "the-dumper", "running") && line_has(x, "the-sleeper", "stack ") &&
        line_has(x, "the-sleeper", "age ")))
    fail_msg("dump lacks a state:\n%s", x);
  assert_non_null(strstr(x, "live tasks"));
  free(f.text);
}

/* A sleeper that says when it is about to park. */
static void *flagged_sleeper(void *arg) {
  atomic_store((atomic_int *)arg, 1);
  weft_sleep(60000);
  return NULL;
}

/* From a plain thread, over a pool: every loop answers. */
static void dump_from_plain_thread(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  weft_task_t *t;
  atomic_int parking;
  atomic_init(&parking, 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), flagged_sleeper, &parking, &t), 0);
  /* The sleeper has reached its sleep; the dump, a message to its loop,
   * runs after that step, so it finds the sleeper parked. */
  assert_true(wt_wait_ge(&parking, 1, 5000));
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  weft_dump(mem);
  fclose(mem);
  assert_non_null(strstr(text, "loop weft-0:"));
  assert_non_null(strstr(text, "loop weft-1: 1 live tasks"));
  assert_non_null(strstr(text, "waiting on sleep until"));
  free(text);
  weft_task_cancel(t);
  weft_await(t, NULL);
  weft_task_release(t);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ----------------------------------------------------------------- trace */

/* A strict little JSON checker: returns the end of one value, or NULL. */
static const char *json_ws(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
    p++;
  return p;
}

static const char *json_value(const char *p, int depth);

static const char *json_string_end(const char *p) {
  if (*p++ != '"')
    return NULL;
  for (; *p != '"'; p++) {
    if (!*p || (unsigned char)*p < 0x20)
      return NULL;
    if (*p == '\\') {
      p++;
      if (*p == 'u') {
        for (int i = 1; i <= 4; i++)
          if (!isxdigit((unsigned char)p[i]))
            return NULL;
        p += 4;
      } else if (!strchr("\"\\/bfnrt", *p)) {
        return NULL;
      }
    }
  }
  return p + 1;
}

static const char *json_value(const char *p, int depth) {
  p = json_ws(p);
  if (depth > 32)
    return NULL;
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    bool obj = *p == '{';
    p = json_ws(p + 1);
    if (*p == close)
      return p + 1;
    for (;;) {
      if (obj) {
        if (!(p = json_string_end(json_ws(p))))
          return NULL;
        p = json_ws(p);
        if (*p++ != ':')
          return NULL;
      }
      if (!(p = json_value(p, depth + 1)))
        return NULL;
      p = json_ws(p);
      if (*p == close)
        return p + 1;
      if (*p++ != ',')
        return NULL;
    }
  }
  if (*p == '"')
    return json_string_end(p);
  if (!strncmp(p, "true", 4) || !strncmp(p, "null", 4))
    return p + 4;
  if (!strncmp(p, "false", 5))
    return p + 5;
  char *end;
  strtod(p, &end);
  return end == p ? NULL : end;
}

static size_t count(const char *text, const char *needle) {
  size_t n = 0;
  for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
    n++;
  return n;
}

static void *traced_child(void *arg) {
  (void)arg;
  weft_sleep(1);
  return NULL;
}

static void *traced_parent(void *arg) {
  weft_pool_t *pool = arg;
  weft_task_set_name(weft_task_current(), "parent");
  weft_task_t *t[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), traced_child, NULL, &t[i]),
                     0);
  weft_gather(t, 4, NULL, NULL);
  for (int i = 0; i < 4; i++)
    weft_task_release(t[i]);
  return NULL;
}

typedef struct trace_tally {
  int parent_steps, child_steps[2], rounds, unbalanced, out_of_order;
  const void *stepping;      /* the task of the open step, per loop */
  const char *loop;
  uint64_t last_ns;
} trace_tally_t;

static void tally_event(const weft_trace_record_t *r, void *arg) {
  trace_tally_t *t = arg;
  if (!t->loop || strcmp(t->loop, r->loop) != 0) {
    t->loop = r->loop;
    t->stepping = NULL;
    t->last_ns = 0;
  }
  if (r->ev.time_ns < t->last_ns)
    t->out_of_order++;
  t->last_ns = r->ev.time_ns;
  int loop = strcmp(r->loop, "weft-1") == 0;
  switch (r->ev.kind) {
  case WEFT_EV_ROUND:
    t->rounds++;
    break;
  case WEFT_EV_STEP:
    if (strcmp(r->task_name, "parent") == 0)
      t->parent_steps++;
    else
      t->child_steps[loop]++;
    t->stepping = r->ev.task;
    break;
  case WEFT_EV_PARK:
  case WEFT_EV_DONE:
    if (t->stepping != r->ev.task)
      t->unbalanced++;
    t->stepping = NULL;
    break;
  default:
    break;
  }
}

static void spawn_from_fn(const weft_trace_record_t *r, void *arg) {
  int *n = arg;
  (void)r;
  if ((*n)++ == 0)
    weft_spawn(NULL, traced_child, NULL, NULL);
}

static void *read_and_spawn(void *arg) {
  (void)arg;
  int n = 0;
  assert_int_equal(weft_trace_read(spawn_from_fn, &n), 0);
  assert_true(n > 0);
  return NULL;
}

static void trace_json(void **state) {
  char path[] = "/tmp/weft-trace-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(weft_trace_write(), WEFT_EINVAL); /* never started */
  assert_int_equal(weft_trace_start(""), WEFT_EINVAL);
  assert_int_equal(weft_trace_read(NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_trace_start(path), 0);
  weft_pool_t *pool = wt_pool_of(2);
  weft_task_t *p;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), traced_parent, pool, &p), 0);
  assert_int_equal(weft_await(p, NULL), 0);
  weft_task_release(p);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  weft_trace_stop();
  assert_int_equal(weft_trace_write(), 0);

  /* Read back in the process: each loop's events in order, the parent's
   * steps on weft-0, its children's on both loops, every park balanced by
   * a step before it. */
  trace_tally_t tally = {0};
  assert_int_equal(weft_trace_read(tally_event, &tally), 0);
  assert_true(tally.parent_steps >= 1); /* named in its first step: the later ones */
  assert_true(tally.child_steps[0] >= 2 && tally.child_steps[1] >= 2);
  assert_true(tally.rounds > 0);
  assert_int_equal(tally.unbalanced, 0);
  assert_int_equal(tally.out_of_order, 0);

  /* fn may do what its thread may: here, spawn on the traced loop it runs
   * on, whose ring the spawn records into. */
  assert_int_equal(weft_run(read_and_spawn, NULL, NULL), 0);

  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static char text[1 << 22];
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  if (!getenv("KEEP_TRACE")) unlink(path);
  text[len] = 0;
  const char *end = json_value(text, 0);
  if (!end || *json_ws(end))
    fail_msg("not valid JSON near byte %td", end ? end - text : (ptrdiff_t)-1);
  /* A track per loop, steps of the named tasks, what they stopped at, and
   * an arrow per message that crossed loops (here the spawns and the
   * joins): each leaves one loop and
   * arrives at the other. */
  assert_int_equal(count(text, "\"thread_name\""), 2);
  assert_non_null(strstr(text, "\"weft-0\""));
  assert_non_null(strstr(text, "\"weft-1\""));
  assert_true(count(text, "\"ph\":\"X\"") >= 5);
  assert_non_null(strstr(text, "\"name\":\"parent\""));
  assert_non_null(strstr(text, "\"then\":\"join\""));
  assert_non_null(strstr(text, "\"then\":\"sleep\""));
  assert_non_null(strstr(text, "\"then\":\"end\""));
  size_t out = count(text, "\"ph\":\"s\""), in = count(text, "\"ph\":\"f\"");
  assert_true(out >= 2);
  assert_int_equal(out, in);
  /* Every step slice has a duration that is not negative. */
  assert_null(strstr(text, "\"dur\":-"));
}

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One step that computes for 20 ms of its thread's CPU time (however long
 * that takes on a busy machine), then parks. */
static void *compute_20ms(void *arg) {
  (void)arg;
  uint64_t until = thread_cpu_ns() + 20000000u;
  while (thread_cpu_ns() < until)
    ;
  weft_yield();
  return NULL;
}

typedef struct cpu_tally {
  uint64_t step_wall, step_cpu, open_time, open_cpu;
  int steps;
} cpu_tally_t;

static void cpu_event(const weft_trace_record_t *r, void *arg) {
  cpu_tally_t *c = arg;
  if (strcmp(r->task_name, "computer") != 0)
    return;
  if (r->ev.kind == WEFT_EV_STEP) {
    c->open_time = r->ev.time_ns;
    c->open_cpu = r->cpu_ns;
  } else if (r->ev.kind == WEFT_EV_PARK && c->steps++ == 0) {
    c->step_wall = r->ev.time_ns - c->open_time;
    c->step_cpu = r->cpu_ns - c->open_cpu;
  }
}

/* Each step slice carries its CPU time beside its wall time: a step that
 * computed 20 ms of CPU shows at least that much CPU, and never more CPU
 * than wall time (one thread). */
static void trace_cpu_time(void **state) {
  char path[] = "/tmp/weft-trace-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  setenv("WEFT_TRACE_CPU", "1", 1);
  assert_int_equal(weft_trace_start(path), 0);
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn_named(loop, compute_20ms, NULL, "computer", &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
  weft_trace_stop();
  cpu_tally_t c = {0};
  assert_int_equal(weft_trace_read(cpu_event, &c), 0);
  assert_true(c.steps >= 1);
  printf("step: wall %.3f ms, cpu %.3f ms\n", c.step_wall / 1e6, c.step_cpu / 1e6);
  assert_true(c.step_cpu >= 20000000u);
  assert_true(c.step_cpu <= c.step_wall + 1000000u);
  assert_int_equal(weft_trace_write(), 0);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static char text[1 << 20];
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  unlink(path);
  text[len] = 0;
  assert_non_null(strstr(text, "\"tdur\":"));
  assert_non_null(strstr(text, "\"cpu_us\":"));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(stats_add_up),
    cmocka_unit_test(stats_busy_and_parked),
    cmocka_unit_test(stats_refused_from_another_loop),
    cmocka_unit_test(names),
    cmocka_unit_test(slow_step_warning),
    cmocka_unit_test(dump_wait_states),
    cmocka_unit_test(dump_from_plain_thread),
    cmocka_unit_test(stall_line_while_step_runs),
    cmocka_unit_test(dump_names_the_holder),
    cmocka_unit_test(dump_uses_names),
    cmocka_unit_test(trace_json),
    cmocka_unit_test(trace_cpu_time),
};

WT_MAIN("observe", tests)
