/* The model of tests/model/inbox.pml with a lost wake-up injected, to show
 * that the model can see one: SPIN must report an error here. By default
 * weft__inbox_park loses its fence, so the loop may check inbox_len before
 * its store of parked = 1 is visible to producers: a producer then pushes,
 * sees the loop unparked and does not ring, while the loop saw an empty
 * inbox and sleeps. spin -DBUG=2 or -DBUG=3 picks the other bugs that
 * inbox.pml describes. */
#ifndef BUG
#define BUG 1
#endif
#include "inbox.pml"
