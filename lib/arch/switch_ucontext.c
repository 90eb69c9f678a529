/* The portable context switch, for processors without an assembly switch or
 * when configured with -DWEFT_UCONTEXT=ON. swapcontext also saves the signal
 * mask (a system call per switch), so it is several times slower than the
 * assembly; it exists so weft works everywhere and so the test suite can
 * check that nothing depends on one switch's details. */
#include "internal.h"

#include <stdlib.h>

const char weft__switch_name[] = "ucontext";

void weft__ctx_make(weft__ctx_t *ctx, void *stack_lo, size_t size, void (*entry)(void)) {
  if (getcontext(&ctx->uc) != 0)
    weft__fatal("getcontext failed");
  ctx->uc.uc_stack.ss_sp = stack_lo;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = NULL;
  makecontext(&ctx->uc, entry, 0);
}

void weft__ctx_switch(weft__ctx_t *from, weft__ctx_t *to) {
  if (swapcontext(&from->uc, &to->uc) != 0)
    weft__fatal("swapcontext failed");
}
