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
//!   message buffer instead. Every failure keeps its text, a refused output pointer or caller
//!   buffer included: an entry point's body can only fail by keeping one (the `handle` module's
//!   `Failed`). The exceptions, where there is nowhere to keep it, are listed on [`EsStatus`].
//! - Null and misaligned pointers, handles of the wrong kind, too-small buffers and out-of-range
//!   ids and enum values are reported as codes. Each handle starts with a magic word and its
//!   kind, cleared when it is freed: a freed handle placed in caller memory is reported (until
//!   the memory is reused); a freed handle the library allocated is gone, and using or freeing
//!   it again is undefined behaviour. What the library cannot check (a dangling pointer, a
//!   buffer shorter than its stated length) is the caller's contract, stated on each function.
//! - No panic crosses into C: on hosts every entry point runs under `catch_unwind` and returns
//!   `ES_STATUS_PANIC`, keeping the panic's message as the text; bare-metal builds have the
//!   library's panic handler, which reports through a C callback and stops.
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

mod failure;
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

use handle::{Keeper as _, OrKeep as _};

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
/// This function changes no text: its own failures (a `handle` that is null, misaligned or no
/// live handle, a misaligned `length`, a `buffer` too small) are their status alone, and the
/// text it was asked for stays to be read again.
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
    // SAFETY: forwarded contract.
    unsafe { handle::last_error(handle.cast::<()>(), buffer, capacity, length) }
}

/// Writes the name of `status` as the header spells it (`"ES_STATUS_OK"`, …) to `*name`: a
/// NUL-terminated string of static life. A value that is no status is
/// `ES_STATUS_OUT_OF_RANGE`. Takes no handle, so its failures keep no text.
///
/// # Safety
/// `name` writable.
#[no_mangle]
pub unsafe extern "C" fn es_status_name(status: u32, name: *mut *const c_char) -> EsStatus {
    handle::no_handle(|why| {
        let found = usize::try_from(status).ok().and_then(|index| EsStatus::ALL.get(index)).ok_or_else(|| {
            why.fail(EsStatus::OutOfRange, |t: &mut text::Text<'_>| {
                t.put("status ").num(status as usize).put(" is not an EsStatus");
            })
        })?;
        // SAFETY: forwarded contract.
        unsafe { handle::put(name, found.name().as_ptr()) }.or_keep(why, "`name`")
    })
}

/// Writes the size and alignment in bytes of a handle of kind `kind` (an `EsKind` value) to
/// `*size` and `*align`, for placing it in caller memory with [`es_expert_layout_init`] or
/// [`es_arena_init`]; the other kinds are allocated by the library and report
/// `ES_STATUS_INVALID_ARGUMENT`. Takes no handle, so its failures keep no text.
///
/// # Safety
/// `size` and `align` writable.
#[no_mangle]
pub unsafe extern "C" fn es_handle_footprint(kind: u32, size: *mut usize, align: *mut usize) -> EsStatus {
    handle::no_handle(|why| {
        let (bytes, alignment) = match kind {
            k if k == EsKind::ExpertLayout as u32 => handle::footprint::<expertslab::ExpertLayout>(),
            k if k == EsKind::Arena as u32 => handle::footprint::<expertslab::SlotArena>(),
            k if (EsKind::Pool as u32..=EsKind::Trace as u32).contains(&k) => {
                return Err(why.fail(EsStatus::InvalidArgument, "only layouts and arenas can be placed"))
            }
            _ => return Err(why.fail(EsStatus::OutOfRange, "not an EsKind")),
        };
        // SAFETY: forwarded contract.
        unsafe {
            handle::put(size, bytes).or_keep(why, "`size`")?;
            handle::put(align, alignment).or_keep(why, "`align`")
        }
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

    /// The error text `handle` keeps.
    fn last_error(handle: *const core::ffi::c_void) -> String {
        let mut text = [0 as c_char; ES_ERROR_CAPACITY + 1];
        // SAFETY: `handle` is a live handle of this library; `text` is writable for its length.
        let status = unsafe { es_last_error(handle, text.as_mut_ptr(), text.len(), core::ptr::null_mut()) };
        assert_eq!(status, EsStatus::Ok);
        // SAFETY: `es_last_error` wrote a NUL-terminated text.
        unsafe { core::ffi::CStr::from_ptr(text.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// A TIDE pool of 4 experts and 2 slots.
    fn tide_pool() -> *mut EsPool {
        let mut pool = core::ptr::null_mut();
        let config = pool::test_config(c"tide", 4, 2);
        // SAFETY: every pointer is to a live local.
        assert_eq!(unsafe { es_pool_new(&config, &mut pool, core::ptr::null_mut(), 0) }, EsStatus::Ok);
        pool
    }

    #[test]
    fn a_panic_keeps_its_text_on_the_handle_or_in_the_message() {
        let pool = tide_pool();
        // SAFETY: `pool` is live and freed at the end; `message` is a live local.
        unsafe {
            let status = handle::on::<expertslab::ExpertPool>(pool, |_| panic!("a bug in a body"));
            assert_eq!(status, EsStatus::Panic);
            let text = last_error(pool.cast());
            assert!(text.contains("panicked") && text.contains("a bug in a body"), "{text}");

            let mut message = [0 as c_char; 128];
            let status = handle::build_into(message.as_mut_ptr(), message.len(), |_| panic!("a bug in a build"));
            assert_eq!(status, EsStatus::Panic);
            let text = core::ffi::CStr::from_ptr(message.as_ptr()).to_string_lossy();
            assert!(text.contains("a bug in a build"), "{text}");
            assert_eq!(es_pool_free(pool), EsStatus::Ok);
        }
    }

    #[test]
    fn a_refused_first_handle_keeps_no_text_and_changes_none() {
        let pool = tide_pool();
        let mut plan = core::ptr::null_mut();
        // SAFETY: every pointer is to a live local or a live handle; both are freed at the end.
        unsafe {
            assert_eq!(es_plan_new(pool, &mut plan), EsStatus::Ok);
            assert_eq!(es_plan_len(plan, core::ptr::null_mut()), EsStatus::NullPointer);
            assert_eq!(last_error(plan.cast()), "`count` is null");
            let (mut experts, mut slots) = (0, 0);
            assert_eq!(es_pool_info(plan.cast(), &mut experts, &mut slots), EsStatus::WrongHandle);
            assert_eq!(last_error(plan.cast()), "`count` is null");
            assert_eq!(es_pool_initial_plan(pool, pool.cast()), EsStatus::WrongHandle);
            assert_eq!(last_error(pool.cast()), "`plan` is a pool handle, not a plan handle");
            // Memory inside the pool's handle is refused without being read (it is borrowed).
            let inside = pool.cast::<u8>().wrapping_add(16).cast();
            assert_eq!(es_pool_initial_plan(pool, inside), EsStatus::WrongHandle);
            assert_eq!(last_error(pool.cast()), "`plan` is not a live handle (freed, or never one)");
            assert_eq!(es_plan_free(plan), EsStatus::Ok);
            assert_eq!(es_pool_free(pool), EsStatus::Ok);
        }
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
