//! Error types. Each is small, `#[non_exhaustive]`, implements `Display` and
//! `core::error::Error`, and derives `defmt::Format` with the `defmt` feature.

use core::fmt;

use crate::projection::Projection;

/// A layout, addressing or buffer error: dimensions, ranges, lengths and alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LayoutError {
    /// A block shape with zero elements or zero bytes.
    InvalidBlockShape {
        /// Elements per block given.
        elems: u32,
        /// Bytes per block given.
        bytes: u32,
    },
    /// A GGML type id this crate's table does not know.
    UnknownGgmlType {
        /// The id.
        id: u32,
    },
    /// `cols` is not a whole number of blocks.
    NotWholeBlocks {
        /// Columns given.
        cols: usize,
        /// Elements per block of the format.
        block_elems: u32,
    },
    /// A dimension (experts, rows, cols, slots, layers, bytes per slot) is zero where it may not be.
    ZeroDimension,
    /// A size or offset does not fit `usize` (or `u64`).
    Overflow,
    /// An expert index at or past the expert count.
    ExpertOutOfRange {
        /// The index.
        expert: usize,
        /// The expert count.
        experts: usize,
    },
    /// A row range that is empty-reversed or reaches past the row count.
    RowsOutOfRange {
        /// First row asked for.
        start: usize,
        /// One past the last row asked for.
        end: usize,
        /// The row count.
        rows: usize,
    },
    /// A slot index at or past the slot count.
    SlotOutOfRange {
        /// The index.
        slot: usize,
        /// The slot count.
        slots: usize,
    },
    /// A layer index at or past the layer count, or not the layer this object serves.
    LayerOutOfRange {
        /// The index.
        layer: usize,
        /// The layer count (or one past the only layer served).
        layers: usize,
    },
    /// Bytes whose length does not match what the layout says.
    LengthMismatch {
        /// Bytes the layout expects.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The projections of one layer disagree on the expert count.
    ExpertCountMismatch {
        /// Experts of the first projection.
        expected: usize,
        /// Experts of the projection that differs.
        actual: usize,
    },
    /// An expert layout with no projection, more than [`crate::MAX_PROJECTIONS`], a repeated
    /// projection, or a fused `gate_up` beside a separate `gate` or `up`.
    InvalidProjectionSet,
    /// The layout has no such projection.
    ProjectionMissing {
        /// The projection asked for.
        projection: Projection,
    },
    /// An alignment that is zero or not a power of two.
    AlignmentNotPowerOfTwo {
        /// The alignment given.
        align: usize,
    },
    /// A caller buffer smaller than the layout needs.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A caller buffer whose start is not aligned as the layout requires.
    BufferMisaligned {
        /// The required alignment.
        align: usize,
    },
}

