//! Handles: the header every object starts with (magic word, kind, last error text), checked
//! access from C pointers, and the `catch_unwind` guard around every entry point.

use core::mem::{align_of, size_of};
use core::ptr;

use alloc::boxed::Box;

use crate::status::EsStatus;
use crate::text::{Reason, Text, ES_ERROR_CAPACITY};

/// The word every live handle starts with ("ESLB"); cleared when the handle is freed.
const MAGIC: u32 = 0x4553_4c42;

/// The kinds of handle, as [`es_handle_footprint`](crate::es_handle_footprint) takes them.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsKind {
    /// An [`EsExpertLayout`](crate::EsExpertLayout).
    ExpertLayout = 1,
    /// An [`EsArena`](crate::EsArena).
    Arena = 2,
    /// An [`EsPool`](crate::EsPool).
    Pool = 3,
    /// An [`EsPlan`](crate::EsPlan).
    Plan = 4,
    /// An [`EsSource`](crate::EsSource).
    Source = 5,
    /// An [`EsSink`](crate::EsSink).
    Sink = 6,
    /// An [`EsTrace`](crate::EsTrace).
    Trace = 7,
}

/// The start of every handle: readable whatever the handle's kind.
#[repr(C)]
pub(crate) struct Header {
    magic: u32,
    kind: u32,
    /// Whether the library allocated the handle (freed with `Box`) or the caller placed it.
    boxed: bool,
    error_len: usize,
    error: [u8; ES_ERROR_CAPACITY],
}

impl Header {
    fn new(kind: EsKind, boxed: bool) -> Self {
        Self { magic: MAGIC, kind: kind as u32, boxed, error_len: 0, error: [0; ES_ERROR_CAPACITY] }
    }

    /// The last error text.
    pub(crate) fn error(&self) -> &[u8] {
        self.error.get(..self.error_len).unwrap_or(&[])
    }
}

/// A handle: the header, then the object.
#[repr(C)]
pub(crate) struct Handle<T> {
    header: Header,
    pub(crate) value: T,
}

/// An object C holds through a handle of one kind; `Opaque` is the type the header names.
pub(crate) trait Object: Sized {
    /// The kind word.
    const KIND: EsKind;
    /// The opaque type C sees.
    type Opaque;
}

impl<T: Object> Handle<T> {
    /// Records `reason`'s text as this handle's last error and returns `status`.
    pub(crate) fn fail(&mut self, status: EsStatus, reason: impl Reason) -> EsStatus {
        record(&mut self.header, status, &reason)
    }
}

/// Writes `reason` into `header`'s text (cut to fit) and returns `status`. Not inlined: the
/// failure paths of every entry point share one copy per kind of reason (firmware code size).
#[inline(never)]
fn record<R: Reason>(header: &mut Header, status: EsStatus, reason: &R) -> EsStatus {
    let mut text = Text::new(&mut header.error);
    reason.write(&mut text);
    header.error_len = text.len();
    status
}

/// Runs one entry point, turning a panic into [`EsStatus::Panic`] so none crosses into C.
#[cfg(not(target_os = "none"))]
pub(crate) fn guard(entry: impl FnOnce() -> EsStatus) -> EsStatus {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(entry)).unwrap_or(EsStatus::Panic)
}

/// Runs one entry point. Firmware builds do not unwind: a panic reaches the library's panic
/// handler ([`crate::firmware`]), which reports it through the firmware's callback and stops.
#[cfg(target_os = "none")]
pub(crate) fn guard(entry: impl FnOnce() -> EsStatus) -> EsStatus {
    entry()
}

/// Turns a `Result` of an entry point's body into its status.
pub(crate) fn status(result: Result<(), EsStatus>) -> EsStatus {
    result.err().unwrap_or(EsStatus::Ok)
}

/// Checks that `ptr` is not null and is aligned for `T`.
#[inline]
pub(crate) fn check_ptr<T>(ptr: *const T) -> Result<(), EsStatus> {
    check_address(ptr as usize, align_of::<T>())
}

/// Checks that `address` is not null and is a multiple of `align`: one function for every
/// pointer type (each entry point checks several; inlining a copy per pointer costs firmware
/// code).
#[inline(never)]
fn check_address(address: usize, align: usize) -> Result<(), EsStatus> {
    if address == 0 {
        Err(EsStatus::NullPointer)
    } else if !address.is_multiple_of(align) {
        Err(EsStatus::Misaligned)
    } else {
        Ok(())
    }
}

/// The header of any handle, after checking the pointer and the magic word.
///
/// # Safety
/// A non-null, aligned `ptr` must point to readable memory of at least a [`Header`] (a handle
/// of any kind, live or freed by this library, or memory the caller claims is one).
pub(crate) unsafe fn header<'a>(ptr: *const ()) -> Result<&'a Header, EsStatus> {
    check_ptr(ptr.cast::<Header>())?;
    // SAFETY: not null and aligned (checked above); readable as a header by the caller's
    // contract. Every field of `Header` is valid for any bit pattern except `boxed`, which is
    // read only after the magic word matched, i.e. from a header this library wrote.
    let magic = unsafe { ptr::read(ptr.cast::<u32>()) };
    if magic != MAGIC {
        return Err(EsStatus::WrongHandle);
    }
    // SAFETY: as above; the magic word says this library wrote the header.
    Ok(unsafe { &*ptr.cast::<Header>() })
}

