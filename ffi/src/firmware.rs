//! Bare-metal builds (`target_os = "none"`): the library owns the global allocator, an
//! embedded-alloc heap over a memory region the firmware hands over once with
//! [`es_firmware_init`], and the panic handler, which reports the panic through the firmware's
//! callback and stops. Handles are allocated from that heap at setup; stepping, migrating and
//! serving allocate nothing.

use core::cell::Cell;
use core::ffi::c_char;

use critical_section::Mutex;
// Links cortex-m's single-core critical section (its `critical-section-single-core` feature),
// which the heap and the panic state lock through; nothing else here names the crate.
#[cfg(target_arch = "arm")]
use cortex_m as _;
use embedded_alloc::LlffHeap;

use crate::status::EsStatus;
use crate::text::Text;
use crate::text::ES_ERROR_CAPACITY;

/// Called once when the library panics (a bug), with the panic's text (`length` bytes, UTF-8,
/// not NUL-terminated): where in the library's source it happened, then its message when that
/// is a fixed text (a message with values is left out: firmware builds link no text
/// formatting). The library stops after it returns; the callback may instead reset the device
/// or end the program.
pub type EsPanicFn = Option<unsafe extern "C" fn(message: *const c_char, length: usize)>;

#[global_allocator]
static HEAP: LlffHeap = LlffHeap::empty();

/// The firmware's panic callback, and whether the heap was handed over.
static STATE: Mutex<Cell<(EsPanicFn, bool)>> = Mutex::new(Cell::new((None, false)));

/// Hands the library its heap: `size` bytes at `heap`, which the library owns from now on, and
/// the callback a panic reports through (null: none). Call it once, before any other function.
/// A second call is `ES_STATUS_INVALID_ARGUMENT`; a null heap `ES_STATUS_NULL_POINTER`; an empty
/// one `ES_STATUS_BUFFER_TOO_SMALL`. Takes no handle, so its failures keep no text.
///
/// # Safety
/// `heap` must be valid for reads and writes of `size` bytes for the program's life and used by
/// nothing else.
#[no_mangle]
pub unsafe extern "C" fn es_firmware_init(heap: *mut u8, size: usize, on_panic: EsPanicFn) -> EsStatus {
    if heap.is_null() {
        return EsStatus::NullPointer;
    }
    if size == 0 {
        return EsStatus::BufferTooSmall;
    }
    let first = critical_section::with(|cs| {
        let state = STATE.borrow(cs);
        let (_, initialised) = state.get();
        state.set((on_panic, true));
        !initialised
    });
    if !first {
        return EsStatus::InvalidArgument;
    }
    // SAFETY: called once (checked above), with memory the caller gives over for the program's
    // life; `size` is not zero (checked).
    unsafe { HEAP.init(heap as usize, size) };
    EsStatus::Ok
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut bytes = [0u8; ES_ERROR_CAPACITY];
    let mut text = Text::new(&mut bytes);
    text.put("panicked");
    if let Some(at) = info.location() {
        text.put(" at ").put(at.file()).put(":").num(at.line() as usize);
    }
    text.put(": ").put(info.message().as_str().unwrap_or("(a message with values, not formatted on firmware)"));
    let len = text.len();
    let callback = critical_section::with(|cs| STATE.borrow(cs).get().0);
    if let Some(report) = callback {
        // SAFETY: a C function the firmware registered for this, given a readable buffer of
        // `len` bytes that lives until it returns.
        unsafe { report(bytes.as_ptr().cast::<c_char>(), len) };
    }
    loop {
        core::hint::spin_loop();
    }
}
