/* Seeing inside the loops: counters and their snapshots from any thread,
 * loop names, the process-wide list of loops, the log line callback, and
 * the slow-step warning (asyncio's debug mode, Seastar's stall detector).
 *
 * A loop's counters are plain fields only its own thread writes. Another
 * thread gets a consistent snapshot by asking the loop, through its inbox,
 * to copy them between two steps, and blocking until it has; so reading
 * costs the loop nothing until someone reads.
 *
 * Step times use the coarse monotonic clock: a few nanoseconds a read where
 * the precise clock costs thirty, at a resolution (a few ms) that is plenty
 * to tell a stall from a step. */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --------------------------------------------------------------- logging */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static weft_log_fn log_fn;
static void *log_arg;

void weft_log_set(weft_log_fn fn, void *arg) {
  pthread_mutex_lock(&log_lock);
  log_fn = fn;
  log_arg = arg;
  pthread_mutex_unlock(&log_lock);
}

void weft__log(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&log_lock);
  weft_log_fn fn = log_fn;
  void *arg = log_arg;
  pthread_mutex_unlock(&log_lock);
  if (fn)
    fn(line, arg);
  else
    fprintf(stderr, "%s\n", line);
}

/* ------------------------------------------------------ the loops' list */

static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;
static weft__queue_t loops = {&loops, &loops};
static atomic_uint loops_made;

/* A fork while another thread holds one of these locks would leave the
 * child's copy locked for good: the fork waits for them instead. */
static void fork_prepare(void) {
  pthread_mutex_lock(&loops_lock);
  pthread_mutex_lock(&log_lock);
}

static void fork_done(void) {
  pthread_mutex_unlock(&log_lock);
  pthread_mutex_unlock(&loops_lock);
}

static void fork_guard(void) {
  pthread_atfork(fork_prepare, fork_done, fork_done);
}

void weft__loops_add(weft_loop_t *loop, const char *name) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, fork_guard);
  if (name)
    snprintf(loop->name, sizeof loop->name, "%s", name);
  else
    snprintf(loop->name, sizeof loop->name, "loop-%u", atomic_fetch_add(&loops_made, 1) + 1);
  pthread_mutex_lock(&loops_lock);
  weft__queue_insert_tail(&loops, &loop->registry);
  pthread_mutex_unlock(&loops_lock);
}

void weft__loops_remove(weft_loop_t *loop) {
  pthread_mutex_lock(&loops_lock);
  if (weft__queue_linked(&loop->registry))
    weft__queue_remove(&loop->registry);
  pthread_mutex_unlock(&loops_lock);
}

/* Pushes a message made by make(loop, arg) to every loop (under the list's
 * lock, so none is freed meanwhile); returns how many took one. */
size_t weft__loops_each(weft__msg_t *(*make)(weft_loop_t *loop, void *arg), void *arg) {
  size_t n = 0;
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops; q = q->next) {
    weft_loop_t *loop = weft__container_of(q, weft_loop_t, registry);
    weft__msg_t *m = make(loop, arg);
    if (m)
      n++;
  }
  pthread_mutex_unlock(&loops_lock);
  return n;
}

const char *weft_loop_name(const weft_loop_t *loop) {
  return loop ? loop->name : "(null)";
}

/* ------------------------------------------------------------ slow steps */

uint64_t weft__slow_default_ns(uint64_t opt_ms) {
  if (opt_ms)
    return opt_ms * 1000000u;
  const char *env = getenv("WEFT_DEBUG");
  return env && env[0] && strcmp(env, "0") != 0 ? 100u * 1000000u : 0;
}

/* A task step of ns just ended on loop (t may have ended with it). */
void weft__step_timed(weft_loop_t *loop, weft_task_t *t, uint64_t ns) {
  if (ns > loop->counters.longest_step_ns)
    loop->counters.longest_step_ns = ns;
  if (loop->slow_ns && ns >= loop->slow_ns) {
    loop->counters.slow_steps++;
    weft__log("weft: slow step: task %s held loop %s for %llu ms", weft_task_name(t), loop->name,
              (unsigned long long)(ns / 1000000u));
  }
}

/* libuv's callbacks (timers, I/O, the application's own handles) held the
 * loop for ns, time blocked in the poll not counted. */
void weft__callbacks_timed(weft_loop_t *loop, uint64_t ns) {
  if (loop->slow_ns && ns >= loop->slow_ns) {
    loop->counters.slow_steps++;
    weft__log("weft: slow callbacks: libuv callbacks held loop %s for %llu ms", loop->name,
              (unsigned long long)(ns / 1000000u));
  }
}

/* ------------------------------------------------------------- snapshots */

static void snapshot(weft_loop_t *loop, weft_stats_t *out) {
  *out = loop->counters;
  out->ready = loop->nready;
  out->waiting = loop->nwaiting;
  out->live = loop->nlive;
  out->stacks_pooled = loop->stacks.nwarm;
  out->stacks_guarded = loop->stacks.nguarded;
  out->stacks_canary = loop->stacks.ncanary;
  out->wakeups_sent = atomic_load_explicit(&loop->wakeups_sent, memory_order_relaxed);
  out->wakeups_received = loop->wakeups_received;
  uint64_t now = uv_hrtime(), run = loop->run_ns;
  if (loop->running)
    run += now - loop->run_since;
  /* Taken from a callback of the poll itself, for another thread: the
   * poll so far counts. */
  out->parked_ns = loop->parked_ns + (loop->park_since ? now - loop->park_since : 0);
  out->busy_ns = run > out->parked_ns ? run - out->parked_ns : 0;
}

typedef struct stats_req {
  weft__msg_t msg;
  weft_stats_t *out;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
} stats_req_t;

static void stats_run(weft__msg_t *m, weft_loop_t *loop) {
  stats_req_t *r = weft__container_of(m, stats_req_t, msg);
  snapshot(loop, r->out);
  pthread_mutex_lock(&r->lock);
  r->done = true;
  pthread_cond_signal(&r->cond);
  pthread_mutex_unlock(&r->lock);
}

int weft_loop_stats(weft_loop_t *loop, weft_stats_t *out) {
  if (!loop || !out)
    return WEFT_EINVAL;
  if (weft__on_owner(loop)) {
    snapshot(loop, out);
    return 0;
  }
  if (weft__tls.running) {
    /* Blocking here would hold this loop too: two loops asking each
     * other would wait for ever. */
    weft__misuse("weft_loop_stats", "another loop's stats, from a thread that runs a loop");
    return WEFT_EBUSY;
  }
  /* The loop drains its inbox until it is closed, so the request is
   * answered (a closing loop drains what was queued before the close). */
  stats_req_t r = {.msg = {.run = stats_run}, .out = out};
  pthread_mutex_init(&r.lock, NULL);
  pthread_cond_init(&r.cond, NULL);
  int err = weft__inbox_push(loop, &r.msg, false);
  if (!err) {
    pthread_mutex_lock(&r.lock);
    while (!r.done)
      pthread_cond_wait(&r.cond, &r.lock);
    pthread_mutex_unlock(&r.lock);
  }
  pthread_cond_destroy(&r.cond);
  pthread_mutex_destroy(&r.lock);
  return err;
}
