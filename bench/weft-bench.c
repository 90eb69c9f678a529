/* weft-bench: the figures `./run bench` prints.
 *
 * Every figure is one line `name value unit`; lines starting with '#' say how
 * it was measured (how many runs, which statistic) and what it includes.
 *
 *   switch_floor_ns     a bare context switch written here (floor_switch.S):
 *                       callee-saved registers and the stack pointer, no more
 *   switch_ns           weft's own switch (weft__ctx_switch from lib/), timed
 *                       the same way, and switch_vs_floor, their ratio
 *   coro_switch_ns      the same through weft__coro_switch, the wrapper tasks
 *                       really switch through (sanitizer hooks compiled out)
 *   trace_event_ns      what recording one trace event costs: the same
 *                       yields on a loop that traces, less yield_ns, per
 *                       event (three a yield: the round, the step, the park)
 *   yield_ns            one weft_yield of the only task on a loop: a
 *                       scheduling round (and a libuv poll every 32nd) with
 *                       no switch; yield_vs_floor, its ratio to the floor
 *   yield_pair_ns       one weft_yield of either of two tasks that yield in
 *                       turn: one switch, straight to the other task
 *   spawn_ns            spawn, run and end of an empty detached task with a
 *                       warm stack pool
 *   gather_100k_ms      100k tasks that sleep 100 ms, gathered
 *   rss_per_task_bytes  resident memory per sleeping task in that run
 *
 * Synchronisation, in one task on one loop, nothing ever waiting:
 *
 *   sem_ns              weft_sem_acquire + weft_sem_post of a semaphore with
 *                       one permit
 *   mutex_ns            weft_mutex_lock + weft_mutex_unlock
 *   chan_try_pair_ns    weft_chan_try_recv of one message + weft_chan_try_send
 *                       of it back, on two channels that always hold messages
 *                       (alternately one and the other)
 *   select2_ns          weft_select (WEFT_FOREVER) over RECV cases on those
 *                       two channels, both always ready, + weft_chan_try_send
 *                       of the message back to the channel it came from: the
 *                       same refill, so select2_vs_try_pair, their ratio,
 *                       compares one select over 2 with one try_recv.
 *                       `./run bench` prints Go's select over 2 ready
 *                       buffered channels timed the same way beside it
 *                       (bench/go/select.go, go_select2_ns)
 *
 * Across loops, on the pool's worker threads:
 *
 *   chan_msgs_per_s_cap64, chan_msgs_per_s_cap1024
 *                       messages a second through one channel of that
 *                       capacity from a task on one loop to a task on another
 *   chan_busy_msgs_per_s_cap1024
 *                       the same while a spinning task keeps each loop busy
 *   pingpong_rtt_us     a round trip between tasks of two loops through two
 *                       channels of capacity 1, the loops parking meanwhile
 *   pingpong_spin_rtt_us  the same with loops made with spin_us = 50: an
 *                       idle loop polls its inbox for 50 us before parking
 *   idle_spin_pool_cpu_pct
 *                       CPU used by that idle pool of 2 spinning loops over
 *                       1 s after a ping-pong (getrusage, process-wide), in
 *                       percent of one CPU
 *   pingpong_busy_rtt_us  the same with both loops kept busy
 *   sem_pingpong_busy_rtt_us
 *                       the same round trip through two semaphores (post one,
 *                       acquire the other), both loops busy, runs alternating
 *                       with pingpong_busy_rtt_us's, and sem_vs_chan_pingpong,
 *                       their ratio
 *   wakeup_us           weft_loop_call_soon from a plain thread to a parked
 *                       loop until the callback runs (median), beside
 *   eventfd_wakeup_us   the floor: a thread in epoll_wait woken through an
 *                       eventfd, same run, and wakeup_vs_eventfd, their ratio
 *   remote_spawn_ns     the spawning side's cost of weft_spawn onto a pool's
 *                       loop from a plain thread
 *
 * The memory run goes first, while the process is fresh, so no memory freed
 * by an earlier run can hide what the tasks cost; the figures are printed in
 * the order above once everything has run. Timed loops repeat and keep the
 * minimum (noise on an idle core only ever adds time); the median is given
 * in the comment beside it. The switch figures use internal functions of the
 * static library, so this bench links weft_static and sees lib/internal.h.
 * The single-thread figures run pinned to one CPU; the figures across loops
 * come last and run unpinned, since they need both cores.
 */
#define _GNU_SOURCE

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#if defined(WEFT_BENCH_HAVE_CTX)
#include "internal.h"
#endif

/* CMake compiles floor_switch.S for the processors it has code for and says
 * so with WEFT_BENCH_FLOOR. The raw switches are meaningless (and confuse
 * the tools) in a sanitizer build, and so is the floor. */
#if defined(WEFT_BENCH_FLOOR) && !defined(WEFT_BENCH_SANITIZED) && \
    (defined(__x86_64__) || defined(__aarch64__))
#define HAVE_FLOOR 1
#endif
#if defined(WEFT_BENCH_SANITIZED)
#undef WEFT_BENCH_HAVE_CTX
#endif

#define RUNS 7
#define SWITCH_RUNS 15
#define SWITCH_ROUNDS 1000000u   /* round trips per run: 2e6 switches */
#define YIELDS 200000u
#define SPAWN_BATCH 1000u
#define SPAWN_BATCHES 140u       /* 140k tasks a run, ~1e6 over the runs */
#define GATHER_TASKS 100000u
#define GATHER_SLEEP_MS 100u
#define PROBE_SLEEP_MS 50u
#define GATHER_RUNS 3
#define STACK_BYTES (64u * 1024u)
#define XRUNS 5                  /* runs of each figure across loops */
#define CHAN_RUN_S 0.1           /* seconds a channel run lasts */
#define PINGPONG_WARMUP 100u     /* round trips before each timed run */
#define PINGPONG_RUN_S 0.1       /* seconds a ping-pong run lasts */
#define PINGPONG_SPIN_US 50u      /* spin_us of pingpong_spin_rtt_us's loops */
#define WAKE_SAMPLES 2000
#define WAKE_GAP_US 200          /* sleep after each wake-up sample */
#define REMOTE_SPAWNS 100000u
#define SYNC_OPS 1000000u        /* pairs a run, synchronisation figures */
#define SELECT_CAP 64u           /* capacity of the two select channels */
#define SELECT_FILL 8u           /* messages each always holds */

static void die(const char *what, int err) {
  fprintf(stderr, "weft-bench: %s: %s\n", what, weft_strerror(err));
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Sorts v and returns the minimum; *median gets the median. */
static double min_median(double *v, size_t n, double *median) {
  qsort(v, n, sizeof v[0], cmp_double);
  *median = v[n / 2];
  return v[0];
}

#if defined(HAVE_FLOOR) || defined(WEFT_BENCH_HAVE_CTX)
static void *map_stack(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("weft-bench: mmap");
    exit(1);
  }
  return p;
}
#endif

/* Resident bytes of the whole process, from the kernel's page counts. */
static long long read_rss(void) {
  long long size = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL)
    return -1;
  if (fscanf(f, "%lld %lld", &size, &resident) != 2)
    resident = -1;
  fclose(f);
  return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

/* A channel figure: see bench_chan. */
typedef struct chan_fig {
  double best, median; /* msgs/s */
  double rings;        /* wake-ups of a parked loop per 1000 messages */
  size_t n;            /* messages in all the timed runs */
} chan_fig_t;

