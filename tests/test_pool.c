/* Tests for the pool of loops and the entry points that reach a loop from
 * another thread: weft_pool_* (sizes, round-robin, named threads, blocked
 * signals), weft_spawn, weft_task_cancel, weft_loop_call_soon and
 * weft_loop_stop from a thread that is not the loop's, weft_await and
 * weft_gather on a plain thread (main driving the pool), both shutdown modes,
 * spawns racing a shutdown, start/stop rounds that must leave no thread and
 * no file descriptor behind, and the inbox counters of weft_loop_stats.
 *
 * cmocka's assertions longjmp to the test's own frame, so they are only ever
 * called on the test's thread: tasks on the pool's threads and helper
 * threads record what they saw, and the test checks it once it has a
 * happens-before edge to those writes (an await, a gather, a shutdown, a
 * join, or an atomic it waited on). Everything written on one thread and
 * polled on another is atomic, so the TSan build reports only the library's
 * races, never the test's.
 */
#include "testutil.h"

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/syscall.h>

/* ----------------------------------------------------------------- helpers */

/* A probe for tasks that run on another thread than the test's: what is
 * polled while the task runs is atomic; the rest is read after an await. */
typedef struct xprobe {
  uint64_t sleep_ms;  /* input: how long to sleep, 0 = not at all */
  int fail;           /* input: weft_task_fail(fail) if nonzero */
  void *ret;          /* input: the result */
  atomic_int started;
  atomic_int ended;
  int sleep_rc;       /* what weft_sleep returned (1 until it returns) */
  pthread_t thread;   /* the thread the body ran on */
  weft_loop_t *loop;  /* weft_loop_current() in the body */
  double t_start;     /* wt_now_ms() when the body began */
  double t_end;       /* wt_now_ms() when the body ended */
} xprobe_t;

static void xprobe_init(xprobe_t *p, uint64_t sleep_ms, int fail, void *ret) {
  memset(p, 0, sizeof *p);
  p->sleep_ms = sleep_ms;
  p->fail = fail;
  p->ret = ret;
  atomic_init(&p->started, 0);
  atomic_init(&p->ended, 0);
  p->sleep_rc = 1;
}

static void *xprobe_task(void *arg) {
  xprobe_t *p = arg;
  p->thread = pthread_self();
  p->loop = weft_loop_current();
  p->t_start = wt_now_ms();
  atomic_store(&p->started, 1);
  if (p->sleep_ms > 0)
    p->sleep_rc = weft_sleep(p->sleep_ms);
  if (p->fail != 0)
    weft_task_fail(p->fail);
  p->t_end = wt_now_ms();
  atomic_store(&p->ended, 1);
  return p->ret;
}

/* Whether the probes overlapped: every one had started before the first
 * one ended. Read after the probes were awaited. */
static bool xprobes_overlap(const xprobe_t *p, size_t n) {
  double last_start = p[0].t_start, first_end = p[0].t_end;
  for (size_t i = 1; i < n; i++) {
    if (p[i].t_start > last_start)
      last_start = p[i].t_start;
    if (p[i].t_end < first_end)
      first_end = p[i].t_end;
  }
  return last_start < first_end;
}

/* What a worker thread is, learnt on that thread through call_soon. */
typedef struct whoami {
  pthread_t thread;
  pid_t tid;
  char name[16];
  weft_loop_t *current;
  atomic_int done;
} whoami_t;

static void whoami_cb(void *arg) {
  whoami_t *w = arg;
  w->thread = pthread_self();
  w->tid = (pid_t)syscall(SYS_gettid);
  if (pthread_getname_np(pthread_self(), w->name, sizeof w->name) != 0)
    w->name[0] = '\0';
  w->current = weft_loop_current();
  atomic_store(&w->done, 1);
}

/* Asks loop's thread who it is and waits for the answer. */
static void ask_whoami(weft_loop_t *loop, whoami_t *w) {
  memset(w, 0, sizeof *w);
  atomic_init(&w->done, 0);
  assert_int_equal(weft_loop_call_soon(loop, whoami_cb, w), 0);
  assert_true(wt_wait_ge(&w->done, 1, 5000));
}

/* Counts the entries of a /proc directory, less "." and "..". */
static int count_dir(const char *path) {
  DIR *d = opendir(path);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      n++;
  closedir(d);
  return n;
}

/* ------------------------------------------------------------ pool basics */

static void pool_new_and_loops(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  assert_int_equal(weft_pool_size(pool), 3);
  weft_loop_t *loops[3];
  for (unsigned i = 0; i < 3; i++) {
    loops[i] = weft_pool_loop(pool, i);
    assert_non_null(loops[i]);
    for (unsigned j = 0; j < i; j++)
      assert_ptr_not_equal(loops[i], loops[j]);
  }
  assert_null(weft_pool_loop(pool, 3));
  assert_null(weft_pool_loop(pool, UINT_MAX));

  /* Round-robin: every three calls name each loop once, in a fixed order. */
  weft_loop_t *seq[9];
  for (int i = 0; i < 9; i++)
    seq[i] = weft_pool_next(pool);
  for (int i = 0; i < 3; i++) {
    int seen = 0;
    for (int j = 0; j < 3; j++)
      seen += seq[j] == loops[i];
    assert_int_equal(seen, 1);
  }
  for (int i = 3; i < 9; i++)
    assert_ptr_equal(seq[i], seq[i - 3]);

  /* The pool's loops belong to its threads: the test's thread has none. */
  assert_null(weft_loop_current());
  for (unsigned i = 0; i < 3; i++) {
    whoami_t w;
    ask_whoami(loops[i], &w);
    assert_false(pthread_equal(w.thread, pthread_self()));
    assert_ptr_equal(w.current, loops[i]);
  }
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);

  /* workers = 0, or no options at all: one loop per CPU. */
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  assert_true(cpus > 0);
  pool = wt_pool_of(0);
  assert_int_equal(weft_pool_size(pool), (unsigned)cpus);
  for (unsigned i = 0; i < (unsigned)cpus; i++)
    assert_non_null(weft_pool_loop(pool, i));
  assert_null(weft_pool_loop(pool, (unsigned)cpus));
  assert_int_equal(weft_pool_shutdown(pool, WEFT_CANCEL), 0);
  pool = NULL;
  assert_int_equal(weft_pool_new(&pool, NULL), 0);
  assert_non_null(pool);
  assert_int_equal(weft_pool_size(pool), (unsigned)cpus);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);

  /* One worker is a pool too. */
  pool = wt_pool_of(1);
  assert_int_equal(weft_pool_size(pool), 1);
  assert_ptr_equal(weft_pool_next(pool), weft_pool_loop(pool, 0));
  assert_ptr_equal(weft_pool_next(pool), weft_pool_loop(pool, 0));
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

typedef struct shutdown_from_worker {
  weft_pool_t *pool;
  int rc;
  atomic_int done;
} shutdown_from_worker_t;

static void shutdown_from_worker_cb(void *arg) {
  shutdown_from_worker_t *s = arg;
  s->rc = weft_pool_shutdown(s->pool, WEFT_DRAIN);
  atomic_store(&s->done, 1);
}

static void *shutdown_from_task(void *arg) {
  weft_pool_t *pool = arg;
  return (void *)(intptr_t)weft_pool_shutdown(pool, WEFT_CANCEL);
}

static void pool_bad_arguments(void **state) {
  weft_pool_opts_t opts = {.workers = 2};
  assert_int_equal(weft_pool_new(NULL, &opts), WEFT_EINVAL);
  assert_int_equal(weft_pool_new(NULL, NULL), WEFT_EINVAL);

  /* Over the limit of 1024 workers: refused, and no thread was left behind. */
  int threads = count_dir("/proc/self/task");
  weft_pool_t *pool = NULL;
  opts.workers = 1025;
  assert_int_equal(weft_pool_new(&pool, &opts), WEFT_EINVAL);
  assert_null(pool);
  opts.workers = UINT_MAX;
  assert_int_equal(weft_pool_new(&pool, &opts), WEFT_EINVAL);
  assert_null(pool);
  assert_int_equal(count_dir("/proc/self/task"), threads);

  assert_int_equal(weft_pool_shutdown(NULL, WEFT_DRAIN), WEFT_EINVAL);
  assert_int_equal(weft_pool_size(NULL), 0);
  assert_null(weft_pool_loop(NULL, 0));
  assert_null(weft_pool_next(NULL));

  pool = wt_pool_of(2);
  /* A bad how is refused and leaves the pool running. */
  assert_int_equal(weft_pool_shutdown(pool, 2), WEFT_EINVAL);
  assert_int_equal(weft_pool_shutdown(pool, -1), WEFT_EINVAL);

  /* Shutdown from one of the pool's own threads is refused: from a libuv
   * callback (call_soon) and from a task. */
  shutdown_from_worker_t s = {.pool = pool, .rc = 1};
  atomic_init(&s.done, 0);
  assert_int_equal(weft_loop_call_soon(weft_pool_loop(pool, 1), shutdown_from_worker_cb, &s), 0);
  assert_true(wt_wait_ge(&s.done, 1, 5000));
  assert_int_equal(s.rc, WEFT_EINVAL);
  weft_task_t *t = NULL;
  void *r = NULL;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), shutdown_from_task, pool, &t), 0);
  assert_int_equal(weft_await(t, &r), 0);
  assert_int_equal((int)(intptr_t)r, WEFT_EINVAL);
  weft_task_release(t);

  /* Still a working pool. */
  xprobe_t p;
  xprobe_init(&p, 1, 0, &p);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xprobe_task, &p, &t), 0);
  assert_int_equal(weft_await(t, &r), 0);
  assert_ptr_equal(r, &p);
  weft_task_release(t);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void pool_threads_named(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  /* Each loop's thread is named after its index. */
  for (unsigned i = 0; i < 3; i++) {
    whoami_t w;
    char want[16];
    ask_whoami(weft_pool_loop(pool, i), &w);
    snprintf(want, sizeof want, "weft-%u", i);
    assert_string_equal(w.name, want);
  }
  /* And the kernel sees exactly one thread of each name. */
  int seen[3] = {0, 0, 0};
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], comm[32] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue; /* a thread that just ended */
    if (fgets(comm, sizeof comm, f))
      comm[strcspn(comm, "\n")] = '\0';
    fclose(f);
    unsigned i;
    char extra;
    if (sscanf(comm, "weft-%u%c", &i, &extra) == 1 && i < 3)
      seen[i]++;
  }
  closedir(d);
  for (int i = 0; i < 3; i++)
    assert_int_equal(seen[i], 1);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* The blocked-signal mask of a thread, from /proc (SigBlk, in hex). */
static uint64_t sigblk_of(pid_t tid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  uint64_t mask = 0;
  int found = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "SigBlk: %" SCNx64, &mask) == 1) {
      found = 1;
      break;
    }
  fclose(f);
  assert_true(found);
  return mask;
}

