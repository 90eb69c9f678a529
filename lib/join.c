/* Joins: weft_await, weft_await_shielded, weft_gather and weft_wait_for are one
 * mechanism. The awaiting task puts a join node on each awaited task's list of
 * joiners and parks on a join wait that counts the nodes still pending; each
 * awaited task, as it ends, fires its nodes, and the last one wakes the
 * waiter. Cancelling the waiter (or its deadline, or a wait_for timeout)
 * cancels every awaited task still running, as asyncio does, and the waiter
 * still waits for them to unwind before it returns, so nothing it passed them
 * is freed under their feet. A shielded join instead detaches and leaves the
 * awaited task alone.
 *
 * A task of another loop is joined through inboxes. The node, on the
 * waiter's stack, is registered by a message to the target's loop, and that
 * loop answers with exactly one FIRE message back, when the target ends, or
 * at once if it had already ended, or after an UNREGISTER (a shielded join
 * being cut). Because of that single answer the node stays valid until the
 * waiter has heard from the other loop. The waiter is a task or a plain
 * thread (running no loop) alike (waiter.c): answers run on its side (the
 * task's thread, or under the plain waiter's lock), so its counters need no
 * other guard. */
#include "internal.h"

#include <stdlib.h>

typedef struct join_wait join_wait_t;

typedef struct join_node {
  weft__queue_t link;   /* in target->joiners while registered there */
  join_wait_t *jw;
  weft_task_t *target;
  bool remote;          /* registered through the target's inbox */
  bool fired;           /* the waiter has seen this node end (its side only) */
  bool unregistered;    /* cut by a shielded join: its status does not count */
  int status;           /* the target's status, carried by FIRE */
  weft__msg_t msg;      /* REGISTER there, then FIRE back */
  weft__msg_t unreg_msg; /* UNREGISTER there */
} join_node_t;

/* The waiting side: a task, or a plain thread (waiter.c). Its counters are
 * only ever touched on that side: the task's own thread, or under the
 * plain waiter's lock (weft__waiter_post). */
struct join_wait {
  weft__waiter_t waiter;
  size_t pending;       /* nodes not yet fired */
  int first_err;        /* the first failure, in the order tasks ended */
  bool shielded;
  join_node_t *nodes;
  size_t n;
  weft__timer_t timeout; /* weft_wait_for only */
  bool any;             /* weft_wait_any: the first task to end ends it */
  bool got;             /* any: one has ended (index); the rest detach */
  size_t index;
};

static void cancel_pending(join_wait_t *jw) {
  for (size_t i = 0; i < jw->n; i++)
    if (!jw->nodes[i].fired && !jw->nodes[i].unregistered)
      weft_task_cancel(jw->nodes[i].target);
}

static void detach(join_wait_t *jw);

/* weft_wait_any: node's target is the first seen to end. Unless a cut
 * came first (then every task is cancelled and waited for, as for an
 * await), the other nodes detach and their tasks run on. */
static void any_ended(join_wait_t *jw, join_node_t *node) {
  if (!jw->any || jw->got || node->unregistered || jw->waiter.base.interrupted)
    return;
  jw->got = true;
  jw->index = (size_t)(node - jw->nodes);
  detach(jw);
}

/* A node's target has ended (or the node was unregistered): the waiter's
 * side. The last one wakes the waiter, with the error that cut the wait if
 * one did. */
static void node_fired(join_node_t *node, int status) {
  join_wait_t *jw = node->jw;
  node->fired = true;
  if (!node->unregistered && status != 0 && jw->first_err == 0)
    jw->first_err = status;
  any_ended(jw, node);
  if (--jw->pending == 0)
    weft__waiter_wake(&jw->waiter, jw->waiter.base.interrupted);
}

static void unregister_run(weft__msg_t *m, weft_loop_t *loop);

/* Under the registry's lock, with the target's loop still registered. A
 * refusal (a closed inbox) means that loop has ended the target and its
 * FIRE is on the way. */
static void push_unregister(weft_loop_t *loop, void *arg) {
  join_node_t *node = arg;
  weft__inbox_push(loop, &node->unreg_msg, false);
}

