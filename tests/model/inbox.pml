/* A SPIN model of the inbox's wake-up protocol: weft__inbox_push,
 * weft__inbox_park, weft__inbox_unpark and weft__inbox_drain in
 * lib/inbox.c, and the end of loop_round and wakeup_cb in lib/loop.c.
 * Producers push messages to one loop; the loop drains, parks, blocks in
 * its poll until the eventfd is readable, and drains again. The checks say
 * that no message is ever left in the inbox of a loop that sleeps with no
 * ring on its way, so every message pushed is run.
 *
 * What is modelled, and what is left out:
 *
 * - Messages are counted, not listed: `queued` is the length of the list
 *   (inbox_head..inbox_tail), and inbox_len is the counter of that name.
 *   Their order is not checked here (the pool tests check it).
 * - The eventfd is its counter, `efd`: a ring adds one and makes it
 *   readable, weft__wakefd_drain resets it. The pipe backend behaves the
 *   same for the protocol.
 * - The loop's tasks are left out. A round that has ready tasks polls
 *   without parking, which is the "park failed" path below without the
 *   park, and changes nothing the protocol relies on.
 * - The inbox's closing (inbox_closed, ringing's wait in
 *   weft__inbox_quiesce, weft__loop_ring from weft_loop_stop) is left out;
 *   `ringing` is kept because the invariant below uses it.
 * - uv_run(UV_RUN_ONCE) may return without the eventfd being readable (a
 *   timer, another handle): at most MAXSPURIOUS times per run, so that every
 *   run of the model is finite.
 *
 * Memory model. Each Promela statement below is one access the C code makes
 * to memory another thread reads, or a critical section under inbox_lock
 * that no other thread can see halfway, and SPIN tries every interleaving
 * of them: this is sequential consistency (SC). The C code is weaker, so
 * what the model assumes is this:
 *
 * 1. The Dekker pair: the loop stores parked = 1 and then loads inbox_len,
 *    a producer increments inbox_len and then loads parked, each with a
 *    seq_cst fence between its store and its load. C11's fence rules then
 *    forbid the one outcome SC forbids (both loads miss the other's store),
 *    so SC is exact for these four accesses. Without a fence the load may be
 *    satisfied before the thread's own store is visible; BUG 1 and BUG 2
 *    below model exactly that, and SPIN then finds the lost wake-up.
 * 2. rung: the loop clears rung before its release store of parked, and a
 *    producer exchanges rung only after an acquire load that saw parked = 1,
 *    so that exchange reads the clearing store or a later one, as in SC.
 * 3. Every other shared access is under inbox_lock (the list; the producer's
 *    increment of inbox_len), or is a stale read whose only effect is extra
 *    work: a producer that reads a stale parked = 1 rings for nothing, and
 *    the loop's unfenced reads of inbox_len (weft__inbox_pending, in the
 *    drain and in the round's skip-the-poll test) can only delay a drain to
 *    a later round, before which the loop must pass the fenced read of 1.
 *    (The skip-the-poll test is a free choice below anyway, and -DMAXSTALE=N
 *    lets the drain's test read a stale 0 up to N times, to check this.)
 * 4. The eventfd's write and read are system calls on one kernel object,
 *    which the kernel serializes.
 *
 * Switches (spin -DNAME=VALUE): NPROD producers push NITEMS messages each;
 * the loop runs at most BUDGET messages per drain (the real budget is 1024;
 * a small one exercises putting the rest back); MAXSPURIOUS and MAXSTALE
 * (see above); LIVENESS compiles the LTL property instead of the safety
 * checks; BUG injects a known lost wake-up (inbox_lost_wakeup.pml sets
 * BUG 1):
 *
 *   BUG 1  weft__inbox_park without its fence: the loop may read inbox_len
 *          before its store of parked = 1 is visible, i.e. it checks the
 *          queue before it is seen parked.
 *   BUG 2  weft__inbox_push without its fence: a producer may read parked
 *          before its increment of inbox_len is visible.
 *   BUG 3  weft__inbox_park does not clear rung, so after the first ring no
 *          producer rings again.
 */

#ifndef NPROD
#define NPROD 2
#endif
#ifndef NITEMS
#define NITEMS 2
#endif
#ifndef BUDGET
#define BUDGET 1
#endif
#ifndef MAXSPURIOUS
#define MAXSPURIOUS 1
#endif
#ifndef MAXSTALE
#define MAXSTALE 0
#endif
#ifndef BUG
#define BUG 0
#endif

#define TOTAL (NPROD * NITEMS)

/* Shared state, named after the fields of weft_loop_t. */
bit lock;       /* inbox_lock */
byte queued;    /* messages on the list; read and written only under lock */
byte inbox_len;  /* messages pushed and not yet run */
bit parked;
bit rung;
byte ringing;   /* rings decided (under lock) and not yet written */
byte efd;       /* the eventfd's counter: readable while > 0 */

