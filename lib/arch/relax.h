/* The processor's spin-wait hint, for a loop that polls its inbox before it
 * parks (loop.c, spin_us): it tells the core that this is a busy-wait, so a
 * hyperthread sibling gets the pipeline meanwhile and leaving the loop does
 * not pay a memory-order mis-speculation. One function, chosen here by
 * processor, as the switch is chosen in CMake; where no hint is known it is
 * a compiler barrier only, and the spin still works. */
#ifndef WEFT_ARCH_RELAX_H
#define WEFT_ARCH_RELAX_H

static inline void weft__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  __asm__ __volatile__("" ::: "memory");
#endif
}

#endif
