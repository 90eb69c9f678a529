/* timeline: the seed's three execution models, measured and drawn, and a
 * fourth that the seed only names: several loops in parallel.
 *
 * Tasks A, B and C wait 2, 1 and 3 "seed seconds", scaled by --scale (0.1 by
 * default, so 200, 100 and 300 ms). They run three ways: as blocking calls
 * one after another, awaited one after another, and gathered. The real start
 * and end of every task come from weft's trace of the loops (weft_trace_start
 * at the beginning, weft_trace_read after each run: a task's first step and
 * its end), and the seed's ASCII timelines are drawn from them, so a slow or
 * loaded machine shows up in the drawing and in a note instead of being
 * hidden. The blocking calls of model 1 are not tasks, so they are timed
 * where they run.
 *
 * The three models go through the high-level API (weft_run, like
 * asyncio.run). The fourth model makes A, B and C compute for their 2, 1
 * and 3 seed seconds instead of waiting (a busy loop calibrated at start-up)
 * and runs them twice: gathered on one loop, where they can only take turns
 * (concurrent, not parallel: the total is the sum), then one per loop of a
 * pool, where each has a thread and, if the machine has the cores, a core of
 * its own (the total is the longest). Its bars also show, column by column,
 * the share of a core each task really had, and how many cores the machine
 * offered is printed beside them.
 *
 * A last part runs the gathered model again on a loop built with the
 * low-level API (weft_loop_new, weft_spawn, weft_loop_run_until_complete,
 * weft_loop_close) and prints, from the same trace replayed, what the loop
 * did round by round: its ready queue, where each task stopped, what sat in
 * the waiting set and which timer woke whom. --trace FILE keeps the trace
 * as Chrome trace-event JSON for Perfetto.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#define NTASKS 3
#define GUTTER 10          /* columns left of the time axis: "A running " */
#define PLOT_COLS 60       /* columns the time axis may use */
#define MAX_COLS_PER_S 10  /* the seed draws 2 s as 20 '=' */
#define TOLERANCE 0.15     /* deviation from the model worth a note */
#define MAX_BEATS 1024
#define MAX_EVENTS 1024
#define MAX_NAMED 16
#define BINS_PER_S 100     /* resolution of the CPU model's share record */
#define MAX_BINS 6000      /* 60 seed seconds; later work is not drawn */
#define SLICE_S 0.02       /* seed seconds of work between two yields */
#define SHARE_ALONE 0.8    /* share of a core drawn as running alone */
#define SHARE_SOME 0.15    /* share drawn as running at all */

static const char *const task_label[NTASKS] = {"A", "B", "C"};
static const double task_seed_s[NTASKS] = {2.0, 1.0, 3.0};

static double g_scale = 0.1;
static uint64_t g_task_ms[NTASKS]; /* real milliseconds each task waits */
static uint64_t g_beat_ms;         /* the heartbeat's period: 0.5 seed s */

/* A real duration in seed seconds: the unit every drawing uses. */
static double seed_s(uint64_t ns) {
  return (double)ns / 1e9 / g_scale;
}

/* ---------------------------------------------------------------- names */

/* Tasks are named with weft_task_set_name and also remembered here, so the
 * trace can name a task at its SPAWN event, which the loop reports before
 * the spawner had the chance to name it. Handles are held until the trace
 * is printed, so no pointer here is reused meanwhile. */
static struct {
  const weft_task_t *task;
  char name[16];
} g_named[MAX_NAMED];
static size_t g_nnamed;

static void name_task(weft_task_t *t, const char *name) {
  weft_task_set_name(t, name);
  if (g_nnamed < MAX_NAMED) {
    g_named[g_nnamed].task = t;
    snprintf(g_named[g_nnamed].name, sizeof g_named[0].name, "%s", name);
    g_nnamed++;
  }
}

static const char *known_name(const weft_task_t *t, const char *fallback) {
  size_t i;
  for (i = 0; i < g_nnamed; i++)
    if (g_named[i].task == t)
      return g_named[i].name;
  return fallback;
}

/* -------------------------------------------------------- the three models */

enum model_kind { MODEL_BLOCKING, MODEL_SEQUENTIAL, MODEL_GATHER, MODEL_CPU_LOOP, MODEL_CPU_POOL };

/* For the CPU-bound model: how much calibrated work each task did in each
 * hundredth of a seed second, in nanoseconds. Divided by the bin's length
 * it is the share of a core the task had then. */
typedef struct work_bins {
  double ns[NTASKS][MAX_BINS];
} work_bins_t;

typedef struct model {
  enum model_kind kind;
  const char *title;   /* the seed's name for the model */
  const char *code;    /* the seed's Python for it */
  const char *how;     /* how weft runs it here */
  double expect_s;     /* the seed's total, in seed seconds */
  uint64_t t0;         /* just before the first task was started */
  uint64_t t_end;      /* just after the last task was waited for */
  uint64_t start[NTASKS];
  uint64_t end[NTASKS];
  int status[NTASKS];
  uint64_t beat[MAX_BEATS]; /* when the heartbeat task woke */
  size_t beats;
  int nested;               /* what weft_run returned inside main (model 1) */
  work_bins_t *work;        /* the CPU model's record, else NULL */
  const void *task[NTASKS]; /* the tasks, to find them in the trace by */
} model_t;

typedef struct job {
  model_t *m;
  int i;
} job_t;

/* Waits by blocking the whole thread, as a synchronous call would: the loop
 * cannot run anything meanwhile. An absolute deadline keeps signals from
 * stretching the wait. */
static void block_for(uint64_t ms) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += (time_t)(ms / 1000);
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {
  }
}

/* One of A, B, C as a coroutine: it awaits a timer, which stands for the
 * seed's I/O wait. Its start is taken when it first runs, not when it was
 * spawned, so the bars show when the loop really got to it. */
static void *async_task(void *arg) {
  job_t *j = arg;
  int err;

  j->m->start[j->i] = uv_hrtime();
  err = weft_sleep(g_task_ms[j->i]);
  j->m->end[j->i] = uv_hrtime();
  if (err != 0)
    weft_task_fail(err);
  return NULL;
}

/* A fourth task that only wants to wake every half seed second. Whether it
 * gets to is what tells a blocked loop from a free one: models 1 and 2 draw
 * the same bars, but only one of them leaves the loop to other tasks. */
