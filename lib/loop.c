/* The loop: a libuv loop underneath, a FIFO ready queue of tasks, the waiting
 * set (tasks parked on an await, each described by a wait record on its own
 * stack), and the scheduling round that moves tasks between them. Also the
 * two suspension primitives every await point is built on: weft__park (the
 * current task gives the thread back to the scheduler) and weft__wake (a
 * completion makes a parked task ready again). */
#include "internal.h"
#include "arch/relax.h"

#include <stdlib.h>
#include <string.h>

_Thread_local weft__tls_t weft__tls;

/* A ring ended the loop's wait. What it brought runs from here, where the
 * wait ended, rather than after libuv has finished its iteration, and before
 * the read that resets the fd: a wake-up then costs a bare eventfd's and
 * little more. A message pushed after the drain is not lost to the read: the
 * loop is not parked again before its round drains the inbox. The round
 * looks at the stop flag itself. */
static void answer_ring(weft_loop_t *loop) {
  loop->inbox.wakeups_received++;
  weft__inbox_drain(loop, WEFT__INBOX_BUDGET);
  weft__wakefd_drain(&loop->wakefd);
}

static void wakeup_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  weft_loop_t *loop = weft__container_of(h, weft_loop_t, wakeup);
  if (loop->adopted && !loop->running) {
    /* From the application's uv_run: what the messages wake runs in the
     * check phase, right after this poll. */
    weft__tls.running = loop;
    answer_ring(loop);
    weft__tls.running = NULL;
    return;
  }
  answer_ring(loop);
}

/* ------------------------------------------- weft's own libuv handles */

static void own_closed(uv_handle_t *h) {
  weft_loop_t *loop = h->data;
  loop->closing_handles--;
}

/* Closes one of the loop's own handles; run_closes waits for it. */
static void close_own(weft_loop_t *loop, uv_handle_t *h) {
  h->data = loop;
  loop->closing_handles++;
  uv_close(h, own_closed);
}

/* Lets libuv finish closing the loop's own handles. On an adopted loop the
 * application's handles stay open, so this never waits for them (a pending
 * close makes libuv's poll return at once), nor for the application's
 * requests: a cancelled task's weft_to_thread work still running there
 * ends, and is freed, when the application's uv_run runs it. */
static void run_closes(weft_loop_t *loop) {
  if (!loop->adopted) {
    /* weft's own loop: also until every request has ended (a cancelled
     * task's weft_to_thread work still running), so it can be closed. */
    uv_run(loop->uv, UV_RUN_DEFAULT);
    return;
  }
  while (loop->closing_handles > 0)
    uv_run(loop->uv, UV_RUN_NOWAIT);
}

/* ------------------------------------------------- an adopted loop */

static inline WEFT__ALWAYS_INLINE void round_steps(weft_loop_t *loop);
static void embedded_start(weft_loop_t *loop);
static void embedded_stop(weft_loop_t *loop);

/* From the prepare and check phases of the application's uv_run: a round
 * without its poll (the application's uv_run polls). While tasks are ready
 * or messages wait, the idle handle keeps that poll from blocking; while
 * tasks live, the check handle keeps uv_run from returning. When weft runs
 * the loop itself (weft_loop_run_*), its own round does the work. */
static void idle_cb(uv_idle_t *h);

static void embedded_round(weft_loop_t *loop) {
  if (loop->running || weft__tls.running || loop->closing)
    return;
  if (!loop->embedded_ready) {
    weft__coro_init_thread(&loop->sched);
    weft__stack_overflow_watch();
    loop->embedded_ready = true;
  }
  weft__tls.running = loop;
  loop->step_clock = weft__coarse_ns();
  round_steps(loop);
  weft__timers_arm(loop);
  weft__tls.running = NULL;
  /* Parked from weft's side: another thread's push rings the wake-up fd,
   * which the application's poll watches. */
  bool quiet = weft__inbox_park(loop) && loop->nready == 0;
  /* Idle: give back the stacks a burst left (stack.c); while some are
   * left, the idle handle keeps the application's poll from blocking. */
  if (weft__stack_trim(&loop->stacks, quiet ? WEFT__TRIM_BUDGET : WEFT__TRIM_BUSY) && quiet)
    quiet = false;
  if (quiet)
    uv_idle_stop(&loop->idle);
  else
    uv_idle_start(&loop->idle, idle_cb);
  if (loop->nlive > 0)
    uv_ref((uv_handle_t *)&loop->check);
  else
    uv_unref((uv_handle_t *)&loop->check);
}

static void idle_cb(uv_idle_t *h) {
  (void)h; /* active is all it takes: libuv's poll then does not block */
}

static void embedded_prepare_cb(uv_prepare_t *h) {
  embedded_round(weft__container_of(h, weft_loop_t, prepare));
}

static void embedded_check_cb(uv_check_t *h) {
  embedded_round(weft__container_of(h, weft_loop_t, check));
}

static void embedded_start(weft_loop_t *loop) {
  uv_prepare_init(loop->uv, &loop->prepare);
  uv_check_init(loop->uv, &loop->check);
  uv_idle_init(loop->uv, &loop->idle);
  uv_prepare_start(&loop->prepare, embedded_prepare_cb);
  uv_check_start(&loop->check, embedded_check_cb);
  /* None of weft's handles keeps the application's uv_run going, but the
   * check handle while tasks live (embedded_round). */
  uv_unref((uv_handle_t *)&loop->prepare);
  uv_unref((uv_handle_t *)&loop->check);
  uv_unref((uv_handle_t *)&loop->idle);
  uv_unref((uv_handle_t *)&loop->wakeup);
}

