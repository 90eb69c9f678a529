/* Channels: a bounded FIFO of pointers that tasks on any loops and plain
 * threads share.
 *
 * The messages travel through a lock-free ring of cells, each stamped with
 * a sequence number (Dmitry Vyukov's bounded multi-producer, multi-consumer
 * queue, with stamps doubled so that a ring of one cell works too): a
 * sender claims position p by moving the tail from p to p + 1 when the
 * cell's stamp says it is free for p (2p), writes the message and stamps
 * the cell 2p + 1; a receiver claims position p at the head when the stamp
 * is 2p + 1, takes the message and stamps the cell 2(p + cap), free for the
 * sender one lap later. Senders and receivers touch different cache
 * lines except the cells themselves, so two busy loops move messages with
 * no lock and no system call. The tail's top bit is the closed flag: once
 * set, no sender can claim a position, so every successful send comes
 * before the close and receivers drain exactly what was sent.
 *
 * Only waiting takes the mutex. A sender that finds the ring full (or a
 * receiver that finds it empty) puts a waiter record on the channel's list,
 * counts itself in the list's atomic length, and tries once more before it
 * sleeps. Whoever then makes progress (a receive frees a cell, a send fills
 * one) looks at that length after its own change to the ring, with a full
 * fence on both sides (a Dekker pair): either the waiter's second try sees
 * the change, or the one who made it sees the waiter and wakes the longest
 * waiting one. A woken waiter tries again, and always tries at least once
 * more before it gives up on a cancel or a deadline, so a wake-up meant for
 * it is never lost; if another got there first, it waits again.
 *
 * Waking a task on the loop this thread runs makes it ready directly; a
 * task of another loop is woken through that loop's inbox (so a busy loop
 * pays no system call); a plain thread through its condition variable. A
 * waiter record lives on the waiting side's stack for the length of the
 * wait; the interrupt hook does not let a task go while a wake-up for it is
 * on its way, so nothing touches the record after its owner moved on. */
#include "internal.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#define WEFT__CHAN_MAX ((size_t)1 << 24)
#define CLOSED ((uint64_t)1 << 63)   /* in the tail: no more sends */
#define LINE 64

/* A cell's stamp is kept less twice its index, so that a new ring is all
 * zeroes and costs nothing per cell (weft__zalloc): the stamp of cell i is
 * seq + 2i. */
typedef struct cell {
  _Atomic uint64_t seq;     /* 2p - 2i: free for position p; 2p + 1 - 2i: holds its message */
  void *msg;
} cell_t;

typedef struct waitlist {
  weft__queue_t list;       /* weft__chan_rec_t, oldest first, under the lock */
  atomic_uint len;          /* its length, written under the lock */
} waitlist_t;

struct weft_chan {
  alignas(LINE) _Atomic uint64_t tail;  /* next position to send; CLOSED bit */
  alignas(LINE) _Atomic uint64_t head;  /* next position to receive */
  alignas(LINE) cell_t *cells;          /* read-only after creation */
  size_t cap;
  uint64_t mask;            /* cap - 1 when cap is a power of two, else 0 */
  alignas(LINE) atomic_int refs;
  pthread_mutex_t lock;     /* guards the two wait lists only */
  waitlist_t senders;       /* waiting for room */
  waitlist_t receivers;     /* waiting for a message */
  char name[32];            /* weft_chan_set_name's; "" if none */
};

/* A send or receive of one task or thread waiting on its own. */
typedef struct chan_waiter {
  weft__chan_rec_t rec;
  weft__waiter_t waiter;    /* a task or a plain thread (waiter.c) */
} chan_waiter_t;