static uint64_t sigbit(int sig) {
  return (uint64_t)1 << (sig - 1);
}

static void workers_block_signals(void **state) {
  sigset_t before, after;
  assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &before), 0);
  weft_pool_t *pool = wt_pool_of(4);
  uint64_t want = sigbit(SIGINT) | sigbit(SIGTERM) | sigbit(SIGCHLD) | sigbit(SIGPIPE);
  for (unsigned i = 0; i < 4; i++) {
    whoami_t w;
    ask_whoami(weft_pool_loop(pool, i), &w);
    uint64_t mask = sigblk_of(w.tid);
    if ((mask & want) != want)
      fail_msg("worker weft-%u (tid %d) blocks %#" PRIx64 ", missing %#" PRIx64, i,
               (int)w.tid, mask, want & ~mask);
  }
  /* The thread that made the pool keeps the mask it had. */
  assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &after), 0);
  int sigs[] = {SIGINT, SIGTERM, SIGCHLD, SIGPIPE, SIGUSR1};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    assert_int_equal(sigismember(&after, sigs[i]), sigismember(&before, sigs[i]));
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* --------------------------------------------- spawn, await, gather from main */

static void spawn_await_from_main(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  whoami_t who[3];
  xprobe_t p[3];
  weft_task_t *t[3];
  for (unsigned i = 0; i < 3; i++) {
    ask_whoami(weft_pool_loop(pool, i), &who[i]);
    xprobe_init(&p[i], 20, 0, (void *)(uintptr_t)(100 + i));
    t[i] = NULL;
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), xprobe_task, &p[i], &t[i]), 0);
    /* The handle is valid at once. */
    assert_non_null(t[i]);
  }
  for (unsigned i = 0; i < 3; i++) {
    void *r = NULL;
    assert_int_equal(weft_await(t[i], &r), 0);
    assert_ptr_equal(r, (void *)(uintptr_t)(100 + i));
    assert_int_equal(weft_task_status(t[i]), 0);
    assert_int_equal(atomic_load(&p[i].ended), 1);
    assert_int_equal(p[i].sleep_rc, 0);
    /* It ran on its loop's thread, not on the test's. */
    assert_false(pthread_equal(p[i].thread, pthread_self()));
    assert_true(pthread_equal(p[i].thread, who[i].thread));
    assert_ptr_equal(p[i].loop, weft_pool_loop(pool, i));
    /* An ended task can be awaited again, and result may be NULL. */
    r = NULL;
    assert_int_equal(weft_await(t[i], &r), 0);
    assert_ptr_equal(r, (void *)(uintptr_t)(100 + i));
    assert_int_equal(weft_await(t[i], NULL), 0);
  }
  for (unsigned i = 0; i < 3; i++)
    weft_task_release(t[i]);

  /* A failing task: its code is the await's answer, its result still comes. */
  xprobe_t f;
  weft_task_t *ft = NULL;
  void *r = NULL;
  xprobe_init(&f, 5, -7, &f);
  assert_int_equal(weft_spawn(weft_pool_next(pool), xprobe_task, &f, &ft), 0);
  assert_int_equal(weft_await(ft, &r), -7);
  assert_ptr_equal(r, &f);
  assert_int_equal(weft_task_status(ft), -7);
  weft_task_release(ft);

  /* Detached spawns (no handle) from main run too. */
  xprobe_t d;
  xprobe_init(&d, 0, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xprobe_task, &d, NULL), 0);
  assert_true(wt_wait_ge(&d.ended, 1, 5000));

  /* A NULL fn is refused, and so is a NULL loop on a thread with none. */
  weft_task_t *none = (weft_task_t *)&none;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), NULL, NULL, &none), WEFT_EINVAL);
  assert_null(none);
  none = (weft_task_t *)&none;
  assert_int_equal(weft_spawn(NULL, xprobe_task, &d, &none), WEFT_EINVAL);
  assert_null(none);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void gather_from_main(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  xprobe_t p[3];
  weft_task_t *t[3];
  void *res[3];
  int st[3];
  /* Different loops, the longest first so that an answer in the order of
   * completion would be caught. */
  for (unsigned i = 0; i < 3; i++) {
    xprobe_init(&p[i], 300 - 100 * i, 0, (void *)(uintptr_t)(200 + i));
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), xprobe_task, &p[i], &t[i]), 0);
  }
  double t0 = wt_now_ms();
  assert_int_equal(weft_gather(t, 3, res, st), 0);
  double elapsed = wt_now_ms() - t0;
  /* They ran at the same time: each had started before the first ended. */
  assert_true(xprobes_overlap(p, 3));
  /* About the longest (300 ms), not the sum (600 ms). */
  assert_true(elapsed >= 290);
  assert_true(elapsed < 600);
  for (unsigned i = 0; i < 3; i++) {
    assert_ptr_equal(res[i], (void *)(uintptr_t)(200 + i));
    assert_int_equal(st[i], 0);
    assert_int_equal(p[i].sleep_rc, 0);
    assert_false(pthread_equal(p[i].thread, pthread_self()));
    weft_task_release(t[i]);
  }

  /* Failures: the first to happen in time wins (-7 at 50 ms, before -9 at
   * 250 ms), every status and result still comes back. */
  xprobe_init(&p[0], 250, -9, (void *)1);
  xprobe_init(&p[1], 50, -7, (void *)2);
  xprobe_init(&p[2], 100, 0, (void *)3);
  for (unsigned i = 0; i < 3; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), xprobe_task, &p[i], &t[i]), 0);
  memset(res, 0, sizeof res);
  assert_int_equal(weft_gather(t, 3, res, st), -7);
  assert_int_equal(st[0], -9);
  assert_int_equal(st[1], -7);
  assert_int_equal(st[2], 0);
  for (unsigned i = 0; i < 3; i++) {
    assert_ptr_equal(res[i], (void *)(uintptr_t)(i + 1));
    assert_int_equal(atomic_load(&p[i].ended), 1);
  }
  /* Ended tasks gather again (the order among failures of ended tasks has
   * its own case below); either array may be NULL. */
  assert_int_equal(weft_gather(t + 1, 2, res, NULL), -7);
  assert_int_equal(weft_gather(t + 1, 2, NULL, NULL), -7);
  assert_int_equal(weft_gather(t + 2, 1, NULL, NULL), 0);
  for (unsigned i = 0; i < 3; i++)
    weft_task_release(t[i]);

  /* Two tasks on one loop and one on another, all in one gather. */
  weft_task_t *u[3];
  xprobe_t q[3];
  for (unsigned i = 0; i < 3; i++) {
    xprobe_init(&q[i], 30, 0, NULL);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i == 2), xprobe_task, &q[i], &u[i]), 0);
  }
  assert_int_equal(weft_gather(u, 3, NULL, st), 0);
  for (unsigned i = 0; i < 3; i++) {
    assert_int_equal(st[i], 0);
    weft_task_release(u[i]);
  }

  /* Nothing to gather; bad arguments. */
  assert_int_equal(weft_gather(NULL, 0, NULL, NULL), 0);
  assert_int_equal(weft_gather(NULL, 2, NULL, NULL), WEFT_EINVAL);
  weft_task_t *alive = NULL;
  xprobe_init(&q[0], 0, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xprobe_task, &q[0], &alive), 0);
  assert_int_equal(weft_await(alive, NULL), 0);
  weft_task_t *with_null[2] = {alive, NULL};
  assert_int_equal(weft_gather(with_null, 2, NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_await(NULL, NULL), WEFT_EINVAL);
  weft_task_release(alive);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* A plain thread awaits tasks of a loop the test's thread owns (not a pool's):
 * that loop's owner runs it while the other thread blocks. */
typedef struct plain_waiter {
  weft_task_t *task;
  int await_rc;
  void *result;
  int gather_rc;
  atomic_int done;
} plain_waiter_t;

static void *plain_waiter_thread(void *arg) {
  plain_waiter_t *w = arg;
  w->await_rc = weft_await(w->task, &w->result);
  w->gather_rc = weft_gather(&w->task, 1, NULL, NULL);
  atomic_store(&w->done, 1);
  return NULL;
}

/* Keeps the loop running until the waiter thread is done. */
static void *until_waiter_done(void *arg) {
  plain_waiter_t *w = arg;
  while (atomic_load(&w->done) == 0)
    if (weft_sleep(1) != 0)
      return NULL;
  return NULL;
}

static void await_user_loop_from_plain_thread(void **state) {
  weft_loop_t *loop = NULL;
  assert_int_equal(weft_loop_new(&loop, NULL), 0);
  xprobe_t p;
  xprobe_init(&p, 100, -5, &p);
  plain_waiter_t w = {.await_rc = 1, .gather_rc = 1};
  atomic_init(&w.done, 0);
  assert_int_equal(weft_spawn(loop, xprobe_task, &p, &w.task), 0);

  /* On the loop's own thread, outside a task, awaiting could never end. */
  assert_int_equal(weft_await(w.task, NULL), WEFT_ENOTASK);
  assert_int_equal(weft_gather(&w.task, 1, NULL, NULL), WEFT_ENOTASK);

  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, plain_waiter_thread, &w), 0);
  weft_task_t *keeper = NULL;
  assert_int_equal(weft_spawn(loop, until_waiter_done, &w, &keeper), 0);
  assert_int_equal(weft_loop_run_until_complete(loop, keeper, NULL), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(w.await_rc, -5);
  assert_ptr_equal(w.result, &p);
  assert_int_equal(w.gather_rc, -5);
  assert_true(pthread_equal(p.thread, pthread_self()));
  weft_task_release(keeper);
  weft_task_release(w.task);
  assert_int_equal(weft_loop_close(loop), 0);
}

/* ------------------------------------------- tasks awaiting across loops */

/* A task that awaits (or shields, or wait_for, or gathers) tasks of other
 * loops and records what it got. */
typedef struct xawait {
  weft_task_t **targets;  /* input: what to await */
  size_t n;               /* 1: await; more: gather */
  bool shielded;          /* weft_await_shielded */
  uint64_t wait_for_ms;   /* weft_wait_for with this timeout, if nonzero */
  uint64_t deadline_ms;   /* weft_deadline_set first, if nonzero */
  atomic_int parked;      /* about to await */
  int rc;                 /* what the await returned (1 until then) */
  void *result;
  void *results[4];
  int statuses[4];
  int status_after[4];    /* the targets' statuses when the await returned */
  double t_returned;
  pthread_t thread;
} xawait_t;

static void xawait_init(xawait_t *a, weft_task_t **targets, size_t n) {
  memset(a, 0, sizeof *a);
  a->targets = targets;
  a->n = n;
  a->rc = 1;
  atomic_init(&a->parked, 0);
}

