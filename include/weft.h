/** @file
 * weft: asyncio's execution model for C, on one libuv loop per thread.
 *
 * This header is the whole public API. Each function says which thread may
 * call it, whether it suspends the calling task (an "await point"), who owns
 * what, and every error it returns.
 *
 * Conventions
 * - Every function returns 0 or a negative WEFT_E* code, unless it returns a
 *   pointer or a size. weft_strerror() names every code. Codes equal libuv's
 *   where libuv has one (WEFT_ECANCELED == UV_ECANCELED, ...).
 * - A call that fails leaves nothing pending: no task was spawned, no timer
 *   armed, no waiter registered.
 * - "Loop-bound" functions must be called on the thread that owns the loop
 *   (the thread that created it). A call from another thread returns
 *   WEFT_EPERM and, in debug builds or with WEFT_DEBUG=1 in the environment,
 *   prints a sentence saying what was misused.
 * - An "await point" suspends the calling task and lets its loop run others.
 *   Called outside a task it returns WEFT_ENOTASK. Every await point of a
 *   task that has been cancelled returns WEFT_ECANCELED at once (cancellation
 *   is sticky, so the task unwinds), and every await point of a task whose
 *   deadline has passed returns WEFT_ETIMEDOUT at once. "Passed" is by the
 *   loop's clock: an await point reads the precise clock only where the
 *   cached loop time (read at every poll, and by weft_deadline_set) could
 *   be wrong by the coarse clock's measure. Where the kernel's tick was held
 *   off (a virtual CPU the host did not run), that measure can miss a
 *   deadline passed a few ms before: the await then goes on as if it were
 *   still ahead (it may complete at once), and a wait it begins is cut at
 *   the loop's next poll. Never early: no await sees a deadline before it.
 * - Out-parameters: a call that makes a new object takes the pointer that
 *   receives it first (weft_chan_new(&ch, cap), weft_tcp_connect(&s, host,
 *   port)); a call on an existing object takes that object first and its
 *   out-parameters after (weft_tcp_accept(l, &s), weft_chan_recv(ch, &msg)).
 */
