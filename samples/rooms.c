/* rooms: the shape of a chat server, in one process and without a network.
 *
 * A pool of two loops runs R rooms and the clients. Each room is a task with
 * an inbox channel; a client joins its room, posts N messages and leaves,
 * and the room broadcasts every post to every member then in the room (the
 * sender too: its own echo says the post went through). Clients are tasks on
 * either loop, started by a "lobby" task, plus one plain thread that runs
 * the very same client code: every primitive below blocks a plain thread
 * where it suspends a task. The synchronisation, and what each stands for:
 *
 *   weft_sem_t       asyncio.Semaphore: admission control, at most ADMIT_CAP
 *                    clients in rooms at once.
 *   weft_group_set_limit  Go's errgroup.SetLimit: at most CLIENT_SLOTS client
 *                    tasks exist at once; the lobby's spawn waits for room.
 *   weft_mutex_t     asyncio.Lock: the per-room statistics, updated with a
 *                    read, an await, then a write (safe only under the lock).
 *   weft_select      Go's select: a room waits for "a message or shutdown".
 *   a closed channel Go's `close(done)`: the shutdown every room sees.
 *   weft_event_t     asyncio.Event: "shutting down", which the reporter awaits;
 *                    and "house full", which makes the admission peak the
 *                    same on every run: the first ADMIT_CAP clients admitted
 *                    wait for each other before they join a room.
 *   weft_wait_any    asyncio.wait(FIRST_COMPLETED): main watches the lobby and
 *                    the rooms together; the lobby must end first.
 *
 * Everything printed is a count, the same on every run; the exit status is
 * 1 if any check fails.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <weft.h>

#define ADMIT_CAP 4     /* clients in rooms at once (the semaphore) */
#define CLIENT_SLOTS 6  /* client tasks alive at once (the group's limit) */
#define MAX_ROOMS 16
#define MAX_CLIENTS 64
#define MAX_MESSAGES 500

enum { JOIN, POST, LEAVE };          /* client -> room: a note */
enum { WELCOME, RELAYED, BYE };      /* room -> client: a code in a pointer */

typedef struct note {                /* on the client's stack: it waits for */
  int kind, client, seq;             /* the answer before it reuses it */
  weft_chan_t *mailbox;
} note_t;

typedef struct room {
  weft_chan_t *inbox;
  int clients;                       /* how many clients this room will see */
  uint64_t posts, deliveries;        /* the room task's own counters */
  bool shut_down;                    /* it left through the done case */
} room_t;

typedef struct room_stats {          /* what clients report; under g_stats_lock */
  uint64_t sessions, received;
} room_stats_t;

static int g_rooms = 3, g_clients = 12, g_messages = 20;
static room_t g_room[MAX_ROOMS];
static room_stats_t g_stats[MAX_ROOMS];
static weft_pool_t *g_pool;
static weft_sem_t *g_admission;
static weft_mutex_t *g_stats_lock;
static weft_event_t *g_stopping, *g_house_full;
static weft_chan_t *g_done;          /* never carries a message: closed at shutdown */
static atomic_int g_in_rooms, g_peak_in_rooms, g_tasks_alive, g_peak_tasks, g_failures;
static atomic_int g_own_echoes;      /* posts back to their sender, in order */

static void check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "rooms: %s: %s\n", what, weft_strerror(rc));
    atomic_fetch_add(&g_failures, 1);
  }
}

static void raise_peak(atomic_int *peak, int now) {
  int seen = atomic_load(peak);
  while (now > seen && !atomic_compare_exchange_weak(peak, &seen, now)) {
  }
}

/* A mailbox message packs its code, the sender and the sequence number. */
static void *pack(int code, int sender, int seq) {
  return (void *)(((uintptr_t)sender << 12 | (uintptr_t)seq) << 2 | (uintptr_t)code);
}
static int code_of(void *m) { return (int)((uintptr_t)m & 3); }
static int seq_of(void *m) { return (int)((uintptr_t)m >> 2 & 0xfff); }
static int sender_of(void *m) { return (int)((uintptr_t)m >> 14); }

/* ------------------------------------------------------------- a room */

