/* weft_dump's call stacks: a parked task's dump names the function that
 * called its await point, and the await function itself.
 *
 * The names come from dladdr, so this executable exports its symbols
 * (ENABLE_EXPORTS, i.e. -rdynamic, in tests/CMakeLists.txt) and the
 * functions looked for are non-static; it is also built with
 * -fno-omit-frame-pointer so that the walk goes on past them. The caller
 * of an await point would be found without that too: it is the return
 * address in the await function's own frame, and weft is always built
 * with frame pointers.
 */
#include "testutil.h"

#include <dlfcn.h>
#include <pthread.h>

/* Exported, never inlined nor cloned (a clone would be a local symbol,
 * which dladdr does not see), and not a tail call: the store after the
 * await keeps its frame on the stack while the task is parked. */
#if defined(__clang__)
#define BT_KEEP __attribute__((noinline, used))
#else
#define BT_KEEP __attribute__((noipa, used))
#endif

volatile int bt_sink;

BT_KEEP int bt_parked_here(atomic_int *parking);
BT_KEEP void *bt_sleeper_task(void *arg);
BT_KEEP int bt_recv_here(weft_chan_t *ch, atomic_int *parking);
BT_KEEP void *bt_receiver_task(void *arg);

/* Whether this build can name frames at all: dladdr must find an exported
 * function of this executable. Without -rdynamic it cannot, and the dump
 * prints addresses only. */
static bool names_available(void) {
  Dl_info info;
  if (dladdr((void *)(uintptr_t)bt_parked_here, &info) == 0 || !info.dli_sname)
    return false;
  return strcmp(info.dli_sname, "bt_parked_here") == 0;
}

BT_KEEP int bt_parked_here(atomic_int *parking) {
  atomic_store(parking, 1);
  int rc = weft_sleep(10000);
  bt_sink += rc;
  return rc;
}

BT_KEEP void *bt_sleeper_task(void *arg) {
  int rc = bt_parked_here(arg);
  bt_sink += rc;
  return NULL;
}

BT_KEEP int bt_recv_here(weft_chan_t *ch, atomic_int *parking) {
  void *m = NULL;
  atomic_store(parking, 1);
  int rc = weft_chan_recv(ch, &m);
  bt_sink += rc;
  return rc;
}

typedef struct recv_arg {
  weft_chan_t *ch;
  atomic_int parking;
} recv_arg_t;

BT_KEEP void *bt_receiver_task(void *arg) {
  recv_arg_t *r = arg;
  /* Named by itself: a task belongs to its loop's thread. */
  weft_task_set_name(weft_task_current(), "bt-receiver");
  int rc = bt_recv_here(r->ch, &r->parking);
  bt_sink += rc;
  return NULL;
}

/* The lines after the task's own line, up to the next task or loop line:
 * its frames. NULL-terminated copy, or NULL if the task is not there. */
static char *frames_of(const char *text, const char *task) {
  char key[64];
  snprintf(key, sizeof key, "  %s: ", task);
  const char *p = strstr(text, key);
  if (!p)
    return NULL;
  p = strchr(p, '\n');
  if (!p)
    return NULL;
  p++;
  const char *end = p;
  while (strncmp(end, "      #", 7) == 0) {
    const char *eol = strchr(end, '\n');
    end = eol ? eol + 1 : end + strlen(end);
  }
  size_t len = (size_t)(end - p);
  char *out = malloc(len + 1);
  assert_non_null(out);
  memcpy(out, p, len);
  out[len] = 0;
  return out;
}

/* The first frame shown is the await function, and the frame under it is
 * the function that called it. */
static void check_frames(const char *dump, const char *task, const char *await_fn,
                         const char *caller) {
  char *fr = frames_of(dump, task);
  if (!fr)
    fail_msg("no task %s in the dump:\n%s", task, dump);
  char want0[64], want1[64];
  snprintf(want0, sizeof want0, "      #0 %s+0x", await_fn);
  snprintf(want1, sizeof want1, "      #1 %s+0x", caller);
  if (!strstr(fr, want0) || !strstr(fr, want1))
    fail_msg("task %s: expected frames '#0 %s' and '#1 %s' in:\n%s", task, await_fn, caller,
             dump);
  /* weft's own frames above the await point are left out. */
  if (strstr(fr, "weft__"))
    fail_msg("task %s: internal frames shown:\n%s", task, dump);
  free(fr);
}

typedef struct main_fix {
  char *text;
  size_t len;
} main_fix_t;

static void *dump_main(void *arg) {
  main_fix_t *f = arg;
  atomic_int parking;
  atomic_init(&parking, 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(NULL, bt_sleeper_task, &parking, &t), 0);
  weft_task_set_name(t, "bt-sleeper");
  while (!atomic_load(&parking))
    weft_yield();
  weft_yield();  /* it parked in the step where it set the flag */
  FILE *mem = open_memstream(&f->text, &f->len);
  assert_non_null(mem);
  weft_dump(mem);
  fclose(mem);
  weft_task_cancel(t);
  weft_await(t, NULL);
  weft_task_release(t);
  return NULL;
}

