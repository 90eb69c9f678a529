/* stress: a concurrency stress test of the pool, the inboxes and channels.
 *
 * Producer and consumer tasks are spread over the loops of a pool, with
 * bounded channels between them. Every message is one pointer that encodes
 * who sent it and its sequence number; consumers check that each sender's
 * messages reach them in the order sent, and mark every message they get in
 * a bitmap, so that at the end every message sent is accounted for: none
 * lost, none delivered twice. Around the traffic the producers also do what
 * real programs do across loops: they hand some messages to a relay task
 * spawned on another loop and await it, spawn sleeping tasks on other loops
 * and cancel them, sleep, and yield.
 *
 * main is a plain thread: it starts the consumers itself, has a task on
 * loop 0 start the producers, prints progress about once a second, stops
 * the producers early if --duration passes, then closes the channels so the
 * consumers drain them and end, shuts the pool down with WEFT_DRAIN and
 * prints the conservation report. The exit status is 1 if anything was
 * lost, duplicated, out of order or otherwise wrong. SIGUSR1 prints a
 * weft_dump of every loop and task.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <signal.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#define SEQ_BITS 40            /* a message: sender << SEQ_BITS | sequence */
#define MAX_LOOPS 256
#define MAX_TASKS 2048         /* each consumer keeps one counter per sender */
#define MAX_MESSAGES (UINT64_C(1) << 36)
#define YIELD_EVERY 64         /* messages between two yields */
#define SLEEP_EVERY 4096       /* messages between two 1 ms sleeps */
#define RELAY_EVERY 1024       /* every so many messages goes through a relay */
#define SLEEPER_EVERY 8192     /* a producer keeps one sleeper per so many */
#define SLEEPER_MS 60000       /* sleepers would sleep this long: they are cancelled */
#define TICK_MS 50             /* main's polling period */
#define STALL_S 10             /* no progress for so long is a failure */

/* ------------------------------------------------------------ the setup */

static struct {
  unsigned loops;
  unsigned tasks;
  uint64_t messages;
  double duration_s;
  size_t capacity;
} g_opt = {4, 64, 1000000, 30, 64};

typedef struct producer {
  unsigned id;
  uint64_t base;          /* its first message's index in g_seen */
  uint64_t count;         /* messages it is to send */
  atomic_uint_fast64_t sent;
  weft_loop_t *loop;
  weft_task_t *task;
  int err;                /* the first unexpected error, or 0 */
} producer_t;

typedef struct consumer {
  unsigned id;
  weft_chan_t *ch;
  uint64_t *next_seq;     /* per sender: the lowest sequence number still allowed */
  atomic_uint_fast64_t received;
  uint64_t duplicates;
  uint64_t fifo_violations;
  uint64_t strangers;     /* messages no producer could have sent */
  weft_task_t *task;
  int err;
} consumer_t;

static weft_pool_t *g_pool;
static producer_t *g_prod;
static unsigned g_nprod;
static consumer_t *g_cons;
static unsigned g_ncons;
static weft_chan_t **g_chans;
static unsigned g_nchans;
static _Atomic uint64_t *g_seen; /* one bit per message that may be sent */
static atomic_int g_stop;        /* set when --duration has passed */
static atomic_uint_fast64_t g_relays, g_cancels, g_bad_cancels, g_sleeps;

static void *encode(unsigned sender, uint64_t seq) {
  return (void *)(uintptr_t)(((uint64_t)sender << SEQ_BITS) | seq);
}

/* ------------------------------------------------------------ producers */

typedef struct relay {
  weft_chan_t *ch;
  void *msg;
} relay_t;

/* Sends one message on behalf of a producer, from another loop. */
static void *relay_main(void *arg) {
  relay_t *r = arg;
  int err = weft_chan_send(r->ch, r->msg);
  if (err != 0)
    weft_task_fail(err);
  return NULL;
}

/* The producer waits for the relay to have sent, so its messages still
 * enter the channels in order; r lives on its stack meanwhile. */
