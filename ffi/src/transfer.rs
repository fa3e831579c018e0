//! Moving experts: sources ([`EsSource`]) and sinks ([`EsSink`]) given as C callbacks or over
//! caller memory, [`es_migrate`] and the step call [`es_step`].

use core::ffi::c_void;

use expertslab::{
    migrate, ArenaSink, ExpertLayout, ExpertSource, LayerStacks, LayoutError, MigrateError, MigrateFailure, Projection,
    SlotArena, SlotSink, SlotWrite, StepError,
};

use crate::handle::{self, Failed, Handle, Keeper, Object, OrKeep};
use crate::layout::{buffer_status, EsArena, EsExpertLayout};
use crate::pool::{ids_of, plan_of, pool_status, EsPlan, EsPool};
use crate::status::EsStatus;
use crate::text::{Reason, Text};
use crate::types::{EsMigrateStats, EsProjection, EsStep, EsStepStats};

/// Gives expert `expert`'s slab of projection `projection` (an `EsProjection` value) in layer
/// `layer`: writes a pointer to its bytes to `*bytes` and their count to `*length`, and returns 0.
/// The bytes must stay valid and unchanged until the call that asked for them returns. Any
/// other return value is a failure (`ES_STATUS_SOURCE_FAILED`; the value is in the error text).
pub type EsSourceExpertFn = Option<
    unsafe extern "C" fn(
        context: *mut c_void,
        layer: usize,
        projection: u32,
        expert: usize,
        bytes: *mut *const u8,
        length: *mut usize,
    ) -> i32,
>;

/// A source as C callbacks: `expert` (required) is called with `context`. A callback must not
/// call this library with the handles of the call it runs in (the pool, plan, layout, source or
/// sink of that `es_migrate` or `es_step`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsSourceCallbacks {
    /// Passed to the callback unchanged.
    pub context: *mut c_void,
    /// Gives one slab.
    pub expert: EsSourceExpertFn,
}

/// Where one slab goes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsSlotWrite {
    /// The layer.
    pub layer: usize,
    /// The slot within the layer.
    pub slot: usize,
    /// The projection (an `EsProjection` value).
    pub projection: u32,
    /// The projection's position in the expert layout.
    pub index: usize,
}

/// Writes `length` bytes (one expert's slab of one projection) to `*write`; returns 0 on
/// success, anything else on failure (`ES_STATUS_SINK_FAILED`). A sink that copies
/// asynchronously starts the copy here and waits in its finish callback.
pub type EsSinkWriteFn = Option<
    unsafe extern "C" fn(context: *mut c_void, write: *const EsSlotWrite, bytes: *const u8, length: usize) -> i32,
>;

/// Completes every write into slot `slot` of layer `layer`; returns 0 once the slot's bytes are
/// final, anything else on failure. The pool commits the slot's expert only after this returned 0.
pub type EsSinkFinishFn = Option<unsafe extern "C" fn(context: *mut c_void, layer: usize, slot: usize) -> i32>;

/// A sink as C callbacks: `write` is required, `finish` may be null (nothing to wait for). As
/// for a source, a callback must not call this library with the handles of the call it runs in.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsSinkCallbacks {
    /// Passed to the callbacks unchanged.
    pub context: *mut c_void,
    /// Writes one slab.
    pub write: EsSinkWriteFn,
    /// Finishes one slot, or null.
    pub finish: EsSinkFinishFn,
}

/// Where expert bytes come from: C callbacks or stacks in caller memory (opaque).
pub struct EsSource {
    _opaque: [u8; 0],
}

/// Where expert bytes go: C callbacks or a slot arena over a caller buffer (opaque).
pub struct EsSink {
    _opaque: [u8; 0],
}

/// Bytes in caller memory, read through a pointer and a length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerBytes {
    ptr: *const u8,
    len: usize,
}

impl AsRef<[u8]> for CallerBytes {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: built by `es_source_from_stacks` from a non-null pointer checked to be
        // readable for `len` bytes by the caller's contract, which also keeps the bytes valid
        // and unchanged for the source's life.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A source's object.
// One per handle, built at setup: boxing the stacks would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Source {
    Callbacks(EsSourceCallbacks),
    Stacks { layer: usize, stacks: LayerStacks<CallerBytes> },
}

impl Object for Source {
    const KIND: handle::EsKind = handle::EsKind::Source;
    type Opaque = EsSource;
}

