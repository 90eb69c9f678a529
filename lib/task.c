/* Tasks: creation, the body's entry and end, cancellation, status, handles,
 * names, and the await points that concern only the calling task (sleep,
 * yield, deadlines). A task's memory is reference counted: the loop holds a
 * reference while the task lives and the caller of weft_spawn holds one for
 * its handle; the stack goes back to the loop's pool as soon as the task
 * ends, so a held handle of an ended task costs only this struct. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The order in which tasks end, across every loop of the process: gather's
 * "first failure" among tasks that had ended before it began. */
atomic_uint_fast64_t weft__end_seq;

/* Makes a task that belongs to loop but is not on its books yet: any
 * thread may call this, only the loop's thread adopts the task. */
static weft_task_t *task_alloc(weft_loop_t *loop, weft_fn fn, void *arg, bool handle) {
  weft_task_t *t = weft__malloc(sizeof *t);
  if (!t)
    return NULL;
  weft__queue_init(&t->node);
  weft__queue_init(&t->all);
  weft__queue_init(&t->joiners);
  weft__queue_init(&t->group_link);
  weft__queue_init(&t->cancel_link);
  atomic_init(&t->handle_held, handle);
  t->loop = loop;
  t->owner = loop->owner;
  t->fn = fn;
  t->arg = arg;
  t->result = NULL;
  t->status = WEFT_EPENDING;
  t->fail = 0;
  t->state = WEFT__NEW;
  t->cancelled = false;
  atomic_init(&t->refs, handle ? 2 : 1);
  t->wait = NULL;
  t->stack = NULL;
  t->deadline = 0;
  t->deadlines = NULL;
  t->ndeadlines = 0;
  t->shield = 0;
  t->shield_floor = 0;
  weft__timer_init(&t->deadline_timer, NULL);
  t->group = NULL;
  t->id = atomic_fetch_add_explicit(&loop->next_id, 1, memory_order_relaxed);
  t->end_seq = 0;
  t->magic = WEFT__TASK_MAGIC;
  t->name[0] = '\0';
  return t;
}

/* Puts a task on its loop's books and in the ready queue. Loop thread. */
static void task_adopt(weft_loop_t *loop, weft_task_t *t) {
  weft__queue_insert_tail(&loop->tasks, &t->all);
  loop->nlive++;
  loop->counters.spawned++;
  t->born_ms = weft__now(loop);
  weft__ready(loop, t);
  WEFT__EMIT(loop, WEFT_EV_SPAWN, t, WEFT_WAIT_NONE, 0, 0);
}

/* Every live task may hold two timers at once (a sleep or wait_for timeout,
 * and its deadline): reserving at spawn keeps await points infallible. */
static int reserve_timers(weft_loop_t *loop) {
  return weft__timers_reserve(loop, 2 * (loop->nlive + 1));
}

/* A spawn from another thread arrives. A closing loop, or one out of
 * memory, ends the task at once without running it: its handle, if any,
 * reads WEFT_ECANCELED or WEFT_ENOMEM rather than waiting forever. */
static void remote_spawn_run(weft__msg_t *m, weft_loop_t *loop) {
  weft_task_t *t = weft__container_of(m, weft_task_t, spawn_msg);
  int err = loop->closing ? WEFT_ECANCELED : reserve_timers(loop);
  task_adopt(loop, t);
  if (err) {
    weft__queue_remove(&t->node);
    loop->nready--;
    weft__task_complete(t, err);
    weft__task_unref(t);
  }
}

/* Spawning in two steps, so that weft_group_spawn can put the task on its
 * group's books before the task can run (and end) on another loop:
 * weft__spawn_prepare resolves the loop, checks what can be checked and
 * makes the task; weft__spawn_publish hands it to its loop (its ready queue,
 * or its inbox from another thread). A task that publish refuses was never
 * seen by its loop: the caller frees it. */
int weft__spawn_prepare(weft_loop_t *loop, weft_fn fn, void *arg, bool handle, weft_task_t **out,
                        const char *caller) {
  if (!fn) {
    weft__misuse(caller, "fn is NULL");
    return WEFT_EINVAL;
  }
  if (!loop)
    loop = weft_loop_current();
  if (!loop) {
    weft__misuse(caller, "no loop given and this thread has no current loop");
    return WEFT_EINVAL;
  }
  if (weft__on_owner(loop)) {
    if (loop->closing) {
      weft__misuse(caller, "the loop is closing");
      return WEFT_EINVAL;
    }
    if (reserve_timers(loop) != 0)
      return WEFT_ENOMEM;
  }
  weft_task_t *t = task_alloc(loop, fn, arg, handle);
  if (!t)
    return WEFT_ENOMEM;
  *out = t;
  return 0;
}

