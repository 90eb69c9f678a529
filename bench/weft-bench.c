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
 *   yield_ns            one weft_yield of the only task on a loop: two
 *                       switches plus a scheduling round and a libuv poll
 *   spawn_ns            spawn, run and end of an empty detached task with a
 *                       warm stack pool
 *   gather_100k_ms      100k tasks that sleep 100 ms, gathered
 *   rss_per_task_bytes  resident memory per sleeping task in that run
 *
 * The memory run goes first, while the process is fresh, so no memory freed
 * by an earlier run can hide what the tasks cost; the figures are printed in
 * the order above once everything has run. Timed loops repeat and keep the
 * minimum (noise on an idle core only ever adds time); the median is given
 * in the comment beside it. The switch figures use internal functions of the
 * static library, so this bench links weft_static and sees lib/internal.h.
 */
#define _GNU_SOURCE

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

/* Results, printed at the end in the order of the file's opening comment. */
static struct {
  int cpu;  /* the CPU the bench is pinned to, or -1 */
  double floor_ns, floor_med;
  double ctx_ns, ctx_med;
  double coro_ns, coro_med;
  double yield_ns, yield_med, yield_switches, yield_rounds;
  double spawn_ns, spawn_med;
  double gather_ms, gather_med;
  double rss_per_task;
  long long rss_before, rss_during;
  size_t rss_live;
  const char *rss_when;
  double all_started_ms;
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

/* ------------------------------------------------------------------- main */

static void run_task_bench(weft_fn fn, const char *what) {
  int err = weft_run(fn, NULL, NULL);
  if (err != 0)
    die(what, err);
}

int main(int argc, char **argv) {
  if (argc > 1) {
    int help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
    fprintf(help ? stdout : stderr,
            "usage: weft-bench\n"
            "Prints weft's benchmark figures, one `name value unit` per line;\n"
            "'#' lines say how each was measured. Takes a few seconds.\n");
    return help ? 0 : 2;
  }

  /* One CPU for the whole run: a migration in the middle of a timed loop
   * costs more than what some of these loops measure. */
  {
    cpu_set_t set;
    R.cpu = sched_getcpu();
    CPU_ZERO(&set);
    if (R.cpu >= 0)
      CPU_SET(R.cpu, &set);
    if (R.cpu < 0 || sched_setaffinity(0, sizeof set, &set) != 0)
      R.cpu = -1;
  }

  bench_gather();
  bench_switches();
  run_task_bench(yield_main, "weft_run (yield)");
  run_task_bench(spawn_main, "weft_run (spawn)");

  printf("# weft %s, switch %s, %s build, %ld CPUs online\n", weft_version_string(),
         weft_switch_method(), WEFT_BENCH_BUILD_TYPE, sysconf(_SC_NPROCESSORS_ONLN));
  if (R.cpu >= 0)
    printf("# pinned to CPU %d\n", R.cpu);
  else
    printf("# not pinned to a CPU\n");
#if defined(WEFT_BENCH_SANITIZED)
  printf("# sanitizer build: these figures say nothing about speed\n");
#endif

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
         "(median %.1f);\n#   per yield: %.2f switches into the task, %.2f "
         "rounds (each polls libuv)\n",
         RUNS, YIELDS, R.yield_med, R.yield_switches, R.yield_rounds);
  printf("yield_ns %.1f ns\n", R.yield_ns);

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
  return 0;
}