static void *xawait_task(void *arg) {
  xawait_t *a = arg;
  a->thread = pthread_self();
  if (a->deadline_ms)
    weft_deadline_set(a->deadline_ms);
  atomic_store(&a->parked, 1);
  if (a->n > 1)
    a->rc = weft_gather(a->targets, a->n, a->results, a->statuses);
  else if (a->wait_for_ms)
    a->rc = weft_wait_for(a->targets[0], a->wait_for_ms, &a->result);
  else if (a->shielded)
    a->rc = weft_await_shielded(a->targets[0], &a->result);
  else
    a->rc = weft_await(a->targets[0], &a->result);
  a->t_returned = wt_now_ms();
  for (size_t i = 0; i < a->n && i < 4; i++)
    a->status_after[i] = weft_task_status(a->targets[i]);
  return NULL;
}

static void xloop_await_result(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  xprobe_t p;
  weft_task_t *b = NULL, *a = NULL;
  xawait_t xa;
  void *r = NULL;

  /* A task on loop 0 awaits one on loop 1. */
  xprobe_init(&p, 50, 0, &p);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xprobe_task, &p, &b), 0);
  xawait_init(&xa, &b, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &a), 0);
  assert_int_equal(weft_await(a, NULL), 0);
  assert_int_equal(xa.rc, 0);
  assert_ptr_equal(xa.result, &p);
  assert_int_equal(p.sleep_rc, 0);
  assert_false(pthread_equal(xa.thread, p.thread));
  weft_task_release(a);

  /* The same task, ended now, awaited again from another loop. */
  xawait_init(&xa, &b, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xawait_task, &xa, &a), 0);
  assert_int_equal(weft_await(a, NULL), 0);
  assert_int_equal(xa.rc, 0);
  assert_ptr_equal(xa.result, &p);
  weft_task_release(a);
  weft_task_release(b);

  /* A failure code and the result both cross; several waiters on three
   * threads (two loops and this one) await the same task. */
  xprobe_init(&p, 100, -7, (void *)(uintptr_t)77);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xprobe_task, &p, &b), 0);
  xawait_t w[2];
  weft_task_t *wt[2];
  for (unsigned i = 0; i < 2; i++) {
    xawait_init(&w[i], &b, 1);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i * 2), xawait_task, &w[i], &wt[i]), 0);
  }
  assert_int_equal(weft_await(b, &r), -7);
  assert_ptr_equal(r, (void *)(uintptr_t)77);
  assert_int_equal(weft_gather(wt, 2, NULL, NULL), 0);
  for (unsigned i = 0; i < 2; i++) {
    assert_int_equal(w[i].rc, -7);
    assert_ptr_equal(w[i].result, (void *)(uintptr_t)77);
    weft_task_release(wt[i]);
  }
  weft_task_release(b);

  /* A chain across the three loops: 0 awaits 1, which awaits 2. */
  xprobe_init(&p, 30, 0, (void *)(uintptr_t)5);
  weft_task_t *c = NULL;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xprobe_task, &p, &c), 0);
  xawait_t mid, top;
  xawait_init(&mid, &c, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xawait_task, &mid, &b), 0);
  xawait_init(&top, &b, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &top, &a), 0);
  assert_int_equal(weft_await(a, NULL), 0);
  assert_int_equal(top.rc, 0);
  assert_int_equal(mid.rc, 0);
  assert_ptr_equal(mid.result, (void *)(uintptr_t)5);
  weft_task_release(a);
  weft_task_release(b);
  weft_task_release(c);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

static void xloop_gather(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  xprobe_t p[3];
  weft_task_t *t[3], *g = NULL;
  xawait_t xa;
  /* A task on loop 0 gathers tasks of all three loops, the longest first. */
  for (unsigned i = 0; i < 3; i++) {
    xprobe_init(&p[i], 300 - 100 * i, 0, (void *)(uintptr_t)(10 + i));
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), xprobe_task, &p[i], &t[i]), 0);
  }
  xawait_init(&xa, t, 3);
  double t0 = wt_now_ms();
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &g), 0);
  assert_int_equal(weft_await(g, NULL), 0);
  double elapsed = xa.t_returned - t0;
  assert_int_equal(xa.rc, 0);
  /* They ran at the same time: each had started before the first ended. */
  assert_true(xprobes_overlap(p, 3));
  /* About the longest (300 ms), not the sum (600 ms). */
  assert_true(elapsed >= 290);
  assert_true(elapsed < 600);
  for (unsigned i = 0; i < 3; i++) {
    assert_ptr_equal(xa.results[i], (void *)(uintptr_t)(10 + i));
    assert_int_equal(xa.statuses[i], 0);
    weft_task_release(t[i]);
  }
  weft_task_release(g);

  /* The first failure in time: -7 on loop 2 at 50 ms, before -9 on loop 1
   * at 250 ms and the local -3 at 400 ms. */
  xprobe_init(&p[0], 400, -3, NULL);
  xprobe_init(&p[1], 250, -9, NULL);
  xprobe_init(&p[2], 50, -7, NULL);
  for (unsigned i = 0; i < 3; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), xprobe_task, &p[i], &t[i]), 0);
  xawait_init(&xa, t, 3);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &g), 0);
  assert_int_equal(weft_await(g, NULL), 0);
  assert_int_equal(xa.rc, -7);
  assert_int_equal(xa.statuses[0], -3);
  assert_int_equal(xa.statuses[1], -9);
  assert_int_equal(xa.statuses[2], -7);
  for (unsigned i = 0; i < 3; i++)
    weft_task_release(t[i]);
  weft_task_release(g);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* Cancelling a task that awaits tasks of other loops cancels them too (and
 * waits for them to unwind), unless shielded; wait_for and deadlines do the
 * same across loops. */
static void xloop_cancel_propagates(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  xprobe_t p[2];
  weft_task_t *t[2], *a = NULL;
  xawait_t xa;
  double t0;

  /* await */
  xprobe_init(&p[0], 10000, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xprobe_task, &p[0], &t[0]), 0);
  xawait_init(&xa, t, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &a), 0);
  assert_true(wt_wait_ge(&xa.parked, 1, 5000));
  assert_true(wt_wait_ge(&p[0].started, 1, 5000));
  uv_sleep(20);
  t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(a), 0);
  assert_int_equal(weft_await(a, NULL), WEFT_ECANCELED);
  assert_true(xa.t_returned - t0 < 1000);
  assert_int_equal(xa.rc, WEFT_ECANCELED);
  assert_int_equal(xa.status_after[0], WEFT_ECANCELED); /* unwound first */
  assert_int_equal(p[0].sleep_rc, WEFT_ECANCELED);
  weft_task_release(a);
  weft_task_release(t[0]);

  /* gather, over two other loops */
  for (unsigned i = 0; i < 2; i++) {
    xprobe_init(&p[i], 10000, 0, NULL);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, 1 + i), xprobe_task, &p[i], &t[i]), 0);
  }
  xawait_init(&xa, t, 2);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &a), 0);
  assert_true(wt_wait_ge(&xa.parked, 1, 5000));
  assert_true(wt_wait_ge(&p[0].started, 1, 5000));
  assert_true(wt_wait_ge(&p[1].started, 1, 5000));
  uv_sleep(20);
  t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(a), 0);
  assert_int_equal(weft_await(a, NULL), WEFT_ECANCELED);
  assert_true(xa.t_returned - t0 < 1000);
  assert_int_equal(xa.rc, WEFT_ECANCELED);
  for (unsigned i = 0; i < 2; i++) {
    assert_int_equal(xa.status_after[i], WEFT_ECANCELED);
    assert_int_equal(p[i].sleep_rc, WEFT_ECANCELED);
    weft_task_release(t[i]);
  }
  weft_task_release(a);

  /* shielded: the caller leaves at once, the awaited task runs on */
  xprobe_init(&p[0], 1000, 0, &p[0]);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xprobe_task, &p[0], &t[0]), 0);
  xawait_init(&xa, t, 1);
  xa.shielded = true;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &a), 0);
  assert_true(wt_wait_ge(&xa.parked, 1, 5000));
  uv_sleep(20);
  t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(a), 0);
  assert_int_equal(weft_await(a, NULL), WEFT_ECANCELED);
  assert_int_equal(xa.rc, WEFT_ECANCELED);
  assert_true(xa.t_returned - t0 < 200);
  assert_int_equal(xa.status_after[0], WEFT_EPENDING);
  void *r = NULL;
  assert_int_equal(weft_await(t[0], &r), 0);
  assert_ptr_equal(r, &p[0]);
  assert_int_equal(p[0].sleep_rc, 0);
  weft_task_release(a);
  weft_task_release(t[0]);

  /* wait_for: the timeout cancels the task of the other loop */
  xprobe_init(&p[0], 10000, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xprobe_task, &p[0], &t[0]), 0);
  xawait_init(&xa, t, 1);
  xa.wait_for_ms = 50;
  t0 = wt_now_ms();
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &a), 0);
  assert_int_equal(weft_await(a, NULL), 0);
  assert_int_equal(xa.rc, WEFT_ETIMEDOUT);
  assert_true(xa.t_returned - t0 >= 45);
  assert_true(xa.t_returned - t0 < 1000);
  assert_int_equal(xa.status_after[0], WEFT_ECANCELED);
  assert_int_equal(p[0].sleep_rc, WEFT_ECANCELED);
  weft_task_release(a);
  weft_task_release(t[0]);

  /* deadline: the same */
  xprobe_init(&p[0], 10000, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xprobe_task, &p[0], &t[0]), 0);
  xawait_init(&xa, t, 1);
  xa.deadline_ms = 50;
  t0 = wt_now_ms();
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xawait_task, &xa, &a), 0);
  assert_int_equal(weft_await(a, NULL), 0);
  assert_int_equal(xa.rc, WEFT_ETIMEDOUT);
  assert_true(xa.t_returned - t0 >= 45);
  assert_true(xa.t_returned - t0 < 1000);
  assert_int_equal(xa.status_after[0], WEFT_ECANCELED);
  assert_int_equal(p[0].sleep_rc, WEFT_ECANCELED);
  weft_task_release(a);
  weft_task_release(t[0]);

  /* A chain 0 -> 1 -> 2: cancelling the top reaches the bottom. */
  weft_task_t *b = NULL, *c = NULL;
  xawait_t mid;
  xprobe_init(&p[0], 10000, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xprobe_task, &p[0], &c), 0);
  xawait_init(&mid, &c, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), xawait_task, &mid, &b), 0);
  xawait_init(&xa, &b, 1);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xawait_task, &xa, &a), 0);
  assert_true(wt_wait_ge(&xa.parked, 1, 5000));
  assert_true(wt_wait_ge(&mid.parked, 1, 5000));
  assert_true(wt_wait_ge(&p[0].started, 1, 5000));
  uv_sleep(20);
  assert_int_equal(weft_task_cancel(a), 0);
  assert_int_equal(weft_await(a, NULL), WEFT_ECANCELED);
  assert_int_equal(xa.rc, WEFT_ECANCELED);
  assert_int_equal(mid.rc, WEFT_ECANCELED);
  assert_int_equal(p[0].sleep_rc, WEFT_ECANCELED);
  assert_int_equal(weft_task_status(c), WEFT_ECANCELED);
  weft_task_release(a);
  weft_task_release(b);
  weft_task_release(c);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* Many cross-loop awaits at once, both ways between two loops, racing the
 * targets' ends (some end at once, some after a few rounds) and cancels from
 * this thread: every waiter gets exactly its target's outcome. */