static void *heartbeat(void *arg) {
  model_t *m = arg;
  while (m->beats < MAX_BEATS && weft_sleep(g_beat_ms) == 0)
    m->beat[m->beats++] = uv_hrtime();
  return NULL;
}

static void *noop_main(void *arg) {
  return arg;
}

/* ------------------------------------------ the fourth model: computing */

/* The seed's tasks wait; these compute. A busy loop of xorshift steps,
 * calibrated at start-up, stands for each task's seconds of work. A loop
 * cannot overlap computations the way it overlaps timers: on one loop the
 * tasks can only take turns, and only more threads (a pool of loops) bring
 * more cores to them. */
static double g_steps_per_ns;          /* measured by calibrate() */
static uint64_t g_task_steps[NTASKS];  /* each task's work */
static uint64_t g_slice_steps;         /* work between two yields */

/* noinline keeps the timed loop the same code for calibration and tasks. */
__attribute__((noinline)) static uint64_t crunch(uint64_t x, uint64_t steps) {
  for (uint64_t i = 0; i < steps; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
  }
  return x;
}

/* Steps per nanosecond on this machine. The sample grows until it takes
 * 2 ms, then the fastest of five such samples counts: a sample the kernel
 * preempted only ever looks slower. */
static uint64_t calibrate(void) {
  uint64_t steps = 1u << 14, best = UINT64_MAX, x = 88172645463325252ull, t;

  for (;;) {
    t = uv_hrtime();
    x = crunch(x, steps);
    t = uv_hrtime() - t;
    if (t >= 2000000 || steps >= (1ull << 40))
      break;
    steps *= 2;
  }
  for (int k = 0; k < 5; k++) {
    t = uv_hrtime();
    x = crunch(x, steps);
    t = uv_hrtime() - t;
    if (t < best)
      best = t;
  }
  g_steps_per_ns = (double)steps / (double)(best > 0 ? best : 1);
  return x;
}

/* Records that a task did work_ns of calibrated work between from and to,
 * spread evenly over that span: a slice the kernel preempted halfway shows
 * as a lower share over a longer span. */
static void add_work(model_t *m, int i, uint64_t from, uint64_t to, double work_ns) {
  double a = seed_s(from - m->t0) * BINS_PER_S;
  double b = seed_s(to - m->t0) * BINS_PER_S;
  double per;

  if (b <= a)
    b = a + 1e-6;
  per = work_ns / (b - a);
  for (int k = (int)a; k < MAX_BINS && k < b; k++) {
    double lo = a > k ? a : k, hi = b < k + 1 ? b : k + 1;
    if (hi > lo)
      m->work->ns[i][k] += per * (hi - lo);
  }
}

/* One of A, B, C as computation. Between slices it yields, as a long
 * computation in a coroutine must if the loop's other tasks are to run at
 * all. Its result is what it computed, so the work cannot be left out. */
static void *cpu_task(void *arg) {
  job_t *j = arg;
  model_t *m = j->m;
  uint64_t left = g_task_steps[j->i], x = (uint64_t)j->i + 1;
  int err = 0;

  m->start[j->i] = uv_hrtime();
  while (left > 0) {
    uint64_t n = left < g_slice_steps ? left : g_slice_steps;
    uint64_t t = uv_hrtime();
    x = crunch(x, n);
    add_work(m, j->i, t, uv_hrtime(), (double)n / g_steps_per_ns);
    left -= n;
    if (left > 0 && (err = weft_yield()) != 0)
      break;
  }
  m->end[j->i] = uv_hrtime();
  if (err != 0)
    weft_task_fail(err);
  return (void *)(uintptr_t)x;
}

/* The pool half: one loop per task, each on its own worker thread. main
 * is a plain thread here, not a task: it spawns onto the pool's loops and
 * weft_gather blocks it until all three have ended. The pool is started
 * before the clock does, so thread start-up is not counted. */
static int run_pool_model(model_t *m) {
  weft_pool_opts_t opts;
  weft_pool_t *pool;
  weft_task_t *t[NTASKS];
  job_t job[NTASKS];
  int err, i;

  memset(&opts, 0, sizeof opts);
  opts.workers = NTASKS;
  err = weft_pool_new(&pool, &opts);
  if (err != 0)
    return err;
  m->t0 = uv_hrtime();
  for (i = 0; i < NTASKS; i++) {
    job[i].m = m;
    job[i].i = i;
    err = weft_spawn(weft_pool_loop(pool, (unsigned)i), cpu_task, &job[i], &t[i]);
    if (err == 0)
      m->task[i] = t[i];
    if (err != 0)
      break;
  }
  if (err == 0)
    err = weft_gather(t, NTASKS, NULL, m->status);
  m->t_end = uv_hrtime();
  /* After a failed spawn the tasks already running are cancelled by the
   * shutdown; after a gather they have all ended. */
  while (i-- > 0)
    weft_task_release(t[i]);
  weft_pool_shutdown(pool, err == 0 ? WEFT_DRAIN : WEFT_CANCEL);
  return err;
}

/* CPUs this process may run on (the affinity mask), else those online. */
static long usable_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    return CPU_COUNT(&set);
  return sysconf(_SC_NPROCESSORS_ONLN);
}

/* The least time the three computations can take on `cores` cores: no
 * less than the longest, and no less than all the work spread evenly. */
static double best_case_s(long cores) {
  double sum = 0, longest = 0;
  for (int k = 0; k < NTASKS; k++) {
    sum += task_seed_s[k];
    if (task_seed_s[k] > longest)
      longest = task_seed_s[k];
  }
  return sum / (double)cores > longest ? sum / (double)cores : longest;
}

/* How long the three computations take when the kernel shares `cores`
 * cores fairly among the busy threads: each gets min(1, cores / busy) of a
 * core until the next one ends. With three cores or more, the longest. */
static double fair_share_s(long cores) {
  double left[NTASKS], t = 0;
  int busy = NTASKS, k;

  for (k = 0; k < NTASKS; k++)
    left[k] = task_seed_s[k];
  while (busy > 0) {
    double rate = cores >= busy ? 1.0 : (double)cores / busy, least = 1e300;
    for (k = 0; k < NTASKS; k++)
      if (left[k] > 0 && left[k] < least)
        least = left[k];
    t += least / rate;
    for (k = 0; k < NTASKS; k++)
      if (left[k] > 0 && (left[k] -= least) <= 1e-9) {
        left[k] = 0;
        busy--;
      }
  }
  return t;
}

/* ----------------------------------------------- main() under weft_run */

