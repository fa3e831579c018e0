//! GGUF model files (versions 2 and 3, little-endian), parsed in place over a byte slice: the
//! metadata, the tensor directory and the MoE expert stacks, without copying any weight.
//!
//! The parser is strict: every count, string, dimension and offset is checked against the bytes
//! that are actually there, so a truncated or hostile file gives a [`GgufError`] naming what and
//! where, never a panic, and nothing is allocated beyond what the file's size could justify.
//! Unknown tensor types are listed (with [`TensorInfo::format`] `None`) and refused only where a
//! tensor of that type is used.
//!
//! [`GgufFile`] is the directory; [`MoeModel`] the expert stacks of every MoE block, as byte
//! ranges of the file; [`GgufModel`] pairs a file's bytes (a slice, a memory map) with its
//! `MoeModel` and is an [`ExpertSource`](crate::ExpertSource) and [`StackSource`](crate::StackSource) whose layer index is the block
//! number.
//!
//! Tensor names follow llama.cpp: `blk.N.ffn_{gate,up,down}_exps.weight` (stacks of all experts,
//! GGUF `ne = [cols, rows, experts]`), `blk.N.ffn_gate_up_exps.weight` (gate rows first, then up),
//! and the older one-tensor-per-expert `blk.N.ffn_{gate,up,down}.E.weight`.

mod directory;
mod error;
mod moe;
mod reader;
mod source;

pub use directory::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT};
pub use error::{GgufError, MoeProblem, TensorProblem, MAX_DIMS};
pub use moe::{MoeLayer, MoeModel, Placement};
pub use reader::MetaValue;
pub use source::GgufModel;

#[cfg(test)]
mod tests;