/* Results, printed at the end in the order of the file's opening comment. */
static struct {
  int cpu;  /* the CPU the bench is pinned to, or -1 */
  double floor_ns, floor_med;
  double ctx_ns, ctx_med;
  double coro_ns, coro_med;
  double yield_ns, yield_med, yield_switches, yield_rounds;
  double yield_traced_ns, yield_traced_med;
  double pair_ns, pair_med, pair_switches;
  double spawn_ns, spawn_med;
  double gather_ms, gather_med;
  double rss_per_task;
  long long rss_before, rss_during;
  size_t rss_live;
  const char *rss_when;
  double all_started_ms;
  double sem_ns, sem_med, mutex_ns, mutex_med;
  double try_pair_ns, try_pair_med, select2_ns, select2_med;
  double select2_ratio, select2_ratio_med; /* per run, select2 / try pair */
  chan_fig_t chan64, chan1024, chanbusy;
  double pp_us, pp_med, ppbusy_us, ppbusy_med, ppspin_us, ppspin_med;
  size_t pp_n, ppbusy_n, ppspin_n;
  double idle_cpu_pct, idle_parked_pct;
  double sempp_us, sempp_med, sempp_ratio, sempp_ratio_med;
  size_t sempp_n;
  double wake_us, wake_min, wake_p90, efd_us, efd_min, efd_p90;
  double rspawn_ns, rspawn_med, rspawn_done_ns, rspawn_done_med;
} R;

/* ------------------------------------------------------- the switches */

/* Each switch is timed as a ping-pong between the main stack and one other
 * context that switches straight back, forever: a round trip is two
 * switches. The runs of the floor and of weft's switches alternate, so a
 * change of clock speed or a noisy neighbour hits all of them alike. */

#if defined(HAVE_FLOOR)
void bench_floor_switch(void **save_sp, void *to_sp);

static void *floor_main_sp, *floor_co_sp;

static void floor_entry(void) {
  for (;;)
    bench_floor_switch(&floor_co_sp, floor_main_sp);
}

/* Lays out a fresh context on [lo, lo + size) as floor_switch.S expects:
 * zeroed callee-saved registers with floor_entry where the switch returns. */
static void floor_make(void *lo, size_t size) {
  uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
#if defined(__x86_64__)
  /* Six registers, the entry as return address, then a zero return address
   * for the entry itself: it starts with rsp % 16 == 8, as after a call. */
  uintptr_t *sp = (uintptr_t *)top;
  *--sp = 0;
  *--sp = (uintptr_t)floor_entry;
  for (int i = 0; i < 6; i++)
    *--sp = 0;
  floor_co_sp = sp;
#else
  /* A 160-byte frame of zeros with x30 (offset 88) holding the entry. */
  uintptr_t *sp = (uintptr_t *)(top - 160);
  memset(sp, 0, 160);
  sp[11] = (uintptr_t)floor_entry;
  floor_co_sp = sp;
#endif
}

/* noinline keeps each timed loop the same code whatever calls it. */
__attribute__((noinline)) static double time_floor(unsigned rounds) {
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < rounds; i++)
    bench_floor_switch(&floor_main_sp, floor_co_sp);
  return (double)(uv_hrtime() - t0) / (2.0 * rounds);
}
#endif

#if defined(WEFT_BENCH_HAVE_CTX)
static weft__ctx_t ctx_main, ctx_co;
static weft__coro_t coro_main, coro_co;

static void ctx_entry(void) {
  for (;;)
    weft__ctx_switch(&ctx_co, &ctx_main);
}

static void coro_entry(void) {
  weft__coro_started(&coro_co, &coro_main);
  for (;;)
    weft__coro_switch(&coro_co, &coro_main);
}

__attribute__((noinline)) static double time_ctx(unsigned rounds) {
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < rounds; i++)
    weft__ctx_switch(&ctx_main, &ctx_co);
  return (double)(uv_hrtime() - t0) / (2.0 * rounds);
}

__attribute__((noinline)) static double time_coro(unsigned rounds) {
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < rounds; i++)
    weft__coro_switch(&coro_main, &coro_co);
  return (double)(uv_hrtime() - t0) / (2.0 * rounds);
}
#endif

static void bench_switches(void) {
#if defined(HAVE_FLOOR) || defined(WEFT_BENCH_HAVE_CTX)
  double vf[SWITCH_RUNS], vc[SWITCH_RUNS], vk[SWITCH_RUNS];
  void *stacks[3];

  for (int i = 0; i < 3; i++)
    stacks[i] = map_stack(STACK_BYTES);
#if defined(HAVE_FLOOR)
  floor_make(stacks[0], STACK_BYTES);
#endif
#if defined(WEFT_BENCH_HAVE_CTX)
  weft__stack_t st;
  weft__ctx_make(&ctx_co, stacks[1], STACK_BYTES, ctx_entry);
  /* The coroutine layer wants a stack record; only its bounds are read. */
  memset(&st, 0, sizeof st);
  st.lo = stacks[2];
  st.size = STACK_BYTES;
  weft__coro_init_thread(&coro_main);
  weft__coro_init(&coro_co, &st, coro_entry);
#endif
  /* The first pass warms caches and branch predictors and is not kept. */
  for (int r = -1; r < SWITCH_RUNS; r++) {
    unsigned n = r < 0 ? SWITCH_ROUNDS / 10 : SWITCH_ROUNDS;
#if defined(HAVE_FLOOR)
    double f = time_floor(n);
#else
    double f = 0;
#endif
#if defined(WEFT_BENCH_HAVE_CTX)
    double c = time_ctx(n), k = time_coro(n);
#else
    double c = 0, k = 0;
#endif
    if (r >= 0) {
      vf[r] = f;
      vc[r] = c;
      vk[r] = k;
    }
  }
  R.floor_ns = min_median(vf, SWITCH_RUNS, &R.floor_med);
  R.ctx_ns = min_median(vc, SWITCH_RUNS, &R.ctx_med);
  R.coro_ns = min_median(vk, SWITCH_RUNS, &R.coro_med);
#if defined(WEFT_BENCH_HAVE_CTX)
  weft__coro_destroy(&coro_co);
#endif
  /* The other contexts are abandoned mid-switch; their stacks hold nothing
   * that needs unwinding. */
  for (int i = 0; i < 3; i++)
    munmap(stacks[i], STACK_BYTES);
#endif
}

/* ------------------------------------------------------------------ yield */

static void *yield_main(void *arg) {
  double v[RUNS];
  weft_stats_t s0, s1;
  weft_loop_t *loop = weft_loop_current();
  int err;
  (void)arg;

  for (unsigned i = 0; i < YIELDS / 10; i++)
    if ((err = weft_yield()) != 0)
      die("weft_yield", err);
  weft_loop_stats(loop, &s0);
  for (int r = 0; r < RUNS; r++) {
    uint64_t t0 = uv_hrtime();
    for (unsigned i = 0; i < YIELDS; i++)
      weft_yield();
    v[r] = (double)(uv_hrtime() - t0) / YIELDS;
  }
  weft_loop_stats(loop, &s1);
  R.yield_ns = min_median(v, RUNS, &R.yield_med);
  R.yield_switches = (double)(s1.switches - s0.switches) / ((double)YIELDS * RUNS);
  R.yield_rounds = (double)(s1.rounds - s0.rounds) / ((double)YIELDS * RUNS);
  return NULL;
}

/* Two tasks that yield in turn, the figure per yield: each yield switches
 * straight to the other task (loop.c's step_leave), not through the loop. */
static void *pair_partner(void *arg) {
  const int *stop = arg;
  while (!*stop)
    weft_yield();
  return NULL;
}

