//! A GGUF model file's experts for the GPU runner ([`GgufExperts`]): the model's shape read from
//! the file, its expert stacks left in place in a read-only memory map.
//!
//! Every MoE layer of the file must have separate gate, up and down stacks of one weight format
//! the kernels read (F32, BF16, Q8_0, Q4_K or Q6_K), the same shape in every layer, and the file must name the
//! router's top-k (`{arch}.expert_used_count`). The runner numbers the MoE layers 0, 1, … in
//! block order; [`GgufExperts::blocks`] maps them back to the file's block numbers.

use std::path::Path;

use expertslab::gguf::GgufModel;
use expertslab::{ExpertLayout, Projection};
use expertslab_std::{ExpertStore, SharedBytes};

use super::ModelSpec;
use crate::error::CudaError;
use crate::reference::FfnShape;

/// Says how `block`'s layout differs from the one the kernels need (that of the first block's
/// gate stack): the first projection of another shape or format, or the projection count.
fn layout_difference(block: usize, got: &ExpertLayout, expected: &ExpertLayout) -> String {
    let wanted = expected.projections();
    if got.projections().len() != wanted.len() {
        return format!("block {block}: {} expert stacks, the kernels read gate, up and down", got.projections().len());
    }
    for &(projection, want) in wanted {
        match got.find(projection) {
            Ok((_, have)) if have == &want => {}
            Ok((_, have)) => {
                return format!(
                    "block {block}: its {} stack is {} experts of {} × {} {}; the model's needs {} of {} × {} {}",
                    projection.name(),
                    have.experts(),
                    have.rows(),
                    have.cols(),
                    have.format().name(),
                    want.experts(),
                    want.rows(),
                    want.cols(),
                    want.format().name()
                )
            }
            Err(_) => return format!("block {block}: no {} stack", projection.name()),
        }
    }
    format!("block {block}: its expert stacks are not laid out as the kernels read them")
}

/// A GGUF file's experts: the [`ModelSpec`] they make, and an [`ExpertStore`] over the mapped
/// file (no byte copied) whose layer `i` is the file's `i`-th MoE block.
///
/// Every MoE layer of the file must have separate gate, up and down stacks in weight formats the
/// kernels read (F32, BF16, Q8_0, Q4_K or Q6_K; gate and up in one, down in one, as a Q4_K_M
/// file's Q4_K gate and up and Q6_K down), the same in every layer, and the file must name the
/// router's top-k (`{arch}.expert_used_count`). [`GgufExperts::blocks`] maps the layers back to
/// the file's block numbers.
#[derive(Debug, Clone)]
pub struct GgufExperts {
    spec: ModelSpec,
    store: ExpertStore,
    blocks: Vec<usize>,
    architecture: String,
}

impl GgufExperts {
    /// Maps the file at `path` read-only and reads its experts (see [`GgufExperts`]).
    /// The file must not change while any handle of the store lives.
    ///
    /// # Errors
    /// [`CudaError::Model`] naming the path and what is wrong: unreadable, not GGUF, no MoE
    /// layer, a layout or format the kernels do not read, layers of different shapes, no top-k.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CudaError> {
        let path = path.as_ref();
        let model = expertslab_std::open_gguf(path).map_err(|e| CudaError::Model(e.to_string()))?;
        Self::from_model(&model).map_err(|e| match e {
            CudaError::Model(why) => CudaError::Model(format!("{}: {why}", path.display())),
            other => CudaError::Model(format!("{}: {other}", path.display())),
        })
    }

    /// The experts of a GGUF model whose bytes are shared (a memory map, or bytes in memory).
    ///
    /// # Errors
    /// [`CudaError::Model`] as for [`GgufExperts::open`].
    pub fn from_model(model: &GgufModel<SharedBytes>) -> Result<Self, CudaError> {
        let bad = |why: String| CudaError::Model(why);
        let file = model.file().map_err(|e| bad(e.to_string()))?;
        let architecture = file.architecture().unwrap_or("unknown").to_string();
        let moe = model.moe();
        let first = moe.layers().first().ok_or_else(|| bad("no MoE layer (no blk.N.ffn_*_exps tensors)".into()))?;
        let layout = first.layout();
        let (_, gate) = layout.find(Projection::Gate).map_err(|_| {
            bad(format!(
                "block {}: the kernels read separate gate, up and down stacks; a fused gate_up stack is not read",
                first.block()
            ))
        })?;
        let format = gate.format();
        let down_format = layout.find(Projection::Down).map_or(format, |(_, down)| down.format());
        if let Some(other) = [format, down_format].into_iter().find(|&f| !expertslab_std::ffn::reads(f)) {
            return Err(bad(format!(
                "block {}: experts in {}; the kernels read f32, bf16, q8_0, q4_K and q6_K",
                first.block(),
                other.name(),
            )));
        }
        let top_k = moe
            .expert_used_count()
            .ok_or_else(|| bad(format!("no {architecture}.expert_used_count (the router's top-k)")))?;
        let top_k = usize::try_from(top_k).map_err(|_| bad(format!("top-k {top_k}")))?;
        let spec = ModelSpec {
            experts: layout.experts(),
            layers: moe.layers().len(),
            shape: FfnShape { down_format, ..FfnShape::new(gate.cols(), gate.rows(), top_k, format) },
            seed: 1,
        };
        if top_k == 0 || top_k > spec.experts {
            return Err(bad(format!("top-k {top_k} of {} experts", spec.experts)));
        }
        let expected = spec.layout()?;
        let all = ExpertStore::from_gguf(model)?;
        let mut store = ExpertStore::new();
        let mut blocks = Vec::with_capacity(spec.layers);
        for (index, layer) in moe.layers().iter().enumerate() {
            if layer.layout() != &expected {
                return Err(bad(layout_difference(layer.block(), layer.layout(), &expected)));
            }
            let stacks = all.layer(layer.block()).ok_or(CudaError::UnknownLayer { layer: layer.block() })?;
            store.insert(index, stacks.clone())?;
            blocks.push(layer.block());
        }
        Ok(Self { spec, store, blocks, architecture })
    }

    /// The model the file's experts make (seed 1 for the activations the runner feeds).
    pub const fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The experts, layer `i` the file's `i`-th MoE block, every slab a slice of the mapping.
    pub const fn store(&self) -> &ExpertStore {
        &self.store
    }

    /// The file's block number of each layer.
    pub fn blocks(&self) -> &[usize] {
        &self.blocks
    }

    /// `general.architecture` (`unknown` when absent).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The store, taken apart from the rest.
    pub(crate) fn into_parts(self) -> (ModelSpec, ExpertStore) {
        (self.spec, self.store)
    }
}