static void *room_main(void *arg) {
  room_t *r = arg;
  weft_chan_t *member[MAX_CLIENTS];
  int members = 0;
  /* Go: for { select { case n := <-inbox: ...; case <-done: return } } */
  weft_select_case_t cases[2] = {{.op = WEFT_SELECT_RECV, .chan = r->inbox},
                                 {.op = WEFT_SELECT_RECV, .chan = g_done}};
  for (;;) {
    int which = weft_select(cases, 2, WEFT_FOREVER);
    if (which != 0) {                /* 1: done is closed (err WEFT_ECLOSED), */
      r->shut_down = which == 1 && cases[1].err == WEFT_ECLOSED;  /* and every */
      if (which < 0)                 /* client has left: the inbox is empty */
        check(which, "room select");
      break;
    }
    note_t *n = cases[0].msg;
    int id = n->client, seq = n->seq;
    weft_chan_t *box = n->mailbox;   /* read the note before answering it */
    if (n->kind == JOIN) {           /* the room holds a reference while it */
      member[members++] = weft_chan_retain(box);  /* may send to the mailbox */
      check(weft_chan_send(box, pack(WELCOME, id, 0)), "welcome");
    } else if (n->kind == POST) {    /* the broadcast: every member, in turn */
      r->posts++;
      for (int i = 0; i < members; i++, r->deliveries++)
        check(weft_chan_send(member[i], pack(RELAYED, id, seq)), "broadcast");
    } else {
      for (int i = 0; i < members; i++)
        if (member[i] == box) {
          member[i] = member[--members];
          break;
        }
      check(weft_chan_send(box, pack(BYE, id, 0)), "bye");
      weft_chan_release(box);        /* the client may have dropped its own */
    }
  }
  return r;
}

/* ------------------------------------------------------------ a client */

/* Receives until the mailbox yields code (from this client, seq); counts
 * the broadcasts on the way, its own echo included. */
static void await_reply(weft_chan_t *box, int id, int code, int seq, uint64_t *echoes) {
  for (;;) {
    void *m;
    int rc = weft_chan_recv(box, &m);
    if (rc != 0) {
      check(rc, "mailbox");
      return;
    }
    if (code_of(m) == RELAYED)
      (*echoes)++;
    if (sender_of(m) == id && code_of(m) == code) {
      if (code == RELAYED && seq_of(m) != seq)  /* a room keeps each sender's order */
        check(WEFT_EINVAL, "own post out of order");
      else if (code == RELAYED)
        atomic_fetch_add(&g_own_echoes, 1);
      return;
    }
  }
}

/* One session; a task or the plain thread runs it, the code is the same. */
static void client_session(int id) {
  int room = id % g_rooms;
  uint64_t echoes = 0;
  weft_chan_t *box;
  check(weft_chan_new(&box, 16), "mailbox");

  /* async with admission: at most ADMIT_CAP clients inside at once. */
  check(weft_sem_acquire(g_admission), "admission");
  int now = atomic_fetch_add(&g_in_rooms, 1) + 1;
  raise_peak(&g_peak_in_rooms, now);
  if (now == (g_clients < ADMIT_CAP ? g_clients : ADMIT_CAP))
    check(weft_event_set(g_house_full), "house full");
  check(weft_event_wait(g_house_full), "house full wait");  /* at once, later */

  note_t n = {JOIN, id, 0, box};     /* one note in flight at a time, so an */
  check(weft_chan_send(g_room[room].inbox, &n), "join");  /* inbox never fills */
  await_reply(box, id, WELCOME, 0, &echoes);
  for (int seq = 0; seq < g_messages; seq++) {
    n.kind = POST, n.seq = seq;
    check(weft_chan_send(g_room[room].inbox, &n), "post");
    await_reply(box, id, RELAYED, seq, &echoes);
  }
  n.kind = LEAVE;
  check(weft_chan_send(g_room[room].inbox, &n), "leave");
  await_reply(box, id, BYE, 0, &echoes);  /* the room sends it nothing more */

  atomic_fetch_sub(&g_in_rooms, 1);
  check(weft_sem_post(g_admission), "admission post");
  weft_chan_release(box);

  /* async with stats_lock: read, await, write. Clients of one room run on
   * both loops and a thread, so without the lock two of them could read
   * the same old value and one update would be lost. */
  check(weft_mutex_lock(g_stats_lock), "stats lock");
  room_stats_t s = g_stats[room];
  if (weft_task_current() != NULL)
    check(weft_yield(), "yield");    /* stands for an await, e.g. a write to a store */
  s.sessions++, s.received += echoes;
  g_stats[room] = s;
  check(weft_mutex_unlock(g_stats_lock), "stats unlock");
}

