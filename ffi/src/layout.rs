//! Layouts and slot arenas: [`EsExpertLayout`] and [`EsArena`].

use core::ffi::c_char;

use expertslab::{ExpertLayout, Format, Projection, SlotArena, StackLayout, MAX_PROJECTIONS};

use crate::handle::{self, ErrorText, Failed, Handle, Keeper, Object, OrKeep};
use crate::status::EsStatus;
use crate::text::Text;
use crate::types::{EsProjection, EsStackLayout};

/// An expert layout: the projections one expert needs, each a stack layout (opaque).
pub struct EsExpertLayout {
    _opaque: [u8; 0],
}

/// A slot arena: where each slot of one layer, and each projection in it, lies in a caller's
/// slot buffer (opaque).
pub struct EsArena {
    _opaque: [u8; 0],
}

impl Object for ExpertLayout {
    const KIND: handle::EsKind = handle::EsKind::ExpertLayout;
    type Opaque = EsExpertLayout;
}

impl Object for SlotArena {
    const KIND: handle::EsKind = handle::EsKind::Arena;
    type Opaque = EsArena;
}

/// The core's layout of `stacks`, or the failure, with why kept in `why`.
///
/// # Safety
/// `stacks` valid for `count` elements, each `format` a NUL-terminated string.
unsafe fn build_layout(stacks: *const EsStackLayout, count: usize, why: &ErrorText) -> Result<ExpertLayout, Failed> {
    // SAFETY: forwarded contract.
    let items = unsafe { handle::slice(stacks, count) }.or_keep(why, "`stacks`")?;
    if items.is_empty() || items.len() > MAX_PROJECTIONS {
        return Err(why.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
            t.num(count).put(" projections; 1 to ").num(MAX_PROJECTIONS).put(" are allowed");
        }));
    }
    let placeholder =
        (Projection::Gate, StackLayout::new(Format::F32, 1, 1, 1).map_err(|e| why.fail(EsStatus::Panic, e))?);
    let mut pairs = [placeholder; MAX_PROJECTIONS];
    for (pair, item) in pairs.iter_mut().zip(items) {
        let projection = EsProjection::from_u32(item.projection).map_err(|s| {
            why.fail(s, |t: &mut Text<'_>| {
                t.put("projection ").num(item.projection as usize).put(" is not an EsProjection");
            })
        })?;
        // SAFETY: forwarded contract.
        let name = unsafe { handle::text(item.format) }.or_keep(why, "the format name")?;
        let format = Format::from_name(name).ok_or_else(|| {
            why.fail(EsStatus::InvalidArgument, |t: &mut Text<'_>| {
                t.put("unknown format \"").put(name).put("\"");
            })
        })?;
        let stack = StackLayout::new(format, item.experts, item.rows, item.cols)
            .map_err(|e| why.fail(EsStatus::InvalidArgument, e))?;
        *pair = (projection, stack);
    }
    ExpertLayout::new(pairs.get(..items.len()).unwrap_or(&[])).map_err(|e| why.fail(EsStatus::InvalidArgument, e))
}

/// Builds an expert layout from `count` stack layouts (one per projection, in slot order) and
/// writes its handle, allocated by the library, to `*out`.
///
/// On failure `message` (when not null) receives `message_capacity` bytes at most of why,
/// NUL-terminated: there is no handle yet to keep it. Every failure writes it, a null or
/// misaligned `out` included.
///
/// # Safety
/// `stacks` must point to `count` readable `EsStackLayout`s whose `format` strings are
/// NUL-terminated; `out` must be writable; `message` writable for `message_capacity` bytes.
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_new(
    stacks: *const EsStackLayout,
    count: usize,
    out: *mut *mut EsExpertLayout,
    message: *mut c_char,
    message_capacity: usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::build_into(message, message_capacity, |why| {
            let layout = build_layout(stacks, count, why)?;
            handle::create(layout, out, why)
        })
    }
}