/// Why a source gave no slab.
#[derive(Debug)]
pub(crate) enum SourceError {
    Callback(i32),
    NoBytes,
    Layer { asked: usize, held: usize },
    Layout(LayoutError),
}

impl Reason for SourceError {
    fn write(&self, text: &mut Text<'_>) {
        match self {
            Self::Callback(code) => {
                text.put("the source callback returned ").int(*code);
            }
            Self::NoBytes => {
                text.put("the source callback gave a null pointer for a nonzero length");
            }
            Self::Layer { asked, held } => {
                text.put("layer ").num(*asked).put(" asked of a source holding layer ").num(*held);
            }
            Self::Layout(e) => e.write(text),
        }
    }
}

/// The core's `Display` of a migration failure prints the source's reason inside its own.
#[cfg(not(target_os = "none"))]
impl core::fmt::Display for SourceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        crate::text::fmt_reason(self, f)
    }
}

impl ExpertSource for Source {
    type Error = SourceError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], SourceError> {
        match self {
            Self::Callbacks(callbacks) => {
                let Some(give) = callbacks.expert else { return Err(SourceError::Callback(-1)) };
                let mut bytes: *const u8 = core::ptr::null();
                let mut length = 0usize;
                let projection = EsProjection::to_u32(projection);
                // SAFETY: a C function the caller registered for exactly this call, given its own
                // context and two valid out-pointers to locals.
                let code = unsafe { give(callbacks.context, layer, projection, expert, &mut bytes, &mut length) };
                if code != 0 {
                    return Err(SourceError::Callback(code));
                }
                if length == 0 {
                    return Ok(&[]);
                }
                if bytes.is_null() || length > isize::MAX as usize {
                    return Err(SourceError::NoBytes);
                }
                // SAFETY: not null, and by the callback's contract readable for `length` bytes
                // and unchanged until this migration returns (the slab is copied before that).
                Ok(unsafe { core::slice::from_raw_parts(bytes, length) })
            }
            Self::Stacks { layer: held, stacks } => {
                if layer != *held {
                    return Err(SourceError::Layer { asked: layer, held: *held });
                }
                stacks.slab(projection, expert).map_err(SourceError::Layout)
            }
        }
    }
}

/// Builds a source from C callbacks and writes its handle, allocated by the library, to `*out`.
/// Takes no handle and no message buffer, so its failures keep no text: a null or misaligned
/// `callbacks` or `out`, or a null `expert` callback, is `ES_STATUS_NULL_POINTER` or
/// `ES_STATUS_MISALIGNED` alone.
///
/// # Safety
/// `callbacks` readable; `out` writable; the callback must keep the contract of
/// [`EsSourceExpertFn`] for the source's life.
#[no_mangle]
pub unsafe extern "C" fn es_source_from_callbacks(
    callbacks: *const EsSourceCallbacks,
    out: *mut *mut EsSource,
) -> EsStatus {
    handle::no_handle(|why| {
        // SAFETY: forwarded contract.
        let callbacks = unsafe { handle::get(callbacks) }.or_keep(why, "`callbacks`")?;
        if callbacks.expert.is_none() {
            return Err(why.fail(EsStatus::NullPointer, "the `expert` callback is null"));
        }
        // SAFETY: forwarded contract.
        unsafe { handle::create(Source::Callbacks(callbacks), out, why) }
    })
}

/// Builds a source over one layer's stacks in caller memory (flash, a mapped file): `stacks`
/// holds `count` pointers, one per projection of `layout` in its order, each to the whole
/// `[experts, rows, cols]` stack of `lengths[i]` bytes. The bytes are not copied: they must stay
/// valid and unchanged until the source is freed. Writes its handle, allocated by the library,
/// to `*out`; failures are kept on `layout`, null or misaligned `stacks`, `lengths` or `out`
/// included.
///
/// # Safety
/// `layout` a handle from this library or null; `stacks` and `lengths` readable for `count`
/// elements, each stack readable for its length for the source's life; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn es_source_from_stacks(
    layout: *mut EsExpertLayout,
    layer: usize,
    stacks: *const *const u8,
    lengths: *const usize,
    count: usize,
    out: *mut *mut EsSource,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<ExpertLayout>(layout, |layout| {
            let pointers = handle::slice(stacks, count).or_keep(layout, "`stacks`")?;
            let lengths = handle::slice(lengths, count).or_keep(layout, "`lengths`")?;
            let expected = layout.value.projections().len();
            if count != expected {
                return Err(layout.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
                    t.num(count).put(" stacks for ").num(expected).put(" projections");
                }));
            }
            let mut bytes = [CallerBytes { ptr: core::ptr::null(), len: 0 }; expertslab::MAX_PROJECTIONS];
            for (i, ((slot, &ptr), &len)) in bytes.iter_mut().zip(pointers).zip(lengths).enumerate() {
                // Only the checks (not null, a length that fits the address space): the bytes
                // are not read here.
                handle::buffer(ptr, len).map_err(|bad| {
                    layout.fail(bad.status(), |t: &mut Text<'_>| {
                        t.put("stack ").num(i).put(" ");
                        bad.describe(t);
                    })
                })?;
                *slot = CallerBytes { ptr, len };
            }
            let stacks = LayerStacks::new(layout.value.clone(), bytes.get(..count).unwrap_or(&[]))
                .map_err(|e| layout.fail(EsStatus::BufferTooSmall, e))?;
            handle::create(Source::Stacks { layer, stacks }, out, layout)
        })
    }
}

