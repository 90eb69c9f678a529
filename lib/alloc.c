/* Memory: every allocation weft makes goes through these, so that a test
 * can make the nth one from now fail (weft__alloc_fail_nth) and check that
 * each caller turns it into WEFT_ENOMEM and leaves nothing half made. The
 * countdown costs one relaxed load when no failure is asked for. */
#include "internal.h"

#include <stdlib.h>
#include <sys/mman.h>

static atomic_long fail_countdown; /* 0: off; n: the nth allocation fails */

void weft__alloc_fail_nth(long n) {
  atomic_store(&fail_countdown, n > 0 ? n : 0);
}

static bool fail_now(void) {
  long n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
  while (n > 0)
    if (atomic_compare_exchange_weak(&fail_countdown, &n, n - 1))
      return n == 1;
  return false;
}

void *weft__malloc(size_t n) {
  return fail_now() ? NULL : malloc(n);
}

void *weft__calloc(size_t n, size_t size) {
  return fail_now() ? NULL : calloc(n, size);
}

void *weft__realloc(void *p, size_t n) {
  return fail_now() ? NULL : realloc(p, n);
}

void *weft__aligned_alloc(size_t align, size_t n) {
  return fail_now() ? NULL : aligned_alloc(align, n);
}

/* Large zeroed blocks come straight from the kernel: their pages are
 * zero-filled when first touched, so the block costs the same whatever its
 * size until it is used (calloc would clear a block it reuses). */
#define ZALLOC_MAP (64 * 1024)

void *weft__zalloc(size_t n) {
  if (n < ZALLOC_MAP)
    return weft__calloc(1, n);
  if (fail_now())
    return NULL;
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void weft__zfree(void *p, size_t n) {
  if (!p)
    return;
  if (n < ZALLOC_MAP)
    free(p);
  else
    munmap(p, n);
}
