/* A SPIN model of weft_select's wake-up protocol: weft_select, wait_once,
 * try_all, rec_fire and claim in lib/select.c, and the wait lists of
 * lib/chan.c that a select shares with plain waiters (notify, wake_rec,
 * weft__chan_enlist, weft__chan_delist, weft__chan_pass, and the waiting
 * side of weft_chan_recv: blocking_op and wait_once). A selector task
 * receives from channel A or B, a plain receiver on each channel competes
 * with it, one producer sends to A and one to B, and a canceller may
 * cancel the selector at any time (or not at all). The checks say that no message is ever
 * left in a channel while a party that could take it sleeps with no wake-up
 * on its way, and that a select's waiter is woken at most once per wait.
 *
 * What is modelled, and what is left out:
 *
 * - A channel's ring is a counter of messages, msgs[c], with capacity CAP
 *   (default 1). A try (ring_recv) is one step: it takes a message if there
 *   is one. Messages are counted, not named: no try can take one twice, so
 *   what is checked is that none is left behind.
 * - Only the receivers' side is modelled. A producer's send waits while the
 *   channel is full as one blocking step (the senders' wait list mirrors
 *   the receivers' and is left out), then notifies the receivers' list.
 *   A successful try's notify of the senders' list is left out with it.
 * - Each channel's receivers' list is wl[] in order, oldest first, with its
 *   length wlen[c]. Record ids: SA and SB are the select's records on A
 *   and B, RXA and RXB the plain receivers' (on A and on B). The list and
 *   wlen change together under the channel's lock; a notifier reads wlen
 *   without the lock after its fence, as notify does. A critical section
 *   is one step where nothing else it touches is visible halfway (see
 *   notify); the plain receiver's, whose try reads the ring, is not.
 * - Waking a record (wake_rec, under the lock): it leaves its list; a plain
 *   waiter's record wakes its waiter (rx_wake); a select's record fires:
 *   CAS fired 0 -> 1, and only the winner wakes the select's waiter. The
 *   CAS and the wake are one step (the waiter's own wake/wait handshake,
 *   waiter.c, is not what is checked here). The close of a channel
 *   (notify_all) is left out.
 * - The selector is a task doing NSEL selects over RECV A and RECV B. A
 *   cancel is processed by its loop only while the task is not running: so
 *   either before a select, or after one, or while the task is parked
 *   (then the interrupt hook, select_interrupt, runs: claim, i.e. CAS fired
 *   0 -> 1; winning wakes the waiter with the error). A cancel that came
 *   while the task was not parked is seen at its next await_begin: at the
 *   select's start if no case was ready, and after a wake-up whose retry
 *   found nothing. A timeout or deadline is the same cut and is not
 *   modelled apart.
 * - Each plain receiver loops for ever (weft_chan_recv in a loop): it
 *   tries; if nothing, under its channel's lock it enlists, (fences,) tries
 *   again, and either delists having taken a message or sleeps until
 *   woken, then tries once more and, if that fails too, enlists again. It
 *   never gives up, so a message left in a channel once nothing can move
 *   any more is a lost wake-up. (The select's records are gone from the
 *   lists when it passes a wake-up on, so there a plain receiver is the
 *   only one to wake: pass_on.)
 *
 * Memory model: as in inbox.pml, every Promela statement is one access (or
 * one critical section under a channel's lock) and SPIN tries every
 * interleaving, i.e. sequential consistency. What makes that sound here is
 * the Dekker pair between a notifier (a ring change, seq_cst fence, load of
 * wlen) and a waiter (enlist, which stores wlen under the lock, seq_cst
 * fence, ring try): with both fences C11 forbids the one outcome SC
 * forbids. BUG 3 drops the select's fence, and SPIN finds the lost
 * wake-up. fired is only accessed by CAS (acq_rel) and by the owner's
 * reset before its records are enlisted (published by the lock); every
 * other shared access is under a channel's lock.
 *
 * Switches (spin -DNAME=VALUE): NA and NB messages sent to A and B (default
 * 2 and 2: a second message lets a producer's wake-up race each baton
 * pass), CAP (1), NSEL selects by the selector (1), CANCEL (1: a
 * canceller may cancel the selector once, or not at all; 0: never), RX_B
 * (1: a plain receiver on B too; 0: B's messages are the select's alone),
 * FIX (below), LIVENESS compiles the LTL property instead of the safety
 * checks, and BUG injects a known bug (select_bugs.pml sets BUG 1).
 *
 * FIX 1 is the rule of lib/select.c (the default). FIX 0 was its first
 * rule: after the select, a wake-up
 * that case i's record consumed is passed on only if i is not the case the
 * select performed. SPIN finds a lost wake-up in it (both checks, a few
 * hundred states): the select enlists on A behind the plain receiver R; a
 * message a1 comes, and its notify wakes R (the oldest); the select's try,
 * still inside wait_once with its records on the lists, takes a1 and claims
 * fired; R finds nothing and enlists again, now behind the select's record;
 * a2 comes and its notify pops the select's record (fired is set: the wake
 * is consumed); the select delists, sees its record on A woken, and since
 * it performed A passes nothing on. R sleeps for ever beside a2. The take
 * of a1 did not use that wake-up: it came after it. FIX 1 passes on a
 * woken record of the performed case too when the case was performed by
 * the try inside wait_once (a wake-up consumed then is never the one the
 * select used); the retry after a wake-up keeps the old rule. FIX 2 passes
 * on every woken record (simpler, one spurious wake-up at worst). Both
 * hold.
 *
 * The bugs (checked on FIX 1, where the model holds):
 *
 *   BUG 1  No baton pass: after the select, a case whose record was woken
 *          (a wake-up consumed) is not passed on to the next waiter of its
 *          list when the select completed another case or was cut. The
 *          plain receiver queued behind the select sleeps while its
 *          channel holds a message.
 *   BUG 2  rec_fire wakes the select's waiter without the CAS of fired:
 *          two channels (or a channel and a cut) wake one wait twice, a
 *          use after the waiter's end in the C code.
 *   BUG 3  The select skips its fence between enlisting and its try: the
 *          try may read the rings before the enlisting is visible to a
 *          notifier, which then sees no waiter, while the try saw no
 *          message. The select's own lost wake-up shows only where nobody
 *          else takes that message and no later message rescues it: run
 *          it with -DRX_B=0 -DNA=1 -DNB=1 (B's message stays while the
 *          select sleeps).
 */

