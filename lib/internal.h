/* Private declarations shared by the files of lib/. Nothing here is part of
 * the public API; the double underscore marks every non-static name. */
#ifndef WEFT_INTERNAL_H
#define WEFT_INTERNAL_H

#include "weft.h"
#include "internal/queue.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(WEFT_SWITCH_UCONTEXT)
#include <ucontext.h>
#endif

/* ------------------------------------------------------------ arch switch */

/* A saved execution context. The assembly switches keep only the stack
 * pointer: the callee-saved registers are pushed on the suspended stack. */
typedef struct weft__ctx {
  void *sp;
#if defined(WEFT_SWITCH_UCONTEXT)
  ucontext_t uc;
#endif
} weft__ctx_t;

/* Prepares ctx so that the first switch to it calls entry() on the stack
 * [stack_lo, stack_lo + size). entry must never return. */
void weft__ctx_make(weft__ctx_t *ctx, void *stack_lo, size_t size, void (*entry)(void));
/* Saves the running context into from and resumes to. The one function each
 * lib/arch/ file implements; everything else is shared. */
void weft__ctx_switch(weft__ctx_t *from, weft__ctx_t *to);
extern const char weft__switch_name[];

/* ------------------------------------------------------------------ stacks */

/* One task stack. Guarded stacks own a mapping whose lowest page is
 * PROT_NONE. Canary stacks are slots of a shared slab mapping with no guard
 * page; an overflow of slot i runs down into slot i-1, whose topmost word
 * holds slot i's canary, checked at every switch away from the task. Keeping
 * the canary in the page just below (already resident: it is slot i-1's
 * top) means an idle task touches one page of stack, not two.
 *
 *   high  +---------------------+  slot i+1
 *         | canary of slot i+1  |
 *         +---------------------+  <- lo + size: slot i's top
 *         |  task frames ...    |
 *         |         |           |  grows down
 *         |         v           |
 *         +---------------------+  <- lo
 *         | canary of slot i    |  (topmost word of slot i-1)
 *   low   |  slot i-1 ...       |
 *
 * A guarded stack's canary points at a constant that always matches, so the
 * check stays one load and compare for every task.
 *
 * Where the kernel has lightweight guard regions (Linux 6.13+), every stack
 * is guarded and none needs a mapping of its own: stacks are carved from
 * chunks of WEFT__CHUNK_STACKS slots, each slot a WEFT__GUARD_REACH guard
 * (madvise(MADV_GUARD_INSTALL): page-table markers, no memory, no VMA)
 * below its stack. The guard is as wide as the reach the overflow report
 * assumes, so a large frame cannot jump it into the neighbour:
 *
 *   high  +---------------------+
 *         | guard of slot i+1   |
 *         +---------------------+  <- lo + size
 *         |  task frames ...    |  slot i's stack
 *         +---------------------+  <- lo
 *         | guard of slot i     |  WEFT__GUARD_REACH bytes
 *   low   +---------------------+  slot i-1's top
 *
 * The fallback's guard mappings are as wide (PROT_NONE address space).
 */
/* How far below a stack's lowest byte a fault still counts as running off
 * it (overflow.c), and so how wide a guard must be: a frame or an alloca
 * of up to this much cannot jump it. */
#define WEFT__GUARD_REACH (64 * 1024)
/* Stacks per lightweight-guard chunk: one mmap and one guard-install call
 * each, and the unit in which surplus stacks go back to the kernel. */
#define WEFT__CHUNK_STACKS 64
typedef struct weft__slab weft__slab_t;
typedef struct weft__stack {
  weft__queue_t node;  /* link in the pool's warm or cold list */
  void *lo;            /* lowest usable byte */
  size_t size;         /* usable bytes from lo */
  const uint64_t *canary; /* checked at each switch away */
  void *map;           /* the guarded mapping (NULL for slab stacks) */
  size_t map_len;      /* its length, guard page included */
  weft__slab_t *slab;  /* the slab it was carved from, or NULL */
  unsigned vg_id;      /* valgrind stack id */
  bool cold;           /* on the pool's cold list (its pages given back) */
  void *tsan_fiber;    /* TSan builds: the fiber every task on it runs as */
} weft__stack_t;

/* A loop's stacks: warm ones are reused as they are (their pages stay
 * resident, so reuse costs no page fault); cold ones gave their pages back
 * and are reused before a new mapping is made. */
typedef struct weft__stack_pool {
  weft__queue_t warm;   /* LIFO, the most recently used first */
  size_t nwarm;
  weft__queue_t cold;
  size_t warm_max;      /* warm stacks kept; the rest turn cold or unmap */
  size_t stack_size;    /* usable bytes per stack, page multiple */
  weft__slab_t *slabs;  /* every slab of this pool, freed with it */
  weft__slab_t *carving; /* the slab new canary stacks come from */
  size_t nguarded;      /* guarded stacks alive (pooled or in use) */
  size_t ncanary;       /* slab stacks handed out at least once */
  bool lite;            /* stacks from guarded chunks (lightweight guards) */
  weft__queue_t idle;   /* chunks whose stacks all ended, for weft__stack_trim */
} weft__stack_pool_t;

#define WEFT__STACK_CANARY UINT64_C(0x7765667443414e59) /* "weftCANY" */

void weft__stack_pool_init(weft__stack_pool_t *p, size_t stack_size, size_t warm_max);
void weft__stack_pool_destroy(weft__stack_pool_t *p);
/* Under TSan the stack comes with its fiber (stack.c says why). */
weft__stack_t *weft__stack_get(weft__stack_pool_t *p);
void weft__stack_put(weft__stack_pool_t *p, weft__stack_t *s);
/* Gives back to the kernel, one madvise each, the idle chunks the pool can
 * spare (stack.c), at most budget of them; true if idle chunks are left
 * for another call. From the loop: WEFT__TRIM_BUDGET when it has nothing
 * to run, WEFT__TRIM_BUSY at a poll between busy rounds. */
#define WEFT__TRIM_BUDGET 64
#define WEFT__TRIM_BUSY 4
bool weft__stack_trim(weft__stack_pool_t *p, size_t budget);
size_t weft__stack_round(size_t size);
/* lib/arch/guard_*.c: installs n guard regions of len bytes at base,
 * base + stride, ... (page multiples); 0, or a negative errno where the
 * system has no lightweight guards (-EINVAL: the kernel predates them). */
int weft__guard_install(void *base, size_t stride, size_t len, size_t n);
/* Faults in n ranges of len bytes at base, base + stride, ... for writing,
 * in one call where the kernel allows (lib/arch/guard_madvise.c), at most
 * 64 of them; else nothing: they fault in when touched. */
void weft__pages_populate(void *base, size_t stride, size_t len, size_t n);

