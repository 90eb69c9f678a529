/* Signals: weft_signal_wait awaits a signal from a task on any loop (pool
 * workers included) or a plain thread.
 *
 * One process-wide watcher: the first wait starts an internal thread,
 * weft-signal, which runs a libuv loop of its own with a uv_signal_t per
 * watched signal. libuv's handler (installed with sigaction, so whichever
 * thread the kernel picks runs it) writes to that loop's pipe, and the
 * thread's callback wakes every waiter of the signal through its waiter
 * (waiter.c: a task through its loop's inbox, a plain thread through its
 * condition variable). Using libuv's signal handles, rather than a handler
 * of weft's own, keeps an application's own uv_signal_t on the same signal
 * working: libuv dispatches to every handle.
 *
 * The thread is made with every signal blocked, and unblocks each signal
 * as it starts watching it, so a watched signal always has a thread that
 * takes it, even where the application blocked it everywhere else (pool
 * workers block SIGINT, SIGTERM, SIGCHLD and SIGPIPE), while the signals
 * weft does not watch are never taken from the thread the application
 * chose for them.
 *
 * Waiters queue on a wait queue per signal (waitq.c), so the cut of a wait
 * by a cancel or a deadline and a signal's wake are decided under one lock:
 * a waiter the signal reached first returns 0. A signal that comes while
 * nobody waits is held (one, as the kernel holds a pending signal) and the
 * next wait takes it at once, so a loop that handles a signal and waits
 * again misses none that came meanwhile.
 *
 * A signal stays watched (caught, not its default action) from its first
 * wait until weft_signal_stop, which puts back the disposition it had
 * before; the thread lives until the process exits. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>

typedef struct sigslot {
  weft__waitq_t q;          /* waiters; q.lock also guards active and pending */
  bool active;              /* watched: a waiter that enters is woken by the next signal */
  bool pending;             /* a signal came while nobody waited */
  /* The watcher thread's own. */
  bool watched;             /* under g.lock: its handle is started */
  bool h_init;
  uv_signal_t h;
  struct sigaction saved;   /* the disposition before weft watched it */
} sigslot_t;

/* A request to the watcher thread, on its caller's stack until done. */
typedef struct sigreq {
  weft__queue_t link;
  int signum;
  bool start;               /* start watching, else stop */
  bool done;
  int err;
} sigreq_t;

static struct {
  pthread_once_t once;
  pthread_mutex_t lock;     /* started, reqs, each slot's watched */
  pthread_cond_t cond;      /* a request is done */
  bool started;
  uv_loop_t loop;
  uv_async_t async;
  weft__queue_t reqs;
  sigslot_t slot[NSIG];
} g = {
  .once = PTHREAD_ONCE_INIT,
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .cond = PTHREAD_COND_INITIALIZER,
};

static void slots_init(void) {
  for (int i = 0; i < NSIG; i++)
    weft__waitq_init(&g.slot[i].q);
  weft__queue_init(&g.reqs);
}

/* Signals a task can wait for: not the two that cannot be caught, not the
 * faults that the faulting thread itself must answer, not the real-time
 * signals glibc keeps for itself. */
static bool signum_valid(int signum) {
  if (signum <= 0 || signum >= NSIG)
    return false;
  switch (signum) {
  case SIGKILL:
  case SIGSTOP:
  case SIGSEGV:
  case SIGBUS:
  case SIGFPE:
  case SIGILL:
    return false;
  default:
    break;
  }
#ifdef SIGRTMIN
  if (signum > SIGSYS && signum < SIGRTMIN)
    return false;
#endif
  return true;
}

/* ------------------------------------------------------ watcher thread */

static void sigmask_one(int how, int signum) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signum);
  pthread_sigmask(how, &set, NULL);
}

/* Wakes every waiter of s, or holds the signal for the next. */
static void signal_cb(uv_signal_t *h, int signum) {
  sigslot_t *s = h->data;
  (void)signum;
  pthread_mutex_lock(&s->q.lock);
  weft__qwait_t *w = weft__waitq_head(&s->q);
  if (!w)
    s->pending = true;
  for (; w; w = weft__waitq_head(&s->q))
    weft__waitq_grant(w);
  pthread_mutex_unlock(&s->q.lock);
}

static int watch_start(int signum) {
  sigslot_t *s = &g.slot[signum];
  if (s->watched)
    return 0;
  if (sigaction(signum, NULL, &s->saved) != 0)
    return WEFT_EINVAL;
  if (!s->h_init) {
    int err = uv_signal_init(&g.loop, &s->h);
    if (err)
      return err;
    s->h.data = s;
    s->h_init = true;
  }
  int err = uv_signal_start(&s->h, signal_cb, signum);
  if (err)
    return err;
  sigmask_one(SIG_UNBLOCK, signum);
  s->watched = true;
  pthread_mutex_lock(&s->q.lock);
  s->active = true;
  pthread_mutex_unlock(&s->q.lock);
  return 0;
}

