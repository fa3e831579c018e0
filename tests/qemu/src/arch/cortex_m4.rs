//! The Cortex-M4 (QEMU mps2-an386): cortex-m-rt's start-up, semihosting through `bkpt`, SysTick
//! as the timer and the HardFault handler.

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{SCB, SYST};
use cortex_m_rt::{exception, ExceptionFrame};

pub use cortex_m::asm::{delay, wfi};
pub use cortex_m::singleton;
pub use cortex_m_rt::entry;
#[doc(hidden)]
pub use cortex_m_semihosting::hprintln;

/// An address in the mps2-an386's external memory region with no device behind it: reading it
/// is a bus error, which the core turns into a HardFault.
pub const UNMAPPED: usize = 0x6000_0000;

/// Ends the emulation with `success` as the exit status (0 or 1), through semihosting.
pub fn exit(success: bool) -> ! {
    let status =
        if success { cortex_m_semihosting::debug::EXIT_SUCCESS } else { cortex_m_semihosting::debug::EXIT_FAILURE };
    cortex_m_semihosting::debug::exit(status);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// The SysTick timer, which only this module uses.
fn systick() -> SYST {
    // SAFETY: SYST is touched only here, by the main loop with the SysTick interrupt either off
    // or never touching it.
    unsafe { cortex_m::Peripherals::steal() }.SYST
}

/// Starts SysTick from the core clock with an interrupt every `period` cycles.
pub(crate) fn start_timer(period: u32) {
    let mut syst = systick();
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(period);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Stops SysTick. A SysTick that became pending before the counter stopped would still run:
/// it is discarded.
pub(crate) fn stop_timer() {
    let mut syst = systick();
    syst.disable_interrupt();
    syst.disable_counter();
    SCB::clear_pendst();
}

#[exception]
fn SysTick() {
    crate::on_tick();
}

/// Reports a fault with the program counter and link register the core stacked on entry (the
/// faulting instruction and its caller) and the configurable fault status register (which fault
/// it was), then ends the emulation with a failure status.
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    // SAFETY: a read of a status register of the system control block, which is always mapped.
    let cfsr = unsafe { (*SCB::PTR).cfsr.read() };
    crate::log_formatted(format_args!(
        "HardFault: stacked pc {:#010x}, lr {:#010x}, cfsr {:#010x}",
        frame.pc(),
        frame.lr(),
        cfsr
    ));
    exit(false)
}
