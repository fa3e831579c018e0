//! Firmware that faults on purpose: it reads an address the mps2-an386 maps to nothing, which
//! the core turns into a HardFault. The lane runs it to check that a fault is reported (the
//! stacked pc) and fails the run, instead of passing or hanging.

#![no_std]
#![no_main]

use cortex_m_rt::entry;
use expertslab_qemu::{exit, log};

/// An address in the mps2-an386's external memory region with no device behind it: reading it
/// is a bus error.
const UNMAPPED: usize = 0x6000_0000;

#[entry]
fn main() -> ! {
    log!("reading an unmapped address, which must raise a HardFault");
    // SAFETY: the address is aligned and the read has no side effects; it is meant to fault, and
    // the HardFault handler ends the emulation instead of returning here.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED as *const u32) };
    // Reached only if the read did not fault: end as a firmware that ran to completion would, so
    // the lane sees a success where it expects a failure and says so.
    log!("the read returned {} instead of faulting", value);
    exit(true)
}
