/* What the QEMU MPS2 port measures beyond the edgeq_platform.h interface: instructions, under
 * -icount shift=0, and the stack the harness has touched (startup.c paints it at reset). */
#ifndef EDGEQ_QEMU_H_
#define EDGEQ_QEMU_H_

#include <stdint.h>

/* Instructions executed since reset, modulo 2^32, to SysTick's resolution (40 instructions). */
uint32_t edgeq_qemu_instructions(void);

/* Waits for SysTick's next wrap (an instant under -icount sleep=off) and returns the count then:
 * a start at a fixed phase of the 40-instruction ticks, so that counts repeat exactly. */
uint32_t edgeq_qemu_sync(void);

/* Called after each inference: when the stack's high-water mark has grown, writes
 * "edgeq-stack <bytes>\n" to UART1 (QEMU's second -serial), a line the host reads. */
void edgeq_qemu_after_infer(void);

/* Per-op profile (a firmware built with -D'EDGEQ_OP_DONE(i)=edgeq_qemu_op_done(i)'): the harness
 * calls edgeq_qemu_op_start() before the model, the model edgeq_qemu_op_done(op) after each op; the
 * first inference's instructions per op go to UART1 as "edgeq-op <index> <instructions>" lines. */
void edgeq_qemu_op_start(void);
void edgeq_qemu_op_done(int op);

#endif /* EDGEQ_QEMU_H_ */