/// The object behind a handle of kind `T`, after checking the pointer, the magic word and the
/// kind.
///
/// # Safety
/// As [`header`]; in addition no other reference to the handle may be live while the returned
/// one is (the entry points take each handle once).
pub(crate) unsafe fn handle_mut<'a, T: Object>(ptr: *mut T::Opaque) -> Result<&'a mut Handle<T>, EsStatus> {
    // SAFETY: forwarded contract.
    unsafe { check_handle(ptr.cast::<()>().cast_const(), align_of::<Handle<T>>(), T::KIND) }?;
    // SAFETY: the magic word and kind say this library wrote a `Handle<T>` here and has not freed
    // it (checked, with the alignment for `Handle<T>`); the caller guarantees no other reference
    // to it is live.
    Ok(unsafe { &mut *ptr.cast::<Handle<T>>() })
}

/// Checks that `ptr` is a live handle of kind `kind` aligned to `align` (at least that of
/// [`Header`]): one function for every kind, not a copy per kind and call.
///
/// # Safety
/// As [`header`].
#[inline(never)]
unsafe fn check_handle(ptr: *const (), align: usize, kind: EsKind) -> Result<(), EsStatus> {
    check_address(ptr as usize, align)?;
    // SAFETY: the caller's contract for `header`; aligned to `align`, at least that of `Header`.
    let header = unsafe { header(ptr) }?;
    if header.kind != kind as u32 {
        return Err(EsStatus::WrongHandle);
    }
    Ok(())
}

/// As [`handle_mut`], shared.
///
/// # Safety
/// As [`header`]; no mutable reference to the handle may be live.
pub(crate) unsafe fn handle_ref<'a, T: Object>(ptr: *const T::Opaque) -> Result<&'a Handle<T>, EsStatus> {
    // SAFETY: forwarded contract; the reference is downgraded at once.
    unsafe { handle_mut::<T>(ptr.cast_mut()) }.map(|h| &*h)
}

/// A new library-allocated handle for `value`, written to `*out`.
///
/// # Safety
/// `out` must be valid for a write of one pointer when non-null and aligned.
pub(crate) unsafe fn create<T: Object>(value: T, out: *mut *mut T::Opaque) -> Result<(), EsStatus> {
    check_ptr(out)?;
    let handle = Box::new(Handle { header: Header::new(T::KIND, true), value });
    // SAFETY: `out` is not null and aligned (checked), and writable by the caller's contract.
    unsafe { ptr::write(out, Box::into_raw(handle).cast::<T::Opaque>()) };
    Ok(())
}

/// Places a handle for `value` in caller memory `memory` of `size` bytes, written to `*out`.
///
/// # Safety
/// `memory` must be valid for writes of `size` bytes when non-null, and stay so, unused by the
/// caller, until the handle is freed; `out` as for [`create`].
pub(crate) unsafe fn place<T: Object>(
    memory: *mut u8,
    size: usize,
    value: T,
    out: *mut *mut T::Opaque,
) -> Result<(), EsStatus> {
    check_ptr(out)?;
    check_ptr(memory.cast::<Handle<T>>())?;
    if size < size_of::<Handle<T>>() {
        return Err(EsStatus::BufferTooSmall);
    }
    let handle = memory.cast::<Handle<T>>();
    // SAFETY: `memory` is not null, aligned for `Handle<T>` and at least its size (checked), and
    // writable by the caller's contract; `out` as in `create`.
    unsafe {
        ptr::write(handle, Handle { header: Header::new(T::KIND, false), value });
        ptr::write(out, handle.cast::<T::Opaque>());
    }
    Ok(())
}

/// Frees the handle at `ptr` (a null pointer is accepted and does nothing): drops its object,
/// clears the magic word, and gives the memory back when the library allocated it.
///
/// # Safety
/// As [`handle_mut`]; the handle must not be used after this call.
pub(crate) unsafe fn free<T: Object>(ptr: *mut T::Opaque) -> EsStatus {
    if ptr.is_null() {
        return EsStatus::Ok;
    }
    // SAFETY: forwarded contract.
    let handle = match unsafe { handle_mut::<T>(ptr) } {
        Ok(handle) => handle,
        Err(status) => return status,
    };
    handle.header.magic = 0;
    if handle.header.boxed {
        // SAFETY: `boxed` says `create` made this pointer with `Box::into_raw`; the caller gives it
        // up.
        drop(unsafe { Box::from_raw(ptr.cast::<Handle<T>>()) });
    } else {
        // SAFETY: `place` wrote a valid `Handle<T>` here; it is dropped once, the caller keeps the
        // memory.
        unsafe { ptr::drop_in_place(ptr.cast::<Handle<T>>()) };
    }
    EsStatus::Ok
}

