/* Tests for task stacks: the switch method is named, a task may use a large
 * part of its stack, small stacks work, many tasks can be parked at once,
 * stacks are pooled, an overflow hits a guard page instead of corrupting
 * memory quietly, stacks on a kernel with lightweight guard regions cost no
 * mapping each (and the fallback, forced, does), and past the guard-page budget (vm.max_map_count) weft
 * keeps going on canary-checked stacks until a million tasks are alive at
 * once.
 *
 * The million-task case is registered only in builds without sanitizers and
 * prints how long it took and the peak resident memory, which the
 * benchmarks and the design (about 4-8 KiB per idle task) care about.
 */
#include "testutil.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

static void switch_method_named(void **state) {
  const char *m = weft_switch_method();
  assert_non_null(m);
  assert_true(strcmp(m, "asm-x86_64") == 0 || strcmp(m, "asm-aarch64") == 0 ||
              strcmp(m, "ucontext") == 0);
}

/* Fills and sums an array of n bytes on the task's stack, across a
 * suspension, so the whole array must survive a switch. */
static void *stack_user(void *arg) {
  size_t n = (size_t)(uintptr_t)arg;
  volatile unsigned char buf[100 * 1024];
  assert_true(n <= sizeof buf);
  for (size_t i = 0; i < n; i++)
    buf[i] = (unsigned char)(i * 7);
  assert_int_equal(weft_yield(), 0);
  uintptr_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += buf[i];
  return (void *)sum;
}

static uintptr_t expected_sum(size_t n) {
  uintptr_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += (unsigned char)(i * 7);
  return sum;
}

static void big_frame_default_stack(void **state) {
  void *r = NULL;
  size_t n = 100 * 1024;
  assert_int_equal(weft_run(stack_user, (void *)(uintptr_t)n, &r), 0);
  assert_int_equal((uintptr_t)r, expected_sum(n));
}

/* Runs fn(arg) to completion on a fresh loop with the given stack size. */
static int run_with_stack(size_t stack_size, weft_fn fn, void *arg, void **result) {
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL;
  weft_loop_opts_t opts;
  memset(&opts, 0, sizeof opts);
  opts.stack_size = stack_size;
  assert_int_equal(weft_loop_new(&loop, &opts), 0);
  assert_int_equal(weft_spawn(loop, fn, arg, &t), 0);
  int rc = weft_loop_run_until_complete(loop, t, result);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
  return rc;
}

static void *small_user(void *arg) {
  size_t n = (size_t)(uintptr_t)arg;
  volatile unsigned char buf[16 * 1024];
  for (size_t i = 0; i < n; i++)
    buf[i] = (unsigned char)(i * 7);
  assert_int_equal(weft_sleep(1), 0);
  uintptr_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += buf[i];
  return (void *)sum;
}

static void small_stacks(void **state) {
  void *r = NULL;
  /* 64 KiB holds a 16 KiB frame comfortably. */
  assert_int_equal(run_with_stack(64 * 1024, small_user, (void *)(uintptr_t)(16 * 1024), &r), 0);
  assert_int_equal((uintptr_t)r, expected_sum(16 * 1024));
  /* A size below the minimum is raised to it, and a small task runs. */
  assert_int_equal(run_with_stack(1, wt_echo_task, (void *)9, &r), 0);
  assert_ptr_equal(r, (void *)9);
  assert_int_equal(run_with_stack(WEFT_STACK_SIZE_MIN, wt_echo_task, (void *)10, &r), 0);
  assert_ptr_equal(r, (void *)10);
}

static void *pool_main(void *arg) {
  weft_stats_t st;
  for (int i = 0; i < 10; i++) {
    weft_task_t *t = NULL;
    assert_int_equal(weft_spawn(NULL, wt_echo_task, NULL, &t), 0);
    assert_int_equal(weft_await(t, NULL), 0);
    weft_task_release(t);
  }
  assert_int_equal(weft_loop_stats(weft_loop_current(), &st), 0);
  /* Ended tasks give their stacks back to the pool... */
  assert_true(st.stacks_pooled >= 1);
  /* ...and the pool serves the next ones: ten tasks one after the other
   * never needed ten stacks besides main's. */
  assert_true(st.stacks_guarded + st.stacks_canary < 10);
  return NULL;
}

static void stacks_are_pooled(void **state) {
  assert_int_equal(weft_run(pool_main, NULL, NULL), 0);
}

