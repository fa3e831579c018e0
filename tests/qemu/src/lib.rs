//! Runtime pieces shared by the firmware binaries: a heap that records its high-water mark, the
//! panic and HardFault handlers, logging (semihosting text, or defmt with the `defmt` feature) and
//! the exit through semihosting. A panic or a fault prints one line and ends the emulation with a
//! failure status, so a broken firmware never passes for a working one nor hangs the lane.

#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use cortex_m_rt::{exception, ExceptionFrame};
use embedded_alloc::LlffHeap;

#[cfg(feature = "defmt")]
use defmt_semihosting as _;

/// Prints a line: semihosting text by default, a defmt frame with the `defmt` feature. Arguments
/// are limited to what both accept: `&str` and integers.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::println!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        cortex_m_semihosting::hprintln!($($arg)*);
    }};
}

/// Size of the firmware heap in bytes.
pub const HEAP_BYTES: usize = 256 * 1024;

/// A heap that counts the bytes in use and remembers the most ever in use since the last reset.
pub struct PeakHeap {
    heap: LlffHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl PeakHeap {
    const fn new() -> Self {
        Self { heap: LlffHeap::empty(), used: AtomicUsize::new(0), peak: AtomicUsize::new(0) }
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes in use since the last [`PeakHeap::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new high-water measurement from the bytes in use now.
    pub fn reset_peak(&self) {
        self.peak.store(self.used(), Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the linked-list heap unchanged; only adds bookkeeping.
unsafe impl GlobalAlloc for PeakHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let ptr = unsafe { self.heap.alloc(layout) };
        if !ptr.is_null() {
            let used = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(used, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}

/// The firmware's heap.
#[global_allocator]
pub static HEAP: PeakHeap = PeakHeap::new();

/// Gives the heap its memory. Call once, first thing in `main`.
pub fn init_heap() {
    static mut MEMORY: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
    // SAFETY: called once before any allocation; MEMORY is used by nothing else.
    unsafe { HEAP.heap.init(core::ptr::addr_of_mut!(MEMORY) as usize, HEAP_BYTES) }
}

/// Ends the emulation with `success` as the exit status (0 or 1), through semihosting.
pub fn exit(success: bool) -> ! {
    let status =
        if success { cortex_m_semihosting::debug::EXIT_SUCCESS } else { cortex_m_semihosting::debug::EXIT_FAILURE };
    cortex_m_semihosting::debug::exit(status);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Prints `args` as one line through [`log!`], cut short at 160 bytes.
fn log_formatted(args: core::fmt::Arguments<'_>) {
    let mut line: heapless::String<160> = heapless::String::new();
    let _ = core::fmt::write(&mut line, args);
    log!("{}", line.as_str());
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    log_formatted(format_args!("firmware panicked: {info}"));
    exit(false)
}

/// Reports a fault with the program counter and link register the core stacked on entry (the
/// faulting instruction and its caller) and the configurable fault status register (which fault
/// it was), then ends the emulation with a failure status.
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    // SAFETY: a read of a status register of the system control block, which is always mapped.
    let cfsr = unsafe { (*cortex_m::peripheral::SCB::PTR).cfsr.read() };
    log_formatted(format_args!(
        "HardFault: stacked pc {:#010x}, lr {:#010x}, cfsr {:#010x}",
        frame.pc(),
        frame.lr(),
        cfsr
    ));
    exit(false)
}
