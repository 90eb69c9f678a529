/* Where a suspended context will resume: its return address and frame
 * pointer, read from what the context switch saved. The one piece of the
 * call-stack walk (lib/backtrace.c) that depends on the switch and the
 * processor; everything above it walks the frame-pointer chain, which has
 * the same shape on x86-64 and aarch64 ([fp] = the caller's fp,
 * [fp + 8] = the return address).
 *
 * The pc is a return address into the function that called the switch
 * (weft__coro_switch, or weft__ctx_switch itself under ucontext) and fp is
 * that function's frame pointer, from which the walk goes on. */
#include "../internal.h"

/* The saved registers lie on the suspended stack, which sanitizers may hold
 * poisoned slots of (stale redzones of frames that never returned). The
 * words read here are written by the switch itself, never by a variable. */
#if defined(__clang__) || defined(__GNUC__)
#define FRAMES_NO_SANITIZE __attribute__((no_sanitize_address, no_sanitize_thread))
#else
#define FRAMES_NO_SANITIZE
#endif

FRAMES_NO_SANITIZE bool weft__ctx_frame(const weft__ctx_t *ctx, uintptr_t *pc, uintptr_t *fp) {
#if defined(WEFT_SWITCH_UCONTEXT)
  /* swapcontext stored the registers in the ucontext_t itself. */
#if defined(__x86_64__)
  *pc = (uintptr_t)ctx->uc.uc_mcontext.gregs[REG_RIP];
  *fp = (uintptr_t)ctx->uc.uc_mcontext.gregs[REG_RBP];
  return true;
#elif defined(__aarch64__)
  /* glibc's getcontext puts the link register in pc: where swapcontext
   * returns to. */
  *pc = (uintptr_t)ctx->uc.uc_mcontext.pc;
  *fp = (uintptr_t)ctx->uc.uc_mcontext.regs[29];
  return true;
#else
  (void)ctx;
  *pc = *fp = 0;
  return false;  /* no known register layout: no call stack */
#endif
#elif defined(WEFT_SWITCH_X86_64)
  /* switch_x86_64.S: sp -> r15, r14, r13, r12, rbx, rbp (+40), then the
   * return address into weft__ctx_switch's caller (+48). */
  const uintptr_t *sp = ctx->sp;
  if (!sp || ((uintptr_t)sp & 7))
    return false;
  *fp = sp[5];
  *pc = sp[6];
  return true;
#elif defined(WEFT_SWITCH_AARCH64)
  /* switch_aarch64.S: a 160-byte frame, x29 and x30 at [sp, #80]. */
  const uintptr_t *sp = ctx->sp;
  if (!sp || ((uintptr_t)sp & 15))
    return false;
  *fp = sp[10];
  *pc = sp[11];
  return true;
#else
  (void)ctx;
  *pc = *fp = 0;
  return false;
#endif
}

FRAMES_NO_SANITIZE bool weft__ucontext_frame(const void *ucp, uintptr_t *pc, uintptr_t *fp,
                                             uintptr_t *sp) {
  const ucontext_t *uc = ucp;
#if defined(__x86_64__)
  *pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
  *fp = (uintptr_t)uc->uc_mcontext.gregs[REG_RBP];
  *sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
  return true;
#elif defined(__aarch64__)
  *pc = (uintptr_t)uc->uc_mcontext.pc;
  *fp = (uintptr_t)uc->uc_mcontext.regs[29];
  *sp = (uintptr_t)uc->uc_mcontext.sp;
  return true;
#else
  (void)uc;
  *pc = *fp = *sp = 0;
  return false;
#endif
}