/* A burst's surplus stacks go back to the kernel once the loop has nothing
 * to run (stack.c: neither a spawn nor a task's end makes that call). 3000
 * tasks each touch 32 KiB of their stack and wait until all have started,
 * so that 3000 stacks are in use at once; once they end, the pool holds
 * them all warm, until the loop idles (here: main's sleep) and gives the
 * surplus back, whole chunks at a time, down to about warm_max (1024). */
#define BURST_TASKS 3000
#define BURST_TOUCH (32 * 1024)

typedef struct burst {
  weft_event_t *go;
  size_t started;
} burst_t;

static void *burst_toucher(void *arg) {
  burst_t *b = arg;
  volatile char buf[BURST_TOUCH];
  memset((char *)buf, 1, sizeof buf);
  b->started++;
  assert_int_equal(weft_event_wait(b->go), 0);
  return (void *)(uintptr_t)buf[BURST_TOUCH - 1];
}

/* The process's resident memory in KiB (/proc/self/statm), or -1. */
static long rss_kib(void) {
  long pages = -1, resident = -1;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f)
    return -1;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
    resident = -1;
  fclose(f);
  return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* arg: non-NULL to stay busy (yield, never idle) while waiting for the
 * trim: such a loop trims a few chunks at each of its polls instead. */
static void *trim_main(void *arg) {
  bool busy = arg != NULL;
  weft_loop_t *loop = weft_loop_current();
  weft_task_t **t = calloc(BURST_TASKS, sizeof *t);
  burst_t b = {0};
  weft_stats_t st;
  assert_non_null(t);
  assert_int_equal(weft_event_new(&b.go), 0);
  for (size_t i = 0; i < BURST_TASKS; i++)
    assert_int_equal(weft_spawn(NULL, burst_toucher, &b, &t[i]), 0);
  while (b.started < BURST_TASKS)
    assert_int_equal(weft_yield(), 0);
  long rss_busy = rss_kib();
  weft_event_set(b.go);
  assert_int_equal(weft_gather(t, BURST_TASKS, NULL, NULL), 0);
  for (size_t i = 0; i < BURST_TASKS; i++)
    weft_task_release(t[i]);
  free(t);
  weft_event_free(b.go);
  /* The stacks are warm (or, on the fallback, unmapped or cold past
   * warm_max at each end). Then the loop idles, or stays busy. */
  double give_up = wt_now_ms() + 20000;
  do {
    assert_int_equal(busy ? weft_yield() : weft_sleep(5), 0);
    assert_int_equal(weft_loop_stats(loop, &st), 0);
  } while (st.stacks_pooled > 1024 + 64 && wt_now_ms() < give_up);
  assert_true(st.stacks_pooled <= 1024 + 64);
#if !defined(__SANITIZE_ADDRESS__)
  /* And the memory went back: about (3000 - 1024) x 32 KiB, here at least
   * half of it. (ASan may put the touched array on a fake stack.) */
  long rss_idle = rss_kib();
  long freed = (long)(BURST_TASKS - 1024 - 64) * (BURST_TOUCH / 1024) / 2;
  if (!(rss_busy > 0 && rss_idle > 0 && rss_busy - rss_idle >= freed))
    fail_msg("RSS %ld KiB with the burst running, %ld KiB idle after it: "
             "less than %ld KiB given back", rss_busy, rss_idle, freed);
#else
  (void)rss_busy;
#endif
  return NULL;
}

static void burst_surplus_trimmed_when_idle(void **state) {
  (void)state;
  assert_int_equal(weft_run(trim_main, NULL, NULL), 0);
}

static void burst_surplus_trimmed_while_busy(void **state) {
  (void)state;
  assert_int_equal(weft_run(trim_main, (void *)1, NULL), 0);
}

/* lib/arch/guard_madvise.c's batch fault-in, which stack.c calls for the
 * top pages of a chunk's next stacks: where the kernel takes
 * MADV_POPULATE_WRITE through process_madvise (6.18 does), the pages it
 * names are resident afterwards and the pages between are not. */
void weft__pages_populate(void *base, size_t stride, size_t len, size_t n);

