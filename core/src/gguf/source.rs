//! A GGUF file's bytes with its MoE layers as an expert source.

use core::ops::Range;

use super::directory::GgufFile;
use super::error::GgufError;
use super::moe::{MoeLayer, MoeModel};
use crate::error::LayoutError;
use crate::layout::{ExpertLayout, Projection};
use crate::source::{ExpertSource, LayeredSource, StackSource};

/// A GGUF file's bytes (any owner: a slice, a `Vec`, a memory map) with its MoE layers: an
/// [`ExpertSource`] and [`StackSource`] whose slabs borrow from the bytes. The layer index is the
/// block number.
#[derive(Debug, Clone)]
pub struct GgufModel<D> {
    data: D,
    moe: MoeModel,
}

impl<D: AsRef<[u8]>> GgufModel<D> {
    /// Parses `data` and locates its MoE layers.
    ///
    /// # Errors
    /// As [`GgufFile::parse`] and [`GgufFile::moe`].
    pub fn new(data: D) -> Result<Self, GgufError> {
        let moe = GgufFile::parse(data.as_ref())?.moe()?;
        Ok(Self { data, moe })
    }

    /// The directory of the file (parsed again: cheap, and keeps this type free of borrows).
    ///
    /// # Errors
    /// Never for a model built by [`GgufModel::new`]; the bytes were checked then.
    pub fn file(&self) -> Result<GgufFile<'_>, GgufError> {
        GgufFile::parse(self.data.as_ref())
    }

    /// The MoE layers.
    pub const fn moe(&self) -> &MoeModel {
        &self.moe
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// The owner of the file's bytes.
    pub const fn data(&self) -> &D {
        &self.data
    }

    fn slice(&self, range: Range<usize>) -> Result<&[u8], LayoutError> {
        let actual = self.data.as_ref().len();
        self.data.as_ref().get(range.clone()).ok_or(LayoutError::LengthMismatch { expected: range.end, actual })
    }
}

impl<D: AsRef<[u8]>> ExpertSource for GgufModel<D> {
    type Error = LayoutError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        self.slice(self.moe.slab_range(layer, projection, expert)?)
    }
}

impl<D: AsRef<[u8]>> LayeredSource for GgufModel<D> {
    fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.moe.layers.iter().map(MoeLayer::block)
    }

    fn layer_layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.moe.layer(layer).map(MoeLayer::layout)
    }
}

impl<D: AsRef<[u8]>> StackSource for GgufModel<D> {
    type Error = LayoutError;

    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], LayoutError> {
        self.slice(self.moe.stack_range(layer, projection)?)
    }
}
