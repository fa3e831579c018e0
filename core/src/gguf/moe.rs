//! MoE layer detection: the expert stacks of every block, found by tensor name.

use alloc::vec::Vec;
use core::ops::Range;

use super::directory::{GgufFile, TensorInfo};
use super::error::{tensor_error, GgufError, MoeProblem, TensorProblem};
use crate::error::LayoutError;
use crate::layout::{ExpertLayout, Projection, StackLayout, MAX_PROJECTIONS};

/// Where one projection of an MoE layer lives in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// One tensor stacking every expert: its byte range.
    Stacked(Range<usize>),
    /// One tensor per expert: their byte ranges, by expert.
    PerExpert(Vec<Range<usize>>),
}

/// The expert tensors of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeLayer {
    block: usize,
    layout: ExpertLayout,
    placements: heapless::Vec<Placement, MAX_PROJECTIONS>,
}

impl MoeLayer {
    /// The block number (`blk.N`), which is the layer index of [`GgufModel`](super::GgufModel) as a source.
    pub const fn block(&self) -> usize {
        self.block
    }

    /// The layer's expert layout: its projections in order (gate or gate_up, up, down).
    pub const fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// Where each projection lives, in the layout's order.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    fn slab_range(&self, projection: Projection, expert: usize) -> Result<Range<usize>, LayoutError> {
        let (index, stack) = self.layout.find(projection)?;
        match self.placements.get(index) {
            Some(Placement::Stacked(range)) => {
                let slab = stack.expert_range(expert)?;
                #[allow(
                    clippy::arithmetic_side_effects,
                    reason = "the stack's tensor is exactly the layout's length, so the slab lies inside it"
                )]
                let in_file = range.start + slab.start..range.start + slab.end;
                Ok(in_file)
            }
            Some(Placement::PerExpert(ranges)) => {
                ranges.get(expert).cloned().ok_or(LayoutError::ExpertOutOfRange { expert, experts: ranges.len() })
            }
            None => Err(LayoutError::ProjectionMissing { projection }),
        }
    }

    fn stack_range(&self, projection: Projection) -> Result<Range<usize>, LayoutError> {
        let (index, _) = self.layout.find(projection)?;
        match self.placements.get(index) {
            Some(Placement::Stacked(range)) => Ok(range.clone()),
            // Per-expert tensors are not one contiguous stack.
            _ => Err(LayoutError::ProjectionMissing { projection }),
        }
    }
}

/// The MoE layers of a GGUF file, as byte ranges: no borrow of the file, so it can sit beside any
/// owner of the bytes (see [`GgufModel`](super::GgufModel)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeModel {
    pub(super) layers: Vec<MoeLayer>,
    expert_count: Option<u64>,
    expert_used_count: Option<u64>,
}

/// Recognizes expert tensor names: `(block, projection, Some(expert))` for per-expert tensors.
fn expert_tensor(name: &str) -> Option<(usize, Projection, Option<usize>)> {
    let rest = name.strip_prefix("blk.")?;
    let (block, rest) = rest.split_once('.')?;
    let block = block.parse().ok()?;
    let rest = rest.strip_prefix("ffn_")?.strip_suffix(".weight")?;
    let projection = |p: &str| match p {
        "gate" => Some(Projection::Gate),
        "up" => Some(Projection::Up),
        "down" => Some(Projection::Down),
        "gate_up" => Some(Projection::GateUp),
        _ => None,
    };
    if let Some(p) = rest.strip_suffix("_exps") {
        return Some((block, projection(p)?, None));
    }
    let (p, expert) = rest.split_once('.')?;
    let p = projection(p).filter(|p| *p != Projection::GateUp)?;
    Some((block, p, Some(expert.parse().ok()?)))
}

const PROJECTION_ORDER: [Projection; 4] = [Projection::GateUp, Projection::Gate, Projection::Up, Projection::Down];

