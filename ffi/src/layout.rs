//! Layouts and slot arenas: [`EsExpertLayout`] and [`EsArena`].

use core::ffi::c_char;

use expertslab::{ExpertLayout, Format, Projection, SlotArena, StackLayout, MAX_PROJECTIONS};

use crate::handle::{self, guard, refuse, status, Handle, Object};
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

/// The core's layout of `stacks`, or the status, with why written to `why`.
///
/// # Safety
/// `stacks` valid for `count` elements, each `format` a NUL-terminated string.
unsafe fn build_layout(
    stacks: *const EsStackLayout,
    count: usize,
    why: &mut Text<'_>,
) -> Result<ExpertLayout, EsStatus> {
    // SAFETY: forwarded contract.
    let items = unsafe { handle::slice(stacks, count) }.map_err(|s| refuse(why, s, "the stack list"))?;
    if items.is_empty() || items.len() > MAX_PROJECTIONS {
        return Err(refuse(why, EsStatus::OutOfRange, |t: &mut Text<'_>| {
            t.num(count).put(" projections; 1 to ").num(MAX_PROJECTIONS).put(" are allowed");
        }));
    }
    let placeholder =
        (Projection::Gate, StackLayout::new(Format::F32, 1, 1, 1).map_err(|e| refuse(why, EsStatus::Panic, e))?);
    let mut pairs = [placeholder; MAX_PROJECTIONS];
    for (pair, item) in pairs.iter_mut().zip(items) {
        let projection = EsProjection::from_u32(item.projection).map_err(|s| {
            refuse(why, s, |t: &mut Text<'_>| {
                t.put("projection ").num(item.projection as usize).put(" is not an EsProjection");
            })
        })?;
        // SAFETY: forwarded contract.
        let name = unsafe { handle::text(item.format) }.map_err(|s| refuse(why, s, "the format name"))?;
        let format = Format::from_name(name).ok_or_else(|| {
            refuse(why, EsStatus::InvalidArgument, |t: &mut Text<'_>| {
                t.put("unknown format \"").put(name).put("\"");
            })
        })?;
        let stack = StackLayout::new(format, item.experts, item.rows, item.cols)
            .map_err(|e| refuse(why, EsStatus::InvalidArgument, e))?;
        *pair = (projection, stack);
    }
    ExpertLayout::new(pairs.get(..items.len()).unwrap_or(&[])).map_err(|e| refuse(why, EsStatus::InvalidArgument, e))
}

/// Builds an expert layout from `count` stack layouts (one per projection, in slot order) and
/// writes its handle, allocated by the library, to `*out`.
///
/// On failure `message` (when not null) receives `message_capacity` bytes at most of why,
/// NUL-terminated: there is no handle yet to keep it.
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
        handle::build_into(
            message,
            message_capacity,
            |why| build_layout(stacks, count, why),
            |layout| handle::create(layout, out),
        )
    }
}

/// As [`es_expert_layout_new`], placing the handle in caller memory `memory` of `size` bytes,
/// aligned as [`es_handle_footprint`](crate::es_handle_footprint) says for
/// `ES_KIND_EXPERT_LAYOUT` (no allocation). Free it with [`es_expert_layout_free`] before
/// reusing the memory.
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
        handle::build_into(
            message,
            message_capacity,
            |why| build_layout(stacks, count, why),
            |layout| handle::place(memory, size, layout, out),
        )
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let layout = unsafe { handle::handle_ref::<ExpertLayout>(layout) }?;
            let l = &layout.value;
            // SAFETY: forwarded contract.
            unsafe {
                handle::put(experts, l.experts())?;
                handle::put(projections, l.projections().len())?;
                handle::put(expert_bytes, l.expert_bytes())
            }
        })())
    })
}