/// As [`es_expert_layout_new`], placing the handle in caller memory `memory` of `size` bytes,
/// aligned as [`es_handle_footprint`](crate::es_handle_footprint) says for
/// `ES_KIND_EXPERT_LAYOUT` (no allocation). Free it with [`es_expert_layout_free`] before
/// reusing the memory. `memory` null, misaligned or smaller than the footprint is a failure
/// whose text `message` receives, as for every other failure.
///
/// # Safety
/// As [`es_expert_layout_new`]; `memory` must be writable for `size` bytes and left to the
/// library until the handle is freed.
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_init(
    memory: *mut u8,
    size: usize,
    stacks: *const EsStackLayout,
    count: usize,
    out: *mut *mut EsExpertLayout,
    message: *mut c_char,
    message_capacity: usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::build_into(message, message_capacity, |why| {
            let layout = build_layout(stacks, count, why)?;
            handle::place(memory, size, layout, out, why)
        })
    }
}

/// Writes the layout's expert count to `*experts`, its projection count to `*projections` and
/// the bytes one expert needs over all projections to `*expert_bytes`.
///
/// # Safety
/// `layout` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_info(
    layout: *const EsExpertLayout,
    experts: *mut usize,
    projections: *mut usize,
    expert_bytes: *mut usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on_const::<ExpertLayout>(layout, |layout| {
            let l = &layout.value;
            handle::put(experts, l.experts()).or_keep(layout, "`experts`")?;
            handle::put(projections, l.projections().len()).or_keep(layout, "`projections`")?;
            handle::put(expert_bytes, l.expert_bytes()).or_keep(layout, "`expert_bytes`")
        })
    }
}

/// Writes the bytes of one row of projection number `index` (in the layout's order: the order
/// of the stacks it was built from) to `*row_bytes`: the columns' whole blocks of its format.
/// An `index` past the layout's projections is `ES_STATUS_OUT_OF_RANGE`.
///
/// # Safety
/// `layout` must be a handle from this library or null; `row_bytes` writable.
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_row_bytes(
    layout: *mut EsExpertLayout,
    index: usize,
    row_bytes: *mut usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<ExpertLayout>(layout, |layout| {
            let count = layout.value.projections().len();
            let Some((_, stack)) = layout.value.projections().get(index) else {
                return Err(layout.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
                    t.put("projection ").num(index).put(" of a layout of ").num(count);
                }));
            };
            let bytes = stack.row_bytes();
            handle::put(row_bytes, bytes).or_keep(layout, "`row_bytes`")
        })
    }
}

/// Frees an expert layout (null is accepted). Handles built from it keep their own copy.
///
/// A layout placed in caller memory ([`es_expert_layout_init`]) is marked freed: until the memory
/// is reused, using or freeing it again returns `ES_STATUS_WRONG_HANDLE`. A layout the library
/// allocated ([`es_expert_layout_new`]) gives its memory back: using or freeing it again is
/// undefined behaviour, which the library cannot detect.
/// It fails only when `layout` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `layout` must be a handle from this library or null, not used after this call (a layout
/// placed in caller memory may be passed again, and is reported freed).
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_free(layout: *mut EsExpertLayout) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<ExpertLayout>(layout) }
}

/// The arena for `slots` slots of `layout`, each projection aligned to `align` (a power of two),
/// a failure kept on `layout`.
fn build_arena(layout: &Handle<ExpertLayout>, slots: usize, align: usize) -> Result<SlotArena, Failed> {
    SlotArena::new(&layout.value, slots, align).map_err(|e| layout.fail(EsStatus::InvalidArgument, e))
}

/// Builds the slot arena of `slots` slots for experts of `layout`, every projection aligned to
/// `align` bytes (a power of two), and writes its handle, allocated by the library, to `*out`.
/// Failures are kept on `layout`, a null or misaligned `out` included.
///
/// # Safety
/// `layout` must be a handle from this library or null; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn es_arena_new(
    layout: *mut EsExpertLayout,
    slots: usize,
    align: usize,
    out: *mut *mut EsArena,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<ExpertLayout>(layout, |layout| {
            let arena = build_arena(layout, slots, align)?;
            handle::create(arena, out, layout)
        })
    }
}

/// As [`es_arena_new`], placing the handle in caller memory `memory` of `size` bytes (see
/// [`es_handle_footprint`](crate::es_handle_footprint) for `ES_KIND_ARENA`; no allocation).
/// `memory` null, misaligned or smaller than the footprint is a failure kept on `layout`, as
/// every other is.
///
/// # Safety
/// As [`es_arena_new`]; `memory` writable for `size` bytes and left to the library until the
/// handle is freed.
#[no_mangle]
pub unsafe extern "C" fn es_arena_init(
    memory: *mut u8,
    size: usize,
    layout: *mut EsExpertLayout,
    slots: usize,
    align: usize,
    out: *mut *mut EsArena,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<ExpertLayout>(layout, |layout| {
            let arena = build_arena(layout, slots, align)?;
            handle::place(memory, size, arena, out, layout)
        })
    }
}

