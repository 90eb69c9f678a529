/* Tests for misuse and the error vocabulary: await points called outside a
 * task (on a plain thread, and inside a libuv callback on the loop's own
 * thread) return WEFT_ENOTASK and leave nothing behind; NULL arguments give
 * WEFT_EINVAL instead of a crash; a task awaiting itself gets WEFT_EDEADLK;
 * weft_task_fail refuses codes that are not failures; weft_strerror names
 * every code.
 *
 * The libuv-callback case also checks that a refused call did not act on the
 * task that happened to run last: a weft_task_fail or weft_deadline_set made
 * in the callback must not change what the loop's tasks see.
 */
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------- outside tasks */

static void await_points_outside_task(void **state) {
  /* No loop exists yet. */
  assert_null(weft_task_current());
  assert_int_equal(weft_sleep(1), WEFT_ENOTASK);
  assert_int_equal(weft_sleep(0), WEFT_ENOTASK);
  assert_int_equal(weft_yield(), WEFT_ENOTASK);
  assert_int_equal(weft_task_fail(-5), WEFT_ENOTASK);
  assert_int_equal(weft_deadline_set(10), WEFT_ENOTASK);
  assert_int_equal(weft_deadline_clear(), WEFT_ENOTASK);

  /* With a loop, and task handles, but outside any task. */
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL;
  weft_group_t *g = NULL;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_loop_set_current(loop), 0);
  assert_int_equal(weft_spawn(loop, wt_echo_task, (void *)1, &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  assert_int_equal(weft_group_new(&g), 0);
  void *r = NULL;
  int st = 1;
  assert_int_equal(weft_await(t, &r), WEFT_ENOTASK);
  assert_int_equal(weft_await_shielded(t, &r), WEFT_ENOTASK);
  assert_int_equal(weft_gather(&t, 1, &r, &st), WEFT_ENOTASK);
  assert_int_equal(weft_wait_for(t, 10, &r), WEFT_ENOTASK);
  assert_int_equal(weft_group_wait(g), WEFT_ENOTASK);
  assert_int_equal(weft_sleep(1), WEFT_ENOTASK);
  assert_int_equal(weft_yield(), WEFT_ENOTASK);
  assert_int_equal(weft_task_fail(-5), WEFT_ENOTASK);
  assert_int_equal(weft_deadline_set(10), WEFT_ENOTASK);
  assert_null(weft_task_current());
  /* Nothing was written by the refused calls. */
  assert_null(r);
  assert_int_equal(st, 1);
  assert_int_equal(weft_task_status(t), 0);

  /* The group refused its wait outside a task, so it still takes
   * children. */
  int ran = 0;
  weft_task_t *d = NULL;
  assert_int_equal(weft_group_spawn(g, loop, wt_flag_task, &ran), 0);
  assert_int_equal(weft_spawn(loop, wt_echo_task, NULL, &d), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, d, NULL), 0);
  assert_int_equal(ran, 1);
  weft_task_release(d);
  weft_group_release(g);
  weft_task_release(t);
  assert_int_equal(weft_loop_set_current(NULL), 0);
  assert_int_equal(weft_loop_close(loop), 0);
}

/* What each call returned inside the libuv callback. */
struct cb_record {
  int fired;
  int sleep_rc, yield_rc, await_rc, shielded_rc, gather_rc, wait_for_rc;
  int group_wait_rc, fail_rc, deadline_set_rc, deadline_clear_rc, spawn_rc;
  weft_task_t *current;
  void *result;
  int status;
};

static struct cb_record g_cb;
static weft_loop_t *g_loop;
static weft_task_t *g_victim; /* a task of the loop, parked while the callback runs */
static weft_group_t *g_group;
static int g_spawned_ran;
static wt_probe_t g_victim_probe;

