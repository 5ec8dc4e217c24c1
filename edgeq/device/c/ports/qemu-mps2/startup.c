/* edgeq harness port for QEMU's Arm MPS2 boards (mps2-an386: Cortex-M4, mps2-an500: Cortex-M7):
 * its own vector table and reset code, the CMSDK UART0 for the serial line, SysTick for time.
 *
 * Boot it with `edgeq device-sim --board mps2-an386 MODEL.tflite`, or by hand:
 *   qemu-system-arm -M mps2-an386 -display none -monitor none -icount shift=0,sleep=off \
 *     -serial tcp:127.0.0.1:5555,server=on,wait=off -serial file:uart1.log -kernel edgeq_firmware.elf
 * With -icount shift=0 QEMU runs one instruction per virtual nanosecond. The harness reports each
 * inference in instructions (edgeq_qemu_instructions), counted from a SysTick wrap so that every
 * run counts the same (edgeq device-sim adds sleep=off, which makes the wait for the wrap free). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "edgeq_harness.h"
#include "edgeq_platform.h"
#include "edgeq_qemu.h"

#define UART_DATA (*(volatile uint32_t *)0x40004000u)
#define UART_STATE (*(volatile uint32_t *)0x40004004u) /* bit 0: TX full, bit 1: RX full */
#define UART_CTRL (*(volatile uint32_t *)0x40004008u)  /* bit 0: TX enable, bit 1: RX enable */
#define UART_BAUDDIV (*(volatile uint32_t *)0x40004010u)
#define UART1_DATA (*(volatile uint32_t *)0x40005000u) /* diagnostics: QEMU's second -serial */
#define UART1_STATE (*(volatile uint32_t *)0x40005004u)
#define UART1_CTRL (*(volatile uint32_t *)0x40005008u)
#define UART1_BAUDDIV (*(volatile uint32_t *)0x40005010u)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

#define SYSTICK_HZ 25000000u  /* the MPS2 boards' 25 MHz system clock */
#define SYSTICK_RELOAD 0x00FFFFFFu

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[], _stack_bottom[];

static volatile uint32_t systick_wraps;

void Reset_Handler(void);
void SysTick_Handler(void);
void Fault_Handler(void);

__attribute__((section(".isr_vector"), used)) const uintptr_t edgeq_vectors[16] = {
    (uintptr_t)_estack, (uintptr_t)Reset_Handler, (uintptr_t)Fault_Handler, (uintptr_t)Fault_Handler,
    (uintptr_t)Fault_Handler, (uintptr_t)Fault_Handler, (uintptr_t)Fault_Handler, 0, 0, 0, 0,
    (uintptr_t)Fault_Handler, (uintptr_t)Fault_Handler, 0, (uintptr_t)Fault_Handler, (uintptr_t)SysTick_Handler};

void Fault_Handler(void) {
    for (;;) {
    }
}

void SysTick_Handler(void) { systick_wraps++; }

size_t edgeq_platform_read(uint8_t *buf, size_t cap) {
    size_t n = 0;
    while (n < cap && (UART_STATE & 2u)) buf[n++] = (uint8_t)UART_DATA;
    return n;
}

void edgeq_platform_write(const uint8_t *buf, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) {
        while (UART_STATE & 1u) {
        }
        UART_DATA = buf[i];
    }
}

uint32_t edgeq_platform_micros(void) {
    uint32_t wraps, current;
    do { /* a wrap between the two reads would pair the new count with the old wraps */
        wraps = systick_wraps;
        current = SYST_CVR;
    } while (wraps != systick_wraps);
    return (uint32_t)((((uint64_t)wraps << 24) + (SYSTICK_RELOAD - current)) / (SYSTICK_HZ / 1000000u));
}

/* Bytes of stack the harness has never touched, from the paint Reset_Handler laid down. */
uint32_t edgeq_stack_untouched(void) {
    const uint32_t *p = _stack_bottom;
    while ((uintptr_t)p < (uintptr_t)_estack && *p == 0xA5A5A5A5u) p++;
    return (uint32_t)((uintptr_t)p - (uintptr_t)_stack_bottom);
}

