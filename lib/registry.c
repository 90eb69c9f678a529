/* The registry: the process-wide list of loops (what weft_dump and the
 * stats walk), loop names, and the one fork guard of the library.
 *
 * A fork while another thread holds one of weft's process-wide locks would
 * leave the child's copy locked for good, so the guard makes fork wait for
 * all of them: the registry's, the log sink's (diag.c) and the trace
 * rings' (trace.c, through the hooks it hands over), always taken in that
 * order. */
#include "internal.h"

#include <stdio.h>

static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;
static weft__queue_t loops = {&loops, &loops};
static atomic_uint loops_made;

/* trace.c's part, set when tracing reads its environment: a pointer, so
 * this file calls nothing of the loop's core. */
static void (*trace_prepare)(void);
static void (*trace_done)(void);

void weft__fork_guard_trace(void (*prepare)(void), void (*done)(void)) {
  pthread_mutex_lock(&loops_lock);
  trace_prepare = prepare;
  trace_done = done;
  pthread_mutex_unlock(&loops_lock);
}

static void fork_prepare(void) {
  pthread_mutex_lock(&loops_lock);
  weft__log_fork_prepare();
  if (trace_prepare)
    trace_prepare();
}

static void fork_done(bool child) {
  if (trace_done)
    trace_done();
  weft__log_fork_done(child);
  pthread_mutex_unlock(&loops_lock);
}

static void fork_parent(void) {
  fork_done(false);
}

static void fork_child(void) {
  fork_done(true);
}

static void fork_guard(void) {
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

void weft__fork_guard_once(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, fork_guard);
}

void weft__loops_add(weft_loop_t *loop, const char *name) {
  weft__fork_guard_once();
  if (name)
    snprintf(loop->name, sizeof loop->name, "%s", name);
  else
    snprintf(loop->name, sizeof loop->name, "loop-%u", atomic_fetch_add(&loops_made, 1) + 1);
  pthread_mutex_lock(&loops_lock);
  weft__queue_insert_tail(&loops, &loop->registry);
  pthread_mutex_unlock(&loops_lock);
}

void weft__loops_remove(weft_loop_t *loop) {
  pthread_mutex_lock(&loops_lock);
  if (weft__queue_linked(&loop->registry))
    weft__queue_remove(&loop->registry);
  pthread_mutex_unlock(&loops_lock);
}

/* Pushes a message made by make(loop, arg) to every loop (under the list's
 * lock, so none is freed meanwhile); returns how many took one. */
size_t weft__loops_each(weft__msg_t *(*make)(weft_loop_t *loop, void *arg), void *arg) {
  size_t n = 0;
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops; q = q->next) {
    weft_loop_t *loop = weft__container_of(q, weft_loop_t, registry);
    weft__msg_t *m = make(loop, arg);
    if (m)
      n++;
  }
  pthread_mutex_unlock(&loops_lock);
  return n;
}

bool weft__loops_with(weft_loop_t *loop, void (*fn)(weft_loop_t *loop, void *arg), void *arg) {
  bool found = false;
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops && !found; q = q->next) {
    if (weft__container_of(q, weft_loop_t, registry) == loop) {
      fn(loop, arg);
      found = true;
    }
  }
  pthread_mutex_unlock(&loops_lock);
  return found;
}

void weft__loops_visit(void (*fn)(weft_loop_t *loop, void *arg), void *arg) {
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops; q = q->next)
    fn(weft__container_of(q, weft_loop_t, registry), arg);
  pthread_mutex_unlock(&loops_lock);
}

weft_loop_t *weft__loops_find_uv(const uv_loop_t *uv) {
  weft_loop_t *found = NULL;
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops && !found; q = q->next) {
    weft_loop_t *loop = weft__container_of(q, weft_loop_t, registry);
    if (loop->uv == uv)
      found = loop;
  }
  pthread_mutex_unlock(&loops_lock);
  return found;
}

const char *weft_loop_name(const weft_loop_t *loop) {
  return loop ? loop->name : "(null)";
}