int weft__spawn_publish(weft_task_t *t) {
  if (weft__on_owner(t->loop)) {
    task_adopt(t->loop, t);
    return 0;
  }
  t->spawn_msg.run = remote_spawn_run;
  return weft__inbox_push(t->loop, &t->spawn_msg, true);
}

/* weft_spawn: *out gets the task even without a handle (the caller must not
 * keep it past the task's end unless handle is true). */
int weft__spawn(weft_loop_t *loop, weft_fn fn, void *arg, bool handle, weft_task_t **out,
                const char *caller) {
  weft_task_t *t;
  int err = weft__spawn_prepare(loop, fn, arg, handle, &t, caller);
  if (err)
    return err;
  if ((err = weft__spawn_publish(t)) != 0) {
    free(t);
    return err;
  }
  *out = t;
  return 0;
}

int weft_spawn(weft_loop_t *loop, weft_fn fn, void *arg, weft_task_t **task) {
  weft_task_t *t;
  if (task)
    *task = NULL;
  int err = weft__spawn(loop, fn, arg, task != NULL, &t, "weft_spawn");
  if (err)
    return err;
  if (task)
    *task = t;
  return 0;
}

int weft_spawn_named(weft_loop_t *loop, weft_fn fn, void *arg, const char *name,
                     weft_task_t **task) {
  weft_task_t *t;
  if (task)
    *task = NULL;
  if (!name) {
    weft__misuse("weft_spawn_named", "name is NULL");
    return WEFT_EINVAL;
  }
  int err = weft__spawn_prepare(loop, fn, arg, task != NULL, &t, "weft_spawn_named");
  if (err)
    return err;
  /* Before the task is published: no other thread sees it yet. */
  snprintf(t->name, sizeof t->name, "%s", name);
  if ((err = weft__spawn_publish(t)) != 0) {
    free(t);
    return err;
  }
  if (task)
    *task = t;
  return 0;
}

void weft__task_unref(weft_task_t *t) {
  if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1) {
    t->magic = 0;
    free(t->deadlines);
    free(t);
  }
}

/* Tasks that end on a loop whose inbox is closed (it is closing, and ends
 * the spawns that reached it before the close) wake whoever waits for them
 * here: a joiner the closed inbox refused. Rare, so one process-wide
 * condition serves. */
static pthread_mutex_t late_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t late_cond = PTHREAD_COND_INITIALIZER;

void weft__task_wait_ended(weft_task_t *t) {
  pthread_mutex_lock(&late_lock);
  while (weft_task_status(t) == WEFT_EPENDING)
    pthread_cond_wait(&late_cond, &late_lock);
  pthread_mutex_unlock(&late_lock);
}

/* The task has ended: its status becomes final, every task awaiting it is
 * woken, and it leaves the loop's books. Its stack is still in use when this
 * runs from the task itself; the scheduler reclaims it after switching
 * away. */
void weft__task_complete(weft_task_t *t, int status) {
  weft_loop_t *loop = t->loop;
  t->state = WEFT__DONE;
  weft__timer_stop(loop, &t->deadline_timer);
  t->end_seq = atomic_fetch_add_explicit(&weft__end_seq, 1, memory_order_relaxed) + 1;
  weft__queue_remove(&t->all);
  loop->nlive--;
  if (status == 0)
    loop->counters.finished++;
  else if (status == WEFT_ECANCELED)
    loop->counters.cancelled++;
  else
    loop->counters.failed++;
  /* Release: another thread that reads the status also sees the result. */
  __atomic_store_n(&t->status, status, __ATOMIC_RELEASE);
  /* A task that ends after its loop closed its inbox: someone may wait for
   * it in weft__task_wait_ended, having been refused by the inbox. */
  if (loop->inbox.closed) {
    pthread_mutex_lock(&late_lock);
    pthread_cond_broadcast(&late_cond);
    pthread_mutex_unlock(&late_lock);
  }
  WEFT__EMIT(loop, WEFT_EV_DONE, t, WEFT_WAIT_NONE, 0, status);
  if (t->group)
    ((weft__group_head_t *)t->group)->child_done(t);
  weft__join_notify(t);
}

