/* Tests for embedding weft in an application that already has libuv code:
 * a weft loop built on the application's own uv_loop_t, which the
 * application keeps running with its own uv_run (tasks then run from
 * libuv's phases, sleeps and cross-thread wake-ups included), and the
 * close-all idiom at exit (uv_walk closing every handle) made safe by
 * weft_is_internal_handle.
 */
#include "testutil.h"

#include <pthread.h>

/* ------------------------------------------- the application's uv_run */

typedef struct app {
  weft_chan_t *ch;
  int timer_fired;
  int gathered;
  void *got;
  int steps;
} app_t;

static void *nap(void *arg) {
  return weft_sleep((uint64_t)(uintptr_t)arg) == 0 ? arg : NULL;
}

static void *sender(void *arg) {
  app_t *a = arg;
  uv_sleep(30);
  assert_int_equal(weft_chan_send(a->ch, (void *)0x5eed), 0);
  return NULL;
}

static void *app_task(void *arg) {
  app_t *a = arg;
  weft_task_t *t[3];
  for (int i = 0; i < 3; i++)
    assert_int_equal(weft_spawn(NULL, nap, (void *)(uintptr_t)(10 + 10 * i), &t[i]), 0);
  assert_int_equal(weft_gather(t, 3, NULL, NULL), 0);
  for (int i = 0; i < 3; i++)
    weft_task_release(t[i]);
  a->gathered = 1;
  /* A message from a plain thread wakes this task through the loop's
   * inbox, while the application's uv_run blocks in its poll. */
  assert_int_equal(weft_chan_recv(a->ch, &a->got), 0);
  for (int i = 0; i < 5; i++) {
    a->steps++;
    assert_int_equal(weft_yield(), 0);
  }
  return NULL;
}

static void app_timer_cb(uv_timer_t *h) {
  app_t *a = h->data;
  a->timer_fired = 1;
  uv_close((uv_handle_t *)h, NULL);
}

static void embed_app_runs_uv_run(void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  weft_loop_opts_t opts = {.uv = &uv, .name = "embedded"};
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, &opts), 0);
  assert_ptr_equal(weft_loop_uv(loop), &uv);

  app_t a = {0};
  assert_int_equal(weft_chan_new(&a.ch, 1), 0);
  uv_timer_t timer;
  assert_int_equal(uv_timer_init(&uv, &timer), 0);
  timer.data = &a;
  assert_int_equal(uv_timer_start(&timer, app_timer_cb, 5, 0), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(loop, app_task, &a, &t), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, sender, &a), 0);

  /* The application's own loop run: it returns once its timer is closed
   * and weft's task has ended (a live task keeps it running). */
  double t0 = wt_now_ms();
  uv_run(&uv, UV_RUN_DEFAULT);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(weft_task_status(t), 0);
  assert_int_equal(a.timer_fired, 1);
  assert_int_equal(a.gathered, 1);
  assert_ptr_equal(a.got, (void *)0x5eed);
  assert_int_equal(a.steps, 5);
  assert_true(wt_now_ms() - t0 < 5000);
  weft_task_release(t);

  /* weft's own run functions work on it too, outside uv_run. */
  assert_int_equal(weft_spawn(loop, nap, (void *)(uintptr_t)5, &t), 0);
  void *r = NULL;
  assert_int_equal(weft_loop_run_until_complete(loop, t, &r), 0);
  assert_ptr_equal(r, (void *)(uintptr_t)5);
  weft_task_release(t);

  weft_chan_release(a.ch);
  assert_int_equal(weft_loop_close(loop), 0);
  /* weft left the application's loop as it found it. */
  assert_int_equal(uv_loop_close(&uv), 0);
}

/* --------------------------------------------------- the close-all idiom */

typedef struct census {
  int internal, app;
} census_t;

static void close_all(uv_handle_t *h, void *arg) {
  census_t *c = arg;
  if (weft_is_internal_handle(h)) {
    c->internal++;
    return;
  }
  c->app++;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void *listen_and_wait(void *arg) {
  weft_listener_t *l;
  assert_int_equal(weft_tcp_listen(&l, "127.0.0.1", 0, NULL), 0);
  weft_stream_t *s;
  assert_int_equal(weft_tcp_connect(&s, "127.0.0.1", weft_listener_port(l)), 0);
  weft_stream_t *in;
  assert_int_equal(weft_tcp_accept(l, &in), 0);
  /* The application's close-all runs while these are open. */
  *(int *)arg = 1;
  weft_sleep(10000);
  weft_stream_close(in);
  weft_stream_close(s);
  weft_listener_close(l);
  return NULL;
}

static void idle_noop(uv_idle_t *h) {
  (void)h;
}

static void *close_all_main(void *arg) {
  (void)arg;
  weft_loop_t *loop = weft_loop_current();
  uv_loop_t *uv = weft_loop_uv(loop);
  uv_timer_t app_timer;
  uv_idle_t app_idle;
  assert_int_equal(uv_timer_init(uv, &app_timer), 0);
  assert_int_equal(uv_idle_init(uv, &app_idle), 0);
  assert_int_equal(uv_idle_start(&app_idle, idle_noop), 0);
  int ready = 0;
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, listen_and_wait, &ready, &t), 0);
  while (!ready)
    assert_int_equal(weft_sleep(1), 0);

  census_t c = {0};
  uv_walk(uv, close_all, &c);
  assert_int_equal(c.app, 2);
  /* Its timer and wake-up, and two stream sockets. */
  if (c.internal < 4)
    fail_msg("%d of weft's handles recognised", c.internal);
  assert_false(weft_is_internal_handle((uv_handle_t *)&app_timer));
  assert_false(weft_is_internal_handle(NULL));
  /* The cancelled task closes its streams; weft's loop closes the rest. */
  assert_int_equal(weft_task_cancel(t), 0);
  weft_await(t, NULL);
  weft_task_release(t);
  assert_int_equal(weft_sleep(5), 0); /* the application's closes complete */
  return NULL;
}

static void embed_close_all_idiom(void **state) {
  assert_int_equal(weft_run(close_all_main, NULL, NULL), 0);
}

/* The same idiom on an adopted loop, after the application's uv_run: its
 * handles close, weft's stay for weft_loop_close. */
static void embed_close_all_adopted(void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  weft_loop_opts_t opts = {.uv = &uv};
  weft_loop_t *loop;
  assert_int_equal(weft_loop_new(&loop, &opts), 0);
  uv_timer_t app_timer;
  assert_int_equal(uv_timer_init(&uv, &app_timer), 0);
  census_t c = {0};
  uv_walk(&uv, close_all, &c);
  assert_int_equal(c.app, 1);
  assert_int_equal(c.internal, 5); /* timer, wake-up, prepare, check, idle */
  uv_run(&uv, UV_RUN_DEFAULT);
  assert_int_equal(weft_loop_close(loop), 0);
  assert_int_equal(uv_loop_close(&uv), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(embed_app_runs_uv_run),
    cmocka_unit_test(embed_close_all_idiom),
    cmocka_unit_test(embed_close_all_adopted),
};

WT_MAIN("embed", tests)
