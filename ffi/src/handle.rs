//! Handles: the header every object starts with (magic word, kind, last error text), checked
//! access from C pointers, and the wrappers every entry point runs in.
//!
//! # Error texts
//! An entry point's body returns `Result<(), Failed>`. A `Failed` is made only by keeping a
//! text: `Keeper::fail` on the call's handle or on a constructor's message, or
//! `OrKeep::or_keep` for an argument the checks below refused (they return a `Bad`, which says
//! what was wrong and converts to nothing else). So a body cannot return a failure whose text
//! was not kept; the wrappers (`on`, `on_const`, `build_into`, `no_handle`) turn the result into
//! the status, and keep a panic's text where the body would have kept its own. The one failure
//! no wrapper can keep is a first handle that does not resolve (null, misaligned, freed, never a
//! handle, another kind): there is no handle to keep it on.

use core::mem::{align_of, size_of};
use core::ptr;

use alloc::boxed::Box;

pub(crate) use crate::failure::{Bad, ErrorText, Failed, Keeper, Nowhere, OrKeep};
use crate::status::EsStatus;
use crate::text::{Reason, Text};

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
    error: ErrorText,
}

impl Header {
    fn new(kind: EsKind, boxed: bool) -> Self {
        Self { magic: MAGIC, kind: kind as u32, boxed, error: ErrorText::new() }
    }
}

/// A handle: the header, then the object.
#[repr(C)]
pub(crate) struct Handle<T> {
    header: Header,
    pub(crate) value: T,
}

impl<T> Keeper for Handle<T> {
    fn errors(&self) -> Option<&ErrorText> {
        Some(&self.header.error)
    }
}

/// An object C holds through a handle of one kind; `Opaque` is the type the header names.
pub(crate) trait Object: Sized {
    /// The kind word.
    const KIND: EsKind;
    /// The opaque type C sees.
    type Opaque;
}

/// Why the library panicked, as the handle's or message's text.
struct Panicked<'a>(&'a str);

impl Reason for Panicked<'_> {
    fn write(&self, text: &mut Text<'_>) {
        text.put("the library panicked (a bug; please report it): ").put(self.0);
    }
}

/// Runs one entry point, turning a panic into [`EsStatus::Panic`] so none crosses into C; the
/// panic's message goes to `report`.
#[cfg(not(target_os = "none"))]
fn guard_with(entry: impl FnOnce() -> EsStatus, report: impl FnOnce(&Panicked<'_>)) -> EsStatus {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(entry)) {
        Ok(status) => status,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<alloc::string::String>().map(|s| s.as_str()))
                .unwrap_or("a message that is not text");
            report(&Panicked(message));
            EsStatus::Panic
        }
    }
}