#ifndef NA
#define NA 2
#endif
#ifndef NB
#define NB 2
#endif
#ifndef CAP
#define CAP 1
#endif
#ifndef NSEL
#define NSEL 1
#endif
#ifndef CANCEL
#define CANCEL 1
#endif
#ifndef BUG
#define BUG 0
#endif
#ifndef FIX
#define FIX 1
#endif
#ifndef RX_B
#define RX_B 1
#endif

/* Whether the select passes on a wake-up its record of case c consumed
 * (see FIX above). */
#if FIX == 1
#define PASS(c) (chosen != c || early)
#elif FIX == 2
#define PASS(c) true
#else
#define PASS(c) (chosen != c)
#endif

#define A 0
#define B 1
#define NONE 2       /* no case chosen */
#define LMAX 2       /* the longest list: the select's record and a plain one */

/* A message that a waiting party could take (see the properties below). */
#define stranded (msgs[A] > 0 || (msgs[B] > 0 && (RX_B || sel_phase != 2)))

/* Record ids on the lists (0: an empty slot). */
#define SA 1
#define SB 2
#define RXA 3
#define RXB 4

/* The channels. */
byte msgs[2];        /* the ring: messages in the channel */
bit lock[2];         /* ch->lock */
byte wl[4];          /* receivers' list of channel c: wl[c * LMAX ..], oldest first */
byte wlen[2];        /* receivers.len */

/* The select's shared wait (select_wait_t). */
bit fired;
bit sel_live;        /* its waiter is initialised and not yet destroyed */
bit sel_wake;        /* a wake-up delivered and not yet consumed */
bit sel_err;         /* that wake-up's error: 1 for a cut */
byte sel_nwakes;     /* wake-ups of the current wait (ghost) */
bit sel_parked;      /* the task is parked in the wait */
byte sel_phase;      /* 0 before a select, 1 inside one, 2 done (all selects) */

/* The plain receivers' waiters, by channel. */
bit rx_wake[2];

bit cancelled;       /* the task's cancel flag */

/* Ghost state, for the properties. */
byte sent;
byte got;            /* messages received, by anyone */
byte finished;       /* producers done */

inline append(c, id) {
  assert(wlen[c] < LMAX);
  wl[c * LMAX + wlen[c]] = id;
  wlen[c]++
}

/* Takes record id, which is on list c, off it (unlink_rec). */
inline unlink(c, id) {
  if
  :: wl[c * LMAX] == id -> wl[c * LMAX] = wl[c * LMAX + 1]; wl[c * LMAX + 1] = 0; wlen[c]--
  :: wl[c * LMAX + 1] == id -> wl[c * LMAX + 1] = 0; wlen[c]--
  fi
}

/* The select's waiter is woken (weft__waiter_wake): at most once a wait,
 * and only while the wait lives. */
inline sel_wakeup(e) {
  assert(sel_live && sel_nwakes == 0);
  sel_nwakes++;
  sel_wake = 1;
  sel_err = e
}

