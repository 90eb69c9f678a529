/* The loop's clock. Timers and deadlines are in the loop's millisecond time
 * (libuv's uv_now), which libuv reads precisely at every poll and weft reads
 * again where a stale value would matter. A precise read costs about thirty
 * nanoseconds; the coarse monotonic clock (the precise one as of the last
 * kernel tick) about seven. A loop that serves a request per task step
 * would otherwise spend a tenth of its own time reading the clock, so:
 *
 * - weft__clock_update reads the precise clock and notes a coarse time from
 *   before it (the stamp): the loop's step clock, the coarse time the
 *   running step (or the poll) began from, which costs no extra read;
 * - weft__clock_reached(loop, due) answers "has the time reached due?" from
 *   the loop's time when that time is at most a tick old by the coarse clock
 *   and due is further off than the coarse clock's error can reach, and from
 *   a precise read otherwise.
 *
 * The coarse clock can lag by more than a tick when the kernel's tick was
 * held off (a tickless idle spell, a virtual CPU the host did not run). Then
 * a "not yet" from the cached time may be late, never early, and whoever
 * asks must be able to live with that: an await point that misses a deadline
 * this way still has it cut at the loop's next poll by the deadline's timer,
 * and yields and sleeps read the precise clock after they resume. */
#include "internal.h"

#include <stdatomic.h>
#include <time.h>

uint64_t weft__coarse_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The coarse clock's tick in ms, rounded up (1 s where the resolution cannot
 * be read: every gate then falls through to a precise read). */
uint64_t weft__coarse_tick_ms(void) {
  static _Atomic uint64_t tick;
  uint64_t t = atomic_load_explicit(&tick, memory_order_relaxed);
  if (t == 0) {
    struct timespec res;
    uint64_t ns = clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0
                      ? (uint64_t)res.tv_sec * 1000000000u + (uint64_t)res.tv_nsec
                      : 1000000000u;
    t = (ns + 999999) / 1000000;
    if (t == 0)
      t = 1;
    atomic_store_explicit(&tick, t, memory_order_relaxed);
  }
  return t;
}

void weft__clock_update(weft_loop_t *loop) {
  loop->clock_stamp = loop->step_clock;
  uv_update_time(&loop->uv);
}

/* With stamp C0 taken before the precise read at R0 (C0 <= R0), and a
 * coarse reading C1 now at R1 (R1 - tick <= C1 while the tick keeps time):
 * R1 - R0 <= C1 - C0 + tick. So when C1 - C0 < tick, the true time is below
 * the cached one (truncated to the ms) plus 2 ticks plus 1 ms, and a due
 * further off than that has not come. */
bool weft__clock_reached(weft_loop_t *loop, uint64_t due) {
  uint64_t now = weft__now(loop);
  if (now >= due)
    return true;
  uint64_t tick = weft__coarse_tick_ms();
  if (due - now > 2 * tick + 1 && weft__coarse_ns() - loop->clock_stamp < tick * 1000000u)
    return false;
  weft__clock_update(loop);
  return weft__now(loop) >= due;
}