static void *yield_pair_main(void *arg) {
  double v[RUNS];
  weft_stats_t s0, s1;
  weft_loop_t *loop = weft_loop_current();
  weft_task_t *partner;
  int stop = 0, err;
  (void)arg;
  if ((err = weft_spawn(NULL, pair_partner, &stop, &partner)) != 0)
    die("weft_spawn", err);
  for (unsigned i = 0; i < YIELDS / 10; i++)
    weft_yield();
  weft_loop_stats(loop, &s0);
  for (int r = 0; r < RUNS; r++) {
    uint64_t t0 = uv_hrtime();
    for (unsigned i = 0; i < YIELDS; i++)
      weft_yield();
    v[r] = (double)(uv_hrtime() - t0) / (2.0 * YIELDS);
  }
  weft_loop_stats(loop, &s1);
  stop = 1;
  if ((err = weft_await(partner, NULL)) != 0)
    die("weft_await", err);
  weft_task_release(partner);
  R.pair_ns = min_median(v, RUNS, &R.pair_med);
  /* Context switches a round of two yields: the steps less those that
   * went on without one (none here: the other task is always ready). */
  R.pair_switches = (double)(s1.switches - s0.switches) / ((double)YIELDS * RUNS);
  return NULL;
}

/* The same yields on a loop made while tracing is on (weft_trace_start):
 * each yield records three events, the round, the step and the park. */
static void *yield_traced_main(void *arg) {
  double v[RUNS];
  (void)arg;
  for (unsigned i = 0; i < YIELDS / 10; i++)
    weft_yield();
  for (int r = 0; r < RUNS; r++) {
    uint64_t t0 = uv_hrtime();
    for (unsigned i = 0; i < YIELDS; i++)
      weft_yield();
    v[r] = (double)(uv_hrtime() - t0) / YIELDS;
  }
  R.yield_traced_ns = min_median(v, RUNS, &R.yield_traced_med);
  return NULL;
}

/* ------------------------------------------------------------------ spawn */

static unsigned long g_ran;

static void *empty_task(void *arg) {
  (void)arg;
  g_ran++;
  return NULL;
}

/* Spawns `batches` batches of empty detached tasks; after each batch the
 * spawner yields until the whole batch has run (they are queued ahead of it,
 * so one yield is normally enough). Returns ns per task. */
static double spawn_batches(unsigned batches) {
  uint64_t t0 = uv_hrtime();
  for (unsigned b = 0; b < batches; b++) {
    unsigned long target = g_ran + SPAWN_BATCH;
    for (unsigned i = 0; i < SPAWN_BATCH; i++) {
      int err = weft_spawn(NULL, empty_task, NULL, NULL);
      if (err != 0)
        die("weft_spawn", err);
    }
    while (g_ran < target)
      weft_yield();
  }
  return (double)(uv_hrtime() - t0) / ((double)batches * SPAWN_BATCH);
}

static void *spawn_main(void *arg) {
  double v[RUNS];
  (void)arg;
  /* The first batches fault in the stacks the pool keeps warm. */
  spawn_batches(20);
  for (int r = 0; r < RUNS; r++)
    v[r] = spawn_batches(SPAWN_BATCHES);
  R.spawn_ns = min_median(v, RUNS, &R.spawn_med);
  return NULL;
}

/* -------------------------------------------------- synchronisation */

/* Uncontended: one task on one loop, so nothing ever waits and each figure
 * is the fast path alone. The calls' statuses are OR-ed together and
 * checked after the timed loop, so checking costs no branch inside it (but
 * for select's index, which is used at once). */

__attribute__((noinline)) static double time_sem(weft_sem_t *sem, unsigned n) {
  int err = 0;
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < n; i++) {
    err |= weft_sem_acquire(sem);
    err |= weft_sem_post(sem);
  }
  uint64_t t1 = uv_hrtime();
  if (err != 0)
    die("weft_sem_acquire / weft_sem_post", err);
  return (double)(t1 - t0) / n;
}

__attribute__((noinline)) static double time_mutex(weft_mutex_t *mu, unsigned n) {
  int err = 0;
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < n; i++) {
    err |= weft_mutex_lock(mu);
    err |= weft_mutex_unlock(mu);
  }
  uint64_t t1 = uv_hrtime();
  if (err != 0)
    die("weft_mutex_lock / weft_mutex_unlock", err);
  return (double)(t1 - t0) / n;
}

/* The baseline of select2: a try_recv from one of the two channels and the
 * try_send that puts the message back, alternating between them, so each
 * keeps SELECT_FILL messages. */
__attribute__((noinline)) static double time_try_pair(weft_chan_t **ch, unsigned n) {
  int err = 0;
  void *msg;
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < n; i++) {
    weft_chan_t *c = ch[i & 1];
    err |= weft_chan_try_recv(c, &msg);
    err |= weft_chan_try_send(c, msg);
  }
  uint64_t t1 = uv_hrtime();
  if (err != 0)
    die("weft_chan_try_recv / weft_chan_try_send", err);
  return (double)(t1 - t0) / n;
}

/* One select over the two channels, both ready, then the same try_send of
 * the message back to the channel it came from. */
__attribute__((noinline)) static double time_select2(weft_chan_t **ch, unsigned n) {
  weft_select_case_t cases[2];
  unsigned bad = 0;
  int err = 0;

  memset(cases, 0, sizeof cases);
  for (int k = 0; k < 2; k++) {
    cases[k].op = WEFT_SELECT_RECV;
    cases[k].chan = ch[k];
  }
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < n; i++) {
    int k = weft_select(cases, 2, WEFT_FOREVER);
    if ((unsigned)k > 1u) /* an error; stop before indexing with it */
      die("weft_select", k);
    bad |= (unsigned)cases[k].err;
    err |= weft_chan_try_send(ch[k], cases[k].msg);
  }
  uint64_t t1 = uv_hrtime();
  if (bad != 0)
    die("weft_select (a case's err)", (int)bad);
  if (err != 0)
    die("weft_chan_try_send (select refill)", err);
  return (double)(t1 - t0) / n;
}

/* Runs of the four alternate, like the switches', so a change of clock
 * speed or a neighbour's load hits them alike, and select2's ratio to the
 * try pair is taken within each run. */
static void *sync_main(void *arg) {
  double vs[RUNS], vm[RUNS], vt[RUNS], vx[RUNS], vr[RUNS];
  weft_sem_t *sem;
  weft_mutex_t *mu;
  weft_chan_t *ch[2];
  void *msg;
  int err;
  (void)arg;

  if ((err = weft_sem_new(&sem, 1)) != 0)
    die("weft_sem_new", err);
  if ((err = weft_mutex_new(&mu)) != 0)
    die("weft_mutex_new", err);
  for (int k = 0; k < 2; k++) {
    if ((err = weft_chan_new(&ch[k], SELECT_CAP)) != 0)
      die("weft_chan_new", err);
    for (uintptr_t i = 0; i < SELECT_FILL; i++)
      if ((err = weft_chan_try_send(ch[k], (void *)i)) != 0)
        die("weft_chan_try_send (fill)", err);
  }
  /* The first pass warms up and is not kept. */
  for (int r = -1; r < RUNS; r++) {
    unsigned n = r < 0 ? SYNC_OPS / 10 : SYNC_OPS;
    double s = time_sem(sem, n), m = time_mutex(mu, n);
    double t = time_try_pair(ch, n), x = time_select2(ch, n);
    if (r >= 0) {
      vs[r] = s;
      vm[r] = m;
      vt[r] = t;
      vx[r] = x;
      vr[r] = x / t;
    }
  }
  R.sem_ns = min_median(vs, RUNS, &R.sem_med);
  R.mutex_ns = min_median(vm, RUNS, &R.mutex_med);
  R.try_pair_ns = min_median(vt, RUNS, &R.try_pair_med);
  R.select2_ns = min_median(vx, RUNS, &R.select2_med);
  min_median(vr, RUNS, &R.select2_ratio_med);
  R.select2_ratio = R.select2_ns / R.try_pair_ns;
  for (int k = 0; k < 2; k++) {
    unsigned left = 0;
    weft_chan_close(ch[k]);
    while (weft_chan_try_recv(ch[k], &msg) == 0)
      left++;
    if (left != SELECT_FILL) {
      fprintf(stderr, "weft-bench: a select channel ended with %u messages, not %u\n", left,
              SELECT_FILL);
      exit(1);
    }
    weft_chan_release(ch[k]);
  }
  if ((err = weft_mutex_free(mu)) != 0 || (err = weft_sem_free(sem)) != 0)
    die("weft_mutex_free / weft_sem_free", err);
  return NULL;
}

