/* The resolver: host names to addresses, off every loop, on weft's own
 * threads.
 *
 * getaddrinfo blocks, for as long as DNS takes (seconds when a server does
 * not answer). A task that resolves hands the name to a small budget of
 * threads of weft's own, RESOLVE_THREADS for the whole process, and parks
 * meanwhile; its loop runs on. It is not libuv's thread pool, which
 * weft_to_thread shares: there, four slow file jobs would hold every name
 * (CPython issues 112169 and 120644: DNS behind slow file work in the
 * default executor read as "DNS timeouts"), and a DNS server that does not
 * answer would hold the file work. The threads start on the first request,
 * end after weft__resolve_idle_ms without one (the next to start joins
 * them), and those idle at exit are joined then; one still inside
 * getaddrinfo at exit is detached, since DNS cannot be cut short.
 *
 * Requests wait in a FIFO of at most RESOLVE_QUEUE; past that a request is
 * refused at once with WEFT_ENOBUFS, rather than stretching every wait.
 *
 * A request lives on the heap, because getaddrinfo cannot be interrupted: a
 * task cut while its request waits in the queue takes it out and frees it;
 * cut while a thread resolves it, the task leaves at once and the thread
 * frees the request and its result when getaddrinfo returns. Whether the
 * thread or the cut came first is decided under the resolver's lock, so a
 * result is either handed over (the wake already on its way ends the wait
 * with it) or freed, never both nor neither.
 *
 * A plain thread (one that runs no loop) resolves inline: it would only
 * block waiting for the resolver thread instead. Names under ".invalid"
 * never resolve (RFC 6761, 6.4): they are refused at once, without DNS. */
#include "internal.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define RESOLVE_THREADS 2
#define RESOLVE_QUEUE 64

/* For tests: how long a resolver thread waits for work before it ends, and
 * a hook run on the resolver thread instead of getaddrinfo (it returns 1 to
 * let getaddrinfo answer after all). */
unsigned weft__resolve_idle_ms = 10000;
int (*weft__resolve_hook)(const char *host, int port, weft__addrs_t *out);

enum req_state { QUEUED, RUNNING, DONE };

typedef struct req {
  weft__queue_t link;      /* on the queue while QUEUED */
  enum req_state state;    /* under the lock */
  bool orphan;             /* under the lock: its task left; the thread frees it */
  bool passive;            /* for a listener (AI_PASSIVE) */
  int port;
  int err;                 /* DONE: 0 or the error */
  weft__waiter_t *waiter;  /* the parked task's, until DONE or orphaned */
  weft__addrs_t addrs;     /* DONE: the answer */
  char host[];             /* the name, copied */
} req_t;

/* What a task parks on. */
typedef struct resolve_wait {
  weft__waiter_t waiter;
  req_t *req;
} resolve_wait_t;

static struct {
  pthread_mutex_t lock;
  pthread_cond_t work;        /* a request came, or exit began */
  pthread_cond_t gone;        /* a thread ended */
  weft__queue_t queue;        /* req_t, oldest first */
  size_t nqueued;
  unsigned nthreads;          /* started and not yet ended */
  unsigned nidle;             /* of them, waiting for work */
  pthread_t running[RESOLVE_THREADS]; /* the nthreads started */
  pthread_t ended[RESOLVE_THREADS]; /* ended, to be joined */
  unsigned nended;
  bool quit;                  /* exit began: no more requests */
  bool detached;              /* exit detached the threads still busy */
} R;

static pthread_once_t once = PTHREAD_ONCE_INIT;

/* -------------------------------------------------------- addresses */

bool weft__resolve_name_ok(const char *host) {
  size_t len = strlen(host), label = 0;
  if (len == 0 || len > 253)
    return false;
  for (size_t i = 0; i < len; i++) {
    char c = host[i];
    if (c == '.') {
      if (label == 0)
        return false;
      label = 0;
      continue;
    }
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '_'))
      return false;
    if (++label > 63)
      return false;
  }
  return true;
}

/* RFC 6761, 6.4: "invalid" and names under it never resolve. */
static bool never_resolves(const char *host) {
  size_t len = strlen(host);
  while (len > 0 && host[len - 1] == '.')
    len--;
  static const char tld[] = "invalid";
  size_t n = sizeof tld - 1;
  if (len < n || strncasecmp(host + len - n, tld, n) != 0)
    return false;
  return len == n || host[len - n - 1] == '.';
}