/* ---------------------------------------------------------------- coros */

/* A context plus what the sanitizers need to follow a switch. The loop's
 * scheduler has one too (its stack is the thread's own). */
typedef struct weft__coro {
  weft__ctx_t ctx;
  const void *stack_lo;  /* bounds reported to ASan at a switch into it */
  size_t stack_size;
  void *asan_fake;       /* ASan's fake stack of this side while suspended */
  void *tsan_fiber;      /* TSan fiber: its stack's (the thread's own for the scheduler) */
} weft__coro_t;

/* A function whose frame TSan does not record. The base frame of a task's
 * stack and the last switch away from it are such: TSan keeps a fiber's
 * call stack across its switches, and a task that ends switches away for
 * good from inside the frames that started it, so every frame recorded there
 * would stay on its fiber, which the stack's next task reuses (stack.c). */
#if !defined(WEFT_TSAN)
#define WEFT__TSAN_BARE
#elif defined(__clang__)
/* clang's no_sanitize("thread") still records the frame. */
#if !__has_attribute(disable_sanitizer_instrumentation)
#error "a TSan build with clang needs clang 14 or later"
#endif
#define WEFT__TSAN_BARE __attribute__((disable_sanitizer_instrumentation))
#else
#define WEFT__TSAN_BARE __attribute__((no_sanitize_thread))
#endif

/* For the functions between the run loop and weft__coro_switch. A stack
 * switch leaves the return-stack buffer predicting the other side's
 * returns: per step, the loop's side and the task's side each mispredict
 * as many returns as the shallower of the two call chains above the
 * switch (loop_round > weft__coro_switch; weft_yield > weft__park >
 * weft__coro_switch). One frame more on the loop's side, a yield costs
 * about 20 ns more. */
#define WEFT__ALWAYS_INLINE __attribute__((always_inline))

void weft__coro_init_thread(weft__coro_t *sched);
void weft__coro_init(weft__coro_t *c, weft__stack_t *s, void (*entry)(void));
/* Once the coroutine has exited; its stack, fiber included, goes back to the
 * pool on its own. */
void weft__coro_destroy(weft__coro_t *c);
/* From the scheduler to a task, from a task to the scheduler, or from a
 * task straight to the next task of the round (weft__park). */
void weft__coro_switch(weft__coro_t *from, weft__coro_t *to);
/* First thing a new coroutine does, on its own stack. */
void weft__coro_started(weft__coro_t *self, weft__coro_t *from);
/* The last switch away from a coroutine that has ended. */
WEFT__TSAN_BARE void weft__coro_exit(weft__coro_t *self, weft__coro_t *to)
  __attribute__((noreturn));

/* ---------------------------------------------------------------- timers */

/* A timer in the loop's heap (one uv_timer_t drives them all). Due times are
 * in the loop's millisecond clock (uv_now). */
typedef struct weft__timer weft__timer_t;
struct weft__timer {
  uint64_t due;
  size_t index;                      /* place in the heap; SIZE_MAX if idle */
  void (*fire)(weft__timer_t *t);    /* runs on the loop, outside any task */
};

#define WEFT__TIMER_IDLE SIZE_MAX

static inline void weft__timer_init(weft__timer_t *t, void (*fire)(weft__timer_t *)) {
  t->index = WEFT__TIMER_IDLE;
  t->fire = fire;
}
static inline bool weft__timer_active(const weft__timer_t *t) {
  return t->index != WEFT__TIMER_IDLE;
}

/* Capacity is reserved at spawn (two timers per live task) so that starting
 * a timer at an await point never fails. */
int weft__timers_reserve(weft_loop_t *loop, size_t n);
void weft__timer_start(weft_loop_t *loop, weft__timer_t *t, uint64_t due);
void weft__timer_stop(weft_loop_t *loop, weft__timer_t *t);
void weft__timers_arm(weft_loop_t *loop);   /* point the uv_timer at the earliest */
void weft__timers_free(weft_loop_t *loop);
void weft__timers_cb(uv_timer_t *h);

/* ----------------------------------------------------------------- waits */

/* What a parked task waits on, kept on the task's own stack for the length
 * of the wait (libdill's idea). Whoever completes the wait calls
 * weft__wake; cancellation and deadlines go through interrupt. */
typedef struct weft__wait weft__wait_t;
struct weft__wait {
  weft_task_t *task;
  weft_wait_kind_t kind;
  int result;       /* what weft__park returns */
  int interrupted;  /* the error an interrupt recorded while the wait goes on */
  int arg;          /* for the event hook: sleep ms */
  const void *what; /* for weft_dump: the sleep's timer, the awaited task (a
                       single await), the channel, the stream; or NULL */
  /* Called when the task is cancelled or its deadline passes while parked.
   * Returns true if the task may be woken now with err (the hook detached it
   * from what it waited on), false if it will be woken when what it waits on
   * has unwound (the hook cancelled that). NULL: the wait cannot be cut. */
  bool (*interrupt)(weft__wait_t *w, int err);
};

/* -------------------------------------------------------------- waiter */

/* One waiter (waiter.c): a task parked on its loop, or a plain thread
 * blocked on a condition variable, and the one way to wake either from any
 * thread. Lives on the waiting side's stack (or in a request) for the
 * length of the wait. */
typedef struct weft__msg weft__msg_t;
struct weft__msg {
  weft__msg_t *next;
  void (*run)(weft__msg_t *m, weft_loop_t *loop);
  bool traced;      /* its sending loop's trace has the start of its arrow */
};

typedef struct weft__waiter {
  weft__wait_t base;       /* the task backend's wait record (base.task) */
  weft_loop_t *loop;       /* the waiting task's loop; NULL: a plain thread */
  pthread_mutex_t lock;    /* plain backend: guards done and result */
  pthread_cond_t cond;     /* plain backend */
  bool done;               /* woken before (or while) it waited */
  bool posting;            /* plain backend: inside weft__waiter_post's work */
  int result;              /* what the wait returns once done */
  weft__msg_t msg;         /* a wake from another thread, through the inbox */
} weft__waiter_t;

/* t: the waiting task, or NULL for the calling plain thread. kind, what and
 * interrupt describe a task's wait (weft__wait_t). */
void weft__waiter_init(weft__waiter_t *w, weft_task_t *t, weft_wait_kind_t kind, const void *what,
                       bool (*interrupt)(weft__wait_t *w, int err));
void weft__waiter_destroy(weft__waiter_t *w);
/* Waits until woken (a task: or cut by a cancel or deadline); returns the
 * result of the wake (or the cut's error). */