/* ------------------------------------------------- gather 100k, and RSS */

static size_t g_started, g_ended;
static uint64_t g_all_started_ns;
static long long g_rss_at_start, g_rss_at_wake;
static size_t g_live_at_start, g_live_at_wake;

static void *sleeper(void *arg) {
  (void)arg;
  g_started++;
  weft_sleep(GATHER_SLEEP_MS);
  g_ended++;
  return NULL;
}

/* Spawned after every sleeper, so its first step comes after all of theirs
 * (the ready queue is FIFO) and before any of them can have ended (wakes
 * only come from the poll after the round). It reads RSS there, and again
 * after its own sleep, as the figure asks; it counts the tasks alive at each
 * reading rather than assuming, since on a slow machine starting 100k tasks
 * can outlast their 100 ms sleep. */
static void *probe(void *arg) {
  (void)arg;
  g_all_started_ns = uv_hrtime();
  g_rss_at_start = read_rss();
  g_live_at_start = g_started - g_ended;
  weft_sleep(PROBE_SLEEP_MS);
  g_rss_at_wake = read_rss();
  g_live_at_wake = g_started - g_ended;
  return NULL;
}

typedef struct gather_run {
  weft_task_t **tasks;  /* allocated and touched before the baseline */
  double ms;
  double all_started_ms;  /* from the first spawn to the probe's first step */
  long long rss_before;
} gather_run_t;

static void *gather_main(void *arg) {
  gather_run_t *g = arg;
  weft_task_t *probe_task;
  uint64_t t0;
  int err;

  g_started = g_ended = 0;
  g->rss_before = read_rss();
  t0 = uv_hrtime();
  for (size_t i = 0; i < GATHER_TASKS; i++)
    if ((err = weft_spawn(NULL, sleeper, NULL, &g->tasks[i])) != 0)
      die("weft_spawn (gather)", err);
  if ((err = weft_spawn(NULL, probe, NULL, &probe_task)) != 0)
    die("weft_spawn (probe)", err);
  if ((err = weft_gather(g->tasks, GATHER_TASKS, NULL, NULL)) != 0)
    die("weft_gather", err);
  g->ms = (double)(uv_hrtime() - t0) / 1e6;
  g->all_started_ms = (double)(g_all_started_ns - t0) / 1e6;
  weft_await(probe_task, NULL);
  weft_task_release(probe_task);
  for (size_t i = 0; i < GATHER_TASKS; i++)
    weft_task_release(g->tasks[i]);
  return NULL;
}

static void bench_gather(void) {
  double v[GATHER_RUNS];
  gather_run_t g;
  int err;

  g.tasks = calloc(GATHER_TASKS, sizeof g.tasks[0]);
  if (g.tasks == NULL)
    die("calloc", WEFT_ENOMEM);
  memset(g.tasks, 0xff, GATHER_TASKS * sizeof g.tasks[0]);
  for (int r = 0; r < GATHER_RUNS; r++) {
    if ((err = weft_run(gather_main, &g, NULL)) != 0)
      die("weft_run (gather)", err);
    v[r] = g.ms;
    /* Only the first run's memory counts: later ones may reuse memory the
     * process already holds, which would hide what the tasks cost. */
    if (r == 0) {
      /* The reading after the probe's sleep if every task was still
       * alive then, else the one taken when all had just started. */
      int late = g_live_at_wake == GATHER_TASKS;
      R.rss_before = g.rss_before;
      R.rss_during = late ? g_rss_at_wake : g_rss_at_start;
      R.rss_live = late ? g_live_at_wake : g_live_at_start;
      R.rss_when = late ? "after the probe's 50 ms sleep"
                        : "when all had started (by 50 ms some had ended)";
      R.rss_per_task = R.rss_live > 0 && R.rss_during > 0
                           ? (double)(R.rss_during - R.rss_before) / (double)R.rss_live
                           : -1;
      R.all_started_ms = g.all_started_ms;
    }
  }
  R.gather_ms = min_median(v, GATHER_RUNS, &R.gather_med);
  free(g.tasks);
}

/* ------------------------------------------------- across loops: setup */

/* The cross-thread figures need both cores: the bench's own pinning is
 * undone for them, and the pools they start inherit the mask of the thread
 * that creates them, so they are started only after that. */
static cpu_set_t g_all_cpus;
static int g_have_all_cpus, g_unpinned;

static weft_pool_t *start_pool_spin(unsigned workers, unsigned spin_us) {
  weft_pool_opts_t opts;
  weft_pool_t *pool;
  int err;

  memset(&opts, 0, sizeof opts);
  opts.workers = workers;
  opts.loop.stack_size = STACK_BYTES;
  opts.loop.spin_us = spin_us;
  if ((err = weft_pool_new(&pool, &opts)) != 0)
    die("weft_pool_new", err);
  return pool;
}

static weft_pool_t *start_pool(unsigned workers) {
  return start_pool_spin(workers, 0);
}

static void stop_pool(weft_pool_t *pool) {
  int err = weft_pool_shutdown(pool, WEFT_DRAIN);
  if (err != 0)
    die("weft_pool_shutdown", err);
}

static weft_task_t *spawn_on(weft_loop_t *loop, weft_fn fn, void *arg) {
  weft_task_t *t;
  int err = weft_spawn(loop, fn, arg, &t);
  if (err != 0)
    die("weft_spawn (across loops)", err);
  return t;
}

/* main is a plain thread: weft_gather blocks it until both tasks end. */
static void gather_two(weft_task_t *a, weft_task_t *b) {
  weft_task_t *t[2] = {a, b};
  int status[2], err;

  if ((err = weft_gather(t, 2, NULL, status)) != 0)
    die("weft_gather (across loops)", err);
  weft_task_release(a);
  weft_task_release(b);
}

/* Rings the task's own loop answered so far (weft_loop_stats is
 * loop-bound, so each task reads its own loop's). */
static uint64_t own_wakeups(void) {
  weft_stats_t s;
  weft_loop_stats(weft_loop_current(), &s);
  return s.wakeups_received;
}

/* A task that keeps its loop busy: it only yields, so the loop always has
 * a task ready and never parks in its poll. */
static void *spinner(void *arg) {
  atomic_int *stop = arg;
  while (!atomic_load_explicit(stop, memory_order_relaxed))
    weft_yield();
  return NULL;
}

/* ------------------------------------------------ channel throughput */

typedef struct chan_run {
  weft_chan_t *ch;
  size_t n;
  uint64_t t_first_send, t_last_recv;
  uint64_t rings_producer, rings_consumer; /* each loop's wake-ups in the run */
  size_t received;
  size_t out_of_order;
} chan_run_t;

/* The producer sends for CHAN_RUN_S, then closes the channel; like the
 * ping-pong, a run lasts a time rather than a count, so a slow case cannot
 * stretch the bench. */
