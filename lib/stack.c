/* Task stacks. Each loop keeps a pool: warm stacks are reused as they are, so
 * a spawn with a warm pool costs no system call and no page fault (a first
 * touch of a fresh page is slow on virtual machines).
 *
 * Where the kernel has lightweight guard regions (Linux 6.13+, behind
 * weft__guard_install in lib/arch/), stacks are carved from chunks of
 * WEFT__CHUNK_STACKS slots, each with a WEFT__GUARD_REACH guard below its
 * stack: one mmap and one guard-install call per chunk, no mapping per
 * stack and no vm.max_map_count budget. A task's end puts its stack on the
 * warm list, never a system call. When a chunk's last task ends, the chunk
 * goes on the pool's idle list; when its loop is about to block (nothing
 * to run), weft__stack_trim gives each idle chunk that the pool can spare
 * (more than warm_max warm stacks without it) back to the kernel with one
 * madvise(MADV_DONTNEED) (guards survive it), and its stacks turn cold. So
 * the surplus of a burst is trimmed a chunk at a time, while the loop has
 * nothing else to do: neither a spawn nor a task's end makes the call. A
 * loop that never runs out of work trims a few chunks at each of its polls
 * instead (WEFT__TRIM_BUSY), so its surplus goes back too, more slowly.
 * WEFT_STACK_FALLBACK=1 (or WEFT_GUARDED_STACKS_MAX) in the environment,
 * read when a pool is made, forces the scheme below; tests use it.
 *
 * The fallback (older kernels, other systems): stacks come from mmap
 * with a WEFT__GUARD_REACH PROT_NONE guard below them (address space, not
 * memory) while the process-wide guard budget lasts;
 * each guarded stack costs two kernel mappings and Linux caps a process at
 * vm.max_map_count (65530 by default). Past the budget, stacks are carved
 * from large slab mappings without guard pages, and a canary word just below
 * each stack's low end is checked at every switch away from its task, so an
 * overflow is still caught, if later (see the picture in internal.h). Surplus warm stacks beyond the pool's
 * cap are unmapped (guarded) or handed back to the kernel with MADV_DONTNEED
 * (slab stacks, kept cold for reuse): that happens when a burst of tasks
 * ends, never on the spawn path.
 *
 * Under TSan each stack also carries the fiber its tasks run as: TSan takes
 * milliseconds to create one (it maps and clears memory for it as for a
 * thread), far more than a task's switch, so a warm stack keeps its fiber
 * for the next task. A stack that turns cold or unmaps destroys it. */
#include "internal.h"

#include <errno.h>
#include <signal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(WEFT_HAVE_VALGRIND_H)
#include <valgrind/valgrind.h>
#else
#define VALGRIND_STACK_REGISTER(lo, hi) 0u
#define VALGRIND_STACK_DEREGISTER(id) ((void)(id))
#endif

#if defined(WEFT_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

#define SLAB_STACKS 256
#define GUARD WEFT__GUARD_REACH

#if defined(WEFT_TSAN)
/* TSan dies past 8128 threads and fibers alive at once, so a program sizes
 * its concurrent tasks by that; fibers parked in warm stacks count too, and
 * a loop cannot use another loop's. So they are capped for the whole
 * process, well below a pool's warm_max times its loops: beyond the cap a
 * warm stack gives its fiber up and the next task on it makes one again.
 * Tasks spawned one after the other reuse a handful of stacks, so even a
 * small cap keeps nearly every fiber they need. */
#define TSAN_IDLE_FIBERS_MAX 1024
static atomic_size_t idle_fibers; /* kept by warm stacks, all pools */
#endif

/* A slab of the fallback (canary stacks) or a chunk of guarded stacks. */
struct weft__slab {
  weft__slab_t *next;    /* the pool's list of slabs */
  void *map;
  size_t map_len;
  size_t carved;         /* stacks handed out from it so far */
  size_t cap;            /* slots: SLAB_STACKS or WEFT__CHUNK_STACKS */
  bool guarded;          /* a chunk: a guard below every slot */
  size_t busy;           /* chunks: stacks running a task */
  size_t nwarm;          /* chunks: stacks on the warm list */
  weft__queue_t idle;    /* chunks: link in the pool's idle list, when on it */
  weft__stack_t stacks[];
};

/* Chunk slots whose first page stack_new_lite faults in at once. */
#define POPULATE_BATCH 16

static atomic_size_t guarded_total;
static size_t guarded_budget;
static pthread_once_t budget_once = PTHREAD_ONCE_INIT;
static size_t page_size;
static atomic_bool lite_refused; /* the kernel has no lightweight guards */

/* A quarter of the mapping limit for guard pages (two mappings each) leaves
 * half of it to the program, its libraries, malloc and the slabs.
 * WEFT_GUARDED_STACKS_MAX in the environment overrides it (tests use it to
 * reach the canary fallback quickly). */