static void embedded_stop(weft_loop_t *loop) {
  close_own(loop, (uv_handle_t *)&loop->prepare);
  close_own(loop, (uv_handle_t *)&loop->check);
  close_own(loop, (uv_handle_t *)&loop->idle);
}

int weft_loop_new(weft_loop_t **out, const weft_loop_opts_t *opts) {
  weft_loop_opts_t defaults = {0};
  int err;
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (!opts)
    opts = &defaults;
  if (opts->stack_size > (size_t)1 << 30) {
    weft__misuse("weft_loop_new", "stack_size %zu is over the 1 GiB limit", opts->stack_size);
    return WEFT_EINVAL;
  }
  if (opts->spin_us > 1000000) {
    weft__misuse("weft_loop_new", "spin_us %u is over the 1 s limit", opts->spin_us);
    return WEFT_EINVAL;
  }
  weft_loop_t *loop = weft__calloc(1, sizeof *loop);
  if (!loop)
    return WEFT_ENOMEM;
  if (opts->uv) {
    loop->uv = opts->uv;
    loop->adopted = true;
  } else {
    loop->uv = &loop->own_uv;
    err = uv_loop_init(loop->uv);
    if (err) {
      free(loop);
      return err == UV_ENOMEM ? WEFT_ENOMEM : err;
    }
  }
  loop->wakefd.rfd = -1;
  bool timer = false, poll = false, phases = false;
  if ((err = uv_timer_init(loop->uv, &loop->timer)) != 0)
    goto error;
  timer = true;
  uv_unref((uv_handle_t *)&loop->timer);
  if ((err = weft__wakefd_open(&loop->wakefd)) != 0)
    goto error;
  if ((err = uv_poll_init(loop->uv, &loop->wakeup, loop->wakefd.rfd)) != 0)
    goto error;
  poll = true;
  if ((err = uv_poll_start(&loop->wakeup, UV_READABLE, wakeup_cb)) != 0)
    goto error;
  if (loop->adopted) {
    phases = true;
    embedded_start(loop);
  }
  weft__queue_init(&loop->ready);
  weft__queue_init(&loop->tasks);
  weft__queue_init(&loop->io);
  weft__queue_init(&loop->stage.streams);
  weft__queue_init(&loop->phases);
  weft__inbox_init(loop);
  loop->inbox.spin_ns = (uint64_t)opts->spin_us * 1000;
  atomic_init(&loop->draining, 0);
  atomic_init(&loop->cancel_new, 0);
  atomic_init(&loop->next_id, 1);
  weft__stack_pool_init(&loop->stacks, opts->stack_size,
                        opts->stack_pool_max ? opts->stack_pool_max : 1024);
  loop->owner = pthread_self();
  loop->on_event = opts->on_event;
  loop->event_arg = opts->event_arg;
  loop->slow_ns = weft__slow_default_ns(opts->slow_step_ms);
  /* Watching for slow callbacks needs the time the poll blocked, which
   * libuv measures only on request, at the cost of an extra epoll_wait per
   * poll: so only then. */
  if (loop->slow_ns)
    uv_loop_configure(loop->uv, UV_METRICS_IDLE_TIME);
  weft__loops_add(loop, opts->name);
  if (loop->slow_ns)
    weft__watchdog_add();
  weft__trace_loop_new(loop);
  atomic_init(&loop->stop, 0);
  /* The application's own handles live on an adopted loop. */
  atomic_init(&loop->uv_lent, loop->adopted);
  *out = loop;
  return 0;

error:
  if (timer)
    close_own(loop, (uv_handle_t *)&loop->timer);
  if (poll)
    close_own(loop, (uv_handle_t *)&loop->wakeup);
  if (phases)
    embedded_stop(loop);
  run_closes(loop);
  if (loop->wakefd.rfd >= 0)
    weft__wakefd_close(&loop->wakefd);
  if (!loop->adopted)
    uv_loop_close(loop->uv);
  free(loop);
  return err == UV_ENOMEM ? WEFT_ENOMEM : err;
}

int weft_loop_set_current(weft_loop_t *loop) {
  if (loop && !weft__on_owner(loop)) {
    weft__misuse("weft_loop_set_current", "loop %p belongs to another thread", (void *)loop);
    return WEFT_EPERM;
  }
  weft__tls.bound = loop;
  return 0;
}

weft_loop_t *weft_loop_current(void) {
  return weft__tls.running ? weft__tls.running : weft__tls.bound;
}

uv_loop_t *weft_loop_uv(weft_loop_t *loop) {
  if (!loop)
    return NULL;
  /* The application may now open handles weft cannot see, unreferenced
   * ones among them: from here on the loop always parks in libuv's poll. */
  atomic_store_explicit(&loop->uv_lent, true, memory_order_relaxed);
  return loop->uv;
}

void weft__emit(weft_loop_t *loop, weft_loop_event_kind_t kind, weft_task_t *t,
                weft_wait_kind_t wait, int detail, int status) {
  weft_loop_event_t ev = {
    .kind = kind,
    .time_ns = uv_hrtime(),
    .round = loop->round,
    .task = t,
    .wait = wait,
    .detail = detail,
    .status = status,
    .count = loop->nready,
  };
  if (loop->on_event)
    loop->on_event(&ev, loop->event_arg);
  if (loop->trace)
    weft__trace_record(loop, &ev);
}