static void *chan_producer(void *arg) {
  chan_run_t *c = arg;
  uint64_t w0 = own_wakeups(), until;
  uintptr_t i = 0;
  int err;

  c->t_first_send = uv_hrtime();
  until = c->t_first_send + (uint64_t)(CHAN_RUN_S * 1e9);
  do {
    for (uintptr_t end = i + 256; i < end; i++)
      if ((err = weft_chan_send(c->ch, (void *)i)) != 0)
        die("weft_chan_send", err);
  } while (uv_hrtime() < until);
  c->n = i;
  weft_chan_close(c->ch);
  c->rings_producer = own_wakeups() - w0;
  return NULL;
}

/* Receives until the close; the run ends when the consumer sees it, right
 * after the last message (or a wake-up later, if it had to wait for it). */
static void *chan_consumer(void *arg) {
  chan_run_t *c = arg;
  uint64_t w0 = own_wakeups();
  uintptr_t i = 0;
  void *msg;
  int err;

  while ((err = weft_chan_recv(c->ch, &msg)) == 0) {
    if ((uintptr_t)msg != i)
      c->out_of_order++;
    i++;
  }
  c->t_last_recv = uv_hrtime();
  if (err != WEFT_ECLOSED)
    die("weft_chan_recv", err);
  c->received = i;
  c->rings_consumer = own_wakeups() - w0;
  return NULL;
}

/* One run: the consumer is spawned first, so it is waiting when the first
 * message comes. busy: a spinner on each loop keeps it from parking. */
static void chan_once(weft_pool_t *pool, size_t capacity, int busy, chan_run_t *c) {
  weft_task_t *spin[2] = {NULL, NULL};
  atomic_int stop;
  int err;

  memset(c, 0, sizeof *c);
  atomic_init(&stop, 0);
  if ((err = weft_chan_new(&c->ch, capacity)) != 0)
    die("weft_chan_new", err);
  if (busy)
    for (unsigned i = 0; i < 2; i++)
      spin[i] = spawn_on(weft_pool_loop(pool, i), spinner, &stop);
  weft_task_t *cons = spawn_on(weft_pool_loop(pool, 1), chan_consumer, c);
  weft_task_t *prod = spawn_on(weft_pool_loop(pool, 0), chan_producer, c);
  gather_two(prod, cons);
  atomic_store(&stop, 1);
  if (busy)
    gather_two(spin[0], spin[1]);
  weft_chan_release(c->ch);
  if (c->out_of_order != 0 || c->received != c->n) {
    fprintf(stderr, "weft-bench: of %zu messages sent, %zu were received, %zu out of order\n",
            c->n, c->received, c->out_of_order);
    exit(1);
  }
}

/* One channel of the given capacity between loop 0 (the producer) and
 * loop 1 (the consumer) of a pool of two. */
static void bench_chan(size_t capacity, int busy, chan_fig_t *f) {
  double v[XRUNS], best_rate = 0;
  weft_pool_t *pool = start_pool(2);
  chan_run_t c;

  f->n = 0;
  for (int r = -1; r < XRUNS; r++) {
    chan_once(pool, capacity, busy, &c);
    if (r < 0)
      continue; /* the first run warms up and is not kept */
    v[r] = (double)c.n / ((double)(c.t_last_recv - c.t_first_send) / 1e9);
    f->n += c.n;
    if (v[r] > best_rate) {
      best_rate = v[r];
      f->rings = 1000.0 * (double)(c.rings_producer + c.rings_consumer) / (double)c.n;
    }
  }
  stop_pool(pool);
  /* The best run is the largest rate: the sorted array's other end. */
  min_median(v, XRUNS, &f->median);
  f->best = v[XRUNS - 1];
}

/* --------------------------------------------------------- ping-pong */

/* The client on loop 0 hands a token to the server on loop 1 and waits for
 * it back: through two channels of capacity 1 (send ping, receive pong), or
 * through two semaphores with no permit (post ping, acquire pong). */
typedef struct pingpong {
  int use_sem;
  weft_chan_t *ping, *pong;
  weft_sem_t *sping, *spong;
  size_t n;
  uint64_t t0, t1;
  atomic_int done;  /* the semaphore server's end: set before the last post */
  atomic_int stop;  /* ends the spinners */
} pingpong_t;

static void *pp_server(void *arg) {
  pingpong_t *p = arg;
  void *msg;
  int err;

  while ((err = weft_chan_recv(p->ping, &msg)) == 0)
    if ((err = weft_chan_send(p->pong, msg)) != 0)
      die("weft_chan_send (pong)", err);
  if (err != WEFT_ECLOSED)
    die("weft_chan_recv (ping)", err);
  return NULL;
}

static void *pp_sem_server(void *arg) {
  pingpong_t *p = arg;
  int err;

  for (;;) {
    if ((err = weft_sem_acquire(p->sping)) != 0)
      die("weft_sem_acquire (ping)", err);
    if (atomic_load_explicit(&p->done, memory_order_acquire))
      return NULL;
    if ((err = weft_sem_post(p->spong)) != 0)
      die("weft_sem_post (pong)", err);
  }
}

static void pp_rounds(pingpong_t *p, size_t n) {
  void *msg;
  int err;

  if (p->use_sem) {
    for (size_t i = 0; i < n; i++) {
      if ((err = weft_sem_post(p->sping)) != 0)
        die("weft_sem_post (ping)", err);
      if ((err = weft_sem_acquire(p->spong)) != 0)
        die("weft_sem_acquire (pong)", err);
    }
    return;
  }
  for (uintptr_t i = 0; i < n; i++) {
    if ((err = weft_chan_send(p->ping, (void *)i)) != 0)
      die("weft_chan_send (ping)", err);
    if ((err = weft_chan_recv(p->pong, &msg)) != 0)
      die("weft_chan_recv (pong)", err);
  }
}

/* A run lasts PINGPONG_RUN_S, not a number of round trips: on a loaded
 * machine one round trip can take a time slice, and a fixed count would
 * stretch the whole bench. */
static void *pp_client(void *arg) {
  pingpong_t *p = arg;
  uint64_t until;
  int err;

  pp_rounds(p, PINGPONG_WARMUP);
  p->t0 = uv_hrtime();
  until = p->t0 + (uint64_t)(PINGPONG_RUN_S * 1e9);
  do {
    pp_rounds(p, 16);
    p->n += 16;
  } while (uv_hrtime() < until);
  p->t1 = uv_hrtime();
  if (p->use_sem) {
    atomic_store_explicit(&p->done, 1, memory_order_release);
    if ((err = weft_sem_post(p->sping)) != 0)
      die("weft_sem_post (end)", err);
  } else {
    weft_chan_close(p->ping);
  }
  atomic_store_explicit(&p->stop, 1, memory_order_relaxed);
  return NULL;
}

/* One run on the pool's loops 0 and 1; returns microseconds per round trip
 * and adds the round trips to *rounds. busy: a spinner on each loop keeps
 * it from ever parking, so every handoff goes through the inbox without a
 * ring. */
static double pp_once(weft_pool_t *pool, int busy, int use_sem, size_t *rounds) {
  pingpong_t p;
  weft_task_t *spin[2] = {NULL, NULL};
  int err = 0;

  memset(&p, 0, sizeof p);
  p.use_sem = use_sem;
  atomic_init(&p.done, 0);
  atomic_init(&p.stop, 0);
  if (use_sem) {
    if ((err = weft_sem_new(&p.sping, 0)) != 0 || (err = weft_sem_new(&p.spong, 0)) != 0)
      die("weft_sem_new", err);
  } else if ((err = weft_chan_new(&p.ping, 1)) != 0 || (err = weft_chan_new(&p.pong, 1)) != 0) {
    die("weft_chan_new", err);
  }
  if (busy)
    for (unsigned i = 0; i < 2; i++)
      spin[i] = spawn_on(weft_pool_loop(pool, i), spinner, &p.stop);
  weft_task_t *server = spawn_on(weft_pool_loop(pool, 1), use_sem ? pp_sem_server : pp_server, &p);
  weft_task_t *client = spawn_on(weft_pool_loop(pool, 0), pp_client, &p);
  gather_two(client, server);
  if (busy)
    gather_two(spin[0], spin[1]);
  if (use_sem) {
    if ((err = weft_sem_free(p.sping)) != 0 || (err = weft_sem_free(p.spong)) != 0)
      die("weft_sem_free", err);
  } else {
    weft_chan_release(p.ping);
    weft_chan_release(p.pong);
  }
  *rounds += p.n;
  return (double)(p.t1 - p.t0) / 1e3 / (double)p.n;
}