#define NSTORM 400

typedef struct storm_target {
  int yields;
  uintptr_t id;
} storm_target_t;

static void *storm_target_task(void *arg) {
  storm_target_t *s = arg;
  for (int i = 0; i < s->yields; i++)
    if (weft_yield() != 0)
      break;
  return (void *)s->id;
}

static void xloop_await_storm(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  static storm_target_t st[NSTORM];
  static xawait_t xa[NSTORM];
  static weft_task_t *targets[NSTORM], *waiters[NSTORM];
  for (unsigned i = 0; i < NSTORM; i++) {
    st[i].yields = (int)(i % 5);
    st[i].id = 1000 + i;
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i % 2), storm_target_task, &st[i], &targets[i]),
                     0);
    xawait_init(&xa[i], &targets[i], 1);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, 1 - i % 2), xawait_task, &xa[i], &waiters[i]),
                     0);
    if (i % 7 == 3)
      weft_task_cancel(targets[i]);
    if (i % 11 == 5)
      weft_task_cancel(waiters[i]);
  }
  int grc = weft_gather(waiters, NSTORM, NULL, NULL);
  assert_true(grc == 0 || grc == WEFT_ECANCELED); /* some waiters were cancelled */
  int ok = 0, cancelled = 0;
  for (unsigned i = 0; i < NSTORM; i++) {
    int tst = weft_task_status(targets[i]);
    if (i % 11 == 5 && xa[i].rc == WEFT_ECANCELED) {
      /* The waiter was cancelled while it waited: it cancelled the target,
       * which then ended (either way) before the waiter returned. */
      assert_true(tst == 0 || tst == WEFT_ECANCELED);
      cancelled++;
    } else if (xa[i].rc == 1) {
      /* The waiter was cancelled before it started: it never awaited. */
      assert_true(i % 11 == 5);
      assert_int_equal(weft_task_status(waiters[i]), WEFT_ECANCELED);
    } else {
      if (xa[i].rc != tst)
        fail_msg("waiter %u got %d, its target ended %d", i, xa[i].rc, tst);
      if (tst == 0)
        assert_ptr_equal(xa[i].result, (void *)st[i].id);
      else
        assert_true(i % 7 == 3 && tst == WEFT_ECANCELED);
      ok += tst == 0;
    }
    assert_true(xa[i].status_after[0] != WEFT_EPENDING || xa[i].rc == 1);
    weft_task_release(targets[i]);
    weft_task_release(waiters[i]);
  }
  assert_true(ok > NSTORM / 2);
  printf("%d awaits got their target's result, %d waiters were cancelled while waiting\n", ok,
         cancelled);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* Gathering tasks of different loops that have all ended: the answer is
 * still the first failure in the order they ended (-7, 200 ms before -9),
 * whatever their order in the array, from a plain thread and from a task
 * of a third loop. */
static void gather_ended_order_from_main(void **state) {
  weft_pool_t *pool = wt_pool_of(3);
  xprobe_t p[2];
  weft_task_t *t[2];
  int st[2];
  xprobe_init(&p[0], 250, -9, NULL);
  xprobe_init(&p[1], 50, -7, NULL);
  for (unsigned i = 0; i < 2; i++)
    assert_int_equal(weft_spawn(weft_pool_loop(pool, i), xprobe_task, &p[i], &t[i]), 0);
  for (unsigned i = 0; i < 2; i++)
    while (weft_task_status(t[i]) == WEFT_EPENDING)
      uv_sleep(1);
  int plain_rc[3];
  for (int round = 0; round < 3; round++) {
    st[0] = st[1] = 1;
    plain_rc[round] = weft_gather(t, 2, NULL, st);
    assert_int_equal(st[0], -9);
    assert_int_equal(st[1], -7);
  }
  xawait_t xa;
  weft_task_t *g = NULL;
  xawait_init(&xa, t, 2);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 2), xawait_task, &xa, &g), 0);
  assert_int_equal(weft_await(g, NULL), 0);
  weft_task_release(g);
  if (plain_rc[0] != -7 || plain_rc[1] != -7 || plain_rc[2] != -7 || xa.rc != -7)
    fail_msg("gather of [-9 (ended at 250 ms, loop 0), -7 (ended at 50 ms, loop 1)] after both "
             "ended: plain thread gave %d, %d, %d; a task of loop 2 gave %d; want -7",
             plain_rc[0], plain_rc[1], plain_rc[2], xa.rc);
  for (unsigned i = 0; i < 2; i++)
    weft_task_release(t[i]);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------------- cancel from main */

/* A task that spins without awaiting until released: while it runs, its
 * loop's thread is stuck in its step, so whatever reaches the loop's inbox
 * meanwhile stays queued. */
typedef struct spin {
  atomic_int started;
  atomic_int release;
} spin_t;

static void *spinner_task(void *arg) {
  spin_t *s = arg;
  atomic_store(&s->started, 1);
  while (atomic_load(&s->release) == 0)
    sched_yield();
  return NULL;
}

/* Starts a spinner on loop and waits until it runs. */
static void spin_start(weft_loop_t *loop, spin_t *s, weft_task_t **task) {
  atomic_init(&s->started, 0);
  atomic_init(&s->release, 0);
  assert_int_equal(weft_spawn(loop, spinner_task, s, task), 0);
  assert_true(wt_wait_ge(&s->started, 1, 5000));
}

typedef struct parent {
  xprobe_t child;
  weft_task_t *child_task;
  atomic_int awaiting;
  int await_rc;
} parent_t;

static void *parent_task(void *arg) {
  parent_t *pa = arg;
  if (weft_spawn(NULL, xprobe_task, &pa->child, &pa->child_task) != 0)
    return NULL;
  atomic_store(&pa->awaiting, 1);
  pa->await_rc = weft_await(pa->child_task, NULL);
  return NULL;
}

static void cancel_from_main(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  xprobe_t p;
  weft_task_t *t = NULL;
  xprobe_init(&p, 10000, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xprobe_task, &p, &t), 0);
  assert_true(wt_wait_ge(&p.started, 1, 5000));
  uv_sleep(20); /* let it park in its sleep */
  double t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  double elapsed = wt_now_ms() - t0;
  assert_true(elapsed < 1000);
  /* The sleeper saw the cancellation and unwound to its end. */
  assert_int_equal(p.sleep_rc, WEFT_ECANCELED);
  assert_int_equal(atomic_load(&p.ended), 1);
  assert_int_equal(weft_task_status(t), WEFT_ECANCELED);
  assert_int_equal(weft_task_cancel(t), WEFT_EALREADY);
  weft_task_release(t);
  assert_int_equal(weft_task_cancel(NULL), WEFT_EINVAL);

  /* Cancelling a task that awaits another task of its loop cancels that one
   * too, when the request comes from another thread. */
  parent_t pa;
  memset(&pa, 0, sizeof pa);
  atomic_init(&pa.awaiting, 0);
  pa.await_rc = 1;
  xprobe_init(&pa.child, 10000, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 1), parent_task, &pa, &t), 0);
  assert_true(wt_wait_ge(&pa.awaiting, 1, 5000));
  assert_true(wt_wait_ge(&pa.child.started, 1, 5000));
  uv_sleep(20);
  t0 = wt_now_ms();
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_true(wt_now_ms() - t0 < 1000);
  assert_int_equal(pa.await_rc, WEFT_ECANCELED);
  assert_int_equal(pa.child.sleep_rc, WEFT_ECANCELED);
  assert_int_equal(weft_await(pa.child_task, NULL), WEFT_ECANCELED);
  weft_task_release(pa.child_task);
  weft_task_release(t);

  /* A task cancelled before it started never runs. The loop is held in a
   * spinner's step, so the spawn and the cancel reach it in that order. */
  spin_t sp;
  weft_task_t *spin = NULL;
  xprobe_t never;
  xprobe_init(&never, 0, 0, NULL);
  spin_start(weft_pool_loop(pool, 0), &sp, &spin);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xprobe_task, &never, &t), 0);
  assert_int_equal(weft_task_cancel(t), 0);
  assert_int_equal(weft_task_cancel(t), 0); /* again, before it ended */
  atomic_store(&sp.release, 1);
  assert_int_equal(weft_await(t, NULL), WEFT_ECANCELED);
  assert_int_equal(atomic_load(&never.started), 0);
  assert_int_equal(weft_await(spin, NULL), 0);
  weft_task_release(t);
  weft_task_release(spin);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* --------------------------------------------------------------- call_soon */

#define NCALLS 2000

typedef struct call_log {
  weft_loop_t *loop;
  pthread_t loop_thread;
  /* Written by the loop's thread only; read once count says all ran. */
  int who[2 * NCALLS];
  int seq[2 * NCALLS];
  int off_thread;  /* callbacks that ran on another thread than the loop's */
  int in_task;     /* callbacks that ran inside a task */
  atomic_int count;
} call_log_t;

typedef struct call_arg {
  call_log_t *log;
  int who, seq;
} call_arg_t;

static call_arg_t g_calls[2][NCALLS];

static void log_cb(void *arg) {
  call_arg_t *c = arg;
  call_log_t *log = c->log;
  int n = atomic_load_explicit(&log->count, memory_order_relaxed);
  if (!pthread_equal(pthread_self(), log->loop_thread))
    log->off_thread++;
  if (weft_task_current() != NULL)
    log->in_task++;
  log->who[n] = c->who;
  log->seq[n] = c->seq;
  atomic_store_explicit(&log->count, n + 1, memory_order_release);
}

typedef struct caller {
  call_log_t *log;
  int who;
  int errors;
} caller_t;

static void *caller_thread(void *arg) {
  caller_t *c = arg;
  for (int i = 0; i < NCALLS; i++) {
    call_arg_t *a = &g_calls[c->who][i];
    a->log = c->log;
    a->who = c->who;
    a->seq = i;
    if (weft_loop_call_soon(c->log->loop, log_cb, a) != 0)
      c->errors++;
    if (i % 256 == 0)
      sched_yield(); /* let the two threads interleave */
  }
  return NULL;
}

typedef struct spawning_cb {
  xprobe_t p;
  int spawn_rc;
  atomic_int done;
} spawning_cb_t;

