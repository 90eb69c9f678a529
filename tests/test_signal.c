/* Tests for weft_signal_wait: one signal wakes every waiter (tasks on two
 * pool loops, the main task, a plain thread), a signal every thread but
 * weft's watcher blocks still arrives, a waiter cut by a cancel or a
 * deadline, a signal that comes while nobody waits is held for the next
 * wait (one), weft_signal_stop puts the old disposition back and wakes
 * waiters with WEFT_ECLOSED, and signals that cannot be waited for.
 *
 * Signals are sent to the process (kill(getpid(), ...)) once the waiters
 * are known to wait (weft__signal_state, below), never after a fixed time. */
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

/* lib/signal.c, for tests: how many wait for signum, and whether one is
 * held for the next wait. */
int weft__signal_state(int signum, size_t *waiters, bool *pending);

static size_t waiters_of(int signum) {
  size_t n;
  bool pending;
  assert_int_equal(weft__signal_state(signum, &n, &pending), 0);
  return n;
}

static bool pending_of(int signum) {
  size_t n;
  bool pending;
  assert_int_equal(weft__signal_state(signum, &n, &pending), 0);
  return pending;
}

/* From a task: sleeps a millisecond at a time until want wait for signum
 * (at most 10 s). */
static void until_waiters(int signum, size_t want) {
  for (int i = 0; i < 10000 && waiters_of(signum) < want; i++)
    weft_sleep(1);
  assert_true(waiters_of(signum) >= want);
}

static void *wait_task(void *arg) {
  int signum = (int)(intptr_t)arg;
  int err = weft_signal_wait(signum);
  if (err)
    weft_task_fail(err);
  return NULL;
}

/* ------------------------------------------------ every waiter wakes */

typedef struct all {
  weft_pool_t *pool;
  int signum;
  atomic_int thread_rc;
} all_t;

static void *plain_waiter(void *arg) {
  all_t *a = arg;
  atomic_store(&a->thread_rc, weft_signal_wait(a->signum));
  return NULL;
}

static void *kill_when_task(void *arg) {
  all_t *a = arg;
  until_waiters(a->signum, 4);
  assert_int_equal(kill(getpid(), a->signum), 0);
  return NULL;
}

static void *all_main(void *arg) {
  all_t *a = arg;
  weft_task_t *t[2];
  for (unsigned i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(a->pool, i), wait_task,
                                (void *)(intptr_t)a->signum, &t[i]), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, plain_waiter, a), 0);
  /* A helper on this loop sends the signal once all four wait: the two
   * pool tasks, the plain thread and this task. */
  weft_task_t *killer;
  assert_int_equal(weft_spawn(NULL, kill_when_task, a, &killer), 0);
  assert_int_equal(weft_signal_wait(a->signum), 0);
  assert_int_equal(weft_await(killer, NULL), 0);
  weft_task_release(killer);
  for (unsigned i = 0; i < 2; i++) {
    assert_int_equal(weft_await(t[i], NULL), 0);
    weft_task_release(t[i]);
  }
  pthread_join(th, NULL);
  assert_int_equal(atomic_load(&a->thread_rc), 0);
  assert_int_equal(waiters_of(a->signum), 0);
  assert_false(pending_of(a->signum));
  return NULL;
}

static void signal_wakes_every_waiter(void **state) {
  (void)state;
  all_t a = {.pool = wt_pool_of(2), .signum = SIGUSR1};
  atomic_init(&a.thread_rc, 1);
  assert_int_equal(weft_run(all_main, &a, NULL), 0);
  assert_int_equal(weft_pool_shutdown(a.pool, WEFT_DRAIN), 0);
  assert_int_equal(weft_signal_stop(SIGUSR1), 0);
}

/* SIGTERM, which pool workers block, blocked here too (and so in every
 * thread made from here): only weft's watcher takes it, and the pool
 * task waiting for it wakes. */
static void signal_reaches_blocked_workers(void **state) {
  (void)state;
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &old);
  all_t a = {.pool = wt_pool_of(2), .signum = SIGTERM};
  atomic_init(&a.thread_rc, 1);
  assert_int_equal(weft_run(all_main, &a, NULL), 0);
  assert_int_equal(weft_pool_shutdown(a.pool, WEFT_DRAIN), 0);
  assert_int_equal(weft_signal_stop(SIGTERM), 0);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* ----------------------------------------------------- cancel, deadline */