static void budget_init(void) {
  long max_maps = 65530;
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  if (f) {
    if (fscanf(f, "%ld", &max_maps) != 1)
      max_maps = 65530;
    fclose(f);
  }
  const char *env = getenv("WEFT_GUARDED_STACKS_MAX");
  /* The sanitizers map memory of their own for every fiber and stack:
   * leave them most of the room. */
#if defined(WEFT_TSAN) || defined(WEFT_ASAN)
  size_t share = 16;
#else
  size_t share = 4;
#endif
  guarded_budget = env ? (size_t)strtoull(env, NULL, 10) : (size_t)max_maps / share;
  page_size = (size_t)sysconf(_SC_PAGESIZE);
}

size_t weft__stack_round(size_t size) {
  pthread_once(&budget_once, budget_init);
  if (size == 0)
    size = WEFT_STACK_SIZE_DEFAULT;
  if (size < WEFT_STACK_SIZE_MIN)
    size = WEFT_STACK_SIZE_MIN;
  return (size + page_size - 1) & ~(page_size - 1);
}

void weft__stack_pool_init(weft__stack_pool_t *p, size_t stack_size, size_t warm_max) {
  weft__queue_init(&p->warm);
  weft__queue_init(&p->cold);
  p->nwarm = 0;
  p->warm_max = warm_max;
  p->stack_size = weft__stack_round(stack_size);
  p->slabs = NULL;
  p->carving = NULL;
  p->nguarded = 0;
  p->ncanary = 0;
  weft__queue_init(&p->idle);
  const char *fb = getenv("WEFT_STACK_FALLBACK");
  p->lite = !(fb && strcmp(fb, "0") != 0) && !getenv("WEFT_GUARDED_STACKS_MAX") &&
            !atomic_load_explicit(&lite_refused, memory_order_relaxed);
}

static const uint64_t guarded_canary = WEFT__STACK_CANARY;

static void stack_arm(weft__stack_t *s) {
  if (s->canary != &guarded_canary)
    *(uint64_t *)s->canary = WEFT__STACK_CANARY;
  s->vg_id = VALGRIND_STACK_REGISTER(s->lo, (char *)s->lo + s->size);
}

static weft__stack_t *stack_new_guarded(weft__stack_pool_t *p) {
  size_t n = atomic_fetch_add(&guarded_total, 1);
  if (n >= guarded_budget) {
    atomic_fetch_sub(&guarded_total, 1);
    return NULL;
  }
  weft__stack_t *s = weft__malloc(sizeof *s);
  if (!s)
    goto error1;
  /* The guard is address space only (PROT_NONE, never touched), so it
   * is as wide as the overflow report's reach. */
  size_t guard = GUARD > page_size ? GUARD : page_size;
  size_t len = p->stack_size + guard;
  void *map = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (map == MAP_FAILED)
    goto error2;
  if (mprotect(map, guard, PROT_NONE) != 0)
    goto error3;
  s->map = map;
  s->map_len = len;
  s->slab = NULL;
  s->cold = false;
  s->lo = (char *)map + guard;
  s->size = p->stack_size;
  s->canary = &guarded_canary;
  s->tsan_fiber = NULL;
  weft__queue_init(&s->node);
  stack_arm(s);
  p->nguarded++;
  return s;

error3:
  munmap(map, len);
error2:
  free(s);
error1:
  atomic_fetch_sub(&guarded_total, 1);
  return NULL;
}

/* A new slab of cap slots mapped over map_len bytes, not yet the pool's;
 * NULL when out of memory. */
static weft__slab_t *slab_new(size_t cap, size_t map_len) {
  weft__slab_t *slab = weft__malloc(sizeof *slab + cap * sizeof slab->stacks[0]);
  if (!slab)
    return NULL;
  slab->map_len = map_len;
  slab->map = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (slab->map == MAP_FAILED) {
    free(slab);
    return NULL;
  }
  slab->cap = cap;
  slab->guarded = false;
  slab->carved = 0;
  slab->busy = 0;
  slab->nwarm = 0;
  weft__queue_init(&slab->idle);
  return slab;
}

/* The slab joins the pool's and is carved from next. */
static void slab_adopt(weft__stack_pool_t *p, weft__slab_t *slab) {
  slab->next = p->slabs;
  p->slabs = slab;
  p->carving = slab;
}

/* The slab's next slot as a stack of size bytes from lo, checked by the
 * word at canary. */
static weft__stack_t *slab_carve(weft__slab_t *slab, void *lo, size_t size,
                                 const uint64_t *canary) {
  weft__stack_t *s = &slab->stacks[slab->carved++];
  s->map = NULL;
  s->map_len = 0;
  s->slab = slab;
  s->lo = lo;
  s->size = size;
  s->canary = canary;
  s->cold = false;
  s->tsan_fiber = NULL;
  weft__queue_init(&s->node);
  stack_arm(s);
  return s;
}

