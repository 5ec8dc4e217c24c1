/* edgeq test harness on a bare-metal Cortex-M3/M4/M7/M33 (no RTOS, no CMSIS, no vendor HAL).
 *
 * Time: the DWT cycle counter, reached by its architectural addresses (ARMv7-M/ARMv8-M), converted
 * to microseconds with EDGEQ_CPU_HZ (the core clock in Hz, required: -DEDGEQ_CPU_HZ=64000000).
 * Cortex-M0/M0+ have no cycle counter: replace edgeq_platform_micros() with a timer there.
 *
 * Serial: TODO for your board. Define these three functions in a file of your own (they override
 * the weak do-nothing defaults below, which only let this file compile and link):
 *     void edgeq_board_init(void);        clocks, pins, UART at 115200 8N1
 *     int  edgeq_uart_getc(void);         a received byte (0..255), or -1 at once if none
 *     void edgeq_uart_putc(uint8_t c);    send one byte, waiting while the TX register is full
 * A polled UART without a receive FIFO can drop bytes while an inference runs only if the host
 * sends during it; edgeq device-check never does (one request at a time).
 */
#include <stddef.h>
#include <stdint.h>

#include "edgeq_harness.h"
#include "edgeq_platform.h"

#ifndef EDGEQ_CPU_HZ
#error "define EDGEQ_CPU_HZ, the core clock in Hz (e.g. -DEDGEQ_CPU_HZ=64000000): it converts cycles to microseconds"
#endif

#define EDGEQ_WEAK __attribute__((weak))

void edgeq_board_init(void);
int edgeq_uart_getc(void);
void edgeq_uart_putc(uint8_t c);

/* TODO(port): set up clocks and the UART (115200 baud, 8N1). */
EDGEQ_WEAK void edgeq_board_init(void) {}

/* TODO(port): return the next received byte, or -1 immediately when none is waiting. */
EDGEQ_WEAK int edgeq_uart_getc(void) { return -1; }

/* TODO(port): transmit one byte (wait for the TX data register to be empty first). */
EDGEQ_WEAK void edgeq_uart_putc(uint8_t c) { (void)c; }

/* --- DWT cycle counter (ARMv7-M / ARMv8-M Mainline debug registers) --------------------------- */
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)      /* Debug Exception and Monitor Control */
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CTRL_CYCCNTENA (1u << 0)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)    /* lock access (Cortex-M7), ignored elsewhere */
#define DWT_LAR_KEY 0xC5ACCE55u

static void cycle_counter_start(void) {
    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = DWT_LAR_KEY;
    DWT_CYCCNT = 0;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

/* Microseconds since the counter started, exact for any EDGEQ_CPU_HZ: the wrap-safe cycle delta
 * since the previous call is scaled by 1e6 and divided by the clock, the remainder carried over.
 * The 32-bit cycle counter wraps every 2^32 / EDGEQ_CPU_HZ s (27 s at 160 MHz): the poll loop calls
 * this continuously, so only an inference longer than that would be timed wrong. */
uint32_t edgeq_platform_micros(void) {
    static uint32_t last_cycles, micros;
    static uint64_t scaled_rest; /* cycles x 1e6 not yet turned into whole microseconds */
    uint32_t now = DWT_CYCCNT;
    scaled_rest += (uint64_t)(uint32_t)(now - last_cycles) * 1000000u;
    last_cycles = now;
    micros += (uint32_t)(scaled_rest / (uint64_t)EDGEQ_CPU_HZ);
    scaled_rest %= (uint64_t)EDGEQ_CPU_HZ;
    return micros;
}

size_t edgeq_platform_read(uint8_t *buf, size_t cap) {
    size_t n = 0;
    int c;
    while (n < cap && (c = edgeq_uart_getc()) >= 0) buf[n++] = (uint8_t)c;
    return n;
}

void edgeq_platform_write(const uint8_t *buf, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) edgeq_uart_putc(buf[i]);
}

int main(void) {
    edgeq_board_init();
    cycle_counter_start();
    edgeq_harness_setup();
    for (;;) edgeq_harness_poll();
}