/// Frees a source (null is accepted). The library allocated it, so its memory goes back: using
/// or freeing it again is undefined behaviour, which the library cannot detect.
/// It fails only when `source` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `source` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_source_free(source: *mut EsSource) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<Source>(source) }
}

/// A sink's object.
pub(crate) enum Sink {
    Callbacks(EsSinkCallbacks),
    Arena { arena: SlotArena, layer: usize, buffer: *mut u8, len: usize },
}

impl Object for Sink {
    const KIND: handle::EsKind = handle::EsKind::Sink;
    type Opaque = EsSink;
}

/// Why a sink did not take a slab.
#[derive(Debug)]
pub(crate) enum SinkError {
    Write(i32),
    Finish(i32),
    Layout(LayoutError),
}

impl Reason for SinkError {
    fn write(&self, text: &mut Text<'_>) {
        match self {
            Self::Write(code) => {
                text.put("the sink's write callback returned ").int(*code);
            }
            Self::Finish(code) => {
                text.put("the sink's finish callback returned ").int(*code);
            }
            Self::Layout(e) => e.write(text),
        }
    }
}

/// As for [`SourceError`].
#[cfg(not(target_os = "none"))]
impl core::fmt::Display for SinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        crate::text::fmt_reason(self, f)
    }
}

/// A failed migration: on hosts the core's full text (which promotion, after how many, why); on
/// firmware the core's summary, then the source's or sink's own reason.
impl Reason for MigrateFailure<SourceError, SinkError> {
    fn write(&self, text: &mut Text<'_>) {
        #[cfg(not(target_os = "none"))]
        text.display(self);
        #[cfg(target_os = "none")]
        {
            text.put(self.error.summary());
            match &self.error {
                MigrateError::Source(e) => e.write(text.put(": ")),
                MigrateError::Sink(e) => e.write(text.put(": ")),
                _ => {}
            }
        }
    }
}

/// A sink during one migration.
enum ActiveSink<'a> {
    Callbacks(EsSinkCallbacks),
    Arena(ArenaSink<'a>),
}

impl SlotSink for ActiveSink<'_> {
    type Error = SinkError;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), SinkError> {
        match self {
            Self::Callbacks(callbacks) => {
                let Some(write) = callbacks.write else { return Err(SinkError::Write(-1)) };
                let place = EsSlotWrite {
                    layer: dest.layer,
                    slot: dest.slot,
                    projection: EsProjection::to_u32(dest.projection),
                    index: dest.index,
                };
                // SAFETY: a C function the caller registered for this call, given its context, a
                // pointer to a local and a readable slab.
                let code = unsafe { write(callbacks.context, &place, bytes.as_ptr(), bytes.len()) };
                if code == 0 {
                    Ok(())
                } else {
                    Err(SinkError::Write(code))
                }
            }
            Self::Arena(sink) => sink.write(dest, bytes).map_err(SinkError::Layout),
        }
    }

    fn finish(&mut self, layer: usize, slot: usize) -> Result<(), SinkError> {
        match self {
            Self::Callbacks(EsSinkCallbacks { finish: Some(finish), context, .. }) => {
                // SAFETY: a C function the caller registered for this call, given its context.
                let code = unsafe { finish(*context, layer, slot) };
                if code == 0 {
                    Ok(())
                } else {
                    Err(SinkError::Finish(code))
                }
            }
            Self::Callbacks(_) => Ok(()),
            Self::Arena(sink) => sink.finish(layer, slot).map_err(SinkError::Layout),
        }
    }
}