/* ------------------------------------------------------- park and wake */

void weft__ready(weft_loop_t *loop, weft_task_t *t) {
  WEFT__ASSERT(!weft__queue_linked(&t->node));
  weft__queue_insert_tail(&loop->ready, &t->node);
  loop->nready++;
}

/* A task's deadline timer stays in the heap from the first wait under the
 * deadline until the task ends: a wake-up leaves it there, and a deadline
 * moved later leaves it where it is (a server that pushes an idle deadline
 * forward on every request then costs no heap operation a request). When it
 * fires early it moves itself to the deadline; when it fires on time it
 * cuts the task's wait, if the task waits. A task that runs past its
 * deadline finds out at its next await point (weft__await_begin). */
static void deadline_fire(weft__timer_t *timer) {
  weft_task_t *t = weft__container_of(timer, weft_task_t, deadline_timer);
  if (!t->deadline)
    return;
  if (t->deadline > weft__now(t->loop)) {
    weft__timer_start(t->loop, timer, t->deadline);
    return;
  }
  weft__interrupt(t, WEFT_ETIMEDOUT);
}

/* Whether t has a deadline and it has passed. At an await point the answer
 * may come from the loop's cached time (weft__clock_reached): a deadline
 * that passed unseen there still cuts the wait at the next poll, through
 * the deadline's timer. After a yield or a sleep, which no such timer cuts,
 * the precise clock decides (precise). */
static bool deadline_passed(weft_task_t *t, bool precise) {
  if (!t->deadline)
    return false;
  if (!precise)
    return weft__clock_reached(t->loop, t->deadline);
  uv_update_time(t->loop->uv);
  return weft__now(t->loop) >= t->deadline;
}

static void deadline_arm(weft_loop_t *loop, weft_task_t *t) {
  weft__timer_t *dt = &t->deadline_timer;
  if (weft__timer_active(dt)) {
    if (dt->due <= t->deadline)
      return;
    weft__timer_stop(loop, dt);
  }
  weft__timer_init(dt, deadline_fire);
  weft__timer_start(loop, dt, t->deadline);
}

/* The bookkeeping of a step's start, for run_task and step_leave alike. */
static inline WEFT__ALWAYS_INLINE void step_begin(weft_loop_t *loop, weft_task_t *t) {
  t->state = WEFT__RUNNING;
  loop->current = t;
  loop->counters.switches++;
  weft__live_begin(loop, t, loop->step_clock);
  WEFT__EMIT(loop, WEFT_EV_STEP, t, WEFT_WAIT_NONE, 0, 0);
}

/* And of its end, on either stack: the step's time, from the coarse clock
 * (one read a step), now. */
static inline WEFT__ALWAYS_INLINE void step_end_at(weft_loop_t *loop, weft_task_t *t, uint64_t now) {
  weft__step_timed(loop, t, now - loop->step_clock);
  loop->step_clock = now;
}

static inline WEFT__ALWAYS_INLINE void step_end(weft_loop_t *loop, weft_task_t *t) {
  step_end_at(loop, t, weft__coarse_ns());
}

/* The stack step_leave keeps free below its own frame for the library
 * code it runs on a task's stack (the write stage's flush, the event
 * hook, the trace): a task nearer its stack's end goes through the loop's
 * stack, so that an overflow is the task's own, caught and named. */
#define LEAVE_HEADROOM (8 * 1024)

static bool goal_met(weft_loop_t *loop);

/* A round's start: its tasks are those ready now, at the head of the queue. */
static inline WEFT__ALWAYS_INLINE void round_begin(weft_loop_t *loop) {
  loop->round++;
  loop->counters.rounds++;
  WEFT__EMIT(loop, WEFT_EV_ROUND, NULL, WEFT_WAIT_NONE, 0, 0);
  loop->round_left = loop->nready;
}

/* The modules' before-poll phases (weft__phase_t): the stream module's
 * write stage. */
static inline WEFT__ALWAYS_INLINE void round_phases(weft_loop_t *loop) {
  for (weft__queue_t *q = loop->phases.next; q != &loop->phases; q = q->next) {
    weft__phase_t *ph = weft__container_of(q, weft__phase_t, node);
    if (ph->before_poll)
      ph->before_poll(loop);
  }
}

/* After a round: whether the poll may be skipped, and the next round begin
 * at once. Tasks are ready (or messages wait), so the poll would not block:
 * its system call is skipped unless the run function's goal is met, a
 * timer is due, or I/O has waited WEFT__POLL_EVERY rounds. Counts the
 * rounds it skips. */
static inline WEFT__ALWAYS_INLINE bool poll_skip(weft_loop_t *loop) {
  if ((loop->nready == 0 && !weft__inbox_pending(loop)) || goal_met(loop))
    return false;
  bool timer_due = loop->timers.len > 0 && weft__clock_reached(loop, loop->timers.heap[0].due);
  return !timer_due && ++loop->rounds_unpolled < WEFT__POLL_EVERY;
}

/* Ends t's step from t's own stack, and runs the next step there too when
 * it can: t switches straight to the next task of the round, and when the
 * round is over and the next needs no poll and no message waits, it ends
 * the round and begins the next itself. So a step costs one switch
 * instead of two through the loop's context, and a task that yields alone
 * on its loop none, with the same order and the same rounds: round_steps
 * counts the tasks it did not run itself through loop->round_left, and
 * resumes whatever round is current.
 *
 * The rest goes through the loop's own stack: messages (the inbox runs
 * other threads' calls outside any task), the poll, a task not yet
 * started (the loop gives it its stack, or ends it unrun), a task whose
 * canary is gone (run_task reports it from there) or that is near its
 * stack's end (LEAVE_HEADROOM), a slow step (its line is logged from
 * there), and a loop adopted by the application, whose uv_run must get
 * the thread back after a round. */