/* Round trips between a task on loop 0 and one on loop 1 through two
 * channels of capacity 1, the loops parked between messages or (busy) kept
 * busy. Returns microseconds per round trip; *median as usual, *rounds the
 * round trips of all runs. With busy, each run is followed by one of the
 * same through two semaphores, into R.sempp_*, so the two see the same
 * machine and their ratio is taken run by run. */
static double bench_pingpong(int busy, unsigned spin_us, double *median, size_t *rounds) {
  double v[XRUNS], vs[XRUNS], vr[XRUNS];
  weft_pool_t *pool = start_pool_spin(2, spin_us);

  *rounds = 0;
  if (busy)
    R.sempp_n = 0;
  for (int r = 0; r < XRUNS; r++) {
    v[r] = pp_once(pool, busy, 0, rounds);
    if (busy) {
      vs[r] = pp_once(pool, busy, 1, &R.sempp_n);
      vr[r] = vs[r] / v[r];
    }
  }
  stop_pool(pool);
  if (busy) {
    R.sempp_us = min_median(vs, XRUNS, &R.sempp_med);
    min_median(vr, XRUNS, &R.sempp_ratio_med);
  }
  return min_median(v, XRUNS, median);
}

/* The CPU an idle pool of 2 loops with spin_us = PINGPONG_SPIN_US costs:
 * a short ping-pong first (so each loop has just spun), then 1 s of
 * nothing, timed with getrusage for the whole process (the main thread
 * sleeps). Also the share of that second the loops spent parked. */
static void bench_idle_spin_cpu(void) {
  weft_pool_t *pool = start_pool_spin(2, PINGPONG_SPIN_US);
  weft_stats_t sum, a[2], b[2];
  struct rusage r0, r1;
  size_t rounds = 0;
  int err;

  (void)pp_once(pool, 0, 0, &rounds);
  if ((err = weft_pool_stats(pool, &sum, a)) != 0)
    die("weft_pool_stats", err);
  uint64_t t0 = uv_hrtime();
  getrusage(RUSAGE_SELF, &r0);
  uv_sleep(1000);
  getrusage(RUSAGE_SELF, &r1);
  uint64_t wall = uv_hrtime() - t0;
  if ((err = weft_pool_stats(pool, &sum, b)) != 0)
    die("weft_pool_stats", err);
  double cpu_us = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1e6 +
                  (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) +
                  (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e6 +
                  (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
  R.idle_cpu_pct = cpu_us * 1e3 / (double)wall * 100.0;
  R.idle_parked_pct = (double)((b[0].parked_ns - a[0].parked_ns) + (b[1].parked_ns - a[1].parked_ns)) /
                      2.0 / (double)wall * 100.0;
  stop_pool(pool);
}

/* ------------------------------------------------- parked wake-up */

/* One sample at a time: the caller stamps the time, wakes the other side,
 * then sleeps long enough that the other side has surely run and gone back
 * to sleep (the loop really parks again) before the next sample. Samples of
 * the two kinds alternate, so both see the same machine. */
static _Atomic uint64_t g_woke_at;
static atomic_int g_efd_stop;

static void wakeup_cb(void *arg) {
  (void)arg;
  atomic_store_explicit(&g_woke_at, uv_hrtime(), memory_order_release);
}

/* The floor: a thread blocked in epoll_wait on an eventfd, as a parked
 * libuv loop is, woken by a write from another thread. */
static void *efd_waiter(void *arg) {
  int efd = *(int *)arg;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev;
  uint64_t val;

  if (ep < 0) {
    perror("weft-bench: epoll_create1");
    exit(1);
  }
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) != 0) {
    perror("weft-bench: epoll_ctl");
    exit(1);
  }
  for (;;) {
    if (epoll_wait(ep, &ev, 1, -1) != 1)
      continue;
    if (read(efd, &val, sizeof val) != (ssize_t)sizeof val)
      continue;
    if (atomic_load_explicit(&g_efd_stop, memory_order_relaxed))
      break;
    atomic_store_explicit(&g_woke_at, uv_hrtime(), memory_order_release);
  }
  close(ep);
  return NULL;
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
  nanosleep(&ts, NULL);
}

/* Waits (after the sample's sleep) until the woken side has stamped its
 * time, and returns the latency in microseconds. */
static double wakeup_sample(uint64_t t0) {
  uint64_t t1;

  sleep_us(WAKE_GAP_US);
  while ((t1 = atomic_load_explicit(&g_woke_at, memory_order_acquire)) == 0)
    sleep_us(50);
  return (double)(t1 - t0) / 1e3;
}

static void bench_wakeup(void) {
  static double vw[WAKE_SAMPLES], ve[WAKE_SAMPLES];
  weft_pool_t *pool = start_pool(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  pthread_t th;
  uint64_t one = 1;
  int efd, err;

  efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) {
    perror("weft-bench: eventfd");
    exit(1);
  }
  atomic_store(&g_efd_stop, 0);
  if ((err = pthread_create(&th, NULL, efd_waiter, &efd)) != 0)
    die("pthread_create", -err);
  sleep_us(1000);
  for (int i = 0; i < WAKE_SAMPLES; i++) {
    uint64_t t0;

    atomic_store(&g_woke_at, 0);
    t0 = uv_hrtime();
    if ((err = weft_loop_call_soon(loop, wakeup_cb, NULL)) != 0)
      die("weft_loop_call_soon", err);
    vw[i] = wakeup_sample(t0);

    atomic_store(&g_woke_at, 0);
    t0 = uv_hrtime();
    if (write(efd, &one, sizeof one) != (ssize_t)sizeof one) {
      perror("weft-bench: write(eventfd)");
      exit(1);
    }
    ve[i] = wakeup_sample(t0);
  }
  atomic_store(&g_efd_stop, 1);
  if (write(efd, &one, sizeof one) != (ssize_t)sizeof one) {
    perror("weft-bench: write(eventfd)");
    exit(1);
  }
  pthread_join(th, NULL);
  close(efd);
  stop_pool(pool);
  R.wake_min = min_median(vw, WAKE_SAMPLES, &R.wake_us);
  R.wake_p90 = vw[WAKE_SAMPLES * 9 / 10];
  R.efd_min = min_median(ve, WAKE_SAMPLES, &R.efd_us);
  R.efd_p90 = ve[WAKE_SAMPLES * 9 / 10];
}

/* ------------------------------------------------------ remote spawn */

static atomic_ulong g_remote_ran;
static unsigned long g_remote_target;
static _Atomic uint64_t g_remote_last; /* set by the task that ran last */

static void *remote_task(void *arg) {
  (void)arg;
  if (atomic_fetch_add_explicit(&g_remote_ran, 1, memory_order_relaxed) + 1 == g_remote_target)
    atomic_store_explicit(&g_remote_last, uv_hrtime(), memory_order_release);
  return NULL;
}

/* A plain thread spawns REMOTE_SPAWNS empty detached tasks onto the one
 * loop of a pool, which runs them meanwhile on the other core. The spawning
 * side is timed alone; the loop's side until the last task has run. */