/* The task's whole life but its last switch. A frame of its own, which
 * returns, so that TSan checks it and its callers' frames balance. */
static __attribute__((noinline)) weft_task_t *task_run(void) {
  weft_loop_t *loop = weft__tls.running;
  weft_task_t *t = loop->current;
  weft__coro_started(&t->coro, &loop->sched);
  t->result = t->fn(t->arg);
  int status = t->fail ? t->fail : t->cancelled ? WEFT_ECANCELED : 0;
  weft__task_complete(t, status);
  return t;
}

/* The base frame of a task's stack. Bare (WEFT__TSAN_BARE): it never
 * returns, and under TSan its stack's next task reuses the fiber. */
WEFT__TSAN_BARE void weft__task_entry(void) {
  weft_task_t *t = task_run();
  weft__coro_exit(&t->coro, &weft__tls.running->sched);
}

typedef struct cancel_msg {
  weft__msg_t msg;
  weft_task_t *task;
} cancel_msg_t;

static void cancel_run(weft__msg_t *m, weft_loop_t *loop) {
  cancel_msg_t *c = weft__container_of(m, cancel_msg_t, msg);
  weft_task_cancel(c->task);
  weft__task_unref(c->task);
  free(c);
}

/* From another thread: the request travels through the loop's inbox, with a
 * reference that keeps the task alive until it is delivered. */
static int cancel_remote(weft_task_t *t) {
  cancel_msg_t *c = weft__malloc(sizeof *c);
  if (!c)
    return WEFT_ENOMEM;
  c->msg.run = cancel_run;
  c->task = t;
  atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
  int err = weft__inbox_push(t->loop, &c->msg, false);
  if (err) {
    weft__task_unref(t);
    free(c);
    /* A closed inbox means the loop has ended every task. */
    return weft_task_status(t) != WEFT_EPENDING ? WEFT_EALREADY : err;
  }
  return 0;
}

int weft_task_cancel(weft_task_t *t) {
  if (!t)
    return WEFT_EINVAL;
  if (weft_task_status(t) != WEFT_EPENDING)
    return WEFT_EALREADY;
  if (!weft__on_owner(t->loop))
    return cancel_remote(t);
  if (t->cancelled)
    return 0;
  t->cancelled = true;
  /* A cancel spreads down await chains (what a task awaits is cancelled
   * too). A worklist instead of recursion keeps a chain of any length from
   * overflowing the stack: nested cancels only queue their task. */
  static _Thread_local weft__queue_t *worklist;
  if (worklist) {
    if (t->state == WEFT__WAITING)
      weft__queue_insert_tail(worklist, &t->cancel_link);
    return 0;
  }
  weft__queue_t work;
  weft__queue_init(&work);
  worklist = &work;
  weft__interrupt(t, WEFT_ECANCELED);
  while (!weft__queue_empty(&work)) {
    weft__queue_t *q = weft__queue_head(&work);
    weft__queue_remove(q);
    weft__interrupt(weft__container_of(q, weft_task_t, cancel_link), WEFT_ECANCELED);
  }
  worklist = NULL;
  return 0;
}

int weft_task_status(const weft_task_t *t) {
  if (!t)
    return WEFT_EINVAL;
  return __atomic_load_n(&t->status, __ATOMIC_ACQUIRE);
}

int weft_task_fail(int err) {
  weft_task_t *t = weft__current();
  if (!t) {
    weft__misuse("weft_task_fail", "called outside a task");
    return WEFT_ENOTASK;
  }
  if (err >= 0 || err == WEFT_EPENDING) {
    weft__misuse("weft_task_fail", "%d is not a failure code (use a negative WEFT_E* or errno code)", err);
    return WEFT_EINVAL;
  }
  t->fail = err;
  return 0;
}

void weft_task_release(weft_task_t *t) {
  if (!t)
    return;
  if (t->magic != WEFT__TASK_MAGIC ||
      !atomic_exchange_explicit(&t->handle_held, false, memory_order_acq_rel))
    weft__fatal("weft_task_release: %p is not a held task handle (released twice?)", (void *)t);
  weft__task_unref(t);
}

weft_task_t *weft_task_current(void) {
  return weft__current();
}