impl LayoutError {
    /// A short static text naming what went wrong, without the values (for error texts written
    /// without `core::fmt`, as the C interface does on firmware); [`Display`](fmt::Display) gives
    /// the full text.
    pub const fn summary(&self) -> &'static str {
        match self {
            Self::InvalidBlockShape { .. } => "invalid block shape",
            Self::UnknownGgmlType { .. } => "unknown GGML type id",
            Self::NotWholeBlocks { .. } => "the columns are not a whole number of blocks",
            Self::ZeroDimension => "a dimension is zero",
            Self::Overflow => "size arithmetic overflows",
            Self::ExpertOutOfRange { .. } => "expert out of range",
            Self::RowsOutOfRange { .. } => "rows out of range",
            Self::SlotOutOfRange { .. } => "slot out of range",
            Self::LayerOutOfRange { .. } => "layer out of range",
            Self::LengthMismatch { .. } => "length mismatch",
            Self::ExpertCountMismatch { .. } => "projections disagree on the expert count",
            Self::InvalidProjectionSet => {
                "invalid projection set: need 1 to 4 distinct projections, and no gate_up beside gate or up"
            }
            Self::ProjectionMissing { .. } => "the layout has no such projection",
            Self::AlignmentNotPowerOfTwo { .. } => "alignment is not a power of two",
            Self::BufferTooSmall { .. } => "buffer too small",
            Self::BufferMisaligned { .. } => "buffer start is not aligned as the layout requires",
        }
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidBlockShape { elems, bytes } => {
                write!(f, "invalid block shape: {elems} elements in {bytes} bytes (both must be non-zero)")
            }
            Self::UnknownGgmlType { id } => write!(f, "unknown GGML type id {id}"),
            Self::NotWholeBlocks { cols, block_elems } => {
                write!(f, "{cols} columns are not a whole number of {block_elems}-element blocks")
            }
            Self::ZeroDimension | Self::Overflow | Self::InvalidProjectionSet => f.write_str(self.summary()),
            Self::ExpertOutOfRange { expert, experts } => {
                write!(f, "expert {expert} out of range (the layout has {experts})")
            }
            Self::RowsOutOfRange { start, end, rows } => {
                write!(f, "rows {start}..{end} out of range (the layout has {rows})")
            }
            Self::SlotOutOfRange { slot, slots } => {
                write!(f, "slot {slot} out of range (there are {slots})")
            }
            Self::LayerOutOfRange { layer, layers } => {
                write!(f, "layer {layer} out of range (serving {layers})")
            }
            Self::LengthMismatch { expected, actual } => {
                write!(f, "length mismatch: the layout needs {expected} bytes, got {actual}")
            }
            Self::ExpertCountMismatch { expected, actual } => {
                write!(f, "projections disagree on the expert count: {expected} and {actual}")
            }
            Self::ProjectionMissing { projection } => {
                write!(f, "the layout has no {} projection", projection.name())
            }
            Self::AlignmentNotPowerOfTwo { align } => {
                write!(f, "alignment {align} is not a power of two")
            }
            Self::BufferTooSmall { needed, actual } => {
                write!(f, "buffer too small: need {needed} bytes, got {actual}")
            }
            Self::BufferMisaligned { align } => {
                write!(f, "buffer start is not aligned to {align} bytes")
            }
        }
    }
}

impl core::error::Error for LayoutError {}

/// A typed view over bytes could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ViewError {
    /// The bytes do not start at the element type's alignment; use a copying read instead.
    Misaligned {
        /// Alignment the element type needs.
        align: usize,
    },
    /// The byte length is not a multiple of the element size, or does not fill the output.
    LengthMismatch {
        /// Bytes given.
        bytes: usize,
        /// Size of one element.
        elem_size: usize,
    },
    /// The element type's size is neither one element nor one block of the stack's format.
    ElementSize {
        /// Size of the element type.
        elem_size: usize,
        /// Bytes per block of the format.
        block_bytes: u32,
    },
    /// The addressing of the view failed.
    Layout(LayoutError),
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { align } => {
                write!(f, "bytes are not aligned to {align}; read them with a copy instead")
            }
            Self::LengthMismatch { bytes, elem_size } => {
                write!(f, "{bytes} bytes do not fit a whole number of {elem_size}-byte elements")
            }
            Self::ElementSize { elem_size, block_bytes } => {
                write!(f, "a {elem_size}-byte element type does not match the format ({block_bytes} bytes per block)")
            }
            Self::Layout(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for ViewError {}

impl From<LayoutError> for ViewError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

/// A pool could not be built or could not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PoolError {
    /// A layer with no experts.
    NoExperts,
    /// More experts than a pool indexes (ids are 16-bit).
    TooManyExperts {
        /// Experts asked for.
        experts: usize,
        /// The most a pool takes.
        max: usize,
    },
    /// A step with more routing ids than the per-expert counters hold.
    TooManyIds {
        /// Ids given.
        ids: usize,
        /// The most one step takes.
        max: usize,
    },
    /// An output buffer (mask) shorter than the pool needs.
    BufferTooSmall {
        /// Elements needed.
        needed: usize,
        /// Elements given.
        actual: usize,
    },
    /// An operation the pool's policy does not have (a future for a policy other than Belady).
    PolicyMismatch,
    /// A per-layer argument list whose length is not the layer count.
    LayerCountMismatch {
        /// Layers of the pool set.
        layers: usize,
        /// Entries given.
        actual: usize,
    },
    /// A layer index at or past the layers a [`crate::SharedSlotPool`] serves.
    LayerOutOfRange {
        /// The layer given.
        layer: usize,
        /// Layers the pool serves.
        layers: usize,
    },
    /// A table sized from the configuration could not be allocated (the allocator refused it).
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A policy whose code this build of the crate leaves out: a demand policy
    /// ([`crate::Policy::is_demand`]) without the crate's `demand` feature, the only feature that
    /// builds policies.
    PolicyNotBuilt {
        /// The policy's name ([`crate::Policy::name`]).
        policy: &'static str,
    },
}

