/* The call stack of a parked task, for weft_dump: a walk of the
 * frame-pointer chain from the task's saved context, then a symbol per
 * frame through dladdr.
 *
 * The walk starts from what the context switch saved (lib/arch/frames.c:
 * the resume pc and frame pointer) and follows [fp] = the caller's fp,
 * [fp + 8] = the return address, on x86-64 and aarch64 alike. It trusts
 * nothing it reads: every fp must be 16-byte aligned (both ABIs keep frame
 * pointers so), strictly above the one before, and inside the task's own
 * stack, else the walk stops. So a frame without a frame pointer (code
 * built with -fomit-frame-pointer, the default at -O2 on x86-64) ends it
 * early or, at worst, adds a bogus frame; it never reads outside the stack.
 * Under ASan a frame's locals may live on a fake stack, but its frame
 * pointer does not; should one point elsewhere, the bounds check stops the
 * walk there. weft itself is built with -fno-omit-frame-pointer, so its own
 * frames always chain; the caller of an await point is always found, as it
 * is the return address in the await function's frame.
 *
 * Names come from dladdr, which sees only the dynamic symbol table: the
 * exported functions of shared objects, and those of the executable only if
 * it was linked with -rdynamic (CMake: ENABLE_EXPORTS). Static functions and
 * weft's own hidden ones are never named: dladdr gives a name only for an
 * address inside an exported symbol's extent, so such a frame prints as its
 * address and its object, with the address addr2line wants for that
 * object (less its load bias). */
#include "internal.h"

#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

#define BT_MAX_FRAMES 32

/* The words read lie on another coroutine's suspended stack: saved frame
 * pointers and return addresses, never a variable, though stale redzones
 * of frames that never returned may cover them in ASan's shadow. */
#if defined(__clang__) || defined(__GNUC__)
#define BT_NO_SANITIZE __attribute__((no_sanitize_address, no_sanitize_thread))
#else
#define BT_NO_SANITIZE
#endif

BT_NO_SANITIZE size_t weft__frames_walk(uintptr_t pc, uintptr_t fp, uintptr_t lo, uintptr_t hi,
                                        void **pcs, size_t max) {
  if (!pc || max == 0)
    return 0;
  size_t n = 0;
  pcs[n++] = (void *)pc;
  while (n < max) {
    /* Room for the two words [fp] and [fp + 8] below hi. */
    if ((fp & 15) || fp < lo || hi - lo < 16 || fp > hi - 16)
      break;
    const uintptr_t *frame = (const uintptr_t *)fp;
    uintptr_t next = frame[0];
    uintptr_t ret = frame[1];
    if (!ret)
      break;
    pcs[n++] = (void *)ret;
    if (next <= fp)
      break;
    fp = next;
  }
  return n;
}

size_t weft__task_frames(const weft_task_t *t, void **pcs, size_t max) {
  if (!t || !t->stack || !pcs || max == 0)
    return 0;
  uintptr_t lo = (uintptr_t)t->stack->lo;
  uintptr_t pc = 0, fp = 0;
  if (!weft__ctx_frame(&t->coro.ctx, &pc, &fp))
    return 0;
  return weft__frames_walk(pc, fp, lo, lo + t->stack->size, pcs, max);
}

static const char *base_name(const char *path) {
  if (!path || !*path)
    return "?";
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* What to subtract from an address for the one addr2line wants: the
 * object's load bias (0 for an executable that is not position
 * independent, its load address otherwise). */
static uintptr_t load_bias(uintptr_t addr, const Dl_info *info) {
  Dl_info again;
  struct link_map *map = NULL;
  if (dladdr1((void *)addr, &again, (void **)&map, RTLD_DL_LINKMAP) != 0 && map)
    return (uintptr_t)map->l_addr;
  return (uintptr_t)info->dli_fbase;
}

/* Whether a frame is weft's own plumbing under an await point: a weft__
 * name, or no name at all in the object that holds weft. */
static bool internal_frame(const Dl_info *info, bool found, const void *weft_base) {
  if (!found)
    return false;
  if (info->dli_sname)
    return strncmp(info->dli_sname, "weft__", 6) == 0;
  return weft_base && info->dli_fbase == weft_base;
}

void weft__frames_print(FILE *f, void *const *pcs, size_t n, const char *indent) {
  if (!f || !pcs || n == 0)
    return;
  if (!indent)
    indent = "";
  /* The object weft itself is in: the executable when linked statically,
   * libweft.so otherwise. */
  Dl_info self;
  const void *weft_base = NULL;
  if (dladdr((void *)(uintptr_t)weft_dump, &self) != 0)
    weft_base = self.dli_fbase;

  /* Skip the frames above the await function (weft__coro_switch,
   * weft__park, the waits' own helpers): up to the first frame that is
   * not weft's plumbing, normally the public await function (weft_sleep,
   * weft_chan_recv). If every frame looks like plumbing (an executable
   * without -rdynamic names nothing), keep them all. */
  size_t skip = 0;
  while (skip < n) {
    Dl_info info;
    /* pcs are return addresses: pc - 1 is inside the call, so in the
     * calling function even when the call is its last instruction. */
    bool found = dladdr((char *)pcs[skip] - 1, &info) != 0;
    if (!internal_frame(&info, found, weft_base))
      break;
    skip++;
  }
  if (skip == n)
    skip = 0;

  for (size_t i = skip; i < n; i++) {
    uintptr_t pc = (uintptr_t)pcs[i];
    Dl_info info;
    memset(&info, 0, sizeof info);
    int found = dladdr((void *)(pc - 1), &info);
    fprintf(f, "%s#%zu ", indent, i - skip);
    if (found && info.dli_sname && info.dli_saddr)
      fprintf(f, "%s+0x%zx (%s)\n", info.dli_sname, (size_t)(pc - (uintptr_t)info.dli_saddr),
              base_name(info.dli_fname));
    else if (found)
      fprintf(f, "0x%zx (%s+0x%zx)\n", (size_t)pc, base_name(info.dli_fname),
              (size_t)(pc - load_bias(pc - 1, &info)));
    else
      fprintf(f, "0x%zx (?)\n", (size_t)pc);
  }
}

void weft__task_backtrace_print(FILE *f, const weft_task_t *t, const char *indent) {
  /* Only a task that is parked has a saved context: it has run (it holds a
   * stack) and is not running now. A task that runs is the caller itself
   * (weft_dump from inside a task describes its own loop on the spot). */
  if (!f || !t || !t->stack)
    return;
  if (t->state != WEFT__WAITING && t->state != WEFT__READY)
    return;
  void *pcs[BT_MAX_FRAMES];
  size_t n = weft__task_frames(t, pcs, BT_MAX_FRAMES);
  weft__frames_print(f, pcs, n, indent);
}