static weft__stack_t *stack_new_canary(weft__stack_pool_t *p) {
  weft__slab_t *slab = p->carving;
  if (!slab || slab->carved == SLAB_STACKS) {
    /* One page below the first slot holds its canary. */
    if (!(slab = slab_new(SLAB_STACKS, page_size + p->stack_size * SLAB_STACKS)))
      return NULL;
    slab_adopt(p, slab);
  }
  char *lo = (char *)slab->map + page_size + slab->carved * p->stack_size;
  /* The top 16 bytes of each slot are not stack: the next slot's canary
   * lives there. */
  weft__stack_t *s = slab_carve(slab, lo, p->stack_size - 16,
                                (const uint64_t *)(lo - sizeof(uint64_t)));
  p->ncanary++;
  return s;
}

/* A stack of a guarded chunk, or NULL: out of memory, or the kernel refused
 * the guards, and then this pool and every later one turn to the fallback. */
static weft__stack_t *stack_new_lite(weft__stack_pool_t *p) {
  weft__slab_t *c = p->carving;
  size_t stride = GUARD + p->stack_size;
  if (!c || c->carved == c->cap) {
    if (!(c = slab_new(WEFT__CHUNK_STACKS, stride * WEFT__CHUNK_STACKS)))
      return NULL;
    int rc = weft__guard_install(c->map, stride, GUARD, WEFT__CHUNK_STACKS);
    if (rc != 0) {
      munmap(c->map, c->map_len);
      free(c);
      if (rc != -ENOMEM) {
        /* No lightweight guards here: this pool and later ones fall back. */
        atomic_store_explicit(&lite_refused, true, memory_order_relaxed);
        p->lite = false;
        p->carving = NULL;
      }
      return NULL;
    }
    c->guarded = true;
    slab_adopt(p, c);
  }
  char *lo = (char *)c->map + c->carved * stride + GUARD;
  /* The first page each task touches is its stack's top one (the switch's
   * first frame): fault those in for the next POPULATE_BATCH slots with one
   * call, not one trap each. */
  if (c->carved % POPULATE_BATCH == 0) {
    size_t n = c->cap - c->carved < POPULATE_BATCH ? c->cap - c->carved : POPULATE_BATCH;
    weft__pages_populate(lo + p->stack_size - page_size, stride, page_size, n);
  }
  weft__stack_t *s = slab_carve(c, lo, p->stack_size, &guarded_canary);
  p->nguarded++;
  return s;
}

/* Gives a stack about to run a task the fiber it lacks, or takes the one it
 * kept out of the idle count. */
static void fiber_take(weft__stack_t *s) {
#if defined(WEFT_TSAN)
  if (s->tsan_fiber)
    atomic_fetch_sub_explicit(&idle_fibers, 1, memory_order_relaxed);
  else
    s->tsan_fiber = __tsan_create_fiber(0);
#else
  (void)s;
#endif
}

/* A warm stack keeps its fiber while the process-wide cap allows. */
static void fiber_park(weft__stack_t *s) {
#if defined(WEFT_TSAN)
  if (atomic_fetch_add_explicit(&idle_fibers, 1, memory_order_relaxed) < TSAN_IDLE_FIBERS_MAX)
    return;
  atomic_fetch_sub_explicit(&idle_fibers, 1, memory_order_relaxed);
  __tsan_destroy_fiber(s->tsan_fiber);
  s->tsan_fiber = NULL;
#else
  (void)s;
#endif
}

/* For a stack leaving use for the cold list or the kernel. */
static void fiber_drop(weft__stack_t *s) {
#if defined(WEFT_TSAN)
  __tsan_destroy_fiber(s->tsan_fiber);
#endif
  s->tsan_fiber = NULL;
}

/* For a warm stack leaving the pool. */
static void fiber_unpark(weft__stack_t *s) {
#if defined(WEFT_TSAN)
  if (s->tsan_fiber) {
    atomic_fetch_sub_explicit(&idle_fibers, 1, memory_order_relaxed);
    fiber_drop(s);
  }
#else
  (void)s;
#endif
}

