/* edgeq platform hooks for POSIX systems (Linux boards, a PC, the edgeq tests): the protocol runs
 * on standard input and output (fd 0 and 1), e.g. a serial port or a pty attached to them:
 *
 *     ./edgeq_device < /dev/ttyS1 > /dev/ttyS1       (set the line raw first: stty -F ... raw)
 *
 * Build with -DEDGEQ_POSIX_MAIN to get a main() that runs the TFLM harness (edgeq_harness.cc
 * and TensorFlow Lite Micro compiled for the host):
 *
 *     cc -std=c99 -O2 -DEDGEQ_POSIX_MAIN -c ports/posix/edgeq_platform_posix.c -I.
 *
 * Without it, this file only supplies the hooks and edgeq_posix_wait_input(); the tests bring
 * their own main(). Nothing may print to stdout: it is the protocol channel.
 */
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "edgeq_platform.h"

#ifdef __cplusplus
extern "C" {
#endif
int edgeq_posix_wait_input(int timeout_ms);
#ifdef __cplusplus
}
#endif

size_t edgeq_platform_read(uint8_t *buf, size_t cap) {
    struct pollfd pfd;
    ssize_t n;
    pfd.fd = 0;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (cap == 0 || poll(&pfd, 1, 0) <= 0) return 0; /* 0 ms: never waits */
    if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) return 0;
    n = read(0, buf, cap);
    if (n > 0) return (size_t)n;
    if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) exit(0); /* EOF: host gone */
    return 0;
}

void edgeq_platform_write(const uint8_t *buf, size_t len) {
    while (len) {
        ssize_t n = write(1, buf, len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            exit(3); /* the channel is gone: nothing left to talk to */
        }
        buf += n;
        len -= (size_t)n;
    }
}

uint32_t edgeq_platform_micros(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* truncating to 32 bits gives exactly the wrap-around counter the hook asks for */
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
}

/* Sleep until input is waiting or timeout_ms passed (the main loop's idle wait, so that it does
 * not spin a CPU core at 100%). Returns nonzero when input is waiting. */
int edgeq_posix_wait_input(int timeout_ms) {
    struct pollfd pfd;
    pfd.fd = 0;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, timeout_ms) > 0;
}

#ifdef EDGEQ_POSIX_MAIN
#include "edgeq_harness.h"

int main(void) {
    edgeq_harness_setup();
    for (;;) {
        edgeq_harness_poll();
        edgeq_posix_wait_input(1); /* wakes at once on input; 1 ms keeps the idle timeout precise */
    }
}
#endif