uint32_t edgeq_qemu_instructions(void) {
    uint32_t wraps, current;
    do {
        wraps = systick_wraps;
        current = SYST_CVR;
    } while (wraps != systick_wraps);
    /* one instruction per virtual nanosecond, one tick per 40 ns at 25 MHz; unsigned, so wraps cancel */
    return ((wraps << 24) + (SYSTICK_RELOAD - current)) * (1000000000u / SYSTICK_HZ);
}

static void diag_write(const char *text) {
    for (; *text; ++text) {
        while (UART1_STATE & 1u) {
        }
        UART1_DATA = (uint32_t)(uint8_t)*text;
    }
}

static uint32_t op_mark;
static int ops_reported;

static void diag_number(const char *key, uint32_t a, uint32_t b) {
    char line[48], digits[12];
    int at = 0, n;
    uint32_t values[2], k;
    values[0] = a;
    values[1] = b;
    while (*key) line[at++] = *key++;
    for (k = 0; k < 2; ++k) {
        uint32_t v = values[k];
        n = 0;
        line[at++] = ' ';
        do { digits[n++] = (char)('0' + v % 10u); v /= 10u; } while (v);
        while (n) line[at++] = digits[--n];
    }
    line[at++] = '\n';
    line[at] = '\0';
    diag_write(line);
}

void edgeq_qemu_op_start(void) { op_mark = edgeq_qemu_instructions(); }

uint32_t edgeq_qemu_sync(void) {
    /* Sleep until SysTick's next wrap. QEMU runs with -icount shift=0,sleep=off, so the idle time is
     * a jump of the virtual clock to that wrap: whatever the host did before (the UART polling loop
     * runs as long as the host takes to send a frame), the count then starts at the same phase of
     * SysTick's 40-instruction ticks, and every run of a sample counts the same instructions. */
    const uint32_t wraps = systick_wraps;
    while (systick_wraps == wraps) __asm__ volatile("wfi");
    while (SYST_CVR == 0u) { /* the wrap is counted at 0, the reload comes a tick later */
    }
    return edgeq_qemu_instructions();
}

void edgeq_qemu_op_done(int op) {
    const uint32_t now = edgeq_qemu_instructions();
    if (!ops_reported) diag_number("edgeq-op", (uint32_t)op, now - op_mark);
    op_mark = edgeq_qemu_instructions(); /* the reporting itself is not the next op's */
}

void edgeq_qemu_after_infer(void) {
    static uint32_t reported;
    ops_reported = 1;
    const uint32_t used = (uint32_t)((uintptr_t)_estack - (uintptr_t)_stack_bottom) - edgeq_stack_untouched();
    char line[32] = "edgeq-stack ", digits[12];
    int n = 0, at = 12;
    uint32_t v = used;
    if (used <= reported) return;
    reported = used;
    do { digits[n++] = (char)('0' + v % 10u); v /= 10u; } while (v);
    while (n) line[at++] = digits[--n];
    line[at++] = '\n';
    line[at] = '\0';
    diag_write(line);
}

void Reset_Handler(void) {
    uintptr_t paint_top;
    __asm__ volatile("mov %0, sp" : "=r"(paint_top));
    paint_top -= 16u; /* up to just below this function's own frame */
    uint32_t *src = _sidata, *dst = _sdata, *p;
    while ((uintptr_t)dst < (uintptr_t)_edata) *dst++ = *src++;
    for (dst = _sbss; (uintptr_t)dst < (uintptr_t)_ebss; dst++) *dst = 0;
    for (p = _stack_bottom; (uintptr_t)p < paint_top; p++) *p = 0xA5A5A5A5u;
#if defined(__ARM_FP)
    CPACR |= 0xFu << 20; /* CP10 and CP11: the FPU, for code built with -mfloat-abi=hard */
#endif
    UART_BAUDDIV = 16u;
    UART_CTRL = 3u;
    UART1_BAUDDIV = 16u;
    UART1_CTRL = 1u;
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0u;
    SYST_CSR = 7u; /* processor clock, interrupt, enabled */
    edgeq_harness_setup();
    for (;;) edgeq_harness_poll();
}
