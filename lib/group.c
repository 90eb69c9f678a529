/* Structured task groups (asyncio.TaskGroup, Go's errgroup), across loops. A
 * group keeps its live children on a list; a child that ends leaves the
 * list, and the first child to fail (a status other than 0 and
 * WEFT_ECANCELED) cancels its siblings, on whatever loops they run. The
 * group's waiter (a task on any loop, or a plain thread: waiter.c) waits
 * until the list is empty, which also covers children spawned while it
 * waits.
 *
 * Children end on their own loops' threads, so the group's state is guarded
 * by its lock, and the group is reference counted: its owner holds one
 * reference until weft_group_release, and every child on its list holds
 * one, so a child that ends after the release still finds it. A child is
 * put on the list before its loop can run it (weft__spawn_prepare, then
 * weft__spawn_publish). */
#include "internal.h"

#include <stdlib.h>

struct weft_group {
  weft__group_head_t head;  /* first: the task's end comes through it */
  pthread_mutex_t lock;     /* guards every field below but refs */
  atomic_int refs;          /* the owner's, until released, and each child's */
  weft__queue_t children;   /* live children, through task->group_link */
  size_t nchildren;
  int err;                  /* the first child failure, 0 if none */
  bool aborting;            /* the waiter was cancelled: no new children */
  bool waited;              /* weft_group_wait has returned */
  bool released;            /* the owner gave it back */
  weft__waiter_t *waiter;   /* the waiting task or plain thread, if any */
  bool spawned;             /* a spawn has begun: the limit is fixed */
  weft_sem_t *room;         /* weft_group_set_limit: one permit per child that may run */
};

static void child_done(weft_task_t *t);

int weft_group_new(weft_group_t **out) {
  if (!out)
    return WEFT_EINVAL;
  weft_group_t *g = weft__calloc(1, sizeof *g);
  if (!g)
    return WEFT_ENOMEM;
  g->head.child_done = child_done;
  pthread_mutex_init(&g->lock, NULL);
  atomic_init(&g->refs, 1);
  weft__queue_init(&g->children);
  *out = g;
  return 0;
}

static void group_unref(weft_group_t *g) {
  if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
    return;
  weft_sem_free(g->room);
  pthread_mutex_destroy(&g->lock);
  free(g);
}

/* With the lock held. A cancel never ends a task at once (it ends on its
 * loop, later), so nothing here comes back to this group's lock. */
static void cancel_children(weft_group_t *g) {
  for (weft__queue_t *q = g->children.next; q != &g->children; q = q->next)
    weft_task_cancel(weft__container_of(q, weft_task_t, group_link));
}

/* With the lock held: the last child has gone, the waiter may go. */
static void wake_if_empty(weft_group_t *g) {
  if (g->nchildren == 0 && g->waiter) {
    weft__waiter_t *w = g->waiter;
    g->waiter = NULL;
    weft__waiter_wake(w, 0);
  }
}

int weft_group_set_limit(weft_group_t *g, size_t limit) {
  if (!g || limit > WEFT_SEM_MAX)
    return WEFT_EINVAL;
  weft_sem_t *room = NULL;
  if (limit > 0) {
    int err = weft_sem_new(&room, limit);
    if (err)
      return err;
  }
  pthread_mutex_lock(&g->lock);
  int err = g->released ? WEFT_EINVAL : g->spawned ? WEFT_EBUSY : 0;
  if (!err) {
    weft_sem_t *old = g->room;
    g->room = room;
    room = old;
  }
  pthread_mutex_unlock(&g->lock);
  weft_sem_free(room);
  if (err == WEFT_EBUSY)
    weft__misuse("weft_group_set_limit", "children were spawned already");
  return err;
}

/* Waits for room under the group's limit, if it has one. */
static int take_room(weft_group_t *g, weft_sem_t **room) {
  pthread_mutex_lock(&g->lock);
  g->spawned = true;
  *room = g->room;
  pthread_mutex_unlock(&g->lock);
  if (!*room)
    return 0;
  if (weft__tls.running && !weft__current())
    return weft_sem_try_acquire(*room); /* a libuv callback cannot wait */
  return weft_sem_acquire(*room);
}

int weft_group_spawn(weft_group_t *g, weft_loop_t *loop, weft_fn fn, void *arg) {
  weft_task_t *t;
  weft_sem_t *room;
  if (!g)
    return WEFT_EINVAL;
  int err = take_room(g, &room);
  if (err)
    return err;
  err = weft__spawn_prepare(loop, fn, arg, false, &t, "weft_group_spawn");
  if (err) {
    if (room)
      weft_sem_post(room);
    return err;
  }
  pthread_mutex_lock(&g->lock);
  if (g->waited || g->released || g->err || g->aborting) {
    err = g->waited || g->released ? WEFT_EINVAL : WEFT_ECANCELED;
    pthread_mutex_unlock(&g->lock);
    free(t);
    if (room)
      weft_sem_post(room);
    if (err == WEFT_EINVAL)
      weft__misuse("weft_group_spawn", "the group's wait has already returned, or it was released");
    return err;
  }
  t->group = g;
  weft__queue_insert_tail(&g->children, &t->group_link);
  g->nchildren++;
  atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(&g->lock);
  err = weft__spawn_publish(t);
  if (err) {
    /* Its loop refused it (shutting down): it never ran. */
    pthread_mutex_lock(&g->lock);
    weft__queue_remove(&t->group_link);
    g->nchildren--;
    wake_if_empty(g);
    pthread_mutex_unlock(&g->lock);
    if (room)
      weft_sem_post(room);
    group_unref(g);
    free(t);
  }
  return err;
}