static void spawn_from_cb(void *arg) {
  spawning_cb_t *s = arg;
  /* A callback may spawn: NULL is the loop running on this thread. */
  s->spawn_rc = weft_spawn(NULL, xprobe_task, &s->p, NULL);
  atomic_store(&s->done, 1);
}

static void call_soon_order(void **state) {
  weft_pool_t *pool = wt_pool_of(2);
  static call_log_t log;
  memset(&log, 0, sizeof log);
  atomic_init(&log.count, 0);
  log.loop = weft_pool_loop(pool, 1);
  whoami_t w;
  ask_whoami(log.loop, &w);
  log.loop_thread = w.thread;

  pthread_t th[2];
  caller_t c[2] = {{&log, 0, 0}, {&log, 1, 0}};
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&th[i], NULL, caller_thread, &c[i]), 0);
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  assert_int_equal(c[0].errors, 0);
  assert_int_equal(c[1].errors, 0);
  assert_true(wt_wait_ge(&log.count, 2 * NCALLS, 10000));
  uv_sleep(10);
  assert_int_equal(atomic_load_explicit(&log.count, memory_order_acquire), 2 * NCALLS);
  assert_int_equal(log.off_thread, 0);
  assert_int_equal(log.in_task, 0);
  /* Each thread's calls ran in the order made. */
  int next[2] = {0, 0};
  for (int i = 0; i < 2 * NCALLS; i++) {
    int who = log.who[i];
    assert_true(who == 0 || who == 1);
    if (log.seq[i] != next[who])
      fail_msg("call %d of thread %d ran in place of call %d", log.seq[i], who, next[who]);
    next[who]++;
  }
  assert_int_equal(next[0], NCALLS);
  assert_int_equal(next[1], NCALLS);

  /* A callback that spawns a task on its loop. */
  spawning_cb_t s;
  memset(&s, 0, sizeof s);
  xprobe_init(&s.p, 1, 0, NULL);
  s.spawn_rc = 1;
  atomic_init(&s.done, 0);
  assert_int_equal(weft_loop_call_soon(weft_pool_loop(pool, 0), spawn_from_cb, &s), 0);
  assert_true(wt_wait_ge(&s.done, 1, 5000));
  assert_int_equal(s.spawn_rc, 0);
  assert_true(wt_wait_ge(&s.p.ended, 1, 5000));
  assert_ptr_equal(s.p.loop, weft_pool_loop(pool, 0));

  assert_int_equal(weft_loop_call_soon(NULL, log_cb, NULL), WEFT_EINVAL);
  assert_int_equal(weft_loop_call_soon(weft_pool_loop(pool, 0), NULL, NULL), WEFT_EINVAL);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------------------------- stop */

static void stop_keeps_worker(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  xprobe_t sleeper;
  weft_task_t *st = NULL;
  xprobe_init(&sleeper, 300, 0, &sleeper);
  assert_int_equal(weft_spawn(loop, xprobe_task, &sleeper, &st), 0);
  assert_true(wt_wait_ge(&sleeper.started, 1, 5000));
  uv_sleep(20);

  /* Stop the parked loop, twice, and once more while it is busy. */
  assert_int_equal(weft_loop_stop(loop), 0);
  uv_sleep(30);
  assert_int_equal(weft_loop_stop(loop), 0);
  spin_t sp;
  weft_task_t *spin = NULL;
  spin_start(loop, &sp, &spin);
  assert_int_equal(weft_loop_stop(loop), 0);
  atomic_store(&sp.release, 1);
  assert_int_equal(weft_await(spin, NULL), 0);
  weft_task_release(spin);

  /* The worker still runs its loop: a new spawn runs, and the sleeper was
   * not disturbed. */
  for (int i = 0; i < 3; i++) {
    xprobe_t p;
    weft_task_t *t = NULL;
    void *r = NULL;
    xprobe_init(&p, 1, 0, &p);
    assert_int_equal(weft_spawn(loop, xprobe_task, &p, &t), 0);
    assert_int_equal(weft_await(t, &r), 0);
    assert_ptr_equal(r, &p);
    weft_task_release(t);
    assert_int_equal(weft_loop_stop(loop), 0);
  }
  assert_int_equal(weft_await(st, NULL), 0);
  assert_int_equal(sleeper.sleep_rc, 0);
  weft_task_release(st);
  whoami_t w;
  ask_whoami(loop, &w); /* call_soon still reaches it too */
  assert_int_equal(weft_loop_stop(NULL), WEFT_EINVAL);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* --------------------------------------------------------------- shutdown */

#define NSHUT 100

typedef struct spawner {
  xprobe_t first;       /* sleeps, then spawns child on its own loop */
  xprobe_t child;
  int spawn_rc;
} spawner_t;

static void *spawner_task(void *arg) {
  spawner_t *s = arg;
  xprobe_task(&s->first);
  s->spawn_rc = weft_spawn(NULL, xprobe_task, &s->child, NULL);
  return NULL;
}

static void shutdown_drain_finishes(void **state) {
  weft_pool_t *pool = wt_pool_of(4);
  static xprobe_t p[NSHUT];
  weft_task_t *t[NSHUT];
  static spawner_t sp[10];
  double t0 = wt_now_ms();
  for (int i = 0; i < NSHUT; i++) {
    xprobe_init(&p[i], 50, 0, &p[i]);
    assert_int_equal(weft_spawn(weft_pool_next(pool), xprobe_task, &p[i], &t[i]), 0);
  }
  /* Tasks that spawn on their own loop while it drains. */
  for (int i = 0; i < 10; i++) {
    xprobe_init(&sp[i].first, 50, 0, NULL);
    xprobe_init(&sp[i].child, 20, 0, NULL);
    sp[i].spawn_rc = 1;
    assert_int_equal(weft_spawn(weft_pool_next(pool), spawner_task, &sp[i], NULL), 0);
  }
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  double elapsed = wt_now_ms() - t0;
  /* It waited for the sleeps: a spawner's 50 ms, then its child's 20 ms,
   * all begun after t0 (each may end up to a ms or so early, the loop's
   * clock being in whole ms). */
  assert_true(elapsed >= 65);
  int ended = 0;
  for (int i = 0; i < NSHUT; i++) {
    void *r = NULL;
    assert_int_equal(weft_task_status(t[i]), 0);
    /* A handle outlives the pool: await gives the status and result. */
    assert_int_equal(weft_await(t[i], &r), 0);
    assert_ptr_equal(r, &p[i]);
    assert_int_equal(p[i].sleep_rc, 0);
    ended += atomic_load(&p[i].ended);
    weft_task_release(t[i]);
  }
  assert_int_equal(ended, NSHUT);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(sp[i].first.sleep_rc, 0);
    assert_int_equal(sp[i].spawn_rc, 0);
    assert_int_equal(atomic_load(&sp[i].child.ended), 1);
    assert_int_equal(sp[i].child.sleep_rc, 0);
  }
}

static void shutdown_cancel_unwinds(void **state) {
  weft_pool_t *pool = wt_pool_of(4);
  static xprobe_t p[NSHUT];
  weft_task_t *t[NSHUT];
  for (int i = 0; i < NSHUT; i++) {
    xprobe_init(&p[i], 10000, 0, NULL);
    assert_int_equal(weft_spawn(weft_pool_next(pool), xprobe_task, &p[i], &t[i]), 0);
  }
  for (int i = 0; i < NSHUT; i++)
    assert_true(wt_wait_ge(&p[i].started, 1, 5000));
  uv_sleep(20);
  double t0 = wt_now_ms();
  assert_int_equal(weft_pool_shutdown(pool, WEFT_CANCEL), 0);
  double elapsed = wt_now_ms() - t0;
  assert_true(elapsed < 3000);
  for (int i = 0; i < NSHUT; i++) {
    assert_int_equal(weft_task_status(t[i]), WEFT_ECANCELED);
    assert_int_equal(weft_await(t[i], NULL), WEFT_ECANCELED);
    assert_int_equal(p[i].sleep_rc, WEFT_ECANCELED);
    assert_int_equal(atomic_load(&p[i].ended), 1);
    weft_task_release(t[i]);
  }
}

/* Tasks queued in a loop's inbox but not yet started when shutdown begins:
 * DRAIN runs them, CANCEL ends them WEFT_ECANCELED without running them
 * (weft.h: "every pending task is cancelled first").
 *
 * The pool's one loop is held in a spinner's step, so what is spawned
 * meanwhile stays queued. A helper thread spawns until it gets
 * WEFT_ESHUTDOWN (shutdown has begun: the pool refused spawns and queues its
 * shutdown message right after), waits 200 ms more, then releases the
 * spinner; the loop then finds the spawns and the shutdown message behind
 * them. The pool cannot be freed before the spinner ends, so the helper's
 * calls cannot meet freed memory. */
typedef struct queued {
  weft_loop_t *loop;
  spin_t *spin;
  weft_task_t *tasks[8192];
  xprobe_t probes[8192];
  int n;
  int refused;
  int other_err;
} queued_t;

static void *queue_until_refused(void *arg) {
  queued_t *q = arg;
  while (q->n < 8192) {
    xprobe_t *p = &q->probes[q->n];
    xprobe_init(p, 0, 0, NULL);
    int rc = weft_spawn(q->loop, xprobe_task, p, &q->tasks[q->n]);
    if (rc == WEFT_ESHUTDOWN) {
      q->refused = 1;
      break;
    }
    if (rc != 0) {
      q->other_err = rc;
      break;
    }
    q->n++;
    uv_sleep(1);
  }
  uv_sleep(200);
  atomic_store(&q->spin->release, 1);
  return NULL;
}

static void shutdown_queued(int how, int nqueued) {
  weft_pool_t *pool = wt_pool_of(1);
  static queued_t q;
  spin_t sp;
  memset(&q, 0, sizeof q);
  q.loop = weft_pool_loop(pool, 0);
  q.spin = &sp;
  weft_task_t *spin = NULL;
  /* Running, not merely queued: a spinner cancelled before it started would
   * not hold the loop (nor the pool's end) back. */
  spin_start(q.loop, &sp, &spin);
  /* Some queued from this thread first, then the helper's. */
  for (int i = 0; i < nqueued; i++) {
    xprobe_init(&q.probes[i], 0, 0, NULL);
    assert_int_equal(weft_spawn(q.loop, xprobe_task, &q.probes[i], &q.tasks[i]), 0);
  }
  q.n = nqueued;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, queue_until_refused, &q), 0);
  uv_sleep(20);
  assert_int_equal(weft_pool_shutdown(pool, how), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(q.other_err, 0);
  assert_int_equal(q.refused, 1);
  assert_int_equal(weft_task_status(spin), 0);
  weft_task_release(spin);
  int wrong = 0, first_wrong = -1, ran = 0, status0 = 0, cancelled = 0;
  for (int i = 0; i < q.n; i++) {
    int st = weft_task_status(q.tasks[i]);
    int started = atomic_load(&q.probes[i].started);
    ran += started;
    status0 += st == 0;
    cancelled += st == WEFT_ECANCELED;
    bool ok = how == WEFT_DRAIN ? st == 0 && atomic_load(&q.probes[i].ended) == 1
                                : st == WEFT_ECANCELED && started == 0;
    if (!ok && wrong++ == 0)
      first_wrong = i;
    weft_task_release(q.tasks[i]);
  }
  if (wrong)
    fail_msg("%s: of %d tasks queued before the shutdown, %d ran, %d ended 0, %d ended "
             "WEFT_ECANCELED (first wrong: #%d); want %s",
             how == WEFT_DRAIN ? "DRAIN" : "CANCEL", q.n, ran, status0, cancelled, first_wrong,
             how == WEFT_DRAIN ? "every one run" : "none run, every one WEFT_ECANCELED");
}

