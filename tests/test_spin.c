/* Tests of weft_loop_opts_t.spin_us: a loop with nothing to run polls its
 * inbox for a while before it parks. A cross-loop ping-pong must still
 * complete (and mostly without wake-up rings), a loop left idle must still
 * park, a due timer or a stop from another thread must not wait for the
 * spin, and spin_us = 0 parks at once as before. The only timings asserted
 * are generous semantic ones: a spin that ignored its bounds would miss
 * them by a second or more. */
#include "testutil.h"

#include <sys/resource.h>

#define PP_ROUNDS 2000

typedef struct pp {
  weft_chan_t *ping, *pong;
  int rounds;
} pp_t;

static void *pp_server(void *arg) {
  pp_t *p = arg;
  void *msg;
  while (weft_chan_recv(p->ping, &msg) == 0)
    assert_int_equal(weft_chan_send(p->pong, msg), 0);
  return NULL;
}

static void *pp_client(void *arg) {
  pp_t *p = arg;
  void *msg;
  for (uintptr_t i = 0; i < PP_ROUNDS; i++) {
    assert_int_equal(weft_chan_send(p->ping, (void *)i), 0);
    assert_int_equal(weft_chan_recv(p->pong, &msg), 0);
    assert_true((uintptr_t)msg == i);
    p->rounds++;
  }
  weft_chan_close(p->ping);
  return NULL;
}

static weft_pool_t *pool_with_spin(unsigned spin_us) {
  weft_pool_t *pool = NULL;
  weft_pool_opts_t o;
  memset(&o, 0, sizeof o);
  o.workers = 2;
  o.loop.spin_us = spin_us;
  assert_int_equal(weft_pool_new(&pool, &o), 0);
  return pool;
}

/* Runs the ping-pong between the pool's loops 0 and 1; returns the rings
 * both loops were sent meanwhile. */
static uint64_t pingpong(weft_pool_t *pool) {
  pp_t p = {0};
  weft_stats_t before[2], after[2], sum;
  weft_task_t *t[2];
  int st[2];
  assert_int_equal(weft_chan_new(&p.ping, 1), 0);
  assert_int_equal(weft_chan_new(&p.pong, 1), 0);
  assert_int_equal(weft_pool_stats(pool, &sum, before), 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), pp_server, &p, &t[0]), 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), pp_client, &p, &t[1]), 0);
  assert_int_equal(weft_gather(t, 2, NULL, st), 0);
  assert_int_equal(st[0], 0);
  assert_int_equal(st[1], 0);
  assert_int_equal(p.rounds, PP_ROUNDS);
  weft_task_release(t[0]);
  weft_task_release(t[1]);
  assert_int_equal(weft_pool_stats(pool, &sum, after), 0);
  weft_chan_release(p.ping);
  weft_chan_release(p.pong);
  return after[0].wakeups_sent - before[0].wakeups_sent + after[1].wakeups_sent -
         before[1].wakeups_sent;
}

/* With a long spin window (100 ms: no round trip on a loaded machine or
 * under a sanitizer takes that long), nearly every message lands while its
 * loop spins, so it needs no ring: without the spin each of the 2 * 2000
 * messages finds its loop parked and rings it. */