static void *client_task(void *arg) {
  raise_peak(&g_peak_tasks, atomic_fetch_add(&g_tasks_alive, 1) + 1);
  client_session((int)(uintptr_t)arg);
  atomic_fetch_sub(&g_tasks_alive, 1);
  return NULL;
}

static void client_thread(void *arg) { client_session((int)(uintptr_t)arg); }

/* The lobby: starts a task per client, alternating loops, CLIENT_SLOTS at a
 * time (errgroup.SetLimit), then waits for them all (TaskGroup's exit). */
static void *lobby_main(void *arg) {
  weft_group_t *g;
  if (weft_group_new(&g) != 0) {
    check(WEFT_ENOMEM, "group");
    return NULL;
  }
  check(weft_group_set_limit(g, CLIENT_SLOTS), "group limit");
  for (int id = 0; id < g_clients - 1; id++)  /* the last client is the thread */
    check(weft_group_spawn(g, weft_pool_loop(g_pool, (unsigned)id % 2), client_task,
                           (void *)(uintptr_t)id), "client spawn");
  check(weft_group_wait(g), "clients");
  weft_group_release(g);
  return NULL;
}

/* The reporter: await stopping.wait(), then flush the statistics once. */
static void *reporter_main(void *arg) {
  static room_stats_t total;
  check(weft_event_wait(g_stopping), "stopping");
  check(weft_mutex_lock(g_stats_lock), "stats lock");
  for (int i = 0; i < g_rooms; i++)
    total.sessions += g_stats[i].sessions, total.received += g_stats[i].received;
  check(weft_mutex_unlock(g_stats_lock), "stats unlock");
  return &total;
}

/* ----------------------------------------------------------------- main */