/* Takes every node not yet fired off its target, leaving the tasks alone.
 * Local nodes come off at once; a remote node's memory is in use until its
 * loop answers. node_fired is not called for them: whoever detaches wakes
 * the waiter (or the last answer does). */
static void detach(join_wait_t *jw) {
  for (size_t i = 0; i < jw->n; i++) {
    join_node_t *node = &jw->nodes[i];
    if (node->fired || node->unregistered)
      continue;
    node->unregistered = true;
    if (!node->remote) {
      weft__queue_remove(&node->link);
      node->fired = true;
      jw->pending--;
    } else if (weft_task_status(node->target) == WEFT_EPENDING) {
      node->unreg_msg.run = unregister_run;
      /* Pushed only while that loop is still registered (it may end and
       * be freed at any moment: a pool shutting down). Refused, or a
       * closed inbox: that loop has ended the target and its FIRE is on
       * the way. */
      weft__loops_with(node->target->loop, push_unregister, node);
    }
    /* Else the target has ended: its FIRE is in this loop's inbox or on
     * its way, and its loop may be gone already, so nothing is sent
     * there. */
  }
}

static bool join_interrupt(weft__wait_t *w, int err) {
  (void)err;
  join_wait_t *jw = weft__container_of(w, join_wait_t, waiter.base);
  if (!jw->shielded) {
    cancel_pending(jw);
    return false;
  }
  /* Shielded: leave the awaited tasks alone. */
  detach(jw);
  return jw->pending == 0;
}

static void join_timeout(weft__timer_t *timer) {
  join_wait_t *jw = weft__container_of(timer, join_wait_t, timeout);
  weft__wait_t *w = &jw->waiter.base;
  if (w->task->state == WEFT__WAITING && !w->interrupted) {
    w->interrupted = WEFT_ETIMEDOUT;
    cancel_pending(jw);
  }
}

/* FIRE, on the waiter's side. */
static void fire_run(weft__msg_t *m, weft_loop_t *loop) {
  (void)loop;
  join_node_t *node = weft__container_of(m, join_node_t, msg);
  node_fired(node, node->status);
}

/* The node's single answer, from wherever its target ended: run on the
 * waiter's side (at once when that is this thread's loop). */
static void fire(join_node_t *node, int status) {
  node->status = status;
  node->msg.run = fire_run;
  weft__waiter_post(&node->jw->waiter, &node->msg);
}

/* REGISTER, on the target's loop. */
static void register_run(weft__msg_t *m, weft_loop_t *loop) {
  join_node_t *node = weft__container_of(m, join_node_t, msg);
  weft_task_t *t = node->target;
  if (t->state == WEFT__DONE)
    fire(node, t->status);
  else
    weft__queue_insert_tail(&t->joiners, &node->link);
}

/* UNREGISTER, on the target's loop. A node no longer linked has already
 * been answered. */
static void unregister_run(weft__msg_t *m, weft_loop_t *loop) {
  join_node_t *node = weft__container_of(m, join_node_t, unreg_msg);
  if (weft__queue_linked(&node->link)) {
    weft__queue_remove(&node->link);
    fire(node, 0);
  }
}

void weft__join_notify(weft_task_t *t) {
  while (!weft__queue_empty(&t->joiners)) {
    weft__queue_t *q = weft__queue_head(&t->joiners);
    weft__queue_remove(q);
    fire(weft__container_of(q, join_node_t, link), t->status);
  }
}

/* The failure that happened first among tasks that had already ended,
 * by the process-wide end order (read after each status, which publishes
 * it); 0 if none failed. */
static int first_ended_failure(weft_task_t **tasks, size_t n) {
  weft_task_t *first = NULL;
  for (size_t i = 0; i < n; i++) {
    int st = weft_task_status(tasks[i]);
    if (st != WEFT_EPENDING && st != 0 && (!first || tasks[i]->end_seq < first->end_seq))
      first = tasks[i];
  }
  return first ? weft_task_status(first) : 0;
}

