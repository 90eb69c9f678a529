/* The aarch64 context switch (AAPCS64). Saves the callee-saved registers
 * x19-x28, the frame pointer x29, the link register x30 and the low halves
 * d8-d15 of v8-v15 on the suspended stack; the context keeps only sp.
 *
 *   void weft__ctx_switch(weft__ctx_t *from (x0), weft__ctx_t *to (x1));
 *   void weft__ctx_make(weft__ctx_t *ctx (x0), void *lo (x1), size_t size (x2),
 *                       void (*entry)(void) (x3));
 *
 * A fresh context holds a zeroed 160-byte frame whose x30 slot is entry, so
 * the first switch "returns" into entry with sp 16-byte aligned.
 */
        .text
        .globl  weft__ctx_switch
        .hidden weft__ctx_switch
        .type   weft__ctx_switch, %function
        .p2align 4
weft__ctx_switch:
        sub     sp, sp, #160
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        stp     d8,  d9,  [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        mov     x9, sp
        str     x9, [x0]
        ldr     x9, [x1]
        mov     sp, x9
        ldp     x19, x20, [sp, #0]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        ldp     d8,  d9,  [sp, #96]
        ldp     d10, d11, [sp, #112]
        ldp     d12, d13, [sp, #128]
        ldp     d14, d15, [sp, #144]
        add     sp, sp, #160
        ret
        .size   weft__ctx_switch, .-weft__ctx_switch

        .globl  weft__ctx_make
        .hidden weft__ctx_make
        .type   weft__ctx_make, %function
        .p2align 4
weft__ctx_make:
        add     x9, x1, x2              /* top of the stack */
        and     x9, x9, #~15
        sub     x9, x9, #160
        mov     x10, #0
        mov     x11, #0
1:      str     x10, [x9, x11]          /* zero the whole frame */
        add     x11, x11, #8
        cmp     x11, #160
        b.lo    1b
        str     x3, [x9, #88]           /* x30: where the first ret goes */
        str     x9, [x0]
        ret
        .size   weft__ctx_make, .-weft__ctx_make

        .section .note.GNU-stack,"",%progbits