int weft_chan_new(weft_chan_t **out, size_t capacity) {
  if (!out)
    return WEFT_EINVAL;
  *out = NULL;
  if (capacity == 0 || capacity > WEFT__CHAN_MAX) {
    weft__misuse("weft_chan_new", "capacity %zu is not within 1 and 2^24", capacity);
    return WEFT_EINVAL;
  }
  size_t size = (sizeof(weft_chan_t) + LINE - 1) / LINE * LINE;
  weft_chan_t *ch = weft__aligned_alloc(LINE, size);
  if (!ch)
    return WEFT_ENOMEM;
  memset(ch, 0, sizeof *ch);
  ch->cells = weft__zalloc(capacity * sizeof *ch->cells);
  if (!ch->cells) {
    free(ch);
    return WEFT_ENOMEM;
  }
  ch->cap = capacity;
  ch->mask = (capacity & (capacity - 1)) == 0 ? capacity - 1 : 0;
  atomic_init(&ch->tail, 0);
  atomic_init(&ch->head, 0);
  atomic_init(&ch->refs, 1);
  pthread_mutex_init(&ch->lock, NULL);
  weft__queue_init(&ch->senders.list);
  weft__queue_init(&ch->receivers.list);
  atomic_init(&ch->senders.len, 0);
  atomic_init(&ch->receivers.len, 0);
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
  if (!weft__queue_empty(&ch->senders.list) || !weft__queue_empty(&ch->receivers.list))
    weft__fatal("weft_chan_release: the last reference was dropped while tasks wait on the channel");
  pthread_mutex_destroy(&ch->lock);
  weft__zfree(ch->cells, ch->cap * sizeof *ch->cells);
  free(ch);
}

/* ------------------------------------------------------------ the ring */

static uint64_t index_of(const weft_chan_t *ch, uint64_t pos) {
  return ch->mask ? pos & ch->mask : pos % ch->cap;
}

/* Tests only: called by a sender between claiming its cell and writing it,
 * to hold it there while the test closes the channel (test_chan.c). */
void (*weft__chan_claimed_hook)(weft_chan_t *ch);

static int ring_send(weft_chan_t *ch, void *msg) {
  uint64_t pos = atomic_load_explicit(&ch->tail, memory_order_relaxed);
  for (;;) {
    if (pos & CLOSED)
      return WEFT_ECLOSED;
    uint64_t i = index_of(ch, pos);
    cell_t *c = &ch->cells[i];
    uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire) + 2 * i;
    int64_t dif = (int64_t)(seq - 2 * pos);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&ch->tail, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        if (weft__chan_claimed_hook)
          weft__chan_claimed_hook(ch);
        c->msg = msg;
        atomic_store_explicit(&c->seq, 2 * pos + 1 - 2 * i, memory_order_release);
        return 0;
      }
    } else if (dif < 0) {
      return WEFT_EAGAIN; /* the cell still holds the message of a lap ago */
    } else {
      pos = atomic_load_explicit(&ch->tail, memory_order_relaxed);
    }
  }
}

static int ring_recv(weft_chan_t *ch, void **msg) {
  uint64_t pos = atomic_load_explicit(&ch->head, memory_order_relaxed);
  for (;;) {
    uint64_t i = index_of(ch, pos);
    cell_t *c = &ch->cells[i];
    uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire) + 2 * i;
    int64_t dif = (int64_t)(seq - (2 * pos + 1));
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&ch->head, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        *msg = c->msg;
        atomic_store_explicit(&c->seq, 2 * (pos + ch->cap) - 2 * i, memory_order_release);
        return 0;
      }
    } else if (dif < 0) {
      /* Empty, or a sender claimed the cell and is still writing it (it
       * wakes receivers once done). Closed only when nothing is claimed. */
      uint64_t tail = atomic_load_explicit(&ch->tail, memory_order_acquire);
      return tail == (pos | CLOSED) ? WEFT_ECLOSED : WEFT_EAGAIN;
    } else {
      pos = atomic_load_explicit(&ch->head, memory_order_relaxed);
    }
  }
}

/* ------------------------------------------------------------- waiting */

static void unlink_rec(weft__chan_rec_t *r) {
  weft__queue_remove(&r->link);
  atomic_fetch_sub_explicit(&((waitlist_t *)r->wl)->len, 1, memory_order_relaxed);
}

