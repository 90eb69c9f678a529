/* Stalls seen while they last (Seastar's stall detector): what each loop
 * is running now, readable from any thread, and a watchdog thread that
 * reports a step holding its loop past the slow-step threshold before the
 * step ends.
 *
 * A loop publishes the step it runs (weft__live_t, written in run_task):
 * when the step began, and, in a seqlock, the task's id and name, written
 * only when the task differs from the last one (its name copied only if it
 * has one), so a step costs two stores where one task runs step after
 * step, and a few more where tasks alternate. weft_dump and weft_loop_stats read it to say
 * which task holds a loop that cannot answer them, at once.
 *
 * The watchdog runs while any loop watching for slow steps exists (a
 * slow_step_ms or WEFT_DEBUG=1). It wakes every quarter of the smallest
 * threshold (5 to 100 ms), reads every loop's step, and logs a step that
 * has run past its loop's threshold, naming the task and the loop, then
 * again each time the step's length doubles. Nothing stalls: it reads a
 * few words per loop and sleeps again. The line after the step, with its
 * whole length, still comes from stats.c.
 *
 * With each line of a stall comes the stalled thread's call stack,
 * where that can be done safely: the watchdog sends the loop's thread a
 * signal (a real-time one weft takes only if nobody handles it already),
 * whose handler walks the frame pointers of the interrupted step inside
 * the running task's stack (backtrace.c's walk, which reads nothing outside
 * it and calls nothing) and hands the return addresses back; the watchdog
 * names them. A handler that has not answered within 20 ms (a thread in a
 * system call that blocks the signal, or a sanitizer that defers it) just
 * means no call stack. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
  if (!since)
    v->task_id = 0; /* between steps */
  v->since_ns = since;
  uint64_t now = weft__coarse_ns();
  v->held_ns = v->task_id && now > since ? now - since : 0;
  memcpy(v->name, w, sizeof v->name);
  v->name[sizeof v->name - 1] = '\0';
  if (v->task_id && !v->name[0])
    snprintf(v->name, sizeof v->name, "task-%llu", (unsigned long long)v->task_id);
}

/* ------------------------------------------------- a stalled call stack */

/* The signal that asks a loop's thread for its call stack; 0: none. */
static int bt_signal;

#if defined(__clang__) || defined(__GNUC__)
#define STALL_NO_SANITIZE __attribute__((no_sanitize_address, no_sanitize_thread))
#else
#define STALL_NO_SANITIZE
#endif

STALL_NO_SANITIZE static void bt_handler(int sig, siginfo_t *si, void *ucp) {
  (void)sig;
  (void)si;
  int saved = errno;
  weft_loop_t *loop = weft__tls.running;
  if (loop) {
    uint64_t asked = atomic_load_explicit(&loop->stall_bt.asked, memory_order_acquire);
    size_t n = 0;
    weft_task_t *t = loop->current;
    uintptr_t pc, fp, sp;
    if (t && t->stack && weft__ucontext_frame(ucp, &pc, &fp, &sp)) {
      uintptr_t lo = (uintptr_t)t->stack->lo, hi = lo + t->stack->size;
      if (sp >= lo && sp < hi)
        n = weft__frames_walk(pc, fp, lo, hi, loop->stall_bt.pcs, 32);
    }
    atomic_store_explicit(&loop->stall_bt.n, n, memory_order_relaxed);
    atomic_store_explicit(&loop->stall_bt.taken, asked, memory_order_release);
  }
  errno = saved;
}

/* Takes a real-time signal that nobody handles, for good: a request still
 * on its way when the watchdog stops must find the handler. */
static void bt_install(void) {
  if (getenv("WEFT_STALL_BACKTRACE") && strcmp(getenv("WEFT_STALL_BACKTRACE"), "0") == 0)
    return;
  for (int sig = SIGRTMAX - 1; sig > SIGRTMIN + 4; sig--) {
    if (weft__sig_claim(sig, bt_handler, SA_RESTART)) {
      bt_signal = sig;
      return;
    }
  }
}

/* Asks loop's thread, in a step of the task the watchdog reports, for its
 * call stack, and logs it. Under the registry's lock (the loop stays). */
static void log_call_stack(weft_loop_t *loop, const char *task) {
  if (!bt_signal)
    return;
  uint64_t req = atomic_load_explicit(&loop->stall_bt.asked, memory_order_relaxed) + 1;
  atomic_store_explicit(&loop->stall_bt.asked, req, memory_order_release);
  if (pthread_kill(loop->owner, bt_signal) != 0)
    return;
  for (int i = 0; i < 20; i++) {
    if (atomic_load_explicit(&loop->stall_bt.taken, memory_order_acquire) == req)
      break;
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  if (atomic_load_explicit(&loop->stall_bt.taken, memory_order_acquire) != req)
    return;
  size_t n = atomic_load_explicit(&loop->stall_bt.n, memory_order_relaxed);
  char *text = NULL;
  size_t len = 0;
  FILE *f = n ? open_memstream(&text, &len) : NULL;
  if (!f)
    return;
  weft__frames_print(f, loop->stall_bt.pcs, n, "");
  fclose(f);
  weft__log("weft: stall: where task %s is now:", task);
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    weft__log("weft: stall:   %s", line);
  }
  free(text);
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
    loop->wd_since = 0;
    return;
  }
  if (v.since_ns != loop->wd_since) {
    loop->wd_since = v.since_ns;
    loop->wd_next_ns = loop->slow_ns;
  }
  if (v.held_ns < loop->wd_next_ns)
    return;
  weft__log("weft: stall: task %s has held loop %s for %llu ms and still runs", v.name,
            loop->name, (unsigned long long)(v.held_ns / 1000000u));
  log_call_stack(loop, v.name);
  while (loop->wd_next_ns <= v.held_ns)
    loop->wd_next_ns *= 2;
}

#define PERIOD_MIN_NS (5u * 1000000u)
#define PERIOD_MAX_NS (100u * 1000000u)

static void *watchdog_main(void *arg) {
  (void)arg;
  /* The first scan finds the smallest threshold. */
  uint64_t period = PERIOD_MIN_NS;
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

static void once_init(void) {
  bt_install();
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&wd_cond, &attr);
  pthread_condattr_destroy(&attr);
}

void weft__watchdog_add(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, once_init);
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