int weft__waiter_wait(weft__waiter_t *w);
/* A plain thread's wait with an end (CLOCK_REALTIME): WEFT_ETIMEDOUT. */
int weft__waiter_wait_ms(weft__waiter_t *w, const struct timespec *until);
/* ts + ms (clock.c), for the ends of such waits. */
void weft__timespec_add_ms(struct timespec *ts, uint64_t ms);
/* Any thread: the wait returns result. */
void weft__waiter_wake(weft__waiter_t *w, int result);
/* Any thread: runs m->run on the waiter's side (a task's loop thread, or
 * under a plain waiter's lock), where it may call weft__waiter_wake. */
void weft__waiter_post(weft__waiter_t *w, weft__msg_t *m);
/* The waiting plain thread's own access to what its posts guard (no-ops for
 * a task, whose posts run on its own thread). */
void weft__waiter_lock(weft__waiter_t *w);
void weft__waiter_unlock(weft__waiter_t *w);

/* Who calls a call that may wait: a task (*t set; a pending cancel or a
 * passed deadline is returned), a plain thread (*t NULL, returns 0), or a
 * libuv callback on a loop's thread, which may not wait (WEFT_ENOTASK).
 * Inline below (after the loop's struct): the uncontended sync calls pay
 * for it on every call. */
static inline int weft__waiter_caller(weft_task_t **t, const char *fn);

/* ------------------------------------------------------------ wait queue */

/* A FIFO of waiters, each handed what it waits for (a permit, a lock, a
 * signal) by whoever grants it: the core of semaphores, mutexes, events
 * and condition variables (waitq.c). The lock guards the list; len mirrors
 * its length for lock-free fast paths, which pair with it as a Dekker pair:
 * a waiter enters (len + 1, seq_cst) and then looks at the state once more,
 * a granter changes the state (seq_cst) and then looks at len, so one of
 * them always sees the other. */
typedef struct weft__waitq {
  pthread_mutex_t lock;
  weft__queue_t list;       /* weft__qwait_t, oldest first */
  atomic_size_t len;        /* the list's length, written under the lock */
} weft__waitq_t;

typedef struct weft__qwait {
  weft__waiter_t waiter;
  weft__queue_t link;       /* on q->list while waiting */
  weft__waitq_t *q;
  void *token;              /* the waiter's identity (a mutex's holder) */
} weft__qwait_t;

void weft__waitq_init(weft__waitq_t *q);
void weft__waitq_destroy(weft__waitq_t *q);
/* Under q->lock: w joins the tail. cut: cancellation and deadlines may end
 * the wait (else only a grant does). */
void weft__waitq_enter(weft__waitq_t *q, weft__qwait_t *w, weft_task_t *t, weft_wait_kind_t kind,
                       const void *what, void *token, bool cut);
/* Under q->lock: w leaves again without waiting (it got what it wanted). */
void weft__waitq_leave(weft__qwait_t *w);
/* After unlocking q: waits for w's grant. Returns 0 (granted) or the
 * error that cut the wait (w was taken off the list: nothing granted). */
int weft__waitq_sleep(weft__qwait_t *w);
/* Under q->lock: the oldest waiter, or NULL. */
weft__qwait_t *weft__waitq_head(weft__waitq_t *q);
/* Under q->lock: w, on the list, is granted: off the list, and woken. */
void weft__waitq_grant(weft__qwait_t *w);
/* Not under the lock: grants the oldest waiter (all: every waiter), if
 * any. The caller changed what waiters wait for first (seq_cst), so a
 * waiter it does not see here will see that change. */
void weft__waitq_wake(weft__waitq_t *q, bool all);
/* Whether nobody waits (a primitive may be freed); locks q. fn names the
 * free call, for the misuse line when somebody does. */
bool weft__waitq_idle(weft__waitq_t *q, const char *fn);
static inline size_t weft__waitq_len(weft__waitq_t *q) {
  return atomic_load_explicit(&q->len, memory_order_seq_cst);
}

/* Debug names of channels and the synchronisation objects ("" if none),
 * for weft_dump; weft__name_set copies one in (fn: the public setter). */
int weft__name_set(char dst[32], const char *name, const char *fn);
const char *weft__chan_name(const weft_chan_t *ch);
const char *weft__sem_name(const weft_sem_t *sem);
const char *weft__mutex_name(const weft_mutex_t *mu);
const char *weft__event_name(const weft_event_t *ev);
const char *weft__cond_name(const weft_cond_t *cv);

/* The identity that holds a mutex: the current task, else the calling
 * thread. */
void *weft__holder_token(void);

/* Mutex internals that weft_cond_wait uses (mutex.c). */
bool weft__mutex_held_by(const weft_mutex_t *mu, void *token);
void weft__mutex_release(weft_mutex_t *mu);
/* Takes mu for token, waiting as needed; not cut by cancel or deadline. */
void weft__mutex_take(weft_mutex_t *mu, weft_task_t *t, void *token);

/* ------------------------------------------------- channel wait records */

/* A waiter's place on one of a channel's wait lists (chan.c). A channel
 * that made the progress it waits for takes the oldest record off its list,
 * under the channel's lock, and calls its fire. A channel's own send or
 * receive has one record; weft_select has one per case (select.c). */
typedef struct weft__chan_rec weft__chan_rec_t;
struct weft__chan_rec {
  weft__queue_t link;
  weft_chan_t *ch;
  void *wl;                                /* the channel's list it is on */
  void (*fire)(weft__chan_rec_t *r);       /* under the channel's lock */
};

/* One try of a send (*msg the message) or a receive (into *msg) that never
 * waits, and tells the channel's waiters of its progress: 0, WEFT_EAGAIN,
 * WEFT_ECLOSED. */
int weft__chan_try(weft_chan_t *ch, bool send, void **msg);
/* r joins the senders' (send) or receivers' list of ch. The caller fences
 * (seq_cst) after its last enlist and before it tries again. */
void weft__chan_enlist(weft__chan_rec_t *r, weft_chan_t *ch, bool send);
/* r leaves its list. false: it was taken off by a wake (fire ran or runs). */
bool weft__chan_delist(weft__chan_rec_t *r);
/* A wake r took but did not use goes to the next waiter of its list. */
void weft__chan_pass(weft__chan_rec_t *r);

/* --------------------------------------------------------------- inbox */

/* A message for a loop from another thread (weft__msg_t, above). It lives
 * inside whatever it is about (a task, a join node, a call) and run()
 * executes on the loop's thread, where it may free its own memory. */

/* Messages drained per round at most (the rest wait for the next round). */
#define WEFT__INBOX_BUDGET 1024

void weft__inbox_init(weft_loop_t *loop);
void weft__inbox_destroy(weft_loop_t *loop);
/* Any thread. A spawn (is_spawn) is also refused once the loop's pool is
 * shutting down. Returns 0 or WEFT_ESHUTDOWN. */
