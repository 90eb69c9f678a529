/* Trace export: what each loop did, as a Chrome trace-event JSON file that
 * Perfetto or chrome://tracing opens as a picture, one track per loop.
 *
 * While tracing is on, every loop records into a ring of its own (bounded:
 * the oldest events give way): each task step (from the switch in to the
 * await or the end that stops it), each wake-up, and each message one loop
 * sends another through its inbox (a spawn, a channel's wake-up, a join's
 * registration or completion, a cancel, a call), whose two ends become a
 * flow arrow from the sending step to the moment the target runs it. The recording happens where
 * the event hook already is (WEFT__EMIT), so with tracing off it costs the
 * same untaken branch as before. A ring has a mutex of its own, uncontended
 * but for a writer, so the file can be written while the loops run. A ring
 * outlives its loop, so a trace written at exit still shows loops that
 * closed before.
 *
 * WEFT_TRACE=path in the environment turns tracing on when the first loop
 * is made and writes the file at exit. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RING_EVENTS 65536

/* Arrow ends, beside weft's own event kinds. */
enum { EV_FLOW_OUT = 100, EV_FLOW_IN };

typedef struct trace_ev {
  weft_loop_event_t ev;          /* as the event hook saw it; .task an identity only */
  uint64_t id;              /* the task's id, or the arrow's */
  uint64_t cpu_ns;          /* the thread's CPU time, at a step's ends */
  char name[24];            /* the task's name then */
} trace_ev_t;

struct weft__trace {
  pthread_mutex_t lock;
  trace_ev_t *ev;
  uint64_t n;               /* events recorded in all; the ring holds the last */
  unsigned tid;
  char loop_name[32];
  struct weft__trace *next;
};

static pthread_mutex_t traces_lock = PTHREAD_MUTEX_INITIALIZER;
static weft__trace_t *traces;
static unsigned ntraces;
static char *trace_path;
static atomic_bool tracing;
static atomic_bool trace_cpu;  /* WEFT_TRACE_CPU=1: steps carry CPU time */
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static pid_t exit_writer; /* the process that asked for the write at exit */

static void write_at_exit(void) {
  /* Not in a forked child: the file is its parent's. */
  if (getpid() == exit_writer)
    weft_trace_write();
}

/* A fork while a loop holds its ring's lock would leave the child's copy
 * locked for good: the fork waits for every trace lock instead (called by
 * the library's one fork guard, registry.c). */
void weft__trace_fork_prepare(void) {
  pthread_mutex_lock(&traces_lock);
  for (weft__trace_t *tr = traces; tr; tr = tr->next)
    pthread_mutex_lock(&tr->lock);
}

void weft__trace_fork_done(void) {
  for (weft__trace_t *tr = traces; tr; tr = tr->next)
    pthread_mutex_unlock(&tr->lock);
  pthread_mutex_unlock(&traces_lock);
}

static void read_env(void) {
  weft__fork_guard_trace(weft__trace_fork_prepare, weft__trace_fork_done);
  const char *p = getenv("WEFT_TRACE");
  if (p && p[0] && weft_trace_start(p) == 0) {
    exit_writer = getpid();
    atexit(write_at_exit);
  }
}

int weft_trace_start(const char *path) {
  if (path && !path[0])
    return WEFT_EINVAL;
  char *copy = path ? strdup(path) : NULL;
  if (path && !copy)
    return WEFT_ENOMEM;
  /* A step's CPU time costs a system call at each end of it (no vDSO
   * serves the thread CPU clock): asked for by name only. */
  const char *cpu = getenv("WEFT_TRACE_CPU");
  atomic_store(&trace_cpu, cpu && strcmp(cpu, "1") == 0);
  pthread_mutex_lock(&traces_lock);
  free(trace_path);
  trace_path = copy;
  atomic_store(&tracing, true);
  pthread_mutex_unlock(&traces_lock);
  return 0;
}

void weft_trace_stop(void) {
  atomic_store(&tracing, false);
}

/* A new loop: a ring, if tracing is on. */
void weft__trace_loop_new(weft_loop_t *loop) {
  pthread_once(&env_once, read_env);
  if (!atomic_load(&tracing))
    return;
  weft__trace_t *tr = weft__calloc(1, sizeof *tr);
  if (tr)
    tr->ev = weft__malloc(RING_EVENTS * sizeof *tr->ev);
  if (!tr || !tr->ev) {
    free(tr);
    return; /* no trace for this loop; it runs all the same */
  }
  pthread_mutex_init(&tr->lock, NULL);
  snprintf(tr->loop_name, sizeof tr->loop_name, "%s", loop->name);
  pthread_mutex_lock(&traces_lock);
  tr->tid = ++ntraces;
  tr->next = traces;
  traces = tr;
  pthread_mutex_unlock(&traces_lock);
  loop->trace = tr;
}