impl PoolError {
    /// A short static text naming what went wrong, without the values (for error texts written
    /// without `core::fmt`, as the C interface does on firmware); [`Display`](fmt::Display) gives
    /// the full text.
    pub const fn summary(&self) -> &'static str {
        match self {
            Self::NoExperts => "a pool needs at least one expert",
            Self::TooManyExperts { .. } => "more experts than a pool indexes",
            Self::TooManyIds { .. } => "more routing ids in one step than a pool counts",
            Self::BufferTooSmall { .. } => "output buffer too small",
            Self::PolicyMismatch => "the pool's policy has no such operation",
            Self::LayerCountMismatch { .. } => "expected one entry per layer",
            Self::LayerOutOfRange { .. } => "layer past the layers the pool serves",
            Self::OutOfMemory { .. } => "could not allocate the configuration's tables",
            Self::PolicyNotBuilt { .. } => "a demand policy is not built: enable expertslab's `demand` feature",
        }
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoExperts | Self::PolicyMismatch => f.write_str(self.summary()),
            Self::TooManyExperts { experts, max } => {
                write!(f, "{experts} experts is more than a pool indexes ({max})")
            }
            Self::TooManyIds { ids, max } => {
                write!(f, "{ids} routing ids in one step is more than a pool counts ({max})")
            }
            Self::BufferTooSmall { needed, actual } => {
                write!(f, "output buffer too small: need {needed} entries, got {actual}")
            }
            Self::LayerCountMismatch { layers, actual } => {
                write!(f, "expected one entry per layer ({layers}), got {actual}")
            }
            Self::LayerOutOfRange { layer, layers } => {
                write!(f, "layer {layer} is past the {layers} layers the pool serves")
            }
            Self::OutOfMemory { bytes } => write!(f, "could not allocate {bytes} bytes for the configuration's tables"),
            Self::PolicyNotBuilt { policy } => {
                write!(f, "policy {policy} is not built: enable expertslab's `demand` feature")
            }
        }
    }
}

impl core::error::Error for PoolError {}

/// A promotion that does not fit the pool's current state (a stale or foreign plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PlanError {
    /// The plan was made for another layer.
    LayerMismatch {
        /// The plan's layer.
        plan: usize,
        /// The pool's layer.
        pool: usize,
    },
    /// The expert id is out of the pool's range.
    ExpertOutOfRange {
        /// The id.
        expert: usize,
        /// The pool's expert count.
        experts: usize,
    },
    /// The slot index is out of the pool's range.
    SlotOutOfRange {
        /// The index.
        slot: usize,
        /// The pool's slot count.
        slots: usize,
    },
    /// The expert is already resident, in another slot.
    AlreadyResident {
        /// The expert.
        expert: usize,
        /// The slot it occupies.
        slot: usize,
    },
    /// The target slot holds another expert.
    SlotOccupied {
        /// The slot.
        slot: usize,
        /// The expert it holds.
        expert: usize,
    },
    /// The plan was made before the pool's slot count last changed.
    SlotsChanged {
        /// The plan's slot-count generation.
        plan: u32,
        /// The pool's.
        pool: u32,
    },
}

