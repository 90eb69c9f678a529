/* Timers. Every sleep, wait_for timeout and task deadline of a loop is a
 * weft__timer_t kept in one min-heap ordered by (due, seq), and a single
 * uv_timer_t points at the earliest. Starting or stopping a timer is a heap
 * operation with no system call; the uv_timer is re-armed once per round,
 * just before the loop polls. The heap's capacity is reserved when tasks are
 * spawned, so an await point never fails for lack of memory.
 *
 * The heap is 4-ary and each entry holds its timer's key (due, seq) beside
 * the pointer: the timers live on their tasks' stacks, one page apart or
 * more, so a heap that compared through the pointers missed the cache (and
 * the TLB) twice a level. With a million sleeping tasks that was a seventh
 * of a burst's wall time (bench/burst.c under perf); four children share a
 * cache line or two, and the heap is half as deep. The one write a move
 * makes to its timer is the index that weft__timer_stop needs. */
#include "internal.h"

#include <stdlib.h>

#define ARITY 4

static bool earlier(const weft__timer_entry_t *a, const weft__timer_entry_t *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void place(weft__timer_entry_t *heap, size_t i, weft__timer_entry_t e) {
  heap[i] = e;
  e.t->index = i;
}

static void sift_up(weft__timer_entry_t *heap, size_t i) {
  weft__timer_entry_t e = heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / ARITY;
    if (!earlier(&e, &heap[parent]))
      break;
    place(heap, i, heap[parent]);
    i = parent;
  }
  place(heap, i, e);
}

static void sift_down(weft__timer_entry_t *heap, size_t len, size_t i) {
  weft__timer_entry_t e = heap[i];
  for (;;) {
    size_t first = ARITY * i + 1;
    if (first >= len)
      break;
    size_t last = first + ARITY < len ? first + ARITY : len;
    size_t best = first;
    for (size_t c = first + 1; c < last; c++)
      if (earlier(&heap[c], &heap[best]))
        best = c;
    if (!earlier(&heap[best], &e))
      break;
    place(heap, i, heap[best]);
    i = best;
  }
  place(heap, i, e);
}

int weft__timers_reserve(weft_loop_t *loop, size_t n) {
  if (n <= loop->timers.cap)
    return 0;
  size_t cap = loop->timers.cap ? loop->timers.cap : 64;
  while (cap < n)
    cap *= 2;
  weft__timer_entry_t *heap = weft__realloc(loop->timers.heap, cap * sizeof *heap);
  if (!heap)
    return WEFT_ENOMEM;
  loop->timers.heap = heap;
  loop->timers.cap = cap;
  return 0;
}

void weft__timer_start(weft_loop_t *loop, weft__timer_t *t, uint64_t due) {
  WEFT__ASSERT(!weft__timer_active(t));
  WEFT__ASSERT(loop->timers.len < loop->timers.cap);
  t->due = due;
  /* seq, the start order, makes equal dues fire first in, first out. */
  weft__timer_entry_t e = {.due = due, .seq = loop->timers.seq++, .t = t};
  place(loop->timers.heap, loop->timers.len, e);
  sift_up(loop->timers.heap, loop->timers.len++);
}

void weft__timer_stop(weft_loop_t *loop, weft__timer_t *t) {
  if (!weft__timer_active(t))
    return;
  size_t i = t->index;
  weft__timer_entry_t last = loop->timers.heap[--loop->timers.len];
  t->index = WEFT__TIMER_IDLE;
  if (last.t == t)
    return;
  place(loop->timers.heap, i, last);
  if (i > 0 && earlier(&last, &loop->timers.heap[(i - 1) / ARITY]))
    sift_up(loop->timers.heap, i);
  else
    sift_down(loop->timers.heap, loop->timers.len, i);
}

/* Fires every timer that is due. A timer's fire callback may start or stop
 * other timers; each pass takes the current minimum again. */
static void run_due(weft_loop_t *loop) {
  uint64_t now = weft__now(loop);
  while (loop->timers.len > 0 && loop->timers.heap[0].due <= now) {
    weft__timer_t *t = loop->timers.heap[0].t;
    weft__timer_stop(loop, t);
    t->fire(t);
  }
}

void weft__timers_cb(uv_timer_t *h) {
  weft_loop_t *loop = weft__container_of(h, weft_loop_t, timer);
  loop->timers.armed_due = 0;
  /* One precise reading for the whole batch: timers due together compare
   * against the same instant, so a sleep's never-early check (task.c)
   * cannot wake a later sleeper before an earlier one. */
  loop->timers.now_ns = uv_hrtime();
  run_due(loop);
  /* A fired timer need not wake anyone (a wait_for timeout only starts a
   * cancellation): keep the uv_timer pointed at the next one regardless. */
  weft__timers_arm(loop);
}

void weft__timers_arm(weft_loop_t *loop) {
  if (loop->timers.len == 0) {
    if (loop->timers.armed_due) {
      uv_timer_stop(&loop->timer);
      loop->timers.armed_due = 0;
    }
    return;
  }
  uint64_t due = loop->timers.heap[0].due;
  if (due == loop->timers.armed_due)
    return;
  uint64_t now = weft__now(loop);
  uv_timer_start(&loop->timer, weft__timers_cb, due > now ? due - now : 0, 0);
  loop->timers.armed_due = due;
}

void weft__timers_free(weft_loop_t *loop) {
  free(loop->timers.heap);
  loop->timers.heap = NULL;
  loop->timers.len = loop->timers.cap = 0;
}