/// Builds a sink from C callbacks and writes its handle, allocated by the library, to `*out`.
/// Takes no handle and no message buffer, so its failures keep no text: a null or misaligned
/// `callbacks` or `out`, or a null `write` callback, is `ES_STATUS_NULL_POINTER` or
/// `ES_STATUS_MISALIGNED` alone.
///
/// # Safety
/// `callbacks` readable; `out` writable; the callbacks must keep the contracts of
/// [`EsSinkWriteFn`] and [`EsSinkFinishFn`] for the sink's life.
#[no_mangle]
pub unsafe extern "C" fn es_sink_from_callbacks(callbacks: *const EsSinkCallbacks, out: *mut *mut EsSink) -> EsStatus {
    handle::no_handle(|why| {
        // SAFETY: forwarded contract.
        let callbacks = unsafe { handle::get(callbacks) }.or_keep(why, "`callbacks`")?;
        if callbacks.write.is_none() {
            return Err(why.fail(EsStatus::NullPointer, "the `write` callback is null"));
        }
        // SAFETY: forwarded contract.
        unsafe { handle::create(Sink::Callbacks(callbacks), out, why) }
    })
}

/// Builds a sink writing layer `layer`'s slots into the caller's slot buffer `buffer` of
/// `length` bytes as `arena` lays them out (the buffer must hold the arena's total bytes, its
/// start aligned as the arena says), and writes its handle, allocated by the library, to
/// `*out`. The library writes the buffer only during [`es_migrate`] and [`es_step`]. Failures are
/// kept on `arena`, a null `buffer` or `out` included.
///
/// The buffer's start is checked as given, also when it is empty: an arena of no slots (for a
/// layer served only from slow memory) takes `length` 0 with any `buffer` aligned as it says,
/// or a null `buffer`, which stands for an empty one.
///
/// # Safety
/// `arena` a handle from this library or null; `buffer` writable for `length` bytes until the
/// sink is freed, and not accessed by C while a migration runs; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn es_sink_from_arena(
    arena: *mut EsArena,
    layer: usize,
    buffer: *mut u8,
    length: usize,
    out: *mut *mut EsSink,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below; the slice only checks the buffer here.
    unsafe {
        handle::on::<SlotArena>(arena, |arena| {
            let start = handle::buffer_start(buffer, length, arena.value.align());
            let bytes = handle::buffer(start.cast_const(), length).or_keep(arena, "`buffer`")?;
            arena.value.check_buffer(bytes).map_err(|e| arena.fail(buffer_status(&e), e))?;
            let sink = Sink::Arena { arena: arena.value.clone(), layer, buffer: start, len: length };
            handle::create(sink, out, arena)
        })
    }
}

/// Frees a sink (null is accepted); a slot buffer stays the caller's. The library allocated the
/// sink, so its memory goes back: using or freeing it again is undefined behaviour, which the
/// library cannot detect.
/// It fails only when `sink` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `sink` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_sink_free(sink: *mut EsSink) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<Sink>(sink) }
}

/// The three handles a migration reads besides the pool, failures kept on `pool`.
///
/// # Safety
/// Each a handle from this library or null; an arena sink's buffer as `es_sink_from_arena` says.
unsafe fn parts<'a>(
    pool: &Handle<expertslab::ExpertPool>,
    plan: &Handle<expertslab::MigrationPlan>,
    layout: *const EsExpertLayout,
    source: *const EsSource,
    sink: *mut EsSink,
) -> Result<(&'a ExpertLayout, &'a Source, ActiveSink<'a>), Failed> {
    let held = [handle::Held::of(pool), handle::Held::of(plan)];
    // SAFETY: forwarded contract; memory overlapping the pool or the plan is refused unread.
    let layout = unsafe { handle::other_ref::<ExpertLayout>(layout, &held) }.or_keep(pool, "`layout`")?;
    // SAFETY: as above.
    let source = unsafe { handle::other_ref::<Source>(source, &held) }.or_keep(pool, "`source`")?;
    let held = [held[0], held[1], handle::Held::of(layout), handle::Held::of(source)];
    // SAFETY: as above, and the layout and the source too: the sink is borrowed mutably.
    let sink = unsafe { handle::other_mut::<Sink>(sink, &held) }.or_keep(pool, "`sink`")?;
    let active = match &sink.value {
        Sink::Callbacks(callbacks) => ActiveSink::Callbacks(*callbacks),
        Sink::Arena { arena, layer, buffer, len } => {
            // SAFETY: `es_sink_from_arena` checked the buffer (not null, aligned, long enough; an
            // empty one stands at an aligned address, which a slice of no bytes may); the caller
            // keeps it writable and untouched while this call runs.
            let bytes = unsafe { core::slice::from_raw_parts_mut(*buffer, *len) };
            ActiveSink::Arena(
                ArenaSink::new(arena.clone(), *layer, bytes).map_err(|e| pool.fail(buffer_status(&e), e))?,
            )
        }
    };
    Ok((&layout.value, &source.value, active))
}

