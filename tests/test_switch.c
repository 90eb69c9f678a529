/* The bare context switch of lib/arch/, tested on its own: no libuv, no
 * scheduler, only weft__ctx_make and weft__ctx_switch between the main stack
 * and one coroutine. It checks what each assembly file promises: values
 * live in callee-saved registers (integer and floating point) survive a
 * switch on both sides, a fresh context starts with the stack aligned as
 * after a call, and a thousand round trips land where they should. It needs
 * nothing but a C library, so `./run test aarch64` also cross-compiles it
 * with the aarch64 switch and runs it under qemu-user.
 *
 * Exits 0 and prints "1 passed, 0 failed" on success. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The assembly switches keep only the stack pointer in the context. */
typedef struct ctx {
  void *sp;
} ctx_t;

void weft__ctx_make(ctx_t *ctx, void *stack_lo, size_t size, void (*entry)(void));
void weft__ctx_switch(ctx_t *from, ctx_t *to);

static ctx_t main_ctx, co_ctx;
static volatile long rounds;
static volatile int misaligned;
static volatile int co_corrupt;

/* noinline keeps the compiler from folding the values into constants
 * around the switch: they must stay live in registers or spills. */
static __attribute__((noinline)) long mix(long x) {
  return x * 2654435761L + 12345;
}

/* Opaque to the optimiser (noipa: GCC would otherwise carry the array's
 * declared alignment into the function), so the check runs for real. */
static __attribute__((noipa)) int is_aligned16(const volatile void *p) {
  return (uintptr_t)p % 16 == 0;
}

/* Switches while known values sit in the callee-saved registers themselves
 * (register variables, pinned by empty asm statements on both sides of the
 * call), and checks they are still there afterwards. */
static __attribute__((noinline)) int switch_keeping_regs(ctx_t *from, ctx_t *to, long seed) {
#if defined(__x86_64__)
  register long r1 __asm__("rbx") = seed + 1;
  register long r2 __asm__("r12") = seed + 2;
  register long r3 __asm__("r13") = seed + 3;
  register long r4 __asm__("r14") = seed + 4;
  register long r5 __asm__("r15") = seed + 5;
  __asm__ volatile("" : "+r"(r1), "+r"(r2), "+r"(r3), "+r"(r4), "+r"(r5));
  weft__ctx_switch(from, to);
  __asm__ volatile("" : "+r"(r1), "+r"(r2), "+r"(r3), "+r"(r4), "+r"(r5));
  return r1 == seed + 1 && r2 == seed + 2 && r3 == seed + 3 && r4 == seed + 4 && r5 == seed + 5;
#elif defined(__aarch64__)
  register long r1 __asm__("x19") = seed + 1;
  register long r2 __asm__("x22") = seed + 2;
  register long r3 __asm__("x25") = seed + 3;
  register long r4 __asm__("x28") = seed + 4;
  register double f1 __asm__("d8") = (double)seed + 0.5;
  register double f2 __asm__("d11") = (double)seed + 1.5;
  register double f3 __asm__("d15") = (double)seed + 2.5;
  __asm__ volatile("" : "+r"(r1), "+r"(r2), "+r"(r3), "+r"(r4), "+w"(f1), "+w"(f2), "+w"(f3));
  weft__ctx_switch(from, to);
  __asm__ volatile("" : "+r"(r1), "+r"(r2), "+r"(r3), "+r"(r4), "+w"(f1), "+w"(f2), "+w"(f3));
  return r1 == seed + 1 && r2 == seed + 2 && r3 == seed + 3 && r4 == seed + 4 &&
         f1 == (double)seed + 0.5 && f2 == (double)seed + 1.5 && f3 == (double)seed + 2.5;
#else
  weft__ctx_switch(from, to);
  return 1;
#endif
}

static void co_entry(void) {
  _Alignas(16) volatile char probe[16] = {0};
  if (!is_aligned16(probe))
    misaligned = 1;
  long a = mix(1), b = mix(2), c = mix(3), d = mix(4), e = mix(5), f = mix(6);
  double x = (double)mix(7), y = (double)mix(8), z = (double)mix(9);
  for (;;) {
    rounds++;
    if (!switch_keeping_regs(&co_ctx, &main_ctx, 1000 + rounds))
      co_corrupt = 1;
    if (a != mix(1) || b != mix(2) || c != mix(3) || d != mix(4) || e != mix(5) ||
        f != mix(6) || x != (double)mix(7) || y != (double)mix(8) || z != (double)mix(9))
      co_corrupt = 1;
  }
}

int main(void) {
  size_t size = 64 * 1024;
  char *stack = malloc(size);
  if (!stack)
    return 1;
  weft__ctx_make(&co_ctx, stack, size, co_entry);
  long a = mix(11), b = mix(12), c = mix(13), d = mix(14), e = mix(15), f = mix(16);
  double x = (double)mix(17), y = (double)mix(18), z = (double)mix(19);
  int corrupt = 0;
  for (int i = 0; i < 1000; i++) {
    if (!switch_keeping_regs(&main_ctx, &co_ctx, 7 * i))
      corrupt = 1;
    if (a != mix(11) || b != mix(12) || c != mix(13) || d != mix(14) || e != mix(15) ||
        f != mix(16) || x != (double)mix(17) || y != (double)mix(18) || z != (double)mix(19))
      corrupt = 1;
  }
  int ok = rounds == 1000 && !misaligned && !corrupt && !co_corrupt;
  if (!ok)
    fprintf(stderr, "switch: rounds=%ld misaligned=%d corrupt=%d co_corrupt=%d\n",
            rounds, misaligned, corrupt, co_corrupt);
  printf("%d passed, %d failed\n", ok, !ok);
  free(stack);
  return ok ? 0 : 1;
}