static void pages_populate_batch(void **state) {
  (void)state;
  size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = 8;
  char *m = mmap(NULL, 2 * n * pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  assert_true(m != MAP_FAILED);
  /* Whether this kernel can do it at all: one range, asked directly. */
  struct iovec probe = {.iov_base = m + (2 * n - 1) * pg, .iov_len = pg};
  if (syscall(SYS_process_madvise, -10000 /* PIDFD_SELF */, &probe, 1, 23 /* POPULATE_WRITE */,
              0u) < 0) {
    munmap(m, 2 * n * pg);
    print_message("no MADV_POPULATE_WRITE through process_madvise here: pages fault in as touched\n");
    skip();
  }
  weft__pages_populate(m, 2 * pg, pg, n);
  unsigned char in[16];
  assert_int_equal(mincore(m, 2 * n * pg, in), 0);
  for (size_t i = 0; i + 1 < 2 * n; i++) {
    if (i % 2 == 0 && !(in[i] & 1))
      fail_msg("page %zu was not faulted in", i);
    if (i % 2 == 1 && (in[i] & 1))
      fail_msg("page %zu, between the ranges, was faulted in", i);
  }
  munmap(m, 2 * n * pg);
}

/* Recurses with a 1 KiB frame until something stops it (the depth limit is
 * a gigabyte away, far past any task stack). */
static int overflow(int depth) {
  volatile char frame[1024];
  if (depth > (1 << 20))
    return 0;
  frame[0] = (char)depth;
  frame[sizeof frame - 1] = (char)depth;
  return overflow(depth + 1) + frame[0] + frame[sizeof frame - 1];
}

static void *overflow_task(void *arg) {
  return (void *)(intptr_t)overflow(0);
}

static void overflow_hits_guard(void **state) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* In the child: undo cmocka's handlers so the fault kills the process
     * as it would in a program, and say so if the overflow went unseen. */
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    weft_run(overflow_task, NULL, NULL);
    fprintf(stderr, "overflow went unnoticed\n");
    _exit(0);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  /* Killed by the fault (or, in a sanitizer build, reported and exited with
   * an error): anything but a clean exit. */
  assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ------------------------------------------------ mappings per stack */

static size_t maps_count(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  size_t n = 0;
  int c;
  if (!f)
    return 0;
  while ((c = fgetc(f)) != EOF)
    n += c == '\n';
  fclose(f);
  return n;
}

static size_t g_maps_parked;

static void *maps_sleeper(void *arg) {
  return (void *)(intptr_t)weft_sleep((uint64_t)(uintptr_t)arg);
}

static void *maps_main(void *arg) {
  size_t n = (size_t)(uintptr_t)arg;
  for (size_t i = 0; i < n; i++)
    assert_int_equal(weft_spawn(NULL, maps_sleeper, (void *)(uintptr_t)50, NULL), 0);
  assert_int_equal(weft_yield(), 0); /* every sleeper is parked on its stack */
  g_maps_parked = maps_count();
  return NULL;
}

/* New mappings while 1000 tasks are parked, on a fresh loop. */
static size_t maps_for_thousand(void) {
  size_t before = maps_count();
  assert_int_equal(weft_run(maps_main, (void *)(uintptr_t)1000, NULL), 0);
  return g_maps_parked > before ? g_maps_parked - before : 0;
}

/* Linux 6.13 and later: guard regions without a mapping each. */
static bool kernel_has_lite_guards(void) {
  struct utsname u;
  int major = 0, minor = 0;
  if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
    return false;
  return major > 6 || (major == 6 && minor >= 13);
}

static void guards_without_mappings(void **state) {
  /* The fallback, forced: a guard mapping and a stack mapping each. */
  setenv("WEFT_STACK_FALLBACK", "1", 1);
  size_t fallback = maps_for_thousand();
  unsetenv("WEFT_STACK_FALLBACK");
  size_t lite = maps_for_thousand();
  print_message("mappings for 1000 parked tasks: %zu (fallback), %zu (default)\n", fallback, lite);
  assert_true(fallback >= 1000);
  if (kernel_has_lite_guards())
    assert_true(lite <= 1000 / 64 /* stacks per chunk (stack.c) */ + 20);
}

/* --------------------------------------------------------- many at once */

static size_t g_started; /* tasks that began */
static size_t g_ended;   /* tasks that reached their end */
static size_t g_done;    /* tasks whose sleep returned 0 */

static void *parked_task(void *arg) {
  g_started++;
  if (weft_sleep((uint64_t)(uintptr_t)arg) == 0)
    g_done++;
  g_ended++;
  return NULL;
}

struct many {
  size_t n;
  uint64_t sleep_ms;
  double give_up_ms;         /* how long main waits for the tasks to end */
  weft_stats_t while_parked; /* stats when every task was parked */
  weft_stats_t at_end;
};

static void *many_main(void *arg) {
  struct many *m = arg;
  weft_loop_t *loop = weft_loop_current();
  for (size_t i = 0; i < m->n; i++)
    assert_int_equal(weft_spawn(NULL, parked_task, (void *)(uintptr_t)m->sleep_ms, NULL), 0);
  /* The children were queued before this yield, so when main runs again
   * every one of them has taken its first step and is parked in its sleep. */
  assert_int_equal(weft_yield(), 0);
  assert_int_equal(weft_loop_stats(loop, &m->while_parked), 0);
  /* Give up well before ctest's timeout so a stuck task shows as a failed
   * count rather than a hang. */
  double give_up = wt_now_ms() + m->give_up_ms;
  while (g_ended < m->n && wt_now_ms() < give_up)
    assert_int_equal(weft_sleep(10), 0);
  assert_int_equal(weft_loop_stats(loop, &m->at_end), 0);
  return NULL;
}

static double run_many(struct many *m, size_t stack_size) {
  weft_loop_t *loop = NULL;
  weft_task_t *t = NULL;
  weft_loop_opts_t opts;
  memset(&opts, 0, sizeof opts);
  opts.stack_size = stack_size;
  g_done = 0;
  g_started = 0;
  g_ended = 0;
  double t0 = wt_now_ms();
  assert_int_equal(weft_loop_new(&loop, &opts), 0);
  assert_int_equal(weft_spawn(loop, many_main, m, &t), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, t, NULL), 0);
  weft_task_release(t);
  assert_int_equal(weft_loop_close(loop), 0);
  return wt_now_ms() - t0;
}

