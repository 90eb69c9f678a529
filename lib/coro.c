/* Coroutines: a saved context plus what ASan and TSan need to follow a switch
 * between stacks. The loop's scheduler runs on the thread's own stack and every
 * task on a stack of its own. A task switches to its scheduler, or, when it
 * parks with more of the round to run, straight to the next task
 * (weft__park), so the side that resumes a coroutine need not be the one it
 * switched to. The arch file (lib/arch/) provides the bare switch; this file
 * wraps it.
 *
 * Under TSan a task runs as the fiber of its stack, which the pool keeps with
 * the stack (stack.c): creating a fiber costs TSan milliseconds. The tasks
 * that reuse one fiber follow each other on the loop's thread, and each
 * switch synchronizes (flags 0), so TSan orders a task after the scheduler
 * that started it and the scheduler after the task that ended before. */
#include "internal.h"

#if defined(WEFT_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(WEFT_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

#if defined(WEFT_SWITCH_X86_64)
const char weft__switch_name[] = "asm-x86_64";
#elif defined(WEFT_SWITCH_AARCH64)
const char weft__switch_name[] = "asm-aarch64";
#endif

const char *weft_switch_method(void) {
  return weft__switch_name;
}

void weft__coro_init_thread(weft__coro_t *sched) {
  /* stack_lo and stack_size are the thread's stack: ASan tells them when
   * the loop's first task starts (weft__coro_started; zero until then, the
   * loop being calloc'd), and they stay right for every later run, since a
   * loop keeps its thread. A run that only resumes older tasks learns
   * nothing new, so they are not cleared here. */
  sched->asan_fake = NULL;
#if defined(WEFT_TSAN)
  sched->tsan_fiber = __tsan_get_current_fiber();
#else
  sched->tsan_fiber = NULL;
#endif
}

void weft__coro_init(weft__coro_t *c, weft__stack_t *s, void (*entry)(void)) {
  c->stack_lo = s->lo;
  c->stack_size = s->size;
  c->asan_fake = NULL;
  c->tsan_fiber = s->tsan_fiber;
  weft__ctx_make(&c->ctx, s->lo, s->size, entry);
}

void weft__coro_destroy(weft__coro_t *c) {
  c->tsan_fiber = NULL;
}

void weft__coro_switch(weft__coro_t *from, weft__coro_t *to) {
#if defined(WEFT_ASAN)
  __sanitizer_start_switch_fiber(&from->asan_fake, to->stack_lo, to->stack_size);
#endif
#if defined(WEFT_TSAN)
  __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
  weft__ctx_switch(&from->ctx, &to->ctx);
#if defined(WEFT_ASAN)
  /* We are back, resumed by the scheduler or by another task: not always
   * `to`, so the resumer's bounds are not recorded here. The scheduler
   * learns its own in weft__coro_started, which only it ever resumes. */
  __sanitizer_finish_switch_fiber(from->asan_fake, NULL, NULL);
#endif
}

void weft__coro_started(weft__coro_t *self, weft__coro_t *from) {
#if defined(WEFT_ASAN)
  __sanitizer_finish_switch_fiber(NULL, &from->stack_lo, &from->stack_size);
#endif
  (void)self;
  (void)from;
}

/* Bare (WEFT__TSAN_BARE): TSan must not record a frame it will never see
 * return. */
WEFT__TSAN_BARE void weft__coro_exit(weft__coro_t *self, weft__coro_t *to) {
#if defined(WEFT_ASAN)
  /* NULL: this stack will not be resumed, ASan may drop its fake stack. */
  __sanitizer_start_switch_fiber(NULL, to->stack_lo, to->stack_size);
#endif
#if defined(WEFT_TSAN)
  __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
  weft__ctx_switch(&self->ctx, &to->ctx);
  weft__fatal("a finished task was resumed");
}
