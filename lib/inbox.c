/* The inbox: the one way work reaches a loop from another thread. Producers
 * append a message under a mutex (libuv's thread pool does the same) and ring
 * the loop's wake-up fd only if the loop is parked, that is about to block or
 * blocked in its poll; a busy loop finds the message at its next round with
 * no system call, and many pushes to a parked loop cost one ring (the rung
 * flag). The loop takes the whole list at once and runs it unlocked, at most
 * WEFT__INBOX_BUDGET messages a round so that a flood from other threads
 * cannot starve the loop's own ready tasks.
 *
 * Lost wake-ups are ruled out by a Dekker pair: the loop stores parked = 1,
 * then (after a full fence) looks at the queue length; a producer increments
 * the length, then (after a full fence) looks at parked. At least one of them
 * sees the other's store, so either the loop skips blocking or the producer
 * rings. The loop clears rung before it stores parked (a release store), so
 * a producer that sees this park also sees rung cleared, and the first one
 * to see it rings.
 *
 * The ring is a write to an eventfd the loop watches with a uv_poll_t, not
 * libuv's uv_async_t: in libuv 1.44 the woken loop spins and yields the CPU
 * in uv_async's handshake, which made a wake-up cost three times a bare
 * eventfd's. A ring after the loop closed its fd could hit a reused fd
 * number, so a ring is decided (and counted in ringing) under the inbox
 * mutex and only while the inbox is open, and written after the unlock;
 * the loop closes the inbox under the same mutex, then waits for the rings
 * counted before that, then closes the handle and the fd. */
#include "internal.h"

#include <stdlib.h>

void weft__inbox_init(weft_loop_t *loop) {
  pthread_mutex_init(&loop->inbox.lock, NULL);
  pthread_cond_init(&loop->inbox.quiet, NULL);
  loop->inbox.head = NULL;
  loop->inbox.tail = NULL;
  atomic_init(&loop->inbox.len, 0);
  atomic_init(&loop->inbox.parked, 0);
  atomic_init(&loop->inbox.rung, 0);
  atomic_init(&loop->inbox.ringing, 0);
  atomic_init(&loop->inbox.wakeups_sent, 0);
  loop->inbox.closed = false;
  loop->inbox.refuse_spawns = false;
}

void weft__inbox_destroy(weft_loop_t *loop) {
  pthread_cond_destroy(&loop->inbox.quiet);
  pthread_mutex_destroy(&loop->inbox.lock);
}

/* Writes to the wake-up fd. Called after ring_begin said so; the write is
 * made outside the inbox lock (the woken loop often runs on the ringing
 * thread's CPU at once, and would then block on a lock the ringer still
 * holds), the count taken back under it, so that a closing loop can sleep
 * until its last ring is written (weft__inbox_quiesce) and the ringer
 * touches the loop no more once it has said so. */
static void ring_end(weft_loop_t *loop) {
  weft__wakefd_signal(&loop->wakefd);
  pthread_mutex_lock(&loop->inbox.lock);
  if (atomic_fetch_sub_explicit(&loop->inbox.ringing, 1, memory_order_relaxed) == 1 &&
      loop->inbox.closed)
    pthread_cond_signal(&loop->inbox.quiet);
  pthread_mutex_unlock(&loop->inbox.lock);
}

/* With the inbox lock held: counts a ring about to happen, which closing
 * waits for before it closes the fd. */
static void ring_begin(weft_loop_t *loop) {
  atomic_fetch_add_explicit(&loop->inbox.ringing, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&loop->inbox.wakeups_sent, 1, memory_order_relaxed);
}

/* Rings the loop's wake-up, if its inbox is still open. Any thread. */
void weft__loop_ring(weft_loop_t *loop) {
  pthread_mutex_lock(&loop->inbox.lock);
  bool ring = !loop->inbox.closed;
  if (ring)
    ring_begin(loop);
  pthread_mutex_unlock(&loop->inbox.lock);
  if (ring)
    ring_end(loop);
}

