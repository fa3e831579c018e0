/* Semihosting (Arm's debug interface, which QEMU implements with -semihosting-config): text to
 * the host's console and the program's exit status. */
#ifndef SEMIHOSTING_H
#define SEMIHOSTING_H

#include <stdbool.h>
#include <stdint.h>

/* Writes a NUL-terminated string. */
void sh_puts(const char *text);
/* Writes `value` in decimal. */
void sh_putu(uint32_t value);
/* Writes `value` as `digits` hex digits (no prefix). */
void sh_puthex(uint64_t value, unsigned digits);
/* Ends the program: QEMU exits with status 0 when `success`, 1 otherwise. */
_Noreturn void sh_exit(bool success);

#endif /* SEMIHOSTING_H */