static int translate(int rc) {
  switch (rc) {
  case 0: return 0;
#ifdef EAI_ADDRFAMILY
  case EAI_ADDRFAMILY: return UV_EAI_ADDRFAMILY;
#endif
  case EAI_AGAIN: return UV_EAI_AGAIN;
  case EAI_BADFLAGS: return UV_EAI_BADFLAGS;
  case EAI_FAIL: return UV_EAI_FAIL;
  case EAI_FAMILY: return UV_EAI_FAMILY;
  case EAI_MEMORY: return WEFT_ENOMEM;
#ifdef EAI_NODATA
  case EAI_NODATA: return UV_EAI_NODATA;
#endif
  case EAI_NONAME: return UV_EAI_NONAME;
  case EAI_SERVICE: return UV_EAI_SERVICE;
  case EAI_SOCKTYPE: return UV_EAI_SOCKTYPE;
  case EAI_SYSTEM: return errno > 0 ? -errno : UV_EAI_FAIL;
  default: return UV_EAI_FAIL;
  }
}

/* getaddrinfo's answer, in its order (RFC 6724's), IPv4 and IPv6 only,
 * duplicates dropped, at most WEFT__ADDRS_MAX. */
static int lookup(const char *host, int port, bool passive, weft__addrs_t *out) {
  out->n = 0;
  if (never_resolves(host))
    return UV_EAI_NONAME;
  if (weft__resolve_hook) {
    int err = weft__resolve_hook(host, port, out);
    if (err != 1)
      return err;
  }
  char service[8];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints = {
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
    .ai_protocol = IPPROTO_TCP,
    .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
  };
  struct addrinfo *res = NULL;
  int err = translate(getaddrinfo(host, service, &hints, &res));
  if (err)
    return err;
  for (struct addrinfo *ai = res; ai && out->n < WEFT__ADDRS_MAX; ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        ai->ai_addrlen > sizeof out->a[0])
      continue;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    bool seen = false;
    for (size_t i = 0; i < out->n && !seen; i++)
      seen = memcmp(&out->a[i], &ss, sizeof ss) == 0;
    if (!seen)
      out->a[out->n++] = ss;
  }
  freeaddrinfo(res);
  return out->n ? 0 : UV_EAI_NODATA;
}

/* --------------------------------------------------------- threads */

static void *resolver_main(void *arg) {
  (void)arg;
  pthread_setname_np(pthread_self(), "weft-resolve");
  pthread_mutex_lock(&R.lock);
  for (;;) {
    bool timed_out = false;
    while (weft__queue_empty(&R.queue) && !R.quit && !timed_out) {
      struct timespec until;
      clock_gettime(CLOCK_MONOTONIC, &until);
      weft__timespec_add_ms(&until, weft__resolve_idle_ms);
      R.nidle++;
      timed_out = pthread_cond_timedwait(&R.work, &R.lock, &until) == ETIMEDOUT;
      R.nidle--;
    }
    if (R.quit || weft__queue_empty(&R.queue))
      break;
    req_t *r = weft__container_of(weft__queue_head(&R.queue), req_t, link);
    weft__queue_remove(&r->link);
    R.nqueued--;
    r->state = RUNNING;
    pthread_mutex_unlock(&R.lock);

    weft__addrs_t addrs;
    int err = lookup(r->host, r->port, r->passive, &addrs);

    pthread_mutex_lock(&R.lock);
    if (r->orphan) {
      free(r); /* its task was cut and left: the answer goes nowhere */
      continue;
    }
    r->err = err;
    r->addrs = addrs;
    r->state = DONE;
    /* The last touch of r: the task frees it once woken. */
    weft__waiter_wake(r->waiter, 0);
  }
  for (unsigned i = 0; i < R.nthreads; i++)
    if (pthread_equal(R.running[i], pthread_self()))
      R.running[i] = R.running[R.nthreads - 1];
  R.nthreads--;
  if (!R.detached)
    R.ended[R.nended++] = pthread_self();
  pthread_cond_broadcast(&R.gone);
  pthread_mutex_unlock(&R.lock);
  return NULL;
}

/* At exit: idle threads end and are joined; one inside getaddrinfo is
 * detached (it ends when DNS answers). */
static void resolver_exit(void) {
  pthread_mutex_lock(&R.lock);
  R.quit = true;
  pthread_cond_broadcast(&R.work);
  while (R.nidle > 0)
    pthread_cond_wait(&R.gone, &R.lock);
  unsigned n = R.nended;
  pthread_t ended[RESOLVE_THREADS];
  memcpy(ended, R.ended, sizeof ended);
  R.nended = 0;
  /* Still inside getaddrinfo: left to end on their own. */
  for (unsigned i = 0; i < R.nthreads; i++)
    pthread_detach(R.running[i]);
  R.detached = true;
  pthread_mutex_unlock(&R.lock);
  for (unsigned i = 0; i < n; i++)
    pthread_join(ended[i], NULL);
}