static int send_by_relay(weft_chan_t *ch, void *msg) {
  relay_t r = {ch, msg};
  weft_task_t *t;
  int err = weft_spawn(weft_pool_next(g_pool), relay_main, &r, &t);
  if (err != 0)
    return err;
  err = weft_await(t, NULL);
  weft_task_release(t);
  atomic_fetch_add_explicit(&g_relays, 1, memory_order_relaxed);
  return err;
}

static void *sleeper_main(void *arg) {
  int err = weft_sleep(SLEEPER_MS);
  (void)arg;
  if (err != 0)
    weft_task_fail(err);
  return NULL;
}

/* Cancels a sleeper (on whatever loop it runs) and checks that it ended
 * cancelled, long before its sleep was over. */
static void cancel_sleeper(weft_task_t *s) {
  int err = weft_task_cancel(s), status = weft_await(s, NULL);
  if (err != 0 || status != WEFT_ECANCELED)
    atomic_fetch_add_explicit(&g_bad_cancels, 1, memory_order_relaxed);
  else
    atomic_fetch_add_explicit(&g_cancels, 1, memory_order_relaxed);
  weft_task_release(s);
}

/* Sends count messages, sequence numbers 0, 1, ..., spread over the
 * channels in turn, and stops early once main says the time is up. */
static void *producer_main(void *arg) {
  producer_t *p = arg;
  weft_task_t *sleeper = NULL;
  int err = 0;
  char name[32];

  snprintf(name, sizeof name, "producer-%u", p->id);
  weft_task_set_name(weft_task_current(), name);

  for (uint64_t seq = 0; seq < p->count; seq++) {
    weft_chan_t *ch = g_chans[(p->id + seq) % g_nchans];

    if (atomic_load_explicit(&g_stop, memory_order_relaxed))
      break;
    if (seq % SLEEPER_EVERY == 0 &&
        (err = weft_spawn(weft_pool_next(g_pool), sleeper_main, NULL, &sleeper)) != 0)
      break;
    if (seq % SLEEPER_EVERY == SLEEPER_EVERY / 2 && sleeper != NULL) {
      cancel_sleeper(sleeper);
      sleeper = NULL;
    }
    if (seq % RELAY_EVERY == RELAY_EVERY - 1)
      err = send_by_relay(ch, encode(p->id, seq));
    else
      err = weft_chan_send(ch, encode(p->id, seq));
    if (err != 0)
      break;
    atomic_store_explicit(&p->sent, seq + 1, memory_order_relaxed);
    if (seq % SLEEP_EVERY == SLEEP_EVERY - 1) {
      if ((err = weft_sleep(1)) != 0)
        break;
      atomic_fetch_add_explicit(&g_sleeps, 1, memory_order_relaxed);
    } else if (seq % YIELD_EVERY == YIELD_EVERY - 1 && (err = weft_yield()) != 0) {
      break;
    }
  }
  if (sleeper != NULL)
    cancel_sleeper(sleeper);
  p->err = err;
  if (err != 0)
    weft_task_fail(err);
  return NULL;
}

/* Runs on loop 0 and spawns every producer, most of them onto other loops:
 * spawns from a task of one loop to another go through the inboxes too. */
