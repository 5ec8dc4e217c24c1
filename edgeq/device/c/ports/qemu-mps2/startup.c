/* edgeq harness port for QEMU's Arm MPS2 boards (mps2-an386: Cortex-M4, mps2-an500: Cortex-M7):
 * its own vector table and reset code, the CMSDK UART0 for the serial line, SysTick for time.
 *
 * Boot it with `edgeq device-sim --board mps2-an386 MODEL.tflite`, or by hand:
 *   qemu-system-arm -M mps2-an386 -display none -monitor none -icount shift=0 \
 *     -serial tcp:127.0.0.1:5555,server=on,wait=off -kernel edgeq_firmware.elf
 * With -icount shift=0 QEMU runs one instruction per virtual nanosecond, so the microseconds this
 * port reports are instructions / 1000, the same on every host. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "edgeq_harness.h"
#include "edgeq_platform.h"

#define UART_DATA (*(volatile uint32_t *)0x40004000u)
#define UART_STATE (*(volatile uint32_t *)0x40004004u) /* bit 0: TX full, bit 1: RX full */
#define UART_CTRL (*(volatile uint32_t *)0x40004008u)  /* bit 0: TX enable, bit 1: RX enable */
#define UART_BAUDDIV (*(volatile uint32_t *)0x40004010u)
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

void Reset_Handler(void) {
    const uintptr_t paint_top = (uintptr_t)_estack - 256u; /* below the frames in use now */
    uint32_t *src = _sidata, *dst = _sdata, *p;
    while ((uintptr_t)dst < (uintptr_t)_edata) *dst++ = *src++;
    for (dst = _sbss; (uintptr_t)dst < (uintptr_t)_ebss; dst++) *dst = 0;
    for (p = _stack_bottom; (uintptr_t)p < paint_top; p++) *p = 0xA5A5A5A5u;
#if defined(__ARM_FP)
    CPACR |= 0xFu << 20; /* CP10 and CP11: the FPU, for code built with -mfloat-abi=hard */
#endif
    UART_BAUDDIV = 16u;
    UART_CTRL = 3u;
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0u;
    SYST_CSR = 7u; /* processor clock, interrupt, enabled */
    edgeq_harness_setup();
    for (;;) edgeq_harness_poll();
}