static inline WEFT__ALWAYS_INLINE void step_leave(weft_loop_t *loop, weft_task_t *t) {
  if (*t->stack->canary != WEFT__STACK_CANARY ||
      (char *)__builtin_frame_address(0) - (char *)t->stack->lo < LEAVE_HEADROOM)
    goto to_loop;
  /* A slow step's line is logged from the loop's stack (run_task). */
  uint64_t now = weft__coarse_ns();
  if (loop->slow_ns && now - loop->step_clock >= loop->slow_ns)
    goto to_loop;
  if (loop->round_left == 0) {
    /* The poll is decided before the phases run, which cannot change the
     * answer: a round that goes to the loop's stack runs them there, once. */
    if (loop->adopted || loop->nready == 0 || weft__inbox_pending(loop) || !poll_skip(loop))
      goto to_loop;
    step_end_at(loop, t, now);
    loop->current = NULL;
    weft__live_end(loop);
    round_phases(loop);
    round_begin(loop);
  } else {
    step_end_at(loop, t, now);
  }
  {
    weft__queue_t *q = weft__queue_head(&loop->ready);
    weft_task_t *next = weft__container_of(q, weft_task_t, node);
    if (next->state == WEFT__READY) {
      loop->round_left--;
      weft__queue_remove(q);
      loop->nready--;
      step_begin(loop, next);
      if (next != t)
        weft__coro_switch(&t->coro, &next->coro);
      return;
    }
  }
  /* The loop's stack runs the rest. run_task takes the task that comes
   * back from loop->current (ending its step once more costs nothing) and
   * round_steps pops the head of whatever round is current. */
to_loop:
  loop->current = t;
  weft__coro_switch(&t->coro, &loop->sched);
}

int weft__park(weft__wait_t *w) {
  weft_task_t *t = w->task;
  weft_loop_t *loop = t->loop;
  WEFT__ASSERT(t == loop->current && t->state == WEFT__RUNNING);
  /* w->interrupted is the wait's own: zero, or an error the await point
   * recorded before parking (a join that a pending cancel cut at once). */
  if (w->kind == WEFT_WAIT_YIELD) {
    t->state = WEFT__READY;
    weft__ready(loop, t);
  } else {
    t->state = WEFT__WAITING;
    loop->nwaiting++;
    if (t->deadline && w->interrupt)
      deadline_arm(loop, t);
  }
  t->wait = w;
  WEFT__EMIT(loop, WEFT_EV_PARK, t, w->kind, w->arg, 0);
  step_leave(loop, t);
  t->wait = NULL;
  int result = w->result;
  /* A cancel or deadline that reached the task after its yield or sleep was
   * already over, but before it resumed, still ends this await: nothing is
   * lost by it (joins and channels keep what they delivered). */
  if (result == 0 && (w->kind == WEFT_WAIT_YIELD || w->kind == WEFT_WAIT_SLEEP)) {
    if (weft__cancel_pending(t)) {
      result = WEFT_ECANCELED;
    } else if (deadline_passed(t, true)) {
      result = WEFT_ETIMEDOUT;
    }
  }
  return result;
}

void weft__wake(weft__wait_t *w, int result, weft_wake_cause_t cause) {
  weft_task_t *t = w->task;
  weft_loop_t *loop = t->loop;
  WEFT__ASSERT(t->state == WEFT__WAITING && t->wait == w);
  w->result = result;
  t->state = WEFT__READY;
  loop->nwaiting--;
  weft__ready(loop, t);
  /* Woken from a libuv callback: libuv 1.44's UV_RUN_ONCE runs due timers
   * before it polls, so without this the poll could block with the task
   * ready. uv_stop makes that poll return at once. Only from inside uv_run:
   * a stop asked for outside it would make the next uv_run skip its poll
   * and its timers altogether. */
  if (loop->in_uv_run)
    uv_stop(loop->uv);
  WEFT__EMIT(loop, WEFT_EV_WAKE, t, w->kind, (int)cause, 0);
}

void weft__interrupt(weft_task_t *t, int err) {
  if (t->state != WEFT__WAITING)
    return;
  /* A shielded task keeps waiting; the cancel is held until the section
   * ends (its deadline is the section's own: weft__deadline_update). */
  if (err == WEFT_ECANCELED && t->shield)
    return;
  weft__wait_t *w = t->wait;
  if (!w->interrupt || w->interrupted)
    return;
  /* Recorded first: the hook may cancel other tasks, which may lead back
   * here (an await cycle) and must find this wait already cut. */
  w->interrupted = err;
  if (w->interrupt(w, err))
    weft__wake(w, err, err == WEFT_ECANCELED ? WEFT_WAKE_CANCEL : WEFT_WAKE_DEADLINE);
}

int weft__await_begin(weft_task_t **out, const char *fn) {
  weft_task_t *t = weft__current();
  *out = t;
  if (!t) {
    weft__misuse(fn, "called outside a task (an await point needs a task to suspend)");
    return WEFT_ENOTASK;
  }
  if (weft__cancel_pending(t))
    return WEFT_ECANCELED;
  if (deadline_passed(t, false))
    return WEFT_ETIMEDOUT;
  return 0;
}

