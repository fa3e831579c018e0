/* Start-up for QEMU's mps2-an386 (Cortex-M4F): the vector table, the reset handler (copies .data
 * from flash, zeroes .bss, turns the FPU on, runs main, exits with its result) and the fault
 * handlers, which report the stacked program counter and exit with failure. */
#include <stdint.h>

#include "semihosting.h"

/* From link.ld. */
extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;

int main(void);

_Noreturn void reset_handler(void) {
  const uint32_t *from = &__data_load;
  for (uint32_t *to = &__data_start; to < &__data_end;) {
    *to++ = *from++;
  }
  for (uint32_t *to = &__bss_start; to < &__bss_end;) {
    *to++ = 0u;
  }
  /* CPACR: full access to coprocessors 10 and 11 (the FPU), which hard-float code uses. */
  volatile uint32_t *const cpacr = (volatile uint32_t *)0xE000ED88u;
  *cpacr |= 0xFu << 20;
  __asm__ volatile("dsb\n\tisb" ::: "memory");
  sh_exit(main() == 0);
}

/* Called by fault_handler with the exception frame the fault stacked. */
_Noreturn void fault_report(const uint32_t *frame) {
  uint32_t ipsr;
  __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
  sh_puts(ipsr == 3u ? "HardFault" : "Fault");
  sh_puts(": stacked pc 0x");
  sh_puthex(frame[6], 8);
  sh_puts(", exception ");
  sh_putu(ipsr);
  sh_puts("\n");
  sh_exit(false);
}

/* Picks the stack the fault pushed its frame on (EXC_RETURN bit 2) and hands it to fault_report. */
__attribute__((naked)) void fault_handler(void) {
  __asm__ volatile(
      "tst lr, #4\n\t"
      "ite eq\n\t"
      "mrseq r0, msp\n\t"
      "mrsne r0, psp\n\t"
      "b fault_report\n\t");
}

/* Every other exception: unexpected here, so a failure too. */
_Noreturn void unexpected_handler(void) {
  sh_puts("unexpected exception\n");
  sh_exit(false);
}

typedef void (*vector)(void);

/* Initial stack pointer, reset, then NMI, HardFault, MemManage, BusFault, UsageFault, four
 * reserved, SVCall, DebugMonitor, reserved, PendSV, SysTick. No interrupt is enabled. */
__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)&__stack_top, (vector)reset_handler,      unexpected_handler, fault_handler,
    fault_handler,        fault_handler,              fault_handler,      0,
    0,                    0,                          0,                  unexpected_handler,
    unexpected_handler,   0,                          unexpected_handler, unexpected_handler,
};