/* A task parked in weft_sleep under bt_parked_here, dumped from the main
 * task of its own loop. */
static void parked_task_shows_caller(void **state) {
  if (!names_available()) {
    /* Documented, not silent: without -rdynamic dladdr names nothing of
     * the executable (tests/CMakeLists.txt sets ENABLE_EXPORTS). */
    print_message("backtrace: SKIPPED: this executable exports no symbols\n");
    skip();
  }
  main_fix_t f = {0};
  assert_int_equal(weft_run(dump_main, &f, NULL), 0);
  assert_non_null(f.text);
  if (getenv("BT_SHOW"))
    fputs(f.text, stderr);
  assert_non_null(strstr(f.text, "bt_parked_here"));
  assert_non_null(strstr(f.text, "weft_sleep"));
  check_frames(f.text, "bt-sleeper", "weft_sleep", "bt_parked_here");
  /* The walk goes on below the caller, to the task's body. */
  char *fr = frames_of(f.text, "bt-sleeper");
  assert_non_null(fr);
  if (!strstr(fr, "#2 bt_sleeper_task+0x"))
    fail_msg("no task body frame:\n%s", f.text);
  free(fr);
  /* The running task (the dumper) has no frames printed. */
  free(f.text);
}

/* A task parked in weft_chan_recv on a pool's loop, dumped from a plain
 * thread: the loop answers between two steps. */
static void pool_task_in_recv_from_plain_thread(void **state) {
  if (!names_available()) {
    print_message("backtrace: SKIPPED: this executable exports no symbols\n");
    skip();
  }
  weft_pool_t *pool = wt_pool_of(2);
  recv_arg_t r;
  atomic_init(&r.parking, 0);
  assert_int_equal(weft_chan_new(&r.ch, 4), 0);
  weft_task_t *t;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), bt_receiver_task, &r, &t), 0);
  /* The receiver has reached its recv; the dump, a message to its loop,
   * runs after that step, so it finds the receiver parked. */
  assert_true(wt_wait_ge(&r.parking, 1, 5000));
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  assert_non_null(mem);
  weft_dump(mem);
  fclose(mem);
  if (getenv("BT_SHOW"))
    fputs(text, stderr);
  assert_non_null(strstr(text, "bt-receiver: waiting on channel"));
  check_frames(text, "bt-receiver", "weft_chan_recv", "bt_recv_here");
  free(text);
  assert_int_equal(weft_chan_close(r.ch), 0);
  assert_int_equal(weft_await(t, NULL), 0);
  weft_task_release(t);
  weft_chan_release(r.ch);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A task that yielded is READY with a saved context: its frames show too;
 * a task not started yet has none. */
BT_KEEP void *bt_yielder_task(void *arg);
BT_KEEP int bt_yield_here(atomic_int *stop);

BT_KEEP int bt_yield_here(atomic_int *stop) {
  int rc = 0;
  while (!atomic_load(stop) && rc == 0)
    rc = weft_yield();
  bt_sink += rc;
  return rc;
}

BT_KEEP void *bt_yielder_task(void *arg) {
  int rc = bt_yield_here(arg);
  bt_sink += rc;
  return NULL;
}

static void *ready_main(void *arg) {
  main_fix_t *f = arg;
  atomic_int stop;
  atomic_init(&stop, 0);
  weft_task_t *y, *fresh;
  assert_int_equal(weft_spawn(NULL, bt_yielder_task, &stop, &y), 0);
  weft_task_set_name(y, "bt-yielder");
  weft_yield();
  weft_yield();
  assert_int_equal(weft_spawn(NULL, bt_yielder_task, &stop, &fresh), 0);
  weft_task_set_name(fresh, "bt-fresh");
  FILE *mem = open_memstream(&f->text, &f->len);
  assert_non_null(mem);
  weft_dump(mem);
  fclose(mem);
  atomic_store(&stop, 1);
  weft_await(y, NULL);
  weft_await(fresh, NULL);
  weft_task_release(y);
  weft_task_release(fresh);
  return NULL;
}

static void ready_task_shows_frames(void **state) {
  if (!names_available()) {
    print_message("backtrace: SKIPPED: this executable exports no symbols\n");
    skip();
  }
  main_fix_t f = {0};
  assert_int_equal(weft_run(ready_main, &f, NULL), 0);
  assert_non_null(f.text);
  if (getenv("BT_SHOW"))
    fputs(f.text, stderr);
  check_frames(f.text, "bt-yielder", "weft_yield", "bt_yield_here");
  char *fr = frames_of(f.text, "bt-fresh");
  assert_non_null(fr);
  if (fr[0])
    fail_msg("a task not started has frames:\n%s", f.text);
  free(fr);
  free(f.text);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(parked_task_shows_caller),
    cmocka_unit_test(pool_task_in_recv_from_plain_thread),
    cmocka_unit_test(ready_task_shows_frames),
};

WT_MAIN("backtrace", tests)