int weft__inbox_push(weft_loop_t *loop, weft__msg_t *m, bool is_spawn);
bool weft__inbox_park(weft_loop_t *loop);
void weft__inbox_unpark(weft_loop_t *loop);
bool weft__inbox_pending(weft_loop_t *loop);
size_t weft__inbox_drain(weft_loop_t *loop, size_t budget);
void weft__inbox_close(weft_loop_t *loop);
void weft__inbox_quiesce(weft_loop_t *loop);   /* after close: rings written */
void weft__loop_ring(weft_loop_t *loop);                   /* any thread */

/* The file descriptor a parked loop is woken through (lib/arch/wakefd_*.c):
 * signal makes rfd readable, from any thread; drain, on the loop's thread,
 * makes it unreadable again. */
typedef struct weft__wakefd {
  int rfd, wfd;             /* the same fd for an eventfd */
} weft__wakefd_t;
int weft__wakefd_open(weft__wakefd_t *w);
void weft__wakefd_signal(weft__wakefd_t *w);
void weft__wakefd_drain(weft__wakefd_t *w);
void weft__wakefd_close(weft__wakefd_t *w);
/* Blocks until rfd is readable (1) or timeout_ms passed (0; -1 waits
 * without limit), or a signal came (a negative error). lib/arch/wakefd_wait.c */
int weft__wakefd_wait(const weft__wakefd_t *w, int timeout_ms);

/* ------------------------------------------------------------------ stall */

/* What a loop is doing now, published by its thread for any other (a
 * seqlock: seq is odd while it is being written): the task whose step runs
 * (its id, 0 when none; its name, copied when the task changes) and when
 * the step began. weft_dump, weft_loop_stats and the watchdog read it
 * without waiting for the loop (stall.c). */
typedef struct weft__live {
  _Atomic uint64_t seq;
  _Atomic uint64_t task_id;           /* the task of the last step begun */
  _Atomic uint64_t since_ns;          /* coarse clock at the step's start;
                                         0 while no step runs */
  _Atomic uint64_t name[4];           /* the task's name; name[0] 0: none */
  uint64_t named_id;                  /* loop thread: whose name is in name */
  bool unnamed;                       /* loop thread: name holds "" */
} weft__live_t;

/* A snapshot of weft__live_t. */
typedef struct weft__live_view {
  uint64_t since_ns;                  /* the step's start: the same for one step */
  uint64_t task_id;                   /* 0: no step running */
  uint64_t held_ns;                   /* how long it has run so far */
  char name[32];                      /* the task's name ("task-<id>" by default) */
} weft__live_view_t;

static inline void weft__live_write(weft__live_t *l, uint64_t id, uint64_t since) {
  uint64_t s = atomic_load_explicit(&l->seq, memory_order_relaxed);
  atomic_store_explicit(&l->seq, s + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&l->task_id, id, memory_order_relaxed);
  atomic_store_explicit(&l->since_ns, since, memory_order_relaxed);
  atomic_store_explicit(&l->seq, s + 2, memory_order_release);
}
/* Loop thread: a step of t begins (since: its start), or the step ends
 * (after struct weft_loop, below). */
/* Any thread, with the loop alive (its registry entry held). */
void weft__live_read(weft_loop_t *loop, weft__live_view_t *v);
/* The stall watchdog: a thread that, while any loop watching for slow
 * steps exists, reports a step that has held its loop past the threshold
 * while it still runs. Called as such a loop is made and freed. */
void weft__watchdog_add(void);
void weft__watchdog_remove(void);

/* ----------------------------------------------------------------- tasks */

/* Nested deadline scopes a task may have pushed at once (weft_deadline_push
 * returns WEFT_ENOBUFS beyond). */
#define WEFT__DEADLINE_DEPTH 8

/* A task's own deadlines (loop ms; 0 = none). */
typedef struct weft__deadlines {
  uint64_t base;                           /* weft_deadline_set's */
  uint64_t scope[WEFT__DEADLINE_DEPTH];    /* weft_deadline_push's, innermost last */
} weft__deadlines_t;

enum weft__task_state {
  WEFT__NEW = 0,   /* spawned, in the ready queue, never run */
  WEFT__READY,     /* in the ready queue */
  WEFT__RUNNING,   /* the loop's current task */
  WEFT__WAITING,   /* parked on w->wait */
  WEFT__DONE,      /* ended; status final */
};

/* The fields are ordered to leave no holes: the struct's size decides the
 * malloc size class, and one class up costs spawn about 10% in page faults
 * (glibc hands the top of the heap back between bursts). */
struct weft_task {
  weft__queue_t node;        /* ready-queue link: the one scheduling list */
  weft__queue_t all;         /* link in loop->tasks while the task lives */
  weft__queue_t joiners;     /* join nodes of tasks awaiting this one */
  weft__queue_t group_link;  /* link in group->children */
  weft__queue_t cancel_link; /* on a cancel worklist, briefly */
  weft__msg_t spawn_msg;     /* carries a spawn from another thread */
  weft_loop_t *loop;         /* the loop it runs on; freed with the loop */
  pthread_t owner;           /* that loop's thread, kept for after it */
  weft_fn fn;
  void *arg;
  void *result;              /* fn's return value once DONE */
  int status;                /* WEFT_EPENDING until DONE; written once, with
                                release order, so other threads may read it */
  int fail;                  /* weft_task_fail code; 0 if none */
  enum weft__task_state state;
  bool cancelled;            /* sticky cancellation request */
  atomic_bool handle_held;   /* the spawner's handle is not yet released */
  atomic_int refs;           /* the loop's while alive + the handle's */
  uint8_t ndeadlines;        /* scopes pushed (at most WEFT__DEADLINE_DEPTH) */
  uint8_t shield_floor;      /* ndeadlines when the outermost shield began */
  uint16_t shield;           /* weft_shield_begin depth; 0 = not shielded */
  weft__wait_t *wait;        /* while WAITING */
  weft__stack_t *stack;      /* from the first run to the end */
  weft__coro_t coro;
  uint64_t deadline;         /* loop ms; 0 = none: the one await points obey,
                                the earliest of deadlines->base and the pushed
                                scopes (inside a shield, of the scopes pushed
                                since it began only); see weft__deadline_update */
  weft__deadlines_t *deadlines; /* the first weft_deadline_set or _push
                                allocates them: most tasks never do, and a
                                smaller task spawns faster */
  weft__timer_t deadline_timer;
  weft_group_t *group;       /* set for group children */
  uint64_t id;
  uint64_t born_ms;          /* loop time when it joined its loop, for weft_dump */
  uint64_t end_seq;          /* order in which tasks ended, process-wide;
                                written before the status is published */
  unsigned magic;            /* WEFT__TASK_MAGIC while the struct is valid */
  char name[32];
};