/* Ghost state, for the properties only. */
byte consumed;  /* messages run */
byte finished;  /* producers that have pushed all their messages */

/* weft__inbox_push, NITEMS times. */
active [NPROD] proctype producer() {
  byte i;
  bit ring;

  do
  :: i < NITEMS ->
    atomic { lock == 0 -> lock = 1 };
    queued++;
#if BUG == 2
    if
    :: inbox_len++; ring = parked
    :: ring = parked; inbox_len++
    fi;
#else
    inbox_len++;
    /* atomic_thread_fence(memory_order_seq_cst): see 1 above. */
    ring = parked;
#endif
    /* parked && !atomic_exchange(&rung, 1), then ring_begin. ringing is
     * read only by the invariant, and only while the lock is free, so the
     * exchange and ring_begin can be one step. */
    if
    :: ring -> atomic { ring = !rung; rung = 1; ringing = ringing + ring }
    :: else
    fi;
    lock = 0;
    /* ring_end, after the unlock: write the eventfd, then count down. */
    if
    :: ring -> efd++; atomic { ringing--; ring = 0 }
    :: else
    fi;
    i++
  :: else -> break
  od;
  finished++
}

/* weft__inbox_drain(loop, BUDGET). The first critical section only moves
 * the list, which no one reads outside the lock, so it is one step; so is
 * putting the rest back. A message runs right after its decrement of
 * inbox_len, hence one step for both. */
inline drain() {
  if
  :: inbox_len > 0 ->
    atomic { lock == 0 -> taken = queued; queued = 0 };
    do
    :: taken > 0 && ran < BUDGET -> atomic { inbox_len--; consumed++; taken--; ran++ }
    :: else -> break
    od;
    if
    :: taken > 0 -> atomic { lock == 0 -> queued = queued + taken; taken = 0 }
    :: else
    fi;
    ran = 0
#if MAXSTALE > 0
  :: inbox_len > 0 && stale < MAXSTALE -> stale++
#endif
  :: else
  fi
}

/* wakeup_cb: drain first, then reset the eventfd. */
inline wakeup_cb() {
  drain();
  efd = 0
}

/* The loop thread: loop_round, forever. In the safety model it ends where
 * the real loop would sleep forever (all producers done, nothing readable),
 * to check what it left behind. */
active proctype loop_thread() {
  byte taken, ran, spurious, stale;
  bit seen;

  do
  :: drain();
    if
    :: inbox_len > 0
      /* Messages remain, so the round returns before polling while
       * rounds_unpolled < WEFT__POLL_EVERY. */
    :: true ->
      /* weft__inbox_park. */
#if BUG != 3
      rung = 0;
#endif
#if BUG == 1
      if
      :: parked = 1; seen = (inbox_len > 0)
      :: seen = (inbox_len > 0); parked = 1
      fi;
#else
      parked = 1;
      /* atomic_thread_fence(memory_order_seq_cst): see 1 above. */
      seen = (inbox_len > 0);
#endif
      if
      :: seen ->
        /* Parking failed: unpark, then uv_run(UV_RUN_NOWAIT). */
        parked = 0;
        seen = 0;
        if
        :: efd > 0 -> wakeup_cb()
        :: else
        fi
      :: else ->
        /* uv_run(UV_RUN_ONCE): block until the eventfd is readable. */
#ifdef LIVENESS
end_poll:  /* where a finished run of the liveness model leaves the loop */
#endif
        do
        :: efd > 0 -> wakeup_cb(); break
        :: spurious < MAXSPURIOUS -> spurious++; break
#ifndef LIVENESS
        :: atomic {
             lock == 0 ->
             /* The invariant, checked in every state where the loop sleeps
              * (this step changes nothing): it never sleeps with a message
              * in its inbox unless a ring is on its way, decided or written.
              * While a producer holds the lock it may be between its
              * increment and its decision, so those states are exempt. */
             assert(inbox_len == 0 || efd > 0 || ringing > 0)
           }
        :: finished == NPROD && efd == 0 -> goto asleep
#endif
        od;
        /* weft__inbox_unpark. */
        parked = 0
      fi
    fi
  od;
asleep:
  /* Nothing can ring the loop any more, and it sleeps. Everything pushed
   * must have run. */
  assert(inbox_len == 0 && queued == 0 && consumed == TOTAL)
}

#ifdef LIVENESS
/* Every message in the inbox is eventually run: inbox_len drops back to 0.
 * A finished run of the model stutters in its last state, so a loop that
 * sleeps forever with a message queued violates this. */
ltl every_message_runs { [] ((inbox_len > 0) -> <> (inbox_len == 0)) }
#endif
