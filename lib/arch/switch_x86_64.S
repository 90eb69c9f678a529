/* The x86-64 context switch (System V ABI). Only the callee-saved registers
 * are saved: the caller of weft__ctx_switch has already spilled the rest. The
 * saved registers live on the suspended stack; the context keeps only the
 * stack pointer.
 *
 *   void weft__ctx_switch(weft__ctx_t *from (rdi), weft__ctx_t *to (rsi));
 *   void weft__ctx_make(weft__ctx_t *ctx (rdi), void *lo (rsi), size_t size (rdx),
 *                       void (*entry)(void) (rcx));
 *
 * A fresh context's stack holds six zero registers, then entry as the return
 * address, then a zero fake return address for entry itself, arranged so that
 * entry starts with rsp % 16 == 8, exactly as after a call.
 */
        .text
        .globl  weft__ctx_switch
        .hidden weft__ctx_switch
        .type   weft__ctx_switch, @function
        .p2align 4
weft__ctx_switch:
        .cfi_startproc
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, (%rdi)
        movq    (%rsi), %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
        .cfi_endproc
        .size   weft__ctx_switch, .-weft__ctx_switch

        .globl  weft__ctx_make
        .hidden weft__ctx_make
        .type   weft__ctx_make, @function
        .p2align 4
weft__ctx_make:
        .cfi_startproc
        leaq    (%rsi,%rdx), %rax       /* top of the stack */
        andq    $-16, %rax
        subq    $64, %rax               /* 6 registers + entry + fake return */
        xorl    %edx, %edx
        movq    %rdx, 0(%rax)           /* r15 */
        movq    %rdx, 8(%rax)           /* r14 */
        movq    %rdx, 16(%rax)          /* r13 */
        movq    %rdx, 24(%rax)          /* r12 */
        movq    %rdx, 32(%rax)          /* rbx */
        movq    %rdx, 40(%rax)          /* rbp: ends frame-pointer walks */
        movq    %rcx, 48(%rax)          /* where the first ret goes */
        movq    %rdx, 56(%rax)          /* entry's own return address: none */
        movq    %rax, (%rdi)
        ret
        .cfi_endproc
        .size   weft__ctx_make, .-weft__ctx_make

        .section .note.GNU-stack,"",@progbits