/* ---------------------------------------------------------- the round */

/* Gives one task the thread until its next await, then cleans up after the
 * task that switches back (t, or a later task of the round that t's step
 * switched to: step_leave) if that step was its last. A task cancelled
 * before it ever ran ends here without running. */
/* loop->step_clock: the coarse time the step may start from (the end of
 * the step before, or of the last poll); updated to this step's end. One
 * clock read a step: a step's time includes the inbox drain before it. */
static inline WEFT__ALWAYS_INLINE void run_task(weft_loop_t *loop, weft_task_t *t) {
  if (t->state == WEFT__NEW) {
    if (t->cancelled || atomic_load_explicit(&loop->cancel_new, memory_order_relaxed)) {
      weft__task_complete(t, WEFT_ECANCELED);
      weft__task_unref(t);
      return;
    }
    t->stack = weft__stack_get(&loop->stacks);
    if (!t->stack) {
      weft__task_complete(t, WEFT_ENOMEM);
      weft__task_unref(t);
      return;
    }
    weft__coro_init(&t->coro, t->stack, weft__task_entry);
  }
  step_begin(loop, t);
  weft__coro_switch(&loop->sched, &t->coro);
  t = loop->current;
  weft__live_end(loop);
  /* Checked here, back on the loop's own stack: reporting from the task's
   * would need more of the very stack that ran out. */
  if (*t->stack->canary != WEFT__STACK_CANARY)
    weft__fatal("task stack overflow in %s on %s (its canary was overwritten)", weft_task_name(t),
                loop->name);
  step_end(loop, t);
  loop->current = NULL;
  if (t->state == WEFT__DONE) {
    /* The safe point: we are off the task's stack for good. */
    weft__coro_destroy(&t->coro);
    weft__stack_put(&loop->stacks, t->stack);
    t->stack = NULL;
    weft__task_unref(t);
  }
}

/* One libuv iteration from the round; wakes from its callbacks stop it. */
static void run_uv(weft_loop_t *loop, uv_run_mode mode) {
  loop->in_uv_run = true;
  uv_run(loop->uv, mode);
  loop->in_uv_run = false;
}

/* Parks on the wake-up fd alone, when libuv has nothing of its own to wait
 * for: the wake-up poll is the only handle keeping it alive, no request is
 * in flight, nothing is pending or closing, and the application was never
 * lent the libuv loop (where an unreferenced handle of its own could wait
 * unseen). A loop that only runs tasks and messages, a pool's worker with no
 * I/O, parks this way. One poll() on one fd wakes about as fast as a bare
 * eventfd wait; libuv's iteration around its epoll_wait costs a fifth more
 * (./run bench: wakeup_vs_eventfd). Timers still count: the wait ends when
 * the earliest is due, and libuv then runs it. Returns false, having done
 * nothing, where libuv must poll. *waited_ns: the time it blocked, measured
 * only while slow steps are watched (libuv's idle time misses this wait). */
static bool wakefd_alone(weft_loop_t *loop) {
  return loop->uv->active_handles == 1 && loop->uv->active_reqs.count == 0 &&
         !atomic_load_explicit(&loop->uv_lent, memory_order_relaxed);
}

static bool park_on_wakefd(weft_loop_t *loop, uint64_t *waited_ns) {
  if (!wakefd_alone(loop))
    return false;
  uv_update_time(loop->uv);
  int timeout = uv_backend_timeout(loop->uv);
  if (timeout == 0)
    return false;
  uint64_t t0 = loop->slow_ns ? uv_hrtime() : 0;
  int r = weft__wakefd_wait(&loop->wakefd, timeout);
  if (loop->slow_ns)
    *waited_ns = uv_hrtime() - t0;
  if (r > 0)
    answer_ring(loop);
  else if (r == 0)
    run_uv(loop, UV_RUN_NOWAIT);
  return true;
}

static bool goal_met(weft_loop_t *loop);

/* Before parking, a loop with spin_us set polls its inbox's length for up to
 * that long (Go's spinning Ms, Seastar's polling): a message from another
 * thread then runs the moment it lands, and its sender, seeing the loop not
 * parked, writes no wake-up. Returns true when a message (or the run's goal,
 * a stop from another thread) came: the round then ends unpolled and the
 * next one runs it.
 *
 * It must delay nothing libuv would have run, so it spins only where the
 * loop would park on its wake-up fd alone: no I/O handle, request or lent
 * libuv loop, whose readiness only a system call could see (a loop with I/O
 * parks at once). The spin ends a millisecond before the next weft timer is
 * due: libuv's timeout is in whole milliseconds, truncated, so a timeout of
 * 1 may be due now, and a timeout of n is at least n - 1 away. An adopted
 * loop never spins: the application's uv_run owns its poll.
 *
 * Spinning follows every round that ends with nothing to run, so it comes
 * after work (a wake-up, a timer, a burst of messages), at most spin_us
 * each time, and a loop left idle parks with no timeout and costs nothing. */
static bool spin_for_inbox(weft_loop_t *loop) {
  uint64_t spin = loop->inbox.spin_ns;
  if (spin == 0 || loop->adopted || !wakefd_alone(loop))
    return false;
  uv_update_time(loop->uv);
  int timeout = uv_backend_timeout(loop->uv);
  if (timeout >= 0) {
    if (timeout <= 1)
      return false;
    if ((uint64_t)(timeout - 1) * 1000000 < spin)
      spin = (uint64_t)(timeout - 1) * 1000000;
  }
  uint64_t until = uv_hrtime() + spin;
  do {
    /* The clock (a vDSO call) every 32 looks: the inbox is one load. */
    for (int i = 0; i < 32; i++) {
      if (weft__inbox_pending(loop) || goal_met(loop))
        return true;
      weft__cpu_relax();
    }
  } while (uv_hrtime() < until);
  return false;
}