/* wake_rec, under the lock: the oldest record leaves the list and fires.
 * A plain waiter's record wakes its waiter; a select's record (rec_fire)
 * wakes the select only if it is the first to set fired, else its wake-up
 * is consumed (the record is off its list either way). */
inline wake_oldest(c) {
  id = wl[c * LMAX];
  wl[c * LMAX] = wl[c * LMAX + 1]; wl[c * LMAX + 1] = 0; wlen[c]--;
  if
  :: id == RXA || id == RXB -> assert(rx_wake[c] == 0); rx_wake[c] = 1
  :: else ->
#if BUG == 2
    sel_wakeup(0)
#else
    if
    :: fired == 0 -> fired = 1; sel_wakeup(0)
    :: else
    fi
#endif
  fi;
  id = 0
}

/* notify(ch, &ch->receivers) after a change to the ring. The fence before
 * the read of wlen is SC here; the read is a step of its own, and so is the
 * critical section under the lock that follows it. (A critical section is
 * one step wherever everything else it touches is either under the same
 * lock or, like fired and the wakes, only changes in ways that commute
 * with it: no other party can tell it apart from an instant one.) */
inline notify(c) {
  if
  :: wlen[c] > 0 ->
    atomic {
      lock[c] == 0 ->
      if
      :: wlen[c] > 0 -> wake_oldest(c)
      :: else
      fi
    }
  :: else
  fi
}

/* weft__chan_pass, the select's baton pass: notify, where the oldest
 * record can only be a plain receiver's (the select's own are gone). */
inline pass_on(c) {
  if
  :: wlen[c] > 0 ->
    atomic {
      lock[c] == 0 ->
      if
      :: wlen[c] > 0 ->
        assert(wl[c * LMAX] == RXA || wl[c * LMAX] == RXB);
        wl[c * LMAX] = wl[c * LMAX + 1]; wl[c * LMAX + 1] = 0; wlen[c]--;
        assert(rx_wake[c] == 0);
        rx_wake[c] = 1
      :: else
      fi
    }
  :: else
  fi
}

/* A blocking send (the senders' side abstracted), then the notify. */
inline produce(c, n) {
  do
  :: atomic { i < n && msgs[c] < CAP -> msgs[c]++; sent++; i++ };
    notify(c)
  :: atomic { i == n -> finished++ }; break
  od
}

active proctype producer_a() {
  byte i, id;
  produce(A, NA)
}

active proctype producer_b() {
  byte i, id;
  produce(B, NB)
}

/* try_all from a random start: each case's try (weft__chan_try on the
 * ring) is one step, and the first that takes a message ends it. */
inline try_all() {
  if
  :: atomic { msgs[A] > 0 -> msgs[A]--; got++; chosen = A }
  :: atomic { msgs[A] == 0 -> skip };
    atomic {
      if
      :: msgs[B] > 0 -> msgs[B]--; got++; chosen = B
      :: else
      fi
    }
  :: atomic { msgs[B] > 0 -> msgs[B]--; got++; chosen = B }
  :: atomic { msgs[B] == 0 -> skip };
    atomic {
      if
      :: msgs[A] > 0 -> msgs[A]--; got++; chosen = A
      :: else
      fi
    }
  fi
}

/* weft__chan_enlist: one critical section, one step. */
inline enlist(c, id) {
  atomic { lock[c] == 0 -> append(c, id) }
}

/* weft__chan_delist: under the lock, off the list if still on it, else a
 * notifier took it (a wake-up consumed). */
inline delist(c, id, woken) {
  atomic {
    lock[c] == 0 ->
    if
    :: wl[c * LMAX] == id -> wl[c * LMAX] = wl[c * LMAX + 1]; wl[c * LMAX + 1] = 0; wlen[c]--
    :: wl[c * LMAX + 1] == id -> wl[c * LMAX + 1] = 0; wlen[c]--
    :: else -> woken = 1
    fi
  }
}

/* weft__waiter_wait for the task: parks until the wake-up; a cut of a
 * parked task is the canceller's. A finished run may leave the selector
 * here for ever (nothing more to receive): a valid end state, which the
 * properties judge. */
inline park() {
  sel_parked = 1;
end_sel_park:
  atomic { sel_wake -> sel_wake = 0; sel_parked = 0; err = sel_err; sel_err = 0 }
}