static void init_state(void) {
  pthread_mutex_init(&R.lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&R.work, &attr);
  pthread_condattr_destroy(&attr);
  pthread_cond_init(&R.gone, NULL);
  weft__queue_init(&R.queue);
  R.nqueued = 0;
  R.nthreads = R.nidle = R.nended = 0;
  R.quit = R.detached = false;
}

/* A forked child has none of the threads: it starts afresh (a request its
 * parent's threads were serving is the parent's). */
static void fork_child(void) {
  init_state();
}

static void init_once(void) {
  init_state();
  atexit(resolver_exit);
  pthread_atfork(NULL, NULL, fork_child);
}

/* Under the lock: a thread more if every one is busy and the budget allows.
 * Threads that ended are handed back for joining (*join, *njoin). Returns
 * an error only if no thread exists to take the request. */
static int maybe_start(pthread_t *join, unsigned *njoin) {
  *njoin = R.nended;
  memcpy(join, R.ended, sizeof R.ended);
  R.nended = 0;
  if (R.nidle >= R.nqueued || R.nthreads >= RESOLVE_THREADS)
    return 0;
  /* The resolver takes none of the application's signals. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t th;
  int rc = pthread_create(&th, NULL, resolver_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc == 0) {
    R.running[R.nthreads++] = th;
    return 0;
  }
  return R.nthreads > 0 ? 0 : (rc == ENOMEM ? WEFT_ENOMEM : -rc);
}

/* ------------------------------------------------------------ tasks */

static bool resolve_interrupt(weft__wait_t *base, int err) {
  (void)err;
  resolve_wait_t *w = weft__container_of(base, resolve_wait_t, waiter.base);
  req_t *r = w->req;
  pthread_mutex_lock(&R.lock);
  enum req_state state = r->state;
  if (state == QUEUED) {
    weft__queue_remove(&r->link);
    R.nqueued--;
  } else if (state == RUNNING) {
    r->orphan = true;
  }
  pthread_mutex_unlock(&R.lock);
  if (state == QUEUED)
    free(r);
  /* DONE: the wake is on its way, and ends the wait with the answer. */
  return state != DONE;
}

static int resolve_in_task(weft_task_t *t, const char *host, int port, bool passive,
                           weft__addrs_t *out) {
  size_t len = strlen(host) + 1;
  req_t *r = weft__calloc(1, sizeof *r + len);
  if (!r)
    return WEFT_ENOMEM;
  memcpy(r->host, host, len);
  r->port = port;
  r->passive = passive;
  r->state = QUEUED;
  resolve_wait_t w = {.req = r};
  weft__waiter_init(&w.waiter, t, WEFT_WAIT_RESOLVE, r->host, resolve_interrupt);
  r->waiter = &w.waiter;

  pthread_once(&once, init_once);
  pthread_t join[RESOLVE_THREADS];
  unsigned njoin = 0;
  int err = 0;
  pthread_mutex_lock(&R.lock);
  if (R.quit) {
    err = WEFT_ESHUTDOWN;
  } else if (R.nqueued >= RESOLVE_QUEUE) {
    weft__misuse("weft_tcp_connect", "the resolver's queue holds %d names already",
                 RESOLVE_QUEUE);
    err = WEFT_ENOBUFS;
  } else {
    weft__queue_insert_tail(&R.queue, &r->link);
    R.nqueued++;
    if ((err = maybe_start(join, &njoin)) != 0) {
      weft__queue_remove(&r->link);
      R.nqueued--;
    } else {
      pthread_cond_signal(&R.work);
    }
  }
  pthread_mutex_unlock(&R.lock);
  for (unsigned i = 0; i < njoin; i++)
    pthread_join(join[i], NULL);
  if (err) {
    weft__waiter_destroy(&w.waiter);
    free(r);
    return err;
  }
  err = weft__waiter_wait(&w.waiter);
  weft__waiter_destroy(&w.waiter);
  if (err)
    return err; /* cut: r was freed, or the thread frees it */
  if ((err = r->err) == 0)
    *out = r->addrs;
  free(r);
  return err;
}

int weft__resolve(weft_task_t *t, const char *host, int port, bool passive, weft__addrs_t *out) {
  if (!t)
    return lookup(host, port, passive, out);
  return resolve_in_task(t, host, port, passive, out);
}

unsigned weft__resolve_threads(void) {
  pthread_once(&once, init_once);
  pthread_mutex_lock(&R.lock);
  unsigned n = R.nthreads;
  pthread_mutex_unlock(&R.lock);
  return n;
}
