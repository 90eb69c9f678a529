/* Fault and race tests: many tasks cancelled at random await points
 * (sleep, channel, stream read, connect) with descriptors back to their
 * baseline; a hundred thousand tasks run one after another on one reused
 * stack (and TSan fiber), in order and leaving nothing behind; a pool shut
 * down with ten thousand messages in flight, each either delivered or left
 * in the channel for its owner, none lost; a long ping-pong between two
 * loops with random delays under a watchdog; the signals the workers block
 * reaching only the application's thread of a process with eight loops; and
 * a fork from a running pool whose child runs a loop of its own and exits
 * cleanly.
 */
#include "testutil.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

/* A small, reproducible random sequence (xorshift). */
static uint32_t rnd(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* ------------------------------------------- cancel at random awaits */

#if defined(WEFT_TEST_TSAN)
/* TSan keeps at most 8128 fibers alive, and makes each in milliseconds: 6000
 * at once took 90 to 110 s of a 120 s bound on a loaded machine. 2000
 * still meet every kind of await many times over. */
#define NCANCEL 2000
#else
#define NCANCEL 10000
#endif
#define NPAIRS 100

typedef struct cancel_fix {
  weft_chan_t *ch;
  weft_listener_t *l;
  int port;
  weft_stream_t *streams[2 * NPAIRS];
  atomic_int ended, cancelled;
} cancel_fix_t;

typedef struct victim {
  cancel_fix_t *f;
  unsigned kind, index;
} victim_t;

static void *victim_main(void *arg) {
  victim_t *v = arg;
  cancel_fix_t *f = v->f;
  int rc = 0;
  /* None of these waits can end before the task is cancelled, however long
   * the tasks take to start (under TSan the round that starts them all took
   * over a minute once, longer than a sleep of 60 s). */
  switch (v->kind) {
  case 0:
    rc = weft_sleep(UINT64_MAX); /* due at the end of time: never */
    break;
  case 1: {
    void *m;
    rc = weft_chan_recv(f->ch, &m);
    break;
  }
  case 2: {
    char b;
    rc = (int)weft_stream_read(f->streams[v->index], &b, 1);
    break;
  }
  case 3: {
    weft_stream_t *s;
    rc = weft_tcp_connect(&s, "127.0.0.1", f->port);
    if (rc == 0) {
      /* Connected before the cancel came: wait for it here instead. */
      char b;
      rc = (int)weft_stream_read(s, &b, 1);
      weft_stream_close(s);
    }
    break;
  }
  }
  if (rc == WEFT_ECANCELED)
    atomic_fetch_add(&f->cancelled, 1);
  atomic_fetch_add(&f->ended, 1);
  return NULL;
}

static void *accept_pairs(void *arg) {
  cancel_fix_t *f = arg;
  for (int i = 0; i < NPAIRS; i++)
    if (weft_tcp_accept(f->l, &f->streams[NPAIRS + i]) != 0)
      return NULL;
  return NULL;
}

/* Accepts the victims' connects and keeps them, so they stay unread. */
static void *accept_and_hold(void *arg) {
  cancel_fix_t *f = arg;
  weft_stream_t *held[512];
  int n = 0;
  weft_stream_t *s;
  while (n < 512 && weft_tcp_accept(f->l, &s) == 0)
    held[n++] = s;
  for (int i = 0; i < n; i++)
    weft_stream_close(held[i]);
  return NULL;
}

static void *cancel_main(void *arg) {
  cancel_fix_t *f = arg;
  assert_int_equal(weft_chan_new(&f->ch, 1), 0);
  assert_int_equal(weft_tcp_listen(&f->l, "127.0.0.1", 0, NULL), 0);
  f->port = weft_listener_port(f->l);
  weft_task_t *acc;
  assert_int_equal(weft_spawn(NULL, accept_pairs, f, &acc), 0);
  for (int i = 0; i < NPAIRS; i++)
    assert_int_equal(weft_tcp_connect(&f->streams[i], "127.0.0.1", f->port), 0);
  assert_int_equal(weft_await(acc, NULL), 0);
  weft_task_release(acc);
  assert_int_equal(weft_spawn(NULL, accept_and_hold, f, &acc), 0);

  static victim_t v[NCANCEL];
  static weft_task_t *t[NCANCEL];
  unsigned nstream = 0, nconnect = 0;
  for (unsigned i = 0; i < NCANCEL; i++) {
    unsigned kind = i % 50 == 2 && nstream < 2 * NPAIRS ? 2 : i % 50 == 3 && nconnect < 200 ? 3 : i % 2;
    v[i] = (victim_t){.f = f, .kind = kind, .index = kind == 2 ? nstream++ : 0};
    nconnect += kind == 3;
    assert_int_equal(weft_spawn(NULL, victim_main, &v[i], &t[i]), 0);
  }
  /* Cancel in a shuffled order, letting the loop run a random number of
   * rounds now and then, so cancels meet tasks at every stage. */
  uint32_t seed = 12345;
  for (unsigned i = NCANCEL - 1; i > 0; i--) {
    unsigned j = rnd(&seed) % (i + 1);
    weft_task_t *tmp = t[i];
    t[i] = t[j];
    t[j] = tmp;
  }
  for (unsigned i = 0; i < NCANCEL; i++) {
    /* Every victim is still waiting, or has not started yet. */
    assert_int_equal(weft_task_cancel(t[i]), 0);
    if (rnd(&seed) % 64 == 0)
      for (unsigned k = rnd(&seed) % 4; k > 0; k--)
        weft_yield();
  }
  weft_gather(t, NCANCEL, NULL, NULL);
  for (unsigned i = 0; i < NCANCEL; i++) {
    assert_int_equal(weft_task_status(t[i]), WEFT_ECANCELED);
    weft_task_release(t[i]);
  }
  /* A task cancelled before its first step ends without running; every one
   * that ran saw its wait cancelled. */
  assert_true(atomic_load(&f->ended) <= NCANCEL);
  assert_int_equal(atomic_load(&f->cancelled), atomic_load(&f->ended));
  assert_int_equal(weft_listener_close(f->l), 0);
  weft_await(acc, NULL);
  weft_task_release(acc);
  for (int i = 0; i < 2 * NPAIRS; i++)
    weft_stream_close(f->streams[i]);
  weft_chan_release(f->ch);
  weft_stats_t st;
  weft_loop_stats(weft_loop_current(), &st);
  assert_int_equal(st.live, 1); /* this task only */
  return NULL;
}

static void cancel_at_random_awaits(void **state) {
  int fds = wt_count_fds();
  cancel_fix_t f;
  memset(&f, 0, sizeof f);
  assert_int_equal(weft_run(cancel_main, &f, NULL), 0);
  /* Most were cancelled in their wait, the others before they started. */
  assert_true(atomic_load(&f.cancelled) > NCANCEL / 2);
  assert_int_equal(wt_count_fds(), fds);
}

/* ------------------------------------------------ tasks on reused stacks */

/* Tasks that each end in their first step all run on the same warm stack,
 * one after the other, and under TSan as the same fiber (lib/stack.c). A
 * plain counter that each bumps, with only the scheduler between one task
 * and the next, checks that TSan sees each ordered after the one before. And
 * TSan keeps each fiber's call stack: were an ended task's frames left on
 * it, the next tasks would pile theirs on top, and TSan fails past 65536
 * frames, fewer than NREUSE tasks leave (two frames each, at the least). */
#define NREUSE 100000
#define REUSE_BATCH 100

static int reuse_count; /* plain, not atomic: TSan checks its order */

static void *reuse_step(void *arg) {
  (void)arg;
  reuse_count++;
  return NULL;
}

static void *reuse_main(void *arg) {
  (void)arg;
  weft_task_t *t[REUSE_BATCH];
  for (int i = 0; i < NREUSE; i += REUSE_BATCH) {
    for (int j = 0; j < REUSE_BATCH; j++)
      assert_int_equal(weft_spawn(NULL, reuse_step, NULL, &t[j]), 0);
    assert_int_equal(weft_gather(t, REUSE_BATCH, NULL, NULL), 0);
    for (int j = 0; j < REUSE_BATCH; j++)
      weft_task_release(t[j]);
  }
  return NULL;
}

static void tasks_on_reused_stacks(void **state) {
  (void)state;
  reuse_count = 0;
  assert_int_equal(weft_run(reuse_main, NULL, NULL), 0);
  assert_int_equal(reuse_count, NREUSE);
}

/* ---------------------------------------- shutdown with messages in flight */

#define NFLIGHT 10000

typedef struct flight {
  weft_chan_t *ch;
  atomic_int delivered;
  atomic_int sent;
} flight_t;

static void *flight_producer(void *arg) {
  flight_t *f = arg;
  for (int i = 0; i < NFLIGHT / 2; i++) {
    int *m = malloc(sizeof *m);
    *m = i;
    if (weft_chan_send(f->ch, m) != 0) {
      free(m);
      break;
    }
    atomic_fetch_add(&f->sent, 1);
    if (i % 97 == 0)
      weft_yield();
  }
  return NULL;
}

static void *flight_consumer(void *arg) {
  flight_t *f = arg;
  void *m;
  /* Slow: takes a message, yields; the pool shuts down meanwhile. */
  for (int i = 0; i < NFLIGHT / 4 && weft_chan_recv(f->ch, &m) == 0; i++) {
    free(m);
    atomic_fetch_add(&f->delivered, 1);
    weft_yield();
  }
  return NULL;
}

static void shutdown_with_messages_in_flight(void **state) {
  flight_t f;
  memset(&f, 0, sizeof f);
  assert_int_equal(weft_chan_new(&f.ch, NFLIGHT), 0);
  weft_pool_t *pool = wt_pool_of(2);
  for (unsigned i = 0; i < 2; i++) {
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), flight_producer, &f, NULL), 0);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, 1 - i), flight_consumer, &f, NULL), 0);
  }
  uv_sleep(5);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  /* What was sent and not delivered is still in the channel, for its
   * owner to take back. */
  int left = 0;
  void *m;
  while (weft_chan_try_recv(f.ch, &m) == 0) {
    free(m);
    left++;
  }
  assert_int_equal(atomic_load(&f.sent), NFLIGHT);
  assert_int_equal(atomic_load(&f.delivered) + left, NFLIGHT);
  weft_chan_release(f.ch);
}