static int spawn_job(job_t *j, weft_task_t **t) {
  weft_fn body = j->m->kind == MODEL_CPU_LOOP ? cpu_task : async_task;
  int err = weft_spawn(NULL, body, j, t);
  if (err == 0) {
    name_task(*t, task_label[j->i]);
    j->m->task[j->i] = *t;
  }
  return err;
}

/* The body of main() for one model; weft_run wraps it in a task. */
static void *model_main(void *arg) {
  model_t *m = arg;
  weft_task_t *t[NTASKS] = {NULL, NULL, NULL};
  weft_task_t *beat;
  job_t job[NTASKS];
  int err, i;

  weft_task_set_name(weft_task_current(), "main");
  /* The heartbeat is detached at once: weft_run cancels it when main ends,
   * as asyncio.run cancels leftover tasks. */
  err = weft_spawn(NULL, heartbeat, m, &beat);
  if (err != 0)
    goto fail;
  weft_task_set_name(beat, "heartbeat");
  weft_task_release(beat);

  for (i = 0; i < NTASKS; i++) {
    job[i].m = m;
    job[i].i = i;
  }
  /* The seed's table says asyncio.run() does not nest; neither does
   * weft_run. Asked once, before anything is timed. */
  if (m->kind == MODEL_BLOCKING)
    m->nested = weft_run(noop_main, NULL, NULL);
  m->t0 = uv_hrtime();
  switch (m->kind) {
  case MODEL_BLOCKING:
    for (i = 0; i < NTASKS; i++) {
      m->start[i] = uv_hrtime();
      block_for(g_task_ms[i]);
      m->end[i] = uv_hrtime();
      m->status[i] = 0;
    }
    break;
  case MODEL_SEQUENTIAL:
    for (i = 0; i < NTASKS; i++) {
      err = spawn_job(&job[i], &t[i]);
      if (err != 0)
        goto fail;
      m->status[i] = weft_await(t[i], NULL);
      weft_task_release(t[i]);
    }
    break;
  case MODEL_GATHER:
  case MODEL_CPU_LOOP:
  case MODEL_CPU_POOL: /* run by run_pool_model, never here */
    for (i = 0; i < NTASKS; i++) {
      err = spawn_job(&job[i], &t[i]);
      if (err != 0)
        goto fail_spawned;
    }
    err = weft_gather(t, NTASKS, NULL, m->status);
    for (i = 0; i < NTASKS; i++)
      weft_task_release(t[i]);
    if (err != 0)
      goto fail;
    break;
  }
  m->t_end = uv_hrtime();
  for (i = 0; i < NTASKS; i++)
    if (m->status[i] != 0)
      weft_task_fail(m->status[i]);
  return NULL;

fail_spawned:
  /* Released handles leave the tasks detached; weft_run cancels them. */
  while (i-- > 0)
    weft_task_release(t[i]);
fail:
  weft_task_fail(err);
  return NULL;
}

/* ----------------------------------------------------------------- drawing */

/* Prints a line drawn in ASCII, with '|' standing for the seed's box-drawing
 * tick and trailing blanks dropped: building lines byte by byte keeps column
 * arithmetic simple, and only the output needs the UTF-8 character. */
static void put_drawn(const char *s) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == ' ')
    n--;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '|')
      fputs("\u2502", stdout);
    else
      putchar(s[i]);
  }
  putchar('\n');
}

static int round_to_int(double x) {
  return (int)(x + 0.5);
}

/* The CPU model's glyph for one column of task i's bar: '=' while the task
 * had a core to itself, '~' while it shared one, '.' while it got next to
 * none. Only the part of the column in which the task was alive counts. */
static char share_glyph(const model_t *m, int i, double cps, int col) {
  double a = col / cps, b = (col + 1) / cps, work = 0;
  double s0 = seed_s(m->start[i] - m->t0), s1 = seed_s(m->end[i] - m->t0), share;

  if (a < s0)
    a = s0;
  if (b > s1)
    b = s1;
  if (b <= a)
    return '='; /* a bar drawn one column long for a task too short to see */
  for (int k = (int)(a * BINS_PER_S); k < MAX_BINS && k < b * BINS_PER_S; k++) {
    double lo = a * BINS_PER_S > k ? a * BINS_PER_S : k;
    double hi = b * BINS_PER_S < k + 1 ? b * BINS_PER_S : k + 1;
    if (hi > lo)
      work += m->work->ns[i][k] * (hi - lo);
  }
  share = work / ((b - a) * 1e9 * g_scale);
  return share >= SHARE_ALONE ? '=' : share >= SHARE_SOME ? '~' : '.';
}

static void draw(const model_t *m) {
  char line[GUTTER + PLOT_COLS + 32];
  double total = seed_s(m->t_end - m->t0);
  double span = total > m->expect_s ? total : m->expect_s;
  int secs, label_every, i, s;
  double cps;

  for (i = 0; i < NTASKS; i++)
    if (seed_s(m->end[i] - m->t0) > span)
      span = seed_s(m->end[i] - m->t0);
  /* A run that overshoots by less than half a column keeps the model's
   * axis: 6.01 s still ends on the 6 s tick. */
  secs = (int)span;
  if ((double)secs < span - 0.5 / MAX_COLS_PER_S)
    secs++;
  /* Ten columns per seed second as in the seed; fewer, and a whole number
   * while possible so the ticks stay even, when a loaded machine stretched
   * the run: the axis must fit in 80 columns. */
  if (secs <= PLOT_COLS) {
    cps = PLOT_COLS / secs;
    if (cps > MAX_COLS_PER_S)
      cps = MAX_COLS_PER_S;
  } else {
    cps = (double)PLOT_COLS / secs;
  }
  label_every = 1;
  while (label_every * cps < 4)
    label_every++;

  printf("time \u2192\n");
  memset(line, ' ', sizeof line);
  for (s = 0; s <= secs; s += label_every) {
    char lab[16];
    int n = snprintf(lab, sizeof lab, "%ds", s);
    memcpy(line + GUTTER + round_to_int(s * cps), lab, (size_t)n);
  }
  line[GUTTER + round_to_int(secs * cps) + 4] = '\0';
  put_drawn(line);

  memset(line, ' ', sizeof line);
  for (i = 0; i <= round_to_int(secs * cps); i++)
    line[GUTTER + i] = '-';
  for (s = 0; s <= secs; s++)
    line[GUTTER + round_to_int(s * cps)] = '|';
  line[GUTTER + round_to_int(secs * cps) + 1] = '\0';
  put_drawn(line);

  for (i = 0; i < NTASKS; i++) {
    int from = round_to_int(seed_s(m->start[i] - m->t0) * cps);
    int to = round_to_int(seed_s(m->end[i] - m->t0) * cps);
    const char *tail = m->status[i] == 0 ? " done" : " failed";
    char lab[GUTTER + 1];

    if (to <= from)
      to = from + 1;
    memset(line, ' ', sizeof line);
    /* The seed labels a bar "running" when it starts at once. */
    snprintf(lab, sizeof lab, from == 0 ? "%s running" : "%s", task_label[i]);
    memcpy(line, lab, strlen(lab));
    if (m->work == NULL) {
      memset(line + GUTTER + from, '=', (size_t)(to - from));
    } else {
      for (s = from; s < to; s++)
        line[GUTTER + s] = share_glyph(m, i, cps, s);
    }
    memcpy(line + GUTTER + to, tail, strlen(tail) + 1);
    put_drawn(line);
  }
  if (m->work != NULL)
    printf("(= computing on a core of its own, ~ sharing a core, . waiting for one)\n");
  printf("total: %.2f s   (%.3f s of real time at scale %g)\n", total,
         (double)(m->t_end - m->t0) / 1e9, g_scale);
}

