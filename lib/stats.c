/* Seeing inside the loops: counters and their snapshots from any thread,
 * and the slow-step warning (asyncio's debug mode, Seastar's stall
 * detector). The list of loops and their names are registry.c's; where the
 * lines go, diag.c's.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------ slow steps */

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

void weft__poll_watch_begin(weft_loop_t *loop, weft__poll_watch_t *w) {
  if (!loop->slow_ns)
    return;
  w->t0 = weft__coarse_ns();
  w->idle0 = uv_metrics_idle_time(loop->uv);
}

/* loop->step_clock is the poll's end, read by the round. */
void weft__poll_watch_end(weft_loop_t *loop, const weft__poll_watch_t *w, uint64_t waited_ns) {
  if (!loop->slow_ns)
    return;
  uint64_t held = loop->step_clock - w->t0;
  uint64_t idle = uv_metrics_idle_time(loop->uv) - w->idle0 + waited_ns;
  weft__callbacks_timed(loop, held > idle ? held - idle : 0);
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

static void held(const weft__live_view_t *v, weft_stats_t *out) {
  snprintf(out->held_by, sizeof out->held_by, "%s", v->task_id ? v->name : "");
  out->held_ms = v->held_ns / 1000000u;
}

static void snapshot(weft_loop_t *loop, weft_stats_t *out) {
  *out = loop->counters;
  weft__live_view_t v;
  weft__live_read(loop, &v);
  held(&v, out);
  out->ready = loop->nready;
  out->waiting = loop->nwaiting;
  out->live = loop->nlive;
  out->stacks_pooled = loop->stacks.nwarm;
  out->stacks_guarded = loop->stacks.nguarded;
  out->stacks_canary = loop->stacks.ncanary;
  out->wakeups_sent = atomic_load_explicit(&loop->inbox.wakeups_sent, memory_order_relaxed);
  out->wakeups_received = loop->inbox.wakeups_received;
  uint64_t now = uv_hrtime(), run = loop->run_ns;
  if (loop->running)
    run += now - loop->run_since;
  /* Taken from a callback of the poll itself, for another thread: the
   * poll so far counts. */
  out->parked_ns = loop->parked_ns + (loop->park_since ? now - loop->park_since : 0);
  out->busy_ns = run > out->parked_ns ? run - out->parked_ns : 0;
}

/* Shared by the asking thread and the loop; freed by whichever is done
 * with it last (the asker may stop waiting for a loop held by a step). */
typedef struct stats_req {
  weft__msg_t msg;
  atomic_int refs;
  weft_stats_t out;
  weft__waiter_t waiter;    /* the asking plain thread */
} stats_req_t;

static void req_unref(stats_req_t *r) {
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
    return;
  weft__waiter_destroy(&r->waiter);
  free(r);
}

static void stats_run(weft__msg_t *m, weft_loop_t *loop) {
  stats_req_t *r = weft__container_of(m, stats_req_t, msg);
  snapshot(loop, &r->out);
  weft__waiter_wake(&r->waiter, 0);
  req_unref(r);
}

static void read_live(weft_loop_t *loop, void *arg) {
  weft__live_read(loop, arg);
}

/* How often the asker looks at what the loop runs, and how long a step
 * must have held the loop before the asker stops waiting for it: a stall
 * by the debug mode's measure, not a step a busy machine preempted. */
#define STATS_LOOK_MS 20
#define STATS_HELD_NS (100u * 1000000u)

int weft__loop_stats(weft_loop_t *loop, weft_stats_t *out, bool wait) {
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
  stats_req_t *r = weft__calloc(1, sizeof *r);
  if (!r)
    return WEFT_ENOMEM;
  r->msg.run = stats_run;
  atomic_init(&r->refs, 2);
  weft__waiter_init(&r->waiter, NULL, WEFT_WAIT_NONE, NULL, NULL);
  /* The loop drains its inbox until it is closed, so the request is
   * answered (a closing loop drains what was queued before the close). */
  int err = weft__inbox_push(loop, &r->msg, false);
  if (err) {
    atomic_store_explicit(&r->refs, 1, memory_order_relaxed);
    req_unref(r);
    return err;
  }
  for (;;) {
    struct timespec soon;
    clock_gettime(CLOCK_REALTIME, &soon);
    weft__timespec_add_ms(&soon, STATS_LOOK_MS);
    if (weft__waiter_wait_ms(&r->waiter, &soon) == 0) {
      *out = r->out;
      break;
    }
    /* Read through the registry: a loop that answered just now may be
     * gone already (and then the next wait returns at once). */
    weft__live_view_t v = {0};
    if (!wait && weft__loops_with(loop, read_live, &v) && v.task_id &&
        v.held_ns >= STATS_HELD_NS) {
      memset(out, 0, sizeof *out);
      held(&v, out);
      err = WEFT_EAGAIN;
      break;
    }
  }
  req_unref(r);
  return err;
}

int weft_loop_stats(weft_loop_t *loop, weft_stats_t *out) {
  return weft__loop_stats(loop, out, false);
}