impl PlanError {
    /// A short static text naming what went wrong, without the values (for error texts written
    /// without `core::fmt`, as the C interface does on firmware); [`Display`](fmt::Display) gives
    /// the full text.
    pub const fn summary(&self) -> &'static str {
        match self {
            Self::LayerMismatch { .. } => "the plan was made for another layer",
            Self::ExpertOutOfRange { .. } => "expert out of the pool's range",
            Self::SlotOutOfRange { .. } => "slot out of the pool's range",
            Self::AlreadyResident { .. } => "the expert is already resident in another slot",
            Self::SlotOccupied { .. } => "the slot holds another expert; the plan is stale",
            Self::SlotsChanged { .. } => "the plan was made before the pool's slot count changed; plan again",
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LayerMismatch { plan, pool } => {
                write!(f, "plan for layer {plan} given to the pool of layer {pool}")
            }
            Self::ExpertOutOfRange { expert, experts } => {
                write!(f, "expert {expert} out of range (the pool has {experts})")
            }
            Self::SlotOutOfRange { slot, slots } => {
                write!(f, "slot {slot} out of range (the pool has {slots})")
            }
            Self::AlreadyResident { expert, slot } => {
                write!(f, "expert {expert} is already resident in slot {slot}")
            }
            Self::SlotOccupied { slot, expert } => {
                write!(f, "slot {slot} holds expert {expert}; the plan is stale")
            }
            Self::SlotsChanged { plan, pool } => {
                write!(f, "the plan was made at slot-count generation {plan}, the pool is at {pool}; plan again")
            }
        }
    }
}

impl core::error::Error for PlanError {}

/// Why one promotion of a migration failed. `S` is the source's error, `K` the sink's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MigrateError<S, K> {
    /// The source could not give the expert's bytes.
    Source(S),
    /// The sink could not write or complete the copy.
    Sink(K),
    /// The promotion does not fit the pool's state.
    Plan(PlanError),
    /// The source gave a slab whose length is not the layout's.
    SlabLength {
        /// The projection.
        projection: Projection,
        /// Bytes the layout expects.
        expected: usize,
        /// Bytes the source gave.
        actual: usize,
    },
}

impl<S, K> MigrateError<S, K> {
    /// A short static text naming what went wrong, without the values or the source's or sink's
    /// own error (for error texts written without `core::fmt`, as the C interface does on
    /// firmware); [`Display`](fmt::Display) gives the full text.
    pub const fn summary(&self) -> &'static str {
        match self {
            Self::Source(_) => "the source failed",
            Self::Sink(_) => "the sink failed",
            Self::Plan(e) => e.summary(),
            Self::SlabLength { .. } => "the source gave a slab whose length is not the layout's",
        }
    }
}

impl<S: fmt::Display, K: fmt::Display> fmt::Display for MigrateError<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(e) => write!(f, "source: {e}"),
            Self::Sink(e) => write!(f, "sink: {e}"),
            Self::Plan(e) => write!(f, "plan: {e}"),
            Self::SlabLength { projection, expected, actual } => write!(
                f,
                "the source gave {actual} bytes for the {} slab, the layout needs {expected}",
                projection.name()
            ),
        }
    }
}

impl<S: fmt::Debug + fmt::Display, K: fmt::Debug + fmt::Display> core::error::Error for MigrateError<S, K> {}

#[cfg(test)]
mod summary_tests {
    extern crate alloc;
    use alloc::string::ToString;

    use super::*;

    #[test]
    fn a_summary_names_the_kind_and_a_plain_variant_displays_it() {
        for plain in [LayoutError::ZeroDimension, LayoutError::Overflow, LayoutError::InvalidProjectionSet] {
            assert_eq!(plain.to_string(), plain.summary());
        }
        assert_eq!(PoolError::NoExperts.to_string(), PoolError::NoExperts.summary());
        let not_built = PoolError::PolicyNotBuilt { policy: "lru" };
        assert!(not_built.summary().contains("not built") && not_built.to_string().contains("lru"));
        let plan = PlanError::SlotOccupied { slot: 1, expert: 2 };
        let migrate: MigrateError<(), ()> = MigrateError::Plan(plan);
        assert_eq!(migrate.summary(), plan.summary());
        assert_eq!(MigrateError::<(), ()>::Sink(()).summary(), "the sink failed");
        assert_eq!(LayoutError::BufferTooSmall { needed: 8, actual: 4 }.summary(), "buffer too small");
    }
}