int weft__inbox_push(weft_loop_t *loop, weft__msg_t *m, bool is_spawn) {
  m->next = NULL;
  /* A message from a task or callback of a traced loop: an arrow starts
   * there, and ends where the target runs it. */
  weft_loop_t *from = weft__tls.running;
  m->traced = from && from->trace && weft__trace_flow(from, true, (uintptr_t)m);
  pthread_mutex_lock(&loop->inbox.lock);
  if (loop->inbox.closed || (is_spawn && loop->inbox.refuse_spawns)) {
    pthread_mutex_unlock(&loop->inbox.lock);
    return WEFT_ESHUTDOWN;
  }
  if (loop->inbox.tail)
    loop->inbox.tail->next = m;
  else
    loop->inbox.head = m;
  loop->inbox.tail = m;
  atomic_fetch_add_explicit(&loop->inbox.len, 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_seq_cst);
  bool ring = atomic_load_explicit(&loop->inbox.parked, memory_order_acquire) &&
              !atomic_exchange_explicit(&loop->inbox.rung, 1, memory_order_relaxed);
  if (ring)
    ring_begin(loop);
  pthread_mutex_unlock(&loop->inbox.lock);
  if (ring)
    ring_end(loop);
  return 0;
}

/* Declares the loop parked. Returns false (and stays unparked) if messages
 * are waiting, in which case the loop must not block. Loop thread only. */
bool weft__inbox_park(weft_loop_t *loop) {
  atomic_store_explicit(&loop->inbox.rung, 0, memory_order_relaxed);
  atomic_store_explicit(&loop->inbox.parked, 1, memory_order_release);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&loop->inbox.len, memory_order_relaxed) > 0) {
    atomic_store_explicit(&loop->inbox.parked, 0, memory_order_relaxed);
    return false;
  }
  return true;
}

void weft__inbox_unpark(weft_loop_t *loop) {
  atomic_store_explicit(&loop->inbox.parked, 0, memory_order_relaxed);
}

bool weft__inbox_pending(weft_loop_t *loop) {
  return atomic_load_explicit(&loop->inbox.len, memory_order_relaxed) > 0;
}

/* Runs at most budget messages (0: all of them, for closing). Messages left
 * over stay at the head of the queue, in order. Loop thread only. */
size_t weft__inbox_drain(weft_loop_t *loop, size_t budget) {
  if (!weft__inbox_pending(loop))
    return 0;
  pthread_mutex_lock(&loop->inbox.lock);
  weft__msg_t *m = loop->inbox.head;
  weft__msg_t *last = loop->inbox.tail;  /* kept: putting back is O(1) */
  loop->inbox.head = loop->inbox.tail = NULL;
  pthread_mutex_unlock(&loop->inbox.lock);
  size_t n = 0;
  while (m && (budget == 0 || n < budget)) {
    weft__msg_t *next = m->next;
    atomic_fetch_sub_explicit(&loop->inbox.len, 1, memory_order_relaxed);
    n++;
    if (m->traced)
      weft__trace_flow(loop, false, (uintptr_t)m);
    m->run(m, loop);
    m = next;
  }
  if (m) {
    /* Put the rest back in front of whatever arrived meanwhile. */
    pthread_mutex_lock(&loop->inbox.lock);
    last->next = loop->inbox.head;
    if (!loop->inbox.head)
      loop->inbox.tail = last;
    loop->inbox.head = m;
    pthread_mutex_unlock(&loop->inbox.lock);
  }
  loop->counters.inbox_in += n;
  return n;
}

/* After this, pushes fail with WEFT_ESHUTDOWN and nothing new rings the
 * loop. What was already queued stays, for the closing loop to drain. */
void weft__inbox_close(weft_loop_t *loop) {
  pthread_mutex_lock(&loop->inbox.lock);
  loop->inbox.closed = true;
  pthread_mutex_unlock(&loop->inbox.lock);
}

/* Waits until the rings that began before the close have written, so the
 * fd can be closed. They are a system call away from done. */
void weft__inbox_quiesce(weft_loop_t *loop) {
  pthread_mutex_lock(&loop->inbox.lock);
  while (atomic_load_explicit(&loop->inbox.ringing, memory_order_relaxed) != 0)
    pthread_cond_wait(&loop->inbox.quiet, &loop->inbox.lock);
  pthread_mutex_unlock(&loop->inbox.lock);
}