/* A child has ended, on its own loop's thread (through the group's head). */
static void child_done(weft_task_t *t) {
  weft_group_t *g = t->group;
  pthread_mutex_lock(&g->lock);
  weft__queue_remove(&t->group_link);
  t->group = NULL;
  g->nchildren--;
  if (t->status != 0 && t->status != WEFT_ECANCELED && g->err == 0) {
    g->err = t->status;
    cancel_children(g);
  }
  wake_if_empty(g);
  weft_sem_t *room = g->room;
  pthread_mutex_unlock(&g->lock);
  if (room)
    weft_sem_post(room);
  group_unref(g);
}

typedef struct group_wait {
  weft__waiter_t waiter;
  weft_group_t *group;
} group_wait_t;

/* The waiting task is cancelled or out of time: the children go too, and
 * the wait lasts until they have all ended. */
static bool group_wait_interrupt(weft__wait_t *w, int err) {
  weft_group_t *g = weft__container_of(w, group_wait_t, waiter.base)->group;
  pthread_mutex_lock(&g->lock);
  g->aborting = true;
  cancel_children(g);
  pthread_mutex_unlock(&g->lock);
  return false;
}

int weft_group_wait(weft_group_t *g) {
  weft_task_t *self = NULL;
  int err = 0;
  if (weft__tls.running || weft__tls.bound) {
    /* A loop's thread waits in a task: outside one (a callback, or with
     * its loop bound but not running) it could only block its own loop. */
    err = weft__await_begin(&self, "weft_group_wait");
    if (err == WEFT_ENOTASK)
      return err;
  }
  if (!g)
    return WEFT_EINVAL;
  pthread_mutex_lock(&g->lock);
  if (g->waited || g->waiter || g->released) {
    pthread_mutex_unlock(&g->lock);
    weft__misuse("weft_group_wait", "the group is already being waited for, or was released");
    return WEFT_EINVAL;
  }
  if (!self) {
    /* A plain thread: a child of a loop this thread owns could never run
     * while it blocks here. */
    for (weft__queue_t *q = g->children.next; q != &g->children; q = q->next) {
      if (pthread_equal(weft__container_of(q, weft_task_t, group_link)->owner, pthread_self())) {
        pthread_mutex_unlock(&g->lock);
        weft__misuse("weft_group_wait", "called outside a task, on the thread that owns a "
                                        "child's loop (the loop could never run to end it)");
        return WEFT_ENOTASK;
      }
    }
  }
  if (err) {
    /* Cancelled or out of time already: the children go too, and the wait
     * still lasts until they have all ended. */
    g->aborting = true;
    cancel_children(g);
  }
  int result = err;
  if (g->nchildren > 0) {
    group_wait_t gw = {.group = g};
    weft__waiter_init(&gw.waiter, self, WEFT_WAIT_JOIN, NULL, err ? NULL : group_wait_interrupt);
    g->waiter = &gw.waiter;
    /* The wait's own reference: a release meanwhile cannot free the group
     * under it. */
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&g->lock);
    int r = weft__waiter_wait(&gw.waiter);
    /* A cut (cancel, deadline) was recorded on the wait itself. */
    if (!result)
      result = gw.waiter.base.interrupted ? gw.waiter.base.interrupted : r;
    weft__waiter_destroy(&gw.waiter);
    pthread_mutex_lock(&g->lock);
    g->waited = true;
    result = result ? result : g->err;
    pthread_mutex_unlock(&g->lock);
    group_unref(g);
    return result;
  }
  g->waited = true;
  result = result ? result : g->err;
  pthread_mutex_unlock(&g->lock);
  return result;
}

void weft_group_release(weft_group_t *g) {
  if (!g)
    return;
  pthread_mutex_lock(&g->lock);
  if (g->released) {
    pthread_mutex_unlock(&g->lock);
    weft__fatal("weft_group_release: %p was released twice", (void *)g);
  }
  if (g->waiter)
    weft__misuse("weft_group_release", "released while a task waits for the group");
  /* Children still running are cancelled; they leave the group as they
   * end, each with the reference it holds. */
  g->released = true;
  g->aborting = true;
  cancel_children(g);
  pthread_mutex_unlock(&g->lock);
  group_unref(g);
}
