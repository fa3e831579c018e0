//! What can be wrong with a GGUF file, and where.

use alloc::string::String;
use core::fmt;

use crate::error::LayoutError;

/// The most dimensions a tensor has (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// A GGUF file that cannot be read, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum GgufError {
    /// The file ends before `what`, which starts at byte `offset`.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
    },
    /// The first four bytes are not `GGUF`.
    BadMagic,
    /// A version other than 2 or 3 (a byte-swapped, big-endian file reads as a huge version).
    UnsupportedVersion {
        /// The version field.
        version: u32,
    },
    /// A count larger than the rest of the file could hold.
    TooMany {
        /// What is counted.
        what: &'static str,
        /// The count given.
        count: u64,
        /// Where the count is.
        offset: u64,
    },
    /// A string that is not UTF-8.
    InvalidUtf8 {
        /// Where the string starts.
        offset: u64,
    },
    /// A metadata value type outside GGUF's list, or a boolean other than 0 or 1.
    InvalidValue {
        /// The type id (or the boolean's byte).
        value: u32,
        /// Where it is.
        offset: u64,
    },
    /// Metadata arrays nested more deeply than this reader follows.
    NestingTooDeep {
        /// Where the innermost array starts.
        offset: u64,
    },
    /// A metadata key that appears twice.
    DuplicateKey {
        /// Where the second one starts.
        offset: u64,
    },
    /// `general.alignment` is not a `u32` power of two.
    InvalidAlignment {
        /// The value (or the value type when it is not a `u32`).
        value: u64,
    },
    /// A tensor whose record is invalid.
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        problem: TensorProblem,
    },
    /// Two tensors share bytes.
    TensorsOverlap {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
    /// A tensor name longer than ggml allows (63 bytes), at tensor record `index`.
    NameTooLong {
        /// The record's position.
        index: usize,
        /// Its length.
        len: u64,
    },
    /// The expert tensors of a block do not form an MoE layer.
    Moe {
        /// The block.
        block: usize,
        /// What is wrong.
        problem: MoeProblem,
    },
}

/// What is wrong with a tensor record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TensorProblem {
    /// More than [`MAX_DIMS`] dimensions.
    TooManyDims(u32),
    /// A zero dimension, or dimensions whose product or byte size overflows.
    BadDims,
    /// A type id this reader does not know.
    UnknownType(u32),
    /// The first dimension is not a whole number of the type's blocks.
    NotWholeBlocks,
    /// The offset is not a multiple of the file's alignment.
    Misaligned(u64),
    /// The bytes reach past the end of the file.
    OutOfBounds {
        /// Absolute start.
        start: u64,
        /// Byte size.
        size: u64,
    },
    /// The name appears twice.
    Duplicate,
}

/// What is wrong with the expert tensors of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MoeProblem {
    /// A stacked expert tensor without exactly three dimensions.
    NotThreeDimensional,
    /// A per-expert tensor without exactly two dimensions, or per-expert tensors that differ in
    /// type or shape.
    InconsistentExperts,
    /// Per-expert tensors whose expert numbers are not `0..n` without gaps.
    MissingExpert(usize),
    /// A projection given both as a stack and per expert.
    MixedLayouts,
    /// The expert count differs from `{arch}.expert_count`.
    ExpertCount {
        /// Experts in the tensors.
        tensors: u64,
        /// Experts in the metadata.
        metadata: u64,
    },
    /// The projections do not form a valid expert layout.
    Layout(LayoutError),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset } => write!(f, "file ends inside {what} starting at byte {offset}"),
            Self::BadMagic => f.write_str("not a GGUF file (the magic is not \"GGUF\")"),
            Self::UnsupportedVersion { version } => {
                write!(f, "GGUF version {version} is not supported (2 and 3 little-endian are)")
            }
            Self::TooMany { what, count, offset } => {
                write!(f, "{count} {what} at byte {offset} cannot fit in the rest of the file")
            }
            Self::InvalidUtf8 { offset } => write!(f, "string at byte {offset} is not UTF-8"),
            Self::InvalidValue { value, offset } => write!(f, "invalid metadata value {value} at byte {offset}"),
            Self::NestingTooDeep { offset } => write!(f, "metadata arrays nested too deeply at byte {offset}"),
            Self::DuplicateKey { offset } => write!(f, "duplicate metadata key at byte {offset}"),
            Self::InvalidAlignment { value } => {
                write!(f, "general.alignment {value} is not a u32 power of two")
            }
            Self::Tensor { name, problem } => write!(f, "tensor '{name}': {problem}"),
            Self::TensorsOverlap { first, second } => write!(f, "tensors '{first}' and '{second}' overlap"),
            Self::NameTooLong { index, len } => {
                write!(f, "tensor record {index}: name of {len} bytes is longer than ggml allows")
            }
            Self::Moe { block, problem } => write!(f, "block {block}: {problem}"),
        }
    }
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooManyDims(n) => write!(f, "{n} dimensions (at most {MAX_DIMS})"),
            Self::BadDims => f.write_str("a zero dimension or a size that overflows"),
            Self::UnknownType(id) => write!(f, "unknown ggml type {id}"),
            Self::NotWholeBlocks => f.write_str("first dimension is not a whole number of blocks"),
            Self::Misaligned(offset) => write!(f, "offset {offset} is not a multiple of the alignment"),
            Self::OutOfBounds { start, size } => {
                write!(f, "{size} bytes at byte {start} reach past the end of the file")
            }
            Self::Duplicate => f.write_str("name appears twice"),
        }
    }
}

impl fmt::Display for MoeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotThreeDimensional => f.write_str("a stacked expert tensor is not 3-dimensional"),
            Self::InconsistentExperts => f.write_str("per-expert tensors differ in type or shape, or are not 2-D"),
            Self::MissingExpert(e) => write!(f, "per-expert tensors skip expert {e}"),
            Self::MixedLayouts => f.write_str("a projection is given both stacked and per expert"),
            Self::ExpertCount { tensors, metadata } => {
                write!(f, "{tensors} experts in the tensors, {metadata} in expert_count")
            }
            Self::Layout(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for GgufError {}

pub(super) fn tensor_error(name: &str, problem: TensorProblem) -> GgufError {
    GgufError::Tensor { name: name.into(), problem }
}