static void shutdown_drain_runs_queued(void **state) {
  shutdown_queued(WEFT_DRAIN, 10);
}

static void shutdown_cancel_drops_queued(void **state) {
  shutdown_queued(WEFT_CANCEL, 10);
}

/* The same with more queued tasks than a loop takes from its inbox in one
 * round: the shutdown is still behind all of them, and CANCEL still means
 * that none of them runs. */
static void shutdown_drain_runs_many_queued(void **state) {
  shutdown_queued(WEFT_DRAIN, 5000);
}

static void shutdown_cancel_drops_many_queued(void **state) {
  shutdown_queued(WEFT_CANCEL, 5000);
}

/* Spawns racing weft_pool_shutdown.
 *
 * The protocol, so that no call ever meets freed memory: the pool's loops are
 * freed only once every worker has been joined, and a worker ends only when
 * its loop has no task left. Before the race, a gate task is started on each
 * loop, and the race begins once both run; a gate ends only once the racer
 * has stopped for good (it sleeps 1 ms at a time, and once cancelled it
 * polls without awaiting). The racer spawns
 * tasks with handles onto the loops (through weft_pool_next, which is valid
 * until shutdown returns) as fast as it can, and stops at the first
 * WEFT_ESHUTDOWN it has had from every loop; only then does it open the
 * gates. The test's thread calls weft_pool_shutdown while the racer runs, so
 * shutdown's refusal lands in the middle of the racer's spawns.
 *
 * Then: every spawn returned 0 or WEFT_ESHUTDOWN, and every accepted task
 * ended (nothing pending, nothing lost): with DRAIN each ran (status 0), with
 * CANCEL each either ran (0) or ended WEFT_ECANCELED without running. */
typedef struct racer {
  weft_pool_t *pool;
  weft_loop_t *loops[2];
  atomic_int gates;     /* gates running */
  atomic_int stopped;   /* the racer will make no more calls */
  atomic_int spawned;   /* accepted spawns so far */
  atomic_int ran;       /* accepted tasks that ran */
  weft_task_t **tasks;
  size_t n, cap;
  long refused;
  int other_err;
} racer_t;

static void *count_task(void *arg) {
  racer_t *r = arg;
  atomic_fetch_add(&r->ran, 1);
  return NULL;
}

static void *gate_task(void *arg) {
  racer_t *r = arg;
  atomic_fetch_add(&r->gates, 1);
  while (atomic_load(&r->stopped) == 0)
    if (weft_sleep(1) != 0)
      uv_sleep(1);
  return NULL;
}

static void *racer_thread(void *arg) {
  racer_t *r = arg;
  bool refused[2] = {false, false};
  while (!(refused[0] && refused[1])) {
    weft_loop_t *loop = weft_pool_next(r->pool);
    unsigned i = loop == r->loops[1];
    if (refused[i])
      continue;
    if (r->n == r->cap) {
      size_t cap = r->cap ? 2 * r->cap : 1024;
      weft_task_t **grown = realloc(r->tasks, cap * sizeof *grown);
      if (!grown) {
        r->other_err = WEFT_ENOMEM;
        break;
      }
      r->tasks = grown;
      r->cap = cap;
    }
    weft_task_t *t = NULL;
    int rc = weft_spawn(loop, count_task, r, &t);
    if (rc == 0) {
      r->tasks[r->n++] = t;
      atomic_fetch_add(&r->spawned, 1);
    } else if (rc == WEFT_ESHUTDOWN) {
      refused[i] = true;
      r->refused++;
    } else {
      r->other_err = rc;
      break;
    }
  }
  atomic_store(&r->stopped, 1);
  return NULL;
}

static void race_spawn_shutdown(int how) {
  for (int round = 0; round < 5; round++) {
    racer_t r;
    memset(&r, 0, sizeof r);
    atomic_init(&r.gates, 0);
    atomic_init(&r.stopped, 0);
    atomic_init(&r.spawned, 0);
    atomic_init(&r.ran, 0);
    r.pool = wt_pool_of(2);
    weft_task_t *gates[2];
    for (unsigned i = 0; i < 2; i++) {
      r.loops[i] = weft_pool_loop(r.pool, i);
      assert_int_equal(weft_spawn(r.loops[i], gate_task, &r, &gates[i]), 0);
    }
    /* The gates must be running: a gate cancelled (by CANCEL) before it
     * started would end without waiting for the racer. */
    assert_true(wt_wait_ge(&r.gates, 2, 5000));
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, racer_thread, &r), 0);
    /* Some spawns before the shutdown, a different number each round. */
    assert_true(wt_wait_ge(&r.spawned, 50 + 200 * round, 10000));
    assert_int_equal(weft_pool_shutdown(r.pool, how), 0);
    assert_int_equal(pthread_join(th, NULL), 0);

    printf("round %d: %zu spawns accepted, %d ran\n", round, r.n, atomic_load(&r.ran));
    assert_int_equal(r.other_err, 0);
    assert_int_equal(r.refused, 2);
    assert_true(r.n >= (size_t)(50 + 200 * round));
    size_t ok = 0, cancelled = 0;
    for (size_t i = 0; i < r.n; i++) {
      int st = weft_task_status(r.tasks[i]);
      if (st == 0)
        ok++;
      else if (st == WEFT_ECANCELED && how == WEFT_CANCEL)
        cancelled++;
      else
        fail_msg("round %d: accepted task %zu of %zu ended with %d (%s)", round, i, r.n, st,
                 weft_strerror(st));
      weft_task_release(r.tasks[i]);
    }
    /* Every accepted task is accounted for, and ran exactly when it says so. */
    assert_int_equal(ok + cancelled, r.n);
    assert_int_equal((size_t)atomic_load(&r.ran), ok);
    if (how == WEFT_DRAIN)
      assert_int_equal(ok, r.n);
    for (unsigned i = 0; i < 2; i++) {
      /* A gate may see the racer stop before the cancel reaches it. */
      int st = weft_task_status(gates[i]);
      assert_true(st == 0 || (how == WEFT_CANCEL && st == WEFT_ECANCELED));
      weft_task_release(gates[i]);
    }
    free(r.tasks);
  }
}

static void race_spawn_shutdown_drain(void **state) {
  race_spawn_shutdown(WEFT_DRAIN);
}

static void race_spawn_shutdown_cancel(void **state) {
  race_spawn_shutdown(WEFT_CANCEL);
}

/* weft_loop_call_soon racing the close of a pool loop: a call either
 * returns 0 and its callback runs (it is never dropped, even when the loop
 * closes right behind it), or returns WEFT_ESHUTDOWN and the callback never
 * runs.
 *
 * The protocol, so that no call meets freed memory: weft_pool_loop's loops
 * stay valid until weft_pool_shutdown returns, and it cannot return while a
 * task of the pool runs. A gate task on loop 0 waits until the racer has
 * stopped for good; the racer floods loop 1 (which has no task, so it closes
 * its inbox as soon as the shutdown reaches it) until it gets WEFT_ESHUTDOWN
 * from it. If loop 1 never closes while the racer runs (a shutdown starved by
 * the flood), the racer gives up after 5 s and the test says so. */
typedef struct caller_race {
  weft_loop_t *target;
  atomic_int gate_running;
  atomic_int stopped;
  atomic_int accepted;
  atomic_int ran;
  pthread_t target_thread;
  atomic_int off_thread;
  int refused;
  int gave_up;
  int other_err;
} caller_race_t;

static void race_cb(void *arg) {
  caller_race_t *c = arg;
  if (!pthread_equal(pthread_self(), c->target_thread))
    atomic_fetch_add(&c->off_thread, 1);
  atomic_fetch_add(&c->ran, 1);
}

static void *call_gate_task(void *arg) {
  caller_race_t *c = arg;
  atomic_store(&c->gate_running, 1);
  while (atomic_load(&c->stopped) == 0)
    if (weft_sleep(1) != 0)
      uv_sleep(1);
  return NULL;
}

static void *call_racer_thread(void *arg) {
  caller_race_t *c = arg;
  double give_up = wt_now_ms() + 5000;
  for (unsigned i = 0;; i++) {
    int rc = weft_loop_call_soon(c->target, race_cb, c);
    if (rc == 0) {
      atomic_fetch_add(&c->accepted, 1);
    } else if (rc == WEFT_ESHUTDOWN) {
      c->refused = 1;
      break;
    } else {
      c->other_err = rc;
      break;
    }
    if (i % 64 == 0) {
      if (wt_now_ms() > give_up) {
        c->gave_up = 1;
        break;
      }
      sched_yield();
    }
  }
  atomic_store(&c->stopped, 1);
  return NULL;
}

static void race_call_soon_close(int how) {
  for (int round = 0; round < 5; round++) {
    caller_race_t c;
    memset(&c, 0, sizeof c);
    atomic_init(&c.gate_running, 0);
    atomic_init(&c.stopped, 0);
    atomic_init(&c.accepted, 0);
    atomic_init(&c.ran, 0);
    atomic_init(&c.off_thread, 0);
    weft_pool_t *pool = wt_pool_of(2);
    c.target = weft_pool_loop(pool, 1);
    whoami_t w;
    ask_whoami(c.target, &w);
    c.target_thread = w.thread;
    weft_task_t *gate = NULL;
    assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), call_gate_task, &c, &gate), 0);
    assert_true(wt_wait_ge(&c.gate_running, 1, 5000));
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, call_racer_thread, &c), 0);
    assert_true(wt_wait_ge(&c.accepted, 100 + 500 * round, 10000));
    assert_int_equal(weft_pool_shutdown(pool, how), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    weft_task_release(gate);
    assert_int_equal(c.other_err, 0);
    if (c.gave_up)
      fail_msg("round %d: loop 1 still took calls 5 s after the shutdown began (%d accepted)",
               round, atomic_load(&c.accepted));
    assert_int_equal(c.refused, 1);
    if (atomic_load(&c.ran) != atomic_load(&c.accepted))
      fail_msg("round %d: %d calls accepted, %d callbacks ran", round, atomic_load(&c.accepted),
               atomic_load(&c.ran));
    assert_int_equal(atomic_load(&c.off_thread), 0);
  }
}