static int parse_args(int argc, char **argv) {
  struct { const char *flag; int *out, lo, hi; } f[] = {
      {"--rooms", &g_rooms, 1, MAX_ROOMS},
      {"--clients", &g_clients, 1, MAX_CLIENTS},
      {"--messages", &g_messages, 1, MAX_MESSAGES}};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: rooms [--rooms N] [--clients N] [--messages N]\n\n"
             "The shape of a chat server on a pool of 2 loops, with no network:\n"
             "clients join a room, post messages and get every post of their room.\n\n"
             "  --rooms N     rooms, each a task with an inbox (1-%d, default 3)\n"
             "  --clients N   clients: tasks, and one plain thread (1-%d, default 12)\n"
             "  --messages N  posts per client (1-%d, default 20)\n\n"
             "At most %d clients are in rooms at once. Prints counts, the same on\n"
             "every run; exits 1 if a check fails.\n",
             MAX_ROOMS, MAX_CLIENTS, MAX_MESSAGES, ADMIT_CAP);
      exit(0);
    }
    size_t k = 0;
    while (k < 3 && strcmp(argv[i], f[k].flag) != 0)
      k++;
    if (k == 3) {
      fprintf(stderr, "rooms: unknown argument '%s' (see --help)\n", argv[i]);
      return -1;
    }
    char *end = NULL;
    const char *val = i + 1 < argc ? argv[++i] : "";
    long v = strtol(val, &end, 10);
    if (*val == '\0' || *end != '\0' || v < f[k].lo || v > f[k].hi) {
      fprintf(stderr, "rooms: %s wants a whole number from %d to %d, not '%s'\n",
              f[k].flag, f[k].lo, f[k].hi, val);
      return -1;
    }
    *f[k].out = (int)v;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv) != 0)
    return 2;
  weft_pool_opts_t opts = {.workers = 2};
  weft_task_t *watched[1 + MAX_ROOMS], *reporter;  /* [0]: the lobby, then rooms */
  if (weft_pool_new(&g_pool, &opts) != 0 || weft_sem_new(&g_admission, ADMIT_CAP) != 0 ||
      weft_mutex_new(&g_stats_lock) != 0 || weft_event_new(&g_stopping) != 0 ||
      weft_event_new(&g_house_full) != 0 || weft_chan_new(&g_done, 1) != 0)
    return 1;
  for (int i = 0; i < g_rooms; i++) {
    g_room[i].clients = g_clients / g_rooms + (i < g_clients % g_rooms);
    if (weft_chan_new(&g_room[i].inbox, (size_t)g_room[i].clients + 1) != 0 ||
        weft_spawn(weft_pool_loop(g_pool, (unsigned)i % 2), room_main, &g_room[i],
                   &watched[1 + i]) != 0)
      return 1;
  }
  if (weft_spawn(weft_pool_loop(g_pool, 1), reporter_main, NULL, &reporter) != 0 ||
      weft_spawn(weft_pool_loop(g_pool, 0), lobby_main, NULL, &watched[0]) != 0)
    return 1;
  uv_thread_t thread;                /* the last client: a plain thread */
  if (uv_thread_create(&thread, client_thread, (void *)(uintptr_t)(g_clients - 1)) != 0)
    return 1;

  /* asyncio.wait({lobby, *rooms}, return_when=FIRST_COMPLETED): rooms serve
   * until shutdown, so a room that ends first has failed. */
  size_t first = SIZE_MAX;
  check(weft_wait_any(watched, 1 + (size_t)g_rooms, &first), "wait_any");
  uv_thread_join(&thread);

  /* Shutting down: the event for those who await it, the closed channel for
   * those who select on it; then collect the rooms and the reporter. */
  check(weft_event_set(g_stopping), "stop");
  check(weft_chan_close(g_done), "close done");
  check(weft_gather(watched, 1 + (size_t)g_rooms, NULL, NULL), "rooms");
  void *flushed = NULL;
  check(weft_await(reporter, &flushed), "reporter");
  const room_stats_t *total = flushed;

  uint64_t posts = 0, deliveries = 0;
  int left = 0;
  printf("rooms: %d, loops: 2, clients: %d (%d tasks + 1 plain thread), posts each: %d\n",
         g_rooms, g_clients, g_clients - 1, g_messages);
  for (int i = 0; i < g_rooms; i++) {
    room_t *r = &g_room[i];
    bool ok = r->posts == (uint64_t)r->clients * (uint64_t)g_messages &&
              g_stats[i].sessions == (uint64_t)r->clients &&
              g_stats[i].received == r->deliveries;
    printf("room %d: clients %d, posts %llu, deliveries %s\n", i, r->clients,
           (unsigned long long)r->posts, ok ? "all received" : "MISMATCH");
    atomic_fetch_add(&g_failures, !ok);
    posts += r->posts, deliveries += r->deliveries, left += r->shut_down;
  }
  int peak = atomic_load(&g_peak_in_rooms), tasks = atomic_load(&g_peak_tasks);
  /* The admission peak is fixed by the "house full" wave; how many client
   * tasks were alive at once depends on the threads' timing, so only the
   * bound is printed. */
  printf("admission: peak %d in rooms at once (cap %d), client tasks alive "
         "at once: %s the group's limit of %d\n", peak, ADMIT_CAP,
         tasks <= CLIENT_SLOTS ? "within" : "ABOVE", CLIENT_SLOTS);
  printf("first to end: %s, then at shutdown %d of %d rooms left their select, "
         "sessions flushed: %llu\n", first == 0 ? "the lobby" : "a room (wrong)", left, g_rooms,
         total ? (unsigned long long)total->sessions : 0ULL);
  atomic_fetch_add(&g_failures, peak > ADMIT_CAP || tasks > CLIENT_SLOTS || first != 0 ||
                                    left != g_rooms || total == NULL ||
                                    total->sessions != (uint64_t)g_clients ||
                                    total->received != deliveries ||
                                    (uint64_t)atomic_load(&g_own_echoes) != posts);

  for (int i = 0; i < 1 + g_rooms; i++)
    weft_task_release(watched[i]);
  weft_task_release(reporter);
  check(weft_pool_shutdown(g_pool, WEFT_DRAIN), "shutdown");
  for (int i = 0; i < g_rooms; i++)
    weft_chan_release(g_room[i].inbox);
  weft_chan_release(g_done);
  check(weft_event_free(g_stopping), "event free");
  check(weft_event_free(g_house_full), "event free");
  check(weft_mutex_free(g_stats_lock), "mutex free");
  check(weft_sem_free(g_admission), "sem free");
  int failures = atomic_load(&g_failures);
  printf("posts: %llu, back to their sender in order: %d, %s\n",
         (unsigned long long)posts, atomic_load(&g_own_echoes),
         failures ? "FAILED" : "all checks passed");
  return failures ? 1 : 0;
}
