#define _GNU_SOURCE
/* A negative control for the ASan and valgrind modes: a task reads memory
 * another task freed. Built in those modes only, and registered as an
 * expected failure: if this exits 0, the tool is not watching task stacks
 * and the heap, and its zero reports elsewhere would mean nothing. */
#include <stdlib.h>

#include <weft.h>

static void *freer(void *arg) {
  free(arg);
  return NULL;
}

static void *reader(void *arg) {
  weft_task_t *t;
  if (weft_spawn(NULL, freer, arg, &t) != 0)
    return NULL;
  weft_await(t, NULL);
  weft_task_release(t);
  return (void *)(intptr_t)((volatile int *)arg)[1]; /* after the free */
}

int main(void) {
  int *p = malloc(4 * sizeof *p);
  if (!p)
    return 2;
  p[1] = 7;
  void *r;
  weft_run(reader, p, &r);
  (void)r;
  return 0; /* the tool's report, not the status, is what the test checks */
}
