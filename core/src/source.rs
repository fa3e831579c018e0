//! Expert sources: where the slow-memory copy of each expert's bytes lives.

use heapless::Vec as FixedVec;

use crate::error::LayoutError;
use crate::layout::{ExpertLayout, Projection, MAX_PROJECTIONS};

/// Gives the bytes of one expert's slab of one projection of one layer.
///
/// Implemented over borrowed stacks ([`LayerStacks`], and slices of them, one per layer) for
/// weights in flash or a memory-mapped file; the std adapter adds owned and GGUF-backed stores.
pub trait ExpertSource {
    /// Why a slab could not be given.
    type Error;

    /// Expert `expert`'s slab of `projection` in layer `layer`.
    ///
    /// # Errors
    /// When the layer, projection or expert does not exist, or the bytes cannot be read.
    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], Self::Error>;
}

/// A source that knows its MoE layers and the expert layout of each, so a runtime can build
/// pools, arenas and migrations from it alone.
pub trait LayeredSource: ExpertSource {
    /// The layer indexes that have experts, ascending.
    fn moe_layers(&self) -> impl Iterator<Item = usize> + '_;

    /// The expert layout of layer `layer`, or `None` for a layer without experts.
    fn layer_layout(&self, layer: usize) -> Option<&ExpertLayout>;
}

/// Gives the whole stack of one projection of one layer, for runtimes that take full parameters
/// (see [`crate::ParamSink`]).
pub trait StackSource {
    /// Why a stack could not be given.
    type Error;

    /// The whole `[experts, rows, cols]` stack of `projection` in layer `layer`.
    ///
    /// # Errors
    /// When the layer or projection does not exist, or the bytes cannot be read.
    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], Self::Error>;
}

/// The borrowed stacks of one layer, one per projection of its [`ExpertLayout`], each checked
/// against its layout when built.
///
/// A slice `[LayerStacks]` is a source for a whole model: layer `l` is element `l`.
#[derive(Debug, Clone)]
pub struct LayerStacks<'a> {
    layout: ExpertLayout,
    stacks: FixedVec<&'a [u8], MAX_PROJECTIONS>,
}

impl<'a> LayerStacks<'a> {
    /// The stacks of one layer: `stacks[i]` holds projection `i` of `layout`.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] when the number of stacks differs from the layout's
    /// projections (`expected`/`actual` are counts) or when a stack's length differs from its
    /// layout's total (`expected`/`actual` are bytes).
    pub fn new(layout: ExpertLayout, stacks: &[&'a [u8]]) -> Result<Self, LayoutError> {
        let count = layout.projections().len();
        if stacks.len() != count {
            return Err(LayoutError::LengthMismatch { expected: count, actual: stacks.len() });
        }
        for ((_, stack_layout), stack) in layout.projections().iter().zip(stacks) {
            stack_layout.check_stack(stack)?;
        }
        let stacks = FixedVec::from_slice(stacks).map_err(|_| LayoutError::InvalidProjectionSet)?;
        Ok(Self { layout, stacks })
    }

    /// The layer's expert layout.
    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    fn stack_of(&self, projection: Projection) -> Result<&'a [u8], LayoutError> {
        let (index, _) = self.layout.find(projection)?;
        self.stacks.get(index).copied().ok_or(LayoutError::ProjectionMissing { projection })
    }

    fn slab_of(&self, projection: Projection, expert: usize) -> Result<&'a [u8], LayoutError> {
        let (index, layout) = self.layout.find(projection)?;
        let stack = self.stacks.get(index).ok_or(LayoutError::ProjectionMissing { projection })?;
        layout.expert_slab(stack, expert)
    }
}

fn layer_of<'s, 'a>(layers: &'s [LayerStacks<'a>], layer: usize) -> Result<&'s LayerStacks<'a>, LayoutError> {
    layers.get(layer).ok_or(LayoutError::LayerOutOfRange { layer, layers: layers.len() })
}

impl ExpertSource for [LayerStacks<'_>] {
    type Error = LayoutError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        layer_of(self, layer)?.slab_of(projection, expert)
    }
}

impl LayeredSource for [LayerStacks<'_>] {
    fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        0..self.len()
    }

    fn layer_layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.get(layer).map(LayerStacks::layout)
    }
}

impl StackSource for [LayerStacks<'_>] {
    type Error = LayoutError;

    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], LayoutError> {
        layer_of(self, layer)?.stack_of(projection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;
    use crate::layout::StackLayout;

    #[test]
    fn borrowed_stacks_give_slabs_and_stacks() {
        let s = StackLayout::new(Format::I8, 3, 1, 2).unwrap();
        let layout = ExpertLayout::fused(s, s).unwrap();
        let gate_up = [0u8, 1, 2, 3, 4, 5];
        let down = [10u8, 11, 12, 13, 14, 15];
        let layers = [LayerStacks::new(layout.clone(), &[&gate_up, &down]).unwrap()];
        let source: &[LayerStacks] = &layers;
        assert_eq!(source.expert(0, Projection::Down, 2), Ok(&down[4..6]));
        assert_eq!(source.expert(0, Projection::GateUp, 0), Ok(&gate_up[0..2]));
        assert_eq!(source.stack(0, Projection::Down), Ok(&down[..]));
        assert_eq!(source.expert(1, Projection::Down, 0), Err(LayoutError::LayerOutOfRange { layer: 1, layers: 1 }));
        assert_eq!(
            source.expert(0, Projection::Gate, 0),
            Err(LayoutError::ProjectionMissing { projection: Projection::Gate })
        );
        assert!(matches!(source.expert(0, Projection::Down, 3), Err(LayoutError::ExpertOutOfRange { .. })));
        assert_eq!(
            LayerStacks::new(layout.clone(), &[&gate_up]).unwrap_err(),
            LayoutError::LengthMismatch { expected: 2, actual: 1 }
        );
        assert_eq!(
            LayerStacks::new(layout, &[&gate_up, &down[..5]]).unwrap_err(),
            LayoutError::LengthMismatch { expected: 6, actual: 5 }
        );
    }
}
