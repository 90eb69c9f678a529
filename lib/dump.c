/* weft_dump: every loop of the process and every live task on it.
 *
 * Task lists belong to their loops' threads, so each loop describes itself:
 * the dumping thread asks every loop through its inbox, and each writes its
 * part into a memory buffer between two steps. A loop held by a task's
 * step cannot answer: after a short wait the dump names that task and how
 * long it has held the loop, from what the loop publishes of its step
 * (stall.c), and goes on. A loop that is neither answering nor in a step
 * (busy in libuv callbacks, or not running) gets up to 1 s. The request,
 * shared by both sides, is freed by whichever is done with it last. The
 * loop the caller itself runs, if any, is described on the spot. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define DUMP_WAIT_MS 1000
#define DUMP_STEP_WAIT_MS 20  /* before a loop in a step is named as held */
#define DUMP_MAX_TASKS 1000  /* per loop; the rest are counted */

typedef struct dump_req {
  weft__msg_t msg;
  atomic_int refs;          /* the dumping thread's and the loop's */
  weft__waiter_t waiter;    /* the dumping thread, until the loop answers */
  char *text;               /* the loop's part (open_memstream) */
  size_t len;
  char name[32];
  weft_loop_t *loop;        /* read only through the registry (it may be gone) */
} dump_req_t;

static void req_unref(dump_req_t *r) {
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
    return;
  weft__waiter_destroy(&r->waiter);
  free(r->text);
  free(r);
}

/* How much of the task's stack has been touched: pages resident from the
 * lowest one down to the top (a reused stack keeps what earlier tasks
 * touched). */
static size_t stack_used(const weft__stack_t *st) {
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t lo = (uintptr_t)st->lo & ~(uintptr_t)(page - 1);
  uintptr_t hi = (uintptr_t)st->lo + st->size;
  size_t pages = (hi - lo + (uintptr_t)page - 1) / (uintptr_t)page;
  unsigned char vec[1024];
  if (pages > sizeof vec)
    return 0;
  if (mincore((void *)lo, hi - lo, vec) != 0)
    return 0;
  for (size_t i = 0; i < pages; i++)
    if (vec[i] & 1)
      return hi - (lo + i * (uintptr_t)page);
  return 0;
}

/* A named object by its name, else by its address. */
static void object(FILE *f, const char *name, const void *p) {
  if (name[0])
    fprintf(f, "\"%.31s\"", name);
  else
    fprintf(f, "%p", p);
}

static void describe_wait(FILE *f, weft_loop_t *loop, const weft__wait_t *w) {
  switch (w->kind) {
  case WEFT_WAIT_SLEEP: {
    const weft__timer_t *tm = w->what;
    uint64_t now = weft__now(loop);
    fprintf(f, "sleep until +%llu ms",
            (unsigned long long)(tm && tm->due > now ? tm->due - now : 0));
    break;
  }
  case WEFT_WAIT_JOIN:
    if (w->what) {
      /* The awaited task may be another loop's: read its name, never
       * write it (weft_task_name fills in a default). */
      const weft_task_t *target = w->what;
      if (target->name[0])
        fprintf(f, "join of task %.32s", target->name);
      else
        fprintf(f, "join of task task-%llu", (unsigned long long)target->id);
    }
    else
      fprintf(f, "join of several tasks (gather or group)");
    break;
  case WEFT_WAIT_THREAD: fprintf(f, "to_thread work"); break;
  case WEFT_WAIT_CHAN:
    fprintf(f, "channel ");
    object(f, weft__chan_name(w->what), w->what);
    fprintf(f, " (%s)", w->arg ? "send" : "recv");
    break;
  case WEFT_WAIT_ACCEPT: fprintf(f, "accept"); break;
  case WEFT_WAIT_CONNECT: fprintf(f, "connect"); break;
  case WEFT_WAIT_RESOLVE: fprintf(f, "resolving %s", (const char *)w->what); break;
  case WEFT_WAIT_READ: fprintf(f, "stream read %p", w->what); break;
  case WEFT_WAIT_WRITE: fprintf(f, "stream write queue %p", w->what); break;
  case WEFT_WAIT_DATAGRAM: fprintf(f, "udp socket %p", w->what); break;
  case WEFT_WAIT_SIGNAL: fprintf(f, "signal %d", w->arg); break;
  case WEFT_WAIT_SEM:
    fprintf(f, "semaphore ");
    object(f, weft__sem_name(w->what), w->what);
    break;
  case WEFT_WAIT_MUTEX:
    fprintf(f, "mutex ");
    object(f, weft__mutex_name(w->what), w->what);
    break;
  case WEFT_WAIT_EVENT:
    fprintf(f, "event ");
    object(f, weft__event_name(w->what), w->what);
    break;
  case WEFT_WAIT_COND:
    fprintf(f, "condition ");
    object(f, weft__cond_name(w->what), w->what);
    break;
  case WEFT_WAIT_SELECT: {
    /* The cases are the select's caller's, alive while it waits. */
    const weft_select_case_t *cases = w->what;
    fprintf(f, "select over %d cases:", w->arg);
    for (int i = 0; i < w->arg && i < 4; i++) {
      fprintf(f, "%s %s ", i ? "," : "", cases[i].op == WEFT_SELECT_SEND ? "send" : "recv");
      if (cases[i].chan)
        object(f, weft__chan_name(cases[i].chan), cases[i].chan);
      else
        fprintf(f, "(none)");
    }
    if (w->arg > 4)
      fprintf(f, ", ...");
    break;
  }
  default: fprintf(f, "other"); break;
  }
}