int weft_task_set_name(weft_task_t *t, const char *name) {
  if (!t || !name)
    return WEFT_EINVAL;
  if (!pthread_equal(t->owner, pthread_self())) {
    weft__misuse("weft_task_set_name", "the task's loop belongs to another thread");
    return WEFT_EPERM;
  }
  snprintf(t->name, sizeof t->name, "%s", name);
  /* What the loop publishes of its step names the task anew (stall.c). */
  weft_loop_t *loop = t->loop;
  loop->live.named_id = 0;
  loop->live.unnamed = false;
  if (loop->current == t)
    weft__live_begin(loop, t, atomic_load_explicit(&loop->live.since_ns, memory_order_relaxed));
  return 0;
}

const char *weft_task_name(const weft_task_t *t) {
  if (!t)
    return "(null)";
  if (!t->name[0])
    snprintf(((weft_task_t *)t)->name, sizeof t->name, "task-%llu", (unsigned long long)t->id);
  return t->name;
}

/* ----------------------------------------------------- sleep and yield */

typedef struct sleep_wait {
  weft__wait_t base;
  weft__timer_t timer;
  uint64_t end_ns;   /* uv_hrtime() at which the sleep may end */
} sleep_wait_t;

/* The timer is in the loop's whole milliseconds, read from a clock that may
 * be coarse: a 3 ms sleep due 3 ms after the loop's (late) reading could
 * fire after 2.1 ms of real time. So the due time comes from the precise
 * clock (weft_sleep), and the precise clock also has the last word here: a
 * timer that came early anyway goes again for what is left. */
static void sleep_fire(weft__timer_t *timer) {
  sleep_wait_t *sw = weft__container_of(timer, sleep_wait_t, timer);
  weft_loop_t *loop = sw->base.task->loop;
  uint64_t now = loop->timers.now_ns;
  if (now < sw->end_ns) {
    uint64_t left_ms = (sw->end_ns - now + 999999) / 1000000;
    weft__timer_start(loop, timer, weft__now(loop) + left_ms);
    return;
  }
  weft__wake(&sw->base, 0, WEFT_WAKE_DONE);
}

static bool sleep_interrupt(weft__wait_t *w, int err) {
  sleep_wait_t *sw = weft__container_of(w, sleep_wait_t, base);
  weft__timer_stop(w->task->loop, &sw->timer);
  return true;
}

int weft_sleep(uint64_t ms) {
  weft_task_t *t;
  if (ms == 0)
    return weft_yield();
  int err = weft__await_begin(&t, "weft_sleep");
  if (err)
    return err;
  weft_loop_t *loop = t->loop;
  uv_update_time(loop->uv);
  sleep_wait_t sw = {
    .base = {.task = t, .kind = WEFT_WAIT_SLEEP, .interrupt = sleep_interrupt,
             .arg = ms > INT32_MAX ? INT32_MAX : (int)ms},
  };
  weft__timer_init(&sw.timer, sleep_fire);
  sw.base.what = &sw.timer;
  uint64_t start = uv_hrtime();
  sw.end_ns = ms > (UINT64_MAX - start) / 1000000 - 1 ? UINT64_MAX : start + ms * 1000000;
  /* Due at the first loop millisecond at or after the precise end. The
   * loop's clock (libuv's, on the same epoch, perhaps coarse) never runs
   * ahead of the precise one, so the timer cannot fire early; and sleeps
   * begun in order end in order, equal ones first in, first out. */
  uint64_t due = sw.end_ns == UINT64_MAX ? UINT64_MAX : (sw.end_ns + 999999) / 1000000;
  weft__timer_start(loop, &sw.timer, due);
  return weft__park(&sw.base);
}

int weft_yield(void) {
  weft_task_t *t;
  int err = weft__await_begin(&t, "weft_yield");
  if (err)
    return err;
  /* A yielding task is already back in the ready queue; a cancel or deadline
   * reaching it there is seen at its next await. */
  weft__wait_t w = {.task = t, .kind = WEFT_WAIT_YIELD, .result = 0};
  return weft__park(&w);
}

/* ----------------------------------------------- deadlines and shields */

/* The task's deadline from now + timeout_ms, by the loop's clock (read
 * afresh); never 0, which means none. */
