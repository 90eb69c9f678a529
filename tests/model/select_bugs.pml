/* The model of tests/model/select.pml with a known bug injected, to show
 * that the model can see it: SPIN must report an error here. By default
 * (BUG 1) the select does not pass on a wake-up it consumed and did not
 * use: a select woken on A (the plain receiver queued behind it on A was
 * not woken for that message) that then takes B's message leaves A's
 * message to a receiver that sleeps for ever. spin -DBUG=2 (a channel
 * wakes the select without the CAS of fired: woken twice in one wait) or
 * -DBUG=3 (no fence between enlisting and the try: a lost wake-up) picks
 * the other bugs that select.pml describes. */
#ifndef BUG
#define BUG 1
#endif

#include "select.pml"