/// Runs one entry point. Firmware builds do not unwind: a panic reaches the library's panic
/// handler ([`crate::firmware`]), which reports it through the firmware's callback and stops.
#[cfg(target_os = "none")]
fn guard_with(entry: impl FnOnce() -> EsStatus, report: impl FnOnce(&Panicked<'_>)) -> EsStatus {
    let _ = report;
    entry()
}

/// Runs one entry point that keeps no text (freeing a handle), turning a panic into
/// [`EsStatus::Panic`].
pub(crate) fn guard(entry: impl FnOnce() -> EsStatus) -> EsStatus {
    guard_with(entry, |_| {})
}

/// The status of a body's result.
fn status_of(result: Result<(), Failed>) -> EsStatus {
    match result {
        Ok(()) => EsStatus::Ok,
        Err(failed) => failed.status(),
    }
}

/// Runs an entry point whose first handle is `ptr`, of kind `T`: every failure of `body` keeps
/// its text on that handle, and so does a panic. A `ptr` that is no live handle of kind `T` is
/// returned as its status alone: there is no handle to keep a text on.
///
/// # Safety
/// As [`handle_mut`] for `ptr`; `body`'s own contract.
pub(crate) unsafe fn on<T: Object>(
    ptr: *mut T::Opaque,
    body: impl FnOnce(&mut Handle<T>) -> Result<(), Failed>,
) -> EsStatus {
    guard_with(
        || {
            // SAFETY: forwarded contract.
            match unsafe { handle_mut::<T>(ptr) } {
                Ok(handle) => status_of(body(handle)),
                Err(bad) => bad.status(),
            }
        },
        // SAFETY: forwarded contract; a panic comes from the body, after `ptr` resolved.
        |panicked| unsafe { keep_panic(ptr.cast::<()>().cast_const(), panicked) },
    )
}

/// As [`on`], for a handle the call takes `const` (its text is kept all the same).
///
/// # Safety
/// As [`on`]; no mutable reference to the handle may be live.
pub(crate) unsafe fn on_const<T: Object>(
    ptr: *const T::Opaque,
    body: impl FnOnce(&Handle<T>) -> Result<(), Failed>,
) -> EsStatus {
    guard_with(
        || {
            // SAFETY: forwarded contract.
            match unsafe { handle_ref::<T>(ptr) } {
                Ok(handle) => status_of(body(handle)),
                Err(bad) => bad.status(),
            }
        },
        // SAFETY: as in `on`.
        |panicked| unsafe { keep_panic(ptr.cast::<()>(), panicked) },
    )
}

/// Keeps a panic's text on the handle at `ptr`, if it is one.
///
/// # Safety
/// As [`header`]; no reference to the handle may be live (the body's ended with the unwinding).
unsafe fn keep_panic(ptr: *const (), panicked: &Panicked<'_>) {
    // SAFETY: forwarded contract.
    if let Ok(header) = unsafe { header(ptr) } {
        header.error.write(panicked);
    }
}

/// Runs an entry point that takes no handle and no message buffer: its failures keep no text
/// (their status alone says what was wrong, as each such function's documentation states).
/// `body` is given [`Nowhere`] to keep them in, so that it reads like every other body.
pub(crate) fn no_handle(body: impl FnOnce(&Nowhere) -> Result<(), Failed>) -> EsStatus {
    guard(|| status_of(body(&Nowhere)))
}

/// Runs an entry point that builds a handle from nothing: `body` builds it and hands it to
/// [`create`] or [`place`]; its failures keep their text in the text it is given, which goes to
/// the caller's `message` buffer of `capacity` bytes (when not null), cut to fit and
/// NUL-terminated, as no handle exists to keep it. A panic's text goes there too.
///
/// # Safety
/// A non-null `message` must be valid for writes of `capacity` bytes; `body`'s own contract.
pub(crate) unsafe fn build_into(
    message: *mut core::ffi::c_char,
    capacity: usize,
    body: impl FnOnce(&ErrorText) -> Result<(), Failed>,
) -> EsStatus {
    let why = ErrorText::new();
    let status = guard_with(|| status_of(body(&why)), |panicked| why.write(panicked));
    if status != EsStatus::Ok && !message.is_null() {
        why.read(|text| {
            // SAFETY: forwarded contract; a message cut to fit is still the status given.
            let _ = unsafe { copy_text(text, message, capacity, ptr::null_mut()) };
        });
    }
    status
}

/// Checks that `ptr` is not null and is aligned for `T`.
#[inline]
pub(crate) fn check_ptr<T>(ptr: *const T) -> Result<(), Bad> {
    check_address(ptr as usize, align_of::<T>())
}

/// Checks that `address` is not null and is a multiple of `align`: one function for every
/// pointer type (each entry point checks several; inlining a copy per pointer costs firmware
/// code).
#[inline(never)]
fn check_address(address: usize, align: usize) -> Result<(), Bad> {
    if address == 0 {
        Err(Bad::Null)
    } else if !address.is_multiple_of(align) {
        // An alignment is a power of two below 2^32 on every target the library builds for.
        Err(Bad::Misaligned { log2: align.trailing_zeros() as u8 })
    } else {
        Ok(())
    }
}

/// The header of any handle, after checking the pointer and the magic word.
///
/// # Safety
/// A non-null, aligned `ptr` must point to readable memory of at least a [`Header`] (a handle
/// of any kind, live or freed by this library, or memory the caller claims is one).
pub(crate) unsafe fn header<'a>(ptr: *const ()) -> Result<&'a Header, Bad> {
    check_ptr(ptr.cast::<Header>())?;
    // SAFETY: not null and aligned (checked above); readable as a header by the caller's
    // contract. Every field of `Header` is valid for any bit pattern except `boxed`, which is
    // read only after the magic word matched, i.e. from a header this library wrote.
    let magic = unsafe { ptr::read(ptr.cast::<u32>()) };
    if magic != MAGIC {
        return Err(Bad::NoHandle);
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
pub(crate) unsafe fn handle_mut<'a, T: Object>(ptr: *mut T::Opaque) -> Result<&'a mut Handle<T>, Bad> {
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
unsafe fn check_handle(ptr: *const (), align: usize, kind: EsKind) -> Result<(), Bad> {
    check_address(ptr as usize, align)?;
    // SAFETY: the caller's contract for `header`; aligned to `align`, at least that of `Header`.
    let header = unsafe { header(ptr) }?;
    if header.kind != kind as u32 {
        return Err(Bad::Kind { is: u8::try_from(header.kind).unwrap_or(0), wanted: kind as u8 });
    }
    Ok(())
}

/// A handle a call holds a reference to while it resolves its other handle arguments: where its
/// memory lies, and its kind.
#[derive(Clone, Copy)]
pub(crate) struct Held {
    start: usize,
    len: usize,
    kind: EsKind,
}

impl Held {
    /// The handle `handle`.
    pub(crate) fn of<T: Object>(handle: &Handle<T>) -> Self {
        Self { start: ptr::from_ref(handle) as usize, len: size_of::<Handle<T>>(), kind: T::KIND }
    }
}

/// As [`handle_mut`], for a further handle argument of a call that holds the handles `held`:
/// memory that overlaps one of them is refused without being read (a read would alias the
/// reference the call holds), as that handle's kind when it is the same handle passed again and
/// as no handle otherwise.
///
/// # Safety
/// As [`handle_mut`], for every handle but those in `held`.
pub(crate) unsafe fn other_mut<'a, T: Object>(ptr: *mut T::Opaque, held: &[Held]) -> Result<&'a mut Handle<T>, Bad> {
    let start = ptr as usize;
    let end = start.saturating_add(size_of::<Handle<T>>());
    for h in held {
        if start == h.start {
            return Err(Bad::Kind { is: h.kind as u8, wanted: T::KIND as u8 });
        }
        if start < h.start.saturating_add(h.len) && h.start < end {
            return Err(Bad::NoHandle);
        }
    }
    // SAFETY: forwarded contract; `ptr`'s handle overlaps none of `held`.
    unsafe { handle_mut::<T>(ptr) }
}

/// As [`other_mut`], shared.
///
/// # Safety
/// As [`other_mut`]; no mutable reference to the handle may be live.
pub(crate) unsafe fn other_ref<'a, T: Object>(ptr: *const T::Opaque, held: &[Held]) -> Result<&'a Handle<T>, Bad> {
    // SAFETY: forwarded contract; the reference is downgraded at once.
    unsafe { other_mut::<T>(ptr.cast_mut(), held) }.map(|h| &*h)
}

/// As [`handle_mut`], shared.
///
/// # Safety
/// As [`header`]; no mutable reference to the handle may be live.
pub(crate) unsafe fn handle_ref<'a, T: Object>(ptr: *const T::Opaque) -> Result<&'a Handle<T>, Bad> {
    // SAFETY: forwarded contract; the reference is downgraded at once.
    unsafe { handle_mut::<T>(ptr.cast_mut()) }.map(|h| &*h)
}

/// A new library-allocated handle for `value`, written to `*out`; a failure keeps its text on
/// `on`.
///
/// # Safety
/// `out` must be valid for a write of one pointer when non-null and aligned.
pub(crate) unsafe fn create<T: Object>(value: T, out: *mut *mut T::Opaque, on: &impl Keeper) -> Result<(), Failed> {
    check_ptr(out).or_keep(on, "`out`")?;
    let handle = Box::new(Handle { header: Header::new(T::KIND, true), value });
    // SAFETY: `out` is not null and aligned (checked), and writable by the caller's contract.
    unsafe { ptr::write(out, Box::into_raw(handle).cast::<T::Opaque>()) };
    Ok(())
}

/// Places a handle for `value` in caller memory `memory` of `size` bytes, written to `*out`; a
/// failure keeps its text on `on`.
///
/// # Safety
/// `memory` must be valid for writes of `size` bytes when non-null, and stay so, unused by the
/// caller, until the handle is freed; `out` as for [`create`].
pub(crate) unsafe fn place<T: Object>(
    memory: *mut u8,
    size: usize,
    value: T,
    out: *mut *mut T::Opaque,
    on: &impl Keeper,
) -> Result<(), Failed> {
    check_ptr(out).or_keep(on, "`out`")?;
    check_ptr(memory.cast::<Handle<T>>()).or_keep(on, "`memory`")?;
    let needed = size_of::<Handle<T>>();
    if size < needed {
        return Err(on.fail(EsStatus::BufferTooSmall, |t: &mut Text<'_>| {
            t.put("`memory` holds ").num(size).put(" bytes; ").num(needed).put(" are needed");
        }));
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
/// clears the magic word, and gives the memory back when the library allocated it. A `ptr` that
/// is no live handle of kind `T` is returned as its status alone (there is no handle to keep a
/// text on). Only a handle placed in caller memory can be told freed afterwards: a freed
/// library-allocated handle's memory went back to the allocator.
///
/// # Safety
/// As [`handle_mut`]; the handle must not be used after this call.
pub(crate) unsafe fn free<T: Object>(ptr: *mut T::Opaque) -> EsStatus {
    guard(|| {
        if ptr.is_null() {
            return EsStatus::Ok;
        }
        // SAFETY: forwarded contract.
        let handle = match unsafe { handle_mut::<T>(ptr) } {
            Ok(handle) => handle,
            Err(bad) => return bad.status(),
        };
        handle.header.magic = 0;
        if handle.header.boxed {
            // SAFETY: `boxed` says `create` made this pointer with `Box::into_raw`; the caller gives
            // it up.
            drop(unsafe { Box::from_raw(ptr.cast::<Handle<T>>()) });
        } else {
            // SAFETY: `place` wrote a valid `Handle<T>` here; it is dropped once, the caller keeps
            // the memory.
            unsafe { ptr::drop_in_place(ptr.cast::<Handle<T>>()) };
        }
        EsStatus::Ok
    })
}

/// Size and alignment of a handle of kind `T`.
pub(crate) const fn footprint<T: Object>() -> (usize, usize) {
    (size_of::<Handle<T>>(), align_of::<Handle<T>>())
}

/// Writes `value` to `out` after checking it.
///
/// # Safety
/// `out` must be valid for a write of `T` when non-null and aligned.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) -> Result<(), Bad> {
    check_ptr(out)?;
    // SAFETY: not null and aligned (checked), writable by the caller's contract.
    unsafe { ptr::write(out, value) };
    Ok(())
}

/// Reads `*ptr` after checking it.
///
/// # Safety
/// `ptr` must be valid for a read of a valid `T` when non-null and aligned.
pub(crate) unsafe fn get<T: Copy>(ptr: *const T) -> Result<T, Bad> {
    check_ptr(ptr)?;
    // SAFETY: not null and aligned (checked), readable by the caller's contract.
    Ok(unsafe { ptr::read(ptr) })
}

/// The slice of `count` elements at `ptr` (a null `ptr` is allowed for `count` 0).
///
/// # Safety
/// A non-null, aligned `ptr` must be valid for reads of `count` elements, unchanged while the
/// slice is used.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, count: usize) -> Result<&'a [T], Bad> {
    if count == 0 {
        return Ok(&[]);
    }
    check_ptr(ptr)?;
    if count.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(Bad::TooLong);
    }
    // SAFETY: not null and aligned (checked), the size fits `isize` (checked), readable by the
    // caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, count) })
}

/// Where a caller's slot buffer of `length` bytes at `buffer` starts: `buffer` itself, also for
/// an empty buffer (whose start an arena checks like any other), or, for a null `buffer` of no
/// bytes, an address aligned to `align` that stands for an empty buffer anywhere.
pub(crate) fn buffer_start(buffer: *mut u8, length: usize, align: usize) -> *mut u8 {
    if buffer.is_null() && length == 0 {
        ptr::without_provenance_mut(align.max(1))
    } else {
        buffer
    }
}

/// The `length` caller bytes at `start` (from [`buffer_start`]), keeping `start` even when
/// empty; unlike [`slice`], a null `start` is refused whatever the length.
///
/// # Safety
/// A non-null `start` must be valid for reads of `length` bytes, unchanged while the slice is
/// used.
pub(crate) unsafe fn buffer<'a>(start: *const u8, length: usize) -> Result<&'a [u8], Bad> {
    check_ptr(start)?;
    if length > isize::MAX as usize {
        return Err(Bad::TooLong);
    }
    // SAFETY: not null (checked; `u8` needs no alignment), the size fits `isize` (checked),
    // readable by the caller's contract; a slice of no bytes reads nothing.
    Ok(unsafe { core::slice::from_raw_parts(start, length) })
}

/// The NUL-terminated name at `ptr` (a format or policy name): ASCII, as every name the
/// library knows is, which is cheaper to check than UTF-8; other bytes are [`Bad::NotAscii`].
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string, unchanged while it is used.
pub(crate) unsafe fn text<'a>(ptr: *const core::ffi::c_char) -> Result<&'a str, Bad> {
    check_ptr(ptr)?;
    // SAFETY: not null (checked), NUL-terminated by the caller's contract.
    let bytes = unsafe { core::ffi::CStr::from_ptr(ptr) }.to_bytes();
    if !bytes.is_ascii() {
        return Err(Bad::NotAscii);
    }
    // SAFETY: ASCII (checked) is UTF-8.
    Ok(unsafe { core::str::from_utf8_unchecked(bytes) })
}

/// Copies the last error text kept by the handle at `ptr` (of any kind) to the caller's
/// `buffer`, as [`copy_text`] does. Changes no text: a handle that does not resolve, or a
/// `buffer` too small, is its status alone.
///
/// # Safety
/// As [`header`] for `ptr`; as [`copy_text`] for the rest.
pub(crate) unsafe fn last_error(
    ptr: *const (),
    buffer: *mut core::ffi::c_char,
    capacity: usize,
    length: *mut usize,
) -> EsStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let header = match unsafe { header(ptr) } {
            Ok(header) => header,
            Err(bad) => return bad.status(),
        };
        header.error.read(|text| {
            // SAFETY: forwarded contract.
            match unsafe { copy_text(text, buffer, capacity, length) } {
                Ok(()) => EsStatus::Ok,
                Err(bad) => bad.status(),
            }
        })
    })
}

/// Copies `text` NUL-terminated into the caller's `buffer` of `capacity` bytes (cut to fit) when
/// `buffer` is not null; the full length without the NUL goes to `length` when not null.
///
/// # Safety
/// A non-null `buffer` must be valid for writes of `capacity` bytes; a non-null `length` for one
/// `usize`.
unsafe fn copy_text(
    text: &[u8],
    buffer: *mut core::ffi::c_char,
    capacity: usize,
    length: *mut usize,
) -> Result<(), Bad> {
    if !length.is_null() {
        // SAFETY: forwarded contract.
        unsafe { put(length, text.len()) }?;
    }
    if buffer.is_null() || capacity == 0 {
        return if text.is_empty() && buffer.is_null() { Ok(()) } else { Err(Bad::TooSmall) };
    }
    let n = text.len().min(capacity.saturating_sub(1));
    // SAFETY: `buffer` is not null and valid for `capacity` bytes (caller); `n + 1 <= capacity`;
    // `text` is a Rust slice, which cannot overlap a buffer the caller lends for writing.
    unsafe {
        ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), n);
        ptr::write(buffer.cast::<u8>().add(n), 0);
    }
    if n < text.len() {
        Err(Bad::TooSmall)
    } else {
        Ok(())
    }
}
