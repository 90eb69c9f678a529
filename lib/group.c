/* Structured task groups (asyncio.TaskGroup). A group keeps its live children
 * on a list; a child that ends leaves the list, and the first child to fail
 * (a status other than 0 and WEFT_ECANCELED) cancels its siblings. The group's
 * waiter parks until the list is empty, which also covers children spawned
 * while it waits. */
#include "internal.h"

#include <stdlib.h>

struct weft_group {
  weft__queue_t children;   /* live children, through task->group_link */
  size_t nchildren;
  int err;                  /* the first child failure, 0 if none */
  bool aborting;            /* the waiter was cancelled: no new children */
  bool waited;              /* weft_group_wait has returned */
  bool release_pending;     /* released while waited for: the wait frees it */
  weft__wait_t *waiter;     /* the parked weft_group_wait, if any */
};

int weft_group_new(weft_group_t **out) {
  if (!out)
    return WEFT_EINVAL;
  weft_group_t *g = weft__calloc(1, sizeof *g);
  if (!g)
    return WEFT_ENOMEM;
  weft__queue_init(&g->children);
  *out = g;
  return 0;
}

static void cancel_children(weft_group_t *g) {
  for (weft__queue_t *q = g->children.next; q != &g->children; q = q->next)
    weft_task_cancel(weft__container_of(q, weft_task_t, group_link));
}

int weft_group_spawn(weft_group_t *g, weft_loop_t *loop, weft_fn fn, void *arg) {
  weft_task_t *t;
  if (!g)
    return WEFT_EINVAL;
  if (g->waited) {
    weft__misuse("weft_group_spawn", "the group's wait has already returned");
    return WEFT_EINVAL;
  }
  if (g->err || g->aborting)
    return WEFT_ECANCELED;
  weft_loop_t *target = loop ? loop : weft_loop_current();
  if (target && !weft__on_owner(target)) {
    weft__misuse("weft_group_spawn", "a group's children must be spawned on loops of this thread");
    return WEFT_EPERM;
  }
  int err = weft__spawn(loop, fn, arg, false, &t, "weft_group_spawn");
  if (err)
    return err;
  t->group = g;
  weft__queue_insert_tail(&g->children, &t->group_link);
  g->nchildren++;
  return 0;
}

void weft__group_child_done(weft_task_t *t) {
  weft_group_t *g = t->group;
  weft__queue_remove(&t->group_link);
  t->group = NULL;
  g->nchildren--;
  if (t->status != 0 && t->status != WEFT_ECANCELED && g->err == 0) {
    g->err = t->status;
    cancel_children(g);
  }
  if (g->nchildren == 0 && g->waiter) {
    weft__wait_t *w = g->waiter;
    g->waiter = NULL;
    weft__wake(w, w->interrupted,
               w->interrupted == 0 ? WEFT_WAKE_DONE
               : w->interrupted == WEFT_ECANCELED ? WEFT_WAKE_CANCEL : WEFT_WAKE_DEADLINE);
  }
}

typedef struct group_wait {
  weft__wait_t base;
  weft_group_t *group;
} group_wait_t;

static bool group_wait_interrupt(weft__wait_t *w, int err) {
  group_wait_t *gw = weft__container_of(w, group_wait_t, base);
  gw->group->aborting = true;
  cancel_children(gw->group);
  return false;
}

int weft_group_wait(weft_group_t *g) {
  weft_task_t *self;
  int err = weft__await_begin(&self, "weft_group_wait");
  if (err == WEFT_ENOTASK)
    return err;
  if (!g)
    return WEFT_EINVAL;
  if (g->waited || g->waiter) {
    weft__misuse("weft_group_wait", "the group is already being waited for");
    return WEFT_EINVAL;
  }
  if (err) {
    /* The caller is cancelled or out of time: the children go too, and the
     * wait still lasts until they have all ended. */
    g->aborting = true;
    cancel_children(g);
  }
  int result = err;
  if (g->nchildren > 0) {
    group_wait_t gw = {
      .base = {.task = self, .kind = WEFT_WAIT_JOIN, .interrupt = group_wait_interrupt},
      .group = g,
    };
    g->waiter = &gw.base;
    if (err) {
      gw.base.interrupt = NULL;
      gw.base.interrupted = err;
    }
    int r = weft__park(&gw.base);
    if (!result)
      result = r;
  }
  g->waited = true;
  result = result ? result : g->err;
  if (g->release_pending)
    free(g);
  return result;
}

void weft_group_release(weft_group_t *g) {
  if (!g)
    return;
  if (g->waiter) {
    /* A task is parked in weft_group_wait: end the children and let that
     * wait, which still needs the group, free it when it returns. */
    weft__misuse("weft_group_release", "released while a task waits for the group");
    g->release_pending = true;
    g->aborting = true;
    cancel_children(g);
    return;
  }
  while (!weft__queue_empty(&g->children)) {
    weft__queue_t *q = weft__queue_head(&g->children);
    weft__queue_remove(q);
    weft_task_t *t = weft__container_of(q, weft_task_t, group_link);
    t->group = NULL;
    weft_task_cancel(t);
  }
  free(g);
}
