//! Runtime pieces shared by the firmware binaries: a heap that records its high-water mark, the
//! panic handler, logging (semihosting text, or defmt with the `defmt` feature), a periodic timer
//! interrupt, and what differs by instruction set in [`arch`]: start-up, the exit through
//! semihosting and the fault handler. A panic or a fault prints one line and ends the emulation
//! with a failure status, so a broken firmware never passes for a working one nor hangs the lane.

#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use critical_section::Mutex;
use embedded_alloc::LlffHeap;

#[cfg(all(feature = "defmt", not(target_arch = "arm")))]
compile_error!("the `defmt` feature is for the Cortex-M4 only");
#[cfg(all(feature = "defmt", target_arch = "arm"))]
use defmt_semihosting as _;

#[cfg_attr(target_arch = "arm", path = "arch/cortex_m4.rs")]
#[cfg_attr(target_arch = "riscv32", path = "arch/riscv32.rs")]
pub mod arch;

#[doc(hidden)]
pub use arch::hprintln;
pub use arch::{delay, entry, exit, singleton, wfi, UNMAPPED};

/// Prints a line: semihosting text by default, a defmt frame with the `defmt` feature. Arguments
/// are limited to what both accept: `&str` and integers.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::println!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        $crate::hprintln!($($arg)*);
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

/// A function the timer interrupt calls.
type Tick = Option<fn()>;

/// The function the timer interrupt calls, set by [`start_ticks`].
static TICK: Mutex<Cell<Tick>> = Mutex::new(Cell::new(None));

/// Called by the target's timer interrupt handler: runs the function given to [`start_ticks`].
fn on_tick() {
    if let Some(tick) = critical_section::with(|cs| TICK.borrow(cs).get()) {
        tick();
    }
}

/// Calls `tick` from the timer interrupt about every `period` cycles of the target's timer
/// clock (the core clock on the Cortex-M4, the 10 MHz machine timer on RISC-V) until
/// [`stop_ticks`].
pub fn start_ticks(period: u32, tick: fn()) {
    critical_section::with(|cs| TICK.borrow(cs).set(Some(tick)));
    arch::start_timer(period);
}

/// Stops the timer interrupt and discards one that is pending, so that `tick` is not called
/// again.
pub fn stop_ticks() {
    arch::stop_timer();
    critical_section::with(|cs| TICK.borrow(cs).set(None));
}

/// Runs `f` with interrupts off.
pub fn interrupt_free<R>(f: impl FnOnce() -> R) -> R {
    critical_section::with(|_| f())
}