/* Called with ch->lock held: r leaves its list and its owner is told to
 * try again. */
static void wake_rec(weft__chan_rec_t *r) {
  unlink_rec(r);
  r->fire(r);
}

static void notify_all(weft_chan_t *ch, waitlist_t *wl) {
  (void)ch;
  while (!weft__queue_empty(&wl->list))
    wake_rec(weft__container_of(weft__queue_head(&wl->list), weft__chan_rec_t, link));
}

/* After a change to the ring that a waiter of wl may be waiting for: wakes
 * the oldest one, if any. The fence pairs with the one in wait_once (and
 * weft_select's, after it enlists).
 *
 * On a closed channel it wakes every waiter instead. A sender may have
 * claimed its cell before the close and written it after: the receivers
 * the close woke found that cell claimed but empty, and went back to wait.
 * The message wakes one of them; the others can only end with
 * WEFT_ECLOSED once it is taken, and nobody else would wake them. */
static void notify(weft_chan_t *ch, waitlist_t *wl) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&wl->len, memory_order_relaxed) == 0)
    return;
  bool closed = atomic_load_explicit(&ch->tail, memory_order_relaxed) & CLOSED;
  pthread_mutex_lock(&ch->lock);
  if (closed)
    notify_all(ch, wl);
  else if (!weft__queue_empty(&wl->list))
    wake_rec(weft__container_of(weft__queue_head(&wl->list), weft__chan_rec_t, link));
  pthread_mutex_unlock(&ch->lock);
}

static void chan_waiter_fire(weft__chan_rec_t *r) {
  weft__waiter_wake(&weft__container_of(r, chan_waiter_t, rec)->waiter, 0);
}

static bool chan_interrupt(weft__wait_t *base, int err) {
  (void)err;
  chan_waiter_t *w = weft__container_of(base, chan_waiter_t, waiter.base);
  /* Not pending: its wake-up is on the way (perhaps in an inbox, inside
   * this record); the task takes it and tries once more. */
  return weft__chan_delist(&w->rec);
}

/* ----------------------------------------------- records, for select */

static waitlist_t *list_of(weft_chan_t *ch, bool send) {
  return send ? &ch->senders : &ch->receivers;
}

static void enlist_locked(weft__chan_rec_t *r) {
  weft__queue_insert_tail(&((waitlist_t *)r->wl)->list, &r->link);
  atomic_fetch_add_explicit(&((waitlist_t *)r->wl)->len, 1, memory_order_relaxed);
}

void weft__chan_enlist(weft__chan_rec_t *r, weft_chan_t *ch, bool send) {
  r->ch = ch;
  r->wl = list_of(ch, send);
  pthread_mutex_lock(&ch->lock);
  enlist_locked(r);
  pthread_mutex_unlock(&ch->lock);
}

bool weft__chan_delist(weft__chan_rec_t *r) {
  pthread_mutex_lock(&r->ch->lock);
  bool pending = weft__queue_linked(&r->link);
  if (pending)
    unlink_rec(r);
  pthread_mutex_unlock(&r->ch->lock);
  return pending;
}

void weft__chan_pass(weft__chan_rec_t *r) {
  notify(r->ch, r->wl);
}

/* One operation: a send (send true, msg the message) or a receive. */
typedef struct op {
  weft_chan_t *ch;
  bool send;
  void *msg;
} op_t;

static int try_op(op_t *op) {
  int err = op->send ? ring_send(op->ch, op->msg) : ring_recv(op->ch, &op->msg);
  if (err == 0)
    notify(op->ch, list_of(op->ch, !op->send));
  return err;
}

int weft__chan_try(weft_chan_t *ch, bool send, void **msg) {
  op_t op = {.ch = ch, .send = send, .msg = *msg};
  int err = try_op(&op);
  *msg = op.msg;
  return err;
}

/* Enters the wait list, tries once more, and if that too would have to
 * wait, sleeps until woken (or, for a task, cut by a cancel or deadline).
 * Returns the second try's result if it did not wait, WEFT_EAGAIN after a
 * wake-up (try again), or the cancel or deadline error. */
