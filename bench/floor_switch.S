/* The floor for weft's context switch: the least work a stackful switch can
 * do, written here apart from the library so that weft-bench can compare
 * weft's own switch with it.
 *
 *   void bench_floor_switch(void **save_sp, void *to_sp);
 *
 * It pushes the callee-saved registers on the current stack, stores the
 * stack pointer in *save_sp, loads to_sp and pops the registers that the
 * other context pushed there, then returns into that context. Nothing else:
 * no floating-point control words, no sanitizer or debugger hooks. A fresh
 * context is a stack that holds zeroed registers and an entry address where
 * the return address would be (weft-bench.c builds it).
 */

#if defined(__x86_64__)

/* Frame, from the saved stack pointer upwards:
 * r15 r14 r13 r12 rbx rbp, return address. */
	.text
	.p2align 4
	.globl bench_floor_switch
	.type bench_floor_switch, @function
bench_floor_switch:
	pushq %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, (%rdi)
	movq %rsi, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret
	.size bench_floor_switch, .-bench_floor_switch

#elif defined(__aarch64__)

/* Frame of 160 bytes, from the saved stack pointer upwards:
 * x19..x28 (0-79), x29 x30 (80-95), d8..d15 (96-159). x30 holds the return
 * address, so a fresh context puts its entry at offset 88. */
	.text
	.p2align 4
	.globl bench_floor_switch
	.type bench_floor_switch, %function
bench_floor_switch:
	sub sp, sp, #160
	stp x19, x20, [sp, #0]
	stp x21, x22, [sp, #16]
	stp x23, x24, [sp, #32]
	stp x25, x26, [sp, #48]
	stp x27, x28, [sp, #64]
	stp x29, x30, [sp, #80]
	stp d8, d9, [sp, #96]
	stp d10, d11, [sp, #112]
	stp d12, d13, [sp, #128]
	stp d14, d15, [sp, #144]
	mov x9, sp
	str x9, [x0]
	mov sp, x1
	ldp x19, x20, [sp, #0]
	ldp x21, x22, [sp, #16]
	ldp x23, x24, [sp, #32]
	ldp x25, x26, [sp, #48]
	ldp x27, x28, [sp, #64]
	ldp x29, x30, [sp, #80]
	ldp d8, d9, [sp, #96]
	ldp d10, d11, [sp, #112]
	ldp d12, d13, [sp, #128]
	ldp d14, d15, [sp, #144]
	add sp, sp, #160
	ret
	.size bench_floor_switch, .-bench_floor_switch

#endif

#if defined(__linux__) && defined(__ELF__)
/* The stack stays non-executable. */
	.section .note.GNU-stack, "", %progbits
#endif
