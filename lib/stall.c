/* Stalls seen while they last (Seastar's stall detector): what each loop
 * is running now, readable from any thread, and a watchdog thread that
 * reports a step holding its loop past the slow-step threshold before the
 * step ends.
 *
 * A loop publishes the step it runs in a seqlock (weft__live_t, written in
 * run_task): the task's id, when the step began, and the task's name,
 * copied only when the task differs from the last one named, so a loop
 * pays a few stores a step. weft_dump and weft_loop_stats read it to say
 * which task holds a loop that cannot answer them, at once.
 *
 * The watchdog runs while any loop watching for slow steps exists (a
 * slow_step_ms or WEFT_DEBUG=1). It wakes every quarter of the smallest
 * threshold (5 to 100 ms), reads every loop's step, and logs a step that
 * has run past its loop's threshold, naming the task and the loop, then
 * again each time the step's length doubles. Nothing stalls: it reads a
 * few words per loop and sleeps again. The line after the step, with its
 * whole length, still comes from stats.c. */
#include "internal.h"

#include <time.h>

void weft__live_read(weft_loop_t *loop, weft__live_view_t *v) {
  weft__live_t *l = &loop->live;
  uint64_t s1, s2, since, w[4];
  do {
    s1 = atomic_load_explicit(&l->seq, memory_order_acquire);
    v->task_id = atomic_load_explicit(&l->task_id, memory_order_relaxed);
    since = atomic_load_explicit(&l->since_ns, memory_order_relaxed);
    for (int i = 0; i < 4; i++)
      w[i] = atomic_load_explicit(&l->name[i], memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    s2 = atomic_load_explicit(&l->seq, memory_order_relaxed);
  } while ((s1 & 1) || s1 != s2);
  v->seq = s1;
  uint64_t now = weft__coarse_ns();
  v->held_ns = v->task_id && now > since ? now - since : 0;
  memcpy(v->name, w, sizeof v->name);
  v->name[sizeof v->name - 1] = '\0';
  if (v->task_id && !v->name[0])
    snprintf(v->name, sizeof v->name, "task-%llu", (unsigned long long)v->task_id);
}

/* ------------------------------------------------------------ watchdog */

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static pthread_t wd_thread;
static unsigned wd_loops;     /* loops watching for slow steps */
static bool wd_running;       /* the thread exists (and must be joined) */
static bool wd_stop;

typedef struct scan {
  uint64_t period_ns;         /* the next sleep: a quarter of the smallest threshold */
} scan_t;

static void scan_loop(weft_loop_t *loop, void *arg) {
  scan_t *sc = arg;
  if (!loop->slow_ns)
    return;
  uint64_t quarter = loop->slow_ns / 4;
  if (quarter < sc->period_ns)
    sc->period_ns = quarter;
  weft__live_view_t v;
  weft__live_read(loop, &v);
  if (!v.task_id) {
    loop->wd_seq = 0;
    return;
  }
  if (v.seq != loop->wd_seq) {
    loop->wd_seq = v.seq;
    loop->wd_next_ns = loop->slow_ns;
  }
  if (v.held_ns < loop->wd_next_ns)
    return;
  weft__log("weft: stall: task %s has held loop %s for %llu ms and still runs", v.name,
            loop->name, (unsigned long long)(v.held_ns / 1000000u));
  while (loop->wd_next_ns <= v.held_ns)
    loop->wd_next_ns *= 2;
}

#define PERIOD_MIN_NS (5u * 1000000u)
#define PERIOD_MAX_NS (100u * 1000000u)

static void *watchdog_main(void *arg) {
  (void)arg;
  uint64_t period = PERIOD_MAX_NS;
  pthread_mutex_lock(&wd_lock);
  while (!wd_stop) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + period;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    pthread_cond_timedwait(&wd_cond, &wd_lock, &until);
    if (wd_stop)
      break;
    pthread_mutex_unlock(&wd_lock);
    scan_t sc = {.period_ns = PERIOD_MAX_NS};
    weft__loops_visit(scan_loop, &sc);
    period = sc.period_ns < PERIOD_MIN_NS ? PERIOD_MIN_NS : sc.period_ns;
    pthread_mutex_lock(&wd_lock);
  }
  pthread_mutex_unlock(&wd_lock);
  return NULL;
}

static void cond_init(void) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&wd_cond, &attr);
  pthread_condattr_destroy(&attr);
}

void weft__watchdog_add(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, cond_init);
  pthread_mutex_lock(&wd_lock);
  if (wd_loops++ == 0 && !wd_running) {
    wd_stop = false;
    /* Without its thread there are no stall lines, only the lines after
     * each slow step: not worth failing a loop for. */
    wd_running = pthread_create(&wd_thread, NULL, watchdog_main, NULL) == 0;
  }
  pthread_mutex_unlock(&wd_lock);
}

void weft__watchdog_remove(void) {
  pthread_mutex_lock(&wd_lock);
  bool join = --wd_loops == 0 && wd_running;
  if (join) {
    wd_stop = true;
    wd_running = false;
    pthread_cond_signal(&wd_cond);
  }
  pthread_mutex_unlock(&wd_lock);
  if (join)
    pthread_join(wd_thread, NULL);
}
