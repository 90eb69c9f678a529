/* Channels: a bounded FIFO of pointers that tasks on any loops and plain
 * threads share. One mutex guards the ring buffer and the two lists of
 * waiters (senders blocked on a full channel, receivers on an empty one).
 * Whoever makes progress for a waiter completes it under the lock, hands it
 * its message or result, and wakes it: a task on the loop this thread is
 * running is made ready directly; a task of another loop through that loop's
 * inbox (so a busy loop pays no system call); a plain thread through its
 * condition variable.
 *
 * A waiter record lives on the waiting side's stack for the length of the
 * wait. Once completed it is off the channel's lists, and a task whose
 * completion is on its way is not let go by a cancel or a deadline (the
 * interrupt hook answers "wait"), so nothing can touch the record after its
 * owner moved on, and a message handed over is never lost: the task gets it,
 * and its cancellation is seen at its next await. */
#include "internal.h"

#include <stdlib.h>

#define WEFT__CHAN_MAX ((size_t)1 << 24)

struct weft_chan {
  pthread_mutex_t lock;
  void **buf;               /* ring of cap slots */
  size_t cap;
  size_t head;              /* oldest message */
  size_t len;
  bool closed;
  weft__queue_t senders;    /* chan_waiter_t, waiting for room */
  weft__queue_t receivers;  /* chan_waiter_t, waiting for a message */
  atomic_int refs;
};

typedef struct chan_waiter {
  weft__wait_t base;        /* a task's wait (unused by plain threads) */
  weft__queue_t link;       /* on a waiter list while pending */
  weft_chan_t *ch;
  void *msg;                /* the message to send, or the one received */
  int result;               /* 0 or WEFT_ECLOSED, once completed */
  weft_loop_t *loop;        /* the waiting task's loop; NULL: plain thread */
  pthread_cond_t *cond;     /* the plain thread's condition */
  weft__msg_t wake_msg;     /* a completion from another thread */
} chan_waiter_t;

int weft_chan_new(weft_chan_t **out, size_t capacity) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (capacity == 0 || capacity > WEFT__CHAN_MAX) {
    weft__misuse("weft_chan_new", "capacity %zu is not within 1 and 2^24", capacity);
    return WEFT_EINVAL;
  }
  weft_chan_t *ch = calloc(1, sizeof *ch);
  if (!ch)
    return WEFT_ENOMEM;
  ch->buf = malloc(capacity * sizeof *ch->buf);
  if (!ch->buf) {
    free(ch);
    return WEFT_ENOMEM;
  }
  pthread_mutex_init(&ch->lock, NULL);
  ch->cap = capacity;
  weft__queue_init(&ch->senders);
  weft__queue_init(&ch->receivers);
  atomic_init(&ch->refs, 1);
  *out = ch;
  return 0;
}

weft_chan_t *weft_chan_retain(weft_chan_t *ch) {
  if (ch)
    atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
  return ch;
}