/* The checks both kinds of join make on their arguments. */
static int check_handles(weft_task_t **tasks, size_t n, const char *fn) {
  if (n > 0 && !tasks) {
    weft__misuse(fn, "tasks is NULL");
    return WEFT_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    if (!tasks[i] || tasks[i]->magic != WEFT__TASK_MAGIC) {
      weft__misuse(fn, "task %zu is NULL or not a live task handle", i);
      return WEFT_EINVAL;
    }
  }
  return 0;
}

/* Join nodes live on the waiter's stack for small joins. */
#define SMALL_JOIN 8

static join_node_t *nodes_get(join_node_t *small, size_t n) {
  return n > SMALL_JOIN ? weft__malloc(n * sizeof(join_node_t)) : small;
}

static void nodes_put(join_node_t *nodes, join_node_t *small) {
  if (nodes != small)
    free(nodes);
}

/* Validates, registers and waits, in a task or on a plain thread (t NULL).
 * Returns an error found before waiting (*joined stays false: nothing was
 * registered), or, once every task has ended (or a shielded join was cut),
 * 0 or the error that interrupted the wait. *first_err gets the first
 * failure among the tasks.
 *
 * A plain thread may not await a task of a loop it owns itself: that loop
 * could never run meanwhile, so that is refused like any await outside a
 * task (ended or not, so the answer does not depend on timing; the owner is
 * copied into the task, so the check works after the loop is gone). */
static int join(weft_task_t **tasks, size_t n, bool shielded, uint64_t timeout_ms,
                bool has_timeout, int *first_err, bool *joined, size_t *any, const char *fn) {
  weft_task_t *self = NULL;
  bool plain = weft__tls.running == NULL;
  *joined = false;
  *first_err = 0;
  if (plain && has_timeout)
    return weft__await_begin(&self, fn); /* WEFT_ENOTASK: a timeout needs a task */
  int err = plain ? 0 : weft__await_begin(&self, fn);
  /* A cancel already pending, or a deadline already passed, as the task
   * starts to wait: asyncio cancels what the await would have waited on,
   * and so does weft, for every join but a shielded one (which leaves the
   * awaited task alone and returns at once). The join then waits for those
   * tasks to unwind, as when the cut comes during the wait. */
  int cut = 0;
  if ((err == WEFT_ECANCELED || err == WEFT_ETIMEDOUT) && !shielded) {
    cut = err;
    err = 0;
  }
  if (!err)
    err = check_handles(tasks, n, fn);
  if (err)
    return err;
  for (size_t i = 0; i < n; i++) {
    if (!plain && tasks[i] == self) {
      weft__misuse(fn, "a task cannot await itself");
      return WEFT_EDEADLK;
    }
    if (plain && pthread_equal(tasks[i]->owner, pthread_self())) {
      weft__misuse(fn, "called outside a task, on the thread that owns the task's loop "
                       "(the loop could never run to end it)");
      return WEFT_ENOTASK;
    }
  }

  /* weft_wait_any with a task ended already: nothing to wait for (unless
   * a cut must cancel the others and wait for them). */
  if (any && !cut) {
    for (size_t i = 0; i < n; i++) {
      if (weft_task_status(tasks[i]) != WEFT_EPENDING) {
        *any = i;
        *joined = true;
        return 0;
      }
    }
  }

  join_node_t small[SMALL_JOIN];
  join_node_t *nodes = nodes_get(small, n);
  if (!nodes)
    return WEFT_ENOMEM;
  join_wait_t jw = {.shielded = shielded, .nodes = nodes, .n = n, .any = any != NULL};
  weft__waiter_init(&jw.waiter, self, WEFT_WAIT_JOIN, n == 1 ? tasks[0] : NULL, join_interrupt);
  weft__timer_init(&jw.timeout, join_timeout);
  jw.first_err = first_ended_failure(tasks, n);
  /* The error that cuts the wait, already known: every wake carries it. */
  jw.waiter.base.interrupted = cut;
  /* Every node counts as pending until it fires, and the set-up itself
   * counts one more, so that nothing wakes the waiter before it is done.
   * Nodes fire on the waiter's side: a plain waiter's lock is held while
   * they are set up. */
  jw.pending = n + 1;
  weft__waiter_lock(&jw.waiter);
  for (size_t i = 0; i < n; i++) {
    weft_task_t *t = tasks[i];
    join_node_t *node = &nodes[i];
    *node = (join_node_t){.jw = &jw, .target = t};
    weft__queue_init(&node->link);
    if (weft_task_status(t) != WEFT_EPENDING) {
      node->fired = true;
      jw.pending--;
      continue;
    }
    if (!plain && t->loop == self->loop) {
      /* The same task twice is fine: each node fires once. */
      weft__queue_insert_tail(&t->joiners, &node->link);
      continue;
    }
    node->remote = true;
    node->msg.run = register_run;
    if (weft__inbox_push(t->loop, &node->msg, false) != 0) {
      /* That loop's inbox is closed: it is ending its last tasks. */
      node->fired = true;
      jw.pending--;
      weft__task_wait_ended(t);
      any_ended(&jw, node);
    }
  }
  if (--jw.pending == 0) /* the set-up's own count */
    weft__waiter_wake(&jw.waiter, cut);
  weft__waiter_unlock(&jw.waiter);

  if (cut)
    cancel_pending(&jw);
  int result = cut;
  /* A plain waiter's done is read under its lock only: plain goes first. */
  if (plain || !jw.waiter.done) {
    if (has_timeout && !cut) {
      weft_loop_t *loop = self->loop;
      uv_update_time(loop->uv);
      uint64_t now = weft__now(loop);
      weft__timer_start(loop, &jw.timeout,
                        timeout_ms > UINT64_MAX - now ? UINT64_MAX : now + timeout_ms);
    }
    result = weft__waiter_wait(&jw.waiter);
    if (!plain)
      weft__timer_stop(self->loop, &jw.timeout);
  } else {
    result = jw.waiter.result;
  }
  weft__waiter_destroy(&jw.waiter);
  *first_err = jw.first_err;
  *joined = true;
  if (any) {
    *any = jw.index;
    /* The first task ended before any cut: the wait succeeded (a cancel
     * stays pending for the next await). */
    if (jw.got)
      result = 0;
  }
  nodes_put(nodes, small);
  return result;
}