#define WEFT__TASK_MAGIC 0x7461736bu /* "task" */

/* Whether a cancel of t takes effect at its await points now: it was asked
 * for, and t is not inside a shielded section (weft_shield_begin). */
static inline bool weft__cancel_pending(const weft_task_t *t) {
  return t->cancelled && t->shield == 0;
}
/* Recomputes t->deadline after a change to its scopes or shield. */
void weft__deadline_update(weft_task_t *t);

int weft__spawn(weft_loop_t *loop, weft_fn fn, void *arg, bool handle, weft_task_t **out,
                const char *caller);
/* weft__spawn in two steps (task.c): make the task, then hand it to its
 * loop; a task publish refuses is the caller's to free. */
int weft__spawn_prepare(weft_loop_t *loop, weft_fn fn, void *arg, bool handle, weft_task_t **out,
                        const char *caller);
int weft__spawn_publish(weft_task_t *t);
void weft__task_unref(weft_task_t *t);
void weft__task_complete(weft_task_t *t, int status);
/* Blocks until t has ended, for t of a loop whose inbox is closed (it ends
 * its last tasks). */
void weft__task_wait_ended(weft_task_t *t);
extern atomic_uint_fast64_t weft__end_seq;
WEFT__TSAN_BARE void weft__task_entry(void) __attribute__((noreturn));

/* Join support (join.c): wakes every task awaiting t, which has ended. */
void weft__join_notify(weft_task_t *t);
/* Group support (group.c): a child of a group has ended. */
/* A group begins with this head, so that a task's end reaches its group
 * through a function the group handed over (group.c), and the core calls
 * nothing of group.c by name: groups, and what they use (semaphores for
 * a limit), stay out of the core's cycle of files. */
typedef struct weft__group_head {
  void (*child_done)(weft_task_t *t);     /* on the child's loop thread */
} weft__group_head_t;

/* ----------------------------------------------------------------- loops */

/* While tasks are ready, libuv is polled (without blocking) at least once
 * every this many rounds, and whenever a timer is due. */
#define WEFT__POLL_EVERY 32

enum weft__goal {
  WEFT__GOAL_TASK,   /* run_until_complete: goal_task has ended */
  WEFT__GOAL_STOP,   /* run_forever: weft_loop_stop was called */
  WEFT__GOAL_EMPTY,  /* close: every task has ended */
};

typedef struct weft__trace weft__trace_t;

/* A loop's inbox (inbox.c): the one way work reaches it from another
 * thread. */
typedef struct weft__inbox {
  pthread_mutex_t lock;
  weft__msg_t *head;
  weft__msg_t *tail;
  atomic_size_t len;
  atomic_int parked;         /* about to block, or blocked, in poll */
  atomic_int rung;           /* a push rang the loop since it parked */
  atomic_int ringing;        /* rings decided but not yet written (taken
                                back under lock) */
  pthread_cond_t quiet;      /* ringing reached 0 after the close */
  bool closed;               /* under lock */
  bool refuse_spawns;        /* under lock: the pool is shutting down */
  atomic_uint_fast64_t wakeups_sent;
  uint64_t wakeups_received;
  uint64_t spin_ns;          /* weft_loop_opts_t.spin_us, in ns: how long an
                                idle loop polls len before it parks; 0 = not */
} weft__inbox_t;

/* A loop's timers (timer.c): one uv_timer_t drives a heap of them. */
/* A heap entry: the timer's key kept beside it (timer.c says why). */
typedef struct weft__timer_entry {
  uint64_t due;
  uint64_t seq;              /* start order: equal dues fire first in, first out */
  weft__timer_t *t;
} weft__timer_entry_t;

typedef struct weft__timers {
  weft__timer_entry_t *heap; /* 4-ary min-heap of timers by (due, seq) */
  size_t len, cap;
  uint64_t seq;
  uint64_t armed_due;        /* due the uv_timer points at; 0 = not armed */
  uint64_t now_ns;           /* uv_hrtime() when the running timer batch began */
} weft__timers_t;

/* A module's hooks into a loop's round (Redis' beforesleep): before_poll
 * runs after the round's steps and inbox, before libuv polls; at_close when
 * the loop closes, after its tasks and streams are gone. A module puts its
 * record (in its own part of the loop) on loop->phases once, with
 * weft__loop_phase_add. */
typedef struct weft__phase {
  weft__queue_t node;
  void (*before_poll)(weft_loop_t *loop);
  void (*at_close)(weft_loop_t *loop);
} weft__phase_t;

/* The stream writes a loop staged in this round (stream.c). */
typedef struct weft__write_stage {
  char *buf;                 /* STAGE_SIZE bytes, made at the first write */
  size_t len;                /* bytes staged */
  weft__queue_t streams;     /* the streams with bytes there */
  weft__phase_t phase;       /* flushes them before the poll */
} weft__write_stage_t;