active proctype selector() {
  byte chosen, id, nsel;
  bit woken_a, woken_b, err, must_park, early;

  do
  :: nsel < NSEL ->
    atomic { chosen = NONE; err = 0; woken_a = 0; woken_b = 0; early = 0; sel_phase = 1 };
    /* The first try, with nothing enlisted. */
    try_all();
    if
    :: chosen != NONE -> goto done
    :: else
    fi;
    /* weft__waiter_caller: a pending cancel ends it here. */
    if
    :: cancelled -> err = 1; goto done
    :: else
    fi;
again:
    /* wait_once: the waiter and fired, then one record per case. */
    atomic { sel_live = 1; fired = 0; sel_nwakes = 0 };
#if BUG == 3
    /* No fence: the try may be satisfied before the records are seen. */
    if
    :: enlist(A, SA); enlist(B, SB); try_all()
    :: try_all(); enlist(A, SA); enlist(B, SB)
    :: enlist(A, SA); try_all(); enlist(B, SB)
    fi;
#else
    enlist(A, SA);
    enlist(B, SB);
    /* atomic_thread_fence(memory_order_seq_cst) */
    try_all();
#endif
    must_park = 1;
    if
    :: chosen != NONE ->
      early = 1;
      /* A channel may have fired a record meanwhile: claim, or let its
       * wake-up land before the wait ends. */
      if
      :: atomic { fired == 0 -> fired = 1; must_park = 0 }
      :: atomic { fired == 1 -> skip }
      fi
    :: else
    fi;
    if
    :: must_park -> park()
    :: else
    fi;
    delist(A, SA, woken_a);
    delist(B, SB, woken_b);
    atomic { sel_live = 0; sel_nwakes = 0 };
    if
    :: chosen != NONE || err -> goto done
    :: else
    fi;
    /* Woken: try again; a cancel that came meanwhile counts only if this
     * finds nothing. */
    try_all();
    if
    :: chosen != NONE -> goto done
    :: else
    fi;
    if
    :: cancelled -> err = 1; goto done
    :: else
    fi;
    /* Nothing ready: whoever woke it had its progress taken by another.
     * Enlist again. */
    woken_a = 0; woken_b = 0;
    goto again;
done:
#if BUG != 1
    /* Pass on every wake-up consumed and not used. */
    if
    :: woken_a && PASS(A) -> pass_on(A)
    :: else
    fi;
    if
    :: woken_b && PASS(B) -> pass_on(B)
    :: else
    fi;
#endif
    nsel++;
    sel_phase = 0
  :: else -> break
  od;
  sel_phase = 2
}

#if CANCEL
/* weft_task_cancel from another thread, handled by the task's loop when
 * the task is not running: the flag, and if the task is parked the
 * interrupt hook. */
active proctype canceller() {
  if
  :: skip  /* no cancel in this run */
  :: atomic {
       (sel_parked || sel_phase != 1) ->
       cancelled = 1;
       if
       :: sel_parked ->
#if BUG == 2
         sel_wakeup(1)
#else
         if
         :: fired == 0 -> fired = 1; sel_wakeup(1)
         :: else  /* a channel's wake-up is on its way: it ends the wait */
         fi
#endif
       :: else
       fi
     }
  fi
}
#endif

/* weft_chan_recv in a loop, on a plain thread, on channel c with record
 * id me. It stops only where it does not wait: at the top of its loop once
 * every message has been sent and its channel is empty (nothing more can
 * come), so that a run ends; a lost wake-up leaves it asleep instead. */
inline receive_forever(c, me) {
  do
  :: atomic { msgs[c] > 0 -> msgs[c]--; got++ }
  :: atomic { finished == 2 && msgs[c] == 0 } -> break
  :: atomic { msgs[c] == 0 -> skip };
again:
    /* wait_once: enlist, fence and try under the lock; the try is a step
     * of its own, since the ring is not under the lock. */
    atomic { lock[c] == 0 -> lock[c] = 1; append(c, me) };
    if
    :: atomic { msgs[c] > 0 -> msgs[c]--; got++ };
      atomic { unlink(c, me); lock[c] = 0 }
    :: else ->
      lock[c] = 0;
end_rx_park:
      atomic { rx_wake[c] -> rx_wake[c] = 0 };
      /* Woken: try once more, else wait again. */
      if
      :: atomic { msgs[c] > 0 -> msgs[c]--; got++ }
      :: else -> goto again
      fi
    fi
  od
}

active proctype receiver_a() {
  receive_forever(A, RXA)
}

#if RX_B
active proctype receiver_b() {
  receive_forever(B, RXB)
}
#endif

#ifndef LIVENESS
/* When nothing can move any more: every producer has sent everything, and
 * no message is left where a party that waits could take it: A's (and,
 * with RX_B, B's) plain receiver never stops, and without RX_B, B's
 * messages are the select's until it is done. */
active proctype monitor() {
  timeout ->
  assert(finished == 2 && sent == NA + NB);
  assert(!stranded);
  assert(got + msgs[A] + msgs[B] == sent)
}
#endif

#ifdef LIVENESS
/* A message that a waiting party could take is eventually taken. A
 * finished run stutters in its last state, so a party that sleeps for
 * ever beside a message violates this. */
ltl every_message_taken { [] (stranded -> <> !stranded) }
#endif