/* Says how the measurement compares with the model, in plain words. */
static void judge(const model_t *m) {
  double total = seed_s(m->t_end - m->t0);
  double dev = (total - m->expect_s) / m->expect_s;
  size_t beats = 0, i;
  int k;

  printf("measured:");
  for (k = 0; k < NTASKS; k++)
    printf("  %s %.2f-%.2f s", task_label[k], seed_s(m->start[k] - m->t0),
           seed_s(m->end[k] - m->t0));
  printf("\n");

  if (m->kind == MODEL_GATHER) {
    uint64_t lo = m->start[0], hi = m->start[0];
    for (k = 1; k < NTASKS; k++) {
      if (m->start[k] < lo)
        lo = m->start[k];
      if (m->start[k] > hi)
        hi = m->start[k];
    }
    printf("A, B and C started together (within %.2f s): they overlap.\n", seed_s(hi - lo));
  } else {
    double gap = 0;
    for (k = 1; k < NTASKS; k++) {
      double g = seed_s(m->start[k] - m->end[k - 1]);
      if (g > gap)
        gap = g;
    }
    printf("Each task started when the one before had ended (largest gap %.2f s).\n", gap);
  }

  for (i = 0; i < m->beats; i++)
    if (m->beat[i] >= m->t0 && m->beat[i] <= m->t_end)
      beats++;
  printf("A heartbeat task that asks to wake every 0.5 s woke %zu times in %.2f s:\n",
         beats, total);
  if (beats == 0)
    printf("  the blocking calls held the loop, so no other task could run.\n");
  else
    printf("  the loop ran other tasks while A, B and C were waiting.\n");

  if (dev > TOLERANCE || dev < -TOLERANCE)
    printf("NOTE: %.2f s is %.0f%% %s the model's %.0f s: %s.\n"
           "  The drawing shows what really happened.\n",
           total, (dev > 0 ? dev : -dev) * 100, dev > 0 ? "above" : "below", m->expect_s,
           g_scale < 0.01 ? "at this scale, timers' 1 ms\n  granularity is a large part "
                            "of every wait"
                          : "this machine is loaded\n  or slow, so timers and tasks ran late");
  else
    printf("As the model says: %.0f s (measured %.2f s, within %.0f%%).\n", m->expect_s,
           total, TOLERANCE * 100);
}

/* judge() for the computing model: the bars overlap in both halves, so
 * what tells them apart is the share of a core each task got, and the
 * total. */
static double g_one_loop_total; /* model 4a's total, for 4b's speed-up */

static void judge_cpu(const model_t *m) {
  double total = seed_s(m->t_end - m->t0), dev = (total - m->expect_s) / m->expect_s;
  long cores = usable_cpus();
  size_t beats = 0, i;
  uint64_t lo = m->start[0], hi = m->start[0];
  int k;

  printf("measured:");
  for (k = 0; k < NTASKS; k++)
    printf("  %s %.2f-%.2f s", task_label[k], seed_s(m->start[k] - m->t0),
           seed_s(m->end[k] - m->t0));
  printf("\nshare of a core while running:");
  for (k = 0; k < NTASKS; k++) {
    double alive = (double)(m->end[k] - m->start[k]);
    double share = alive > 0 ? task_seed_s[k] * g_scale * 1e9 / alive : 1.0;
    /* Above 1 only by the calibration's error: a task cannot have more
     * than the core it runs on. */
    printf("  %s %.0f%%", task_label[k], 100.0 * (share < 1.0 ? share : 1.0));
    if (m->start[k] < lo)
      lo = m->start[k];
    if (m->start[k] > hi)
      hi = m->start[k];
  }
  printf("\n");

  if (m->kind == MODEL_CPU_LOOP) {
    g_one_loop_total = total;
    printf("A, B and C started together (within %.2f s) but took turns on one\n"
           "thread: B, with 1 s of work, ended at %.2f s; the total is the sum.\n",
           seed_s(hi - lo), seed_s(m->end[1] - m->t0));
    for (i = 0; i < m->beats; i++)
      if (m->beat[i] >= m->t0 && m->beat[i] <= m->t_end)
        beats++;
    printf("A heartbeat task that asks to wake every 0.5 s woke %zu times in %.2f s:\n",
           beats, total);
    if (beats == 0)
      printf("  the computations held the loop, so no other task could run.\n");
    else
      printf("  the tasks yield between slices of work, so the loop still ran others.\n");
  } else {
    printf("Each task computed on a loop and thread of its own: %.2f s against\n"
           "%.2f s on one loop, %.2f times as fast.\n",
           total, g_one_loop_total, total > 0 ? g_one_loop_total / total : 0.0);
  }

  if (m->kind == MODEL_CPU_POOL && cores < NTASKS) {
    double best = best_case_s(cores), fair = fair_share_s(cores);
    printf("NOTE: %ld usable core%s for %d busy loops, so the kernel shares them: at\n"
           "  best the work takes %.2f s here, shared fairly %.2f s (the model's %.0f s\n"
           "  needs %d free cores). Measured %.2f s: %s.\n"
           "  The drawing shows what really happened.\n",
           cores, cores == 1 ? "" : "s", NTASKS, best, fair, m->expect_s, NTASKS, total,
           total <= best * (1 + TOLERANCE)   ? "about the best it can do"
           : total <= fair * (1 + TOLERANCE) ? "as sharing the cores explains"
                                             : "the machine is loaded besides");
  } else if (dev > TOLERANCE || dev < -TOLERANCE) {
    printf("NOTE: %.2f s is %.0f%% %s the model's %.0f s: this machine is loaded\n"
           "  or slow (the work was calibrated at start-up). The drawing shows what\n"
           "  really happened.\n",
           total, (dev > 0 ? dev : -dev) * 100, dev > 0 ? "above" : "below", m->expect_s);
  } else {
    printf("As the model says: %.0f s (measured %.2f s, within %.0f%%).\n", m->expect_s,
           total, TOLERANCE * 100);
  }
}