static void race_call_soon_close_drain(void **state) {
  race_call_soon_close(WEFT_DRAIN);
}

static void race_call_soon_close_cancel(void **state) {
  race_call_soon_close(WEFT_CANCEL);
}

/* Once a DRAIN shutdown has begun, weft_loop_call_soon from another thread
 * is refused like a spawn (new work), while a task that is finishing may
 * still call soon on its own loop. A task on the pool's only loop sleeps
 * through the start of the shutdown (so the pool cannot be freed under the
 * helper thread's call) until the test has seen the refusal, then makes its
 * own call. */
typedef struct drain_calls {
  weft_loop_t *loop;
  atomic_int sleeping;
  atomic_int refused;   /* the test saw WEFT_ESHUTDOWN */
  atomic_int own_ran;
  atomic_int foreign_ran;
  int own_rc;
} drain_calls_t;

static void drain_own_cb(void *arg) {
  atomic_store(&((drain_calls_t *)arg)->own_ran, 1);
}

static void drain_foreign_cb(void *arg) {
  atomic_store(&((drain_calls_t *)arg)->foreign_ran, 1);
}

static void *drain_call_task(void *arg) {
  drain_calls_t *d = arg;
  atomic_store(&d->sleeping, 1);
  /* Capped, so that a shutdown that never refuses ends the case (its
   * assertion fails) rather than hanging it. */
  double give_up = wt_now_ms() + 10000;
  while (atomic_load(&d->refused) == 0 && wt_now_ms() < give_up)
    weft_sleep(1);
  d->own_rc = weft_loop_call_soon(weft_loop_current(), drain_own_cb, d);
  return NULL;
}

static void *drain_shutdown_thread(void *arg) {
  weft_pool_t *pool = arg;
  return (void *)(intptr_t)weft_pool_shutdown(pool, WEFT_DRAIN);
}

static void call_soon_refused_in_drain(void **state) {
  drain_calls_t d;
  memset(&d, 0, sizeof d);
  d.own_rc = 1;
  weft_pool_t *pool = wt_pool_of(1);
  d.loop = weft_pool_loop(pool, 0);
  assert_int_equal(weft_spawn(d.loop, drain_call_task, &d, NULL), 0);
  assert_true(wt_wait_ge(&d.sleeping, 1, 5000));
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, drain_shutdown_thread, pool), 0);
  /* The shutdown refuses calls from other threads at once; keep asking
   * until it does (the task still sleeps, so the loop is alive). */
  int rc = 0;
  double give_up = wt_now_ms() + 5000;
  while ((rc = weft_loop_call_soon(d.loop, drain_foreign_cb, &d)) == 0 && wt_now_ms() < give_up)
    uv_sleep(1);
  assert_int_equal(rc, WEFT_ESHUTDOWN);
  atomic_store(&d.refused, 1);
  void *shut_rc;
  assert_int_equal(pthread_join(th, &shut_rc), 0);
  assert_int_equal((intptr_t)shut_rc, 0);
  assert_int_equal(d.own_rc, 0);
  assert_int_equal(atomic_load(&d.own_ran), 1);
}

/* A backlog of calls from another thread: the loop drains it in bounded
 * chunks, so its own ready tasks still run between chunks (a flood cannot
 * starve them), and the whole backlog goes in time proportional to its
 * size. The calls pile up while a spinner holds the loop; then the spinner
 * is released and a yielding ticker on the same loop counts rounds. */
#define NBACKLOG 1000000

typedef struct backlog {
  atomic_int ticks;     /* the ticker's rounds */
  atomic_int stop;
  int ran;              /* callbacks run (loop thread only) */
  int ticks_first;      /* ticks when the first callback ran */
  int ticks_last;       /* ticks when the last one ran */
  atomic_int done;
} backlog_t;

static void *ticker_task(void *arg) {
  backlog_t *b = arg;
  while (atomic_load(&b->stop) == 0) {
    atomic_fetch_add(&b->ticks, 1);
    if (weft_yield() != 0)
      break;
  }
  return NULL;
}

static void backlog_cb(void *arg) {
  backlog_t *b = arg;
  if (b->ran == 0)
    b->ticks_first = atomic_load(&b->ticks);
  if (++b->ran == NBACKLOG) {
    b->ticks_last = atomic_load(&b->ticks);
    atomic_store(&b->done, 1);
  }
}

static void inbox_backlog_drains_fairly(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  static backlog_t b;
  memset(&b, 0, sizeof b);
  atomic_init(&b.ticks, 0);
  atomic_init(&b.stop, 0);
  atomic_init(&b.done, 0);
  weft_task_t *ticker = NULL, *spin = NULL;
  assert_int_equal(weft_spawn(loop, ticker_task, &b, &ticker), 0);
  assert_true(wt_wait_ge(&b.ticks, 1, 5000));
  spin_t sp;
  spin_start(loop, &sp, &spin);
  double t_push = wt_now_ms();
  for (int i = 0; i < NBACKLOG; i++)
    if (weft_loop_call_soon(loop, backlog_cb, &b) != 0)
      fail_msg("call_soon %d of %d failed", i, NBACKLOG);
  double t0 = wt_now_ms();
  t_push = t0 - t_push;
  atomic_store(&sp.release, 1);
  bool drained = wt_wait_ge(&b.done, 1, 20000);
  double elapsed = wt_now_ms() - t0;
  printf("%d calls queued in %.0f ms, drained in %.0f ms; the ticker ran %d times meanwhile\n",
         NBACKLOG, t_push, elapsed, b.ticks_last - b.ticks_first);
  atomic_store(&b.stop, 1);
  assert_int_equal(weft_await(ticker, NULL), 0);
  assert_int_equal(weft_await(spin, NULL), 0);
  weft_task_release(ticker);
  weft_task_release(spin);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  /* Running a call (and freeing it) costs less than queuing it did
   * (allocating it, taking the lock), measured here in the same build: a
   * linear drain takes 0.2 to 0.4 times as long in every build mode; one
   * that walks the rest of the backlog every round takes 9 to 30 times. */
  if (!drained || elapsed > 3 * t_push + 100)
    fail_msg("queuing %d calls took %.0f ms, draining them %.0f ms (%s): not linear in the backlog",
             NBACKLOG, t_push, elapsed, drained ? "done" : "not done after 20 s");
  /* The ticker was not starved while the backlog drained. */
  if (b.ticks_last - b.ticks_first < 10)
    fail_msg("the ticker ran %d times while %d calls drained", b.ticks_last - b.ticks_first,
             NBACKLOG);
}

/* ---------------------------------------------------------- no leftovers */

#define NROUNDS 1000

static void start_stop_rounds(void **state) {
  /* One round first, so that whatever libuv or the C library sets up once
   * per process (libuv's signal pipe, ...) is part of the baseline. */
  weft_pool_t *pool = wt_pool_of(2);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
  int threads = count_dir("/proc/self/task");
  int fds = count_dir("/proc/self/fd");
  double t0 = wt_now_ms();
  for (int i = 0; i < NROUNDS; i++) {
    pool = wt_pool_of(2);
    /* Every tenth round does some work, and alternate modes. */
    if (i % 10 == 0) {
      weft_task_t *t = NULL;
      assert_int_equal(weft_spawn(weft_pool_next(pool), wt_echo_task, pool, &t), 0);
      assert_int_equal(weft_spawn(weft_pool_next(pool), wt_echo_task, NULL, NULL), 0);
      assert_int_equal(weft_await(t, NULL), 0);
      weft_task_release(t);
    }
    assert_int_equal(weft_pool_shutdown(pool, i % 2 ? WEFT_CANCEL : WEFT_DRAIN), 0);
  }
  double elapsed = wt_now_ms() - t0;
  printf("%d rounds of pool_new(2)/shutdown in %.0f ms\n", NROUNDS, elapsed);
  assert_int_equal(count_dir("/proc/self/task"), threads);
  assert_int_equal(count_dir("/proc/self/fd"), fds);
}

/* ------------------------------------------------------------------- stats */

typedef struct stats_req {
  weft_loop_t *loop;
  weft_stats_t st;
  int rc;
  atomic_int done;
} stats_req_t;

static void stats_cb(void *arg) {
  stats_req_t *s = arg;
  s->rc = weft_loop_stats(s->loop, &s->st);
  atomic_store(&s->done, 1);
}

/* Reads loop's counters on its own thread, in a callback. */
static void stats_of(weft_loop_t *loop, weft_stats_t *out) {
  stats_req_t s;
  memset(&s, 0, sizeof s);
  s.loop = loop;
  s.rc = 1;
  atomic_init(&s.done, 0);
  assert_int_equal(weft_loop_call_soon(loop, stats_cb, &s), 0);
  assert_true(wt_wait_ge(&s.done, 1, 5000));
  assert_int_equal(s.rc, 0);
  *out = s.st;
}

#define NREMOTE 50

