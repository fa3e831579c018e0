//! Expert sources: where the slow-memory copy of each expert's bytes lives.

use heapless::Vec as FixedVec;

use crate::error::LayoutError;
use crate::layout::{ExpertLayout, Projection, StackLayout, MAX_PROJECTIONS};

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
/// (see [`crate::StackSink`]).
pub trait StackSource {
    /// Why a stack could not be given.
    type Error;

    /// The whole `[experts, rows, cols]` stack of `projection` in layer `layer`.
    ///
    /// # Errors
    /// When the layer or projection does not exist, or the bytes cannot be read.
    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], Self::Error>;
}

/// The bytes of one projection stack of one layer, however they are held: borrowed or owned, in
/// one piece, or (in a store of a model file that keeps each expert apart) one slab per expert.
///
/// Every `AsRef<[u8]>` type is a stack in one piece: `&[u8]` for flash or a mapped file, `Vec<u8>`,
/// or the std adapter's shared bytes.
pub trait StackBytes {
    /// Checks the bytes against `layout`: as many bytes as the layout's total.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] naming the expected and actual byte counts.
    fn check(&self, layout: &StackLayout) -> Result<(), LayoutError>;

    /// Expert `expert`'s slab as `layout` places it.
    ///
    /// # Errors
    /// [`LayoutError::ExpertOutOfRange`], or a layout error of the slab's range.
    fn expert_slab(&self, layout: &StackLayout, expert: usize) -> Result<&[u8], LayoutError>;

    /// The whole `[experts, rows, cols]` stack in one slice.
    ///
    /// # Errors
    /// When the stack cannot be given in one piece.
    fn whole(&self, layout: &StackLayout) -> Result<&[u8], LayoutError>;
}

impl<T: AsRef<[u8]> + ?Sized> StackBytes for T {
    fn check(&self, layout: &StackLayout) -> Result<(), LayoutError> {
        layout.check_stack(self.as_ref())
    }

    fn expert_slab(&self, layout: &StackLayout, expert: usize) -> Result<&[u8], LayoutError> {
        layout.expert_slab(self.as_ref(), expert)
    }

    fn whole(&self, _layout: &StackLayout) -> Result<&[u8], LayoutError> {
        Ok(self.as_ref())
    }
}

/// The stacks of one layer, one per projection of its [`ExpertLayout`], each checked against its
/// layout when built. `B` owns or borrows the bytes: `&[u8]` for flash or a mapped file, or any
/// other [`StackBytes`].
///
/// A slice `[LayerStacks]` is a source for a whole model: layer `l` is element `l`.
#[derive(Debug, Clone)]
pub struct LayerStacks<B> {
    layout: ExpertLayout,
    stacks: FixedVec<B, MAX_PROJECTIONS>,
}

impl<B: StackBytes> LayerStacks<B> {
    /// The stacks of one layer: `stacks[i]` holds projection `i` of `layout`.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] when the number of stacks differs from the layout's
    /// projections (`expected`/`actual` are counts) or when a stack's length differs from its
    /// layout's total (`expected`/`actual` are bytes).
    pub fn new(layout: ExpertLayout, stacks: &[B]) -> Result<Self, LayoutError>
    where
        B: Clone,
    {
        let count = layout.projections().len();
        if stacks.len() != count {
            return Err(LayoutError::LengthMismatch { expected: count, actual: stacks.len() });
        }
        for ((_, stack_layout), stack) in layout.projections().iter().zip(stacks) {
            stack.check(stack_layout)?;
        }
        let stacks = FixedVec::from_slice(stacks).map_err(|_| LayoutError::InvalidProjectionSet)?;
        Ok(Self { layout, stacks })
    }

    /// The same layout with every stack converted by `convert` (checked again).
    ///
    /// # Errors
    /// As [`LayerStacks::new`], for a converted stack of the wrong length.
    pub fn map<C: StackBytes>(self, mut convert: impl FnMut(B) -> C) -> Result<LayerStacks<C>, LayoutError> {
        let mut stacks = FixedVec::new();
        for ((_, stack_layout), stack) in self.layout.projections().iter().zip(self.stacks) {
            let stack = convert(stack);
            stack.check(stack_layout)?;
            stacks.push(stack).map_err(|_| LayoutError::InvalidProjectionSet)?;
        }
        Ok(LayerStacks { layout: self.layout, stacks })
    }

    /// The layer's expert layout.
    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// The bytes of `projection`'s stack.
    ///
    /// # Errors
    /// [`LayoutError::ProjectionMissing`].
    pub fn stack_bytes(&self, projection: Projection) -> Result<&B, LayoutError> {
        let (index, _) = self.layout.find(projection)?;
        self.stacks.get(index).ok_or(LayoutError::ProjectionMissing { projection })
    }

    /// The whole stack of `projection` in one slice.
    ///
    /// # Errors
    /// [`LayoutError::ProjectionMissing`], or the stack's own error (see [`StackBytes::whole`]).
    pub fn stack(&self, projection: Projection) -> Result<&[u8], LayoutError> {
        let (_, layout) = self.layout.find(projection)?;
        self.stack_bytes(projection)?.whole(layout)
    }

    /// Expert `expert`'s slab of `projection`.
    ///
    /// # Errors
    /// [`LayoutError::ProjectionMissing`] or [`LayoutError::ExpertOutOfRange`].
    pub fn slab(&self, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        let (_, layout) = self.layout.find(projection)?;
        self.stack_bytes(projection)?.expert_slab(layout, expert)
    }
}

fn layer_of<B>(layers: &[LayerStacks<B>], layer: usize) -> Result<&LayerStacks<B>, LayoutError> {
    layers.get(layer).ok_or(LayoutError::LayerOutOfRange { layer, layers: layers.len() })
}

impl<B: StackBytes> ExpertSource for [LayerStacks<B>] {
    type Error = LayoutError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        layer_of(self, layer)?.slab(projection, expert)
    }
}

impl<B: StackBytes> LayeredSource for [LayerStacks<B>] {
    fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        0..self.len()
    }

    fn layer_layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.get(layer).map(LayerStacks::layout)
    }
}

impl<B: StackBytes> StackSource for [LayerStacks<B>] {
    type Error = LayoutError;

    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], LayoutError> {
        layer_of(self, layer)?.stack(projection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    #[test]
    fn borrowed_stacks_give_slabs_and_stacks() {
        let s = StackLayout::new(Format::I8, 3, 1, 2).unwrap();
        let layout = ExpertLayout::fused(s, s).unwrap();
        let gate_up = [0u8, 1, 2, 3, 4, 5];
        let down = [10u8, 11, 12, 13, 14, 15];
        let layers = [LayerStacks::new(layout.clone(), &[&gate_up, &down]).unwrap()];
        let source: &[LayerStacks<_>] = &layers;
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
