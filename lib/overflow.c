/* The overflow report: a task that runs off the bottom of a guarded stack
 * (stack.c) faults on the guard page, and the SIGSEGV handler here names
 * the task and its loop before the process ends. A slab stack's smashed
 * canary is reported by the scheduler instead (loop.c), at the next switch.
 *
 * The handler runs on an alternate signal stack of the thread's own (the
 * task's stack is what ran out), writes with async-signal-safe calls only,
 * and aborts. A fault anywhere else is not weft's: the handler puts the
 * default action back and returns, so the fault repeats and kills the
 * process as it would have. The handler is installed only where the
 * application left SIGSEGV at its default (a sanitizer's own handler, for
 * one, is left alone). */
#include "internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALTSTACK_SIZE (64 * 1024)
/* How far below a stack's lowest byte a fault still counts as running off
 * it: as wide as every guard (internal.h), so a frame that jumps into the
 * guard's far end is still named. */
#define OVERFLOW_REACH WEFT__GUARD_REACH

static pthread_once_t segv_once = PTHREAD_ONCE_INIT;
static pthread_key_t altstack_key;
static bool segv_installed;

static void put(const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0)
      return;
    s += w;
    n -= (size_t)w;
  }
}

static void segv_handler(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  weft_loop_t *loop = weft__tls.running;
  weft_task_t *t = loop ? loop->current : NULL;
  const char *addr = si->si_addr;
  if (t && t->stack && addr < (const char *)t->stack->lo &&
      addr + OVERFLOW_REACH >= (const char *)t->stack->lo) {
    put("weft: task stack overflow in ");
    if (t->name[0]) {
      put(t->name);
    } else {
      char id[24], *p = id + sizeof id;
      uint64_t v = t->id;
      *--p = '\0';
      do
        *--p = (char)('0' + v % 10);
      while ((v /= 10) != 0);
      put("task-");
      put(p);
    }
    put(" on ");
    put(loop->name);
    put("\n");
    abort();
  }
  /* Not ours: the default action. A fault repeats when the handler
   * returns; a SIGSEGV sent by kill or raise does not, so it is raised
   * again. */
  signal(sig, SIG_DFL);
  if (si->si_code <= 0)
    raise(sig);
}

static void altstack_free(void *p) {
  stack_t none = {.ss_flags = SS_DISABLE};
  sigaltstack(&none, NULL);
  munmap(p, ALTSTACK_SIZE);
}

static void segv_install(void) {
  if (pthread_key_create(&altstack_key, altstack_free) != 0)
    return;
  segv_installed = weft__sig_claim(SIGSEGV, segv_handler, SA_ONSTACK);
}

/* On a thread about to run a loop: the handler, once per process, and an
 * alternate signal stack, once per thread (freed when the thread ends). */
void weft__stack_overflow_watch(void) {
  pthread_once(&segv_once, segv_install);
  if (!segv_installed || pthread_getspecific(altstack_key))
    return;
  /* The application's own alternate stack, if it set one, serves. */
  stack_t old;
  if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE))
    return;
  void *p = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return;
  stack_t ss = {.ss_sp = p, .ss_size = ALTSTACK_SIZE};
  if (sigaltstack(&ss, NULL) != 0 || pthread_setspecific(altstack_key, p) != 0) {
    munmap(p, ALTSTACK_SIZE);
    return;
  }
}
