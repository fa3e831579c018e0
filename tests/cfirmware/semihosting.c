/* Semihosting calls: the operation in r0, its argument in r1, then `bkpt 0xab`.
 *
 * Text goes to the console file `:tt` opened for writing (SYS_OPEN, then SYS_WRITE), which QEMU
 * maps to its standard output; SYS_WRITE0 would be shorter, but QEMU writes its text to standard
 * error, where the test lane does not look for the summary line. */
#include "semihosting.h"

#include <stddef.h>

#define SYS_OPEN 0x01u
#define SYS_WRITE 0x05u
#define SYS_EXIT 0x18u
/* SYS_EXIT's reasons: the program ended normally, or with a run-time error. */
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define ADP_STOPPED_RUN_TIME_ERROR 0x20023u

static uint32_t semihost(uint32_t operation, const void *argument) {
  register uint32_t r0 __asm__("r0") = operation;
  register const void *r1 __asm__("r1") = argument;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

/* SYS_OPEN's mode for writing ("w"): `:tt` opened so is standard output. */
#define OPEN_MODE_W 4u

/* The console's handle once opened; 0 before (SYS_OPEN gives -1 on failure). */
static uint32_t console;

void sh_puts(const char *text) {
  static const char name[] = ":tt";
  if (console == 0u) {
    const uint32_t open[3] = {(uint32_t)name, OPEN_MODE_W, sizeof name - 1u};
    console = semihost(SYS_OPEN, open);
  }
  size_t length = 0;
  while (text[length] != '\0') {
    length++;
  }
  const uint32_t write[3] = {console, (uint32_t)text, (uint32_t)length};
  (void)semihost(SYS_WRITE, write);
}

void sh_putu(uint32_t value) {
  char digits[11];
  unsigned at = sizeof digits - 1;
  digits[at] = '\0';
  do {
    digits[--at] = (char)('0' + value % 10u);
    value /= 10u;
  } while (value != 0u);
  sh_puts(&digits[at]);
}

void sh_puthex(uint64_t value, unsigned digits) {
  char text[17];
  if (digits > 16u) {
    digits = 16u;
  }
  for (unsigned i = 0; i < digits; i++) {
    text[digits - 1u - i] = "0123456789abcdef"[(value >> (4u * i)) & 0xfu];
  }
  text[digits] = '\0';
  sh_puts(text);
}

_Noreturn void sh_exit(bool success) {
  /* On 32-bit Arm, SYS_EXIT takes the reason itself in r1, not a pointer to a block. */
  (void)semihost(SYS_EXIT, (const void *)(success ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUN_TIME_ERROR));
  for (;;) {
  }
}