static int wait_once(op_t *op, weft_task_t *t) {
  weft_chan_t *ch = op->ch;
  chan_waiter_t w = {.rec = {.ch = ch, .wl = list_of(ch, op->send), .fire = chan_waiter_fire}};
  weft__waiter_init(&w.waiter, t, WEFT_WAIT_CHAN, ch, chan_interrupt);
  w.waiter.base.arg = op->send;

  pthread_mutex_lock(&ch->lock);
  enlist_locked(&w.rec);
  atomic_thread_fence(memory_order_seq_cst);
  int err = op->send ? ring_send(ch, op->msg) : ring_recv(ch, &op->msg);
  if (err != WEFT_EAGAIN) {
    unlink_rec(&w.rec);
    pthread_mutex_unlock(&ch->lock);
    weft__waiter_destroy(&w.waiter);
    if (err == 0)
      notify(ch, list_of(ch, !op->send));
    return err;
  }
  pthread_mutex_unlock(&ch->lock);
  /* A wake may come between the unlock and the wait: the waiter keeps it. */
  err = weft__waiter_wait(&w.waiter);
  weft__waiter_destroy(&w.waiter);
  return err ? err : WEFT_EAGAIN;
}

static int blocking_op(op_t *op, const char *fn) {
  weft_task_t *t;
  int err = weft__waiter_caller(&t, fn);
  if (err)
    return err;
  if (!op->ch)
    return WEFT_EINVAL;
  while ((err = try_op(op)) == WEFT_EAGAIN) {
    err = wait_once(op, t);
    if (err != WEFT_EAGAIN)
      break;
    /* Woken: try again. A cancel or deadline that came meanwhile counts
     * only if this try too would wait, so the wake-up is not lost. */
    if ((err = try_op(op)) != WEFT_EAGAIN)
      break;
    if (t && (err = weft__await_begin(&t, fn)) != 0)
      break;
  }
  return err;
}

/* ------------------------------------------------------------ send, recv */

int weft_chan_try_send(weft_chan_t *ch, void *msg) {
  if (!ch)
    return WEFT_EINVAL;
  op_t op = {.ch = ch, .send = true, .msg = msg};
  return try_op(&op);
}

int weft_chan_try_recv(weft_chan_t *ch, void **msg) {
  if (!ch || !msg)
    return WEFT_EINVAL;
  op_t op = {.ch = ch, .send = false};
  int err = try_op(&op);
  if (err == 0)
    *msg = op.msg;
  return err;
}

int weft_chan_send(weft_chan_t *ch, void *msg) {
  op_t op = {.ch = ch, .send = true, .msg = msg};
  return blocking_op(&op, "weft_chan_send");
}

int weft_chan_recv(weft_chan_t *ch, void **msg) {
  if (!msg && ch)
    return WEFT_EINVAL;
  op_t op = {.ch = ch, .send = false};
  int err = blocking_op(&op, "weft_chan_recv");
  if (err == 0)
    *msg = op.msg;
  return err;
}

int weft_chan_close(weft_chan_t *ch) {
  if (!ch)
    return WEFT_EINVAL;
  uint64_t old = atomic_fetch_or_explicit(&ch->tail, CLOSED, memory_order_seq_cst);
  if (old & CLOSED)
    return WEFT_ECLOSED;
  /* Every waiter tries again: senders then fail with WEFT_ECLOSED,
   * receivers take what is left, then get WEFT_ECLOSED. */
  pthread_mutex_lock(&ch->lock);
  notify_all(ch, &ch->senders);
  notify_all(ch, &ch->receivers);
  pthread_mutex_unlock(&ch->lock);
  return 0;
}

int weft_chan_set_name(weft_chan_t *ch, const char *name) {
  if (!ch)
    return WEFT_EINVAL;
  return weft__name_set(ch->name, name, "weft_chan_set_name");
}

const char *weft__chan_name(const weft_chan_t *ch) {
  return ch->name;
}