/* From weft__emit, on the loop's thread. */
void weft__trace_record(weft_loop_t *loop, const weft_loop_event_t *ev) {
  weft__trace_t *tr = loop->trace;
  if (!atomic_load_explicit(&tracing, memory_order_relaxed))
    return;
  /* A step's CPU time beside its wall time: on a busy machine a step that
   * was preempted looks long but used little. Read outside the lock. */
  uint64_t cpu = 0;
  if ((ev->kind == WEFT_EV_STEP || ev->kind == WEFT_EV_PARK || ev->kind == WEFT_EV_DONE) &&
      atomic_load_explicit(&trace_cpu, memory_order_relaxed)) {
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
      cpu = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  }
  pthread_mutex_lock(&tr->lock);
  trace_ev_t *e = &tr->ev[tr->n++ % RING_EVENTS];
  e->ev = *ev;
  e->cpu_ns = cpu;
  if (ev->task) {
    e->id = ev->task->id;
    /* The name lives in the task's 32-byte array: a fixed copy is cheaper
     * than a formatted one, and cut to fit. */
    memcpy(e->name, weft_task_name(ev->task), sizeof e->name - 1);
    e->name[sizeof e->name - 1] = '\0';
  } else {
    e->id = 0;
    e->name[0] = '\0';
  }
  pthread_mutex_unlock(&tr->lock);
}

/* A message leaves this thread's loop (id: its address, unique while it
 * is on its way) or arrives at the target. */
bool weft__trace_flow(weft_loop_t *loop, bool out, uint64_t id) {
  weft__trace_t *tr = loop ? loop->trace : NULL;
  if (!tr || !atomic_load_explicit(&tracing, memory_order_relaxed))
    return false;
  pthread_mutex_lock(&tr->lock);
  trace_ev_t *e = &tr->ev[tr->n++ % RING_EVENTS];
  memset(e, 0, sizeof *e);
  e->ev.kind = (weft_loop_event_kind_t)(out ? EV_FLOW_OUT : EV_FLOW_IN);
  e->ev.time_ns = uv_hrtime();
  e->ev.round = loop->round;
  e->id = id;
  pthread_mutex_unlock(&tr->lock);
  return true;
}

/* ------------------------------------------------------------- writing */