static void twenty_thousand_tasks(void **state) {
  struct many m;
  memset(&m, 0, sizeof m);
  m.n = 20000;
  m.sleep_ms = 100;
  m.give_up_ms = 90000;
  run_many(&m, 0);
  assert_int_equal(g_started, m.n);
  assert_int_equal(g_ended, m.n);
  assert_int_equal(g_done, m.n);
  /* All of them alive at once, each on a stack of its own. */
  assert_int_equal(m.while_parked.live, m.n + 1);
  assert_int_equal(m.while_parked.waiting, m.n);
  assert_true(m.while_parked.stacks_guarded > 0);
  assert_true(m.while_parked.stacks_guarded + m.while_parked.stacks_canary >= m.n);
  assert_int_equal(m.at_end.finished, m.n);
  assert_int_equal(m.at_end.live, 1);
}

static void run_million(size_t stack_size, const char *label) {
  struct many m;
  struct rusage ru;
  memset(&m, 0, sizeof m);
  m.n = 1000000;
  m.sleep_ms = 100;
  m.give_up_ms = 240000;
  double ms = run_many(&m, stack_size);
  getrusage(RUSAGE_SELF, &ru);
  print_message("million tasks (%s): %.0f ms, peak RSS %.0f MiB (%.1f KiB per task), "
                "%zu guarded + %zu canary stacks\n",
                label, ms, (double)ru.ru_maxrss / 1024.0, (double)ru.ru_maxrss / (double)m.n,
                m.while_parked.stacks_guarded, m.while_parked.stacks_canary);
  assert_int_equal(g_started, m.n);
  assert_int_equal(g_ended, m.n);
  assert_int_equal(g_done, m.n);
  assert_int_equal(m.while_parked.live, m.n + 1);
  assert_int_equal(m.while_parked.waiting, m.n);
  /* With lightweight guards every stack is guarded; on the fallback the
   * guard-page budget cannot cover a million stacks on a default kernel,
   * so some had to be canary stacks. */
  assert_true(m.while_parked.stacks_canary > 0 || m.while_parked.stacks_guarded >= m.n);
  assert_true(m.while_parked.stacks_guarded + m.while_parked.stacks_canary >= m.n);
  assert_int_equal(m.at_end.finished, m.n);
}

static void million_tasks_small_stack(void **state) {
  run_million(WEFT_STACK_SIZE_MIN, "16 KiB stacks");
}

static void million_tasks_default_stack(void **state) {
  run_million(0, "default stacks");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(switch_method_named),
    cmocka_unit_test(big_frame_default_stack),
    cmocka_unit_test(small_stacks),
    cmocka_unit_test(stacks_are_pooled),
    cmocka_unit_test(burst_surplus_trimmed_when_idle),
    cmocka_unit_test(burst_surplus_trimmed_while_busy),
    cmocka_unit_test(pages_populate_batch),
    cmocka_unit_test(overflow_hits_guard),
    cmocka_unit_test(guards_without_mappings),
    cmocka_unit_test(twenty_thousand_tasks),
    cmocka_unit_test(million_tasks_small_stack),
    cmocka_unit_test(million_tasks_default_stack),
};

WT_MAIN("stack", tests)
