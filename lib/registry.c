/* The registry: the process-wide list of loops (what weft_dump and the
 * stats walk), loop names, and the one fork guard of the library.
 *
 * A fork while another thread holds one of weft's process-wide locks would
 * leave the child's copy locked for good, so the guard makes fork wait for
 * all of them: the registry's, the log sink's (diag.c) and the trace
 * rings' (trace.c), always taken in that order. */
#include "internal.h"

#include <stdio.h>

static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;
static weft__queue_t loops = {&loops, &loops};
static atomic_uint loops_made;

static void fork_prepare(void) {
  pthread_mutex_lock(&loops_lock);
  weft__log_fork_prepare();
  weft__trace_fork_prepare();
}

static void fork_done(void) {
  weft__trace_fork_done();
  weft__log_fork_done();
  pthread_mutex_unlock(&loops_lock);
}

static void fork_guard(void) {
  pthread_atfork(fork_prepare, fork_done, fork_done);
}

void weft__loops_add(weft_loop_t *loop, const char *name) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, fork_guard);
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

int weft__loops_push(weft_loop_t *loop, weft__msg_t *m) {
  int err = WEFT_ESHUTDOWN;
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops; q = q->next) {
    if (weft__container_of(q, weft_loop_t, registry) == loop) {
      err = weft__inbox_push(loop, m, false);
      break;
    }
  }
  pthread_mutex_unlock(&loops_lock);
  return err;
}

bool weft_is_internal_handle(const uv_handle_t *h) {
  if (!h)
    return false;
  bool ours = false;
  pthread_mutex_lock(&loops_lock);
  for (weft__queue_t *q = loops.next; q != &loops && !ours; q = q->next) {
    weft_loop_t *loop = weft__container_of(q, weft_loop_t, registry);
    if (loop->uv == h->loop)
      ours = weft__loop_owns_handle(loop, h);
  }
  pthread_mutex_unlock(&loops_lock);
  return ours;
}

const char *weft_loop_name(const weft_loop_t *loop) {
  return loop ? loop->name : "(null)";
}