static void watch_stop(int signum) {
  sigslot_t *s = &g.slot[signum];
  if (!s->watched)
    return;
  sigmask_one(SIG_BLOCK, signum);
  uv_signal_stop(&s->h);
  s->watched = false;
  /* libuv leaves SIG_DFL once no handle of its own watches the signal:
   * then the disposition from before comes back. */
  struct sigaction now;
  if (sigaction(signum, NULL, &now) == 0 && !(now.sa_flags & SA_SIGINFO) &&
      now.sa_handler == SIG_DFL)
    sigaction(signum, &s->saved, NULL);
  pthread_mutex_lock(&s->q.lock);
  s->active = false;
  s->pending = false;
  weft__qwait_t *w;
  while ((w = weft__waitq_head(&s->q)) != NULL) {
    weft__queue_remove(&w->link);
    atomic_fetch_sub_explicit(&s->q.len, 1, memory_order_relaxed);
    weft__waiter_wake(&w->waiter, WEFT_ECLOSED);
  }
  pthread_mutex_unlock(&s->q.lock);
}

static void async_cb(uv_async_t *h) {
  (void)h;
  pthread_mutex_lock(&g.lock);
  while (!weft__queue_empty(&g.reqs)) {
    sigreq_t *r = weft__container_of(weft__queue_head(&g.reqs), sigreq_t, link);
    weft__queue_remove(&r->link);
    if (r->start)
      r->err = watch_start(r->signum);
    else
      watch_stop(r->signum);
    r->done = true;
  }
  pthread_cond_broadcast(&g.cond);
  pthread_mutex_unlock(&g.lock);
}

static void *watcher_main(void *arg) {
  (void)arg;
  pthread_setname_np(pthread_self(), "weft-signal");
  uv_run(&g.loop, UV_RUN_DEFAULT); /* the async handle keeps it running */
  return NULL;
}

/* Under g.lock. */
static int watcher_start(void) {
  int err = uv_loop_init(&g.loop);
  if (err)
    return err;
  if ((err = uv_async_init(&g.loop, &g.async, async_cb)) != 0) {
    uv_loop_close(&g.loop);
    return err;
  }
  /* Made with every signal blocked: it takes only those it watches. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t th;
  err = -pthread_create(&th, NULL, watcher_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err) {
    uv_close((uv_handle_t *)&g.async, NULL);
    uv_run(&g.loop, UV_RUN_NOWAIT);
    uv_loop_close(&g.loop);
    return err == -EAGAIN ? WEFT_ENOMEM : err;
  }
  pthread_detach(th);
  g.started = true;
  return 0;
}

/* Asks the watcher thread to start or stop watching signum and waits (a
 * thread's wake-up, not an await) until it has. */
static int request(int signum, bool start) {
  pthread_mutex_lock(&g.lock);
  if (g.slot[signum].watched == start) {
    pthread_mutex_unlock(&g.lock);
    return 0;
  }
  if (!g.started) {
    int err = start ? watcher_start() : 0;
    if (err || !start) {
      pthread_mutex_unlock(&g.lock);
      return err;
    }
  }
  sigreq_t r = {.signum = signum, .start = start};
  weft__queue_insert_tail(&g.reqs, &r.link);
  uv_async_send(&g.async);
  while (!r.done)
    pthread_cond_wait(&g.cond, &g.lock);
  pthread_mutex_unlock(&g.lock);
  return r.err;
}

/* ------------------------------------------------------------------ API */

int weft_signal_wait(int signum) {
  if (!signum_valid(signum)) {
    weft__misuse("weft_signal_wait", "signal %d cannot be waited for", signum);
    return WEFT_EINVAL;
  }
  pthread_once(&g.once, slots_init);
  sigslot_t *s = &g.slot[signum];
  int err;
  for (;;) {
    if ((err = request(signum, true)) != 0)
      return err;
    pthread_mutex_lock(&s->q.lock);
    if (s->active)
      break;
    pthread_mutex_unlock(&s->q.lock); /* a stop came between: watch again */
  }
  /* Watched from here on, also when this call returns at once (a cancel
   * pending, a deadline passed): a signal sent after it is caught and
   * held, never left to its default action. */
  weft_task_t *t;
  if ((err = weft__waiter_caller(&t, "weft_signal_wait")) != 0) {
    pthread_mutex_unlock(&s->q.lock);
    return err;
  }
  if (s->pending) {
    s->pending = false;
    pthread_mutex_unlock(&s->q.lock);
    return 0;
  }
  weft__qwait_t w;
  weft__waitq_enter(&s->q, &w, t, WEFT_WAIT_SIGNAL, s, NULL, true);
  w.waiter.base.arg = signum;
  pthread_mutex_unlock(&s->q.lock);
  return weft__waitq_sleep(&w);
}

int weft_signal_stop(int signum) {
  if (!signum_valid(signum))
    return WEFT_EINVAL;
  pthread_once(&g.once, slots_init);
  return request(signum, false);
}

/* For tests: how many wait for signum now, and whether one is held. */
int weft__signal_state(int signum, size_t *waiters, bool *pending) {
  if (!signum_valid(signum))
    return WEFT_EINVAL;
  pthread_once(&g.once, slots_init);
  sigslot_t *s = &g.slot[signum];
  pthread_mutex_lock(&s->q.lock);
  *waiters = weft__waitq_len(&s->q);
  *pending = s->pending;
  pthread_mutex_unlock(&s->q.lock);
  return 0;
}

bool weft__sig_claim(int sig, void (*handler)(int, siginfo_t *, void *), int flags) {
  struct sigaction old;
  if (sigaction(sig, NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL)
    return false;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | flags;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, NULL) == 0;
}