struct weft_loop {
  uv_loop_t *uv;             /* own_uv, or the application's (adopted) */
  uv_loop_t own_uv;          /* the libuv loop weft made, unless adopted */
  bool adopted;              /* built on the application's uv_loop_t, which the
                                application runs with its own uv_run: tasks
                                then run from the prepare and check phases */
  uv_prepare_t prepare;      /* adopted: runs a round before libuv polls */
  uv_check_t check;          /* adopted: runs a round after libuv polled */
  uv_idle_t idle;            /* adopted: active while tasks are ready, so the
                                application's poll does not block */
  bool embedded_ready;       /* adopted: sched and the overflow watch are set */
  unsigned closing_handles;  /* weft's own handles whose close is pending */
  uv_timer_t timer;          /* fires the earliest weft__timer */
  uv_poll_t wakeup;          /* watches wakefd: other threads ring it */
  weft__wakefd_t wakefd;
  weft__queue_t ready;       /* FIFO of runnable tasks */
  size_t nready;
  size_t round_left;         /* of the round's tasks (at the head of ready),
                                how many have not run yet */
  size_t nwaiting;           /* the waiting set: tasks parked on a wait */
  size_t nlive;              /* tasks not yet ended */
  weft__queue_t tasks;       /* every live task (for close and dumps) */
  weft__coro_t sched;        /* the loop thread's own context */
  weft_task_t *current;      /* the task running now, or NULL */
  weft__timers_t timers;     /* timer.c's */
  weft__stack_pool_t stacks;
  pthread_t owner;           /* the only thread that may drive the loop */
  bool running;
  bool closing;
  enum weft__goal goal;      /* what the running run function waits for */
  weft_task_t *goal_task;    /* for WEFT__GOAL_TASK */
  atomic_int stop;           /* weft_loop_stop requested */
  atomic_uint_fast64_t next_id;  /* spawns from any thread draw ids */
  uint64_t round;
  unsigned rounds_unpolled;  /* rounds since libuv was last polled */
  weft_stats_t counters;
  weft_loop_event_fn on_event;
  void *event_arg;
  weft__inbox_t inbox;       /* inbox.c's */
  char name[32];
  weft__trace_t *trace;      /* its trace ring while tracing (trace.c) */
  weft__queue_t registry;    /* on the process-wide list of loops (stats.c) */
  uint64_t run_ns;           /* time in run functions, runs ended so far */
  uint64_t run_since;        /* uv_hrtime() when the current run began */
  uint64_t parked_ns;        /* time in the blocking poll, polls ended so far */
  uint64_t park_since;       /* uv_hrtime() the poll began, while in it; or 0 */
  bool in_uv_run;            /* inside a round's uv_run: a wake must stop it */
  atomic_bool uv_lent;       /* weft_loop_uv gave the libuv loop away */
  uint64_t step_clock;       /* coarse ns the next task step starts from */
  uint64_t slow_ns;          /* slow-step threshold; 0 = off */
  weft_pool_t *pool;         /* the pool this loop works for, or NULL */
  unsigned pool_index;       /* its place in the pool */
  weft__queue_t io;          /* weft__io_t: weft's own open libuv handles */
  weft__write_stage_t stage; /* stream.c's */
  weft__queue_t phases;      /* weft__phase_t: modules' before-poll and
                                close hooks, in the order they came */
  size_t nio;
  atomic_int draining;       /* a pool shutdown asked it to finish */
  atomic_int cancel_new;     /* WEFT_CANCEL shutdown: tasks not yet started
                                end cancelled without running */
  weft__live_t live;         /* the step running now, for other threads (stall.c) */
  /* Cold: the watchdog's (stall.c), last so as not to spread the fields
   * a step touches over more cache lines. */
  uint64_t wd_since;         /* watchdog thread only: the step it reports on */
  uint64_t wd_next_ns;       /* and how long that step must last for its next line */
  struct {                   /* a stalled step's call stack, taken by a signal */
    _Atomic uint64_t asked;  /* the watchdog's request number */
    _Atomic uint64_t taken;  /* the handler's answer: the request it served */
    _Atomic size_t n;
    void *pcs[32];
  } stall_bt;
};

/* The step of t begins on loop (since: its start). Only a task other than
 * the last one whose name was published pays for copying its name. */
