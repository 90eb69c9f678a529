/* The pool of loops: N worker threads, each owning one loop that runs until
 * the pool shuts down. Work reaches the workers only through each loop's
 * inbox (weft_spawn, weft_task_cancel, weft_loop_call_soon from any thread).
 * Shutdown first refuses spawns from outside (under each inbox's lock, so no
 * spawn slips in between the check and the push), then asks every loop to
 * finish what it has (cancelling it first in WEFT_CANCEL mode); a worker whose
 * loop has no task and no message left closes the loop and exits, and the
 * loops are freed only after every thread has been joined, so a late call
 * from another thread meets a closed inbox, never freed memory. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WEFT__POOL_MAX 1024

typedef struct shutdown_msg {
  weft__msg_t msg;
  weft_shutdown_t how;
} shutdown_msg_t;

typedef struct worker {
  weft_pool_t *pool;
  shutdown_msg_t shutdown; /* made with the pool, so ending it cannot fail */
  weft__msg_t cut;         /* weft_pool_drain's cancel at its deadline */
  unsigned index;
  pthread_t thread;
  bool started;      /* the thread was created (and must be joined) */
  bool done;         /* under pool->lock: its loop has closed */
  weft_loop_t *loop; /* set by the worker once its loop exists */
  /* weft_pool_drain's books, written on the worker's thread and read after
   * the join: the tasks the loop had ended when the drain reached it, and
   * when the deadline's cancel did (UINT64_MAX: it never came). */
  uint64_t drain_base, drain_cut;
} worker_t;

struct weft_pool {
  unsigned n;
  worker_t *workers;
  atomic_uint next;
  weft_loop_opts_t loop_opts;
  pthread_mutex_t lock;     /* start-up handshake, workers ending */
  pthread_cond_t cond;      /* on CLOCK_MONOTONIC */
  unsigned answered;        /* workers that reported their loop (or failure) */
  unsigned ndone;           /* workers whose loop has closed */
  int start_err;
  weft_drain_report_t *report; /* weft_pool_drain's, under lock */
};

/* Tasks the loop has seen end, whatever their status. */
static uint64_t ended_count(const weft_loop_t *loop) {
  return loop->counters.finished + loop->counters.failed + loop->counters.cancelled;
}

