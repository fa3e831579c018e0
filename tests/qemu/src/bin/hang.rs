//! Firmware that hangs on purpose: it waits for an interrupt that nothing ever raises. The lane
//! runs it to check that its timeout kills a run that never ends and reports it as a failure.

#![no_std]
#![no_main]

use expertslab_qemu::{entry, log, wfi};

#[entry]
fn main() -> ! {
    log!("waiting for an interrupt that never comes");
    loop {
        wfi();
    }
}