/* What the running run function waits for; once it holds, the round polls
 * without blocking and the run function returns. */
static bool goal_met(weft_loop_t *loop) {
  switch (loop->goal) {
  case WEFT__GOAL_TASK:
    return loop->goal_task->state == WEFT__DONE;
  case WEFT__GOAL_STOP:
    return atomic_load_explicit(&loop->stop, memory_order_acquire) || weft__loop_drained(loop);
  case WEFT__GOAL_EMPTY:
    return loop->nlive == 0;
  }
  return true;
}

bool weft__loop_drained(weft_loop_t *loop) {
  return atomic_load_explicit(&loop->draining, memory_order_relaxed) && loop->nlive == 0 &&
         !weft__inbox_pending(loop);
}

/* One scheduling round, asyncio's _run_once. Most rounds pass without this
 * function: a task's step ends on the task's stack, and goes on to the
 * next task of the round or into the next round from there (step_leave);
 * a round is run from here when it needs the loop's own stack.
 *
 * 1. Run every task that was ready when the round began, each until its next
 *    await (or its end). Tasks made ready during the round (spawned, yielded,
 *    woken) wait for the next round, so no task can starve the others by
 *    yielding and no flood of wake-ups stalls I/O polling.
 * 2. Drain the inbox: spawns, cancels, calls and wake-ups from other threads,
 *    at most WEFT__INBOX_BUDGET of them, so a flood from other threads
 *    cannot starve the tasks already ready. Then the modules' before-poll
 *    phases run (weft__phase_t): the stream module hands the small writes
 *    the steps staged to the kernel together, one write per stream, in one
 *    burst (stream.c).
 * 3. Poll libuv: blocking, when no task is ready, until the earliest weft
 *    timer, I/O, or a wake-up from another thread. The libuv callbacks that
 *    run here (timers, I/O) complete wait records and so move tasks from the
 *    waiting set to the ready queue for the next round. When tasks are ready
 *    the poll could not block, and it is skipped unless a timer is due or
 *    WEFT__POLL_EVERY rounds passed without one: a task that yields in a loop
 *    then costs no system call a round, and
 *    I/O still gets its turn (Tokio polls every 61 ticks for the same
 *    reason). With spin_us set, a loop about to block first polls its
 *    inbox for up to that long (spin_for_inbox) and, if a message lands,
 *    ends the round there without the poll.
 */
/* Phases 1 and 2 of a round: what an adopted loop runs from libuv's
 * phases as well. Inlined, as run_task is, so that loop_round calls
 * weft__coro_switch itself: each frame between the run loop and the
 * switch costs two more mispredicted returns a step (WEFT__ALWAYS_INLINE). */
static inline WEFT__ALWAYS_INLINE void round_steps(weft_loop_t *loop) {
  round_begin(loop);
  while (loop->round_left > 0) {
    loop->round_left--;
    weft__queue_t *q = weft__queue_head(&loop->ready);
    weft__queue_remove(q);
    loop->nready--;
    run_task(loop, weft__container_of(q, weft_task_t, node));
  }
  weft__inbox_drain(loop, WEFT__INBOX_BUDGET);
  round_phases(loop);
}

void weft__loop_phase_add(weft_loop_t *loop, weft__phase_t *ph) {
  weft__queue_insert_tail(&loop->phases, &ph->node);
}

static void loop_round(weft_loop_t *loop) {
  round_steps(loop);
  if (poll_skip(loop))
    return;
  loop->rounds_unpolled = 0;
  weft__timers_arm(loop);
  bool idle = loop->nready == 0 && !goal_met(loop);
  /* Nothing to run: the time to give back the stacks a burst left idle
   * (stack.c), a budget a round; while some are left the poll does not
   * block, so a message or I/O still gets its turn between batches. A
   * loop with work trims a few at each poll, so one that never runs out
   * of work gives a burst's surplus back too. */
  bool trimming = weft__stack_trim(&loop->stacks, idle ? WEFT__TRIM_BUDGET : WEFT__TRIM_BUSY) &&
                  idle;
  if (idle && !trimming && spin_for_inbox(loop)) {
    loop->step_clock = weft__coarse_ns();
    return;
  }
  weft__poll_watch_t watch;
  weft__poll_watch_begin(loop, &watch);
  uint64_t waited = 0;
  if (!idle || trimming || !weft__inbox_park(loop)) {
    run_uv(loop, UV_RUN_NOWAIT);
  } else {
    loop->park_since = uv_hrtime();
    if (!park_on_wakefd(loop, &waited))
      run_uv(loop, UV_RUN_ONCE);
    loop->parked_ns += uv_hrtime() - loop->park_since;
    loop->park_since = 0;
    weft__inbox_unpark(loop);
  }
  loop->step_clock = weft__coarse_ns();
  weft__poll_watch_end(loop, &watch, waited);
}