static void bench_remote_spawn(void) {
  double v[XRUNS], done[XRUNS];
  weft_pool_t *pool = start_pool(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);

  for (int r = -1; r < XRUNS; r++) {
    unsigned long n = r < 0 ? REMOTE_SPAWNS / 10 : REMOTE_SPAWNS;
    uint64_t t0, t1;
    int err;

    atomic_store(&g_remote_ran, 0);
    atomic_store(&g_remote_last, 0);
    g_remote_target = n;
    t0 = uv_hrtime();
    for (unsigned long i = 0; i < n; i++)
      if ((err = weft_spawn(loop, remote_task, NULL, NULL)) != 0)
        die("weft_spawn (remote)", err);
    t1 = uv_hrtime();
    while (atomic_load_explicit(&g_remote_last, memory_order_acquire) == 0)
      sleep_us(100);
    if (r >= 0) {
      v[r] = (double)(t1 - t0) / (double)n;
      done[r] = (double)(atomic_load(&g_remote_last) - t0) / (double)n;
    }
  }
  stop_pool(pool);
  R.rspawn_ns = min_median(v, XRUNS, &R.rspawn_med);
  R.rspawn_done_ns = min_median(done, XRUNS, &R.rspawn_done_med);
}

static void bench_across_loops(void) {
  g_unpinned = g_have_all_cpus && sched_setaffinity(0, sizeof g_all_cpus, &g_all_cpus) == 0;
  bench_chan(64, 0, &R.chan64);
  bench_chan(1024, 0, &R.chan1024);
  bench_chan(1024, 1, &R.chanbusy);
  R.pp_us = bench_pingpong(0, 0, &R.pp_med, &R.pp_n);
  R.ppspin_us = bench_pingpong(0, PINGPONG_SPIN_US, &R.ppspin_med, &R.ppspin_n);
  bench_idle_spin_cpu();
  R.ppbusy_us = bench_pingpong(1, 0, &R.ppbusy_med, &R.ppbusy_n);
  R.sempp_ratio = R.sempp_us / R.ppbusy_us;
  bench_wakeup();
  bench_remote_spawn();
}

/* ------------------------------------------------------------------- main */

static void print_single_thread(void) {
#if defined(HAVE_FLOOR)
  printf("# switch_floor_ns: bare asm ping-pong (floor_switch.S), min of %d runs\n"
         "#   of %u switches (median %.2f)\n", SWITCH_RUNS, 2 * SWITCH_ROUNDS, R.floor_med);
  printf("switch_floor_ns %.2f ns\n", R.floor_ns);
#elif defined(WEFT_BENCH_SANITIZED)
  printf("# no floor in a sanitizer build\n");
#else
  printf("# no floor on this arch\n");
#endif

#if defined(WEFT_BENCH_HAVE_CTX)
  printf("# switch_ns: weft__ctx_switch ping-pong, the same way, runs interleaved\n"
         "#   with the floor's (median %.2f)\n", R.ctx_med);
  printf("switch_ns %.2f ns\n", R.ctx_ns);
#if defined(HAVE_FLOOR)
  printf("switch_vs_floor %.2f x\n", R.ctx_ns / R.floor_ns);
#endif
  printf("# coro_switch_ns: the same through weft__coro_switch, the wrapper tasks\n"
         "#   switch through (median %.2f)\n", R.coro_med);
  printf("coro_switch_ns %.2f ns\n", R.coro_ns);
#else
  printf("# switch_ns: not measured (no weft__ctx_switch, or a sanitizer build)\n");
#endif

  printf("# yield_ns: weft_yield of the only task, min of %d runs of %u "
         "(median %.1f);\n#   per yield: %.2f steps, %.2f rounds (libuv is "
         "polled every %dth). The task goes on\n#   into its next step on its "
         "own stack, with no switch (loop.c's step_leave)\n",
         RUNS, YIELDS, R.yield_med, R.yield_switches, R.yield_rounds, 32);
  printf("yield_ns %.1f ns\n", R.yield_ns);
#if defined(HAVE_FLOOR)
  printf("yield_vs_floor %.2f x\n", R.yield_ns / R.floor_ns);
#endif
  printf("# yield_pair_ns: two tasks yield in turn, per yield, min of %d runs of\n"
         "#   2 x %u (median %.1f); each yield is one switch, straight to the\n"
         "#   other task (%.2f steps a round of two)\n",
         RUNS, YIELDS, R.pair_med, R.pair_switches);
  printf("yield_pair_ns %.1f ns\n", R.pair_ns);
#if defined(HAVE_FLOOR)
  printf("yield_pair_vs_floor %.2f x\n", R.pair_ns / R.floor_ns);
#endif
  printf("# trace_event_ns: (yield on a traced loop %.1f ns - yield_ns) / 3 events;\n"
         "#   with tracing off the hook is the untaken branch yield_ns already pays\n",
         R.yield_traced_ns);
  printf("trace_event_ns %.1f ns\n", (R.yield_traced_ns - R.yield_ns) / 3);

  printf("# spawn_ns: spawn + run + end of an empty detached task, batches of %u,\n"
         "#   min of %d runs of %u tasks (median %.1f), warm stack pool\n",
         SPAWN_BATCH, RUNS, SPAWN_BATCH * SPAWN_BATCHES, R.spawn_med);
  printf("spawn_ns %.1f ns\n", R.spawn_ns);

  printf("# gather_100k_ms: spawn %u tasks that each sleep %u ms, weft_gather them;\n"
         "#   from the first spawn to gather's return, min of %d runs (median %.1f);\n"
         "#   in the first run all had started %.1f ms after the first spawn\n",
         GATHER_TASKS, GATHER_SLEEP_MS, GATHER_RUNS, R.gather_med, R.all_started_ms);
  printf("gather_100k_ms %.1f ms\n", R.gather_ms);
  printf("# rss_per_task_bytes: (RSS with %zu tasks asleep - RSS before spawning)\n"
         "#   / %zu, first run, read %s:\n"
         "#   %.1f MiB -> %.1f MiB\n",
         R.rss_live, R.rss_live, R.rss_when, R.rss_before / 1048576.0,
         R.rss_during / 1048576.0);
  printf("rss_per_task_bytes %.0f bytes\n", R.rss_per_task);

  printf("# synchronisation: one task on one loop, nothing ever waits; min of %d\n"
         "#   runs of %u pairs each, the runs of the four figures alternating\n",
         RUNS, SYNC_OPS);
  printf("# sem_ns: weft_sem_acquire + weft_sem_post, one permit (median %.1f)\n",
         R.sem_med);
  printf("sem_ns %.1f ns\n", R.sem_ns);
  printf("# mutex_ns: weft_mutex_lock + weft_mutex_unlock (median %.1f)\n", R.mutex_med);
  printf("mutex_ns %.1f ns\n", R.mutex_ns);
  printf("# chan_try_pair_ns: weft_chan_try_recv + weft_chan_try_send of the message\n"
         "#   back, alternating between two channels of capacity %u that hold %u\n"
         "#   messages each (median %.1f)\n",
         SELECT_CAP, SELECT_FILL, R.try_pair_med);
  printf("chan_try_pair_ns %.1f ns\n", R.try_pair_ns);
  printf("# select2_ns: weft_select(WEFT_FOREVER) over RECV cases on those two\n"
         "#   channels, both always ready, + weft_chan_try_send of the message back\n"
         "#   to its channel (median %.1f); select2_vs_try_pair = select2_ns /\n"
         "#   chan_try_pair_ns (median of the runs' own ratios %.2f)\n",
         R.select2_med, R.select2_ratio_med);
  printf("select2_ns %.1f ns\n", R.select2_ns);
  printf("select2_vs_try_pair %.2f x\n", R.select2_ratio);
}