static weft__stack_t *stack_get(weft__stack_pool_t *p) {
  weft__queue_t *q;
  weft__stack_t *s;
  if (!weft__queue_empty(&p->warm)) {
    q = weft__queue_head(&p->warm);
    weft__queue_remove(q);
    p->nwarm--;
    s = weft__container_of(q, weft__stack_t, node);
    if (s->slab && s->slab->guarded)
      s->slab->nwarm--;
  } else if (!weft__queue_empty(&p->cold)) {
    q = weft__queue_head(&p->cold);
    weft__queue_remove(q);
    s = weft__container_of(q, weft__stack_t, node);
    s->cold = false;
    /* MADV_DONTNEED may have zeroed the page holding the canary (the slot
     * below was cold too). */
    if (s->canary != &guarded_canary)
      *(uint64_t *)s->canary = WEFT__STACK_CANARY;
  } else {
    s = p->lite ? stack_new_lite(p) : NULL;
    if (!s && !p->lite)
      s = stack_new_guarded(p);
    if (!s && !p->lite)
      s = stack_new_canary(p);
  }
  if (s && s->slab && s->slab->guarded) {
    s->slab->busy++;
    /* In use again: not the trim's to take. */
    if (weft__queue_linked(&s->slab->idle))
      weft__queue_remove(&s->slab->idle);
  }
  return s;
}

weft__stack_t *weft__stack_get(weft__stack_pool_t *p) {
  weft__stack_t *s = stack_get(p);
  if (s)
    fiber_take(s);
  return s;
}

static void stack_unmap(weft__stack_pool_t *p, weft__stack_t *s) {
  VALGRIND_STACK_DEREGISTER(s->vg_id);
  munmap(s->map, s->map_len);
  free(s);
  p->nguarded--;
  atomic_fetch_sub(&guarded_total, 1);
}

/* Gives a whole idle chunk's pages back with one call; its warm stacks
 * turn cold. The guards in the range stay (MADV_DONTNEED keeps them). */
static void chunk_trim(weft__stack_pool_t *p, weft__slab_t *c) {
  weft__stack_t *first = &c->stacks[0], *last = &c->stacks[c->carved - 1];
  madvise(first->lo, (size_t)((char *)last->lo + last->size - (char *)first->lo), MADV_DONTNEED);
  for (size_t i = 0; i < c->carved; i++) {
    weft__stack_t *s = &c->stacks[i];
    if (s->cold)
      continue;
    weft__queue_remove(&s->node);
    p->nwarm--;
    fiber_unpark(s);
    s->cold = true;
    weft__queue_insert_tail(&p->cold, &s->node);
  }
  c->nwarm = 0;
}

bool weft__stack_trim(weft__stack_pool_t *p, size_t budget) {
  for (size_t n = 0; n < budget && !weft__queue_empty(&p->idle); n++) {
    weft__slab_t *c = weft__container_of(weft__queue_head(&p->idle), weft__slab_t, idle);
    weft__queue_remove(&c->idle);
    if (p->nwarm >= p->warm_max + c->nwarm)
      chunk_trim(p, c);
  }
  return !weft__queue_empty(&p->idle);
}

void weft__stack_put(weft__stack_pool_t *p, weft__stack_t *s) {
  weft__slab_t *c = s->slab;
  if (c && c->guarded) {
    /* No system call here but for the chunk's last task of a surplus. */
    fiber_park(s);
    weft__queue_insert_head(&p->warm, &s->node);
    p->nwarm++;
    c->nwarm++;
    if (--c->busy == 0 && c != p->carving)
      weft__queue_insert_tail(&p->idle, &c->idle);
    return;
  }
  if (p->nwarm < p->warm_max) {
    fiber_park(s);
    weft__queue_insert_head(&p->warm, &s->node);
    p->nwarm++;
    return;
  }
  fiber_drop(s);
  if (s->slab) {
    /* madvise works on whole pages, so this also zeroes the next slot's
     * canary (the slot's topmost word). Put it back: every task's canary was
     * checked when it last switched away, so nothing is being hidden. */
    madvise(s->lo, s->size, MADV_DONTNEED);
    size_t i = (size_t)(s - s->slab->stacks);
    if (i + 1 < s->slab->carved)
      *(uint64_t *)s->slab->stacks[i + 1].canary = WEFT__STACK_CANARY;
    s->cold = true;
    weft__queue_insert_head(&p->cold, &s->node);
  } else {
    stack_unmap(p, s);
  }
}

void weft__stack_pool_destroy(weft__stack_pool_t *p) {
  weft__queue_t *lists[2] = {&p->warm, &p->cold};
  for (int i = 0; i < 2; i++) {
    while (!weft__queue_empty(lists[i])) {
      weft__queue_t *q = weft__queue_head(lists[i]);
      weft__queue_remove(q);
      weft__stack_t *s = weft__container_of(q, weft__stack_t, node);
      fiber_unpark(s);
      if (s->slab)
        VALGRIND_STACK_DEREGISTER(s->vg_id);
      else
        stack_unmap(p, s);
    }
  }
  p->nwarm = 0;
  while (p->slabs) {
    weft__slab_t *slab = p->slabs;
    p->slabs = slab->next;
    munmap(slab->map, slab->map_len);
    free(slab);
  }
  p->carving = NULL;
}
