/* edgeq device platform hooks: the three functions a port supplies.
 *
 * Everything else (framing, the protocol loop, the TensorFlow Lite Micro glue) is portable. To run
 * the edgeq test harness on a new board, implement these three functions in one C or C++ file
 * (see ports/ for Arduino, Zephyr, bare-metal Cortex-M and POSIX examples), set up the UART and
 * the clock before calling edgeq_harness_setup(), then call edgeq_harness_poll() in a loop.
 *
 * The serial line carries binary frames (docs/protocol.md in the edgeq repository), so:
 *   - no translation of any kind: no CR/LF conversion, no XON/XOFF, 8 data bits, no parity,
 *     1 stop bit. 115200 baud is the usual choice; edgeq device-check takes --baud.
 *   - nothing else may write to this line *while a frame is being sent*. Text printed between
 *     frames (a boot banner, a log line) is skipped by the host, as long as it contains no 0xA5
 *     byte (plain ASCII never does).
 *
 * All three are called from the main loop only (never from an interrupt), one at a time.
 */
#ifndef EDGEQ_PLATFORM_H
#define EDGEQ_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Copy up to `cap` bytes that have already arrived on the serial line into `buf` and return how
 * many were copied; 0 if none are waiting. Must NOT block waiting for data: the device loop calls
 * it continuously and uses the gaps to detect a line that went idle in the middle of a frame
 * (100 ms inter-byte timeout). Returning fewer bytes than are waiting is fine (e.g. one byte per
 * call from a UART data register); the rest are read on the next call.
 *
 * Bytes must not be lost between calls while the device is busy (an inference can take a long
 * time): a UART with only a hardware FIFO needs an interrupt-driven receive ring buffer of at least
 * one frame (EDGEQ_MAX_PAYLOAD + 8 bytes) unless the host waits for each reply before sending
 * again, which edgeq device-check always does. */
size_t edgeq_platform_read(uint8_t *buf, size_t cap);

/* Send all `len` bytes, in order, returning only when every byte has been handed to the line
 * (queued in a driver buffer is fine; dropped is not). Blocking is expected: the device loop writes
 * one whole reply frame per request and does nothing else meanwhile. */
void edgeq_platform_write(const uint8_t *buf, size_t len);

/* A free-running microsecond counter: any starting value, incremented by one per microsecond and
 * wrapping from 0xFFFFFFFF to 0 (every ~71.6 minutes). Callers only ever take differences
 * (now - then, in uint32_t arithmetic), which stay correct across the wrap. Used to time Invoke()
 * (reported to the host as the inference time) and for the 100 ms inter-byte timeout, so its
 * accuracy is the accuracy of the reported latency. A counter derived from a CPU cycle counter
 * must keep counting correctly across the cycle counter's own (shorter) wrap. */
uint32_t edgeq_platform_micros(void);

#ifdef __cplusplus
}
#endif
#endif /* EDGEQ_PLATFORM_H */