/* ----------------------------------------------- ping-pong with delays */

#define NPING 100000

typedef struct pp {
  weft_chan_t *ping, *pong;
  uint32_t seed;
} pp_t;

static void maybe_delay(uint32_t *seed) {
  uint32_t r = rnd(seed) % 1000;
  if (r < 30)
    weft_yield();
  else if (r == 999)
    weft_sleep(1);
}

static void *ponger(void *arg) {
  pp_t *p = arg;
  uint32_t seed = p->seed + 1;
  void *m;
  while (weft_chan_recv(p->ping, &m) == 0) {
    maybe_delay(&seed);
    if (weft_chan_send(p->pong, (void *)((uintptr_t)m + 1)) != 0)
      break;
  }
  return NULL;
}

static void *pinger(void *arg) {
  pp_t *p = arg;
  uint32_t seed = p->seed;
  for (uintptr_t i = 0; i < NPING; i++) {
    void *m;
    if (weft_chan_send(p->ping, (void *)(2 * i)) != 0 || weft_chan_recv(p->pong, &m) != 0)
      return (void *)1;
    if ((uintptr_t)m != 2 * i + 1)
      return (void *)2;
    maybe_delay(&seed);
  }
  weft_chan_close(p->ping);
  return NULL;
}

static void *watchdog(void *arg) {
  atomic_int *done = arg;
  for (int i = 0; i < 100000 && !atomic_load(done); i++)
    uv_sleep(1);
  if (!atomic_load(done)) {
    fprintf(stderr, "watchdog: the ping-pong did not finish within 100 s\n");
    abort();
  }
  return NULL;
}