static int await_one(weft_task_t *task, void **result, bool shielded, uint64_t ms,
                     bool has_timeout, const char *fn) {
  int first_err;
  bool joined;
  int err = join(&task, 1, shielded, ms, has_timeout, &first_err, &joined, NULL, fn);
  if (joined && result && weft_task_status(task) != WEFT_EPENDING)
    *result = task->result;
  /* The caller's own cancellation or timeout wins over the task's status. */
  return err ? err : weft_task_status(task);
}

int weft_await(weft_task_t *task, void **result) {
  return await_one(task, result, false, 0, false, "weft_await");
}

int weft_await_shielded(weft_task_t *task, void **result) {
  return await_one(task, result, true, 0, false, "weft_await_shielded");
}

int weft_wait_for(weft_task_t *task, uint64_t timeout_ms, void **result) {
  return await_one(task, result, false, timeout_ms, true, "weft_wait_for");
}

int weft_gather(weft_task_t **tasks, size_t n, void **results, int *statuses) {
  int first_err;
  bool joined;
  int err = join(tasks, n, false, 0, false, &first_err, &joined, NULL, "weft_gather");
  if (!joined)
    return err;
  for (size_t i = 0; i < n; i++) {
    if (results)
      results[i] = tasks[i]->result;
    if (statuses)
      statuses[i] = weft_task_status(tasks[i]);
  }
  return err ? err : first_err;
}

int weft_wait_any(weft_task_t **tasks, size_t n, size_t *index) {
  if (n == 0 || !index) {
    weft__misuse("weft_wait_any", "n is 0 or index is NULL");
    return WEFT_EINVAL;
  }
  *index = n;
  int first_err;
  bool joined;
  size_t i = n;
  int err = join(tasks, n, false, 0, false, &first_err, &joined, &i, "weft_wait_any");
  if (joined && err == 0)
    *index = i;
  return err;
}