void weft_chan_release(weft_chan_t *ch) {
  if (!ch)
    return;
  if (atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (!weft__queue_empty(&ch->senders) || !weft__queue_empty(&ch->receivers))
    weft__fatal("weft_chan_release: the last reference was dropped while tasks wait on the channel");
  pthread_mutex_destroy(&ch->lock);
  free(ch->buf);
  free(ch);
}

/* ----------------------------------------------------- completing waiters */

static void wake_run(weft__msg_t *m, weft_loop_t *loop) {
  chan_waiter_t *w = weft__container_of(m, chan_waiter_t, wake_msg);
  weft__wake(&w->base, 0, WEFT_WAKE_DONE);
}

/* Called with ch->lock held: w leaves its list with its outcome, and its
 * owner is told. */
static void complete(chan_waiter_t *w, int result) {
  weft__queue_remove(&w->link);
  w->result = result;
  if (!w->loop) {
    pthread_cond_signal(w->cond);
  } else if (w->loop == weft__tls.running) {
    weft__wake(&w->base, 0, WEFT_WAKE_DONE);
  } else if (weft__inbox_push(w->loop, &w->wake_msg, false) != 0) {
    /* Cannot happen: a loop keeps its inbox open while any of its tasks
     * lives, and this one is parked here. */
    weft__fatal("channel: the waiting task's loop no longer takes messages");
  }
}

static chan_waiter_t *first(weft__queue_t *list) {
  return weft__container_of(weft__queue_head(list), chan_waiter_t, link);
}

static bool chan_interrupt(weft__wait_t *base, int err) {
  chan_waiter_t *w = weft__container_of(base, chan_waiter_t, base);
  pthread_mutex_lock(&w->ch->lock);
  bool pending = weft__queue_linked(&w->link);
  if (pending)
    weft__queue_remove(&w->link);
  pthread_mutex_unlock(&w->ch->lock);
  /* Not pending: its completion is on the way; take it rather than lose a
   * message. */
  return pending;
}

/* Waits, with ch->lock held on entry and released on return, until w is
 * completed (or, for a task, cut by a cancel or deadline). */
static int wait_locked(weft_chan_t *ch, chan_waiter_t *w, weft__queue_t *list, weft_task_t *t) {
  w->ch = ch;
  weft__queue_insert_tail(list, &w->link);
  if (!t) {
    pthread_cond_t cond;
    pthread_cond_init(&cond, NULL);
    w->loop = NULL;
    w->cond = &cond;
    while (weft__queue_linked(&w->link))
      pthread_cond_wait(&cond, &ch->lock);
    pthread_mutex_unlock(&ch->lock);
    pthread_cond_destroy(&cond);
    return w->result;
  }
  w->loop = t->loop;
  w->wake_msg.run = wake_run;
  w->base.task = t;
  w->base.interrupt = chan_interrupt;
  pthread_mutex_unlock(&ch->lock);
  int err = weft__park(&w->base);
  return err ? err : w->result;
}

/* Who is calling: a task (*t set), a plain thread (NULL), or a libuv
 * callback on a loop's thread, which may not wait. */
static int caller(weft_task_t **t, const char *fn) {
  *t = NULL;
  if (!weft__tls.running)
    return 0;
  return weft__await_begin(t, fn);
}

/* ------------------------------------------------------------ send, recv */

static int send_locked(weft_chan_t *ch, void *msg) {
  if (ch->closed)
    return WEFT_ECLOSED;
  if (!weft__queue_empty(&ch->receivers)) {
    chan_waiter_t *r = first(&ch->receivers);
    r->msg = msg;
    complete(r, 0);
    return 0;
  }
  if (ch->len < ch->cap) {
    ch->buf[(ch->head + ch->len) % ch->cap] = msg;
    ch->len++;
    return 0;
  }
  return WEFT_EAGAIN;
}

static int recv_locked(weft_chan_t *ch, void **msg) {
  if (ch->len > 0) {
    *msg = ch->buf[ch->head];
    ch->head = (ch->head + 1) % ch->cap;
    ch->len--;
    /* Room again: the longest-waiting sender's message takes it. */
    if (!weft__queue_empty(&ch->senders)) {
      chan_waiter_t *s = first(&ch->senders);
      ch->buf[(ch->head + ch->len) % ch->cap] = s->msg;
      ch->len++;
      complete(s, 0);
    }
    return 0;
  }
  return ch->closed ? WEFT_ECLOSED : WEFT_EAGAIN;
}

int weft_chan_try_send(weft_chan_t *ch, void *msg) {
  if (!ch)
    return WEFT_EINVAL;
  pthread_mutex_lock(&ch->lock);
  int err = send_locked(ch, msg);
  pthread_mutex_unlock(&ch->lock);
  return err;
}

int weft_chan_try_recv(weft_chan_t *ch, void **msg) {
  if (!ch || !msg)
    return WEFT_EINVAL;
  pthread_mutex_lock(&ch->lock);
  int err = recv_locked(ch, msg);
  pthread_mutex_unlock(&ch->lock);
  return err;
}

int weft_chan_send(weft_chan_t *ch, void *msg) {
  weft_task_t *t;
  int err = caller(&t, "weft_chan_send");
  if (err)
    return err;
  if (!ch)
    return WEFT_EINVAL;
  pthread_mutex_lock(&ch->lock);
  err = send_locked(ch, msg);
  if (err != WEFT_EAGAIN) {
    pthread_mutex_unlock(&ch->lock);
    return err;
  }
  chan_waiter_t w = {.base = {.kind = WEFT_WAIT_OTHER}, .msg = msg};
  return wait_locked(ch, &w, &ch->senders, t);
}

int weft_chan_recv(weft_chan_t *ch, void **msg) {
  weft_task_t *t;
  int err = caller(&t, "weft_chan_recv");
  if (err)
    return err;
  if (!ch || !msg)
    return WEFT_EINVAL;
  pthread_mutex_lock(&ch->lock);
  err = recv_locked(ch, msg);
  if (err != WEFT_EAGAIN) {
    pthread_mutex_unlock(&ch->lock);
    return err;
  }
  chan_waiter_t w = {.base = {.kind = WEFT_WAIT_OTHER}};
  err = wait_locked(ch, &w, &ch->receivers, t);
  if (err == 0)
    *msg = w.msg;
  return err;
}

int weft_chan_close(weft_chan_t *ch) {
  if (!ch)
    return WEFT_EINVAL;
  pthread_mutex_lock(&ch->lock);
  if (ch->closed) {
    pthread_mutex_unlock(&ch->lock);
    return WEFT_ECLOSED;
  }
  ch->closed = true;
  /* Blocked senders' messages are not sent. Receivers wait only on an empty
   * channel, so nothing is left for them. */
  while (!weft__queue_empty(&ch->senders))
    complete(first(&ch->senders), WEFT_ECLOSED);
  while (!weft__queue_empty(&ch->receivers))
    complete(first(&ch->receivers), WEFT_ECLOSED);
  pthread_mutex_unlock(&ch->lock);
  return 0;
}