static int run_begin(weft_loop_t *loop, enum weft__goal goal, const char *fn) {
  if (!loop)
    return WEFT_EINVAL;
  if (!weft__on_owner(loop)) {
    weft__misuse(fn, "loop %p belongs to another thread", (void *)loop);
    return WEFT_EPERM;
  }
  if (loop->running || weft__tls.running) {
    weft__misuse(fn, "a loop is already running on this thread (loops do not nest)");
    return WEFT_EBUSY;
  }
  if (loop->closing)
    return WEFT_EINVAL;
  loop->running = true;
  loop->run_since = uv_hrtime();
  loop->step_clock = weft__coarse_ns();
  loop->goal = goal;
  weft__tls.running = loop;
  weft__coro_init_thread(&loop->sched);
  weft__stack_overflow_watch();
  uv_update_time(loop->uv);
  /* An adopted loop's wake-up handle keeps the application's uv_run going
   * only while weft runs the loop itself: libuv runs no timer of a loop it
   * finds with nothing to keep it alive. */
  if (loop->adopted)
    uv_ref((uv_handle_t *)&loop->wakeup);
  return 0;
}

static void run_end(weft_loop_t *loop) {
  if (loop->adopted)
    uv_unref((uv_handle_t *)&loop->wakeup);
  loop->run_ns += uv_hrtime() - loop->run_since;
  loop->running = false;
  weft__tls.running = NULL;
}

int weft_loop_run_until_complete(weft_loop_t *loop, weft_task_t *task, void **result) {
  if (!task)
    return WEFT_EINVAL;
  if (loop && task->loop != loop) {
    weft__misuse("weft_loop_run_until_complete", "the task belongs to another loop");
    return WEFT_EINVAL;
  }
  int err = run_begin(loop, WEFT__GOAL_TASK, "weft_loop_run_until_complete");
  if (err)
    return err;
  loop->goal_task = task;
  while (!goal_met(loop))
    loop_round(loop);
  run_end(loop);
  if (result)
    *result = task->result;
  return task->status;
}

int weft_loop_run_forever(weft_loop_t *loop) {
  int err = run_begin(loop, WEFT__GOAL_STOP, "weft_loop_run_forever");
  if (err)
    return err;
  do
    loop_round(loop);
  while (!goal_met(loop));
  atomic_store_explicit(&loop->stop, 0, memory_order_relaxed);
  run_end(loop);
  return 0;
}

int weft_loop_stop(weft_loop_t *loop) {
  if (!loop)
    return WEFT_EINVAL;
  atomic_store_explicit(&loop->stop, 1, memory_order_release);
  /* A loop parked in poll on another thread needs a ring to notice. Its own
   * thread is busy in a task or a callback and finds the flag itself. */
  if (!weft__on_owner(loop))
    weft__loop_ring(loop);
  return 0;
}

typedef struct call_msg {
  weft__msg_t msg;
  void (*cb)(void *arg);
  void *arg;
} call_msg_t;

static void call_run(weft__msg_t *m, weft_loop_t *loop) {
  call_msg_t *c = weft__container_of(m, call_msg_t, msg);
  c->cb(c->arg);
  free(c);
}

int weft_loop_call_soon(weft_loop_t *loop, void (*cb)(void *arg), void *arg) {
  if (!loop || !cb)
    return WEFT_EINVAL;
  call_msg_t *c = weft__malloc(sizeof *c);
  if (!c)
    return WEFT_ENOMEM;
  c->msg.run = call_run;
  c->cb = cb;
  c->arg = arg;
  /* Like a spawn, a call from another thread is new work, which a pool
   * that is shutting down refuses; a loop's own calls are not. */
  int err = weft__inbox_push(loop, &c->msg, !weft__on_owner(loop));
  if (err)
    free(c);
  return err;
}

/* ---------------------------------------------------------- closing */

/* What a loop has open besides its own timer and wake-up handle. */
typedef struct handle_census {
  weft_loop_t *loop;
  size_t open;             /* handles not closing */
  uv_handle_t *user;       /* one that is not weft's, once looked for */
} handle_census_t;

static bool is_weft_io(weft_loop_t *loop, uv_handle_t *h) {
  for (weft__queue_t *q = loop->io.next; q != &loop->io; q = q->next)
    if (weft__container_of(q, weft__io_t, node)->handle == h)
      return true;
  return false;
}

/* The loop's own handles: its timer and wake-up, and an adopted loop's
 * phase handles. */
static bool loop_handle(const weft_loop_t *loop, const uv_handle_t *h) {
  return h == (const uv_handle_t *)&loop->timer || h == (const uv_handle_t *)&loop->wakeup ||
         (loop->adopted && (h == (const uv_handle_t *)&loop->prepare ||
                            h == (const uv_handle_t *)&loop->check ||
                            h == (const uv_handle_t *)&loop->idle));
}

static void count_handle(uv_handle_t *h, void *arg) {
  handle_census_t *c = arg;
  if (loop_handle(c->loop, h) || uv_is_closing(h))
    return;
  c->open++;
}

static void find_user_handle(uv_handle_t *h, void *arg) {
  handle_census_t *c = arg;
  if (loop_handle(c->loop, h) || uv_is_closing(h) || c->user || is_weft_io(c->loop, h))
    return;
  c->user = h;
}

/* An open handle of the application's own, or NULL. weft's own I/O handles
 * (streams, accepts) are not the application's: closing the loop cancels
 * the tasks that use them, and closes what is left. Counting first keeps
 * the usual case linear. */
static uv_handle_t *user_handle(weft_loop_t *loop) {
  handle_census_t c = {.loop = loop};
  uv_walk(loop->uv, count_handle, &c);
  if (c.open <= loop->nio)
    return NULL;
  uv_walk(loop->uv, find_user_handle, &c);
  return c.user;
}