/* The loop's part of the dump. Loop thread. */
static void describe(weft_loop_t *loop, FILE *f) {
  uv_update_time(loop->uv);
  uint64_t now_ms = weft__now(loop);
  fprintf(f, "loop %s: %zu live tasks (%zu ready, %zu waiting), round %llu\n", loop->name,
          loop->nlive, loop->nready, loop->nwaiting, (unsigned long long)loop->round);
  size_t shown = 0, more = 0;
  for (weft__queue_t *q = loop->tasks.next; q != &loop->tasks; q = q->next) {
    weft_task_t *t = weft__container_of(q, weft_task_t, all);
    if (t->state == WEFT__DONE)
      continue;
    if (shown == DUMP_MAX_TASKS) {
      more++;
      continue;
    }
    shown++;
    fprintf(f, "  %s: ", weft_task_name(t));
    switch (t->state) {
    case WEFT__NEW: fprintf(f, "ready, not started"); break;
    case WEFT__READY: fprintf(f, "ready"); break;
    case WEFT__RUNNING: fprintf(f, "running"); break;
    case WEFT__WAITING:
      fprintf(f, "waiting on ");
      describe_wait(f, loop, t->wait);
      break;
    case WEFT__DONE: break;
    }
    if (t->cancelled)
      fprintf(f, " (cancelled)");
    fprintf(f, ", age %.3f s", (double)(now_ms - t->born_ms) / 1e3);
    if (t->stack)
      fprintf(f, ", stack %zu of %zu KiB used", stack_used(t->stack) / 1024, t->stack->size / 1024);
    fputc('\n', f);
    weft__task_backtrace_print(f, t, "      ");
  }
  if (more)
    fprintf(f, "  ... and %zu more\n", more);
}

static void dump_run(weft__msg_t *m, weft_loop_t *loop) {
  dump_req_t *r = weft__container_of(m, dump_req_t, msg);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (f) {
    describe(loop, f);
    fclose(f);
  }
  r->text = text;
  r->len = len;
  weft__waiter_wake(&r->waiter, 0);
  req_unref(r);
}

static void read_live(weft_loop_t *loop, void *arg) {
  weft__live_read(loop, arg);
}

typedef struct dump_all {
  dump_req_t **reqs;
  size_t n, cap;
  weft_loop_t *self;        /* the caller's own running loop, or NULL */
  FILE *out;
} dump_all_t;

static weft__msg_t *ask(weft_loop_t *loop, void *arg) {
  dump_all_t *d = arg;
  if (loop == d->self) {
    describe(loop, d->out);
    return NULL;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? 2 * d->cap : 16;
    dump_req_t **reqs = weft__realloc(d->reqs, cap * sizeof *reqs);
    if (!reqs)
      return NULL;
    d->reqs = reqs;
    d->cap = cap;
  }
  dump_req_t *r = weft__calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->msg.run = dump_run;
  atomic_init(&r->refs, 2);
  weft__waiter_init(&r->waiter, NULL, WEFT_WAIT_NONE, NULL, NULL);
  snprintf(r->name, sizeof r->name, "%s", loop->name);
  r->loop = loop;
  if (weft__inbox_push(loop, &r->msg, false) != 0) {
    r->refs = 1;
    req_unref(r);
    return NULL;
  }
  d->reqs[d->n++] = r;
  return &r->msg;
}

void weft_dump(FILE *out) {
  if (!out)
    return;
  dump_all_t d = {.self = weft__tls.running, .out = out};
  fprintf(out, "weft dump (pid %ld)\n", (long)getpid());
  weft__loops_each(ask, &d);
  struct timespec until, soon;
  clock_gettime(CLOCK_REALTIME, &until);
  soon = until;
  until.tv_sec += DUMP_WAIT_MS / 1000;
  weft__timespec_add_ms(&soon, DUMP_STEP_WAIT_MS);
  for (size_t i = 0; i < d.n; i++) {
    dump_req_t *r = d.reqs[i];
    weft__live_view_t v = {0};
    if (weft__waiter_wait_ms(&r->waiter, &soon) == 0 ||
        (!(weft__loops_with(r->loop, read_live, &v) && v.task_id) &&
         weft__waiter_wait_ms(&r->waiter, &until) == 0)) {
      if (r->text)
        fwrite(r->text, 1, r->len, out);
    } else if (v.task_id) {
      fprintf(out, "loop %s: held by task %s for %llu ms (its step still runs: no task list)\n",
              r->name, v.name, (unsigned long long)(v.held_ns / 1000000u));
    } else {
      fprintf(out, "loop %s: no answer within %d ms (busy in libuv callbacks, or not running)\n",
              r->name, DUMP_WAIT_MS);
    }
    req_unref(r);
  }
  free(d.reqs);
  fflush(out);
}
