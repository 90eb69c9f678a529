/* Shared helpers for weft's cmocka tests.
 *
 * Every test executable holds the cases of one module. Given a case name it
 * runs only that case, so CMake can register each case as its own ctest
 * entry with its own timeout and a hang or a crash fails one case loudly. An
 * unknown name is an error (exit 2), so a case list in CMake that drifted
 * from the sources cannot pass silently. "--list" prints the case names.
 * Run without arguments it runs every case, each in a child process of its
 * own: a failed assertion inside a task leaves that process's loop in the
 * middle of a step, which would otherwise spoil the cases after it.
 *
 * The probe task below is the workhorse of most tests: it sleeps, records
 * what its await point returned and when it ended, optionally fails, and
 * returns a chosen result. Tests check what the probe saw, not only what the
 * API returned, because a wrong scheduler can still return the right code.
 *
 * This header must be included first: it asks for POSIX and GNU declarations
 * (pthreads, fork, getrusage) that -std=c11 hides otherwise.
 */
#ifndef WEFT_TESTUTIL_H
#define WEFT_TESTUTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#include "weft.h"

/* The monotonic clock in milliseconds, as a double so short intervals keep
 * their fractions. */
static inline double wt_now_ms(void) {
  return (double)uv_hrtime() / 1e6;
}

/* Polls, from a plain thread, until *v >= want or timeout_ms passed;
 * returns whether it got there. For state that tasks on other threads
 * update. */
static inline bool wt_wait_ge(atomic_int *v, int want, unsigned timeout_ms) {
  double deadline = wt_now_ms() + timeout_ms;
  while (atomic_load(v) < want) {
    if (wt_now_ms() > deadline)
      return false;
    uv_sleep(1);
  }
  return true;
}

/* A pool of the given number of workers, or the test fails. */
/* Open descriptors of the process. The first libuv loop of a process
 * opens two that stay (libuv's signal lock pipe), so the first call lets
 * one loop come and go before counting. */
static inline int wt_count_fds(void) {
  static bool warm;
  if (!warm) {
    uv_loop_t l;
    uv_loop_init(&l);
    uv_loop_close(&l);
    warm = true;
  }
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

static inline weft_pool_t *wt_pool_of(unsigned workers) {
  weft_pool_t *pool = NULL;
  weft_pool_opts_t opts = {.workers = workers};
  assert_int_equal(weft_pool_new(&pool, &opts), 0);
  assert_non_null(pool);
  return pool;
}

/* What a probe task does and what it saw. Zero it, set the inputs, pass its
 * address as the task's argument. */
typedef struct wt_probe {
  /* Inputs. */
  uint64_t sleep_ms; /* how long to sleep; 0 = do not sleep at all */
  int fail;          /* if nonzero, weft_task_fail(fail) before returning */
  void *ret;         /* what the task returns */
  /* Observations. */
  int started;       /* the body began to run */
  int sleep_rc;      /* what weft_sleep returned (1 until it returns) */
  int ended;         /* the body reached its end */
  double t_start;    /* wt_now_ms() when the body began */
  double t_end;      /* wt_now_ms() when the body ended */
} wt_probe_t;

static inline void wt_probe_init(wt_probe_t *p, uint64_t sleep_ms, int fail, void *ret) {
  memset(p, 0, sizeof *p);
  p->sleep_ms = sleep_ms;
  p->fail = fail;
  p->ret = ret;
  p->sleep_rc = 1;
}

static inline void *wt_probe_task(void *arg) {
  wt_probe_t *p = arg;
  p->started = 1;
  p->t_start = wt_now_ms();
  if (p->sleep_ms > 0)
    p->sleep_rc = weft_sleep(p->sleep_ms);
  if (p->fail != 0)
    weft_task_fail(p->fail);
  p->t_end = wt_now_ms();
  p->ended = 1;
  return p->ret;
}

/* A task body that does nothing and returns its argument. */
static inline void *wt_echo_task(void *arg) {
  return arg;
}

/* A task body that sets the int its argument points to. Used to prove that
 * a task ran, or (more often) that it never did. */
static inline void *wt_flag_task(void *arg) {
  *(int *)arg = 1;
  return NULL;
}

/* Runs the whole group, one named case, or lists the cases. */
static inline int wt_main(int argc, char **argv, const char *group,
                          const struct CMUnitTest *tests, size_t n) {
  if (argc < 2) {
    size_t failed = 0;
    for (size_t i = 0; i < n; i++) {
      fflush(NULL);
      pid_t pid = fork();
      if (pid < 0) {
        perror("fork");
        return 1;
      }
      if (pid == 0)
        _exit(_cmocka_run_group_tests(group, &tests[i], 1, NULL, NULL) == 0 ? 0 : 1);
      int status = 0;
      if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        failed++;
        if (WIFSIGNALED(status))
          printf("%s: %s killed by signal %d\n", group, tests[i].name, WTERMSIG(status));
      }
    }
    printf("%s: %zu of %zu cases failed\n", group, failed, n);
    return failed == 0 ? 0 : 1;
  }
  if (strcmp(argv[1], "--list") == 0) {
    for (size_t i = 0; i < n; i++)
      printf("%s\n", tests[i].name);
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    if (strcmp(tests[i].name, argv[1]) == 0)
      return _cmocka_run_group_tests(group, &tests[i], 1, NULL, NULL);
  }
  fprintf(stderr, "%s: no test case named '%s'\n", group, argv[1]);
  return 2;
}

#define WT_MAIN(group, tests)                                               \
  int main(int argc, char **argv) {                                         \
    return wt_main(argc, argv, group, tests, sizeof(tests) / sizeof((tests)[0])); \
  }

#endif /* WEFT_TESTUTIL_H */