static void *cut_main(void *arg) {
  (void)arg;
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, wait_task, (void *)(intptr_t)SIGUSR2, &t), 0);
  until_waiters(SIGUSR2, 1);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  weft_task_release(t);
  assert_int_equal(waiters_of(SIGUSR2), 0);

  double t0 = wt_now_ms();
  assert_int_equal(weft_deadline_push(30), 0);
  assert_int_equal(weft_signal_wait(SIGUSR2), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  assert_true(wt_now_ms() - t0 >= 29.0);
  assert_int_equal(waiters_of(SIGUSR2), 0);
  assert_false(pending_of(SIGUSR2));
  return NULL;
}

static void signal_wait_cancel_and_deadline(void **state) {
  (void)state;
  assert_int_equal(weft_run(cut_main, NULL, NULL), 0);
  assert_int_equal(weft_signal_stop(SIGUSR2), 0);
}

/* ------------------------------------------------ a signal nobody awaits */

static void *held_main(void *arg) {
  (void)arg;
  /* The first wait watches SIGUSR1; nothing comes. */
  assert_int_equal(weft_deadline_push(1), 0);
  assert_int_equal(weft_signal_wait(SIGUSR1), WEFT_ETIMEDOUT);
  assert_int_equal(weft_deadline_pop(), 0);
  /* Sent while nobody waits: caught (the process lives on) and held. */
  assert_int_equal(kill(getpid(), SIGUSR1), 0);
  for (int i = 0; i < 10000 && !pending_of(SIGUSR1); i++)
    weft_sleep(1);
  assert_true(pending_of(SIGUSR1));
  /* The next wait takes it at once. */
  assert_int_equal(weft_deadline_push(10000), 0);
  double t0 = wt_now_ms();
  assert_int_equal(weft_signal_wait(SIGUSR1), 0);
  assert_true(wt_now_ms() - t0 < 5000.0);
  assert_int_equal(weft_deadline_pop(), 0);
  return NULL;
}

static void signal_without_waiter_is_held(void **state) {
  (void)state;
  assert_int_equal(weft_run(held_main, NULL, NULL), 0);
  assert_int_equal(weft_signal_stop(SIGUSR1), 0);
  assert_false(pending_of(SIGUSR1));
}

/* --------------------------------------------------- stop, dispositions */

static void *stop_main(void *arg) {
  (void)arg;
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, wait_task, (void *)(intptr_t)SIGUSR2, &t), 0);
  until_waiters(SIGUSR2, 1);
  assert_int_equal(weft_signal_stop(SIGUSR2), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECLOSED);
  weft_task_release(t);
  return NULL;
}

static void signal_stop_restores_disposition(void **state) {
  (void)state;
  struct sigaction ign = {.sa_handler = SIG_IGN}, now;
  sigemptyset(&ign.sa_mask);
  assert_int_equal(sigaction(SIGUSR2, &ign, NULL), 0);
  assert_int_equal(weft_run(stop_main, NULL, NULL), 0);
  assert_int_equal(sigaction(SIGUSR2, NULL, &now), 0);
  assert_true(now.sa_handler == SIG_IGN);
  /* Stopping what is not watched does nothing. */
  assert_int_equal(weft_signal_stop(SIGUSR2), 0);
  assert_int_equal(weft_signal_stop(SIGHUP), 0);
  /* SIGUSR1 had its default: it gets it back. */
  assert_int_equal(weft_run(held_main, NULL, NULL), 0);
  assert_int_equal(weft_signal_stop(SIGUSR1), 0);
  assert_int_equal(sigaction(SIGUSR1, NULL, &now), 0);
  assert_true(now.sa_handler == SIG_DFL);
}

/* --------------------------------------------------------- bad signals */

static void *invalid_main(void *arg) {
  (void)arg;
  int bad[] = {0, -1, SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE, SIGILL, NSIG, 1000};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(weft_signal_wait(bad[i]), WEFT_EINVAL);
    assert_int_equal(weft_signal_stop(bad[i]), WEFT_EINVAL);
  }
  return NULL;
}

static void signal_invalid_numbers(void **state) {
  (void)state;
  assert_int_equal(weft_run(invalid_main, NULL, NULL), 0);
  /* From a plain thread too. */
  assert_int_equal(weft_signal_wait(SIGKILL), WEFT_EINVAL);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(signal_wakes_every_waiter),
    cmocka_unit_test(signal_reaches_blocked_workers),
    cmocka_unit_test(signal_wait_cancel_and_deadline),
    cmocka_unit_test(signal_without_waiter_is_held),
    cmocka_unit_test(signal_stop_restores_disposition),
    cmocka_unit_test(signal_invalid_numbers),
  };
  return wt_main(argc, argv, "signal", tests, sizeof tests / sizeof tests[0]);
}