static void run_task_bench(weft_fn fn, const char *what) {
  int err = weft_run(fn, NULL, NULL);
  if (err != 0)
    die(what, err);
}

int main(int argc, char **argv) {
  int only_across = argc == 2 && strcmp(argv[1], "--across") == 0;
  if (argc > 1 && !only_across) {
    int help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
    fprintf(help ? stdout : stderr,
            "usage: weft-bench [--across]\n"
            "Prints weft's benchmark figures, one `name value unit` per line;\n"
            "'#' lines say how each was measured. Takes a few seconds.\n"
            "--across: only the figures across loops (channels, wake-ups).\n");
    return help ? 0 : 2;
  }

  /* One CPU for the single-thread figures: a migration in the middle of a
   * timed loop costs more than what some of these loops measure. The mask
   * it replaces is kept for the figures across loops. */
  g_have_all_cpus = sched_getaffinity(0, sizeof g_all_cpus, &g_all_cpus) == 0;
  {
    cpu_set_t set;
    R.cpu = sched_getcpu();
    CPU_ZERO(&set);
    if (R.cpu >= 0)
      CPU_SET(R.cpu, &set);
    if (R.cpu < 0 || sched_setaffinity(0, sizeof set, &set) != 0)
      R.cpu = -1;
  }

  if (!only_across) {
    bench_gather();
    bench_switches();
    run_task_bench(yield_main, "weft_run (yield)");
    run_task_bench(yield_pair_main, "weft_run (yield pair)");
    /* Tracing on for one loop only: the rest of the bench runs untraced. */
    if (weft_trace_start(NULL) == 0) {
      run_task_bench(yield_traced_main, "weft_run (traced yield)");
      weft_trace_stop();
    }
    run_task_bench(spawn_main, "weft_run (spawn)");
    run_task_bench(sync_main, "weft_run (synchronisation)");
  }
  bench_across_loops();

  printf("# weft %s, switch %s, %s build, %ld CPUs online\n", weft_version_string(),
         weft_switch_method(), WEFT_BENCH_BUILD_TYPE, sysconf(_SC_NPROCESSORS_ONLN));
  if (R.cpu >= 0)
    printf("# pinned to CPU %d, except across loops\n", R.cpu);
  else
    printf("# not pinned to a CPU\n");
#if defined(WEFT_BENCH_SANITIZED)
  printf("# sanitizer build: these figures say nothing about speed\n");
#endif
  if (!only_across)
    print_single_thread();

  printf("# across loops: pools of 1 or 2 loops, not pinned (%s);\n"
         "#   best of %d runs, median beside it\n",
         g_unpinned ? "the bench's pinning undone" : "could not undo the pinning", XRUNS);
  printf("# chan_msgs_per_s: one channel, a task on loop 0 sends pointers for %.1f s,\n"
         "#   one on loop 1 receives them, nothing else on either loop; from the\n"
         "#   first send to the last receive. cap64: %zu messages in all (median\n"
         "#   %.2f M/s), %.1f wake-ups of a parked loop per 1000 messages; cap1024:\n"
         "#   %zu (median %.2f M/s), %.1f wake-ups per 1000\n",
         CHAN_RUN_S, R.chan64.n, R.chan64.median / 1e6, R.chan64.rings, R.chan1024.n,
         R.chan1024.median / 1e6, R.chan1024.rings);
  printf("chan_msgs_per_s_cap64 %.0f msgs/s\n", R.chan64.best);
  printf("chan_msgs_per_s_cap1024 %.0f msgs/s\n", R.chan1024.best);
  printf("# chan_busy_msgs_per_s_cap1024: the same with a task on each loop that only\n"
         "#   yields, so neither loop parks; %zu messages in all (median %.2f M/s),\n"
         "#   %.1f wake-ups per 1000 messages\n",
         R.chanbusy.n, R.chanbusy.median / 1e6, R.chanbusy.rings);
  printf("chan_busy_msgs_per_s_cap1024 %.0f msgs/s\n", R.chanbusy.best);
  printf("# pingpong_rtt_us: task on loop 0 sends on a channel of capacity 1, task on\n"
         "#   loop 1 receives and replies on another; runs of %.1f s, %zu round\n"
         "#   trips in all (median %.2f); the loops park between messages\n",
         PINGPONG_RUN_S, R.pp_n, R.pp_med);
  printf("pingpong_rtt_us %.2f us\n", R.pp_us);
  printf("# pingpong_spin_rtt_us: the same, the loops made with spin_us = %u: each\n"
         "#   polls its inbox for up to %u us before it parks; %zu round trips in\n"
         "#   all (median %.2f)\n",
         PINGPONG_SPIN_US, PINGPONG_SPIN_US, R.ppspin_n, R.ppspin_med);
  printf("pingpong_spin_rtt_us %.2f us\n", R.ppspin_us);
  printf("# idle_spin_pool_cpu_pct: that pool of 2 loops left idle for 1 s after a\n"
         "#   ping-pong: process CPU time (getrusage) over wall time; the loops\n"
         "#   were parked %.1f%% of it\n", R.idle_parked_pct);
  printf("idle_spin_pool_cpu_pct %.2f %%\n", R.idle_cpu_pct);
  printf("# pingpong_busy_rtt_us: the same with a task on each loop that only yields,\n"
         "#   so neither loop ever parks; %zu round trips in all (median %.2f)\n",
         R.ppbusy_n, R.ppbusy_med);
  printf("pingpong_busy_rtt_us %.2f us\n", R.ppbusy_us);
  printf("# sem_pingpong_busy_rtt_us: the same round trip through two semaphores\n"
         "#   with no permit (loop 0 posts one and acquires the other, loop 1 the\n"
         "#   reverse), both loops busy, each run right after one of\n"
         "#   pingpong_busy_rtt_us's; %zu round trips in all (median %.2f);\n"
         "#   sem_vs_chan_pingpong = the two minimums' ratio (median of the runs'\n"
         "#   own ratios %.2f)\n",
         R.sempp_n, R.sempp_med, R.sempp_ratio_med);
  printf("sem_pingpong_busy_rtt_us %.2f us\n", R.sempp_us);
  printf("sem_vs_chan_pingpong %.2f x\n", R.sempp_ratio);
  printf("# wakeup_us: a plain thread calls weft_loop_call_soon on the parked loop of\n"
         "#   a pool of 1; the callback stamps uv_hrtime; median of %d samples, one\n"
         "#   every ~%d us (min %.1f, 90th percentile %.1f)\n",
         WAKE_SAMPLES, WAKE_GAP_US, R.wake_min, R.wake_p90);
  printf("wakeup_us %.1f us\n", R.wake_us);
  printf("# eventfd_wakeup_us: the floor, a thread blocked in epoll_wait on an eventfd,\n"
         "#   woken by write(); samples alternate with wakeup_us's (min %.1f, 90th\n"
         "#   percentile %.1f)\n", R.efd_min, R.efd_p90);
  printf("eventfd_wakeup_us %.1f us\n", R.efd_us);
  printf("wakeup_vs_eventfd %.2f x\n", R.wake_us / R.efd_us);
  printf("# remote_spawn_ns: a plain thread spawns %u empty detached tasks onto the\n"
         "#   loop of a pool of 1, which runs them meanwhile; the spawning side's time\n"
         "#   per spawn (median %.1f); from the first spawn to the end of the last\n"
         "#   task: %.1f ns per task (median %.1f)\n",
         REMOTE_SPAWNS, R.rspawn_med, R.rspawn_done_ns, R.rspawn_done_med);
  printf("remote_spawn_ns %.1f ns\n", R.rspawn_ns);
  return 0;
}
