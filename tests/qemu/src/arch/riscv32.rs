//! RISC-V rv32imac (QEMU virt, `-bios none`, machine mode): riscv-rt's start-up, semihosting
//! through the `ebreak` sequence, the CLINT's machine timer as the timer and a trap handler for
//! exceptions and unexpected interrupts.

use riscv::interrupt::Interrupt;
use riscv::register::{mcause, mepc, mtval};

pub use riscv::asm::{delay, wfi};
pub use riscv::singleton;
pub use riscv_rt::entry;
#[doc(hidden)]
pub use riscv_semihosting::hprintln;

/// An address QEMU virt maps to nothing: reading it raises a load access fault.
pub const UNMAPPED: usize = 0x0800_0000;

/// Ends the emulation with `success` as the exit status (0 or 1), through semihosting.
pub fn exit(success: bool) -> ! {
    let status = if success { riscv_semihosting::debug::EXIT_SUCCESS } else { riscv_semihosting::debug::EXIT_FAILURE };
    riscv_semihosting::debug::exit(status);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// The CLINT's `mtime` register on QEMU virt: a 64-bit counter at 10 MHz.
const MTIME: usize = 0x0200_BFF8;
/// The CLINT's `mtimecmp` register of hart 0: the machine timer interrupt is pending while
/// `mtime >= mtimecmp`.
const MTIMECMP: usize = 0x0200_4000;

/// The timer period in `mtime` ticks, set by [`start_timer`].
static PERIOD: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn read_mtime() -> u64 {
    loop {
        // SAFETY: aligned reads of the CLINT's always-mapped `mtime` halves, without side effects.
        let (high, low, again) = unsafe {
            (
                core::ptr::read_volatile((MTIME + 4) as *const u32),
                core::ptr::read_volatile(MTIME as *const u32),
                core::ptr::read_volatile((MTIME + 4) as *const u32),
            )
        };
        // The low half wrapped between the reads of the high half: read again.
        if high == again {
            return (u64::from(high) << 32) | u64::from(low);
        }
    }
}

fn write_mtimecmp(value: u64) {
    // SAFETY: aligned writes of the CLINT's always-mapped `mtimecmp` of hart 0. The high half is
    // first set to its maximum so that no intermediate value raises the interrupt early.
    unsafe {
        core::ptr::write_volatile((MTIMECMP + 4) as *mut u32, u32::MAX);
        core::ptr::write_volatile(MTIMECMP as *mut u32, value as u32);
        core::ptr::write_volatile((MTIMECMP + 4) as *mut u32, (value >> 32) as u32);
    }
}

/// Sets the next machine timer interrupt `period` ticks of `mtime` from now.
fn arm(period: u32) {
    write_mtimecmp(read_mtime().wrapping_add(u64::from(period)));
}

/// Starts the machine timer with an interrupt every `period` ticks of `mtime` (10 MHz).
pub(crate) fn start_timer(period: u32) {
    PERIOD.store(period, core::sync::atomic::Ordering::Relaxed);
    arm(period);
    // SAFETY: the timer handler takes only the critical sections of this firmware, which is
    // single-hart; enabling interrupts breaks no critical section of the caller.
    unsafe {
        riscv::interrupt::enable_interrupt(Interrupt::MachineTimer);
        riscv::interrupt::enable();
    }
}

/// Stops the machine timer interrupt. One already pending is discarded: `mtimecmp` at its
/// maximum clears it.
pub(crate) fn stop_timer() {
    riscv::interrupt::disable_interrupt(Interrupt::MachineTimer);
    write_mtimecmp(u64::MAX);
}

#[riscv_rt::core_interrupt(Interrupt::MachineTimer)]
fn machine_timer() {
    arm(PERIOD.load(core::sync::atomic::Ordering::Relaxed));
    crate::on_tick();
}

/// Reports an exception (an access fault, an illegal instruction...) with its cause, the address
/// of the faulting instruction, the trap value (the faulting address for an access fault) and the
/// return address register, then ends the emulation with a failure status.
#[export_name = "ExceptionHandler"]
fn exception_handler(frame: &riscv_rt::TrapFrame) -> ! {
    crate::log_formatted(format_args!(
        "Exception: mcause {:#010x}, mepc {:#010x}, mtval {:#010x}, ra {:#010x}",
        mcause::read().bits(),
        mepc::read(),
        mtval::read(),
        frame.ra
    ));
    exit(false)
}

/// Reports an interrupt that has no handler, then ends the emulation with a failure status.
#[export_name = "DefaultHandler"]
fn default_handler() -> ! {
    crate::log_formatted(format_args!("Unexpected interrupt: mcause {:#010x}", mcause::read().bits()));
    exit(false)
}
