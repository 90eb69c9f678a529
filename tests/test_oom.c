/* Out of memory: each allocation weft makes is failed in turn (the nth
 * from now, n = 1, 2, ...) while a task is spawned, a channel made, a loop
 * or a pool started, work handed to another loop, a connection made. Every
 * call must either succeed or return WEFT_ENOMEM (or, for a task whose
 * stack could not be had, end with that status), and leave the runtime
 * consistent: the loop still runs, counts add up, nothing leaks (the ASan
 * and valgrind modes check), descriptors are back to their baseline.
 */
#include "testutil.h"

#include <dirent.h>
#include <stdatomic.h>

/* lib/alloc.c: the nth allocation from now fails (0: none). */
void weft__alloc_fail_nth(long n);

#define SWEEP 12 /* more allocations than any one call below makes */

static void *child(void *arg) {
  return arg;
}

static void *spawn_sweep(void *arg) {
  (void)arg;
  int ok = 0, nomem = 0;
  for (long n = 1; n <= SWEEP; n++) {
    weft_task_t *t = NULL;
    weft__alloc_fail_nth(n);
    int rc = weft_spawn(NULL, child, (void *)7, &t);
    if (rc == 0) {
      void *r = NULL;
      int st = weft_await(t, &r); /* the stack may have been the one */
      weft__alloc_fail_nth(0);
      assert_true(st == 0 || st == WEFT_ENOMEM);
      if (st == 0)
        assert_ptr_equal(r, (void *)7);
      weft_task_release(t);
      ok++;
    } else {
      weft__alloc_fail_nth(0);
      assert_int_equal(rc, WEFT_ENOMEM);
      assert_null(t);
      nomem++;
    }
  }
  assert_true(nomem > 0); /* the sweep did reach the spawn's allocation */
  assert_true(ok > 0);
  /* Channels. */
  for (long n = 1; n <= 3; n++) {
    weft_chan_t *ch = NULL;
    weft__alloc_fail_nth(n);
    int rc = weft_chan_new(&ch, 8);
    weft__alloc_fail_nth(0);
    if (rc == 0) {
      assert_int_equal(weft_chan_try_send(ch, NULL), 0);
      weft_chan_release(ch);
    } else {
      assert_int_equal(rc, WEFT_ENOMEM);
      assert_null(ch);
    }
  }
  /* The loop is whole: a plain spawn and await work, and the books balance. */
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, child, NULL, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  weft_stats_t st;
  assert_int_equal(weft_loop_stats(weft_loop_current(), &st), 0);
  assert_int_equal(st.live, 1);
  assert_int_equal(st.spawned, st.finished + st.failed + st.cancelled + st.live);
  return NULL;
}

static void oom_spawn_and_chan(void **state) {
  assert_int_equal(weft_run(spawn_sweep, NULL, NULL), 0);
}

static void oom_loop_and_pool(void **state) {
  /* A baseline after one loop came and went (libuv keeps two fds). */
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_loop_close(loop), 0);
  int fds = wt_count_fds();
  int made = 0;
  for (long n = 1; n <= SWEEP; n++) {
    loop = NULL;
    weft__alloc_fail_nth(n);
    int rc = weft_loop_new(&loop, NULL);
    weft__alloc_fail_nth(0);
    if (rc == 0) {
      made++;
      assert_int_equal(weft_loop_close(loop), 0);
    } else {
      assert_int_equal(rc, WEFT_ENOMEM);
      assert_null(loop);
    }
    assert_int_equal(wt_count_fds(), fds);
  }
  assert_true(made > 0);
  for (long n = 1; n <= 3 * SWEEP; n++) {
    weft_pool_t *pool = NULL;
    weft_pool_opts_t o = {.workers = 2};
    weft__alloc_fail_nth(n);
    int rc = weft_pool_new(&pool, &o);
    weft__alloc_fail_nth(0);
    if (rc == 0)
      assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
    else
      assert_int_equal(rc, WEFT_ENOMEM);
    assert_int_equal(wt_count_fds(), fds);
  }
}

static atomic_int g_calls;

static void counted(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_calls, 1);
}

static void oom_across_loops(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  int accepted = 0;
  for (long n = 1; n <= 4; n++) {
    weft_task_t *t = NULL;
    weft__alloc_fail_nth(n);
    int rc = weft_spawn(loop, child, (void *)3, &t);
    weft__alloc_fail_nth(0);
    if (rc == 0) {
      int st = weft_await(t, NULL);
      assert_true(st == 0 || st == WEFT_ENOMEM);
      weft_task_release(t);
    } else {
      assert_int_equal(rc, WEFT_ENOMEM);
    }
    weft__alloc_fail_nth(n);
    rc = weft_loop_call_soon(loop, counted, NULL);
    weft__alloc_fail_nth(0);
    if (rc == 0)
      accepted++;
    else
      assert_int_equal(rc, WEFT_ENOMEM);
  }
  /* Every accepted call runs, none other. */
  weft_task_t *t;
  assert_int_equal(weft_spawn(loop, child, NULL, &t), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  assert_true(wt_wait_ge(&g_calls, accepted, 5000));
  assert_int_equal(atomic_load(&g_calls), accepted);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void *accept_one(void *arg) {
  weft_stream_t *s = NULL;
  if (weft_tcp_accept(arg, &s) == 0)
    weft_stream_close(s);
  return NULL;
}

static void *tcp_sweep(void *arg) {
  (void)arg;
  weft_listener_t *l;
  assert_int_equal(weft_tcp_listen(&l, "127.0.0.1", 0, NULL), 0);
  int port = weft_listener_port(l);
  for (long n = 1; n <= SWEEP; n++) {
    weft_task_t *acc;
    assert_int_equal(weft_spawn(NULL, accept_one, l, &acc), 0);
    weft_stream_t *s = NULL;
    weft__alloc_fail_nth(n);
    int rc = weft_tcp_connect(&s, "127.0.0.1", port);
    weft__alloc_fail_nth(0);
    if (rc == 0) {
      assert_int_equal(weft_stream_write(s, "x", 1), 0);
      assert_int_equal(weft_stream_close(s), 0);
      assert_int_equal(weft_await(acc, NULL), 0);
    } else {
      assert_int_equal(rc, WEFT_ENOMEM);
      assert_null(s);
      weft_task_cancel(acc);
      weft_await(acc, NULL);
    }
    weft_task_release(acc);
  }
  assert_int_equal(weft_listener_close(l), 0);
  return NULL;
}

static void oom_tcp(void **state) {
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  assert_int_equal(weft_loop_close(loop), 0);
  int fds = wt_count_fds();
  assert_int_equal(weft_run(tcp_sweep, NULL, NULL), 0);
  assert_int_equal(wt_count_fds(), fds);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(oom_spawn_and_chan),
    cmocka_unit_test(oom_loop_and_pool),
    cmocka_unit_test(oom_across_loops),
    cmocka_unit_test(oom_tcp),
};

WT_MAIN("oom", tests)