static void shutdown_run(weft__msg_t *m, weft_loop_t *loop) {
  shutdown_msg_t *sm = weft__container_of(m, shutdown_msg_t, msg);
  worker_t *w = weft__container_of(sm, worker_t, shutdown);
  w->drain_base = ended_count(loop);
  atomic_store_explicit(&loop->draining, 1, memory_order_relaxed);
  if (sm->how == WEFT_CANCEL) {
    for (weft__queue_t *q = loop->tasks.next; q != &loop->tasks; q = q->next)
      weft_task_cancel(weft__container_of(q, weft_task_t, all));
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  weft_pool_t *pool = w->pool;
  weft_loop_t *loop = NULL;
  char name[16];
  snprintf(name, sizeof name, "weft-%u", w->index);
  pthread_setname_np(pthread_self(), name);

  /* The loop is named after its thread (or the name given, numbered). */
  weft_loop_opts_t opts = pool->loop_opts;
  char loop_name[32];
  if (opts.name)
    snprintf(loop_name, sizeof loop_name, "%s-%u", opts.name, w->index);
  else
    snprintf(loop_name, sizeof loop_name, "%s", name);
  opts.name = loop_name;
  int err = weft_loop_new(&loop, &opts);
  if (!err) {
    loop->pool = pool;
    loop->pool_index = w->index;
  }
  pthread_mutex_lock(&pool->lock);
  w->loop = loop;
  if (err && !pool->start_err)
    pool->start_err = err;
  pool->answered++;
  pthread_cond_broadcast(&pool->cond);
  pthread_mutex_unlock(&pool->lock);
  if (err)
    return NULL;

  /* weft_loop_stop on a pool's loop only ends one run: the worker keeps its
   * loop running until the pool's shutdown has drained it (a stop in the
   * same round as the shutdown must not turn a drain into a cancel). */
  do
    weft_loop_run_forever(loop);
  while (!weft__loop_drained(loop));
  weft__loop_close(loop, false);
  pthread_mutex_lock(&pool->lock);
  w->done = true;
  pool->ndone++;
  pthread_cond_broadcast(&pool->cond);
  pthread_mutex_unlock(&pool->lock);
  return NULL;
}

/* Asks every started worker to finish. */
static void pool_stop(weft_pool_t *pool, weft_shutdown_t how) {
  for (unsigned i = 0; i < pool->n; i++) {
    weft_loop_t *loop = pool->workers[i].loop;
    if (!loop)
      continue;
    pthread_mutex_lock(&loop->inbox.lock);
    loop->inbox.refuse_spawns = true;
    pthread_mutex_unlock(&loop->inbox.lock);
    /* Set now, not when the shutdown message comes up behind the queued
     * spawns: in CANCEL mode none of those may start. */
    if (how == WEFT_CANCEL)
      atomic_store_explicit(&loop->cancel_new, 1, memory_order_relaxed);
  }
  for (unsigned i = 0; i < pool->n; i++) {
    weft_loop_t *loop = pool->workers[i].loop;
    if (!loop)
      continue;
    shutdown_msg_t *sm = &pool->workers[i].shutdown;
    sm->msg.run = shutdown_run;
    sm->how = how;
    /* A worker's inbox stays open until its loop has drained: this runs. */
    if (weft__inbox_push(loop, &sm->msg, false) != 0)
      weft__fatal("weft_pool_shutdown: a worker's loop closed before it was asked to");
  }
}

/* Joins every started worker. */
static void pool_join(weft_pool_t *pool) {
  for (unsigned i = 0; i < pool->n; i++)
    if (pool->workers[i].started)
      pthread_join(pool->workers[i].thread, NULL);
}

/* Frees the joined pool. */
static void pool_free(weft_pool_t *pool) {
  for (unsigned i = 0; i < pool->n; i++)
    if (pool->workers[i].loop)
      weft__loop_free(pool->workers[i].loop);
  pthread_cond_destroy(&pool->cond);
  pthread_mutex_destroy(&pool->lock);
  free(pool->workers);
  free(pool);
}

static void pool_end(weft_pool_t *pool, weft_shutdown_t how) {
  pool_stop(pool, how);
  pool_join(pool);
  pool_free(pool);
}

int weft_pool_new(weft_pool_t **out, const weft_pool_opts_t *opts) {
  weft_pool_opts_t defaults = {0};
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (!opts)
    opts = &defaults;
  unsigned n = opts->workers;
  if (n == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n = cpus > 0 ? (unsigned)cpus : 1;
  }
  if (n > WEFT__POOL_MAX) {
    weft__misuse("weft_pool_new", "%u workers is over the limit of %d", n, WEFT__POOL_MAX);
    return WEFT_EINVAL;
  }
  weft_pool_t *pool = weft__calloc(1, sizeof *pool);
  if (!pool)
    return WEFT_ENOMEM;
  pool->workers = weft__calloc(n, sizeof *pool->workers);
  if (!pool->workers) {
    free(pool);
    return WEFT_ENOMEM;
  }
  pool->n = n;
  pool->loop_opts = opts->loop;
  atomic_init(&pool->next, 0);
  pthread_mutex_init(&pool->lock, NULL);
  pthread_condattr_t cattr;
  pthread_condattr_init(&cattr);
  pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
  pthread_cond_init(&pool->cond, &cattr);
  pthread_condattr_destroy(&cattr);

  /* Workers inherit the signal mask of the thread that creates them:
   * blocking here, not in each worker, leaves no moment in which a worker
   * could take the application's signal. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGCHLD);
  sigaddset(&block, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int err = 0;
  unsigned started = 0;
  for (unsigned i = 0; i < n; i++) {
    worker_t *w = &pool->workers[i];
    w->pool = pool;
    w->index = i;
    err = -pthread_create(&w->thread, NULL, worker_main, w);
    if (err)
      break;
    w->started = true;
    started++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);

  pthread_mutex_lock(&pool->lock);
  while (pool->answered < started)
    pthread_cond_wait(&pool->cond, &pool->lock);
  if (!err)
    err = pool->start_err;
  pthread_mutex_unlock(&pool->lock);
  if (err) {
    pool_end(pool, WEFT_CANCEL);
    return err == UV_ENOMEM || err == -ENOMEM ? WEFT_ENOMEM : err;
  }
  *out = pool;
  return 0;
}

unsigned weft_pool_size(const weft_pool_t *pool) {
  return pool ? pool->n : 0;
}

weft_loop_t *weft_pool_loop(weft_pool_t *pool, unsigned i) {
  if (!pool || i >= pool->n)
    return NULL;
  return pool->workers[i].loop;
}

weft_loop_t *weft_pool_next(weft_pool_t *pool) {
  if (!pool)
    return NULL;
  unsigned i = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);
  return pool->workers[i % pool->n].loop;
}

/* Whether the calling thread is one of the pool's workers (fn: the call,
 * for the misuse line). */
static bool on_worker(weft_pool_t *pool, const char *fn) {
  for (unsigned i = 0; i < pool->n; i++) {
    if (pool->workers[i].started && pthread_equal(pool->workers[i].thread, pthread_self())) {
      weft__misuse(fn, "called from the pool's own worker weft-%u", i);
      return true;
    }
  }
  return false;
}

int weft_pool_shutdown(weft_pool_t *pool, weft_shutdown_t how) {
  if (!pool || (how != WEFT_DRAIN && how != WEFT_CANCEL))
    return WEFT_EINVAL;
  if (on_worker(pool, "weft_pool_shutdown"))
    return WEFT_EINVAL;
  pool_end(pool, how);
  return 0;
}

/* weft_pool_drain's deadline, on a loop that has not drained: every task
 * still live is cancelled, and tasks that come later never run. The first
 * few are named in the report. */
static void cut_run(weft__msg_t *m, weft_loop_t *loop) {
  worker_t *w = weft__container_of(m, worker_t, cut);
  weft_pool_t *pool = w->pool;
  w->drain_cut = ended_count(loop);
  atomic_store_explicit(&loop->cancel_new, 1, memory_order_relaxed);
  pthread_mutex_lock(&pool->lock);
  weft_drain_report_t *r = pool->report;
  for (weft__queue_t *q = loop->tasks.next; q != &loop->tasks && r->nnames < WEFT_DRAIN_NAMES;
       q = q->next)
    snprintf(r->names[r->nnames++], sizeof r->names[0], "%s",
             weft_task_name(weft__container_of(q, weft_task_t, all)));
  pthread_mutex_unlock(&pool->lock);
  for (weft__queue_t *q = loop->tasks.next; q != &loop->tasks; q = q->next)
    weft_task_cancel(weft__container_of(q, weft_task_t, all));
}

int weft_pool_drain(weft_pool_t *pool, uint64_t timeout_ms, weft_drain_report_t *report) {
  weft_drain_report_t own;
  if (!pool)
    return WEFT_EINVAL;
  if (on_worker(pool, "weft_pool_drain"))
    return WEFT_EINVAL;
  if (!report)
    report = &own;
  memset(report, 0, sizeof *report);
  uint64_t t0 = uv_hrtime();
  for (unsigned i = 0; i < pool->n; i++)
    pool->workers[i].drain_cut = UINT64_MAX;
  pthread_mutex_lock(&pool->lock);
  pool->report = report;
  pthread_mutex_unlock(&pool->lock);
  pool_stop(pool, WEFT_DRAIN);

  /* Up to the deadline, the loops finish what they have. */
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  if (timeout_ms != WEFT_FOREVER)
    weft__timespec_add_ms(&until, timeout_ms);
  pthread_mutex_lock(&pool->lock);
  while (pool->ndone < pool->n) {
    if (timeout_ms == WEFT_FOREVER)
      pthread_cond_wait(&pool->cond, &pool->lock);
    else if (pthread_cond_timedwait(&pool->cond, &pool->lock, &until) == ETIMEDOUT)
      break;
  }
  bool busy[WEFT__POOL_MAX];
  for (unsigned i = 0; i < pool->n; i++)
    busy[i] = !pool->workers[i].done;
  pthread_mutex_unlock(&pool->lock);

  /* Then what is left is cancelled, and unwinds. A loop that drained
   * meanwhile has closed its inbox and refuses the message: nothing to
   * cut there. */
  for (unsigned i = 0; i < pool->n; i++) {
    if (!busy[i])
      continue;
    worker_t *w = &pool->workers[i];
    w->cut.run = cut_run;
    (void)weft__inbox_push(w->loop, &w->cut, false);
  }
  pool_join(pool);
  for (unsigned i = 0; i < pool->n; i++) {
    worker_t *w = &pool->workers[i];
    uint64_t total = ended_count(w->loop);
    if (w->drain_cut == UINT64_MAX) {
      report->completed += total - w->drain_base;
    } else {
      report->completed += w->drain_cut - w->drain_base;
      report->cancelled += total - w->drain_cut;
    }
  }
  report->elapsed_ms = (uv_hrtime() - t0) / 1000000;
  pool_free(pool);
  return 0;
}

static void stats_add(weft_stats_t *sum, const weft_stats_t *one) {
  sum->spawned += one->spawned;
  sum->finished += one->finished;
  sum->failed += one->failed;
  sum->cancelled += one->cancelled;
  sum->switches += one->switches;
  sum->rounds += one->rounds;
  sum->ready += one->ready;
  sum->waiting += one->waiting;
  sum->live += one->live;
  sum->stacks_pooled += one->stacks_pooled;
  sum->stacks_guarded += one->stacks_guarded;
  sum->stacks_canary += one->stacks_canary;
  sum->inbox_in += one->inbox_in;
  sum->wakeups_sent += one->wakeups_sent;
  sum->wakeups_received += one->wakeups_received;
  sum->busy_ns += one->busy_ns;
  sum->parked_ns += one->parked_ns;
  sum->slow_steps += one->slow_steps;
  sum->stream_writes += one->stream_writes;
  /* The longest step is the longest of any loop, not a sum. */
  if (one->longest_step_ns > sum->longest_step_ns)
    sum->longest_step_ns = one->longest_step_ns;
}

int weft_pool_stats(weft_pool_t *pool, weft_stats_t *sum, weft_stats_t *per_loop) {
  if (!pool || !sum)
    return WEFT_EINVAL;
  for (unsigned i = 0; i < pool->n; i++)
    if (pthread_equal(pool->workers[i].thread, pthread_self())) {
      weft__misuse("weft_pool_stats", "called from one of the pool's own workers");
      return WEFT_EINVAL;
    }
  memset(sum, 0, sizeof *sum);
  for (unsigned i = 0; i < pool->n; i++) {
    weft_stats_t one;
    /* Every loop's counters: a loop held by a step is waited for. */
    int err = weft__loop_stats(pool->workers[i].loop, &one, true);
    if (err)
      return err;
    if (per_loop)
      per_loop[i] = one;
    stats_add(sum, &one);
  }
  return 0;
}