/* The trace's account of one model run: a task's start is its first step,
 * its end the event that ended it, within the run's window (a task is known
 * by its address: they are all alive until the run is drawn, and names
 * given from another thread than a pool loop's cannot be). */
typedef struct span_search {
  model_t *m;
  int found_start[NTASKS], found_end[NTASKS];
} span_search_t;

static void find_spans(const weft_trace_record_t *r, void *arg) {
  span_search_t *s = arg;
  if (r->ev.time_ns < s->m->t0 || r->ev.time_ns > s->m->t_end)
    return;
  for (int i = 0; i < NTASKS; i++) {
    if (r->ev.task == NULL || r->ev.task != s->m->task[i])
      continue;
    /* A task that ended may be freed and its address reused by the next
     * one (model 2): the name tells them apart where it could be set. */
    bool other = false;
    for (int k = 0; k < NTASKS; k++)
      other |= k != i && strcmp(r->task_name, task_label[k]) == 0;
    if (other)
      continue;
    if (r->ev.kind == WEFT_EV_STEP && !s->found_start[i]) {
      s->m->start[i] = r->ev.time_ns;
      s->found_start[i] = 1;
    } else if (r->ev.kind == WEFT_EV_DONE && s->found_start[i] && !s->found_end[i]) {
      s->m->end[i] = r->ev.time_ns;
      s->found_end[i] = 1;
    }
  }
}

/* Models 2 to 4 are drawn from weft's trace of the loops (the tasks' own
 * stamps stand in only for a task the trace lost, which it says). */
static void spans_from_trace(model_t *m) {
  span_search_t s;
  memset(&s, 0, sizeof s);
  s.m = m;
  weft_trace_read(find_spans, &s);
  for (int i = 0; i < NTASKS; i++)
    if (!s.found_start[i] || !s.found_end[i])
      printf("   (the trace lost task %s; drawn from its own timing)\n", task_label[i]);
}

static int run_model(model_t *m, const char *number) {
  int err;

  printf("\n%s. %s: %s\n", number, m->title, m->code);
  printf("   %s\n\n", m->how);
  err = m->kind == MODEL_CPU_POOL ? run_pool_model(m) : weft_run(model_main, m, NULL);
  if (err != 0) {
    fprintf(stderr, "timeline: model %s failed: %s\n", number, weft_strerror(err));
    return err;
  }
  if (m->kind != MODEL_BLOCKING)
    spans_from_trace(m);
  draw(m);
  if (m->work != NULL)
    judge_cpu(m);
  else
    judge(m);
  return 0;
}

/* Model 4: the tasks compute instead of waiting, first gathered on one
 * loop, then one per loop of a pool. */
static int run_computing(model_t *one, model_t *pool) {
  static work_bins_t bins[2]; /* large: kept off the stack */
  uint64_t sink;
  int k, err;

  sink = calibrate();
  for (k = 0; k < NTASKS; k++)
    g_task_steps[k] = (uint64_t)(task_seed_s[k] * g_scale * 1e9 * g_steps_per_ns);
  g_slice_steps = (uint64_t)(SLICE_S * g_scale * 1e9 * g_steps_per_ns);
  if (g_slice_steps == 0)
    g_slice_steps = 1;

  printf("\n4. Computing instead of waiting: one loop, then a pool of loops\n");
  printf("   A, B and C now compute for 2, 1 and 3 s: a busy loop calibrated at\n"
         "   start-up (%.0f M steps/s, check %llu), %llu, %llu and %llu ms of real\n"
         "   work, yielding every %.2f s of it. This machine: %ld CPUs online, %ld\n"
         "   usable here.\n",
         g_steps_per_ns * 1e3, (unsigned long long)(sink & 0xffff),
         (unsigned long long)g_task_ms[0], (unsigned long long)g_task_ms[1],
         (unsigned long long)g_task_ms[2], SLICE_S, sysconf(_SC_NPROCESSORS_ONLN),
         usable_cpus());

  memset(bins, 0, sizeof bins);
  one->kind = MODEL_CPU_LOOP;
  one->title = "One loop";
  one->code = "gather(A, B, C)";
  one->how = "weft_run(main); main spawns all three and gathers: concurrent only";
  one->expect_s = 6;
  one->work = &bins[0];
  pool->kind = MODEL_CPU_POOL;
  pool->title = "A pool of 3 loops";
  pool->code = "one task per loop, gathered";
  pool->how = "main, a plain thread, spawns each on weft_pool_loop(pool, i),\n"
              "   then weft_gather blocks it: concurrent and parallel";
  pool->expect_s = 3;
  pool->work = &bins[1];

  err = run_model(one, "4a");
  if (err == 0)
    err = run_model(pool, "4b");
  return err;
}

/* ------------------------------------------------- inside the loop (trace) */

typedef struct record {
  weft_loop_event_t ev;
  char name[32]; /* the task's name when the event happened */
} record_t;

#define INSIDE_LOOP "inside"

typedef struct trace {
  uint64_t from, to;       /* the run's window on the loop's trace */
  size_t n;
  size_t dropped;
  record_t rec[MAX_EVENTS];
  model_t m;               /* the gathered run, measured as above */
  job_t job[NTASKS];
  weft_task_t *t[NTASKS];  /* held until the trace is printed */
  int gather_status;
} trace_t;

/* One event of weft's trace of the loop, replayed by weft_trace_read once
 * the run is over: the run's events, on the loop built for it, are kept. */