/// An expert tensor of the directory, with where it belongs.
struct ExpertTensor<'t, 'a> {
    block: usize,
    /// Position of the projection in [`PROJECTION_ORDER`].
    order: usize,
    projection: Projection,
    /// The expert of a per-expert tensor; `None` for a stack.
    expert: Option<usize>,
    tensor: &'t TensorInfo<'a>,
}

impl MoeModel {
    pub(super) fn from_file(file: &GgufFile<'_>) -> Result<Self, GgufError> {
        let expert_count = file.arch_u64("expert_count");
        // Every expert tensor once, grouped by block, then projection, then expert.
        let mut entries: Vec<ExpertTensor<'_, '_>> = file
            .tensors()
            .iter()
            .filter_map(|tensor| {
                let (block, projection, expert) = expert_tensor(tensor.name)?;
                let order = PROJECTION_ORDER.iter().position(|&p| p == projection)?;
                Some(ExpertTensor { block, order, projection, expert, tensor })
            })
            .collect();
        entries.sort_unstable_by_key(|e| (e.block, e.order, e.expert));
        let mut layers = Vec::new();
        for block in entries.chunk_by(|a, b| a.block == b.block) {
            layers.push(Self::build_layer(block, expert_count)?);
        }
        Ok(Self { layers, expert_count, expert_used_count: file.arch_u64("expert_used_count") })
    }

