/* Diagnostics, in one place: what the environment asks for (WEFT_DEBUG,
 * read once), where weft's lines go (the log sink, weft_log_set), and the
 * two ways weft complains: weft__misuse, a sentence for an API misuse
 * (debug builds, or WEFT_DEBUG=1), always followed by an error code to the
 * caller; and weft__fatal, for a broken invariant that cannot be survived
 * (a smashed stack), which reports and aborts.
 *
 * Every line, misuse and fatal ones included, goes through the sink, so an
 * application that routes weft's lines to its own log sees them all. A
 * fatal line also goes to stderr when a sink is set: the process is about
 * to abort, and the sink may buffer. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ environment */

/* WEFT_DEBUG, read once: a non-empty value other than "0" turns it on. */
static int debug_env = -1;

static bool env_debug(void) {
  int d = __atomic_load_n(&debug_env, __ATOMIC_RELAXED);
  if (d < 0) {
    const char *env = getenv("WEFT_DEBUG");
    d = env && env[0] && strcmp(env, "0") != 0;
    __atomic_store_n(&debug_env, d, __ATOMIC_RELAXED);
  }
  return d != 0;
}

bool weft__debug_enabled(void) {
#if defined(WEFT_DEBUG_BUILD)
  return true;
#else
  return env_debug();
#endif
}

uint64_t weft__slow_default_ns(uint64_t opt_ms) {
  if (opt_ms)
    return opt_ms * 1000000u;
  /* The slow-step warning follows the environment, not the build type: a
   * debug build would otherwise warn about every long test step. */
  return env_debug() ? 100u * 1000000u : 0;
}

/* --------------------------------------------------------------- the sink */

/* The sink runs outside log_lock (it may log in turn, or set another),
 * and its calls are counted, so that weft_log_set can wait until no call
 * of the sinks it replaced is running: the watchdog's thread logs at any
 * time, and an application frees the old sink's arg after the set. Calls
 * are counted per generation (each set begins one): the set waits for the
 * calls begun before it (log_old), never for those of the sink it set
 * (log_cur), which threads that keep logging would never let reach 0. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t log_idle = PTHREAD_COND_INITIALIZER;
static weft_log_fn log_fn;
static void *log_arg;
static uint64_t log_gen;
static unsigned log_cur, log_old;
static _Thread_local bool in_sink;

void weft_log_set(weft_log_fn fn, void *arg) {
  weft__fork_guard_once();
  pthread_mutex_lock(&log_lock);
  log_fn = fn;
  log_arg = arg;
  log_gen++;
  log_old += log_cur;
  log_cur = 0;
  while (log_old > 0 && !in_sink)
    pthread_cond_wait(&log_idle, &log_lock);
  pthread_mutex_unlock(&log_lock);
}

/* Hands line to the sink; returns whether an application sink took it. */
static bool sink(const char *line) {
  pthread_mutex_lock(&log_lock);
  weft_log_fn fn = log_fn;
  void *arg = log_arg;
  uint64_t gen = log_gen;
  if (fn)
    log_cur++;
  pthread_mutex_unlock(&log_lock);
  if (fn) {
    bool nested = in_sink;
    in_sink = true;
    fn(line, arg);
    in_sink = nested;
    pthread_mutex_lock(&log_lock);
    if (gen == log_gen)
      log_cur--;
    else if (--log_old == 0)
      pthread_cond_broadcast(&log_idle);
    pthread_mutex_unlock(&log_lock);
    return true;
  }
  fprintf(stderr, "%s\n", line);
  return false;
}

void weft__log(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  sink(line);
}

void weft__log_fork_prepare(void) {
  pthread_mutex_lock(&log_lock);
}

void weft__log_fork_done(bool child) {
  if (child) {
    /* The threads that were inside a sink are not in the child: their
     * calls will never end there. */
    log_cur = log_old = 0;
    pthread_cond_init(&log_idle, NULL);
  }
  pthread_mutex_unlock(&log_lock);
}

/* ------------------------------------------------------ misuse and fatal */

void weft__misuse(const char *fn, const char *fmt, ...) {
  if (!weft__debug_enabled())
    return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  weft__log("weft: %s: %s", fn, msg);
}

void weft__fatal(const char *fmt, ...) {
  char msg[256], line[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(line, sizeof line, "weft: fatal: %s", msg);
  if (sink(line))
    fprintf(stderr, "%s\n", line);
  abort();
}