static void record_event(const weft_trace_record_t *rec, void *arg) {
  trace_t *tr = arg;
  record_t *r;

  if (strcmp(rec->loop, INSIDE_LOOP) != 0 || rec->ev.time_ns < tr->from ||
      rec->ev.time_ns > tr->to)
    return;
  if (tr->n == MAX_EVENTS) {
    tr->dropped++;
    return;
  }
  r = &tr->rec[tr->n++];
  r->ev = rec->ev;
  snprintf(r->name, sizeof r->name, "%s", rec->task_name);
}

/* main() of the traced run: model 3, spawned and gathered. */
static void *trace_main(void *arg) {
  trace_t *tr = arg;
  int i, err;

  tr->m.t0 = uv_hrtime();
  for (i = 0; i < NTASKS; i++) {
    tr->job[i].m = &tr->m;
    tr->job[i].i = i;
    err = spawn_job(&tr->job[i], &tr->t[i]);
    if (err != 0) {
      weft_task_fail(err);
      return NULL;
    }
  }
  tr->gather_status = weft_gather(tr->t, NTASKS, NULL, tr->m.status);
  tr->m.t_end = uv_hrtime();
  if (tr->gather_status != 0)
    weft_task_fail(tr->gather_status);
  return NULL;
}

/* "0" for success, else the error's sentence. */
static const char *result_text(int err) {
  return err == 0 ? "0" : weft_strerror(err);
}

/* One line of the seed's numbered low-level steps, with what the call
 * returned. */
static void api_step(int n, const char *what, int err) {
  printf("  [%d] %-56s -> %s\n", n, what, result_text(err));
}

static void *again_main(void *arg) {
  return arg;
}

/* What a parked task waits on, in words. The loop only says "a join"; the
 * trace knows main's only join is its gather, so it says so. */
static void describe_wait(const record_t *r, const char *who, char *out, size_t len) {
  switch (r->ev.wait) {
  case WEFT_WAIT_SLEEP:
    snprintf(out, len, "sleep(%d ms)", r->ev.detail);
    break;
  case WEFT_WAIT_JOIN:
    snprintf(out, len, "%s", strcmp(who, "main") == 0 ? "gather(A, B, C)" : "a join");
    break;
  case WEFT_WAIT_YIELD:
    snprintf(out, len, "yield");
    break;
  case WEFT_WAIT_THREAD:
    snprintf(out, len, "thread-pool work");
    break;
  default:
    snprintf(out, len, "something else");
    break;
  }
}

/* Accumulates one printed line, wrapped under an indent so the trace stays
 * within 80 columns. */
typedef struct outline {
  char buf[512];
  size_t len;
} outline_t;

static void ol_add(outline_t *o, const char *fmt, ...) {
  va_list ap;
  int n;
  if (o->len >= sizeof o->buf)
    return;
  va_start(ap, fmt);
  n = vsnprintf(o->buf + o->len, sizeof o->buf - o->len, fmt, ap);
  va_end(ap);
  if (n > 0)
    o->len += (size_t)n < sizeof o->buf - o->len ? (size_t)n : sizeof o->buf - o->len - 1;
}

/* Columns a UTF-8 string takes: continuation bytes take none. */
static int columns(const char *s, int bytes) {
  int n = 0;
  for (int i = 0; i < bytes; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80)
      n++;
  return n;
}

static void ol_flush(outline_t *o, int indent) {
  const char *s = o->buf;
  int first = 1;

  if (o->len == 0)
    return;
  while (*s != '\0') {
    int room = 78 - (first ? 0 : indent);
    int n = (int)strlen(s), cut = n;
    if (columns(s, n) > room) {
      /* The last blank that leaves the line within room columns. */
      int fit = 0;
      while (fit < n && columns(s, fit + 1) <= room)
        fit++;
      cut = fit;
      while (cut > 0 && s[cut] != ' ')
        cut--;
      if (cut == 0)
        cut = fit;
    }
    printf("%*s%.*s\n", first ? 0 : indent, "", cut, s);
    s += cut;
    while (*s == ' ')
      s++;
    first = 0;
  }
  o->len = 0;
  o->buf[0] = '\0';
}

typedef struct waiter {
  const weft_task_t *task;
  char what[40];
  int ms; /* for a sleep: the milliseconds asked */
} waiter_t;

static const char *rec_name(const record_t *r) {
  return known_name(r->ev.task, r->name);
}

static void print_waiting(const waiter_t *w, size_t n) {
  static int said_empty;
  outline_t o = {{0}, 0};
  size_t i;
  /* An empty waiting set is worth saying once, not after every round. */
  if (n == 0 && said_empty)
    return;
  said_empty = n == 0;
  ol_add(&o, "    waiting:");
  if (n == 0)
    ol_add(&o, " nothing");
  for (i = 0; i < n; i++)
    ol_add(&o, "%s %s on %s", i == 0 ? "" : ",", known_name(w[i].task, "?"), w[i].what);
  ol_flush(&o, 13);
}

/* Replays the recorded events as the seed's "inside the loop" picture:
 * for each round, the ready queue, what each task did until it stopped, the
 * waiting set once the round's tasks have run, and what the libuv poll
 * delivered before the next round. */