static void spin_pingpong_skips_rings(void **state) {
  (void)state;
  weft_pool_t *pool = pool_with_spin(100000);
  uint64_t rings = pingpong(pool);
  assert_true(rings < PP_ROUNDS / 2);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* spin_us = 0 parks at once, as before the option: the same ping-pong
 * completes and rings parked loops. */
static void no_spin_pingpong_rings(void **state) {
  (void)state;
  weft_pool_t *pool = pool_with_spin(0);
  uint64_t rings = pingpong(pool);
  assert_true(rings >= 1);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* After the spin window a loop parks: left idle, its parked time grows,
 * and the next message from another thread has to ring it. weft_pool_stats
 * itself reaches each loop through its inbox, so the second call finds the
 * loops parked and rings both. An idle pool costs (almost) no CPU. */
static void idle_spinning_loop_parks(void **state) {
  (void)state;
  weft_pool_t *pool = pool_with_spin(1000);
  weft_stats_t a[2], b[2], sum;
  struct rusage r0, r1;
  (void)pingpong(pool);
  assert_int_equal(weft_pool_stats(pool, &sum, a), 0);
  double t0 = wt_now_ms();
  assert_int_equal(getrusage(RUSAGE_SELF, &r0), 0);
  uv_sleep(400);
  assert_int_equal(getrusage(RUSAGE_SELF, &r1), 0);
  double wall = wt_now_ms() - t0;
  assert_int_equal(weft_pool_stats(pool, &sum, b), 0);
  for (int i = 0; i < 2; i++) {
    assert_true(b[i].wakeups_sent > a[i].wakeups_sent);
    assert_true(b[i].wakeups_received > a[i].wakeups_received);
    /* Generous: ~400 ms parked; spinning all along would add none. */
    assert_true(b[i].parked_ns - a[i].parked_ns > 200u * 1000 * 1000);
  }
  double cpu_ms = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1e3 +
                  (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e3 +
                  (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e3 +
                  (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e3;
  /* Two loops spinning through it would use 2 * wall. */
  assert_true(cpu_ms < wall / 2);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A due timer does not wait for the spin: with the longest spin allowed
 * (1 s) a task's 10 ms sleeps still end in about 10 ms, since the spin
 * stops before the next timer is due. */
typedef struct sleeps {
  double worst_ms;
} sleeps_t;

static void *sleeper(void *arg) {
  sleeps_t *s = arg;
  for (int i = 0; i < 20; i++) {
    double t0 = wt_now_ms();
    assert_int_equal(weft_sleep(10), 0);
    double d = wt_now_ms() - t0;
    if (d > s->worst_ms)
      s->worst_ms = d;
  }
  return NULL;
}

static void spin_keeps_timers(void **state) {
  (void)state;
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL;
  weft_loop_opts_t o;
  sleeps_t s = {0};
  memset(&o, 0, sizeof o);
  o.spin_us = 1000000;
  assert_int_equal(weft_loop_new(&loop, &o), 0);
  assert_int_equal(weft_spawn(loop, sleeper, &s, &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
  assert_true(s.worst_ms >= 9.0);
  assert_true(s.worst_ms < 500.0);
}

/* A stop from another thread ends a spinning run_forever at once, not
 * after the spin. */
static void *stop_soon(void *arg) {
  uv_sleep(50);
  assert_int_equal(weft_loop_stop(arg), 0);
  return NULL;
}

static void stop_ends_spin(void **state) {
  (void)state;
  weft_loop_t *loop = NULL;
  weft_loop_opts_t o;
  pthread_t th;
  memset(&o, 0, sizeof o);
  o.spin_us = 1000000;
  assert_int_equal(weft_loop_new(&loop, &o), 0);
  double t0 = wt_now_ms();
  assert_int_equal(pthread_create(&th, NULL, stop_soon, loop), 0);
  assert_int_equal(weft_loop_run_forever(loop), 0);
  double took = wt_now_ms() - t0;
  pthread_join(th, NULL);
  assert_int_equal(weft_loop_close(loop), 0);
  assert_true(took < 900.0);
}

static void spin_us_limit(void **state) {
  (void)state;
  weft_loop_t *loop = NULL;
  weft_loop_opts_t o;
  memset(&o, 0, sizeof o);
  o.spin_us = 1000001;
  assert_int_equal(weft_loop_new(&loop, &o), WEFT_EINVAL);
  assert_null(loop);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(spin_pingpong_skips_rings),
    cmocka_unit_test(no_spin_pingpong_rings),
    cmocka_unit_test(idle_spinning_loop_parks),
    cmocka_unit_test(spin_keeps_timers),
    cmocka_unit_test(stop_ends_spin),
    cmocka_unit_test(spin_us_limit),
};

WT_MAIN("spin", tests)