static uint64_t deadline_from_now(weft_task_t *t, uint64_t timeout_ms) {
  uv_update_time(t->loop->uv);
  uint64_t now = weft__now(t->loop);
  uint64_t due = timeout_ms > UINT64_MAX - now - 1 ? UINT64_MAX : now + timeout_ms;
  return due ? due : 1;
}

static uint64_t earlier(uint64_t a, uint64_t b) {
  return a == 0 ? b : b == 0 ? a : a < b ? a : b;
}

void weft__deadline_update(weft_task_t *t) {
  /* Inside a shield only the scopes pushed since it began count: the
   * section's cleanup can be bounded, but no enclosing deadline cuts it. */
  uint64_t d = 0;
  if (t->deadlines) {
    unsigned from = t->shield ? t->shield_floor : 0;
    d = t->shield ? 0 : t->deadlines->base;
    for (unsigned i = from; i < t->ndeadlines; i++)
      d = earlier(d, t->deadlines->scope[i]);
  }
  /* A later deadline leaves the armed timer where it is; it moves itself
   * when it fires early (deadline_fire in loop.c). */
  t->deadline = d;
}

/* The task's deadlines, allocated on first use; NULL: out of memory. */
static weft__deadlines_t *deadlines_of(weft_task_t *t) {
  if (!t->deadlines)
    t->deadlines = weft__calloc(1, sizeof *t->deadlines);
  return t->deadlines;
}

/* The calling task, or NULL with a misuse line for fn. */
static weft_task_t *task_or_misuse(const char *fn) {
  weft_task_t *t = weft__current();
  if (!t)
    weft__misuse(fn, "called outside a task");
  return t;
}

int weft_deadline_set(uint64_t timeout_ms) {
  weft_task_t *t = task_or_misuse("weft_deadline_set");
  if (!t)
    return WEFT_ENOTASK;
  if (!deadlines_of(t))
    return WEFT_ENOMEM;
  t->deadlines->base = deadline_from_now(t, timeout_ms);
  weft__deadline_update(t);
  return 0;
}

int weft_deadline_clear(void) {
  weft_task_t *t = task_or_misuse("weft_deadline_clear");
  if (!t)
    return WEFT_ENOTASK;
  if (t->deadlines)
    t->deadlines->base = 0;
  weft__deadline_update(t);
  return 0;
}

int weft_deadline_push(uint64_t timeout_ms) {
  weft_task_t *t = task_or_misuse("weft_deadline_push");
  if (!t)
    return WEFT_ENOTASK;
  if (t->ndeadlines == WEFT__DEADLINE_DEPTH) {
    weft__misuse("weft_deadline_push", "more than %d deadline scopes nested at once",
                 WEFT__DEADLINE_DEPTH);
    return WEFT_ENOBUFS;
  }
  if (!deadlines_of(t))
    return WEFT_ENOMEM;
  t->deadlines->scope[t->ndeadlines++] =
    timeout_ms == WEFT_FOREVER ? 0 : deadline_from_now(t, timeout_ms);
  weft__deadline_update(t);
  return 0;
}

int weft_deadline_pop(void) {
  weft_task_t *t = task_or_misuse("weft_deadline_pop");
  if (!t)
    return WEFT_ENOTASK;
  if (t->ndeadlines == 0) {
    weft__misuse("weft_deadline_pop", "no deadline scope to pop");
    return WEFT_EINVAL;
  }
  if (t->shield && t->ndeadlines == t->shield_floor) {
    weft__misuse("weft_deadline_pop", "the scope was pushed before the shielded section began: "
                                      "end the section first");
    return WEFT_EINVAL;
  }
  t->ndeadlines--;
  weft__deadline_update(t);
  return 0;
}

void weft_shield_begin(void) {
  weft_task_t *t = task_or_misuse("weft_shield_begin");
  if (!t)
    return;
  if (t->shield == UINT16_MAX)
    weft__fatal("weft_shield_begin: more than 65535 shielded sections nested in one task");
  if (t->shield++ == 0)
    t->shield_floor = t->ndeadlines;
  weft__deadline_update(t);
}

void weft_shield_end(void) {
  weft_task_t *t = task_or_misuse("weft_shield_end");
  if (!t)
    return;
  if (t->shield == 0) {
    weft__misuse("weft_shield_end", "no shielded section to end");
    return;
  }
  t->shield--;
  /* A cancel held meanwhile takes effect at the next await point
   * (weft__cancel_pending), and the enclosing deadlines apply again. */
  weft__deadline_update(t);
}
