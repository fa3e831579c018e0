//! # expertslab-ffi
//!
//! The C interface of [`expertslab`]: the header `include/expertslab.h` (generated from this crate
//! by cbindgen; a test keeps it current) and a static or shared library.
//!
//! | module | what |
//! |---|---|
//! | [`status`] | [`EsStatus`]: what every function returns |
//! | [`handle`] | handles: kind-tagged headers, each keeping its last error text; placing handles in caller memory |
//! | `text` | error texts written from static strings and integers: the core's full texts on hosts, their static summaries on firmware (no `core::fmt`) |
//! | [`types`] | the value structs C fills and reads: stack layouts, policies, pool configurations, steps, statistics |
//! | [`layout`] | [`EsExpertLayout`], [`EsArena`] |
//! | [`pool`] | [`EsPool`], [`EsPlan`], policies by name |
//! | [`transfer`] | [`EsSource`], [`EsSink`] (C callbacks or caller memory), [`es_migrate`], [`es_step`] |
//! | [`trace`] | [`EsTrace`]: parsing and replaying routing traces on the host |
//! | `firmware` | bare-metal builds (`target_os = "none"`) only: the global allocator over a heap the firmware hands over (`es_firmware_init`), and the panic handler, which reports through the firmware's callback and stops |
//!
//! ## Rules
//! - Every function returns an [`EsStatus`]. On a failure the handle the call was made on (its
//!   first handle argument) keeps the reason as text, which [`es_last_error`] copies out; there
//!   is no global or thread-local state. Functions that create a handle from nothing take a
//!   message buffer instead.
//! - Null and misaligned pointers, handles of the wrong kind or already freed (each handle starts
//!   with a magic word and its kind), too-small buffers and out-of-range ids and enum values are
//!   reported as codes. What the library cannot check (a dangling pointer, a buffer shorter than
//!   its stated length) is the caller's contract, stated on each function.
//! - No panic crosses into C: on hosts every entry point runs under `catch_unwind` and returns
//!   `ES_STATUS_PANIC`; bare-metal builds have the library's panic handler, which reports through
//!   a C callback and stops.
//! - Handles are allocated when they are built (setup). Stepping, migrating and serving allocate
//!   nothing. Layouts and arenas can also be placed in caller memory ([`es_handle_footprint`]).
//! - Handles are not thread-safe: use each from one thread at a time.

#![cfg_attr(target_os = "none", no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

extern crate alloc;

#[cfg(target_os = "none")]
pub mod firmware;
pub mod handle;
pub mod layout;
pub mod pool;
pub mod status;
mod text;
pub mod trace;
pub mod transfer;
pub mod types;

use core::ffi::c_char;

pub use handle::EsKind;
pub use layout::*;
pub use pool::*;
pub use status::EsStatus;
pub use text::ES_ERROR_CAPACITY;
pub use trace::*;
pub use transfer::*;
pub use types::*;

/// Copies the last error text kept by `handle` (a handle of any kind) into `buffer` of
/// `capacity` bytes, NUL-terminated, and writes its full length (without the NUL) to `*length`
/// when `length` is not null. A text cut to fit returns `ES_STATUS_BUFFER_TOO_SMALL`. The text
/// stays until the handle's next failure.
///
/// # Safety
/// `handle` a handle from this library or null; `buffer` writable for `capacity` bytes or null;
/// `length` writable or null.
#[no_mangle]
pub unsafe extern "C" fn es_last_error(
    handle: *const core::ffi::c_void,
    buffer: *mut c_char,
    capacity: usize,
    length: *mut usize,
) -> EsStatus {
    handle::guard(|| {
        handle::status((|| {
            // SAFETY: forwarded contract.
            let header = unsafe { handle::header(handle.cast::<()>()) }?;
            // SAFETY: forwarded contract.
            unsafe { handle::copy_text(header.error(), buffer, capacity, length) }
        })())
    })
}

/// Writes the name of `status` as the header spells it (`"ES_STATUS_OK"`, …) to `*name`: a
/// NUL-terminated string of static life. A value that is no status is
/// `ES_STATUS_OUT_OF_RANGE`.
///
/// # Safety
/// `name` writable.
#[no_mangle]
pub unsafe extern "C" fn es_status_name(status: u32, name: *mut *const c_char) -> EsStatus {
    handle::guard(|| {
        handle::status((|| {
            let index = usize::try_from(status).map_err(|_| EsStatus::OutOfRange)?;
            let found = EsStatus::ALL.get(index).ok_or(EsStatus::OutOfRange)?;
            // SAFETY: forwarded contract.
            unsafe { handle::put(name, found.name().as_ptr()) }
        })())
    })
}

/// Writes the size and alignment in bytes of a handle of kind `kind` (an `EsKind` value) to
/// `*size` and `*align`, for placing it in caller memory with [`es_expert_layout_init`] or
/// [`es_arena_init`]; the other kinds are allocated by the library and report
/// `ES_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
/// `size` and `align` writable.
#[no_mangle]
pub unsafe extern "C" fn es_handle_footprint(kind: u32, size: *mut usize, align: *mut usize) -> EsStatus {
    handle::guard(|| {
        handle::status((|| {
            let (bytes, alignment) = match kind {
                k if k == EsKind::ExpertLayout as u32 => handle::footprint::<expertslab::ExpertLayout>(),
                k if k == EsKind::Arena as u32 => handle::footprint::<expertslab::SlotArena>(),
                k if (EsKind::Pool as u32..=EsKind::Trace as u32).contains(&k) => {
                    return Err(EsStatus::InvalidArgument)
                }
                _ => return Err(EsStatus::OutOfRange),
            };
            // SAFETY: forwarded contract.
            unsafe {
                handle::put(size, bytes)?;
                handle::put(align, alignment)
            }
        })())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status() {
        let status = handle::guard(|| panic!("a bug"));
        assert_eq!(status, EsStatus::Panic);
    }

    #[test]
    fn every_status_has_its_header_name() {
        for (value, status) in EsStatus::ALL.iter().enumerate() {
            assert_eq!(*status as usize, value);
            let mut name = core::ptr::null();
            // SAFETY: `name` is a valid out-pointer.
            assert_eq!(unsafe { es_status_name(value as u32, &mut name) }, EsStatus::Ok);
            // SAFETY: the library returned a static NUL-terminated string.
            let text = unsafe { core::ffi::CStr::from_ptr(name) };
            assert_eq!(text, status.name());
        }
    }
}