static void misuse_cb(uv_timer_t *timer) {
  g_cb.fired = 1;
  g_cb.current = weft_task_current();
  g_cb.sleep_rc = weft_sleep(1);
  g_cb.yield_rc = weft_yield();
  g_cb.await_rc = weft_await(g_victim, &g_cb.result);
  g_cb.shielded_rc = weft_await_shielded(g_victim, &g_cb.result);
  g_cb.gather_rc = weft_gather(&g_victim, 1, &g_cb.result, &g_cb.status);
  g_cb.wait_for_rc = weft_wait_for(g_victim, 10, &g_cb.result);
  g_cb.group_wait_rc = weft_group_wait(g_group);
  g_cb.fail_rc = weft_task_fail(-5);
  g_cb.deadline_set_rc = weft_deadline_set(1);
  g_cb.deadline_clear_rc = weft_deadline_clear();
  /* Spawning is allowed in a callback. */
  g_cb.spawn_rc = weft_spawn(g_loop, wt_flag_task, &g_spawned_ran, NULL);
  uv_close((uv_handle_t *)timer, NULL);
}

static void *victim_task(void *arg) {
  /* Sleeps through the callback, then sleeps again: if the callback's
   * weft_deadline_set(1) had landed on this task, the second sleep would
   * time out. */
  wt_probe_task(&g_victim_probe);
  return (void *)(intptr_t)weft_sleep(30);
}

static void await_points_in_uv_callback(void **state) {
  uv_timer_t timer;
  void *r = NULL;
  memset(&g_cb, 0, sizeof g_cb);
  g_cb.status = 1;
  g_spawned_ran = 0;
  wt_probe_init(&g_victim_probe, 100, 0, NULL);
  assert_int_equal(weft_loop_new(&g_loop, NULL), 0);
  assert_int_equal(weft_group_new(&g_group), 0);
  assert_int_equal(weft_spawn(g_loop, victim_task, NULL, &g_victim), 0);
  assert_int_equal(uv_timer_init(weft_loop_uv(g_loop), &timer), 0);
  assert_int_equal(uv_timer_start(&timer, misuse_cb, 20, 0), 0);
  /* The victim's status is checked here: a weft_task_fail(-5) in the
   * callback must not have become its status. */
  assert_int_equal(weft_loop_run_until_complete(g_loop, g_victim, &r), 0);
  assert_int_equal(g_cb.fired, 1);
  assert_null(g_cb.current);
  assert_int_equal(g_cb.sleep_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.yield_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.await_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.shielded_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.gather_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.wait_for_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.group_wait_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.fail_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.deadline_set_rc, WEFT_ENOTASK);
  assert_int_equal(g_cb.deadline_clear_rc, WEFT_ENOTASK);
  assert_null(g_cb.result);
  assert_int_equal(g_cb.status, 1);
  /* The victim slept undisturbed, twice. */
  assert_int_equal(g_victim_probe.sleep_rc, 0);
  assert_int_equal((int)(intptr_t)r, 0);
  assert_int_equal(g_cb.spawn_rc, 0);
  assert_int_equal(g_spawned_ran, 1);
  weft_task_release(g_victim);
  weft_group_release(g_group);
  assert_int_equal(weft_loop_close(g_loop), 0);
}

/* ----------------------------------------------------------- NULL arguments */