static const char *wait_name(unsigned w) {
  switch (w) {
  case WEFT_WAIT_YIELD: return "yield";
  case WEFT_WAIT_SLEEP: return "sleep";
  case WEFT_WAIT_JOIN: return "join";
  case WEFT_WAIT_THREAD: return "to_thread";
  case WEFT_WAIT_CHAN: return "channel";
  case WEFT_WAIT_ACCEPT: return "accept";
  case WEFT_WAIT_CONNECT: return "connect";
  case WEFT_WAIT_RESOLVE: return "resolve";
  case WEFT_WAIT_READ: return "read";
  case WEFT_WAIT_WRITE: return "write";
  case WEFT_WAIT_SEM: return "semaphore";
  case WEFT_WAIT_MUTEX: return "mutex";
  case WEFT_WAIT_EVENT: return "event";
  case WEFT_WAIT_COND: return "condition";
  case WEFT_WAIT_SELECT: return "select";
  case WEFT_WAIT_DATAGRAM: return "datagram";
  case WEFT_WAIT_SIGNAL: return "signal";
  default: return "other";
  }
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* One loop's events, oldest first. A step whose start fell out of the ring
 * is left out; one still open at the end is closed at the last event. */
static void write_ring(FILE *f, weft__trace_t *tr, uint64_t t0, bool *first) {
  pthread_mutex_lock(&tr->lock);
  uint64_t n = tr->n, begin = n > RING_EVENTS ? n - RING_EVENTS : 0;
  fprintf(f, "%s{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%u,\"args\":{\"name\":",
          *first ? "" : ",\n", tr->tid);
  json_string(f, tr->loop_name);
  fputs("}}", f);
  *first = false;
  const trace_ev_t *open = NULL;
  for (uint64_t i = begin; i < n; i++) {
    const trace_ev_t *e = &tr->ev[i % RING_EVENTS];
    double ts = (double)(e->ev.time_ns - t0) / 1e3;
    switch ((int)e->ev.kind) {
    case WEFT_EV_STEP:
      open = e;
      break;
    case WEFT_EV_PARK:
    case WEFT_EV_DONE:
      if (open && open->id == e->id) {
        fprintf(f, ",\n{\"name\":");
        json_string(f, open->name);
        fprintf(f, ",\"cat\":\"step\",\"ph\":\"X\",\"pid\":1,\"tid\":%u,\"ts\":%.3f,"
                   "\"dur\":%.3f,",
                tr->tid, (double)(open->ev.time_ns - t0) / 1e3,
                (double)(e->ev.time_ns - open->ev.time_ns) / 1e3);
        /* With WEFT_TRACE_CPU=1: the step's CPU time, which Perfetto shows
         * as its thread duration. */
        if (open->cpu_ns && e->cpu_ns)
          fprintf(f, "\"tdur\":%.3f,", (double)(e->cpu_ns - open->cpu_ns) / 1e3);
        fprintf(f, "\"args\":{\"task\":%llu,\"then\":\"%s\"", (unsigned long long)e->id,
                e->ev.kind == WEFT_EV_DONE ? "end" : wait_name(e->ev.wait));
        if (open->cpu_ns && e->cpu_ns)
          fprintf(f, ",\"cpu_us\":%.3f", (double)(e->cpu_ns - open->cpu_ns) / 1e3);
        fputs("}}", f);
      }
      open = NULL;
      break;
    case WEFT_EV_WAKE:
      fprintf(f, ",\n{\"name\":\"wake\",\"cat\":\"wake\",\"ph\":\"i\",\"s\":\"t\",\"pid\":1,"
                 "\"tid\":%u,\"ts\":%.3f,\"args\":{\"task\":",
              tr->tid, ts);
      json_string(f, e->name);
      fprintf(f, ",\"from\":\"%s\"}}", wait_name(e->ev.wait));
      break;
    case WEFT_EV_ROUND:
      /* A counter track: the ready queue at the start of each round. */
      fprintf(f, ",\n{\"name\":\"ready\",\"ph\":\"C\",\"pid\":1,\"tid\":%u,\"ts\":%.3f,"
                 "\"args\":{\"%s\":%zu}}",
              tr->tid, ts, tr->loop_name, e->ev.count);
      break;
    case EV_FLOW_OUT:
    case EV_FLOW_IN:
      fprintf(f, ",\n{\"name\":\"message\",\"cat\":\"handoff\",\"ph\":\"%s\",%s\"id\":%llu,"
                 "\"pid\":1,\"tid\":%u,\"ts\":%.3f}",
              e->ev.kind == (weft_loop_event_kind_t)EV_FLOW_OUT ? "s" : "f",
              e->ev.kind == (weft_loop_event_kind_t)EV_FLOW_IN ? "\"bp\":\"e\"," : "",
              (unsigned long long)e->id, tr->tid, ts);
      break;
    default:
      break;
    }
  }
  pthread_mutex_unlock(&tr->lock);
}

int weft_trace_write(void) {
  pthread_mutex_lock(&traces_lock);
  if (!trace_path) {
    pthread_mutex_unlock(&traces_lock);
    return WEFT_EINVAL;
  }
  FILE *f = fopen(trace_path, "w");
  if (!f) {
    pthread_mutex_unlock(&traces_lock);
    return UV_EIO;
  }
  /* Times from the earliest event kept. */
  uint64_t t0 = UINT64_MAX;
  for (weft__trace_t *tr = traces; tr; tr = tr->next) {
    pthread_mutex_lock(&tr->lock);
    uint64_t begin = tr->n > RING_EVENTS ? tr->n - RING_EVENTS : 0;
    if (tr->n > begin && tr->ev[begin % RING_EVENTS].ev.time_ns < t0)
      t0 = tr->ev[begin % RING_EVENTS].ev.time_ns;
    pthread_mutex_unlock(&tr->lock);
  }
  if (t0 == UINT64_MAX)
    t0 = 0;
  fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", f);
  bool first = true;
  for (weft__trace_t *tr = traces; tr; tr = tr->next)
    write_ring(f, tr, t0, &first);
  fputs("\n]}\n", f);
  int err = ferror(f) ? UV_EIO : 0;
  if (fclose(f) != 0)
    err = UV_EIO;
  pthread_mutex_unlock(&traces_lock);
  return err;
}

int weft_trace_read(weft_trace_fn fn, void *arg) {
  if (!fn)
    return WEFT_EINVAL;
  /* Rings live as long as the process: take the list, then each ring's
   * events, and call fn with no lock held (it may spawn, send, trace). */
  pthread_mutex_lock(&traces_lock);
  size_t k = 0;
  for (weft__trace_t *tr = traces; tr; tr = tr->next)
    k++;
  weft__trace_t **order = weft__malloc((k ? k : 1) * sizeof *order);
  if (!order) {
    pthread_mutex_unlock(&traces_lock);
    return WEFT_ENOMEM;
  }
  k = 0;
  for (weft__trace_t *tr = traces; tr; tr = tr->next)
    order[k++] = tr; /* newest first: read from the end */
  pthread_mutex_unlock(&traces_lock);
  trace_ev_t *copy = weft__malloc(RING_EVENTS * sizeof *copy);
  if (!copy) {
    free(order);
    return WEFT_ENOMEM;
  }
  while (k-- > 0) {
    weft__trace_t *tr = order[k];
    pthread_mutex_lock(&tr->lock);
    uint64_t n = tr->n, begin = n > RING_EVENTS ? n - RING_EVENTS : 0;
    size_t m = 0;
    for (uint64_t i = begin; i < n; i++)
      copy[m++] = tr->ev[i % RING_EVENTS];
    pthread_mutex_unlock(&tr->lock);
    for (size_t i = 0; i < m; i++) {
      if ((int)copy[i].ev.kind >= EV_FLOW_OUT)
        continue;
      weft_trace_record_t r = {.loop = tr->loop_name, .ev = copy[i].ev,
                               .task_name = copy[i].name, .cpu_ns = copy[i].cpu_ns};
      fn(&r, arg);
    }
  }
  free(copy);
  free(order);
  return 0;
}