/// Size and alignment of a handle of kind `T`.
pub(crate) const fn footprint<T: Object>() -> (usize, usize) {
    (size_of::<Handle<T>>(), align_of::<Handle<T>>())
}

/// Writes `value` to `out` after checking it.
///
/// # Safety
/// `out` must be valid for a write of `T` when non-null and aligned.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) -> Result<(), EsStatus> {
    check_ptr(out)?;
    // SAFETY: not null and aligned (checked), writable by the caller's contract.
    unsafe { ptr::write(out, value) };
    Ok(())
}

/// Reads `*ptr` after checking it.
///
/// # Safety
/// `ptr` must be valid for a read of a valid `T` when non-null and aligned.
pub(crate) unsafe fn get<T: Copy>(ptr: *const T) -> Result<T, EsStatus> {
    check_ptr(ptr)?;
    // SAFETY: not null and aligned (checked), readable by the caller's contract.
    Ok(unsafe { ptr::read(ptr) })
}

/// The slice of `count` elements at `ptr` (a null `ptr` is allowed for `count` 0).
///
/// # Safety
/// A non-null, aligned `ptr` must be valid for reads of `count` elements, unchanged while the
/// slice is used.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, count: usize) -> Result<&'a [T], EsStatus> {
    if count == 0 {
        return Ok(&[]);
    }
    check_ptr(ptr)?;
    if count.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(EsStatus::OutOfRange);
    }
    // SAFETY: not null and aligned (checked), the size fits `isize` (checked), readable by the
    // caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, count) })
}

/// The NUL-terminated name at `ptr` (a format or policy name): ASCII, as every name the
/// library knows is, which is cheaper to check than UTF-8; other bytes are an
/// [`EsStatus::InvalidArgument`].
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string, unchanged while it is used.
pub(crate) unsafe fn text<'a>(ptr: *const core::ffi::c_char) -> Result<&'a str, EsStatus> {
    check_ptr(ptr)?;
    // SAFETY: not null (checked), NUL-terminated by the caller's contract.
    let bytes = unsafe { core::ffi::CStr::from_ptr(ptr) }.to_bytes();
    if !bytes.is_ascii() {
        return Err(EsStatus::InvalidArgument);
    }
    // SAFETY: ASCII (checked) is UTF-8.
    Ok(unsafe { core::str::from_utf8_unchecked(bytes) })
}

/// Copies `text` NUL-terminated into the caller's `buffer` of `capacity` bytes (cut to fit) when
/// `buffer` is not null; the full length without the NUL goes to `length` when not null.
///
/// # Safety
/// A non-null `buffer` must be valid for writes of `capacity` bytes; a non-null `length` for one
/// `usize`.
pub(crate) unsafe fn copy_text(
    text: &[u8],
    buffer: *mut core::ffi::c_char,
    capacity: usize,
    length: *mut usize,
) -> Result<(), EsStatus> {
    if !length.is_null() {
        // SAFETY: forwarded contract.
        unsafe { put(length, text.len()) }?;
    }
    if buffer.is_null() || capacity == 0 {
        return if text.is_empty() && buffer.is_null() { Ok(()) } else { Err(EsStatus::BufferTooSmall) };
    }
    let n = text.len().min(capacity.saturating_sub(1));
    // SAFETY: `buffer` is not null and valid for `capacity` bytes (caller); `n + 1 <= capacity`;
    // `text` is a Rust slice, which cannot overlap a buffer the caller lends for writing.
    unsafe {
        ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), n);
        ptr::write(buffer.cast::<u8>().add(n), 0);
    }
    if n < text.len() {
        Err(EsStatus::BufferTooSmall)
    } else {
        Ok(())
    }
}

/// Runs an entry point that builds an object from nothing: `build` makes it, or writes why not
/// into the text it is given and returns the status; the text goes to the caller's `message`
/// buffer of `capacity` bytes (when not null), as no handle exists yet to keep it. `keep` turns
/// the object into a handle.
///
/// # Safety
/// As [`copy_text`] for `message`.
pub(crate) unsafe fn build_into<T>(
    message: *mut core::ffi::c_char,
    capacity: usize,
    build: impl FnOnce(&mut Text<'_>) -> Result<T, EsStatus>,
    keep: impl FnOnce(T) -> Result<(), EsStatus>,
) -> EsStatus {
    guard(|| {
        let mut bytes = [0u8; ES_ERROR_CAPACITY];
        let mut text = Text::new(&mut bytes);
        match build(&mut text) {
            Ok(object) => status(keep(object)),
            Err(code) => {
                let len = text.len();
                if !message.is_null() {
                    // SAFETY: forwarded contract; a message cut to fit is still the status given.
                    let _ = unsafe { copy_text(bytes.get(..len).unwrap_or(&[]), message, capacity, ptr::null_mut()) };
                }
                code
            }
        }
    })
}

/// Writes `reason` into `text` and returns `status`: a [`build_into`] failure.
pub(crate) fn refuse(text: &mut Text<'_>, status: EsStatus, reason: impl Reason) -> EsStatus {
    reason.write(text);
    status
}