static void *launcher_main(void *arg) {
  int err;
  (void)arg;
  for (unsigned i = 0; i < g_nprod; i++) {
    err = weft_spawn(g_prod[i].loop, producer_main, &g_prod[i], &g_prod[i].task);
    if (err != 0) {
      /* The producers not started count as having sent nothing. */
      atomic_store(&g_stop, 1);
      weft_task_fail(err);
      return NULL;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------ consumers */

/* Receives until its channel is closed and drained, checking each message:
 * one a producer could have sent, not seen before by anyone, and later in
 * its sender's sequence than the last one from that sender seen here (a
 * channel is FIFO, so what one consumer takes from it keeps each sender's
 * order). */
static void *consumer_main(void *arg) {
  consumer_t *c = arg;
  uint64_t n = 0;
  void *msg;
  int err;
  char name[32];

  snprintf(name, sizeof name, "consumer-%u", c->id);
  weft_task_set_name(weft_task_current(), name);

  while ((err = weft_chan_recv(c->ch, &msg)) == 0) {
    uint64_t v = (uint64_t)(uintptr_t)msg;
    uint64_t sender = v >> SEQ_BITS, seq = v & ((UINT64_C(1) << SEQ_BITS) - 1);

    atomic_store_explicit(&c->received, ++n, memory_order_relaxed);
    if (sender >= g_nprod || seq >= g_prod[sender].count) {
      c->strangers++;
      continue;
    }
    uint64_t index = g_prod[sender].base + seq, bit = UINT64_C(1) << (index % 64);
    if (atomic_fetch_or_explicit(&g_seen[index / 64], bit, memory_order_relaxed) & bit)
      c->duplicates++;
    if (seq < c->next_seq[sender])
      c->fifo_violations++;
    else
      c->next_seq[sender] = seq + 1;
    if (n % YIELD_EVERY == 0 && (err = weft_yield()) != 0)
      break;
  }
  if (err != WEFT_ECLOSED) {
    c->err = err;
    weft_task_fail(err);
  }
  return NULL;
}

/* ----------------------------------------------------------- main's side */

static double now_s(uint64_t t0) {
  return (double)(uv_hrtime() - t0) / 1e9;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static uint64_t total_sent(void) {
  uint64_t n = 0;
  for (unsigned i = 0; i < g_nprod; i++)
    n += atomic_load_explicit(&g_prod[i].sent, memory_order_relaxed);
  return n;
}

static uint64_t total_received(void) {
  uint64_t n = 0;
  for (unsigned i = 0; i < g_ncons; i++)
    n += atomic_load_explicit(&g_cons[i].received, memory_order_relaxed);
  return n;
}

/* How many of the n tasks held in the array (stride bytes apart, the
 * handle at offset off) have not ended. */
static unsigned still_running(const void *array, size_t stride, size_t off, unsigned n) {
  unsigned left = 0;
  for (unsigned i = 0; i < n; i++) {
    weft_task_t *t = *(weft_task_t *const *)((const char *)array + i * stride + off);
    if (t != NULL && weft_task_status(t) == WEFT_EPENDING)
      left++;
  }
  return left;
}

/* Waits for one side (producers or consumers) to end, printing progress
 * about once a second and setting the stop flag when --duration has
 * passed. Returns 0, or -1 if nothing moved for STALL_S seconds (a lost
 * wake-up or a deadlock: the report then says who was still running). */
/* Resident memory for --rss-check, less the pages of the message bitmap
 * the consumers have touched (it grows with the messages, by design). */
static int g_rss_check;
static double g_rss_warm = -1, g_rss_end;

static double rss_mib(uint64_t received) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f)
    return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
    resident = 0;
  fclose(f);
  double bytes = (double)resident * (double)sysconf(_SC_PAGESIZE) - (double)received / 8;
  return bytes / 1048576.0;
}

/* SIGUSR1 asks for a weft_dump: the handler only raises this flag, and
 * the main thread's watch loop prints the dump. */
static volatile sig_atomic_t g_dump_asked;

static void on_sigusr1(int sig) {
  (void)sig;
  g_dump_asked = 1;
}

static int watch(uint64_t t0, double *next_report, const void *array, size_t stride, size_t off,
                 unsigned n, const char *who) {
  uint64_t last_moved = uv_hrtime(), last_count = 0;

  while (still_running(array, stride, off, n) > 0) {
    uint64_t sent, received;
    double t;

    sleep_ms(TICK_MS);
    if (g_dump_asked) {
      g_dump_asked = 0;
      weft_dump(stdout);
    }
    t = now_s(t0);
    sent = total_sent();
    received = total_received();
    if (t >= *next_report) {
      double rss = rss_mib(received);
      double warm = g_opt.duration_s / 3 < 10 ? g_opt.duration_s / 3 : 10;
      if (g_rss_warm < 0 && t >= warm)
        g_rss_warm = rss;
      g_rss_end = rss;
      printf("%6.1f s: %" PRIu64 " sent, %" PRIu64 " received, %.0f msgs/s so far, rss %.1f MiB\n",
             t, sent, received, t > 0 ? (double)received / t : 0.0, rss);
      fflush(stdout);
      *next_report += 1.0;
    }
    if (t >= g_opt.duration_s && !atomic_load(&g_stop)) {
      atomic_store(&g_stop, 1);
      printf("%6.1f s: --duration %g s reached, stopping the producers\n", t, g_opt.duration_s);
    }
    if (sent + received != last_count) {
      last_count = sent + received;
      last_moved = uv_hrtime();
    } else if (uv_hrtime() - last_moved > (uint64_t)STALL_S * 1000000000u) {
      printf("STALLED: nothing sent or received for %d s; %u of %u %s still running\n", STALL_S,
             still_running(array, stride, off, n), n, who);
      return -1;
    }
  }
  return 0;
}

static int parse_u64(const char *flag, const char *val, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  double d;

  errno = 0;
  d = strtod(val, &end); /* also takes 1e6 */
  if (end == val || *end != '\0' || errno != 0 || d < (double)lo || d > (double)hi ||
      d != (double)(uint64_t)d) {
    fprintf(stderr, "stress: %s wants a whole number from %" PRIu64 " to %" PRIu64 ", not '%s'\n",
            flag, lo, hi, val);
    return -1;
  }
  *out = (uint64_t)d;
  return 0;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: stress [--loops N] [--tasks N] [--messages N] [--duration S]\n"
          "              [--capacity N]\n"
          "\n"
          "Producer and consumer tasks on a pool of loops exchange messages through\n"
          "bounded channels; every message is checked off at the end.\n"
          "\n"
          "  --loops N      loops (worker threads) in the pool (default 4)\n"
          "  --tasks N      producer and consumer tasks, half each (default 64)\n"
          "  --messages N   messages in all (default 1e6)\n"
          "  --duration S   stop the producers after S seconds (default 30)\n"
          "  --capacity N   capacity of each channel (default 64)\n"
          "  --rss-check    fail if resident memory grows after the warm-up (a\n"
          "                 third of --duration, at most 10 s) by more than a\n"
          "                 quarter or 8 MiB (the message bitmap not counted)\n"
          "  --help         this text\n"
          "\n"
          "Ends with `sent=N received=N lost=N duplicated=N` and the count of\n"
          "messages that arrived out of their sender's order; exits with 1 if any\n"
          "message was lost, duplicated or out of order, or anything else failed.\n");
}

static int parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *val = NULL, *eq;
    char flag[32];
    uint64_t v;

    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (strcmp(arg, "--rss-check") == 0) {
      g_rss_check = 1;
      continue;
    }
    eq = strchr(arg, '=');
    if (eq != NULL && (size_t)(eq - arg) < sizeof flag) {
      memcpy(flag, arg, (size_t)(eq - arg));
      flag[eq - arg] = '\0';
      val = eq + 1;
    } else if (strlen(arg) < sizeof flag && i + 1 < argc) {
      strcpy(flag, arg);
      val = argv[++i];
    } else {
      flag[0] = '\0';
    }
    if (strcmp(flag, "--loops") == 0) {
      if (parse_u64(flag, val, 1, MAX_LOOPS, &v) != 0)
        return -1;
      g_opt.loops = (unsigned)v;
    } else if (strcmp(flag, "--tasks") == 0) {
      if (parse_u64(flag, val, 2, MAX_TASKS, &v) != 0)
        return -1;
      g_opt.tasks = (unsigned)v;
    } else if (strcmp(flag, "--messages") == 0) {
      if (parse_u64(flag, val, 0, MAX_MESSAGES, &v) != 0)
        return -1;
      g_opt.messages = v;
    } else if (strcmp(flag, "--capacity") == 0) {
      if (parse_u64(flag, val, 1, 1u << 24, &v) != 0)
        return -1;
      g_opt.capacity = (size_t)v;
    } else if (strcmp(flag, "--duration") == 0) {
      char *end;
      double d = strtod(val, &end);
      if (end == val || *end != '\0' || !(d > 0 && d <= 86400)) {
        fprintf(stderr, "stress: --duration wants seconds, more than 0, not '%s'\n", val);
        return -1;
      }
      g_opt.duration_s = d;
    } else {
      fprintf(stderr, "stress: unknown argument '%s'\n", arg);
      usage(stderr);
      return -1;
    }
  }
  return 0;
}