static void pingpong_random_delays(void **state) {
  pp_t p = {.seed = 777};
  assert_int_equal(weft_chan_new(&p.ping, 1), 0);
  assert_int_equal(weft_chan_new(&p.pong, 1), 0);
  weft_pool_t *pool = wt_pool_of(2);
  weft_task_t *t[2];
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), pinger, &p, &t[0]), 0);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), ponger, &p, &t[1]), 0);
  /* The watchdog: the round trips must finish within 100 s, or the test
   * fails saying so (rather than at ctest's timeout, silently). */
  pthread_t dog;
  atomic_int done;
  atomic_init(&done, 0);
  assert_int_equal(pthread_create(&dog, NULL, watchdog, &done), 0);
  void *r;
  assert_int_equal(weft_await(t[0], &r), 0);
  atomic_store(&done, 1);
  pthread_join(dog, NULL);
  assert_null(r);
  assert_int_equal(weft_await(t[1], NULL), 0);
  weft_task_release(t[0]);
  weft_task_release(t[1]);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  weft_chan_release(p.ping);
  weft_chan_release(p.pong);
}

/* ------------------------------------------------------------- signals */

static pthread_t g_main;
static atomic_int g_caught, g_elsewhere;

static void on_term(int sig) {
  (void)sig;
  if (pthread_equal(pthread_self(), g_main))
    atomic_fetch_add(&g_caught, 1);
  else
    atomic_fetch_add(&g_elsewhere, 1);
}