/// Writes the bytes of one row of projection number `index` (in the layout's order: the order
/// of the stacks it was built from) to `*row_bytes`: the columns' whole blocks of its format.
/// An `index` past the layout's projections is `ES_STATUS_OUT_OF_RANGE`, kept on `layout` (which
/// is why `layout` is not `const` here, unlike in `es_expert_layout_info`, which cannot fail on a
/// valid handle).
///
/// # Safety
/// `layout` must be a handle from this library or null; `row_bytes` writable.
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_row_bytes(
    layout: *mut EsExpertLayout,
    index: usize,
    row_bytes: *mut usize,
) -> EsStatus {
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let layout = unsafe { handle::handle_mut::<ExpertLayout>(layout) }?;
            let count = layout.value.projections().len();
            let Some((_, stack)) = layout.value.projections().get(index) else {
                return Err(layout.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
                    t.put("projection ").num(index).put(" of a layout of ").num(count);
                }));
            };
            let bytes = stack.row_bytes();
            // SAFETY: forwarded contract.
            unsafe { handle::put(row_bytes, bytes) }
        })())
    })
}

/// Frees an expert layout (null is accepted). Handles built from it keep their own copy.
///
/// # Safety
/// `layout` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_expert_layout_free(layout: *mut EsExpertLayout) -> EsStatus {
    // SAFETY: forwarded contract.
    guard(|| unsafe { handle::free::<ExpertLayout>(layout) })
}

/// The arena for `slots` slots of `layout`, each projection aligned to `align` (a power of two).
///
/// # Safety
/// `layout` a handle from this library or null.
unsafe fn build_arena(layout: *mut EsExpertLayout, slots: usize, align: usize) -> Result<SlotArena, EsStatus> {
    // SAFETY: forwarded contract.
    let layout = unsafe { handle::handle_mut::<ExpertLayout>(layout) }?;
    SlotArena::new(&layout.value, slots, align).map_err(|e| layout.fail(EsStatus::InvalidArgument, e))
}

/// Builds the slot arena of `slots` slots for experts of `layout`, every projection aligned to
/// `align` bytes (a power of two), and writes its handle, allocated by the library, to `*out`.
/// Failures are kept on `layout`.
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let arena = unsafe { build_arena(layout, slots, align) }?;
            // SAFETY: forwarded contract.
            unsafe { handle::create(arena, out) }
        })())
    })
}

/// As [`es_arena_new`], placing the handle in caller memory `memory` of `size` bytes (see
/// [`es_handle_footprint`](crate::es_handle_footprint) for `ES_KIND_ARENA`; no allocation).
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let arena = unsafe { build_arena(layout, slots, align) }?;
            // SAFETY: forwarded contract.
            unsafe { handle::place(memory, size, arena, out) }
        })())
    })
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let arena = unsafe { handle::handle_ref::<SlotArena>(arena) }?;
            // SAFETY: forwarded contract.
            unsafe {
                handle::put(total_bytes, arena.value.total_bytes())?;
                handle::put(slots, arena.value.slots())?;
                handle::put(align, arena.value.align())
            }
        })())
    })
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let arena = unsafe { handle::handle_mut::<SlotArena>(arena) }?;
            let range = range_of(arena, slot, index)?;
            // SAFETY: forwarded contract.
            unsafe {
                handle::put(offset, range.start)?;
                handle::put(length, range.len())
            }
        })())
    })
}

/// The range of projection `index` of `slot`, failures recorded on the arena.
fn range_of(arena: &mut Handle<SlotArena>, slot: usize, index: usize) -> Result<core::ops::Range<usize>, EsStatus> {
    arena.value.projection_range(slot, index).map_err(|e| arena.fail(EsStatus::OutOfRange, e))
}

/// Writes a pointer to projection number `index` of slot `slot` within the caller's slot
/// buffer `buffer` of `length` bytes to `*slab`, and its length to `*slab_length`.
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let arena = unsafe { handle::handle_mut::<SlotArena>(arena) }?;
            // SAFETY: forwarded contract.
            let bytes = unsafe { handle::slice(buffer, length) }?;
            if let Err(e) = arena.value.check_buffer(bytes) {
                return Err(arena.fail(buffer_status(&e), e));
            }
            let range = range_of(arena, slot, index)?;
            let start = bytes.get(range.clone()).ok_or(EsStatus::BufferTooSmall)?.as_ptr();
            // SAFETY: forwarded contract.
            unsafe {
                handle::put(slab, start)?;
                handle::put(slab_length, range.len())
            }
        })())
    })
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
/// # Safety
/// `arena` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_arena_free(arena: *mut EsArena) -> EsStatus {
    // SAFETY: forwarded contract.
    guard(|| unsafe { handle::free::<SlotArena>(arena) })
}