/// Writes the bytes a slot buffer for this arena needs to `*total_bytes`, its slot count to
/// `*slots` and the alignment its start needs to `*align`.
///
/// # Safety
/// `arena` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_arena_info(
    arena: *const EsArena,
    total_bytes: *mut usize,
    slots: *mut usize,
    align: *mut usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on_const::<SlotArena>(arena, |arena| {
            handle::put(total_bytes, arena.value.total_bytes()).or_keep(arena, "`total_bytes`")?;
            handle::put(slots, arena.value.slots()).or_keep(arena, "`slots`")?;
            handle::put(align, arena.value.align()).or_keep(arena, "`align`")
        })
    }
}

/// Writes where projection number `index` of slot `slot` lies in a slot buffer: its byte
/// offset to `*offset` and length to `*length`.
///
/// # Safety
/// `arena` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_arena_projection_range(
    arena: *mut EsArena,
    slot: usize,
    index: usize,
    offset: *mut usize,
    length: *mut usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<SlotArena>(arena, |arena| {
            let range = range_of(arena, slot, index)?;
            handle::put(offset, range.start).or_keep(arena, "`offset`")?;
            handle::put(length, range.len()).or_keep(arena, "`length`")
        })
    }
}

/// The range of projection `index` of `slot`, a failure kept on the arena.
fn range_of(arena: &Handle<SlotArena>, slot: usize, index: usize) -> Result<core::ops::Range<usize>, Failed> {
    arena.value.projection_range(slot, index).map_err(|e| arena.fail(EsStatus::OutOfRange, e))
}

/// Writes a pointer to projection number `index` of slot `slot` within the caller's slot
/// buffer `buffer` of `length` bytes to `*slab`, and its length to `*slab_length`. `buffer`
/// must start aligned as the arena says, also when it is empty; null stands for an empty buffer
/// (`length` 0) only.
///
/// # Safety
/// `arena` must be a handle from this library or null; `buffer` readable for `length` bytes;
/// the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_arena_slab(
    arena: *mut EsArena,
    buffer: *const u8,
    length: usize,
    slot: usize,
    index: usize,
    slab: *mut *const u8,
    slab_length: *mut usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<SlotArena>(arena, |arena| {
            let start = handle::buffer_start(buffer.cast_mut(), length, arena.value.align());
            let bytes = handle::buffer(start, length).or_keep(arena, "`buffer`")?;
            arena.value.check_buffer(bytes).map_err(|e| arena.fail(buffer_status(&e), e))?;
            let range = range_of(arena, slot, index)?;
            let Some(bytes) = bytes.get(range.clone()) else {
                return Err(arena.fail(EsStatus::BufferTooSmall, "the slab lies past `length`"));
            };
            handle::put(slab, bytes.as_ptr()).or_keep(arena, "`slab`")?;
            handle::put(slab_length, range.len()).or_keep(arena, "`slab_length`")
        })
    }
}

/// The status of a slot buffer the arena refused.
pub(crate) fn buffer_status(error: &expertslab::LayoutError) -> EsStatus {
    match error {
        expertslab::LayoutError::BufferMisaligned { .. } => EsStatus::Misaligned,
        _ => EsStatus::BufferTooSmall,
    }
}

/// Frees an arena (null is accepted).
///
/// An arena placed in caller memory ([`es_arena_init`]) is marked freed: until the memory is
/// reused, using or freeing it again returns `ES_STATUS_WRONG_HANDLE`. An arena the library
/// allocated ([`es_arena_new`]) gives its memory back: using or freeing it again is undefined
/// behaviour, which the library cannot detect.
/// It fails only when `arena` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `arena` must be a handle from this library or null, not used after this call (an arena
/// placed in caller memory may be passed again, and is reported freed).
#[no_mangle]
pub unsafe extern "C" fn es_arena_free(arena: *mut EsArena) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<SlotArena>(arena) }
}