static void *busy_ms(void *arg) {
  double until = wt_now_ms() + (double)(uintptr_t)arg;
  while (wt_now_ms() < until)
    weft_yield();
  return NULL;
}

static void signals_reach_app_thread(void **state) {
  g_main = pthread_self();
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  assert_int_equal(sigaction(SIGTERM, &sa, &old), 0);
  weft_pool_t *pool = wt_pool_of(8);
  weft_task_t *t[8];
  for (unsigned i = 0; i < 8; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), busy_ms, (void *)300, &t[i]), 0);
  /* Process-directed, while all eight loops are busy. */
  for (int i = 0; i < 50; i++) {
    kill(getpid(), SIGTERM);
    uv_sleep(2);
  }
  weft_gather(t, 8, NULL, NULL);
  for (unsigned i = 0; i < 8; i++)
    weft_task_release(t[i]);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  sigaction(SIGTERM, &old, NULL);
  assert_true(atomic_load(&g_caught) > 0);
  assert_int_equal(atomic_load(&g_elsewhere), 0);
}

/* ----------------------------------------------------------------- fork */

static void count_event(const weft_trace_record_t *r, void *arg) {
  (void)r;
  (*(long *)arg)++;
}

static void *child_main(void *arg) {
  (void)arg;
  return weft_sleep(1) == 0 ? (void *)42 : NULL;
}

static void fork_from_running_pool(void **state) {
  /* Traced, so the parent's loops hold their trace locks all the time:
   * the fork must not leave one held in the child. */
  assert_int_equal(weft_trace_start(NULL), 0);
  weft_pool_t *pool = wt_pool_of(2);
  weft_task_t *t[2];
  for (unsigned i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), busy_ms, (void *)300, &t[i]), 0);
  uv_sleep(20);
  for (int k = 0; k < 5; k++) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      /* Only this thread exists here; the pool's loops stay the parent's.
       * A loop of the child's own works. */
      void *r = NULL;
      int rc = weft_run(child_main, NULL, &r);
      long events = 0;
      weft_trace_read(count_event, &events);
      _exit(rc == 0 && r == (void *)42 && events > 0 ? 0 : 1);
    }
    int status;
    double t0 = wt_now_ms();
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (wt_now_ms() - t0 > 10000) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("the forked child hung");
      }
      uv_sleep(1);
    }
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  weft_gather(t, 2, NULL, NULL);
  for (unsigned i = 0; i < 2; i++)
    weft_task_release(t[i]);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cancel_at_random_awaits),
    cmocka_unit_test(tasks_on_reused_stacks),
    cmocka_unit_test(shutdown_with_messages_in_flight),
    cmocka_unit_test(pingpong_random_delays),
    cmocka_unit_test(signals_reach_app_thread),
    cmocka_unit_test(fork_from_running_pool),
};

WT_MAIN("faults", tests)
