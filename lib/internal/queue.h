/* The one intrusive list of weft: a circular doubly linked list whose head is
 * a sentinel node. Every list in the library (ready queue, waiters of a task,
 * stack pool, all tasks of a loop) uses it, so a node can be unlinked in O(1)
 * without knowing which list holds it. */
#ifndef WEFT_INTERNAL_QUEUE_H
#define WEFT_INTERNAL_QUEUE_H

#include <stddef.h>

typedef struct weft__queue {
  struct weft__queue *next;
  struct weft__queue *prev;
} weft__queue_t;

#define weft__container_of(ptr, type, field) \
  ((type *)((char *)(ptr) - offsetof(type, field)))

static inline void weft__queue_init(weft__queue_t *q) {
  q->next = q;
  q->prev = q;
}

static inline int weft__queue_empty(const weft__queue_t *q) {
  return q->next == q;
}

/* A node is "linked" while it sits on a list; unlinked nodes point at
 * themselves, which lets debug builds assert a task is on one list only. */
static inline int weft__queue_linked(const weft__queue_t *n) {
  return n->next != n;
}

static inline void weft__queue_insert_tail(weft__queue_t *h, weft__queue_t *n) {
  n->next = h;
  n->prev = h->prev;
  h->prev->next = n;
  h->prev = n;
}

static inline void weft__queue_insert_head(weft__queue_t *h, weft__queue_t *n) {
  n->prev = h;
  n->next = h->next;
  h->next->prev = n;
  h->next = n;
}

static inline void weft__queue_remove(weft__queue_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n;
  n->prev = n;
}

static inline weft__queue_t *weft__queue_head(const weft__queue_t *h) {
  return h->next;
}

#endif