static void null_arguments_outside(void **state) {
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL;
  weft_stats_t st;
  assert_int_equal(weft_run(NULL, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_new(NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_loop_run_until_complete(NULL, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_run_until_complete(loop, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_run_forever(NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_stop(NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_close(NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_stats(NULL, &st), WEFT_EINVAL);
  assert_int_equal(weft_loop_stats(loop, NULL), WEFT_EINVAL);
  assert_int_equal(weft_spawn(loop, NULL, NULL, &t), WEFT_EINVAL);
  assert_int_equal(weft_spawn(loop, NULL, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_task_cancel(NULL), WEFT_EINVAL);
  assert_int_equal(weft_task_status(NULL), WEFT_EINVAL);
  assert_int_equal(weft_task_set_name(NULL, "x"), WEFT_EINVAL);
  assert_int_equal(weft_group_new(NULL), WEFT_EINVAL);
  assert_int_equal(weft_group_spawn(NULL, loop, wt_echo_task, NULL), WEFT_EINVAL);
  weft_task_release(NULL);
  weft_group_release(NULL);
  /* Nothing was spawned by the refused calls. */
  assert_int_equal(weft_loop_stats(loop, &st), 0);
  assert_int_equal(st.spawned, 0);
  assert_int_equal(weft_loop_close(loop), 0);
}

static void *null_in_task_main(void *arg) {
  weft_task_t *none = NULL;
  void *r = NULL;
  assert_int_equal(weft_await(NULL, &r), WEFT_EINVAL);
  assert_int_equal(weft_await_shielded(NULL, &r), WEFT_EINVAL);
  assert_int_equal(weft_wait_for(NULL, 10, &r), WEFT_EINVAL);
  assert_int_equal(weft_gather(NULL, 2, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_gather(&none, 1, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_group_wait(NULL), WEFT_EINVAL);
  assert_int_equal(weft_spawn(NULL, NULL, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_task_cancel(NULL), WEFT_EINVAL);
  assert_null(r);
  /* The task is not harmed by its refused calls: it can still sleep. */
  assert_int_equal(weft_sleep(1), 0);
  return (void *)0x5;
}

static void null_arguments_in_task(void **state) {
  void *r = NULL;
  assert_int_equal(weft_run(null_in_task_main, NULL, &r), 0);
  assert_ptr_equal(r, (void *)0x5);
}

/* --------------------------------------------------------------- deadlock */

static void *self_await_main(void *arg) {
  weft_task_t *self = weft_task_current();
  assert_non_null(self);
  assert_int_equal(weft_await(self, NULL), WEFT_EDEADLK);
  assert_int_equal(weft_await_shielded(self, NULL), WEFT_EDEADLK);
  assert_int_equal(weft_wait_for(self, 10, NULL), WEFT_EDEADLK);
  assert_int_equal(weft_gather(&self, 1, NULL, NULL), WEFT_EDEADLK);
  /* Refused at once, and the task goes on. */
  assert_int_equal(weft_yield(), 0);
  return NULL;
}

static void await_self_deadlock(void **state) {
  assert_int_equal(weft_run(self_await_main, NULL, NULL), 0);
}

/* ------------------------------------------------------------ task_fail */

static void *bad_fail_main(void *arg) {
  assert_int_equal(weft_task_fail(0), WEFT_EINVAL);
  assert_int_equal(weft_task_fail(1), WEFT_EINVAL);
  assert_int_equal(weft_task_fail(WEFT_EPENDING), WEFT_EINVAL);
  return NULL;
}

static void task_fail_rejects_non_failures(void **state) {
  /* None of the refused calls set a status: main succeeds. */
  assert_int_equal(weft_run(bad_fail_main, NULL, NULL), 0);
}

/* ------------------------------------------------------------- strerror */

static void strerror_names_every_code(void **state) {
  static const int codes[] = {WEFT_EINVAL,    WEFT_ENOMEM,   WEFT_EBUSY,   WEFT_EAGAIN,
                              WEFT_ECANCELED, WEFT_ETIMEDOUT, WEFT_EPERM,  WEFT_EALREADY,
                              WEFT_ENOTASK,   WEFT_EPENDING, WEFT_ECLOSED, WEFT_EDEADLK};
  const size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    const char *s = weft_strerror(codes[i]);
    assert_non_null(s);
    assert_true(strlen(s) > 0);
    for (size_t j = 0; j < i; j++) {
      assert_int_not_equal(codes[i], codes[j]);
      assert_string_not_equal(s, weft_strerror(codes[j]));
    }
  }
  /* Codes shared with libuv are libuv's. */
  assert_int_equal(WEFT_ECANCELED, UV_ECANCELED);
  assert_int_equal(WEFT_ETIMEDOUT, UV_ETIMEDOUT);
  assert_int_equal(WEFT_EINVAL, UV_EINVAL);
  /* Unknown and foreign codes still get a sentence. */
  static const int others[] = {0, -123456, 123456, -1, UV_ECONNRESET, INT32_MIN};
  for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
    const char *s = weft_strerror(others[i]);
    assert_non_null(s);
    assert_true(strlen(s) > 0);
  }
}

/* Misuse lines go where weft_log_set says, not to stderr: with a log
 * function set and WEFT_DEBUG=1, a weft_sleep outside a task reaches the
 * function as one line naming the call, and stderr stays empty. */
typedef struct log_capture {
  int lines;
  char last[512];
} log_capture_t;

static void capture_line(const char *line, void *arg) {
  log_capture_t *c = arg;
  c->lines++;
  snprintf(c->last, sizeof c->last, "%s", line);
}

static void misuse_goes_to_log(void **state) {
  (void)state;
  setenv("WEFT_DEBUG", "1", 1);
  log_capture_t cap = {0};
  fflush(stderr);
  int saved = dup(2);
  FILE *err_file = tmpfile();
  assert_non_null(err_file);
  assert_true(saved >= 0 && dup2(fileno(err_file), 2) == 2);
  weft_log_set(capture_line, &cap);
  int rc = weft_sleep(1);
  weft_log_set(NULL, NULL);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  assert_int_equal(rc, WEFT_ENOTASK);
  assert_int_equal(cap.lines, 1);
  assert_non_null(strstr(cap.last, "weft_sleep"));
  assert_non_null(strstr(cap.last, "outside a task"));
  assert_int_equal(ftell(err_file), 0);
  fclose(err_file);
  /* With the sink back to its default, the same line goes to stderr. */
  assert_int_equal(weft_sleep(1), WEFT_ENOTASK);
}

static void version_string(void **state) {
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", WEFT_VERSION_MAJOR, WEFT_VERSION_MINOR,
           WEFT_VERSION_PATCH);
  assert_string_equal(weft_version_string(), want);
}

/* weft_log_set returns only once no call of the sink it replaces is
 * running: here a sink that blocks on a plain thread (a misuse line, with
 * WEFT_DEBUG=1) holds a replacing weft_log_set until it returns. A sink
 * that sets another sink from inside itself does not wait for itself. */
typedef struct blocking_sink {
  atomic_int entered, release, set_returned;
  atomic_int nested_ok;
} blocking_sink_t;

static void blocking_line(const char *line, void *arg) {
  blocking_sink_t *b = arg;
  (void)line;
  atomic_store(&b->entered, 1);
  while (!atomic_load(&b->release))
    uv_sleep(1);
}

static void *misuse_thread(void *arg) {
  (void)arg;
  assert_int_equal(weft_sleep(1), WEFT_ENOTASK); /* logs a misuse line */
  return NULL;
}

static void *setter_thread(void *arg) {
  blocking_sink_t *b = arg;
  weft_log_set(NULL, NULL);
  atomic_store(&b->set_returned, 1);
  return NULL;
}

static void resetting_line(const char *line, void *arg) {
  blocking_sink_t *b = arg;
  (void)line;
  weft_log_set(NULL, NULL); /* from inside the sink: must not wait */
  atomic_store(&b->nested_ok, 1);
}

static void log_set_waits_for_running_sink(void **state) {
  (void)state;
  setenv("WEFT_DEBUG", "1", 1);
  blocking_sink_t b = {0};
  pthread_t logger, setter;
  weft_log_set(blocking_line, &b);
  assert_int_equal(pthread_create(&logger, NULL, misuse_thread, NULL), 0);
  assert_true(wt_wait_ge(&b.entered, 1, 10000));
  assert_int_equal(pthread_create(&setter, NULL, setter_thread, &b), 0);
  /* The sink is still running: the set must not have returned, however
   * long it is given. */
  uv_sleep(50);
  assert_int_equal(atomic_load(&b.set_returned), 0);
  atomic_store(&b.release, 1);
  assert_int_equal(pthread_join(setter, NULL), 0);
  assert_int_equal(atomic_load(&b.set_returned), 1);
  assert_int_equal(pthread_join(logger, NULL), 0);

  weft_log_set(resetting_line, &b);
  assert_int_equal(weft_sleep(1), WEFT_ENOTASK);
  assert_int_equal(atomic_load(&b.nested_ok), 1);
  unsetenv("WEFT_DEBUG");
}

/* Threads that keep logging do not hold weft_log_set up: it waits for the
 * calls of the sink it replaces, not for those of the sink it sets. Four
 * threads log misuse lines through a sink that takes 200 us a line. */
typedef struct busy_log {
  atomic_int stop, lines, set_done;
} busy_log_t;

static void slow_line(const char *line, void *arg) {
  busy_log_t *b = arg;
  (void)line;
  atomic_fetch_add(&b->lines, 1);
  struct timespec ts = {0, 200000};
  nanosleep(&ts, NULL);
}

static void *busy_logger(void *arg) {
  busy_log_t *b = arg;
  while (!atomic_load(&b->stop))
    (void)weft_sleep(1); /* a misuse line each time */
  return NULL;
}

static void *busy_setter(void *arg) {
  busy_log_t *b = arg;
  weft_log_set(slow_line, b); /* a new sink: the loggers go on */
  atomic_store(&b->set_done, 1);
  return NULL;
}

static void log_set_not_starved(void **state) {
  (void)state;
  setenv("WEFT_DEBUG", "1", 1);
  busy_log_t b = {0};
  pthread_t th[4], setter;
  weft_log_set(slow_line, &b);
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&th[i], NULL, busy_logger, &b), 0);
  assert_true(wt_wait_ge(&b.lines, 100, 20000));
  assert_int_equal(pthread_create(&setter, NULL, busy_setter, &b), 0);
  /* Generous: each replaced call ends within 200 us; starved, it never
   * returns while the loggers run. */
  bool done = wt_wait_ge(&b.set_done, 1, 20000);
  atomic_store(&b.stop, 1);
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  assert_int_equal(pthread_join(setter, NULL), 0);
  assert_true(done);
  weft_log_set(NULL, NULL);
  unsetenv("WEFT_DEBUG");
}

/* A fork while another thread is inside the sink: the child has no such
 * thread, and its weft_log_set must not wait for it. */
static void log_set_after_fork(void **state) {
  (void)state;
  setenv("WEFT_DEBUG", "1", 1);
  blocking_sink_t b = {0};
  pthread_t logger;
  weft_log_set(blocking_line, &b);
  assert_int_equal(pthread_create(&logger, NULL, misuse_thread, NULL), 0);
  assert_true(wt_wait_ge(&b.entered, 1, 10000));
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm(20); /* a hang dies of SIGALRM, which the parent sees */
    weft_log_set(NULL, NULL);
    _exit(0);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  atomic_store(&b.release, 1);
  assert_int_equal(pthread_join(logger, NULL), 0);
  weft_log_set(NULL, NULL);
  unsetenv("WEFT_DEBUG");
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(await_points_outside_task),
    cmocka_unit_test(await_points_in_uv_callback),
    cmocka_unit_test(null_arguments_outside),
    cmocka_unit_test(null_arguments_in_task),
    cmocka_unit_test(await_self_deadlock),
    cmocka_unit_test(task_fail_rejects_non_failures),
    cmocka_unit_test(strerror_names_every_code),
    cmocka_unit_test(version_string),
    cmocka_unit_test(misuse_goes_to_log),
    cmocka_unit_test(log_set_waits_for_running_sink),
    cmocka_unit_test(log_set_not_starved),
    cmocka_unit_test(log_set_after_fork),
};

WT_MAIN("misuse", tests)
