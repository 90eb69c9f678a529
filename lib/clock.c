/* The loop's clock. Timers and deadlines are in the loop's millisecond time
 * (libuv's uv_now), which libuv reads precisely at every poll and weft reads
 * again where a stale value would matter. A precise read costs about thirty
 * nanoseconds; the coarse monotonic clock (the precise one as of the last
 * kernel tick) about seven. A loop that serves a request per task step
 * would otherwise spend a tenth of its own time reading the clock, so
 * weft__clock_reached(loop, due) answers "has the time reached due?" from
 * the loop's cached time where it can, from the coarse clock where due is
 * further off than the coarse clock's lag can reach, and from a precise read
 * otherwise.
 *
 * The coarse clock can lag by more than a tick when the kernel's tick was
 * held off (a tickless idle spell, a virtual CPU the host did not run). Then
 * a "not yet" may be late, never early, and whoever asks must be able to
 * live with that: a round that misses a due timer runs it at its next poll,
 * an await point that misses a deadline still has its wait cut at the next
 * poll by the deadline's timer, and yields and sleeps read the precise clock
 * after they resume. */
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
static uint64_t coarse_tick_ms(void) {
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

/* The cached time never runs ahead, so it answers "reached" alone. The
 * coarse clock is the monotonic clock as of its last tick: never ahead of
 * the precise one, and behind it by at most a tick while the tick keeps
 * time; so a due more than a tick (plus one ms for the truncation of both
 * times to whole ms) beyond it has not come. */
bool weft__clock_reached(weft_loop_t *loop, uint64_t due) {
  if (weft__now(loop) >= due)
    return true;
  if (due > weft__coarse_ns() / 1000000 + coarse_tick_ms() + 1)
    return false;
  uv_update_time(loop->uv);
  return weft__now(loop) >= due;
}

void weft__timespec_add_ms(struct timespec *ts, uint64_t ms) {
  uint64_t ns = (uint64_t)ts->tv_nsec + (ms % 1000) * 1000000u;
  ts->tv_sec += (time_t)(ms / 1000 + ns / 1000000000u);
  ts->tv_nsec = (long)(ns % 1000000000u);
}