static inline void weft__live_begin(weft_loop_t *loop, weft_task_t *t, uint64_t since) {
  weft__live_t *l = &loop->live;
  /* The same task again (a task that yields in a loop): its id and name
   * are there already, and a reader that sees the new start with them
   * sees the truth. */
  if (l->named_id == t->id) {
    atomic_store_explicit(&l->since_ns, since, memory_order_relaxed);
    return;
  }
  /* Most tasks have no name of their own: readers make "task-<id>". */
  if (l->unnamed && !t->name[0]) {
    l->named_id = t->id;
    weft__live_write(l, t->id, since);
    return;
  }
  uint64_t s = atomic_load_explicit(&l->seq, memory_order_relaxed);
  atomic_store_explicit(&l->seq, s + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  uint64_t w[4];
  memcpy(w, t->name, sizeof w);
  for (int i = 0; i < 4; i++)
    atomic_store_explicit(&l->name[i], w[i], memory_order_relaxed);
  l->named_id = t->id;
  l->unnamed = !t->name[0];
  atomic_store_explicit(&l->task_id, t->id, memory_order_relaxed);
  atomic_store_explicit(&l->since_ns, since, memory_order_relaxed);
  atomic_store_explicit(&l->seq, s + 2, memory_order_release);
}

/* The step ends: a start of 0 says no step runs (one store a step). */
static inline void weft__live_end(weft_loop_t *loop) {
  atomic_store_explicit(&loop->live.since_ns, 0, memory_order_relaxed);
}

/* Thread state: the loop this thread runs (set while a run function is on
 * the stack) and the one it is bound to (weft_loop_set_current). */
typedef struct weft__tls {
  weft_loop_t *running;
  weft_loop_t *bound;
} weft__tls_t;
extern _Thread_local weft__tls_t weft__tls;

static inline weft_task_t *weft__current(void) {
  weft_loop_t *l = weft__tls.running;
  return l ? l->current : NULL;
}

int weft__await_begin(weft_task_t **out, const char *fn);

static inline int weft__waiter_caller(weft_task_t **t, const char *fn) {
  weft_loop_t *l = weft__tls.running;
  *t = NULL;
  if (!l)
    return 0;
  weft_task_t *cur = l->current;
  /* A task with no cancel and no deadline: nothing to check. */
  if (cur && !cur->cancelled && !cur->deadline) {
    *t = cur;
    return 0;
  }
  return weft__await_begin(t, fn);
}

static inline bool weft__on_owner(const weft_loop_t *loop) {
  return pthread_equal(loop->owner, pthread_self()) != 0;
}

/* The loop's cached time in ms: what uv_now returns, read from the field
 * itself (declared in uv/unix.h; libuv keeps its layout within a major
 * version) because uv_now is not inline and this is read at every await
 * point that runs under a deadline. */
static inline uint64_t weft__now(weft_loop_t *loop) {
  return loop->uv->time;
}

/* ----------------------------------------------------------- clock.c */

uint64_t weft__coarse_ns(void);
/* Whether the loop's time has reached due: from the cached time or the
 * coarse clock when they cannot be wrong while the kernel's tick keeps time,
 * else from a precise read (which updates the loop's time). Never true
 * early; may be false late where the tick was held off. */
bool weft__clock_reached(weft_loop_t *loop, uint64_t due);

void weft__emit(weft_loop_t *loop, weft_loop_event_kind_t kind, weft_task_t *t,
                weft_wait_kind_t wait, int detail, int status);
#define WEFT__EMIT(loop, ...) \
  do { if ((loop)->on_event || (loop)->trace) weft__emit((loop), __VA_ARGS__); } while (0)

/* trace.c */
void weft__trace_loop_new(weft_loop_t *loop);
void weft__trace_record(weft_loop_t *loop, const weft_loop_event_t *ev);
bool weft__trace_flow(weft_loop_t *loop, bool out, uint64_t id);

void weft__ready(weft_loop_t *loop, weft_task_t *t);
int weft__loop_close(weft_loop_t *loop, bool free_it);
void weft__loop_free(weft_loop_t *loop);
/* A draining pool loop with nothing left to do. */
bool weft__loop_drained(weft_loop_t *loop);
/* Suspends the current task on w until weft__wake. Returns w->result. */
int weft__park(weft__wait_t *w);
void weft__wake(weft__wait_t *w, int result, weft_wake_cause_t cause);
/* Cancellation or a deadline reaches a task: cut its wait if it has one. */
void weft__interrupt(weft_task_t *t, int err);
/* The checks every await point makes first: ENOTASK, sticky cancel, passed
 * deadline. On success *out is the current task. */
int weft__await_begin(weft_task_t **out, const char *fn);

/* chan.c, for tests: runs between a send's claim of a cell and its write. */
extern void (*weft__chan_claimed_hook)(weft_chan_t *ch);
/* signal.c, for tests: how many wait for signum now, and whether a signal
 * is held for the next wait. WEFT_EINVAL for a signal one cannot wait for. */
int weft__signal_state(int signum, size_t *waiters, bool *pending);

/* ------------------------------------------------------------------ I/O */

/* One libuv handle weft opened on a loop for a task (a stream's socket, an
 * accept's poll). The loop keeps them on a list, so that closing the loop
 * tells them from the application's own handles, and closes those whose
 * owner left them open. */
typedef struct weft__io weft__io_t;
struct weft__io {
  weft__queue_t node;
  uv_handle_t *handle;
  void (*force_close)(weft__io_t *io);  /* at loop close: close and free */
};
void weft__io_add(weft_loop_t *loop, weft__io_t *io, uv_handle_t *h,
                  void (*force_close)(weft__io_t *io));
void weft__io_remove(weft_loop_t *loop, weft__io_t *io);
/* Whether h is one of loop's own handles or weft's I/O handles on it. */
bool weft__loop_owns_handle(weft_loop_t *loop, const uv_handle_t *h);

/* stream.c: a stream on loop for a connected socket fd (taken over: closed
 * on failure too). on_close(arg) runs once when the stream closes or is
 * detached (the listener's per-loop count). */
int weft__stream_from_fd(weft_loop_t *loop, int fd, void (*on_close)(void *arg), void *arg,
                         weft_stream_t **out);
void weft__ignore_sigpipe(void);
/* stream.c, for tcp.c's connect: a stream on a fresh handle of loop; its
 * handle; closing that handle (the close frees the stream). */
int weft__stream_new(weft_loop_t *loop, weft_stream_t **out);
uv_tcp_t *weft__stream_handle(weft_stream_t *s);
void weft__stream_close_handle(weft_stream_t *s);
/* stream.c: a stream filter, the hook TLS (lib/tls.c, its own library
 * weft_tls) fills, so that weft_stream_read, the framed reads, write,
 * shutdown and close carry a protocol's plaintext while the socket carries
 * its records. The core never names the protocol's library: it hands the
 * filter what the socket read (feed), asks it for plaintext to put in the
 * read-ahead buffer (pull), hands it what the application writes (seal),
 * and tells it of a close or shutdown (close_notify). The filter hands its
 * bytes for the socket back with weft__stream_send_raw. All on the
 * stream's loop; none of them waits. These and weft__stream_send_raw are
 * exported from the shared library too (weft_tls links against either). */
typedef struct weft__filter_ops {
  /* Takes p[0, len), read from the socket. 0, or an error. */
  int (*feed)(void *ctx, const char *p, size_t len);
  /* Puts plaintext in out[0, len): the count (> 0), 0 when it needs more
   * from the socket, WEFT_EOF at the peer's orderly end, or an error. */
  ssize_t (*pull)(void *ctx, weft_stream_t *s, char *out, size_t len);
  /* Takes p[0, len) (at most WEFT__FILTER_CHUNK) and sends what it makes
   * of it (weft__stream_send_raw), whole: 0, or an error. */
  int (*seal)(void *ctx, weft_stream_t *s, const char *p, size_t len);
  /* Before a shutdown or close: sends the protocol's end, best effort. */
  void (*close_notify)(void *ctx, weft_stream_t *s);
  /* When the stream is freed. */
  void (*free)(void *ctx);
} weft__filter_ops_t;
#define WEFT__FILTER_CHUNK ((size_t)16 << 10)
#if defined(__GNUC__)
#define WEFT__EXPORT __attribute__((visibility("default")))
#else
#define WEFT__EXPORT
#endif
/* Puts the filter on s (a bound stream with no reader and no filter): what
 * s read ahead is fed to it first. s owns ctx from then on (ops->free).
 * WEFT_EINVAL, WEFT_EBUSY (a reader), WEFT_EPERM (detached, another loop). */
WEFT__EXPORT int weft__stream_set_filter(weft_stream_t *s, const weft__filter_ops_t *ops,
                                         void *ctx);
/* s's filter context if its filter is ops, else NULL. */
WEFT__EXPORT void *weft__stream_filter(const weft_stream_t *s, const weft__filter_ops_t *ops);
/* Sends p[0, len) on s below its filter: staged, written or queued (never
 * waits; the queue may pass its limit by one piece). 0 or the write error. */
WEFT__EXPORT int weft__stream_send_raw(weft_stream_t *s, const char *p, size_t len);
/* loop.c: puts a module's phase record on the loop, once. */
void weft__loop_phase_add(weft_loop_t *loop, weft__phase_t *ph);
/* tcp.c: parses host and port into a socket address. */
int weft__tcp_addr(const char *host, int port, struct sockaddr_storage *ss);
/* The port a socket is bound to (tcp.c); -1 if none (a Unix-domain one). */
int weft__fd_port(int fd);

/* tcp.c: a listener of opts->mode (checked, misuse named after fn) whose
 * listening sockets open() makes: one, or one per pool loop for REUSEPORT
 * (reuseport true then). path: a Unix-domain listener's file, removed by
 * weft_listener_close if still the one bound; or NULL. On failure every
 * socket open() made is closed. unix.c's and adopted listeners use it. */
typedef int (*weft__listen_open_fn)(void *ctx, bool reuseport, int backlog, int *fd);
int weft__listener_new(weft_listener_t **out, const weft_listen_opts_t *opts, const char *fn,
                       weft__listen_open_fn open, void *ctx, const char *path);
/* stream.c: checks that fd is a stream socket (TCP or Unix-domain),
 * listening or not as asked; *family gets its family. Errors: WEFT_EINVAL
 * (another kind of socket, or fd < 0), UV_EBADF, UV_ENOTSOCK. */
int weft__sock_check(int fd, bool listening, int *family);

/* resolve.c: host names to addresses on weft's own resolver threads. */
#define WEFT__ADDRS_MAX 16
typedef struct weft__addrs {
  size_t n;                                  /* addresses in a */
  struct sockaddr_storage a[WEFT__ADDRS_MAX]; /* getaddrinfo's order (RFC 6724), ports set */
} weft__addrs_t;
/* Whether host may be handed to the resolver: letters, digits, '-', '_'
 * and dots, labels of 1 to 63, at most 253 bytes in all. */
bool weft__resolve_name_ok(const char *host);
/* Resolves the name host for TCP on port into *out (IPv4 and IPv6, no
 * duplicates). t: the calling task, which waits for a resolver thread
 * (await point: a cut leaves at once, the thread frees what it finds);
 * NULL: the calling plain thread resolves inline. passive: for a listener.
 * Errors: UV_EAI_* (UV_EAI_NONAME: unknown), WEFT_ENOBUFS (the resolver's
 * queue is full), WEFT_ENOMEM, WEFT_ECANCELED, WEFT_ETIMEDOUT,
 * WEFT_ESHUTDOWN (the process is exiting). */
int weft__resolve(weft_task_t *t, const char *host, int port, bool passive, weft__addrs_t *out);
/* Resolver threads running now (for tests). */
unsigned weft__resolve_threads(void);

/* overflow.c: the SIGSEGV report of a guarded stack's overflow, for this
 * thread. */
void weft__stack_overflow_watch(void);

/* ----------------------------------------------------------- stats.c */

void weft__step_timed(weft_loop_t *loop, weft_task_t *t, uint64_t ns);
void weft__callbacks_timed(weft_loop_t *loop, uint64_t ns);
/* The slow-callback watch around a round's poll: the time libuv's
 * callbacks held the loop, blocked time (libuv's idle time, and waited_ns
 * parked on the wake-up fd) not counted. Costs nothing while slow steps
 * are not watched. */
typedef struct weft__poll_watch {
  uint64_t t0, idle0;
} weft__poll_watch_t;
void weft__poll_watch_begin(weft_loop_t *loop, weft__poll_watch_t *w);
void weft__poll_watch_end(weft_loop_t *loop, const weft__poll_watch_t *w, uint64_t waited_ns);

/* -------------------------------------------------------- registry.c */

void weft__loops_add(weft_loop_t *loop, const char *name);
void weft__loops_remove(weft_loop_t *loop);
size_t weft__loops_each(weft__msg_t *(*make)(weft_loop_t *loop, void *arg), void *arg);
/* Runs fn(loop, arg) under the registry's lock if loop is still registered
 * (not yet freed), for a caller that holds nothing that keeps loop alive;
 * compares pointers only, so loop may be dangling. Returns whether it ran. */
bool weft__loops_with(weft_loop_t *loop, void (*fn)(weft_loop_t *loop, void *arg), void *arg);
/* The weft loop built on uv, or NULL. */
weft_loop_t *weft__loops_find_uv(const uv_loop_t *uv);
/* Installs handler (SA_SIGINFO | flags) for sig if nobody handles it yet
 * (signal.c); false if sig is taken or sigaction failed. */
bool weft__sig_claim(int sig, void (*handler)(int, siginfo_t *, void *), int flags);
/* weft_loop_stats; wait: also for a loop held by a long step, where
 * weft_loop_stats names the task instead (WEFT_EAGAIN). stats.c */
int weft__loop_stats(weft_loop_t *loop, weft_stats_t *out, bool wait);
/* Calls fn for every loop, under the list's lock (none is freed meanwhile). */
void weft__loops_visit(void (*fn)(weft_loop_t *loop, void *arg), void *arg);
/* trace.c's part of the fork guard, handed to the registry. */
void weft__fork_guard_trace(void (*prepare)(void), void (*done)(void));
void weft__trace_fork_prepare(void);
void weft__trace_fork_done(void);

/* --------------------------------------------------------------- alloc.c */

/* Every allocation in lib/ goes through these (the nth from now fails after
 * weft__alloc_fail_nth(n), for tests). */
void *weft__malloc(size_t n);
void *weft__calloc(size_t n, size_t size);
void *weft__realloc(void *p, size_t n);
void *weft__aligned_alloc(size_t align, size_t n);
void weft__alloc_fail_nth(long n);
/* n zeroed bytes whose cost does not grow with n until they are touched
 * (large blocks are mapped from the kernel); free with weft__zfree(p, n). */
void *weft__zalloc(size_t n);
void weft__zfree(void *p, size_t n);

/* ------------------------------------------------------------- diag.c */

/* Debug builds, or WEFT_DEBUG set to anything but "" or "0". */
bool weft__debug_enabled(void);
/* The slow-step threshold: opt_ms, else 100 ms with WEFT_DEBUG, else off. */
uint64_t weft__slow_default_ns(uint64_t opt_ms);
/* One line to the log sink (weft_log_set), or stderr. */
void weft__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void weft__log_fork_prepare(void);
void weft__log_fork_done(bool child);
/* Registers the fork guard (registry.c) once: from the first loop, and
 * from the first weft_log_set, whose sink calls a fork must not inherit. */
void weft__fork_guard_once(void);
/* "weft: fn: <sentence>" to the sink, in debug mode only. */
void weft__misuse(const char *fn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "weft: fatal: <sentence>" to the sink and stderr, then abort. */
void weft__fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#if defined(WEFT_DEBUG_BUILD)
#define WEFT__ASSERT(cond) \
  do { if (!(cond)) weft__fatal("assertion failed: %s (%s:%d)", #cond, __FILE__, __LINE__); } while (0)
#else
#define WEFT__ASSERT(cond) ((void)0)
#endif

/* ------------------------------------------------------------ backtraces */

/* The resume pc (a return address) and frame pointer of a suspended
 * context, read from what the switch saved (lib/arch/frames.c); false if
 * this switch or processor has no known layout. */
bool weft__ctx_frame(const weft__ctx_t *ctx, uintptr_t *pc, uintptr_t *fp);
/* The interrupted pc, frame and stack pointers in a signal handler's
 * ucontext (lib/arch/frames.c); false where unknown. */
bool weft__ucontext_frame(const void *uc, uintptr_t *pc, uintptr_t *fp, uintptr_t *sp);
/* Walks the frame-pointer chain from pc and fp within [lo, hi): return
 * addresses into pcs, innermost first, at most max. Async-signal-safe: it
 * only reads words inside the bounds. */
size_t weft__frames_walk(uintptr_t pc, uintptr_t fp, uintptr_t lo, uintptr_t hi, void **pcs,
                         size_t max);
/* A parked task's return addresses, innermost first, by walking frame
 * pointers from its saved context inside its stack's bounds; at most max.
 * Loop thread, task not running (lib/backtrace.c). */
size_t weft__task_frames(const weft_task_t *t, void **pcs, size_t max);
/* One line per frame, "<indent>#i function+0xOFF (object)" (dladdr), weft's
 * own frames above the await function left out. */
void weft__frames_print(FILE *f, void *const *pcs, size_t n, const char *indent);
/* Both, for weft_dump: a WAITING or READY task that has run; else nothing. */
void weft__task_backtrace_print(FILE *f, const weft_task_t *t, const char *indent);

#endif /* WEFT_INTERNAL_H */