static void stats_count_messages(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  weft_stats_t before, after;
  /* From this thread, the loop answers through its inbox. */
  assert_int_equal(weft_loop_stats(loop, &before), 0);
  assert_true(before.wakeups_received <= before.wakeups_sent);
  stats_of(loop, &before);
  assert_true(before.wakeups_received <= before.wakeups_sent);

  /* Remote spawns to a parked loop, one at a time: each must wake it. */
  for (int i = 0; i < NREMOTE; i++) {
    weft_task_t *t = NULL;
    uv_sleep(1);
    assert_int_equal(weft_spawn(loop, wt_echo_task, NULL, &t), 0);
    assert_int_equal(weft_await(t, NULL), 0);
    weft_task_release(t);
  }
  stats_of(loop, &after);
  assert_true(after.spawned - before.spawned >= NREMOTE);
  assert_true(after.finished - before.finished >= NREMOTE);
  /* Every spawn and every await's registration is a message; the stats
   * request itself is one more. */
  assert_true(after.inbox_in - before.inbox_in >= NREMOTE);
  assert_true(after.wakeups_sent > before.wakeups_sent);
  assert_true(after.wakeups_received > before.wakeups_received);
  if (!(after.wakeups_received <= after.wakeups_sent))
    fail_msg("after remote spawns: wakeups_received %" PRIu64 " > wakeups_sent %" PRIu64,
             after.wakeups_received, after.wakeups_sent);
  assert_int_equal(after.live, 0);

  /* A burst of spawns to a loop held busy rings nothing: the loop finds
   * them on its next round. The counters are read in that same round, by a
   * call queued behind the burst, before anything else can reach the loop. */
  spin_t sp;
  weft_task_t *spin = NULL;
  stats_of(loop, &before);
  spin_start(loop, &sp, &spin);
  weft_task_t *burst[100];
  for (int i = 0; i < 100; i++)
    assert_int_equal(weft_spawn(loop, wt_echo_task, NULL, &burst[i]), 0);
  stats_req_t mid;
  memset(&mid, 0, sizeof mid);
  mid.loop = loop;
  mid.rc = 1;
  atomic_init(&mid.done, 0);
  assert_int_equal(weft_loop_call_soon(loop, stats_cb, &mid), 0);
  atomic_store(&sp.release, 1);
  assert_true(wt_wait_ge(&mid.done, 1, 5000));
  assert_int_equal(mid.rc, 0);
  /* At most one ring: the spinner's spawn, to the loop parked before it. */
  if (mid.st.wakeups_sent - before.wakeups_sent > 1)
    fail_msg("100 spawns and a call to a busy loop rang it %" PRIu64 " times",
             mid.st.wakeups_sent - before.wakeups_sent);
  assert_int_equal(weft_gather(burst, 100, NULL, NULL), 0);
  assert_int_equal(weft_await(spin, NULL), 0);
  stats_of(loop, &after);
  /* The spinner, the burst and the call, at least. */
  assert_true(after.inbox_in - before.inbox_in >= 102);
  assert_true(after.spawned - before.spawned >= 101);
  for (int i = 0; i < 100; i++)
    weft_task_release(burst[i]);
  weft_task_release(spin);

  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* weft_loop_stop from another thread rings a parked loop as well; the
 * counters stay consistent: every ring the loop woke up to was sent. */
static void stats_count_stop_rings(void **state) {
  weft_pool_t *pool = wt_pool_of(1);
  weft_loop_t *loop = weft_pool_loop(pool, 0);
  weft_stats_t before, after;
  uv_sleep(5);
  stats_of(loop, &before);
  for (int i = 0; i < 5; i++) {
    uv_sleep(5);
    assert_int_equal(weft_loop_stop(loop), 0);
  }
  uv_sleep(5);
  stats_of(loop, &after);
  uint64_t sent = after.wakeups_sent - before.wakeups_sent;
  uint64_t received = after.wakeups_received - before.wakeups_received;
  if (received > sent)
    fail_msg("5 weft_loop_stop calls from another thread to a parked loop: it woke up %" PRIu64
             " times, but wakeups_sent grew by %" PRIu64,
             received, sent);
  assert_true(after.wakeups_received <= after.wakeups_sent);
  assert_int_equal(weft_pool_shutdown(pool, WEFT_DRAIN), 0);
}

/* ------------------------------------------------- drain with a deadline */

/* weft_pool_drain: tasks that end within the deadline are left alone and
 * counted as completed; those still live at it are cancelled, named in the
 * report, and counted; the call takes about the deadline, not the slow
 * tasks' time. */
static void pool_drain_cancels_the_late(void **state) {
  (void)state;
  enum { QUICK = 3, SLOW = 2, LOOPS = 2 };
  weft_pool_t *pool = wt_pool_of(LOOPS);
  xprobe_t quick[LOOPS][QUICK], slow[LOOPS][SLOW];
  for (unsigned l = 0; l < LOOPS; l++) {
    for (int i = 0; i < QUICK; i++) {
      xprobe_init(&quick[l][i], 20 + 10 * (uint64_t)i, 0, NULL);
      assert_int_equal(weft_spawn(weft_pool_loop(pool, l), xprobe_task, &quick[l][i], NULL), 0);
    }
    for (int i = 0; i < SLOW; i++) {
      char name[32];
      snprintf(name, sizeof name, "slow-%u-%d", l, i);
      xprobe_init(&slow[l][i], 60000, 0, NULL);
      assert_int_equal(weft_spawn_named(weft_pool_loop(pool, l), xprobe_task, &slow[l][i], name,
                                        NULL), 0);
    }
  }
  weft_drain_report_t r;
  memset(&r, 0xff, sizeof r);
  double t0 = wt_now_ms();
  assert_int_equal(weft_pool_drain(pool, 400, &r), 0);
  double took = wt_now_ms() - t0;
  assert_int_equal(r.completed, LOOPS * QUICK);
  assert_int_equal(r.cancelled, LOOPS * SLOW);
  assert_int_equal(r.nnames, LOOPS * SLOW);
  for (unsigned i = 0; i < r.nnames; i++)
    assert_int_equal(strncmp(r.names[i], "slow-", 5), 0);
  assert_true(took >= 390 && took < 5000);
  assert_true(r.elapsed_ms >= 390 && r.elapsed_ms <= (uint64_t)took + 1);
  for (unsigned l = 0; l < LOOPS; l++) {
    for (int i = 0; i < QUICK; i++) {
      assert_int_equal(atomic_load(&quick[l][i].ended), 1);
      assert_int_equal(quick[l][i].sleep_rc, 0);
    }
    for (int i = 0; i < SLOW; i++) {
      assert_int_equal(atomic_load(&slow[l][i].ended), 1);
      assert_int_equal(slow[l][i].sleep_rc, WEFT_ECANCELED);
    }
  }
}

/* Everything ends in time: nothing is cancelled, and the call returns as
 * soon as the loops have drained, not at the deadline. NULL report. */
static void pool_drain_all_in_time(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(3);
  enum { N = 12 };
  xprobe_t p[N];
  for (int i = 0; i < N; i++) {
    xprobe_init(&p[i], 30, i % 3 == 0 ? -5 : 0, NULL);
    assert_int_equal(weft_spawn(weft_pool_next(pool), xprobe_task, &p[i], NULL), 0);
  }
  weft_drain_report_t r;
  double t0 = wt_now_ms();
  assert_int_equal(weft_pool_drain(pool, 20000, &r), 0);
  assert_true(wt_now_ms() - t0 < 5000);
  assert_int_equal(r.completed, N); /* failures end by themselves too */
  assert_int_equal(r.cancelled, 0);
  assert_int_equal(r.nnames, 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(p[i].sleep_rc, 0);

  pool = wt_pool_of(1);
  xprobe_init(&p[0], 10, 0, NULL);
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), xprobe_task, &p[0], NULL), 0);
  assert_int_equal(weft_pool_drain(pool, WEFT_FOREVER, NULL), 0);
  assert_int_equal(p[0].sleep_rc, 0);
}

/* A deadline of 0 cancels at once; tasks that unwind through awaits and
 * spawn more on the way out: those never run, and are counted. */
static void *drain_spawner_task(void *arg) {
  xprobe_t *p = arg;
  atomic_store(&p->started, 1);
  p->sleep_rc = weft_sleep(60000);
  /* Unwinding: a child, which the cut keeps from running. */
  weft_spawn(NULL, wt_flag_task, &p->fail, NULL);
  atomic_store(&p->ended, 1);
  return NULL;
}

static void pool_drain_zero_deadline(void **state) {
  (void)state;
  weft_pool_t *pool = wt_pool_of(2);
  xprobe_t p[4];
  for (int i = 0; i < 4; i++) {
    xprobe_init(&p[i], 0, 0, NULL);
    assert_int_equal(weft_spawn(weft_pool_loop(pool, (unsigned)i % 2), drain_spawner_task, &p[i], NULL),
                     0);
  }
  for (int i = 0; i < 4; i++)
    assert_true(wt_wait_ge(&p[i].started, 1, 5000));
  weft_drain_report_t r;
  assert_int_equal(weft_pool_drain(pool, 0, &r), 0);
  assert_int_equal(r.completed, 0);
  assert_int_equal(r.cancelled, 8); /* the four and their children */
  assert_int_equal(r.nnames, 4);
  assert_true(r.elapsed_ms < 5000);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(p[i].sleep_rc, WEFT_ECANCELED);
    assert_int_equal(p[i].fail, 0); /* the child never ran */
  }
}

/* Misuse: NULL, and from one of the pool's own workers (refused, nothing
 * happens: the pool drains normally afterwards). */
static void *drain_from_worker(void *arg) {
  weft_pool_t *pool = arg;
  return (void *)(intptr_t)weft_pool_drain(pool, 0, NULL);
}

static void pool_drain_misuse(void **state) {
  (void)state;
  assert_int_equal(weft_pool_drain(NULL, 0, NULL), WEFT_EINVAL);
  weft_pool_t *pool = wt_pool_of(1);
  weft_task_t *t;
  assert_int_equal(weft_spawn(weft_pool_loop(pool, 0), drain_from_worker, pool, &t), 0);
  void *rc;
  assert_int_equal(weft_await(t, &rc), 0);
  assert_int_equal((int)(intptr_t)rc, WEFT_EINVAL);
  weft_task_release(t);
  weft_drain_report_t r;
  assert_int_equal(weft_pool_drain(pool, 1000, &r), 0);
  assert_int_equal(r.completed, 0);
  assert_int_equal(r.cancelled, 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(pool_new_and_loops),
    cmocka_unit_test(pool_drain_cancels_the_late),
    cmocka_unit_test(pool_drain_all_in_time),
    cmocka_unit_test(pool_drain_zero_deadline),
    cmocka_unit_test(pool_drain_misuse),
    cmocka_unit_test(pool_bad_arguments),
    cmocka_unit_test(pool_threads_named),
    cmocka_unit_test(workers_block_signals),
    cmocka_unit_test(spawn_await_from_main),
    cmocka_unit_test(gather_from_main),
    cmocka_unit_test(await_user_loop_from_plain_thread),
    cmocka_unit_test(xloop_await_result),
    cmocka_unit_test(xloop_gather),
    cmocka_unit_test(xloop_cancel_propagates),
    cmocka_unit_test(xloop_await_storm),
    cmocka_unit_test(gather_ended_order_from_main),
    cmocka_unit_test(cancel_from_main),
    cmocka_unit_test(call_soon_order),
    cmocka_unit_test(stop_keeps_worker),
    cmocka_unit_test(shutdown_drain_finishes),
    cmocka_unit_test(shutdown_cancel_unwinds),
    cmocka_unit_test(shutdown_drain_runs_queued),
    cmocka_unit_test(shutdown_cancel_drops_queued),
    cmocka_unit_test(shutdown_drain_runs_many_queued),
    cmocka_unit_test(shutdown_cancel_drops_many_queued),
    cmocka_unit_test(race_spawn_shutdown_drain),
    cmocka_unit_test(race_spawn_shutdown_cancel),
    cmocka_unit_test(race_call_soon_close_drain),
    cmocka_unit_test(race_call_soon_close_cancel),
    cmocka_unit_test(call_soon_refused_in_drain),
    cmocka_unit_test(inbox_backlog_drains_fairly),
    cmocka_unit_test(start_stop_rounds),
    cmocka_unit_test(stats_count_messages),
    cmocka_unit_test(stats_count_stop_rings),
};

WT_MAIN("pool", tests)