static void print_trace(const trace_t *tr) {
  waiter_t waiting[32];
  size_t nwait = 0, i, j;
  outline_t o = {{0}, 0};
  uint64_t base = 0, last_step_end = 0;
  int in_round = 0, waiting_shown = 1, polled = 0, after_done = 0;

  for (i = 0; i < tr->n; i++)
    if (tr->rec[i].ev.kind == WEFT_EV_ROUND) {
      base = tr->rec[i].ev.time_ns;
      break;
    }

  for (i = 0; i < tr->n; i++) {
    const record_t *r = &tr->rec[i];
    const char *who = rec_name(r);
    double t = r->ev.time_ns >= base ? seed_s(r->ev.time_ns - base) : 0;

    switch (r->ev.kind) {
    case WEFT_EV_ROUND: {
      size_t ran = 0;
      ol_flush(&o, 10);
      after_done = 0;
      if (!waiting_shown)
        print_waiting(waiting, nwait);
      waiting_shown = 0;
      polled = 0;
      in_round = 1;
      /* The tasks that step in this round are the ones that were ready when
       * it began: tasks made ready during a round wait for the next. */
      ol_add(&o, "  round %llu  t=%.2f s  ready:", (unsigned long long)r->ev.round, t);
      for (j = i + 1; j < tr->n && tr->rec[j].ev.kind != WEFT_EV_ROUND; j++)
        if (tr->rec[j].ev.kind == WEFT_EV_STEP)
          ol_add(&o, "%s %s", ran++ == 0 ? "" : ",", rec_name(&tr->rec[j]));
      if (ran == 0)
        ol_add(&o, " nothing");
      if (ran != r->ev.count)
        ol_add(&o, " (the loop counted %zu)", r->ev.count);
      ol_flush(&o, 10);
      break;
    }
    case WEFT_EV_SPAWN:
      if (!in_round) {
        ol_flush(&o, 10);
        printf("  before round 1: %s spawned, so it is ready\n", who);
      } else {
        /* Consecutive spawns read as one list: "spawned A, B, C". */
        ol_add(&o, i > 0 && tr->rec[i - 1].ev.kind == WEFT_EV_SPAWN ? ", %s" : ", spawned %s",
               who);
      }
      break;
    case WEFT_EV_STEP:
      ol_flush(&o, 10);
      after_done = 0;
      ol_add(&o, "    %-5s ran", who);
      /* A task that steps is no longer waiting on anything. */
      for (j = 0; j < nwait; j++)
        if (waiting[j].task == r->ev.task) {
          memmove(&waiting[j], &waiting[j + 1], (nwait - j - 1) * sizeof waiting[0]);
          nwait--;
          break;
        }
      break;
    case WEFT_EV_PARK: {
      char what[40];
      describe_wait(r, who, what, sizeof what);
      if (r->ev.wait == WEFT_WAIT_YIELD) {
        ol_add(&o, ", yielded: back of the ready queue");
      } else {
        ol_add(&o, ", parked on %s", what);
        if (nwait < sizeof waiting / sizeof waiting[0]) {
          waiting[nwait].task = r->ev.task;
          snprintf(waiting[nwait].what, sizeof waiting[0].what, "%s", what);
          waiting[nwait].ms = r->ev.wait == WEFT_WAIT_SLEEP ? r->ev.detail : 0;
          nwait++;
        }
      }
      ol_flush(&o, 10);
      last_step_end = r->ev.time_ns;
      break;
    }
    case WEFT_EV_DONE:
      if (r->ev.status == 0)
        ol_add(&o, ", returned: done");
      else
        ol_add(&o, ", ended: %s", weft_strerror(r->ev.status));
      after_done = 1;
      last_step_end = r->ev.time_ns;
      break;
    case WEFT_EV_WAKE: {
      const char *cause = r->ev.detail == WEFT_WAKE_CANCEL     ? "cancelled"
                          : r->ev.detail == WEFT_WAKE_DEADLINE ? "deadline passed"
                                                               : NULL;
      for (j = 0; j < nwait; j++)
        if (waiting[j].task == r->ev.task)
          break;
      if (after_done && r->ev.wait == WEFT_WAIT_JOIN) {
        /* A join is completed by the task that just ended. */
        ol_add(&o, ", which woke %s", who);
      } else {
        ol_flush(&o, 10);
        after_done = 0;
        if (!waiting_shown) {
          print_waiting(waiting, nwait);
          waiting_shown = 1;
        }
        /* The first wake after the round's steps says how long the poll
         * blocked; the time comes from the events, not from the model. */
        if (!polled && last_step_end != 0 && r->ev.time_ns > last_step_end)
          ol_add(&o, "    poll: blocked in libuv for %.2f s, until ",
                 seed_s(r->ev.time_ns - last_step_end));
        else
          ol_add(&o, "    poll: at t=%.2f s, ", t);
        polled = 1;
        if (cause != NULL)
          ol_add(&o, "%s was interrupted (%s)", who, cause);
        else if (r->ev.wait == WEFT_WAIT_SLEEP)
          ol_add(&o, "%s's %d ms timer fired", who,
                 j < nwait ? waiting[j].ms : 0);
        else if (r->ev.wait == WEFT_WAIT_YIELD)
          ol_add(&o, "%s came back from its yield", who);
        else
          ol_add(&o, "%s's %s completed", who, j < nwait ? waiting[j].what : "wait");
        ol_add(&o, " \u2192 %s ready", who);
        ol_flush(&o, 10);
      }
      if (j < nwait) {
        memmove(&waiting[j], &waiting[j + 1], (nwait - j - 1) * sizeof waiting[0]);
        nwait--;
      }
      break;
    }
    }
  }
  ol_flush(&o, 10);
  if (!waiting_shown)
    print_waiting(waiting, nwait);
  if (tr->dropped != 0)
    printf("  (%zu later events were not recorded: the buffer was full)\n", tr->dropped);
}

static int run_inside(void) {
  static trace_t tr; /* large: kept off the stack */
  weft_loop_opts_t opts;
  weft_loop_t *loop = NULL;
  weft_task_t *main_task = NULL, *again = NULL;
  void *again_result = NULL;
  uint64_t t0;
  int err, i;

  /* Names from the earlier runs belong to freed tasks whose addresses may
   * come back: only this run's names may be looked up. */
  g_nnamed = 0;
  printf("\n5. Inside the loop, for model 3: low-level API (the loop is yours)\n");
  printf("   The gathered model once more, on a loop built by hand, as with\n"
         "   new_event_loop(); weft's trace (weft_trace_start) records what the\n"
         "   scheduler does, and weft_trace_read replays it afterwards.\n\n");

  memset(&opts, 0, sizeof opts);
  opts.name = INSIDE_LOOP;
  err = weft_loop_new(&loop, &opts);
  api_step(1, "weft_loop_new(&loop, {.name = \"inside\"})", err);
  if (err != 0)
    return err;

  tr.from = uv_hrtime();
  err = weft_spawn(loop, trace_main, &tr, &main_task);
  api_step(2, "weft_spawn(loop, main, ...): main gathers A, B, C", err);
  if (err != 0)
    goto close;
  name_task(main_task, "main");

  t0 = uv_hrtime();
  err = weft_loop_run_until_complete(loop, main_task, NULL);
  t0 = uv_hrtime() - t0;
  tr.to = uv_hrtime();
  api_step(3, "weft_loop_run_until_complete(loop, main)", err);
  printf("      it returned after %.2f s (%.3f s real)\n", seed_s(t0), (double)t0 / 1e9);
  if (err != 0)
    goto close;

  /* The low-level loop outlives a run: spawn on it again, as a framework
   * keeps adding work to a resident loop. */
  err = weft_spawn(loop, again_main, &tr, &again);
  if (err == 0) {
    name_task(again, "again");
    err = weft_loop_run_until_complete(loop, again, &again_result);
    weft_task_release(again);
  }
  api_step(4, "the loop is reusable: spawn and run one more task", err);
  if (err == 0 && again_result != &tr)
    printf("      but the task's result did not come back\n");

close:
  {
    int cerr = weft_loop_close(loop);
    api_step(5, "weft_loop_close(loop), by hand", cerr);
    if (err == 0)
      err = cerr;
  }

  weft_trace_read(record_event, &tr);
  if (tr.n != 0) {
    printf("\n  What the loop did, round by round (t in seed seconds):\n\n");
    print_trace(&tr);
    printf("\n  total: %.2f s, as model 3: the loop ran one task at a time and\n"
           "  switched whenever one had to wait.\n",
           seed_s(tr.m.t_end - tr.m.t0));
  }

  weft_task_release(main_task);
  for (i = 0; i < NTASKS; i++)
    weft_task_release(tr.t[i]);
  return err;
}