#ifndef WEFT_H
#define WEFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* uv.h (below) declares pthread_rwlock_t and other POSIX types, which glibc
 * hides under strict ISO C (-std=c11, CMake's C_EXTENSIONS OFF). weft::weft
 * and weft.pc pass -D_DEFAULT_SOURCE for that; a build that passes neither
 * gets this sentence rather than an error deep inside uv/unix.h. */
#if defined(__GLIBC__) && !defined(__USE_XOPEN2K)
#error "weft.h needs POSIX declarations that strict ISO C hides: compile with -D_DEFAULT_SOURCE (weft.pc and the weft::weft CMake target add it) or define _POSIX_C_SOURCE 200809L before the first #include"
#endif
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WEFT_VERSION_MAJOR 0
#define WEFT_VERSION_MINOR 1
#define WEFT_VERSION_PATCH 0

#if defined(__GNUC__) && !defined(WEFT_STATIC)
#define WEFT_API __attribute__((visibility("default")))
#else
#define WEFT_API
#endif

/* ---------------------------------------------------------------- errors */

#define WEFT_EINVAL UV_EINVAL       /**< bad argument (NULL, wrong loop, ...) */
#define WEFT_ENOMEM UV_ENOMEM       /**< out of memory or address space */
#define WEFT_EBUSY UV_EBUSY         /**< loop running, or a loop already runs here */
#define WEFT_EAGAIN UV_EAGAIN       /**< would have to wait (try_* calls) */
#define WEFT_ECANCELED UV_ECANCELED /**< the task was cancelled */
#define WEFT_ETIMEDOUT UV_ETIMEDOUT /**< a timeout or the task's deadline passed */
#define WEFT_EPERM UV_EPERM         /**< called from a thread that does not own the loop */
#define WEFT_EALREADY UV_EALREADY   /**< nothing to do: the task has already ended */
#define WEFT_ESHUTDOWN UV_ESHUTDOWN /**< the loop or pool is closing and takes no more work */
#define WEFT_ENOTASK (-30001)       /**< an await point was called outside a task */
#define WEFT_EPENDING (-30002)      /**< the task has not ended yet */
#define WEFT_ECLOSED (-30003)       /**< the channel or object is closed */
#define WEFT_EDEADLK (-30004)       /**< a task tried to await itself */
#define WEFT_ENOBUFS UV_ENOBUFS     /**< a bounded resource is full (nested deadline scopes, ...) */
#define WEFT_EOF UV_EOF             /**< the peer closed the stream first */

/** A timeout that never ends (weft_select's, and wherever a timeout in ms is taken). */
#define WEFT_FOREVER UINT64_MAX

/** Returns a static English sentence naming err (any WEFT_E* code, any libuv
 * code, or a code a task passed to weft_task_fail). Any thread. Never NULL. */
WEFT_API const char *weft_strerror(int err);

/** "0.1.0". Any thread. */
WEFT_API const char *weft_version_string(void);

/* ----------------------------------------------------------------- types */

typedef struct weft_loop weft_loop_t;
typedef struct weft_task weft_task_t;
typedef struct weft_group weft_group_t;
typedef struct weft_pool weft_pool_t;
typedef struct weft_chan weft_chan_t;
typedef struct weft_listener weft_listener_t;
typedef struct weft_stream weft_stream_t;
typedef struct weft_sem weft_sem_t;
typedef struct weft_mutex weft_mutex_t;
typedef struct weft_event weft_event_t;
typedef struct weft_cond weft_cond_t;
typedef struct weft_udp weft_udp_t;

/** A task body. It runs on its own stack and may call await points; what it
 * returns is the task's result. To end with an error, call weft_task_fail()
 * and then return. */
typedef void *(*weft_fn)(void *arg);

/** What a loop reports to an event hook (weft_loop_opts_t.on_event). The hook
 * runs on the loop's thread as the scheduler records events, for some of
 * them on the stack of the task whose step just ended (keep it small), and
 * must not call await points, spawn, or cancel: it is for recording what
 * happens. */
typedef enum weft_loop_event_kind {
  WEFT_EV_ROUND = 1,  /**< a scheduling round begins; .count = tasks ready */
  WEFT_EV_STEP,       /**< .task starts running a step */
  WEFT_EV_PARK,       /**< .task stopped its step at the await .wait */
  WEFT_EV_WAKE,       /**< .task made ready again by .wait's completion (.detail = cause) */
  WEFT_EV_DONE,       /**< .task ended; .status = its final status */
  WEFT_EV_SPAWN,      /**< .task was created */
} weft_loop_event_kind_t;

/** What a parked task waits on; also names .detail for WEFT_EV_WAKE. */
typedef enum weft_wait_kind {
  WEFT_WAIT_NONE = 0,
  WEFT_WAIT_YIELD,   /**< weft_yield: back of the ready queue */
  WEFT_WAIT_SLEEP,   /**< weft_sleep: a timer */
  WEFT_WAIT_JOIN,    /**< weft_await / weft_gather / weft_wait_for / weft_group_wait */
  WEFT_WAIT_THREAD,  /**< weft_to_thread */
  WEFT_WAIT_CHAN,    /**< weft_chan_send / weft_chan_recv */
  WEFT_WAIT_ACCEPT,  /**< weft_tcp_accept */
  WEFT_WAIT_CONNECT, /**< weft_tcp_connect */
  WEFT_WAIT_READ,    /**< weft_stream_read */
  WEFT_WAIT_WRITE,   /**< weft_stream_write, close or detach: the write queue */
  WEFT_WAIT_SEM,     /**< weft_sem_acquire */
  WEFT_WAIT_MUTEX,   /**< weft_mutex_lock, or weft_cond_wait taking its mutex back */
  WEFT_WAIT_EVENT,   /**< weft_event_wait */
  WEFT_WAIT_COND,    /**< weft_cond_wait */
  WEFT_WAIT_SELECT,  /**< weft_select */
  WEFT_WAIT_RESOLVE, /**< a host name's resolution (weft_tcp_connect, weft_tcp_listen) */
  WEFT_WAIT_DATAGRAM, /**< weft_udp_recv, weft_udp_send (a full send buffer) */
  WEFT_WAIT_SIGNAL,  /**< weft_signal_wait */
} weft_wait_kind_t;

/** Why a task was made ready (WEFT_EV_WAKE's .detail). */
typedef enum weft_wake_cause {
  WEFT_WAKE_DONE = 0,  /**< what it waited for happened (timer fired, task ended) */
  WEFT_WAKE_CANCEL,    /**< it was cancelled */
  WEFT_WAKE_DEADLINE,  /**< its deadline or a wait_for timeout passed */
} weft_wake_cause_t;

typedef struct weft_loop_event {
  weft_loop_event_kind_t kind;
  uint64_t time_ns;        /**< monotonic clock (uv_hrtime) when it happened */
  uint64_t round;          /**< the scheduling round it happened in */
  weft_task_t *task;       /**< NULL for WEFT_EV_ROUND */
  weft_wait_kind_t wait;   /**< for PARK and WAKE */
  int detail;              /**< WAKE: a weft_wake_cause_t; PARK on SLEEP: the ms asked */
  int status;              /**< DONE: the task's final status */
  size_t count;            /**< ROUND: tasks in the ready queue */
} weft_loop_event_t;

typedef void (*weft_loop_event_fn)(const weft_loop_event_t *ev, void *arg);

/** Options for weft_loop_new. Zero every field you do not set: a zero means
 * the default. */
typedef struct weft_loop_opts {
  size_t stack_size;      /**< bytes of stack per task; 0 = WEFT_STACK_SIZE_DEFAULT.
                             Rounded up to whole pages; at least WEFT_STACK_SIZE_MIN. */
  size_t stack_pool_max;  /**< warm stacks kept for reuse; 0 = 1024 */
  weft_loop_event_fn on_event; /**< optional hook, see weft_loop_event_t */
  void *event_arg;        /**< passed to on_event */
  const char *name;       /**< the loop's name (copied, at most 31 bytes kept);
                               NULL: "loop-<n>", or "weft-<i>" for a pool's loop i */
  uint64_t slow_step_ms;  /**< log a task step or a burst of libuv callbacks
                               that holds the loop this long (see weft_log_set);
                               0: off, unless WEFT_DEBUG=1 is in the environment,
                               which makes it 100 */
  uv_loop_t *uv;          /**< NULL: weft makes its own libuv loop. Else the
                               application's own, already initialised, which
                               it keeps running with its own uv_run on the
                               thread that calls weft_loop_new: weft adds a
                               prepare, a check and an idle handle to it and
                               runs ready tasks from those phases, so an
                               application can adopt weft step by step. Such
                               a loop is closed by weft_loop_close outside the
                               application's uv_run (the application then
                               closes its libuv loop itself); weft_loop_run_*
                               work on it too, outside uv_run. A pool ignores
                               this field. */
  unsigned spin_us;       /**< microseconds a loop with nothing to run polls
                               its inbox before it parks; 0 (the default):
                               park at once. Once its tasks, messages and
                               callbacks are done, such a loop watches the
                               inbox's length for up to spin_us (with the
                               processor's pause hint) and runs a message
                               from another thread the moment it lands, with
                               no wake-up system call on either side: a
                               cross-loop channel round trip took 1.6-2.6 us
                               with spin_us = 50 against 4-70 us parked
                               (./run bench: pingpong_spin_rtt_us). The
                               spin happens only where the loop would park on its wake-up fd alone
                               (no I/O handle, request or lent libuv loop: a
                               loop with I/O parks at once, so a spin never
                               delays I/O), never past the next due timer
                               (it stops a millisecond before it), and only
                               once after each wake-up or burst of work: an
                               idle loop costs no CPU (./run bench:
                               idle_spin_pool_cpu_pct, 0.00-0.02%), while
                               a loop woken every few ms spins up to spin_us after each wake.
                               The spin counts as busy time in weft_stats_t.
                               Default 0, because the spin burns a core for
                               up to spin_us after every burst of work, which
                               a process that shares its machine pays for
                               and a server with I/O does not use; set it
                               (50 in the bench) for pools whose loops hand
                               work to each other.
                               At most 1000000 (1 s). */
} weft_loop_opts_t;

/** A task's stack when weft_loop_opts_t.stack_size is 0: 128 KiB (256 KiB
 * before 0.x; CHANGELOG). Only the pages a task touches cost memory; the
 * size sets the address space each stack spans, and the page tables that
 * span needs, which a burst of a million tasks pays for (README,
 * Limits). A deeper stack overflows into its guard and the process dies
 * with the task's name: set stack_size for tasks that need more. */
#define WEFT_STACK_SIZE_DEFAULT (128u * 1024u)
#define WEFT_STACK_SIZE_MIN (16u * 1024u)

/** Counters a loop keeps; see weft_loop_stats. */
typedef struct weft_stats {
  uint64_t spawned;    /**< tasks created on this loop */
  uint64_t finished;   /**< tasks ended with status 0 */
  uint64_t failed;     /**< tasks ended with a failure other than cancellation */
  uint64_t cancelled;  /**< tasks ended with WEFT_ECANCELED */
  uint64_t switches;   /**< steps run: each resumes a task (a context switch,
                            but for a task that yields alone on its loop and
                            goes on with no switch) */
  uint64_t rounds;     /**< scheduling rounds */
  size_t ready;        /**< tasks in the ready queue now */
  size_t waiting;      /**< tasks parked on an await now */
  size_t live;         /**< tasks not yet ended (ready + waiting + running) */
  size_t stacks_pooled;    /**< warm stacks in the pool */
  size_t stacks_guarded;   /**< stacks of this loop with a guard page */
  size_t stacks_canary;    /**< slab stacks without one (canary-checked) made so far */
  uint64_t inbox_in;       /**< messages from other threads run by the loop */
  uint64_t wakeups_sent;   /**< rings of the parked loop by other threads */
  uint64_t wakeups_received; /**< rings the loop woke up to (sends coalesce) */
  uint64_t busy_ns;        /**< time running (tasks, callbacks, the scheduler) */
  uint64_t parked_ns;      /**< time waiting (in libuv's poll, or on the
                                wake-up fd alone) when the loop had nothing to
                                run, the callbacks that woke it included */
  uint64_t longest_step_ns; /**< the longest task step so far (timed with the
                                coarse monotonic clock: a few ms resolution) */
  uint64_t slow_steps;     /**< steps and callback bursts over slow_step_ms */
  uint64_t stream_writes;  /**< write system calls the loop's streams made
                                (the small writes of a round coalesce into
                                one a stream; libuv's later writes of what
                                the socket did not take are not counted) */
  char held_by[32];        /**< the task whose step holds the loop now ("" if
                                none: the loop is between steps, polling or
                                running libuv callbacks) */
  uint64_t held_ms;        /**< how long that step has run so far */
} weft_stats_t;

/* ------------------------------------------------------------ high level */

/** asyncio.run(main()): creates a loop, runs main(arg) as a task until it
 * ends, cancels every task still pending and lets them unwind, closes the
 * loop. *result (if result is not NULL) gets main's return value.
 * Returns main's final status (0, what it passed to weft_task_fail, or
 * WEFT_ECANCELED), or: WEFT_EBUSY if this thread is already running a loop
 * (no nesting); WEFT_EINVAL if main is NULL; WEFT_ENOMEM.
 * Any thread that is not running a loop; may be called again afterwards. */
WEFT_API int weft_run(weft_fn main, void *arg, void **result);

/* ----------------------------------------------------------------- loops */

/** asyncio.new_event_loop(): a new loop owned by the calling thread. opts may
 * be NULL. The loop is reusable until weft_loop_close(). Returns WEFT_EINVAL
 * (loop NULL, or a stack size too large), WEFT_ENOMEM, or a libuv error. */
WEFT_API int weft_loop_new(weft_loop_t **loop, const weft_loop_opts_t *opts);

/** asyncio.set_event_loop(): makes loop the calling thread's current loop
 * (what weft_loop_current() and weft_spawn(NULL, ...) use outside a task).
 * NULL unbinds. Returns WEFT_EPERM if the loop is owned by another thread. */
WEFT_API int weft_loop_set_current(weft_loop_t *loop);

/** The loop running on this thread if there is one, else the one bound with
 * weft_loop_set_current, else NULL. Any thread. */
WEFT_API weft_loop_t *weft_loop_current(void);

/** loop.run_until_complete(task): runs loop until task ends, then returns the
 * task's final status; *result gets its return value. May be called again
 * later with new tasks. Loop-bound. Errors: WEFT_EINVAL (NULL, or task of
 * another loop), WEFT_EBUSY (this thread is already running a loop, e.g.
 * called from inside a task), WEFT_EPERM (wrong thread). */
WEFT_API int weft_loop_run_until_complete(weft_loop_t *loop, weft_task_t *task, void **result);

/** loop.run_forever(): runs loop until weft_loop_stop(). A stop requested
 * before the call makes it run one round and return. Loop-bound. Errors as
 * weft_loop_run_until_complete. */
WEFT_API int weft_loop_run_forever(weft_loop_t *loop);

/** loop.stop(): asks a running loop to return from weft_loop_run_forever at
 * the end of its current round. Any thread, as long as the loop has not been
 * closed (a pool's loops: until weft_pool_shutdown returns). WEFT_EINVAL if
 * loop is NULL. */
WEFT_API int weft_loop_stop(weft_loop_t *loop);

/** loop.close(): cancels every task still pending on the loop, runs them until
 * they have unwound, frees them (a task whose handle is still held stays
 * readable until weft_task_release), frees every stack and closes the libuv
 * loop. Loop-bound. It frees the loop itself, so every call other threads
 * make on it (weft_spawn, weft_loop_call_soon, weft_loop_stop,
 * weft_task_cancel of its tasks) must have returned before it is called;
 * the application orders that (for instance by joining those threads).
 * Calls that reach it while it closes get WEFT_ESHUTDOWN. Errors:
 * WEFT_EBUSY while the loop is running, or while
 * handles the application opened on weft_loop_uv() are still open (close
 * them first; the loop stays usable), or when called while this thread
 * runs a loop (closing runs the loop's last tasks, and loops do not nest:
 * close a loop from outside any loop); WEFT_EPERM (wrong thread);
 * WEFT_EINVAL (NULL, or a pool's loop, which weft_pool_shutdown closes). */
WEFT_API int weft_loop_close(weft_loop_t *loop);

/** loop.call_soon_threadsafe(cb, arg): cb(arg) runs on the loop's thread, in
 * the loop's next round, outside any task (it may spawn tasks; it must not
 * call await points). Calls from one thread run in the order made. Never
 * suspends. Any thread. Errors: WEFT_EINVAL (NULL), WEFT_ENOMEM,
 * WEFT_ESHUTDOWN (the loop is closing, or, from another thread, its pool is
 * shutting down; cb will not run). */
WEFT_API int weft_loop_call_soon(weft_loop_t *loop, void (*cb)(void *arg), void *arg);

/** The libuv loop underneath, so an application's own libuv handles share the
 * loop. Their callbacks run outside any task (await points there return
 * WEFT_ENOTASK; weft_spawn works). Loop-bound use only. A loop with no libuv
 * work of its own parks on its wake-up fd alone, which wakes faster than
 * libuv's poll; once this was called it always parks in libuv's poll, so
 * that the application's handles, unreferenced ones too, get their events. */
WEFT_API uv_loop_t *weft_loop_uv(weft_loop_t *loop);

/** Whether h is one of weft's own libuv handles (a loop's timer, wake-up,
 * prepare, check and idle handles; a stream's socket; an accept's poll), for
 * the close-all idiom: an application that walks its libuv loop at exit
 * (uv_walk) to close every handle skips these, which weft_loop_close closes
 * itself. On the thread that runs the libuv loop. Costs a walk over weft's
 * loops and that loop's open streams. False for NULL. */
WEFT_API bool weft_is_internal_handle(const uv_handle_t *h);

/** A consistent snapshot of loop's counters. On the loop's own thread it is
 * taken at once; from a thread that runs no loop, the loop takes it between
 * two steps (through its inbox) while the caller blocks, and the loop must
 * be running or run later (a pool's loops always are). A loop held by a
 * task's step that has lasted 100 ms or more (a stall, not a step a busy
 * machine preempted) does not make the caller wait for the step to end:
 * within about 20 ms the call returns WEFT_EAGAIN with only held_by and
 * held_ms filled in (the other fields zero), naming the task and how long
 * it has held the loop so far. Never suspends a task. Errors: WEFT_EINVAL (NULL),
 * WEFT_EAGAIN (held by a step, as above), WEFT_EBUSY (called from a thread
 * that runs another loop: it cannot block there), WEFT_ESHUTDOWN (the loop
 * is closing), WEFT_ENOMEM. */
WEFT_API int weft_loop_stats(weft_loop_t *loop, weft_stats_t *out);

/** The loop's name (see weft_loop_opts_t.name). Any thread; valid while the
 * loop is. "(null)" for NULL. */
WEFT_API const char *weft_loop_name(const weft_loop_t *loop);

/** Where weft's diagnostics go (slow steps, the watchdog's stall lines and
 * their call stacks; misuse messages in debug mode): fn(line, arg) gets one
 * line without its newline, on whatever thread noticed (the watchdog's own
 * thread for stall lines). fn NULL restores the default, stderr. Any thread.
 * Once it returns, no call of the sink it replaced is still running, so
 * that sink's arg may be freed; called from inside a sink, it does not wait
 * (it would wait for itself). Calls to fn may come from several threads at
 * once: fn synchronises what it shares. */
typedef void (*weft_log_fn)(const char *line, void *arg);
WEFT_API void weft_log_set(weft_log_fn fn, void *arg);

/** Prints every loop of the process and every live task on each: its name,
 * its state (ready, running, or what it waits on: sleep until when, join of
 * which task, a channel or semaphore by its name, a select's cases, a
 * stream read, ...), its age, and how deep its stack has been used; under
 * each parked task its call stack (the await function, then its caller,
 * and further down), walked by frame pointers and named with dladdr: link
 * the program with -rdynamic (CMake: ENABLE_EXPORTS) to see its own
 * function names; static functions show as addresses. Any thread (a loop's
 * own tasks included); each loop describes itself between two steps, so a
 * loop held by a task's step is reported at once (within about 20 ms) as
 * held by that task, for how long so far; a loop that answers neither way
 * (busy in libuv callbacks, or not running) after 1 s. Never suspends a
 * task. */
WEFT_API void weft_dump(FILE *out);

/* ----------------------------------------------------------------- tasks */

/** loop.create_task() and run_coroutine_threadsafe(): creates a task that
 * runs fn(arg) on loop (NULL = the calling task's loop, else the thread's
 * current loop). It starts in a later scheduling round; weft_spawn never
 * suspends. If task is not NULL, *task gets a handle the caller owns and must
 * give back with weft_task_release; with task NULL the task is detached and
 * freed when it ends. Any thread: from another thread than the loop's, the
 * task is handed over through the loop's inbox, and the handle is valid at
 * once. Errors: WEFT_EINVAL (fn NULL, no loop given and none current, or the
 * loop is closing), WEFT_ESHUTDOWN (from another thread: the loop is closing,
 * or its pool is shutting down), WEFT_ENOMEM.
 *
 * From C++: fn must not let an exception escape. A task runs on a stack of
 * its own, with no frame that could catch it, so an escaping exception
 * terminates the process (std::terminate), as from a thread's function;
 * catch everything inside fn and turn it into a status (weft_task_fail). */
WEFT_API int weft_spawn(weft_loop_t *loop, weft_fn fn, void *arg, weft_task_t **task);

/** asyncio's create_task(coro, name=...): weft_spawn with the task's name
 * (copied, at most 31 bytes kept) set before the task can run, from any
 * thread; weft_dump, the stall lines and the trace use it. Errors: those of
 * weft_spawn; WEFT_EINVAL for a NULL name. */
WEFT_API int weft_spawn_named(weft_loop_t *loop, weft_fn fn, void *arg, const char *name,
                              weft_task_t **task);

/** await task: suspends the calling task until task ends, then returns its
 * final status (0, its weft_task_fail code, or WEFT_ECANCELED) and stores its
 * result in *result (may be NULL). A result can be read by any number of
 * awaits. Await point. task may run on any loop: a task of another loop is
 * awaited through the two loops' inboxes, and cancellation passes across
 * the same way. From a plain thread (one running no loop, e.g. main driving
 * a pool) it blocks the thread until task ends, if task runs on a loop of
 * another thread (WEFT_ENOTASK if on this thread's own loop, which could
 * then never run). If the caller is cancelled meanwhile, task is
 * cancelled too (as in asyncio), the caller waits for it to unwind and gets
 * WEFT_ECANCELED; if the caller's deadline passes, the same with
 * WEFT_ETIMEDOUT. Errors: WEFT_EINVAL (NULL, or not a task handle),
 * WEFT_EDEADLK (awaiting itself), WEFT_ENOTASK. */
WEFT_API int weft_await(weft_task_t *task, void **result);

/** asyncio.shield: as weft_await, but cancelling the caller (or its deadline
 * passing) does not touch task: the caller's await returns WEFT_ECANCELED
 * (or WEFT_ETIMEDOUT) at once and task keeps running. */
WEFT_API int weft_await_shielded(weft_task_t *task, void **result);

/** asyncio.gather: waits until all n tasks have ended. A plain thread
 * blocks until then, as with weft_await. results[i] and
 * statuses[i] (either array may be NULL) get each task's result and final
 * status. Returns 0 if all succeeded, else the first failure to happen (a
 * task's status, in the order they ended). If the caller is cancelled or its
 * deadline passes, every task still running is cancelled, the caller waits
 * for them to unwind and gets WEFT_ECANCELED or WEFT_ETIMEDOUT. Await point.
 * Errors: WEFT_EINVAL (tasks NULL with n > 0, a NULL entry), WEFT_EDEADLK (the caller is among them), WEFT_ENOMEM, WEFT_ENOTASK. */
WEFT_API int weft_gather(weft_task_t **tasks, size_t n, void **results, int *statuses);

/** asyncio.wait_for: as weft_await, but if task has not ended after
 * timeout_ms, task is cancelled, the caller waits for it to unwind and gets
 * WEFT_ETIMEDOUT. Await point. Errors as weft_await. */
WEFT_API int weft_wait_for(weft_task_t *task, uint64_t timeout_ms, void **result);

/** task.cancel(): requests cancellation. A task that has not started never
 * runs; a task parked on an await is woken at once with WEFT_ECANCELED; a
 * running task's next await returns WEFT_ECANCELED; so does every later one
 * (sticky). What the task awaits is cancelled too, unless shielded. Its final
 * status becomes WEFT_ECANCELED unless it called weft_task_fail. Never
 * suspends. Any thread holding a handle: from another thread the request
 * reaches the task's loop through its inbox, in its next round. Returns 0,
 * WEFT_EALREADY if the task has already ended (nothing happens),
 * WEFT_EINVAL, WEFT_ENOMEM or WEFT_ESHUTDOWN (another thread's request could
 * not be queued). */
WEFT_API int weft_task_cancel(weft_task_t *task);

/** The task's final status once it has ended (0, its weft_task_fail code or
 * WEFT_ECANCELED), WEFT_EPENDING until then, WEFT_EINVAL for NULL. Any
 * thread holding a handle. */
WEFT_API int weft_task_status(const weft_task_t *task);

/** Sets the calling task's final status to err (a negative code other than
 * WEFT_EPENDING); the task then returns from its body as usual. The last call
 * wins. Returns WEFT_ENOTASK outside a task, WEFT_EINVAL for err >= 0 or
 * WEFT_EPENDING. */
WEFT_API int weft_task_fail(int err);

/** Gives back a handle from weft_spawn. The task keeps running if it has not
 * ended and is freed when it ends; if it has ended it is freed now. NULL is
 * ignored. Any thread; the handle must not be used afterwards. */
WEFT_API void weft_task_release(weft_task_t *task);

/** The task running on this thread, or NULL outside a task. Any thread. */
WEFT_API weft_task_t *weft_task_current(void);

/** Sets the calling task's base deadline to timeout_ms from now: the
 * outermost one, which weft_deadline_push scopes nest inside. Every await of
 * the task that is still waiting when the task's deadline passes returns
 * WEFT_ETIMEDOUT (what it awaited is cancelled, as with weft_wait_for), and
 * so does every await after it, until the deadline is cleared or moved. A
 * new call replaces the base deadline (later or earlier: the task's own
 * idle timeout, pushed forward on every request); pushed scopes still bound
 * it. Never suspends. WEFT_ENOTASK outside a task; WEFT_ENOMEM (a task's
 * first deadline allocates room for its deadlines). */
WEFT_API int weft_deadline_set(uint64_t timeout_ms);

/** Removes the calling task's base deadline (pushed scopes stay).
 * WEFT_ENOTASK outside a task. */
WEFT_API int weft_deadline_clear(void);

/** asyncio.timeout() / Trio's move_on_after as a scope: pushes a deadline
 * timeout_ms from now (WEFT_FOREVER: a scope with none). Until the matching
 * weft_deadline_pop, the task's deadline is the earliest of its base
 * deadline and every scope pushed: an inner scope never extends an outer
 * one, so a helper that bounds its own work cannot lift its caller's
 * bound. Scopes nest up to 8 deep. Never suspends. Errors: WEFT_ENOTASK
 * outside a task; WEFT_ENOBUFS with 8 scopes pushed already; WEFT_ENOMEM
 * (a task's first push allocates room for its scopes). */
WEFT_API int weft_deadline_push(uint64_t timeout_ms);

/** Pops the innermost scope weft_deadline_push made. Never suspends.
 * Errors: WEFT_ENOTASK outside a task; WEFT_EINVAL when no scope is pushed,
 * or inside a shielded section when the innermost scope was pushed before
 * the section began. */
WEFT_API int weft_deadline_pop(void);

/** Trio's shielded scope: from here to the matching weft_shield_end, the
 * calling task's awaits are not interrupted by cancellation, nor by its base
 * deadline or scopes pushed before this call; a scope pushed inside the
 * section does apply, so cleanup can be bounded. A cancel that comes
 * meanwhile, or was already pending, is held: the first await after the
 * outermost weft_shield_end returns WEFT_ECANCELED. Use it for the cleanup
 * of a cancelled task: stopping and awaiting a child, flushing a reply,
 * closing a connection politely. Sections nest. Never suspends. Outside a
 * task it does nothing (debug mode says so). weft_await_shielded is
 * different: it does not pass the waiter's cancellation on to the awaited
 * task (asyncio.shield). */
WEFT_API void weft_shield_begin(void);

/** Ends the innermost shielded section (see weft_shield_begin). Without one
 * it does nothing (debug mode says so). Never suspends. */
WEFT_API void weft_shield_end(void);

/** Names a task for debugging (copied, at most 31 bytes kept). Loop-bound:
 * WEFT_EPERM from another thread (a spawner on another thread names its
 * task with weft_spawn_named). Unnamed tasks are called "task-<id>".
 * WEFT_EINVAL on NULL. */
WEFT_API int weft_task_set_name(weft_task_t *task, const char *name);
WEFT_API const char *weft_task_name(const weft_task_t *task);

/** asyncio.sleep(ms): suspends the calling task for at least ms
 * milliseconds by the precise monotonic clock (never less; usually under a
 * millisecond more on a loop that is not busy); 0 is weft_yield(). Sleeps
 * begun in order end in order. Await point. Returns 0 when the time has
 * passed, WEFT_ECANCELED, WEFT_ETIMEDOUT, WEFT_ENOTASK, WEFT_ENOMEM. */
WEFT_API int weft_sleep(uint64_t ms);

/** asyncio.sleep(0): puts the calling task at the back of the ready queue; it
 * runs again in the next round. Await point. Returns 0, WEFT_ECANCELED,
 * WEFT_ETIMEDOUT, WEFT_ENOTASK. */
WEFT_API int weft_yield(void);

/** asyncio.to_thread(f): runs fn(arg) on libuv's thread pool while the
 * calling task's loop keeps running other tasks, and stores fn's return
 * value in *result (may be NULL). Await point. If the task is cancelled (or
 * its deadline passes) meanwhile, this returns WEFT_ECANCELED (or
 * WEFT_ETIMEDOUT) at once; fn cannot be interrupted, it runs to its end and
 * its result is dropped (debug mode says so when it is not NULL): when the
 * result owns something, use weft_to_thread_cleanup. fn must not call weft
 * functions that need a loop.
 * Errors: WEFT_EINVAL (fn NULL), WEFT_ENOTASK, WEFT_ENOMEM. */
WEFT_API int weft_to_thread(weft_fn fn, void *arg, void **result);

/** weft_to_thread, with a cleanup for the result nobody will take: if the
 * call returns WEFT_ECANCELED or WEFT_ETIMEDOUT before fn has ended,
 * cleanup(result) runs on the task's loop thread once fn returns (also when
 * the loop is closing), so a result that owns memory is freed, never
 * leaked. When the call returns 0, the result is the caller's, in *result,
 * and cleanup is not called. cleanup may be NULL (then this is
 * weft_to_thread). Await point; the same errors as weft_to_thread. */
WEFT_API int weft_to_thread_cleanup(weft_fn fn, void *arg, void (*cleanup)(void *result),
                                    void **result);

/** How tasks switch stacks in this build: "asm-x86_64", "asm-aarch64" or
 * "ucontext". Any thread. */
WEFT_API const char *weft_switch_method(void);

/* --------------------------------------------------- structured groups */

/** asyncio.TaskGroup, Go's errgroup: tasks spawned into a group are waited
 * for together; the first child to fail (a status other than 0 and
 * WEFT_ECANCELED) cancels all its siblings. A group spans loops: its
 * children may run on any loops (a pool's, or other threads'), a failure on
 * one loop cancels the siblings on every loop, and the wait works from a
 * task of any loop or from a plain thread. Every group function may be
 * called from any thread. */

/** Creates an empty group owned by the caller. WEFT_EINVAL, WEFT_ENOMEM. */
WEFT_API int weft_group_new(weft_group_t **g);

/** Spawns fn(arg) on loop (NULL as in weft_spawn) as a child of g. Any
 * thread. Never suspends, unless the group has a limit
 * (weft_group_set_limit) and that many children run: then it waits for one
 * of them to end (an await point in a task; a plain thread blocks; in a
 * libuv callback, which cannot wait, it returns WEFT_EAGAIN). Errors: those
 * of weft_spawn; WEFT_ECANCELED if a child has already failed or the
 * group's waiter was cancelled (the group is cancelling); WEFT_ECANCELED or
 * WEFT_ETIMEDOUT if the spawning task is cancelled or its deadline passes
 * while it waits for room (nothing was spawned); WEFT_EINVAL after
 * weft_group_wait returned or after weft_group_release. */
WEFT_API int weft_group_spawn(weft_group_t *g, weft_loop_t *loop, weft_fn fn, void *arg);

/** Go's errgroup.SetLimit: at most limit children of g run at once (0: no
 * limit, the default); weft_group_spawn beyond it waits for a child to end.
 * Set it before the first spawn. Any thread. Errors: WEFT_EINVAL (g NULL or
 * released, limit above WEFT_SEM_MAX), WEFT_EBUSY (children were spawned
 * already), WEFT_ENOMEM. */
WEFT_API int weft_group_set_limit(weft_group_t *g, size_t limit);

/** Waits until every child has ended. Returns 0, or the first child failure.
 * If the calling task is cancelled (or its deadline passes) every child is
 * cancelled, the wait still lasts until all have ended, and it returns
 * WEFT_ECANCELED (or WEFT_ETIMEDOUT). Await point in a task; a plain thread
 * (one that runs no loop) blocks until the children have ended. After it
 * returns, the group accepts no more children. Errors: WEFT_ENOTASK in a
 * libuv callback, on a thread with a loop of its own bound but not running
 * (weft_loop_set_current), or on a plain thread that owns the loop of a
 * child (that loop could never run meanwhile); WEFT_EINVAL (g NULL, waited for already
 * or being waited for, released). */
WEFT_API int weft_group_wait(weft_group_t *g);

/** Gives the group back. Children still running are cancelled; the group's
 * memory lives on until the last of them has ended (and a weft_group_wait
 * in progress, a misuse, has returned). Any thread. NULL is ignored; a
 * second release of the same group is fatal. */
WEFT_API void weft_group_release(weft_group_t *g);

/* ------------------------------------------------------------ channels */

/* asyncio.Queue, across loops and threads: a bounded FIFO of pointers.
 * Senders and receivers may be tasks on any loops or plain threads. A full
 * channel suspends its senders (backpressure), an empty one its receivers;
 * messages from one sender arrive in the order sent. The channel carries
 * pointers and never owns what they point to. */

/** Creates a channel holding at most capacity messages (1 to 2^24), with
 * one reference, the caller's. Any thread. Errors: WEFT_EINVAL, WEFT_ENOMEM. */
WEFT_API int weft_chan_new(weft_chan_t **ch, size_t capacity);

/** Sends msg (any pointer, NULL included). In a task, suspends while the
 * channel is full (await point); on a plain thread, blocks. Returns 0 once
 * msg is in the channel or handed to a receiver; WEFT_ECLOSED if the channel
 * is or gets closed first (msg was not sent); WEFT_ECANCELED or
 * WEFT_ETIMEDOUT if the task is cancelled or its deadline passes first (msg
 * was not sent; a cancel that comes after room was made for this sender
 * does not undo the send, and is seen at the task's next await);
 * WEFT_ENOTASK in a libuv callback on a loop's thread; WEFT_EINVAL. Two
 * busy loops pass messages without a lock or a system call. */
WEFT_API int weft_chan_send(weft_chan_t *ch, void *msg);

/** As weft_chan_send, but never waits: WEFT_EAGAIN if the channel is full.
 * Any thread, any context (also libuv callbacks). */
WEFT_API int weft_chan_try_send(weft_chan_t *ch, void *msg);

/** Receives the oldest message into *msg. In a task, suspends while the
 * channel is empty (await point); on a plain thread, blocks. Returns 0;
 * WEFT_ECLOSED once the channel is closed and every message sent before
 * the close has been received; WEFT_ECANCELED or WEFT_ETIMEDOUT (nothing
 * was taken; as for a send, a cancel that comes after a message arrived for
 * this receiver lets it take the message); WEFT_ENOTASK in a libuv
 * callback; WEFT_EINVAL. */
WEFT_API int weft_chan_recv(weft_chan_t *ch, void **msg);

/** As weft_chan_recv, but never waits: WEFT_EAGAIN if the channel is empty
 * (and open). Any thread, any context. */
WEFT_API int weft_chan_try_recv(weft_chan_t *ch, void **msg);

/** Closes the channel: later sends fail with WEFT_ECLOSED, waiting senders
 * are woken with WEFT_ECLOSED (their messages are not sent), receivers get
 * what is left and then WEFT_ECLOSED. Any thread. Returns 0, WEFT_ECLOSED if
 * it was already closed, WEFT_EINVAL. */
WEFT_API int weft_chan_close(weft_chan_t *ch);

/** Takes one more reference (for another owner, e.g. a task the channel is
 * passed to). Any thread. Returns ch. */
WEFT_API weft_chan_t *weft_chan_retain(weft_chan_t *ch);

/** Drops one reference; the last one frees the channel. Messages still in
 * it are not freed (the channel does not own them): close and drain it
 * first if they hold memory. Every call on a channel must be made under a
 * reference its caller holds until the call returns: a sender whose
 * message a receiver has already taken is still inside weft_chan_send, so
 * a receiver that drops the last reference as soon as the message arrives
 * frees the channel under the sender. Give each party its own reference
 * (weft_chan_retain). Any thread. NULL is ignored. */
WEFT_API void weft_chan_release(weft_chan_t *ch);

/** Names the channel for weft_dump (copied, at most 31 bytes kept): a task
 * waiting on it shows as waiting on channel "name". Set it before other
 * threads use the channel (the dump reads it from theirs). Returns 0,
 * WEFT_EINVAL (NULL). The other synchronisation objects have the same call:
 * weft_sem_set_name, weft_mutex_set_name, weft_event_set_name,
 * weft_cond_set_name. */
WEFT_API int weft_chan_set_name(weft_chan_t *ch, const char *name);

/* ------------------------------------------------ synchronisation */

/* asyncio's Semaphore, Lock, Event and Condition, and wait(FIRST_COMPLETED)
 * and Go's select. Every primitive here works between tasks on any loops
 * and plain threads alike: a task suspends (an await point: cancellation
 * and deadlines apply), a plain thread (one that runs no loop) blocks, and a
 * libuv callback on a loop's thread, which may not wait, gets WEFT_ENOTASK
 * from the calls that could wait. Waiters are served first come, first
 * served, and a wake-up is never lost to a cancel or a deadline: a waiter
 * that was handed a permit, the lock or a signal before its cut takes it
 * (returns 0; the cancel is seen at its next await), otherwise it returns
 * the cut's error and the permit, lock or signal goes to the next waiter.
 *
 * Freeing: each primitive has a _free call, from any thread, that refuses
 * (WEFT_EBUSY, nothing freed) while anyone waits on it or, for a mutex,
 * holds it. Freeing one that a task or thread may still reach is a
 * use-after-free like any other: free it once every user has finished. */

/** Most permits a semaphore may hold (weft_sem_post beyond it fails). */
#define WEFT_SEM_MAX ((size_t)0x7fffffff)

/** Creates a counting semaphore with permits permits (0 to WEFT_SEM_MAX).
 * Any thread. Errors: WEFT_EINVAL, WEFT_ENOMEM. */
WEFT_API int weft_sem_new(weft_sem_t **sem, size_t permits);

/** Takes one permit, waiting while there is none (await point; a plain
 * thread blocks). FIFO: a permit posted while others wait goes to the one
 * that has waited longest, so a stream of weft_sem_try_acquire cannot
 * starve it. Returns 0; WEFT_ECANCELED or WEFT_ETIMEDOUT (no permit taken);
 * WEFT_ENOTASK in a libuv callback; WEFT_EINVAL. */
WEFT_API int weft_sem_acquire(weft_sem_t *sem);

/** Takes one permit if one is free and nobody waits for it; never waits.
 * Any thread, any context. Returns 0, WEFT_EAGAIN, WEFT_EINVAL. */
WEFT_API int weft_sem_try_acquire(weft_sem_t *sem);

/** Gives one permit back: to the longest waiter if one waits (it is woken),
 * else to the count. Any thread, any context; never suspends. Returns 0;
 * WEFT_ENOBUFS if the count is at WEFT_SEM_MAX (nothing changed);
 * WEFT_EINVAL. */
WEFT_API int weft_sem_post(weft_sem_t *sem);

/** Permits free now (a snapshot). Any thread. 0 for NULL. */
WEFT_API size_t weft_sem_value(const weft_sem_t *sem);

/** Names the semaphore for weft_dump, as weft_chan_set_name does. */
WEFT_API int weft_sem_set_name(weft_sem_t *sem, const char *name);

/** Frees a semaphore. Any thread. Returns 0 (NULL included); WEFT_EBUSY if
 * someone waits on it (nothing freed). */
WEFT_API int weft_sem_free(weft_sem_t *sem);

/** Creates an unlocked mutex. Any thread. Errors: WEFT_EINVAL, WEFT_ENOMEM. */
WEFT_API int weft_mutex_new(weft_mutex_t **mu);

/** Locks mu, waiting while another task or thread holds it (await point; a
 * plain thread blocks). Unlike a pthread mutex it may be held across await
 * points: a task that waits for it lets its loop run other tasks. The
 * holder is the calling task (or, outside a task, the calling thread); it
 * alone may unlock. FIFO, like the semaphore. Returns 0; WEFT_EDEADLK if
 * the caller holds it already (not recursive); WEFT_ECANCELED or
 * WEFT_ETIMEDOUT (not locked); WEFT_ENOTASK in a libuv callback;
 * WEFT_EINVAL. */
WEFT_API int weft_mutex_lock(weft_mutex_t *mu);

/** Locks mu if it is free and nobody waits for it; never waits. Any thread
 * (not a libuv callback: it has no task to hold the lock). Returns 0,
 * WEFT_EAGAIN, WEFT_EDEADLK (the caller holds it), WEFT_ENOTASK,
 * WEFT_EINVAL. */
WEFT_API int weft_mutex_try_lock(weft_mutex_t *mu);

/** Unlocks mu, handing it to the longest waiter if one waits. Only its
 * holder may unlock it; never suspends. Returns 0; WEFT_EPERM if the
 * caller does not hold it (a misuse, reported in debug builds; nothing
 * changes); WEFT_EINVAL. */
WEFT_API int weft_mutex_unlock(weft_mutex_t *mu);

/** Frees a mutex. Any thread. Returns 0 (NULL included); WEFT_EBUSY if it is
 * held or waited on (nothing freed). */
WEFT_API int weft_mutex_free(weft_mutex_t *mu);

/** Names the mutex for weft_dump, as weft_chan_set_name does. */
WEFT_API int weft_mutex_set_name(weft_mutex_t *mu, const char *name);

/** Creates an event, not set. Any thread. Errors: WEFT_EINVAL, WEFT_ENOMEM. */
WEFT_API int weft_event_new(weft_event_t **ev);

/** Sets the event: every waiter is woken, and later waits return at once
 * until weft_event_clear. Any thread, any context; never suspends. Returns
 * 0 (also if it was set already), WEFT_EINVAL. */
WEFT_API int weft_event_set(weft_event_t *ev);

/** Clears the event: later waits wait again. Waiters that a set woke still
 * return 0. Any thread. Returns 0, WEFT_EINVAL. */
WEFT_API int weft_event_clear(weft_event_t *ev);

/** Waits until the event is set (at once if it is; await point; a plain
 * thread blocks). Returns 0; WEFT_ECANCELED or WEFT_ETIMEDOUT if the task
 * was cut before a set reached it (a set event is still taken over a
 * pending cancel: as for every await point, the cancel is seen first when
 * the call begins); WEFT_ENOTASK in a libuv callback; WEFT_EINVAL. */
WEFT_API int weft_event_wait(weft_event_t *ev);

/** Whether the event is set now. Any thread. false for NULL. */
WEFT_API bool weft_event_is_set(const weft_event_t *ev);

/** Frees an event. Any thread. Returns 0 (NULL included); WEFT_EBUSY if
 * someone waits on it (nothing freed). */
WEFT_API int weft_event_free(weft_event_t *ev);

/** Names the event for weft_dump, as weft_chan_set_name does. */
WEFT_API int weft_event_set_name(weft_event_t *ev, const char *name);

/** Creates a condition variable. Any thread. Errors: WEFT_EINVAL,
 * WEFT_ENOMEM. */
WEFT_API int weft_cond_new(weft_cond_t **cv);

/** Unlocks mu, which the caller must hold, and waits for a signal or a
 * broadcast of cv (await point; a plain thread blocks), then locks mu again
 * before it returns: on every return but WEFT_EPERM and WEFT_EINVAL the
 * caller holds mu, also after a cancel or a deadline (taking mu back is not
 * cut short). Wake-ups come only from signals and broadcasts, but as with
 * any condition variable, test the condition in a loop: another holder may
 * have changed it before mu was taken back. Returns 0; WEFT_ECANCELED or
 * WEFT_ETIMEDOUT (no signal consumed: it went to another waiter);
 * WEFT_EPERM (the caller does not hold mu); WEFT_ENOTASK in a libuv
 * callback; WEFT_EINVAL. */
WEFT_API int weft_cond_wait(weft_cond_t *cv, weft_mutex_t *mu);

/** Wakes the longest waiter of cv, if any. Any thread; never suspends.
 * Returns 0, WEFT_EINVAL. */
WEFT_API int weft_cond_signal(weft_cond_t *cv);

/** Wakes every waiter of cv. Any thread; never suspends. Returns 0,
 * WEFT_EINVAL. */
WEFT_API int weft_cond_broadcast(weft_cond_t *cv);

/** Frees a condition variable. Any thread. Returns 0 (NULL included);
 * WEFT_EBUSY if someone waits on it (nothing freed). */
WEFT_API int weft_cond_free(weft_cond_t *cv);

/** Names the condition variable for weft_dump, as weft_chan_set_name does. */
WEFT_API int weft_cond_set_name(weft_cond_t *cv, const char *name);

/** asyncio.wait(tasks, return_when=FIRST_COMPLETED): waits until at least
 * one of the n tasks (on any loops) has ended and sets *index to one that
 * has (the first to end, as far as the waiter saw); the others keep
 * running and may be awaited later. Await point; a plain thread blocks (not
 * on a task of a loop it owns). A cancel pending as the call begins, or a
 * deadline already passed, behaves as for weft_await: every task still
 * running is cancelled and waited for, and the call returns the error; so
 * does a cut while it waits. Returns 0; WEFT_ECANCELED or WEFT_ETIMEDOUT;
 * WEFT_EINVAL (n 0, NULL, a handle that is not a live task), WEFT_EDEADLK
 * (the caller is among the tasks), WEFT_ENOTASK, WEFT_ENOMEM. */
WEFT_API int weft_wait_any(weft_task_t **tasks, size_t n, size_t *index);

/** weft_select_case_t.op */
#define WEFT_SELECT_RECV 1
#define WEFT_SELECT_SEND 2

/** One case of weft_select. */
typedef struct weft_select_case {
  int op;              /**< WEFT_SELECT_RECV or WEFT_SELECT_SEND */
  weft_chan_t *chan;   /**< the channel; a case with NULL is never ready (Go's nil channel) */
  void *msg;           /**< SEND: the message; RECV: the message received */
  int err;             /**< for the chosen case: 0 or WEFT_ECLOSED */
} weft_select_case_t;  /* may grow fields after these */

/** Go's select: performs exactly one of the n cases that can go ahead (a
 * send with room, a receive with a message, or either on a closed channel,
 * which is ready with err WEFT_ECLOSED and moves nothing) and returns its
 * index; the other cases are not touched. When several are ready, each is
 * picked about as often (the cases are tried from a random start). When
 * none is, it waits up to timeout_ms: 0 polls, WEFT_FOREVER waits without
 * limit (an await point in a task, cut by cancellation and deadlines; a
 * plain thread blocks). Unless it polls, a cancel pending (or a deadline
 * passed) as it begins returns that error at once, ready cases or not, as
 * for every await point. Returns the index (0 to n - 1); WEFT_EAGAIN (a
 * poll found nothing ready); WEFT_ETIMEDOUT (timeout_ms passed, or the
 * task's deadline); WEFT_ECANCELED; WEFT_ENOTASK in a libuv callback (a
 * poll works there); WEFT_EINVAL (cases NULL, n 0 or above
 * WEFT_SELECT_MAX, an op that is neither). On every error no message was
 * sent or taken, and none is lost: a message offered to this select while
 * it was being cut goes to another receiver. */
WEFT_API int weft_select(weft_select_case_t *cases, size_t n, uint64_t timeout_ms);

/** Most cases one weft_select takes. */
#define WEFT_SELECT_MAX 64

/* ---------------------------------------------------------------- TCP */

/* asyncio's streams (start_server, open_connection, reader.read,
 * writer.write): awaitable TCP on a loop. A stream is bound to one loop:
 * only tasks of that loop use it, and it can be handed to another loop
 * (weft_stream_detach, then weft_stream_attach there, e.g. after passing it
 * through a channel). Every await point below honours cancellation and the
 * task's deadline. A host is a numeric IPv4 or IPv6 address ("127.0.0.1",
 * "::1", "0.0.0.0", "::") or a host name ("localhost", "example.com").
 * Names are resolved (getaddrinfo: /etc/hosts, then DNS) off every loop, on
 * weft's own resolver threads: two for the whole process, started at the
 * first name and ended after 10 s without one, not libuv's thread pool that
 * weft_to_thread uses, so slow work there never delays a name, nor a DNS
 * server that does not answer the work. At most 64 names wait for a
 * resolver thread; past that a call fails at once with WEFT_ENOBUFS. A
 * task cut while its name resolves leaves at once; getaddrinfo cannot be
 * interrupted, so the thread ends it and frees the answer. Names under
 * ".invalid" fail at once with UV_EAI_NONAME (RFC 6761). Resolution errors
 * are libuv's UV_EAI_* codes, which weft_strerror names: UV_EAI_NONAME (no
 * such name), UV_EAI_NODATA (no address of a usable family), UV_EAI_AGAIN
 * (DNS did not answer; try again), UV_EAI_FAIL. Writing to a
 * connection the peer closed must fail with UV_EPIPE, not kill the process,
 * so the first stream sets SIGPIPE to SIG_IGN if the application left it at
 * its default (pool workers block it anyway). */

/** How the loops of a pool share one listening port (weft_listen_opts_t.mode).
 * Whatever the mode, the application runs an accept loop on every loop that
 * should serve (weft_tcp_accept from a task of that loop); the mode decides
 * which loop each connection reaches. */
typedef enum weft_listen_mode {
  /** One socket, accepted from one loop (the first to call weft_tcp_accept;
   * no pool needed). */
  WEFT_LISTEN_SINGLE = 0,
  /** A socket per pool loop, all bound to the port with SO_REUSEPORT: the
   * kernel spreads connections over the loops by a hash of the addresses,
   * with no cross-thread hand-off at all. Wins when connections are many
   * and alike (the usual server); a loop that is slow keeps getting its
   * share, though. */
  WEFT_LISTEN_REUSEPORT,
  /** One socket; its acceptor (pool loop 0) hands each accepted connection
   * round-robin to a loop, over that loop's channel of accepted descriptors
   * (a weft_chan_t per loop, so a waiting weft_tcp_accept there is woken
   * the channel's way). Even spread whatever the addresses (few clients,
   * or one proxy in front), at the cost of a hand-off per connection. */
  WEFT_LISTEN_HANDOFF,
  /** As HANDOFF, but each connection goes to the loop with the fewest open
   * connections from this listener. Wins when connections live long and
   * unevenly (some loops would pile up long-lived clients). */
  WEFT_LISTEN_LEAST_LOADED,
} weft_listen_mode_t;

/** Options of weft_tcp_listen; all-zero is a plain single listener. */
typedef struct weft_listen_opts {
  weft_listen_mode_t mode;
  weft_pool_t *pool;   /**< the loops that accept: needed by every mode but SINGLE */
  int backlog;         /**< the kernel's accept queue; 0 = 511 */
  unsigned queue;      /**< HANDOFF, LEAST_LOADED: accepted connections waiting
                            per loop before the acceptor holds back; 0 = 256 */
} weft_listen_opts_t;

/** Listens on host:port (port 0: any free port, see weft_listener_port).
 * Opens and binds the socket(s) at once (SO_REUSEADDR always); nothing is
 * accepted until a task calls weft_tcp_accept. Any thread. opts may be NULL.
 * host NULL is "0.0.0.0"; "localhost" is 127.0.0.1; an IPv6 literal binds
 * IPv6 ("::" takes IPv4 too unless net.ipv6.bindv6only says otherwise).
 * A host name binds one address, the first IPv4 address it resolves to, or
 * its first address if it has none (as Go's net.Listen does): to serve
 * several, listen on each. Only a name suspends: from a task it is
 * resolved on the resolver threads (an await point: cancellation and
 * deadlines apply), on a plain thread inline (the thread blocks), and from
 * a libuv callback, which cannot wait, it is refused (WEFT_ENOTASK). The
 * caller owns *l and ends it with weft_listener_close. Errors:
 * WEFT_EINVAL (NULL, a host that is neither an address nor a well-formed
 * name, port outside 0..65535, a mode that needs a pool without one),
 * WEFT_ENOMEM, a resolution error (UV_EAI_NONAME, ..., WEFT_ENOBUFS; see
 * above), WEFT_ENOTASK, WEFT_ECANCELED, WEFT_ETIMEDOUT (while resolving),
 * or the socket call's error (UV_EADDRINUSE, UV_EACCES, UV_EMFILE, ...). */
WEFT_API int weft_tcp_listen(weft_listener_t **l, const char *host, int port,
                             const weft_listen_opts_t *opts);

/** The port the listener is bound to (useful after port 0), or -1 for NULL.
 * Any thread. */
WEFT_API int weft_listener_port(const weft_listener_t *l);

/** Accepts the next connection for the calling task's loop (await point):
 * suspends until one comes. *s is a new stream bound to this loop, with
 * TCP_NODELAY set; the caller owns it and ends it with weft_stream_close.
 * When the process is out of file descriptors, accepting pauses (100 ms at
 * a time, no busy loop) and resumes once descriptors free up; the call goes
 * on waiting meanwhile. A loop's accepts hand out at most 16 connections
 * between two of its polls: past that, the next call waits for the loop to
 * poll, so a crowd of connections that queued while the loop was busy is
 * started a burst at a time, with the loop's other I/O served in between.
 * Errors: WEFT_ECLOSED (the listener was closed),
 * WEFT_EINVAL (NULL; SINGLE mode: a loop other than the first accepting one;
 * other modes: a loop outside the listener's pool), WEFT_ENOTASK,
 * WEFT_ECANCELED, WEFT_ETIMEDOUT, WEFT_ENOMEM. */
WEFT_API int weft_tcp_accept(weft_listener_t *l, weft_stream_t **s);

/** Stops listening and frees the listener once nothing uses it: tasks
 * waiting in weft_tcp_accept get WEFT_ECLOSED, connections accepted but not
 * yet taken by a loop are closed, streams already accepted are not
 * affected. Never suspends. Any thread, once; close a pool's listener
 * before weft_pool_shutdown(WEFT_DRAIN), which otherwise waits on its
 * accepting tasks. The handle is the caller's no more: a task that calls
 * weft_tcp_accept after the close may find it freed, so stop the accepting
 * tasks' loops first, or close only while they wait inside
 * weft_tcp_accept (they then get WEFT_ECLOSED). Errors: WEFT_EINVAL
 * (NULL), WEFT_ECLOSED (closed already). */
WEFT_API int weft_listener_close(weft_listener_t *l);

/** asyncio.open_connection(host, port): connects to host:port (await
 * point). *s is a new stream bound to the calling task's loop, with
 * TCP_NODELAY set; the caller owns it. A host name (also "localhost") is
 * resolved first (see above), and its addresses (at most 16) race as Happy
 * Eyeballs (RFC 8305) says: IPv6 and IPv4 take turns, beginning with the
 * family of the first address; the next attempt starts 250 ms after the
 * last if none has connected by then, and at once when one fails; the
 * first to connect wins and every other attempt is closed. A cancel or
 * deadline closes every attempt (the call returns once they are closed).
 * Errors: WEFT_EINVAL (NULL, a host that is neither an address nor a
 * well-formed name, bad port), WEFT_ENOTASK, WEFT_ECANCELED, WEFT_ETIMEDOUT
 * (while resolving or connecting: nothing is left open), WEFT_ENOMEM, a
 * resolution error (UV_EAI_NONAME, ..., WEFT_ENOBUFS), or, when every
 * address failed, the first address's error (UV_ECONNREFUSED,
 * UV_ENETUNREACH, ...). */
WEFT_API int weft_tcp_connect(weft_stream_t **s, const char *host, int port);

/** Reads up to len bytes into buf (await point): returns at once if bytes
 * are buffered, else suspends until some arrive. Returns the count (> 0), 0
 * at end of stream (the peer shut down its side), or an error: WEFT_EINVAL
 * (NULL, len 0), WEFT_EPERM (the stream belongs to another loop, or is
 * detached), WEFT_EBUSY (another task is reading it), WEFT_ECLOSED (the
 * stream was closed meanwhile), WEFT_ENOTASK, WEFT_ECANCELED,
 * WEFT_ETIMEDOUT (nothing was read), or the socket's error (UV_ECONNRESET,
 * ...). A read whose deadline passes while it waits first takes what the
 * socket holds by then, its end or its error: it times out only if the peer
 * sent nothing, so a loop that ran late (a long round, a loaded machine)
 * does not turn bytes that came in time into WEFT_ETIMEDOUT. The task's
 * next await point still reports the deadline. The stream reads ahead into
 * a 16 KiB buffer, and stops reading from the socket while that buffer is
 * full (backpressure). */
WEFT_API ssize_t weft_stream_read(weft_stream_t *s, void *buf, size_t len);

/** Writes len bytes (await point). A write of up to 4 KiB, while nothing
 * is queued, is copied into the loop's stage and the call returns: once the
 * round's tasks have all had their step, before the loop polls, each
 * stream's staged bytes go to the kernel in one system call. So the pieces
 * a task writes in a step coalesce, and a round's replies leave in one
 * burst. A step that computes for long after a write holds those bytes
 * until it ends: weft_yield first to send them. A longer write goes out at
 * once (after what the stream staged). What the socket does not take is
 * copied into the stream's write queue, and the call returns; it suspends
 * only while the queue holds 1 MiB or more (backpressure), so buf is the
 * caller's again on return. A write error that comes after the return is
 * reported by the next write or close. Errors: WEFT_EINVAL, WEFT_EPERM,
 * WEFT_EBUSY (another task is waiting to write), WEFT_ECLOSED, WEFT_ENOTASK,
 * WEFT_ECANCELED or WEFT_ETIMEDOUT (while waiting for room: the bytes before
 * the wait were queued, the rest not), WEFT_ENOMEM, or the socket's error
 * (UV_EPIPE, UV_ECONNRESET, ...). */
WEFT_API int weft_stream_write(weft_stream_t *s, const void *buf, size_t len);

/** Closes the stream and frees it. Staged bytes (see weft_stream_write) go
 * to the kernel first. In a task, it then waits (await point) for the write
 * queue to reach the kernel, so a reply written just before is not lost; a
 * cancel or deadline cuts that wait short and the rest is dropped.
 * Tasks of the loop parked on the stream get WEFT_ECLOSED. Also from a libuv
 * callback on the stream's loop (no waiting), and for a detached stream from
 * any thread. s is invalid afterwards. Returns 0, the pending write error if
 * one came, WEFT_ECANCELED or WEFT_ETIMEDOUT (the stream is closed all the
 * same), WEFT_EPERM (another loop's stream), WEFT_EINVAL (NULL). */
WEFT_API int weft_stream_close(weft_stream_t *s);

/** Unbinds the stream from its loop so another loop can take it (await
 * point: waits for the write queue to reach the kernel). Bytes read ahead
 * stay in the stream. Afterwards the stream belongs to no loop; any thread
 * may pass it on, and weft_stream_attach binds it to a loop again. Errors:
 * WEFT_EINVAL (NULL), WEFT_EPERM (another loop's stream, or detached),
 * WEFT_EBUSY (a task is parked on it), WEFT_ENOTASK, WEFT_ECANCELED,
 * WEFT_ETIMEDOUT (it stays bound), WEFT_ENOMEM, or the system's error. */
WEFT_API int weft_stream_detach(weft_stream_t *s);

/** Binds a detached stream to the calling thread's running loop (from a
 * task or a libuv callback there). Never suspends. Errors: WEFT_EINVAL
 * (NULL, or not detached), WEFT_ENOTASK (no loop runs on this thread),
 * WEFT_ENOMEM. */
WEFT_API int weft_stream_attach(weft_stream_t *s);

/** The loop the stream is bound to, or NULL (detached, or s NULL). Any
 * thread. */
WEFT_API weft_loop_t *weft_stream_loop(const weft_stream_t *s);

/* ------------------------------------- framed reads and stream control */

/* asyncio's readexactly / readuntil and the transport's controls. The
 * framed readers work in the stream's own read-ahead buffer (the one
 * weft_stream_read uses), so the caller never buffers twice, and they
 * consume only a whole frame: whatever cuts a frame short (cancel,
 * deadline, end of stream, WEFT_ENOBUFS, an error) consumes nothing, and
 * the bytes that did arrive stay readable, to the next framed read or
 * weft_stream_read (asyncio's IncompleteReadError.partial, left in place).
 * While a frame longer than the buffer's 16 KiB is awaited, the buffer
 * grows (doubling) up to that frame's bound (n, or cap) and never past it;
 * once drained it shrinks back. Like weft_stream_read, each is loop-bound:
 * a task of the stream's loop, one reader at a time. */

/** Reads exactly n bytes into buf (await point): returns n once n bytes
 * are buffered (at once if they already are), or WEFT_EOF if the stream
 * ended first: then nothing is consumed, and the fewer than n bytes that
 * came stay readable (weft_stream_read returns them, then 0). n == 0
 * returns 0. Errors: WEFT_EINVAL (s or buf NULL, n > SSIZE_MAX),
 * WEFT_EPERM (another loop's stream, or detached), WEFT_EBUSY (another
 * task is reading it), WEFT_ECLOSED (closed meanwhile), WEFT_ENOTASK,
 * WEFT_ECANCELED, WEFT_ETIMEDOUT, WEFT_ENOMEM (the buffer could not grow
 * to n), or the socket's error (UV_ECONNRESET, ...): all consume nothing.
 * A deadline that passes while the frame waits first takes what the
 * socket holds by then, as weft_stream_read does. */
WEFT_API ssize_t weft_stream_read_exactly(weft_stream_t *s, void *buf, size_t n);

/** Reads up to and including the first occurrence of delim[0, dlen) into
 * buf (await point) and returns that length (at most cap). Returns
 * WEFT_ENOBUFS when cap bytes came without a whole delimiter in them:
 * nothing is consumed, the bytes stay readable (read them with
 * weft_stream_read or weft_stream_read_exactly, or close). Returns WEFT_EOF
 * when the stream ended before a delimiter (also with nothing buffered):
 * nothing is consumed, the bytes that came stay readable. Errors: as
 * weft_stream_read_exactly, and WEFT_EINVAL for delim NULL, dlen 0 or cap
 * < dlen. Memory: the read-ahead buffer holds at most cap bytes for it. */
WEFT_API ssize_t weft_stream_read_until(weft_stream_t *s, void *buf, size_t cap,
                                        const void *delim, size_t dlen);

/** Copies up to len buffered bytes into buf without consuming them (await
 * point): at once if any are buffered, else suspends until some arrive.
 * Returns the count (> 0), 0 at end of stream, or an error as
 * weft_stream_read. */
WEFT_API ssize_t weft_stream_peek(weft_stream_t *s, void *buf, size_t len);

/** Half-closes the stream (asyncio's write_eof): what is staged and queued
 * goes out, then a FIN (for a Unix-domain socket, shutdown(SHUT_WR)); the
 * peer reads end of stream, and this side goes on reading. Never suspends
 * (a task or a libuv callback on the stream's loop). Later writes return
 * UV_EPIPE. Errors: WEFT_EINVAL (NULL), WEFT_EPERM (another loop's stream,
 * or detached), UV_ENOTCONN (shut down already), WEFT_ENOMEM, the pending
 * write error, or the socket's. A failure of the FIN itself is reported by
 * the next write or close. */
WEFT_API int weft_stream_shutdown(weft_stream_t *s);

/** The peer's address (getpeername): a struct sockaddr_in or sockaddr_in6,
 * or for a Unix-domain stream a struct sockaddr_un (its sun_path is empty
 * when the peer's socket has no name: a connecting client's). Never
 * suspends; on the stream's loop's thread, or by whoever holds a detached
 * stream. Errors: WEFT_EINVAL (NULL), WEFT_EPERM (another loop's stream),
 * UV_ENOTCONN (the peer is gone). */
WEFT_API int weft_stream_peer(const weft_stream_t *s, struct sockaddr_storage *addr);

/** This side's address (getsockname); as weft_stream_peer. */
WEFT_API int weft_stream_local(const weft_stream_t *s, struct sockaddr_storage *addr);

/** Sets TCP_NODELAY (on by default on every stream weft makes: accepted,
 * connected, adopted). Never suspends; threads as weft_stream_peer. Errors:
 * WEFT_EINVAL (NULL), WEFT_EPERM, UV_ENOTSUP (a Unix-domain stream), or
 * the system's. */
WEFT_API int weft_stream_set_nodelay(weft_stream_t *s, bool on);

/** Turns TCP keepalive on, with the first probe after delay_s idle seconds
 * (TCP_KEEPIDLE; the probes' interval and count stay the system's), or
 * off. Never suspends; threads as weft_stream_peer. Errors: WEFT_EINVAL
 * (NULL; on with delay_s 0), WEFT_EPERM, UV_ENOTSUP (a Unix-domain
 * stream), or the system's (UV_EINVAL past 32767 s on Linux). */
WEFT_API int weft_stream_set_keepalive(weft_stream_t *s, bool on, unsigned delay_s);

/** Sets how many bytes the stream's write queue may hold before
 * weft_stream_write waits for room (1 MiB by default), from 1 KiB to
 * 1 GiB. A writer waiting for room then waits for the new limit (it goes
 * on at once if the queue is already below it). Bytes already queued stay
 * queued. Never suspends; threads as weft_stream_peer. Errors: WEFT_EINVAL
 * (NULL, or outside the bounds), WEFT_EPERM. */
WEFT_API int weft_stream_set_write_limit(weft_stream_t *s, size_t bytes);

/** Bytes written but not yet handed to the kernel: staged and queued
 * (asyncio's get_write_buffer_size). 0 for NULL. On the stream's loop's
 * thread. */
WEFT_API size_t weft_stream_write_queued(const weft_stream_t *s);

/** Aborts the stream (asyncio's transport.abort()): drops what is staged
 * and queued, resets the connection (SO_LINGER 0, so the peer reads
 * UV_ECONNRESET; a Unix-domain peer reads end of stream, or UV_ECONNRESET
 * if bytes it sent were still unread here), and frees the stream. Tasks
 * parked on it get WEFT_ECLOSED. Never suspends; on the stream's loop's
 * thread (a task or a libuv callback), or for a detached stream any
 * thread. s is invalid afterwards. Returns 0; WEFT_EINVAL (NULL),
 * WEFT_EPERM (another loop's stream: nothing done). */
WEFT_API int weft_stream_abort(weft_stream_t *s);

/** Makes a stream of an open, connected stream socket fd (TCP or
 * Unix-domain: socket activation, a descriptor handed over by another
 * process) on the calling thread's running loop (a task or a libuv
 * callback there). Never suspends. fd is made non-blocking; a TCP one gets
 * TCP_NODELAY. On success the stream owns fd (weft_stream_close closes
 * it); on failure fd stays the caller's, open. Errors: WEFT_EINVAL (s
 * NULL, fd < 0, a socket that is not a stream, or is listening),
 * UV_EBADF, UV_ENOTSOCK, WEFT_ENOTASK (no loop runs on this thread),
 * UV_EEXIST (the loop already watches fd), WEFT_ENOMEM. */
WEFT_API int weft_stream_adopt(weft_stream_t **s, int fd);

/** Makes a listener of an open, listening stream socket fd (TCP or
 * Unix-domain; socket activation). Accepting then goes as for
 * weft_tcp_listen's listeners, in opts's mode, SINGLE, HANDOFF or
 * LEAST_LOADED; opts->backlog is not used (the socket listens already).
 * Any thread; never suspends. On success the listener owns fd (it is
 * closed, and the socket shut down, by weft_listener_close: a copy held by
 * another process stops accepting too); on failure fd stays the caller's,
 * open (made non-blocking). Errors: WEFT_EINVAL (l NULL, fd < 0, not a
 * listening stream socket, a bad mode or a mode without its pool),
 * UV_ENOTSUP (REUSEPORT: one socket cannot be a socket per loop),
 * UV_EBADF, UV_ENOTSOCK, UV_EMFILE, WEFT_ENOMEM. */
WEFT_API int weft_listener_adopt(weft_listener_t **l, int fd, const weft_listen_opts_t *opts);

/* ------------------------------------------------ Unix-domain sockets */

/* asyncio's start_unix_server / open_unix_connection: the same listener
 * and stream types as TCP, so weft_tcp_accept accepts from a Unix-domain
 * listener and every weft_stream_* call works on its streams (but
 * set_nodelay and set_keepalive, which are TCP's). path is a file system
 * path of at most 107 bytes (sun_path); abstract names are not taken. */

/** Listens on the socket file path (created; it must not exist: remove a
 * stale one first). Modes: SINGLE, HANDOFF and LEAST_LOADED as for TCP;
 * REUSEPORT is refused (UV_ENOTSUP: Linux does not spread one path over
 * several sockets), use HANDOFF. weft_listener_port returns -1.
 * weft_listener_close removes the file, if it is still the one bound. Any
 * thread; never suspends. Errors: WEFT_EINVAL (l or path NULL, path empty,
 * a bad mode or a mode without its pool), UV_ENAMETOOLONG (path past 107
 * bytes), UV_ENOTSUP (REUSEPORT), UV_EADDRINUSE (path exists), UV_ENOENT
 * or UV_EACCES (its directory), UV_EMFILE, WEFT_ENOMEM. */
WEFT_API int weft_unix_listen(weft_listener_t **l, const char *path,
                              const weft_listen_opts_t *opts);

/** Connects to the socket file path (await point). *s is a new stream
 * bound to the calling task's loop. A connect to a listener whose backlog
 * is full is tried again every 10 ms until the task's deadline or a
 * cancel. Errors: WEFT_EINVAL (NULL, path empty), UV_ENAMETOOLONG,
 * UV_ENOENT (no such file), UV_ECONNREFUSED (a file nobody listens on),
 * UV_EACCES, WEFT_ENOTASK, WEFT_ECANCELED, WEFT_ETIMEDOUT, WEFT_ENOMEM,
 * UV_EMFILE. */
WEFT_API int weft_unix_connect(weft_stream_t **s, const char *path);

/* ---------------------------------------------------------------- UDP */

/* asyncio's create_datagram_endpoint: a UDP socket bound to one loop (the
 * one it was made on); only that loop's tasks receive and send on it.
 * Nothing is buffered in user space: the kernel's receive buffer (its
 * SO_RCVBUF, weft_udp_opts_t.rcvbuf) is the socket's one queue, bounded,
 * and datagrams that overflow it are dropped by the kernel, as UDP does,
 * whether a task is receiving or not. Addresses are numeric IPv4 or IPv6
 * ("127.0.0.1", "::1", "0.0.0.0", "::") or "localhost"; NULL or "" is
 * "0.0.0.0"; names are not resolved. A socket bound to "::" also takes
 * IPv4 unless the system says otherwise (net.ipv6.bindv6only). */

/** Options of weft_udp_bind_opts; all-zero is a plain socket. */
typedef struct weft_udp_opts {
  /** SO_REUSEPORT: several sockets, typically one per loop of a pool, bind
   * the same port, and the kernel spreads incoming datagrams over them by a
   * hash of the sender's address (one sender always reaches the same
   * socket). Every socket on the port must set it. */
  bool reuseport;
  int rcvbuf;         /**< SO_RCVBUF in bytes; 0 = the system's default */
} weft_udp_opts_t;

/** Binds a UDP socket to host:port (port 0: any free port, see
 * weft_udp_port) on the calling thread's loop: the loop running here (a
 * task, or a libuv callback), else the loop made current here
 * (weft_loop_set_current). Never suspends. The caller owns *u and ends it
 * with weft_udp_close; a socket still open when its loop closes is closed
 * and freed with it. Errors: WEFT_EINVAL (u NULL, bad host, port outside
 * 0..65535), WEFT_ENOTASK (no loop runs here and none is current),
 * WEFT_EPERM (the current loop is another thread's), WEFT_ENOMEM, or the
 * socket's error (UV_EADDRINUSE, UV_EACCES, UV_EMFILE, ...). */
WEFT_API int weft_udp_bind(weft_udp_t **u, const char *host, int port);

/** weft_udp_bind with options (opts may be NULL). To serve one port from
 * every loop of a pool, bind a socket with .reuseport on each loop (from a
 * task there), the first with port 0 or the port, the others with the
 * port weft_udp_port gave the first. Errors as weft_udp_bind, and
 * WEFT_EINVAL for a negative rcvbuf. */
WEFT_API int weft_udp_bind_opts(weft_udp_t **u, const char *host, int port,
                                const weft_udp_opts_t *opts);

/** The port the socket is bound to (useful after port 0), or -1 for NULL.
 * Any thread. */
WEFT_API int weft_udp_port(const weft_udp_t *u);

/** Receives one datagram into buf (await point): at once if the socket
 * holds one, else suspends until one comes. Returns its length (0 for an
 * empty datagram) and fills *from (if not NULL) with the sender's address.
 * A datagram longer than len is cut: buf gets its first len bytes, *from
 * is filled, the rest is gone (as with recv(2)), and the call returns
 * WEFT_ENOBUFS; a buffer of 65535 bytes never sees that. Several tasks of
 * the loop may receive at once; each datagram goes to one of them. A
 * datagram is taken from the kernel only by a call that returns it, so a
 * cancel or a deadline never loses one. A receive whose deadline passes
 * while it waits first takes a datagram the socket holds by then (as a
 * stream read does); the next await point reports the deadline. Errors:
 * WEFT_EINVAL (u NULL, buf NULL with len > 0), WEFT_EPERM (another loop's
 * socket), WEFT_ECLOSED (closed, also while waiting), WEFT_ENOBUFS (cut,
 * above), WEFT_ENOTASK, WEFT_ECANCELED, WEFT_ETIMEDOUT (nothing taken), or
 * the socket's error. */
WEFT_API ssize_t weft_udp_recv(weft_udp_t *u, void *buf, size_t len,
                               struct sockaddr_storage *from);

/** Sends buf[0, len) as one datagram to to (a struct sockaddr_in or
 * sockaddr_in6; the socket's family). The datagram is handed to the kernel
 * at once (sendto(2)) and nothing is copied or queued by weft: buf is the
 * caller's again on return. Suspends (await point) only while the socket's
 * send buffer is full, until it has room. Returns 0 once the kernel took
 * the datagram (UDP: not that it arrived). Errors: WEFT_EINVAL (u or to
 * NULL, buf NULL with len > 0, an address that is neither IPv4 nor IPv6),
 * UV_EMSGSIZE (longer than a datagram can be: 65507 bytes of IPv4 payload,
 * 65527 of IPv6, or more than the path takes unfragmented where the system
 * says so), WEFT_EPERM, WEFT_ECLOSED, WEFT_ENOTASK, WEFT_ECANCELED or
 * WEFT_ETIMEDOUT (while waiting for room: nothing sent), WEFT_ENOBUFS (the
 * system's output queue is full), or the socket's error (UV_EAFNOSUPPORT
 * for an address of the other family, UV_ENETUNREACH, ...). */
WEFT_API int weft_udp_send(weft_udp_t *u, const void *buf, size_t len,
                           const struct sockaddr *to);

/** Closes the socket and frees it. Tasks parked in weft_udp_recv or
 * weft_udp_send on it return WEFT_ECLOSED; datagrams the kernel held for it
 * are dropped. The descriptor is closed once libuv has let go of it, in the
 * loop's next poll. Never suspends. On the loop's own thread (a task or a
 * libuv callback there, or outside a run). u is invalid afterwards.
 * Errors: WEFT_EINVAL (NULL), WEFT_EPERM (another thread's loop). */
WEFT_API int weft_udp_close(weft_udp_t *u);

/* ------------------------------------------------------------ signals */

/* asyncio's add_signal_handler as an await: weft_signal_wait(SIGTERM) in a
 * task (on any loop, pool workers included) or a plain thread. The first
 * wait for a signal starts one internal thread, "weft-signal", with a libuv
 * loop of its own (a few descriptors), which lives until the process
 * exits; it watches each signal with a uv_signal_t, so an application's own
 * uv_signal_t on the same signal keeps working, and unblocks for itself each
 * signal it watches, so the signal is taken even where every other thread
 * blocks it (pool workers block SIGINT, SIGTERM, SIGCHLD and SIGPIPE). Send
 * the signal to the process (kill(getpid(), sig), or from outside), not
 * to one thread (raise, pthread_kill): a thread that blocks it keeps it. */

/** Waits until signum arrives (await point; a plain thread blocks). Every
 * task and thread waiting for signum when it arrives is woken. From the
 * first wait on, signum is watched (caught: its default action, such as
 * ending the process, no longer happens) until weft_signal_stop. A signal
 * that arrives while nobody waits for it is held, one (signals that come
 * while one is held fold into it, as the kernel's pending signals do), and
 * the next wait takes it and returns 0 at once: a task that handles a
 * signal and then waits again misses none that came meanwhile. The first
 * wait for a signal blocks its thread briefly while the watcher thread
 * installs the handler, so a signal sent once that call has begun is never
 * the default action (also when the call returns at once with a pending
 * cancel or a passed deadline: the signal is watched all the same).
 * Returns 0; WEFT_EINVAL (not a signal one can
 * wait for: 0, negative, NSIG or above, SIGKILL, SIGSTOP, the faults
 * SIGSEGV, SIGBUS, SIGFPE and SIGILL, the real-time signals glibc keeps);
 * WEFT_ECANCELED or WEFT_ETIMEDOUT (a signal that reached the waiter before
 * the cut is still taken: the call returns 0 and the next await reports
 * the cut); WEFT_ECLOSED (weft_signal_stop while waiting); WEFT_ENOTASK
 * (in a libuv callback); WEFT_ENOMEM or a libuv error (the watcher thread
 * or the handler could not be set up). */
WEFT_API int weft_signal_wait(int signum);

/** asyncio's remove_signal_handler: stops watching signum. The disposition
 * it had before the first weft_signal_wait comes back (unless the
 * application's own uv_signal_t still watches it), a held signal is
 * dropped, and waiters return WEFT_ECLOSED. A later weft_signal_wait
 * watches it again. Any thread; never suspends (it blocks briefly for the
 * watcher thread). Returns 0 (also when signum was not watched);
 * WEFT_EINVAL as for weft_signal_wait. */
WEFT_API int weft_signal_stop(int signum);

/* ------------------------------------------------------ pool of loops */

/** How weft_pool_shutdown ends the pool's work. */
typedef enum weft_shutdown {
  WEFT_DRAIN = 0,  /**< let every queued and running task finish first */
  WEFT_CANCEL = 1, /**< cancel every pending task and wait for it to unwind */
} weft_shutdown_t;

/** Options for weft_pool_new; zero every field you do not set. */
typedef struct weft_pool_opts {
  unsigned workers;       /**< worker threads, one loop each; 0 = one per CPU */
  weft_loop_opts_t loop;  /**< options for every worker's loop */
} weft_pool_opts_t;

/** Starts a pool: opts->workers threads (named weft-0, weft-1, ...), each
 * owning one loop that runs until weft_pool_shutdown. The workers block
 * SIGINT, SIGTERM, SIGCHLD and SIGPIPE, so those reach the threads the
 * application chooses. opts may be NULL. Returns when every loop is ready.
 * Any thread. Errors: WEFT_EINVAL (pool NULL, more than 1024 workers),
 * WEFT_ENOMEM, or the error of a failed thread or loop start (nothing is
 * left running). */
WEFT_API int weft_pool_new(weft_pool_t **pool, const weft_pool_opts_t *opts);

/** The number of loops (and threads). Any thread. */
WEFT_API unsigned weft_pool_size(const weft_pool_t *pool);

/** Loop i of the pool, or NULL if i is out of range. Use it with the
 * any-thread functions (weft_spawn, weft_loop_call_soon, weft_loop_stop).
 * Any thread; valid until weft_pool_shutdown returns. */
WEFT_API weft_loop_t *weft_pool_loop(weft_pool_t *pool, unsigned i);

/** Counters of the whole pool: *sum adds up every loop's (ready, waiting
 * and live included), and per_loop, if not NULL, gets weft_pool_size(pool)
 * snapshots, one per loop. Any thread but the pool's own workers (it
 * blocks, also for a loop held by a long step: every loop's counters are
 * in the sum; weft_loop_stats names a stalled loop's task instead).
 * Errors: WEFT_EINVAL (NULL, or from a worker), WEFT_ESHUTDOWN,
 * WEFT_ENOMEM. */
WEFT_API int weft_pool_stats(weft_pool_t *pool, weft_stats_t *sum, weft_stats_t *per_loop);

/** The pool's loops in turn (round-robin). Any thread. */
WEFT_API weft_loop_t *weft_pool_next(weft_pool_t *pool);

/** Ends the pool and frees it. how = WEFT_DRAIN: spawns and
 * weft_loop_call_soon onto a loop from any other thread than its own are
 * refused from now on (WEFT_ESHUTDOWN), every task
 * already spawned or queued runs to its end (tasks may still spawn tasks on
 * their own loop), then each loop closes. how = WEFT_CANCEL: the same, but
 * every pending task is cancelled first. Either way every loop is closed
 * cleanly and every thread joined before it returns, and nothing queued is
 * dropped silently: a task queued but never started ends with
 * WEFT_ECANCELED in CANCEL mode, and runs in DRAIN mode. Must not be called
 * from one of the pool's own threads. Errors: WEFT_EINVAL (NULL, a bad how,
 * or called from a worker). */
WEFT_API int weft_pool_shutdown(weft_pool_t *pool, weft_shutdown_t how);

/** Most names of cancelled tasks a weft_drain_report_t keeps. */
#define WEFT_DRAIN_NAMES 8

/** What weft_pool_drain did. Every task that ended after the drain reached
 * its loop is counted once, in completed or in cancelled. */
typedef struct weft_drain_report {
  uint64_t completed;  /**< tasks that ended by themselves before the deadline (any status) */
  uint64_t cancelled;  /**< tasks still live at the deadline, cancelled then (with those
                            queued or spawned after it, which never ran) */
  uint64_t elapsed_ms; /**< how long the call took, the cancelled tasks' unwinding included */
  unsigned nnames;     /**< entries of names filled (at most WEFT_DRAIN_NAMES) */
  char names[WEFT_DRAIN_NAMES][32]; /**< the first cancelled tasks' names (weft_task_name) */
} weft_drain_report_t;

/** Graceful shutdown with a deadline (Tokio's shutdown_timeout, Seastar's
 * gate closed with a timer): ends the pool as weft_pool_shutdown(WEFT_DRAIN)
 * does, letting every task finish, for at most timeout_ms; then every task
 * still live on a loop that has not drained is cancelled (tasks queued or
 * spawned after that end cancelled without running), the call waits for
 * them to unwind, and the pool is closed, joined and freed, as
 * weft_pool_shutdown does. timeout_ms 0 cancels at once; WEFT_FOREVER never
 * does (weft_pool_shutdown(WEFT_DRAIN) with a report). report (may be
 * NULL) says how many tasks ended by themselves, how many were cancelled,
 * the first cancelled tasks' names and how long it all took. The call ends
 * once the cancelled tasks have unwound: a task that shields itself
 * (weft_shield_begin) or computes without an await point holds it up. Close
 * the pool's listeners first (weft_listener_close), or their accepting tasks
 * wait out the deadline. Blocks the calling thread, which must not be one
 * of the pool's workers. Errors: WEFT_EINVAL (pool NULL, or called from a
 * worker; nothing happens). pool is invalid afterwards. */
WEFT_API int weft_pool_drain(weft_pool_t *pool, uint64_t timeout_ms, weft_drain_report_t *report);

/* ------------------------------------------------------------- tracing */

/** Starts recording a trace of every loop (each in a bounded ring of its
 * own, the last 65536 events per loop) for weft_trace_read to hand over,
 * and for weft_trace_write to save to path (NULL: no file) in the Chrome
 * trace-event JSON format: open it in Perfetto
 * (ui.perfetto.dev) or chrome://tracing. One track per loop; a slice per
 * task step, named after the task, saying what it stopped at; wake-ups; a
 * counter of the ready queue;
 * arrows for the messages loops send each other (spawns, channel wake-ups,
 * joins, cancels, calls). Loops made before the call are not
 * traced. WEFT_TRACE=path in the environment does the same when the first
 * loop is made, and writes the file at exit. Any thread. Errors:
 * WEFT_EINVAL (an empty path), WEFT_ENOMEM. With tracing off nothing
 * is recorded; with it on an event costs tens of nanoseconds. */
WEFT_API int weft_trace_start(const char *path);

/** One recorded event, as weft_trace_read hands it over: the event as the
 * event hook saw it (ev.task is the task's address at the time, an
 * identity to compare, not a handle: the task may be gone), the loop's
 * name, the task's name then ("" for WEFT_EV_ROUND), and, when tracing
 * was started with WEFT_TRACE_CPU=1 in the environment, for the events
 * that open and close a step (WEFT_EV_STEP, WEFT_EV_PARK, WEFT_EV_DONE) the
 * loop thread's CPU time then (CLOCK_THREAD_CPUTIME_ID): a step's CPU time
 * beside its wall time tells computation from preemption. Reading that
 * clock is a system call at each end of every step (about 250 ns here),
 * so it is off unless asked for. */
typedef struct weft_trace_record {
  const char *loop;
  weft_loop_event_t ev;
  const char *task_name;
  uint64_t cpu_ns;         /**< thread CPU time at the event; 0 for other kinds
                                or without WEFT_TRACE_CPU=1 */
} weft_trace_record_t;

typedef void (*weft_trace_fn)(const weft_trace_record_t *r, void *arg);

/** Hands every event recorded so far to fn, loop by loop in the order the
 * loops were made, each loop's oldest first (the ring keeps the last 65536
 * per loop). fn runs with no lock of weft's held, so it may call anything
 * the calling thread may. Any thread; the loops go on meanwhile (an event
 * recorded during the call may be left out). Errors: WEFT_EINVAL (fn NULL),
 * WEFT_ENOMEM. */
WEFT_API int weft_trace_read(weft_trace_fn fn, void *arg);

/** Stops recording (what was recorded stays, for weft_trace_write). Any
 * thread. */
WEFT_API void weft_trace_stop(void);

/** Writes what the loops recorded so far to the path weft_trace_start got,
 * replacing the file; the loops go on meanwhile. Any thread. Errors:
 * WEFT_EINVAL (no path: tracing never started, or started with NULL),
 * UV_EIO (the file could not be written). */
WEFT_API int weft_trace_write(void);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_H */
