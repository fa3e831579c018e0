//! Firmware that faults on purpose: it reads an address the emulated machine maps to nothing,
//! which the core turns into a fault (a HardFault on the Cortex-M4, a load access fault on
//! RISC-V). The lane runs it to check that a fault is reported (the faulting instruction's
//! address) and fails the run, instead of passing or hanging.

#![no_std]
#![no_main]

use expertslab_qemu::{entry, exit, log, UNMAPPED};

#[entry]
fn main() -> ! {
    log!("reading an unmapped address, which must raise a fault");
    // SAFETY: the address is aligned and the read has no side effects; it is meant to fault, and
    // the fault handler ends the emulation instead of returning here.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED as *const u32) };
    // Reached only if the read did not fault: end as a firmware that ran to completion would, so
    // the lane sees a success where it expects a failure and says so.
    log!("the read returned {} instead of faulting", value);
    exit(true)
}
