/* weft_select: Go's select over channels, for tasks on any loops and plain
 * threads.
 *
 * A select tries its cases once from a random start (so that, of several
 * ready cases, each is picked about as often). If none is ready it puts one
 * record on the wait list of each case's channel (chan.c), fences, and
 * tries them all again: a channel that makes progress after the fence sees
 * the record, one that made it before is seen by the second try. The
 * records share one waiter and one `fired` flag. A channel that takes a
 * record off its list to wake it sets the flag; only the first to set it
 * wakes the waiter, and a cancel, a deadline or the timeout must set it too
 * to cut the wait, so the waiter is woken exactly once, and a cut that
 * loses the race lets the wake end the wait instead.
 *
 * Each wake a record took is a channel's "try again" meant for one waiter.
 * A select uses at most one of them: the case it performs, and only when it
 * performs it in the try after a wake. After the select, every other wake
 * its records took goes on to the next waiter of that list, so a message
 * offered to a select that took something else, was cut, or had already
 * taken a message before the wake came, reaches another receiver: nothing
 * is lost and nothing taken twice. A woken select that finds nothing ready
 * (another party was faster) enlists again. tests/model/select.pml checks
 * this protocol with SPIN; it found the lost wake-up of the rule that
 * passed on only the other cases' wakes. */
#include "internal.h"

#include <stdlib.h>
#include <time.h>

typedef struct select_wait select_wait_t;

typedef struct select_rec {
  weft__chan_rec_t rec;
  select_wait_t *sw;
  bool woken;               /* a channel took it off its list to wake it */
} select_rec_t;

struct select_wait {
  weft__waiter_t waiter;
  atomic_bool fired;        /* the one wake (or cut) of this wait happened */
  weft__timer_t timeout;    /* a task's timeout_ms */
};

#define SMALL_SELECT 4

/* A per-thread generator for the random start (xorshift64*). */
static _Thread_local uint64_t rng;

static size_t random_below(size_t n) {
  if (rng == 0)
    rng = (uint64_t)(uintptr_t)&rng ^ ((uint64_t)time(NULL) << 32) ^ 0x9e3779b97f4a7c15u;
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return (size_t)((rng * 0x2545f4914f6cdd1dULL) >> 33) % n;
}

/* Tries every case once from start. The index performed, or -1. */
static int try_all(weft_select_case_t *cases, size_t n, size_t start) {
  for (size_t k = 0; k < n; k++) {
    size_t i = (start + k) % n;
    weft_select_case_t *c = &cases[i];
    if (!c->chan)
      continue;
    void *msg = c->msg;
    int err = weft__chan_try(c->chan, c->op == WEFT_SELECT_SEND, &msg);
    if (err == WEFT_EAGAIN)
      continue;
    c->err = err;
    if (err == 0 && c->op == WEFT_SELECT_RECV)
      c->msg = msg;
    return (int)i;
  }
  return -1;
}

static void rec_fire(weft__chan_rec_t *r) {
  select_rec_t *sr = weft__container_of(r, select_rec_t, rec);
  bool expected = false;
  if (atomic_compare_exchange_strong_explicit(&sr->sw->fired, &expected, true,
                                              memory_order_acq_rel, memory_order_relaxed))
    weft__waiter_wake(&sr->sw->waiter, 0);
}

/* A cancel or a deadline (or the timeout) cuts the wait only if no
 * channel's wake came first. */
static bool claim(select_wait_t *sw) {
  bool expected = false;
  return atomic_compare_exchange_strong_explicit(&sw->fired, &expected, true,
                                                 memory_order_acq_rel, memory_order_relaxed);
}

static bool select_interrupt(weft__wait_t *base, int err) {
  (void)err;
  return claim(weft__container_of(base, select_wait_t, waiter.base));
}

static void select_timeout(weft__timer_t *timer) {
  select_wait_t *sw = weft__container_of(timer, select_wait_t, timeout);
  weft__interrupt(sw->waiter.base.task, WEFT_ETIMEDOUT);
}

static int check_cases(const weft_select_case_t *cases, size_t n) {
  if (!cases || n == 0 || n > WEFT_SELECT_MAX) {
    weft__misuse("weft_select", "cases is NULL, or n (%zu) is not within 1 and WEFT_SELECT_MAX", n);
    return WEFT_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    if (cases[i].op != WEFT_SELECT_RECV && cases[i].op != WEFT_SELECT_SEND) {
      weft__misuse("weft_select", "case %zu: op %d is neither WEFT_SELECT_RECV nor _SEND", i,
                   cases[i].op);
      return WEFT_EINVAL;
    }
  }
  return 0;
}

/* One wait: enlists every case, tries again, waits. Returns the index
 * performed, or -1 with *err 0 (woken: try again) or the cut's error. */
