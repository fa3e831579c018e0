//! Expert stores: every MoE layer's projection stacks as [`SharedBytes`], cheap to clone across
//! threads and runtimes, usable as the core's [`ExpertSource`], [`StackSource`] and
//! [`LayeredSource`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use expertslab::gguf::{GgufModel, Placement};
use expertslab::{ExpertLayout, ExpertSource, LayeredSource, LayoutError, Projection, StackSource};

use crate::bytes::SharedBytes;
use crate::error::Error;

/// One layer's stacks, one per projection of its layout, each checked against it.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    layout: ExpertLayout,
    stacks: Vec<SharedBytes>,
}

impl LayerWeights {
    /// The weights of one layer: `stacks[i]` is projection `i` of `layout`.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] when the number of stacks is not the number of
    /// projections, or a stack is not its layout's length.
    pub fn new(layout: ExpertLayout, stacks: Vec<SharedBytes>) -> Result<Self, LayoutError> {
        let count = layout.projections().len();
        if stacks.len() != count {
            return Err(LayoutError::LengthMismatch { expected: count, actual: stacks.len() });
        }
        for ((_, stack_layout), stack) in layout.projections().iter().zip(&stacks) {
            stack_layout.check_stack(stack.as_bytes())?;
        }
        Ok(Self { layout, stacks })
    }

    /// The layer's expert layout.
    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// The stack of `projection`.
    ///
    /// # Errors
    /// [`LayoutError::ProjectionMissing`].
    pub fn stack(&self, projection: Projection) -> Result<&SharedBytes, LayoutError> {
        let (index, _) = self.layout.find(projection)?;
        self.stacks.get(index).ok_or(LayoutError::ProjectionMissing { projection })
    }
}

/// The expert weights of a model: one [`LayerWeights`] per MoE layer, by layer index. Cloning
/// shares every stack.
#[derive(Debug, Clone, Default)]
pub struct ExpertStore {
    layers: BTreeMap<usize, LayerWeights>,
}

impl ExpertStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets layer `layer`'s weights, returning the ones it replaces.
    pub fn insert(&mut self, layer: usize, weights: LayerWeights) -> Option<LayerWeights> {
        self.layers.insert(layer, weights)
    }

    /// Layer `layer`'s weights.
    pub fn layer(&self, layer: usize) -> Option<&LayerWeights> {
        self.layers.get(&layer)
    }

    /// Number of MoE layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the store has no layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The stores of a GGUF model whose bytes are shared: stacked expert tensors are handed out
    /// as slices of the same bytes (no copy, also of a memory map); layers stored one tensor per
    /// expert are gathered into one aligned stack per projection (a copy of those layers only).
    /// Layer indexes are block numbers.
    ///
    /// # Errors
    /// [`LayoutError`] when a range reaches past the bytes (not for a model built from them).
    pub fn from_gguf(model: &GgufModel<SharedBytes>) -> Result<Self, LayoutError> {
        let bytes = model.data();
        let mut store = Self::new();
        for layer in model.moe().layers() {
            let mut stacks = Vec::with_capacity(layer.placements().len());
            for placement in layer.placements() {
                stacks.push(match placement {
                    Placement::Stacked(range) => bytes.slice(range.clone())?,
                    Placement::PerExpert(ranges) => {
                        let mut gathered = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum());
                        for range in ranges {
                            gathered.extend_from_slice(bytes.slice(range.clone())?.as_bytes());
                        }
                        SharedBytes::copy_from(&gathered)
                    }
                });
            }
            store.insert(layer.block(), LayerWeights::new(layer.layout().clone(), stacks)?);
        }
        Ok(store)
    }

    /// Opens a GGUF file through a read-only memory map: see [`open_gguf`].
    ///
    /// # Errors
    /// As [`open_gguf`] and [`ExpertStore::from_gguf`].
    pub fn open_gguf(path: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self::from_gguf(&open_gguf(path)?)?)
    }

    fn weights(&self, layer: usize) -> Result<&LayerWeights, LayoutError> {
        let layers = self.layers.keys().next_back().map_or(0, |l| l + 1);
        self.layers.get(&layer).ok_or(LayoutError::LayerOutOfRange { layer, layers })
    }
}

/// Opens a GGUF model file through a read-only memory map and locates its MoE layers; the
/// weights stay in the file until copied into slots. The file must stay unchanged while mapped
/// (see [`SharedBytes::map_file`]).
///
/// # Errors
/// [`Error::Io`] naming the path, [`Error::Gguf`] naming what is wrong and where.
pub fn open_gguf(path: impl AsRef<Path>) -> Result<GgufModel<SharedBytes>, Error> {
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let bytes = SharedBytes::map_file(&File::open(path).map_err(io)?).map_err(io)?;
    Ok(GgufModel::new(bytes)?)
}

impl ExpertSource for ExpertStore {
    type Error = LayoutError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        let weights = self.weights(layer)?;
        let (_, stack_layout) = weights.layout.find(projection)?;
        stack_layout.expert_slab(weights.stack(projection)?.as_bytes(), expert)
    }
}

impl StackSource for ExpertStore {
    type Error = LayoutError;

    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], LayoutError> {
        Ok(self.weights(layer)?.stack(projection)?.as_bytes())
    }
}

impl LayeredSource for ExpertStore {
    fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.keys().copied()
    }

    fn layer_layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.layers.get(&layer).map(LayerWeights::layout)
    }
}
