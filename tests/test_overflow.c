/* Death tests: a task that runs off its stack is reported by name, with its
 * loop, and the process aborts. Each case forks; the child overflows, the
 * parent checks how it died and what it said on stderr.
 *
 * - guard_page: a guarded stack (the default) and unbounded recursion: the
 *   fault on the guard page is caught by the SIGSEGV handler, on its
 *   alternate signal stack.
 * - guard_page_fallback: the same on the fallback's guarded stacks (a
 *   mapping each, WEFT_STACK_FALLBACK=1), which older kernels get; the
 *   default is a chunk with lightweight guards where the kernel has them.
 * - canary: stacks from slabs (WEFT_GUARDED_STACKS_MAX=0), no guard page;
 *   the recursion goes a KiB or two past the bottom and then yields: the
 *   canary is found smashed at that switch.
 * - big_frames, big_frames_fallback: 14 KiB frames that touch only their
 *   ends (gcc without -fstack-clash-protection), 300 KiB deep on a 256 KiB
 *   stack: a 4 KiB guard would be jumped into the neighbouring stack; the
 *   64 KiB guard is not, on either path.
 *
 * Not built under the sanitizers, which handle SIGSEGV and watch stacks
 * themselves.
 */
#include "testutil.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define STACK 65536

static int depth_target;

/* 1 KiB a frame, every byte written (so whatever lies below the stack is
 * overwritten, the canary included), kept from being optimised away. */
static int dive(int depth) {
  volatile char frame[1024];
  for (size_t i = 0; i < sizeof frame; i++)
    frame[i] = (char)depth;
  if (depth_target && depth >= depth_target) {
    weft_yield(); /* the switch checks the canary */
    return frame[0];
  }
  return dive(depth + 1) + frame[sizeof frame - 1];
}

static void *diver(void *arg) {
  (void)arg;
  return (void *)(intptr_t)dive(0);
}

/* 14 KiB a frame, only its two ends written: the frames step over whatever
 * lies below the stack 14 KiB at a time. Returns after about 300 KiB. */
static int leap(int depth) {
  volatile char frame[14 * 1024];
  frame[0] = (char)depth;
  frame[sizeof frame - 1] = (char)depth;
  if (depth >= 300 / 14)
    return frame[0];
  return leap(depth + 1) + frame[sizeof frame - 1];
}

static void *leaper(void *arg) {
  (void)arg;
  return (void *)(intptr_t)leap(0);
}

static void *bystander(void *arg) {
  weft_sleep((uint64_t)(uintptr_t)arg);
  return NULL;
}

/* Three stacks side by side, the middle one freed and reused by the
 * leaper: whichever way the stacks are laid out (chunk slots upwards,
 * fallback mappings downwards), a parked task's stack lies just below the
 * guard the leaper meets. With a 4 KiB guard the leaper returns and that
 * stack is quietly overwritten. */
static void *big_main(void *arg) {
  (void)arg;
  weft_task_t *mid, *t;
  if (weft_spawn(NULL, bystander, (void *)(uintptr_t)1000, NULL) != 0 ||
      weft_spawn(NULL, bystander, (void *)(uintptr_t)0, &mid) != 0 ||
      weft_spawn(NULL, bystander, (void *)(uintptr_t)1000, NULL) != 0)
    _exit(3);
  weft_await(mid, NULL);
  weft_task_release(mid);
  if (weft_spawn(NULL, leaper, NULL, &t) != 0 || weft_task_set_name(t, "diver") != 0)
    _exit(3);
  weft_await(t, NULL);
  return NULL;
}

enum mode { GUARD, FALLBACK, CANARY, BIG, BIG_FALLBACK };

/* Runs the diver in a child; returns what the child wrote on stderr, and
 * its wait status in *status. */
static char *run_child(enum mode mode, int *status) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    /* cmocka catches SIGSEGV around a test; weft reports only where the
     * application left it at its default. */
    signal(SIGSEGV, SIG_DFL);
    if (mode == CANARY) {
      setenv("WEFT_GUARDED_STACKS_MAX", "0", 1);
      depth_target = STACK / 1024 - 1; /* frames of a bit over 1 KiB: about 2 KiB past the bottom */
    }
    if (mode == FALLBACK || mode == BIG_FALLBACK)
      setenv("WEFT_STACK_FALLBACK", "1", 1);
    bool big = mode == BIG || mode == BIG_FALLBACK;
    weft_loop_t *loop;
    weft_loop_opts_t o = {.stack_size = big ? 256 * 1024 : STACK, .name = "deep-loop"};
    if (weft_loop_new(&loop, &o) != 0)
      _exit(3);
    weft_task_t *t;
    if (big) {
      if (weft_spawn(loop, big_main, NULL, &t) != 0)
        _exit(3);
    } else if (weft_spawn(loop, diver, NULL, &t) != 0 || weft_task_set_name(t, "diver") != 0) {
      _exit(3);
    }
    weft_loop_run_until_complete(loop, t, NULL);
    _exit(0); /* not reached if the overflow is caught */
  }
  close(fds[1]);
  static char out[4096];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof out - 1 && (n = read(fds[0], out + len, sizeof out - 1 - len)) > 0)
    len += (size_t)n;
  out[len] = 0;
  close(fds[0]);
  waitpid(pid, status, 0);
  return out;
}

static void expect_report(enum mode mode) {
  int status;
  char *err = run_child(mode, &status);
  if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT))
    fail_msg("the child did not abort (status %d); it said: %s", status, err);
  if (!strstr(err, "task stack overflow in diver on deep-loop"))
    fail_msg("no overflow report; the child said: %s", err);
}

static void guard_page(void **state) {
  expect_report(GUARD);
}

static void guard_page_fallback(void **state) {
  expect_report(FALLBACK);
}

static void big_frames(void **state) {
  expect_report(BIG);
}

static void big_frames_fallback(void **state) {
  expect_report(BIG_FALLBACK);
}

static void canary(void **state) {
  int status;
  char *err = run_child(CANARY, &status);
  if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT))
    fail_msg("the child did not abort (status %d); it said: %s", status, err);
  if (!strstr(err, "task stack overflow in diver on deep-loop (its canary was overwritten)"))
    fail_msg("no canary report; the child said: %s", err);
}

/* A SIGSEGV sent to the process (not a fault) is not weft's: it still
 * kills, with weft's handler installed. */
static void *nothing(void *arg) {
  return arg;
}

static void sent_sigsegv_kills(void **state) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL);
    weft_run(nothing, NULL, NULL); /* installs the handler */
    raise(SIGSEGV);
    _exit(0); /* survived: wrong */
  }
  int status;
  waitpid(pid, &status, 0);
  if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV))
    fail_msg("a raised SIGSEGV did not kill the process (status %d)", status);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(guard_page),
    cmocka_unit_test(guard_page_fallback),
    cmocka_unit_test(canary),
    cmocka_unit_test(big_frames),
    cmocka_unit_test(big_frames_fallback),
    cmocka_unit_test(sent_sigsegv_kills),
};

WT_MAIN("overflow", tests)