static int wait_once(weft_select_case_t *cases, size_t n, select_rec_t *recs, weft_task_t *t,
                     select_wait_t *sw, const struct timespec *until, int *err) {
  weft__waiter_init(&sw->waiter, t, WEFT_WAIT_SELECT, cases, select_interrupt);
  sw->waiter.base.arg = (int)n;
  atomic_store_explicit(&sw->fired, false, memory_order_relaxed);
  for (size_t i = 0; i < n; i++) {
    recs[i] = (select_rec_t){.rec = {.fire = rec_fire}, .sw = sw};
    weft__queue_init(&recs[i].rec.link);
    if (cases[i].chan)
      weft__chan_enlist(&recs[i].rec, cases[i].chan, cases[i].op == WEFT_SELECT_SEND);
  }
  atomic_thread_fence(memory_order_seq_cst);
  int chosen = try_all(cases, n, random_below(n));
  *err = 0;
  if (chosen >= 0) {
    /* A channel may have fired a record meanwhile: its wake must land
     * before this wait's memory goes (it may sit in this loop's inbox). */
    if (!claim(sw))
      weft__waiter_wait(&sw->waiter);
  } else {
    if (t) {
      *err = weft__waiter_wait(&sw->waiter);
    } else if (!until) {
      *err = weft__waiter_wait(&sw->waiter);
    } else if ((*err = weft__waiter_wait_ms(&sw->waiter, until)) == WEFT_ETIMEDOUT &&
               !claim(sw)) {
      /* A channel's wake won: it is on its way. */
      *err = weft__waiter_wait(&sw->waiter);
    }
  }
  for (size_t i = 0; i < n; i++)
    if (cases[i].chan && !weft__chan_delist(&recs[i].rec))
      recs[i].woken = true;
  weft__waiter_destroy(&sw->waiter);
  return chosen;
}

int weft_select(weft_select_case_t *cases, size_t n, uint64_t timeout_ms) {
  int err = check_cases(cases, n);
  if (err)
    return err;
  if (timeout_ms == 0) {
    /* A poll: no await point, so any context may poll. */
    int chosen = try_all(cases, n, random_below(n));
    return chosen >= 0 ? chosen : WEFT_EAGAIN;
  }
  /* An await point: a pending cancel or a passed deadline is seen first,
   * as by a channel's send or receive. */
  weft_task_t *t;
  if ((err = weft__waiter_caller(&t, "weft_select")) != 0)
    return err;
  int chosen = try_all(cases, n, random_below(n));
  if (chosen >= 0)
    return chosen;

  select_rec_t small[SMALL_SELECT];
  select_rec_t *recs = n > SMALL_SELECT ? weft__malloc(n * sizeof *recs) : small;
  if (!recs)
    return WEFT_ENOMEM;
  select_wait_t sw;
  bool timed = timeout_ms != WEFT_FOREVER;
  struct timespec until, *untilp = NULL;
  if (timed && !t) {
    clock_gettime(CLOCK_REALTIME, &until);
    weft__timespec_add_ms(&until, timeout_ms);
    untilp = &until;
  }
  weft__timer_init(&sw.timeout, select_timeout);
  if (timed && t) {
    uv_update_time(t->loop->uv);
    uint64_t now = weft__now(t->loop);
    weft__timer_start(t->loop, &sw.timeout,
                      timeout_ms > UINT64_MAX - now ? UINT64_MAX : now + timeout_ms);
  }
  /* Whether the case performed was taken by the try inside wait_once,
   * with the records still on their lists: then a wake its record took
   * came after the take, for progress the select did not use. */
  bool early = false;
  for (;;) {
    chosen = wait_once(cases, n, recs, t, &sw, untilp, &err);
    if (chosen >= 0 || err) {
      early = chosen >= 0;
      break;
    }
    /* Woken: try again. A cancel or deadline that came meanwhile counts
     * only if this try finds nothing, so the wake-up is not lost. */
    if ((chosen = try_all(cases, n, random_below(n))) >= 0)
      break;
    if (t && (err = weft__await_begin(&t, "weft_select")) != 0)
      break;
    if (timed && t && !weft__timer_active(&sw.timeout)) {
      err = WEFT_ETIMEDOUT; /* it fired while the select was awake */
      break;
    }
    /* Wakes taken and not used in this round: nothing was ready for this
     * select, so whoever woke it had its progress taken by another. */
    for (size_t i = 0; i < n; i++)
      recs[i].woken = false;
  }
  if (t)
    weft__timer_stop(t->loop, &sw.timeout);
  for (size_t i = 0; i < n; i++)
    if (recs[i].woken && ((int)i != chosen || early))
      weft__chan_pass(&recs[i].rec);
  if (recs != small)
    free(recs);
  return chosen >= 0 ? chosen : err;
}