bool weft_is_internal_handle(const uv_handle_t *h) {
  /* The loop is looked up on the thread that runs it, which alone changes
   * its list of I/O handles, and it cannot be freed meanwhile. */
  weft_loop_t *loop = h ? weft__loops_find_uv(h->loop) : NULL;
  return loop && weft__loop_owns_handle(loop, h);
}

bool weft__loop_owns_handle(weft_loop_t *loop, const uv_handle_t *h) {
  return loop_handle(loop, h) || is_weft_io(loop, (uv_handle_t *)h);
}

void weft__io_add(weft_loop_t *loop, weft__io_t *io, uv_handle_t *h,
                  void (*force_close)(weft__io_t *io)) {
  io->handle = h;
  io->force_close = force_close;
  weft__queue_insert_tail(&loop->io, &io->node);
  loop->nio++;
}

/* When its handle starts closing. */
void weft__io_remove(weft_loop_t *loop, weft__io_t *io) {
  weft__queue_remove(&io->node);
  loop->nio--;
}

int weft_loop_close(weft_loop_t *loop) {
  if (loop && loop->pool) {
    weft__misuse("weft_loop_close", "a pool's loop is closed by weft_pool_shutdown");
    return WEFT_EINVAL;
  }
  return weft__loop_close(loop, true);
}

int weft__loop_close(weft_loop_t *loop, bool free_it) {
  if (!loop)
    return WEFT_EINVAL;
  if (!weft__on_owner(loop)) {
    weft__misuse("weft_loop_close", "loop %p belongs to another thread", (void *)loop);
    return WEFT_EPERM;
  }
  if (loop->running) {
    weft__misuse("weft_loop_close", "the loop is running");
    return WEFT_EBUSY;
  }
  uv_handle_t *user = loop->adopted ? NULL : user_handle(loop);
  if (user) {
    weft__misuse("weft_loop_close", "a libuv handle (type %s) opened on weft_loop_uv() is still open",
                 uv_handle_type_name(uv_handle_get_type(user)));
    return WEFT_EBUSY;
  }

  /* Cancel what is left and let it unwind: task bodies free what they own
   * on the way out, so they must run to their end, not vanish. */
  int err = run_begin(loop, WEFT__GOAL_EMPTY, "weft_loop_close");
  if (err)
    return err;
  loop->closing = true;
  for (weft__queue_t *q = loop->tasks.next; q != &loop->tasks; q = q->next) {
    weft_task_t *t = weft__container_of(q, weft_task_t, all);
    if (t->state != WEFT__DONE)
      weft_task_cancel(t);
  }
  while (!goal_met(loop))
    loop_round(loop);
  /* No more messages from now on; what was queued before still runs. A
   * spawn that arrives here ends cancelled without running, so its handle
   * learns its fate. */
  weft__inbox_close(loop);
  while (weft__inbox_pending(loop) || !goal_met(loop)) {
    weft__inbox_drain(loop, 0);
    if (!goal_met(loop))
      loop_round(loop);
  }
  run_end(loop);

  /* Streams their owners left open: closed and freed with the loop. */
  while (!weft__queue_empty(&loop->io)) {
    weft__io_t *io = weft__container_of(weft__queue_head(&loop->io), weft__io_t, node);
    io->force_close(io);
  }
  while (!weft__queue_empty(&loop->phases)) {
    weft__phase_t *ph = weft__container_of(weft__queue_head(&loop->phases), weft__phase_t, node);
    weft__queue_remove(&ph->node);
    if (ph->at_close)
      ph->at_close(loop);
  }
  weft__stack_pool_destroy(&loop->stacks);
  weft__timers_free(loop);
  close_own(loop, (uv_handle_t *)&loop->timer);
  close_own(loop, (uv_handle_t *)&loop->wakeup);
  if (loop->adopted)
    embedded_stop(loop);
  run_closes(loop);
  /* Nothing rings it any more: the inbox closed above. */
  weft__inbox_quiesce(loop);
  weft__wakefd_close(&loop->wakefd);
  if (!loop->adopted) {
    err = uv_loop_close(loop->uv);
    if (err)
      weft__fatal("uv_loop_close failed after every weft handle closed: %s", uv_strerror(err));
  }
  if (weft__tls.bound == loop)
    weft__tls.bound = NULL;
  if (free_it)
    weft__loop_free(loop);
  return 0;
}

void weft__loop_free(weft_loop_t *loop) {
  weft__loops_remove(loop);
  if (loop->slow_ns)
    weft__watchdog_remove();
  weft__inbox_destroy(loop);
  free(loop);
}

/* ------------------------------------------------------------ weft_run */

int weft_run(weft_fn main, void *arg, void **result) {
  weft_loop_t *loop;
  weft_task_t *task;
  if (!main)
    return WEFT_EINVAL;
  if (weft__tls.running) {
    weft__misuse("weft_run", "a loop is already running on this thread (weft_run does not nest)");
    return WEFT_EBUSY;
  }
  int err = weft_loop_new(&loop, NULL);
  if (err)
    return err;
  err = weft_spawn(loop, main, arg, &task);
  if (err) {
    weft_loop_close(loop);
    return err;
  }
  weft_task_set_name(task, "main");
  weft_loop_t *bound = weft__tls.bound;
  weft__tls.bound = loop;
  int status = weft_loop_run_until_complete(loop, task, result);
  weft_loop_close(loop);
  weft_task_release(task);
  weft__tls.bound = bound;
  return status;
}
