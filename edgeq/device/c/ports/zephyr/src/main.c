/* edgeq test harness on Zephyr: the protocol on the UART chosen as zephyr,console (polled), the
 * clock from the kernel cycle counter. prj.conf turns the console off so only frames go out. The
 * baud rate is the devicetree's (current-speed, usually 115200). */
#include <zephyr/device.h>
#include <zephyr/drivers/uart.h>
#include <zephyr/kernel.h>

#include "edgeq_harness.h"
#include "edgeq_platform.h"

static const struct device *const uart = DEVICE_DT_GET(DT_CHOSEN(zephyr_console));

size_t edgeq_platform_read(uint8_t *buf, size_t cap) {
    size_t n = 0;
    unsigned char c;
    while (n < cap && uart_poll_in(uart, &c) == 0) buf[n++] = c;
    return n;
}

void edgeq_platform_write(const uint8_t *buf, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) uart_poll_out(uart, buf[i]); /* blocks until the byte is queued */
}

uint32_t edgeq_platform_micros(void) {
#ifdef CONFIG_TIMER_HAS_64BIT_CYCLE_COUNTER
    return (uint32_t)k_cyc_to_us_floor64(k_cycle_get_64());
#else
    /* k_cycle_get_32 wraps long before 2^32 us: accumulate its wrap-safe deltas in 64 bits.
     * Called continuously by the poll loop, so no more than one cycle-counter wrap passes between
     * two calls (an inference longer than one wrap, e.g. 67 s at 64 MHz, would be misreported). */
    static uint32_t last;
    static uint64_t cycles;
    uint32_t now = k_cycle_get_32();
    cycles += (uint32_t)(now - last);
    last = now;
    return (uint32_t)k_cyc_to_us_floor64(cycles);
#endif
}

int main(void) {
    if (!device_is_ready(uart)) return 0; /* nothing to talk on */
    edgeq_harness_setup();
    for (;;) edgeq_harness_poll();
    return 0;
}