/// The status of a failed promotion.
fn migrate_status(error: &MigrateError<SourceError, SinkError>) -> EsStatus {
    match error {
        MigrateError::Source(_) | MigrateError::SlabLength { .. } => EsStatus::SourceFailed,
        MigrateError::Sink(_) => EsStatus::SinkFailed,
        _ => EsStatus::PlanMismatch,
    }
}

/// Copies each promotion of `plan` from `source` into `sink` (write each slab, finish the slot)
/// and commits it to `pool` once copied. Writes what was copied to `*stats` (when not null),
/// also on failure: then the failed promotion's slot is free, every expert the pool holds is in
/// its slot, and migrating the same plan again skips what completed and retries the rest.
/// Allocates nothing.
///
/// # Safety
/// Handles from this library or null; `stats` writable or null.
#[no_mangle]
pub unsafe extern "C" fn es_migrate(
    pool: *mut EsPool,
    plan: *mut EsPlan,
    layout: *const EsExpertLayout,
    source: *const EsSource,
    sink: *mut EsSink,
    stats: *mut EsMigrateStats,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<expertslab::ExpertPool>(pool, |pool| {
            let plan = plan_of(pool, plan)?;
            let (layout, source, mut sink) = parts(pool, plan, layout, source, sink)?;
            if !stats.is_null() {
                handle::check_ptr(stats).or_keep(pool, "`stats`")?;
            }
            let (report, failure) = match migrate(&mut pool.value, &plan.value, layout, source, &mut sink) {
                Ok(report) => (report, None),
                Err(failure) => (failure.completed, Some(failure)),
            };
            if !stats.is_null() {
                handle::put(stats, report.into()).or_keep(pool, "`stats`")?;
            }
            match failure {
                None => Ok(()),
                Some(failure) => Err(pool.fail(migrate_status(&failure.error), failure)),
            }
        })
    }
}

/// One step of the pool's layer: plans from the step's `count` ids, migrates the plan's
/// promotions from `source` into `sink`, and serves the ids. Writes the step's counts to
/// `*stats` (when not null), also when a copy failed (the ids were served; the failed
/// promotion's pairs count as served in place, and stepping again retries it). Allocates nothing.
///
/// # Safety
/// Handles from this library or null; `step` readable; `ids` readable for `count` ids; `stats`
/// writable or null.
#[no_mangle]
pub unsafe extern "C" fn es_step(
    pool: *mut EsPool,
    step: *const EsStep,
    ids: *const u32,
    count: usize,
    plan: *mut EsPlan,
    layout: *const EsExpertLayout,
    source: *const EsSource,
    sink: *mut EsSink,
    stats: *mut EsStepStats,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<expertslab::ExpertPool>(pool, |pool| {
            let step = handle::get(step).or_keep(pool, "`step`")?;
            let step = step.to_step().map_err(|s| pool.fail(s, "the step's mode is not an EsMode"))?;
            let ids = ids_of(pool, ids, count)?;
            let plan = plan_of(pool, plan)?;
            let (layout, source, mut sink) = parts(pool, plan, layout, source, sink)?;
            if !stats.is_null() {
                handle::check_ptr(stats).or_keep(pool, "`stats`")?;
            }
            let result = pool.value.step(step, ids, &mut plan.value, layout, source, &mut sink);
            let counts = match &result {
                Ok(counts) => Some(*counts),
                Err(error) => error.stats().copied(),
            };
            if let (Some(counts), false) = (counts, stats.is_null()) {
                handle::put(stats, EsStepStats::from(counts)).or_keep(pool, "`stats`")?;
            }
            match result {
                Ok(_) => Ok(()),
                Err(StepError::Pool(e)) => Err(pool.fail(pool_status(&e), e)),
                Err(StepError::Migrate { failure, .. }) => Err(pool.fail(migrate_status(&failure.error), failure)),
            }
        })
    }
}