    /// The layer of one block's expert tensors (sorted by projection, then expert).
    fn build_layer(entries: &[ExpertTensor<'_, '_>], expert_count: Option<u64>) -> Result<MoeLayer, GgufError> {
        let block = entries.first().map_or(0, |e| e.block);
        let moe = |problem| GgufError::Moe { block, problem };
        let mut stacks: heapless::Vec<(Projection, StackLayout), MAX_PROJECTIONS> = heapless::Vec::new();
        let mut placements = heapless::Vec::new();
        for group in entries.chunk_by(|a, b| a.order == b.order) {
            let Some(projection) = group.first().map(|e| e.projection) else { continue };
            let stacked = group.iter().find(|e| e.expert.is_none()).map(|e| e.tensor);
            let per_expert: Vec<(usize, &TensorInfo<'_>)> =
                group.iter().filter_map(|e| e.expert.map(|x| (x, e.tensor))).collect();
            let (stack, placement) = match (stacked, per_expert.is_empty()) {
                (None, true) => continue,
                (Some(_), false) => return Err(moe(MoeProblem::MixedLayouts)),
                (Some(t), true) => {
                    if t.n_dims != 3 {
                        return Err(moe(MoeProblem::NotThreeDimensional));
                    }
                    (stack_layout(t, t.ne[2], block)?, Placement::Stacked(t.range()?))
                }
                (None, false) => {
                    let mut ranges = Vec::with_capacity(per_expert.len());
                    for (position, (e, t)) in per_expert.iter().enumerate() {
                        if *e != position {
                            return Err(moe(MoeProblem::MissingExpert(position)));
                        }
                        let first = per_expert.first().map(|(_, f)| *f).unwrap_or(t);
                        if t.n_dims != 2 || t.ggml_type != first.ggml_type || t.ne != first.ne {
                            return Err(moe(MoeProblem::InconsistentExperts));
                        }
                        ranges.push(t.range()?);
                    }
                    let first = per_expert.first().map(|(_, t)| *t).ok_or(moe(MoeProblem::MissingExpert(0)))?;
                    (stack_layout(first, per_expert.len() as u64, block)?, Placement::PerExpert(ranges))
                }
            };
            if let Some(metadata) = expert_count {
                if stack.experts() as u64 != metadata {
                    return Err(moe(MoeProblem::ExpertCount { tensors: stack.experts() as u64, metadata }));
                }
            }
            // At most MAX_PROJECTIONS projections are tried, the capacity of both lists.
            let _ = stacks.push((projection, stack));
            let _ = placements.push(placement);
        }
        let layout = ExpertLayout::new(&stacks).map_err(|e| moe(MoeProblem::Layout(e)))?;
        Ok(MoeLayer { block, layout, placements })
    }

    /// The MoE layers, by ascending block number.
    pub fn layers(&self) -> &[MoeLayer] {
        &self.layers
    }

    /// The layer of block `block`.
    pub fn layer(&self, block: usize) -> Option<&MoeLayer> {
        self.layers.iter().find(|l| l.block == block)
    }

    /// `{arch}.expert_count`, if the file has it.
    pub const fn expert_count(&self) -> Option<u64> {
        self.expert_count
    }

    /// `{arch}.expert_used_count` (the router's top-k), if the file has it.
    pub const fn expert_used_count(&self) -> Option<u64> {
        self.expert_used_count
    }

    /// The byte range of expert `expert`'s slab of `projection` in block `block`.
    ///
    /// # Errors
    /// [`LayoutError::LayerOutOfRange`] when the block has no experts,
    /// [`LayoutError::ProjectionMissing`] or [`LayoutError::ExpertOutOfRange`].
    pub fn slab_range(&self, block: usize, projection: Projection, expert: usize) -> Result<Range<usize>, LayoutError> {
        self.moe_layer(block)?.slab_range(projection, expert)
    }

    /// The byte range of the whole stack of `projection` in block `block`.
    ///
    /// # Errors
    /// As [`MoeModel::slab_range`]; [`LayoutError::ProjectionMissing`] also for a projection
    /// stored one tensor per expert, which is not one contiguous stack.
    pub fn stack_range(&self, block: usize, projection: Projection) -> Result<Range<usize>, LayoutError> {
        self.moe_layer(block)?.stack_range(projection)
    }

    fn moe_layer(&self, block: usize) -> Result<&MoeLayer, LayoutError> {
        let layers = self.layers.last().map_or(0, |l| l.block.saturating_add(1));
        self.layer(block).ok_or(LayoutError::LayerOutOfRange { layer: block, layers })
    }
}

fn stack_layout(t: &TensorInfo<'_>, experts: u64, block: usize) -> Result<StackLayout, GgufError> {
    let format = t.format.ok_or_else(|| tensor_error(t.name, TensorProblem::UnknownType(t.ggml_type)))?;
    let dim = |v: u64| usize::try_from(v).map_err(|_| tensor_error(t.name, TensorProblem::BadDims));
    StackLayout::new(format, dim(experts)?, dim(t.ne[1])?, dim(t.ne[0])?)
        .map_err(|e| GgufError::Moe { block, problem: MoeProblem::Layout(e) })
}

impl GgufFile<'_> {
    /// The MoE layers of the file: every block with expert tensors.
    ///
    /// # Errors
    /// [`GgufError::Moe`] when a block's expert tensors do not form a layer,
    /// [`GgufError::Tensor`] when one has an unknown type.
    pub fn moe(&self) -> Result<MoeModel, GgufError> {
        MoeModel::from_file(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_expert_tensors_are_recognized() {
        assert_eq!(expert_tensor("blk.12.ffn_gate_exps.weight"), Some((12, Projection::Gate, None)));
        assert_eq!(expert_tensor("blk.0.ffn_gate_up_exps.weight"), Some((0, Projection::GateUp, None)));
        assert_eq!(expert_tensor("blk.3.ffn_down.7.weight"), Some((3, Projection::Down, Some(7))));
        for other in [
            "blk.1.ffn_gate_inp.weight",
            "blk.1.ffn_gate_exps.bias",
            "blk.x.ffn_up_exps.weight",
            "blk.1.ffn_gate_up.0.weight",
            "output.weight",
            "blk.1.ffn_down_shexp.weight",
        ] {
            assert_eq!(expert_tensor(other), None, "{other}");
        }
    }
}