/* -------------------------------------------------------------------- main */

static void usage(FILE *out) {
  fprintf(out,
          "usage: timeline [--scale S] [--trace FILE]\n"
          "\n"
          "Runs the seed's three execution models (tasks A = 2 s, B = 1 s, C = 3 s)\n"
          "on weft, and a fourth in which the tasks compute, on one loop and then on\n"
          "a pool of loops; draws their timelines from measurements, then shows the\n"
          "loop's rounds for the gathered model.\n"
          "\n"
          "  --scale S   real seconds per seed second, 0.001 to 10 (default 0.1:\n"
          "              A, B, C wait, or compute, 200, 100, 300 ms)\n"
          "  --trace F   also record every loop with weft_trace_start and write\n"
          "              the Chrome trace-event JSON to F, for Perfetto\n"
          "  --help      this text\n");
}

int main(int argc, char **argv) {
  static model_t models[5];
  const char *trace = NULL;
  int i, err;

  for (i = 1; i < argc; i++) {
    const char *val = NULL;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--trace") == 0 && i + 1 < argc) {
      trace = argv[++i];
      continue;
    } else if (strcmp(argv[i], "--scale") == 0 && i + 1 < argc) {
      val = argv[++i];
    } else if (strncmp(argv[i], "--scale=", 8) == 0) {
      val = argv[i] + 8;
    } else {
      fprintf(stderr, "timeline: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
    {
      char *endp;
      double s = strtod(val, &endp);
      if (endp == val || *endp != '\0' || !(s >= 0.001 && s <= 10)) {
        fprintf(stderr, "timeline: --scale wants a number from 0.001 to 10, not '%s'\n", val);
        return 2;
      }
      g_scale = s;
    }
  }

  /* The drawings come from weft's trace of the loops; --trace also keeps
   * it in a file. */
  if ((err = weft_trace_start(trace)) != 0) {
    fprintf(stderr, "timeline: weft_trace_start: %s\n", weft_strerror(err));
    return 1;
  }
  for (i = 0; i < NTASKS; i++) {
    g_task_ms[i] = (uint64_t)(task_seed_s[i] * 1000 * g_scale + 0.5);
    if (g_task_ms[i] == 0)
      g_task_ms[i] = 1;
  }
  g_beat_ms = (uint64_t)(500 * g_scale + 0.5);
  if (g_beat_ms == 0)
    g_beat_ms = 1;

  printf("weft %s timeline: the seed's execution models, measured here\n",
         weft_version_string());
  printf("Tasks A = 2 s, B = 1 s, C = 3 s (seed seconds), at scale %g: they wait\n"
         "%llu, %llu and %llu ms. Context switch: %s.\n",
         g_scale, (unsigned long long)g_task_ms[0], (unsigned long long)g_task_ms[1],
         (unsigned long long)g_task_ms[2], weft_switch_method());
  printf("\nModels 1 to 3: high-level API, weft_run(main), as asyncio.run(main()):\n"
         "each run creates a loop, wraps main in a task, runs it until it ends,\n"
         "cancels what is left (the heartbeat) and closes the loop.\n");

  models[0].kind = MODEL_BLOCKING;
  models[0].title = "Synchronous (blocking)";
  models[0].code = "taskA(); taskB(); taskC()";
  models[0].how = "three blocking waits inside main: the loop is stuck meanwhile";
  models[0].expect_s = 6;
  models[1].kind = MODEL_SEQUENTIAL;
  models[1].title = "Asynchronous but sequential";
  models[1].code = "await A; await B; await C";
  models[1].how = "weft_spawn + weft_await, one task after another";
  models[1].expect_s = 6;
  models[2].kind = MODEL_GATHER;
  models[2].title = "Asynchronous and concurrent";
  models[2].code = "gather(A, B, C)";
  models[2].how = "weft_spawn all three, then weft_gather: total = the longest";
  models[2].expect_s = 3;

  for (i = 0; i < 3; i++) {
    char number[8];
    snprintf(number, sizeof number, "%d", i + 1);
    err = run_model(&models[i], number);
    if (err != 0)
      return 1;
  }
  {
    /* Debug builds also say on stderr that this call was a misuse: here it
     * is one on purpose. */
    outline_t o = {{0}, 0};
    ol_add(&o, "No nesting: weft_run called inside model 1's main returned %s (\"%s\"), "
               "as asyncio.run() refuses to run inside a running loop.",
           models[0].nested == WEFT_EBUSY ? "WEFT_EBUSY" : "an unexpected code",
           weft_strerror(models[0].nested));
    printf("\n");
    ol_flush(&o, 0);
  }

  if (run_computing(&models[3], &models[4]) != 0)
    return 1;

  err = run_inside();
  if (err != 0) {
    fprintf(stderr, "timeline: the traced run failed: %s\n", result_text(err));
    return 1;
  }

  printf("\nOne loop: one thread, many tasks, cooperative scheduling; whoever waits\n"
         "gives up the loop. A pool of loops adds what one loop cannot: cores.\n");
  if (trace) {
    if ((err = weft_trace_write()) != 0) {
      fprintf(stderr, "timeline: writing %s: %s\n", trace, weft_strerror(err));
      return 1;
    }
    printf("\nThe trace of every loop above is in %s: open it in ui.perfetto.dev\n"
           "or chrome://tracing (a track per loop, a slice per task step).\n", trace);
  }
  return 0;
}
