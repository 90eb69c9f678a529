/* Lightweight guard regions (Linux 6.13+): madvise(MADV_GUARD_INSTALL) marks
 * a range of a private anonymous mapping so that any access faults with
 * SIGSEGV, without splitting the mapping into a VMA of its own. A guard
 * costs page-table entries, not memory and not a vm.max_map_count slot, so
 * every stack carved from a large mapping can keep a wide guard (stack.c).
 * MADV_DONTNEED over a range leaves the guards in it in place.
 *
 * weft__guard_install is what stack.c sees of it. It installs the n guards
 * of a mapping with one process_madvise call where the kernel takes guard
 * advice there (6.18 does), else with one madvise each. Elsewhere, or on
 * an older kernel, it reports that guards are not available and stack.c
 * falls back to a guard mapping per stack.
 *
 * weft__pages_populate uses the same vectored call to fault in the first
 * page of a batch of stacks at once (MADV_POPULATE_WRITE): a first touch
 * traps into the kernel one page at a time, and a burst of a million new
 * tasks spent a tenth of its time in those traps. A kernel that refuses it
 * costs nothing: the pages then fault in as they are touched. */
#include "internal.h"

#include <errno.h>

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
/* The calling process, for the pidfd calls (6.14+): no descriptor to open,
 * and none that would name the parent after a fork. */
#define GUARD_PIDFD_SELF (-10000)
#define GUARD_IOV_MAX 64

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static atomic_bool batch_refused; /* process_madvise refused guard advice */
static atomic_bool populate_refused;

/* Installs guards one by one from guard i onwards. */
static int install_each(char *base, size_t stride, size_t len, size_t i, size_t n) {
  for (; i < n; i++)
    if (madvise(base + i * stride, len, MADV_GUARD_INSTALL) != 0)
      return -errno;
  return 0;
}

#if defined(SYS_process_madvise)
/* One process_madvise call with advice for the k ranges of len bytes at
 * base, base + stride, ... (k at most GUARD_IOV_MAX): the bytes it advised,
 * or -1 with errno. */
static long advise_ranges(char *base, size_t stride, size_t len, size_t k, int advice) {
  struct iovec iov[GUARD_IOV_MAX];
  for (size_t j = 0; j < k; j++) {
    iov[j].iov_base = base + j * stride;
    iov[j].iov_len = len;
  }
  return syscall(SYS_process_madvise, GUARD_PIDFD_SELF, iov, k, advice, 0u);
}
#endif

int weft__guard_install(void *base, size_t stride, size_t len, size_t n) {
  char *b = base;
  size_t i = 0;
#if defined(SYS_process_madvise)
  while (i < n && !atomic_load_explicit(&batch_refused, memory_order_relaxed)) {
    size_t k = n - i < GUARD_IOV_MAX ? n - i : GUARD_IOV_MAX;
    long done = advise_ranges(b + i * stride, stride, len, k, MADV_GUARD_INSTALL);
    if (done < 0) {
      /* EBADF (no PIDFD_SELF) or EINVAL (no guard advice here): per range
       * from now on. The first madvise tells whether guards exist at all. */
      atomic_store_explicit(&batch_refused, true, memory_order_relaxed);
      break;
    }
    /* A short count: the guards it did install are whole ranges. */
    i += (size_t)done / len;
    if ((size_t)done < k * len)
      break;
  }
#endif
  return install_each(b, stride, len, i, n);
}

void weft__pages_populate(void *base, size_t stride, size_t len, size_t n) {
#if defined(SYS_process_madvise)
  if (n > GUARD_IOV_MAX)
    n = GUARD_IOV_MAX;
  if (atomic_load_explicit(&populate_refused, memory_order_relaxed))
    return;
  if (advise_ranges(base, stride, len, n, MADV_POPULATE_WRITE) < 0 && errno != ENOMEM)
    atomic_store_explicit(&populate_refused, true, memory_order_relaxed);
#else
  (void)base;
  (void)stride;
  (void)len;
  (void)n;
#endif
}

#else

int weft__guard_install(void *base, size_t stride, size_t len, size_t n) {
  (void)base;
  (void)stride;
  (void)len;
  (void)n;
  return -ENOSYS;
}

void weft__pages_populate(void *base, size_t stride, size_t len, size_t n) {
  (void)base;
  (void)stride;
  (void)len;
  (void)n;
}

#endif