/* What the bitmap says about producer p: messages it sent that nobody
 * received, and messages received that it never sent. */
static void account(const producer_t *p, uint64_t *lost, uint64_t *phantom) {
  uint64_t sent = atomic_load(&p->sent);
  for (uint64_t s = 0; s < p->count; s++) {
    uint64_t index = p->base + s;
    int seen = (atomic_load_explicit(&g_seen[index / 64], memory_order_relaxed) >>
                (index % 64)) & 1;
    if (s < sent && !seen)
      (*lost)++;
    else if (s >= sent && seen)
      (*phantom)++;
  }
}

int main(int argc, char **argv) {
  weft_pool_opts_t opts;
  weft_task_t *launcher = NULL;
  uint64_t t0, sent, received, lost = 0, phantom = 0, dups = 0, fifo = 0, strangers = 0;
  double next_report = 1.0, elapsed;
  int err, failed = 0, stalled = 0;
  unsigned i;

  if (parse_args(argc, argv) != 0)
    return 2;
  g_nprod = g_opt.tasks / 2;
  g_ncons = g_opt.tasks - g_nprod;
  g_nchans = g_opt.loops < g_ncons ? g_opt.loops : g_ncons;

  memset(&opts, 0, sizeof opts);
  opts.workers = g_opt.loops;
  signal(SIGUSR1, on_sigusr1);
  if ((err = weft_pool_new(&g_pool, &opts)) != 0) {
    fprintf(stderr, "stress: weft_pool_new: %s\n", weft_strerror(err));
    return 1;
  }
  g_prod = calloc(g_nprod, sizeof *g_prod);
  g_cons = calloc(g_ncons, sizeof *g_cons);
  g_chans = calloc(g_nchans, sizeof *g_chans);
  g_seen = calloc(g_opt.messages / 64 + 1, sizeof *g_seen);
  if (g_prod == NULL || g_cons == NULL || g_chans == NULL || g_seen == NULL) {
    fprintf(stderr, "stress: out of memory\n");
    return 1;
  }
  for (i = 0; i < g_nchans; i++)
    if ((err = weft_chan_new(&g_chans[i], g_opt.capacity)) != 0) {
      fprintf(stderr, "stress: weft_chan_new: %s\n", weft_strerror(err));
      return 1;
    }
  /* Producers take turns over the loops from loop 1, consumers from loop
   * 0, so that most messages cross from one loop to another. */
  for (i = 0; i < g_nprod; i++) {
    producer_t *p = &g_prod[i];
    p->id = i;
    p->count = g_opt.messages / g_nprod + (i < g_opt.messages % g_nprod ? 1 : 0);
    p->base = i == 0 ? 0 : g_prod[i - 1].base + g_prod[i - 1].count;
    p->loop = weft_pool_loop(g_pool, (i + 1) % g_opt.loops);
    atomic_init(&p->sent, 0);
  }

  printf("stress: %u loops, %u producers, %u consumers, %u channels of capacity %zu,\n"
         "%" PRIu64 " messages, at most %g s\n",
         g_opt.loops, g_nprod, g_ncons, g_nchans, g_opt.capacity, g_opt.messages,
         g_opt.duration_s);
  fflush(stdout);

  t0 = uv_hrtime();
  for (i = 0; i < g_ncons; i++) {
    consumer_t *c = &g_cons[i];
    c->id = i;
    c->ch = g_chans[i % g_nchans];
    c->next_seq = calloc(g_nprod, sizeof *c->next_seq);
    atomic_init(&c->received, 0);
    if (c->next_seq == NULL) {
      fprintf(stderr, "stress: out of memory\n");
      return 1;
    }
    err = weft_spawn(weft_pool_loop(g_pool, i % g_opt.loops), consumer_main, c, &c->task);
    if (err != 0) {
      fprintf(stderr, "stress: spawning consumer %u: %s\n", i, weft_strerror(err));
      return 1;
    }
  }
  err = weft_spawn(weft_pool_loop(g_pool, 0), launcher_main, NULL, &launcher);
  if (err == 0)
    err = weft_await(launcher, NULL);
  if (err != 0) {
    fprintf(stderr, "stress: starting the producers: %s\n", weft_strerror(err));
    failed = 1;
  }

  /* The producers end when they have sent all, or once --duration has
   * passed; then the channels are closed, the consumers take what is left
   * and end. */
  stalled = watch(t0, &next_report, g_prod, sizeof *g_prod, offsetof(producer_t, task), g_nprod,
                  "producers") != 0;
  if (!stalled) {
    for (i = 0; i < g_nchans; i++)
      weft_chan_close(g_chans[i]);
    stalled = watch(t0, &next_report, g_cons, sizeof *g_cons, offsetof(consumer_t, task),
                    g_ncons, "consumers") != 0;
  }
  elapsed = now_s(t0);
  sent = total_sent();
  received = total_received();

  for (i = 0; i < g_nprod; i++) {
    if (g_prod[i].err != 0) {
      printf("producer %u failed: %s\n", i, weft_strerror(g_prod[i].err));
      failed = 1;
    }
    account(&g_prod[i], &lost, &phantom);
  }
  for (i = 0; i < g_ncons; i++) {
    if (g_cons[i].err != 0) {
      printf("consumer %u failed: %s\n", i, weft_strerror(g_cons[i].err));
      failed = 1;
    }
    dups += g_cons[i].duplicates;
    fifo += g_cons[i].fifo_violations;
    strangers += g_cons[i].strangers;
  }

  printf("done in %.2f s: %.0f msgs/s; %" PRIu64 " messages by relay tasks on other\n"
         "loops, %" PRIu64 " sleeping tasks cancelled, %" PRIu64 " sleeps\n",
         elapsed, elapsed > 0 ? (double)received / elapsed : 0.0,
         (uint64_t)atomic_load(&g_relays), (uint64_t)atomic_load(&g_cancels),
         (uint64_t)atomic_load(&g_sleeps));
  if (atomic_load(&g_bad_cancels) != 0) {
    printf("%" PRIu64 " cancelled sleepers did not end with WEFT_ECANCELED\n",
           (uint64_t)atomic_load(&g_bad_cancels));
    failed = 1;
  }
  if (phantom != 0 || strangers != 0) {
    printf("%" PRIu64 " messages received that were never sent\n", phantom + strangers);
    failed = 1;
  }
  printf("sent=%" PRIu64 " received=%" PRIu64 " lost=%" PRIu64 " duplicated=%" PRIu64 "\n", sent,
         received, lost, dups);
  printf("fifo_violations=%" PRIu64 "\n", fifo);

  if (stalled) {
    /* Tasks are stuck on the pool: shutting it down would wait for them
     * forever, so the process ends here and leaves them. */
    printf("FAILED: stalled\n");
    return 1;
  }
  weft_task_release(launcher);
  for (i = 0; i < g_nprod; i++)
    weft_task_release(g_prod[i].task);
  for (i = 0; i < g_ncons; i++) {
    weft_task_release(g_cons[i].task);
    free(g_cons[i].next_seq);
  }
  if ((err = weft_pool_shutdown(g_pool, WEFT_DRAIN)) != 0) {
    printf("weft_pool_shutdown: %s\n", weft_strerror(err));
    failed = 1;
  }
  for (i = 0; i < g_nchans; i++)
    weft_chan_release(g_chans[i]);
  free(g_chans);
  free(g_cons);
  free(g_prod);
  free(g_seen);

  if (lost != 0 || dups != 0 || fifo != 0)
    failed = 1;
  if (g_rss_check) {
    if (g_rss_warm < 0) {
      printf("rss: the run ended before its warm-up did\n");
      failed = 1;
    } else {
      double limit = g_rss_warm * 1.25 > g_rss_warm + 8 ? g_rss_warm * 1.25 : g_rss_warm + 8;
      printf("rss after warm-up %.1f MiB, at the end %.1f MiB (limit %.1f)\n", g_rss_warm,
             g_rss_end, limit);
      if (g_rss_end > limit)
        failed = 1;
    }
  }
  printf("%s\n", failed ? "FAILED" : "OK");
  return failed;
}
