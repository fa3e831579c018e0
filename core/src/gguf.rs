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
//! `MoeModel` and is an [`ExpertSource`] and [`StackSource`] whose layer index is the block
//! number.
//!
//! Tensor names follow llama.cpp: `blk.N.ffn_{gate,up,down}_exps.weight` (stacks of all experts,
//! GGUF `ne = [cols, rows, experts]`), `blk.N.ffn_gate_up_exps.weight` (gate rows first, then up),
//! and the older one-tensor-per-expert `blk.N.ffn_{gate,up,down}.E.weight`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::error::LayoutError;
use crate::format::Format;
use crate::layout::{ExpertLayout, Projection, StackLayout, MAX_PROJECTIONS};
use crate::name::MAX_NAME_LEN;
use crate::source::{ExpertSource, LayeredSource, StackSource};

const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a tensor has (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// How deeply metadata arrays may nest before the file is refused.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Fewest bytes one metadata entry takes: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes one tensor record takes: name length, dimension count, type, offset.
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;

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

/// A metadata value. Arrays are kept as their raw bytes; strings borrow from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum MetaValue<'a> {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    Str(&'a str),
    /// `ARRAY`: element type id, element count, and the elements' bytes as stored.
    Array {
        /// The element type id.
        elem_type: u32,
        /// Number of elements.
        count: u64,
        /// The elements as stored in the file.
        bytes: &'a [u8],
    },
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl MetaValue<'_> {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor record of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The name.
    pub name: &'a str,
    /// Dimensions, `ne[0]` first (the contiguous one); missing dimensions are 1.
    pub ne: [u64; MAX_DIMS],
    /// Number of dimensions stored.
    pub n_dims: u32,
    /// The ggml type id.
    pub ggml_type: u32,
    /// The format, `None` for a type this reader does not know.
    pub format: Option<Format>,
    /// Absolute byte offset of the data in the file.
    pub data_offset: u64,
    /// Byte size, `None` for an unknown type.
    pub size: Option<u64>,
}

impl TensorInfo<'_> {
    /// The tensor's byte range in the file. The parser checked it lies inside the file; for a
    /// `TensorInfo` built by hand, see [`GgufFile::tensor_data`].
    ///
    /// # Errors
    /// [`GgufError::Tensor`] with [`TensorProblem::UnknownType`] when the type is unknown, or
    /// [`TensorProblem::OutOfBounds`] when the range does not fit the address space.
    pub fn range(&self) -> Result<Range<usize>, GgufError> {
        let size = self.size.ok_or_else(|| tensor_error(self.name, TensorProblem::UnknownType(self.ggml_type)))?;
        let out_of_bounds = || tensor_error(self.name, TensorProblem::OutOfBounds { start: self.data_offset, size });
        let end = self.data_offset.checked_add(size).ok_or_else(out_of_bounds)?;
        let start = usize::try_from(self.data_offset).map_err(|_| out_of_bounds())?;
        let end = usize::try_from(end).map_err(|_| out_of_bounds())?;
        Ok(start..end)
    }

    /// The stored dimensions, `ne[0]` first.
    pub fn dims(&self) -> &[u64] {
        self.ne.get(..self.n_dims as usize).unwrap_or(&self.ne)
    }
}

fn tensor_error(name: &str, problem: TensorProblem) -> GgufError {
    GgufError::Tensor { name: name.into(), problem }
}

/// A parsed GGUF file: header, metadata and tensor directory, borrowing from the file's bytes.
#[derive(Debug, Clone)]
pub struct GgufFile<'a> {
    data: &'a [u8],
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(&'a str, MetaValue<'a>)>,
    tensors: Vec<TensorInfo<'a>>,
}

/// Reads little-endian values from a byte slice, every read bounds-checked.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        #[allow(
            clippy::arithmetic_side_effects,
            reason = "pos only ever holds positions inside the data: `bytes` checks the end, rewinds go back"
        )]
        let left = self.data.len() - self.pos;
        left as u64
    }

    fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let truncated = GgufError::Truncated { what, offset: self.offset() };
        let len = usize::try_from(len).map_err(|_| truncated.clone())?;
        let end = self.pos.checked_add(len).ok_or(truncated.clone())?;
        let bytes = self.data.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let bytes = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, GgufError> {
        let start = self.offset();
        let len = self.u64(what)?;
        let bytes = self.bytes(len, what)?;
        core::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset: start })
    }

    /// A count of items of at least `min_bytes` each, refused when the rest of the file cannot
    /// hold that many.
    fn count(&mut self, what: &'static str, min_bytes: u64) -> Result<u64, GgufError> {
        let offset = self.offset();
        let count = self.u64(what)?;
        #[allow(clippy::arithmetic_side_effects, reason = "the divisor is at least 1")]
        let most = self.remaining() / min_bytes.max(1);
        if count > most {
            return Err(GgufError::TooMany { what, count, offset });
        }
        Ok(count)
    }

    fn value(&mut self, type_id: u32, depth: u32) -> Result<MetaValue<'a>, GgufError> {
        let offset = self.offset();
        Ok(match type_id {
            0 => MetaValue::U8(self.array::<1>("a u8 value")?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array("an i8 value")?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("a u16 value")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("an i16 value")?)),
            4 => MetaValue::U32(self.u32("a u32 value")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("an i32 value")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("an f32 value")?)),
            7 => match self.array::<1>("a bool value")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                other => return Err(GgufError::InvalidValue { value: other.into(), offset }),
            },
            8 => MetaValue::Str(self.string("a string value")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep { offset });
                }
                let elem_type = self.u32("an array's element type")?;
                let min = match fixed_size(elem_type) {
                    Some(size) => size,
                    None if elem_type == 8 => 8,
                    None if elem_type == 9 => 12,
                    None => return Err(GgufError::InvalidValue { value: elem_type, offset }),
                };
                let count = self.count("array elements", min)?;
                let start = self.pos;
                if let Some(size) = fixed_size(elem_type) {
                    // A saturated length is refused by `bytes` as a truncation.
                    self.bytes(count.saturating_mul(size), "array elements")?;
                } else {
                    for _ in 0..count {
                        self.value(elem_type, depth.saturating_add(1))?;
                    }
                }
                MetaValue::Array { elem_type, count, bytes: self.data.get(start..self.pos).unwrap_or(&[]) }
            }
            10 => MetaValue::U64(self.u64("a u64 value")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("an i64 value")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("an f64 value")?)),
            other => return Err(GgufError::InvalidValue { value: other, offset }),
        })
    }
}

/// Bytes of one value of a fixed-size metadata type.
fn fixed_size(type_id: u32) -> Option<u64> {
    match type_id {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

impl<'a> GgufFile<'a> {
    /// Parses the header, metadata and tensor directory of `data`, checking every tensor against
    /// the file's bounds, its alignment and the other tensors.
    ///
    /// # Errors
    /// A [`GgufError`] naming the first problem and where it is.
    pub fn parse(data: &'a [u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { data, pos: 0 };
        if &c.array::<4>("the magic")? != MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = c.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count_offset = c.offset();
        let tensor_count = c.u64("the tensor count")?;
        let kv_count = c.count("metadata entries", MIN_KV_BYTES)?;

        let mut metadata: Vec<(&'a str, MetaValue<'a>)> = Vec::with_capacity(kv_count as usize);
        let mut key_offsets: Vec<(&'a str, u64)> = Vec::with_capacity(kv_count as usize);
        let mut alignment = DEFAULT_ALIGNMENT;
        for _ in 0..kv_count {
            let offset = c.offset();
            let key = c.string("a metadata key")?;
            key_offsets.push((key, offset));
            let type_id = c.u32("a metadata value type")?;
            let value = c.value(type_id, 0)?;
            if key == "general.alignment" {
                alignment = match value {
                    MetaValue::U32(a) if a.is_power_of_two() => u64::from(a),
                    MetaValue::U32(a) => return Err(GgufError::InvalidAlignment { value: a.into() }),
                    _ => return Err(GgufError::InvalidAlignment { value: type_id.into() }),
                };
            }
            metadata.push((key, value));
        }

        // A repeated key, found by sorting rather than comparing every pair.
        key_offsets.sort_unstable();
        if let Some(pair) = key_offsets.windows(2).find(|w| matches!(w, [a, b] if a.0 == b.0)) {
            let offset = pair.iter().map(|&(_, o)| o).max().unwrap_or(0);
            return Err(GgufError::DuplicateKey { offset });
        }

        if tensor_count > c.remaining() / MIN_TENSOR_BYTES {
            return Err(GgufError::TooMany { what: "tensors", count: tensor_count, offset: tensor_count_offset });
        }
        let mut records = Vec::with_capacity(tensor_count as usize);
        for index in 0..tensor_count as usize {
            records.push(read_tensor_record(&mut c, index)?);
        }
        let end_of_infos = c.offset();
        #[allow(clippy::arithmetic_side_effects, reason = "alignment is a power of two, so at least 1")]
        let mask = alignment - 1;
        let data_start = if tensor_count == 0 {
            end_of_infos
        } else {
            end_of_infos
                .checked_add(mask)
                .map(|v| v & !mask)
                .ok_or(GgufError::Truncated { what: "the data section", offset: end_of_infos })?
        };

        let file_len = data.len() as u64;
        if tensor_count > 0 && data_start > file_len {
            return Err(GgufError::Truncated { what: "the data section", offset: end_of_infos });
        }
        let mut tensors = Vec::with_capacity(records.len());
        for (name, ne, n_dims, ggml_type, offset) in records {
            tensors.push(check_tensor(name, ne, n_dims, ggml_type, offset, alignment, data_start, file_len)?);
        }
        check_unique_and_disjoint(&tensors)?;
        Ok(Self { data, version, alignment, data_start, metadata, tensors })
    }

    /// The GGUF version (2 or 3).
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// The data section's alignment.
    pub const fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub const fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The file's bytes.
    pub const fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(&'a str, MetaValue<'a>)] {
        &self.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue<'a>> {
        self.metadata.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&'a str> {
        match self.get("general.architecture") {
            Some(MetaValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer key of the architecture, `{arch}.{suffix}` (`expert_count`, …).
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.metadata
            .iter()
            .find(|(k, _)| k.strip_prefix(arch).and_then(|rest| rest.strip_prefix('.')) == Some(suffix))
            .and_then(|(_, v)| v.as_u64())
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `tensor`.
    ///
    /// # Errors
    /// [`TensorProblem::UnknownType`] for a tensor of an unknown type, [`TensorProblem::OutOfBounds`]
    /// for one that does not lie inside this file (a `TensorInfo` of another file, or built by
    /// hand).
    pub fn tensor_data(&self, tensor: &TensorInfo<'_>) -> Result<&'a [u8], GgufError> {
        let range = tensor.range()?;
        self.data.get(range).ok_or_else(|| {
            let (start, size) = (tensor.data_offset, tensor.size.unwrap_or(0));
            tensor_error(tensor.name, TensorProblem::OutOfBounds { start, size })
        })
    }

    /// The MoE layers of the file: every block with expert tensors.
    ///
    /// # Errors
    /// [`GgufError::Moe`] when a block's expert tensors do not form a layer,
    /// [`GgufError::Tensor`] when one has an unknown type.
    pub fn moe(&self) -> Result<MoeModel, GgufError> {
        MoeModel::from_file(self)
    }
}

type Record<'a> = (&'a str, [u64; MAX_DIMS], u32, u32, u64);

fn read_tensor_record<'a>(c: &mut Cursor<'a>, index: usize) -> Result<Record<'a>, GgufError> {
    let start = c.offset();
    let len = c.u64("a tensor name")?;
    if len >= MAX_NAME_LEN as u64 {
        return Err(GgufError::NameTooLong { index, len });
    }
    c.pos = start as usize;
    let name = c.string("a tensor name")?;
    let n_dims = c.u32("a tensor's dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(tensor_error(name, TensorProblem::TooManyDims(n_dims)));
    }
    let mut ne = [1u64; MAX_DIMS];
    for d in ne.iter_mut().take(n_dims as usize) {
        *d = c.u64("a tensor dimension")?;
    }
    let ggml_type = c.u32("a tensor type")?;
    let offset = c.u64("a tensor offset")?;
    Ok((name, ne, n_dims, ggml_type, offset))
}

#[allow(clippy::too_many_arguments)]
fn check_tensor<'a>(
    name: &'a str,
    ne: [u64; MAX_DIMS],
    n_dims: u32,
    ggml_type: u32,
    offset: u64,
    alignment: u64,
    data_start: u64,
    file_len: u64,
) -> Result<TensorInfo<'a>, GgufError> {
    let fail = |problem| tensor_error(name, problem);
    if ne.contains(&0) {
        return Err(fail(TensorProblem::BadDims));
    }
    if !offset.is_multiple_of(alignment) {
        return Err(fail(TensorProblem::Misaligned(offset)));
    }
    let data_offset =
        data_start.checked_add(offset).ok_or(fail(TensorProblem::OutOfBounds { start: offset, size: 0 }))?;
    let format = Format::from_ggml_type(ggml_type).ok();
    let size = match format {
        None => None,
        Some(format) => {
            let block = format.block();
            let [ne0, ne1, ne2, ne3] = ne;
            if !ne0.is_multiple_of(u64::from(block.elems())) {
                return Err(fail(TensorProblem::NotWholeBlocks));
            }
            #[allow(clippy::arithmetic_side_effects, reason = "a block holds at least one element")]
            let blocks = ne0 / u64::from(block.elems());
            let size = blocks
                .checked_mul(u64::from(block.bytes()))
                .and_then(|v| v.checked_mul(ne1))
                .and_then(|v| v.checked_mul(ne2))
                .and_then(|v| v.checked_mul(ne3))
                .ok_or(fail(TensorProblem::BadDims))?;
            match data_offset.checked_add(size) {
                Some(end) if end <= file_len => {}
                _ => return Err(fail(TensorProblem::OutOfBounds { start: data_offset, size })),
            }
            Some(size)
        }
    };
    Ok(TensorInfo { name, ne, n_dims, ggml_type, format, data_offset, size })
}

fn check_unique_and_disjoint(tensors: &[TensorInfo<'_>]) -> Result<(), GgufError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    let name_of = |i: &usize| tensors.get(*i).map_or("", |t| t.name);
    order.sort_unstable_by_key(name_of);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            if name_of(a) == name_of(b) {
                return Err(tensor_error(name_of(b), TensorProblem::Duplicate));
            }
        }
    }
    let mut spans: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        // Tensors of unknown types have no size, so no span; every end was checked against the file.
        .filter_map(|(i, t)| Some((t.data_offset, t.data_offset.checked_add(t.size?)?, i)))
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if let [(_, end, a), (start, _, b)] = pair {
            if start < end {
                return Err(GgufError::TensorsOverlap { first: name_of(a).into(), second: name_of(b).into() });
            }
        }
    }
    Ok(())
}

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
    /// The block number (`blk.N`), which is the layer index of [`GgufModel`] as a source.
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
/// owner of the bytes (see [`GgufModel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeModel {
    layers: Vec<MoeLayer>,
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
    fn from_file(file: &GgufFile<'_>) -> Result<Self, GgufError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small GGUF writer for tests: metadata entries and tensors laid out as ggml does.
    #[derive(Default)]
    struct Writer {
        version: u32,
        kv: Vec<u8>,
        kv_count: u64,
        tensors: Vec<(String, Vec<u64>, u32, usize)>,
        alignment: u64,
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    impl Writer {
        fn new() -> Self {
            Self { version: 3, alignment: 32, ..Self::default() }
        }

        fn kv(mut self, key: &str, type_id: u32, value: &[u8]) -> Self {
            string(&mut self.kv, key);
            self.kv.extend_from_slice(&type_id.to_le_bytes());
            self.kv.extend_from_slice(value);
            self.kv_count += 1;
            self
        }

        fn kv_str(self, key: &str, value: &str) -> Self {
            let mut v = Vec::new();
            string(&mut v, value);
            self.kv(key, 8, &v)
        }

        fn kv_u32(self, key: &str, value: u32) -> Self {
            self.kv(key, 4, &value.to_le_bytes())
        }

        /// A tensor of `format` with dims `ne`; its bytes are filled with its index.
        fn tensor(mut self, name: &str, ne: &[u64], format: Format) -> Self {
            let size =
                ne.iter().product::<u64>() as usize / format.block().elems() as usize * format.block().bytes() as usize;
            self.tensors.push((name.into(), ne.to_vec(), format.ggml_type().unwrap(), size));
            self
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(b"GGUF");
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&self.kv_count.to_le_bytes());
            out.extend_from_slice(&self.kv);
            let align = |v: usize| v.div_ceil(self.alignment as usize) * self.alignment as usize;
            let mut offset = 0usize;
            for (name, ne, type_id, size) in &self.tensors {
                string(&mut out, name);
                out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
                for d in ne {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&type_id.to_le_bytes());
                out.extend_from_slice(&(offset as u64).to_le_bytes());
                offset = align(offset + size);
            }
            out.resize(align(out.len()), 0);
            for (index, (_, _, _, size)) in self.tensors.iter().enumerate() {
                let start = out.len();
                out.resize(start + size, index as u8 + 1);
                out.resize(align(out.len()), 0);
            }
            out
        }
    }

    fn moe_writer() -> Writer {
        Writer::new()
            .kv_str("general.architecture", "qwen2moe")
            .kv_u32("qwen2moe.expert_count", 4)
            .kv_u32("qwen2moe.expert_used_count", 2)
            .tensor("token_embd.weight", &[64, 10], Format::F32)
            .tensor("blk.0.ffn_gate.weight", &[64, 16], Format::F32)
            .tensor("blk.1.ffn_gate_exps.weight", &[64, 16, 4], Format::Q8_0)
            .tensor("blk.1.ffn_up_exps.weight", &[64, 16, 4], Format::Q8_0)
            .tensor("blk.1.ffn_down_exps.weight", &[16, 64, 4], Format::F16)
            .tensor("blk.2.ffn_gate_up_exps.weight", &[64, 32, 4], Format::BF16)
            .tensor("blk.2.ffn_down_exps.weight", &[16, 64, 4], Format::F32)
    }

    #[test]
    fn a_moe_file_parses_into_layers_and_slabs() {
        let bytes = moe_writer().build();
        let file = GgufFile::parse(&bytes).unwrap();
        assert_eq!((file.version(), file.alignment(), file.tensors().len()), (3, 32, 7));
        assert_eq!(file.architecture(), Some("qwen2moe"));
        assert_eq!(file.arch_u64("expert_count"), Some(4));
        assert!(file.data_start().is_multiple_of(32));
        let moe = file.moe().unwrap();
        assert_eq!((moe.expert_count(), moe.expert_used_count()), (Some(4), Some(2)));
        let blocks: Vec<usize> = moe.layers().iter().map(MoeLayer::block).collect();
        assert_eq!(blocks, [1, 2]);
        let layer1 = moe.layer(1).unwrap().layout();
        let names: Vec<&str> = layer1.projections().iter().map(|(p, _)| p.name()).collect();
        assert_eq!(names, ["gate", "up", "down"]);
        assert_eq!(layer1.find(Projection::Gate).unwrap().1.expert_bytes(), 16 * 2 * 34);
        let fused: Vec<&str> = moe.layer(2).unwrap().layout().projections().iter().map(|(p, _)| p.name()).collect();
        assert_eq!(fused, ["gate_up", "down"]);

        let model = GgufModel::new(bytes.as_slice()).unwrap();
        let gate = file.tensor("blk.1.ffn_gate_exps.weight").unwrap();
        let slab = model.expert(1, Projection::Gate, 3).unwrap();
        let stride = 16 * 2 * 34;
        assert_eq!(slab, &bytes[gate.data_offset as usize + 3 * stride..][..stride]);
        assert!(slab.iter().all(|&b| b == 3)); // the writer fills tensor 2 with 3s
        assert_eq!(model.stack(2, Projection::Down).unwrap().len(), 16 * 64 * 4 * 4);
        assert_eq!(model.expert(0, Projection::Gate, 0), Err(LayoutError::LayerOutOfRange { layer: 0, layers: 3 }));
        assert_eq!(
            model.expert(2, Projection::Gate, 0),
            Err(LayoutError::ProjectionMissing { projection: Projection::Gate })
        );
        assert!(matches!(model.expert(1, Projection::Up, 4), Err(LayoutError::ExpertOutOfRange { .. })));
    }

    #[test]
    fn legacy_per_expert_tensors_form_a_layer() {
        let mut w = Writer::new();
        for e in 0..3 {
            for p in ["gate", "up", "down"] {
                w = w.tensor(&alloc::format!("blk.0.ffn_{p}.{e}.weight"), &[32, 8], Format::Q4_0);
            }
        }
        let bytes = w.build();
        let model = GgufModel::new(bytes.as_slice()).unwrap();
        let layer = model.moe().layer(0).unwrap();
        assert!(matches!(layer.placements()[0], Placement::PerExpert(ref r) if r.len() == 3));
        let file = model.file().unwrap();
        let t = file.tensor("blk.0.ffn_up.2.weight").unwrap();
        assert_eq!(model.expert(0, Projection::Up, 2).unwrap(), file.tensor_data(t).unwrap());
        // Not one stack: a full-stack push is refused rather than copying.
        assert!(model.stack(0, Projection::Up).is_err());

        let gap = Writer::new()
            .tensor("blk.0.ffn_down.0.weight", &[32, 8], Format::Q4_0)
            .tensor("blk.0.ffn_down.2.weight", &[32, 8], Format::Q4_0)
            .build();
        assert_eq!(
            GgufModel::new(gap.as_slice()).unwrap_err(),
            GgufError::Moe { block: 0, problem: MoeProblem::MissingExpert(1) }
        );
        let mixed = Writer::new()
            .tensor("blk.0.ffn_down.0.weight", &[32, 8], Format::Q4_0)
            .tensor("blk.0.ffn_down_exps.weight", &[32, 8, 1], Format::Q4_0)
            .build();
        assert_eq!(
            GgufModel::new(mixed.as_slice()).unwrap_err(),
            GgufError::Moe { block: 0, problem: MoeProblem::MixedLayouts }
        );
    }

    #[test]
    fn header_errors_name_what_and_where() {
        let good = moe_writer().build();
        assert_eq!(GgufFile::parse(b"GGUX").unwrap_err(), GgufError::BadMagic);
        let mut v1 = good.clone();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(GgufFile::parse(&v1).unwrap_err(), GgufError::UnsupportedVersion { version: 1 });
        let mut big_endian = good.clone();
        big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(GgufFile::parse(&big_endian), Err(GgufError::UnsupportedVersion { .. })));
        let mut v2 = good.clone();
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(GgufFile::parse(&v2).is_ok());

        let mut many_kv = good.clone();
        many_kv[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            GgufFile::parse(&many_kv),
            Err(GgufError::TooMany { what: "metadata entries", offset: 16, .. })
        ));
        let mut many_tensors = good.clone();
        many_tensors[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(GgufFile::parse(&many_tensors), Err(GgufError::TooMany { what: "tensors", offset: 8, .. })));
        // The first key's length reaches past the file.
        let mut long_key = good.clone();
        long_key[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
        assert_eq!(
            GgufFile::parse(&long_key).unwrap_err(),
            GgufError::Truncated { what: "a metadata key", offset: 32 }
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let good = moe_writer().build();
        // Under Miri (slow) a sample of the cuts; natively every one.
        let step = if cfg!(miri) { 97 } else { 1 };
        for len in (0..good.len()).step_by(step) {
            let result = GgufModel::new(&good[..len]);
            assert!(result.is_err(), "a file cut at {len} of {} bytes parsed", good.len());
        }
    }

    #[test]
    fn metadata_values_are_checked() {
        let bad_bool = Writer::new().kv("flag", 7, &[2]).build();
        assert!(matches!(GgufFile::parse(&bad_bool), Err(GgufError::InvalidValue { value: 2, .. })));
        let bad_type = Writer::new().kv("x", 13, &[0; 8]).build();
        assert!(matches!(GgufFile::parse(&bad_type), Err(GgufError::InvalidValue { value: 13, .. })));
        let dup = Writer::new().kv_u32("a", 1).kv_u32("a", 2).build();
        assert!(matches!(GgufFile::parse(&dup), Err(GgufError::DuplicateKey { .. })));
        let bad_utf8 = Writer::new().kv("k", 8, &[1, 0, 0, 0, 0, 0, 0, 0, 0xFF]).build();
        assert!(matches!(GgufFile::parse(&bad_utf8), Err(GgufError::InvalidUtf8 { .. })));

        // Arrays: fixed-size elements, strings, and nesting (skipped, depth-limited).
        let mut strings = Vec::new();
        strings.extend_from_slice(&8u32.to_le_bytes());
        strings.extend_from_slice(&2u64.to_le_bytes());
        string(&mut strings, "ab");
        string(&mut strings, "c");
        let mut u16s = Vec::new();
        u16s.extend_from_slice(&2u32.to_le_bytes());
        u16s.extend_from_slice(&3u64.to_le_bytes());
        u16s.extend_from_slice(&[1, 0, 2, 0, 3, 0]);
        let file_bytes = Writer::new().kv("s", 9, &strings).kv("n", 9, &u16s).build();
        let file = GgufFile::parse(&file_bytes).unwrap();
        assert!(matches!(file.get("s"), Some(MetaValue::Array { elem_type: 8, count: 2, .. })));
        assert!(matches!(file.get("n"), Some(MetaValue::Array { elem_type: 2, count: 3, bytes }) if bytes.len() == 6));
        let mut nested = Vec::new();
        for _ in 0..6 {
            nested.extend_from_slice(&9u32.to_le_bytes());
            nested.extend_from_slice(&1u64.to_le_bytes());
        }
        nested.extend_from_slice(&0u32.to_le_bytes());
        nested.extend_from_slice(&0u64.to_le_bytes());
        let deep = Writer::new().kv("deep", 9, &nested).build();
        assert!(matches!(GgufFile::parse(&deep), Err(GgufError::NestingTooDeep { .. })));
        let mut huge = Vec::new();
        huge.extend_from_slice(&4u32.to_le_bytes());
        huge.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let huge = Writer::new().kv("huge", 9, &huge).build();
        assert!(matches!(GgufFile::parse(&huge), Err(GgufError::TooMany { what: "array elements", .. })));
    }

    #[test]
    fn alignment_must_be_a_u32_power_of_two() {
        let mut w = moe_writer().kv_u32("general.alignment", 64);
        w.alignment = 64;
        let file_bytes = w.build();
        let file = GgufFile::parse(&file_bytes).unwrap();
        assert_eq!(file.alignment(), 64);
        assert!(file.tensors().iter().all(|t| (t.data_offset - file.data_start()).is_multiple_of(64)));
        let three = Writer::new().kv_u32("general.alignment", 48).build();
        assert_eq!(GgufFile::parse(&three).unwrap_err(), GgufError::InvalidAlignment { value: 48 });
        let wrong_type = Writer::new().kv("general.alignment", 10, &64u64.to_le_bytes()).build();
        assert_eq!(GgufFile::parse(&wrong_type).unwrap_err(), GgufError::InvalidAlignment { value: 10 });
    }

    /// Offset of the first tensor record's fields, for patching: the writer puts records right
    /// after the metadata.
    fn patch_record(bytes: &mut [u8], kv_len: usize, name_len: usize, n_dims: usize, field: &str, value: &[u8]) {
        let record = 24 + kv_len;
        let at = match field {
            "n_dims" => record + 8 + name_len,
            "ne0" => record + 8 + name_len + 4,
            "type" => record + 8 + name_len + 4 + 8 * n_dims,
            "offset" => record + 8 + name_len + 4 + 8 * n_dims + 4,
            _ => unreachable!(),
        };
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    #[test]
    fn tensor_records_are_checked() {
        let w = Writer::new().tensor("t", &[32, 2], Format::F32).tensor("u", &[32, 2], Format::F32);
        let good = w.build();
        let problem = |bytes: &[u8]| match GgufFile::parse(bytes) {
            Err(GgufError::Tensor { name, problem }) => (name, problem),
            other => panic!("expected a tensor error, got {other:?}"),
        };
        let mut bad = good.clone();
        patch_record(&mut bad, 0, 1, 2, "n_dims", &5u32.to_le_bytes());
        assert_eq!(problem(&bad), ("t".into(), TensorProblem::TooManyDims(5)));
        let mut bad = good.clone();
        patch_record(&mut bad, 0, 1, 2, "ne0", &0u64.to_le_bytes());
        assert_eq!(problem(&bad).1, TensorProblem::BadDims);
        let mut bad = good.clone();
        patch_record(&mut bad, 0, 1, 2, "ne0", &(u64::MAX / 2).to_le_bytes());
        assert_eq!(problem(&bad).1, TensorProblem::BadDims);
        let mut bad = good.clone();
        patch_record(&mut bad, 0, 1, 2, "offset", &8u64.to_le_bytes());
        assert_eq!(problem(&bad).1, TensorProblem::Misaligned(8));
        let mut bad = good.clone();
        patch_record(&mut bad, 0, 1, 2, "offset", &(1u64 << 20).to_le_bytes());
        assert!(matches!(problem(&bad).1, TensorProblem::OutOfBounds { .. }));
        let mut bad = good.clone();
        patch_record(&mut bad, 0, 1, 2, "ne0", &33u64.to_le_bytes());
        patch_record(&mut bad, 0, 1, 2, "type", &8u32.to_le_bytes());
        assert_eq!(problem(&bad).1, TensorProblem::NotWholeBlocks);

        // Second record's offset moved onto the first tensor.
        let mut overlap = good.clone();
        let second = 24 + (8 + 1 + 4 + 16 + 4 + 8);
        overlap[second + 8 + 1 + 4 + 16 + 4..][..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(GgufFile::parse(&overlap), Err(GgufError::TensorsOverlap { .. })));

        let dup = Writer::new().tensor("t", &[32], Format::F32).tensor("t", &[32], Format::F32).build();
        assert_eq!(problem(&dup), ("t".into(), TensorProblem::Duplicate));
        let long = "x".repeat(64);
        let long = Writer::new().tensor(&long, &[32], Format::F32).build();
        assert_eq!(GgufFile::parse(&long).unwrap_err(), GgufError::NameTooLong { index: 0, len: 64 });
    }

    #[test]
    fn unknown_types_are_listed_and_refused_where_used() {
        let mut bytes = Writer::new()
            .tensor("blk.0.ffn_down_exps.weight", &[32, 2, 2], Format::F32)
            .tensor("other", &[32], Format::F32)
            .build();
        // Make the second tensor's type unknown (40-byte record of a 5-byte name, 1 dim).
        let second = 24 + (8 + 26 + 4 + 24 + 4 + 8);
        bytes[second + 8 + 5 + 4 + 8..][..4].copy_from_slice(&31u32.to_le_bytes());
        let file = GgufFile::parse(&bytes).unwrap();
        let other = file.tensor("other").unwrap();
        assert_eq!((other.format, other.size), (None, None));
        assert_eq!(
            file.tensor_data(other).unwrap_err(),
            GgufError::Tensor { name: "other".into(), problem: TensorProblem::UnknownType(31) }
        );
        assert!(file.moe().is_ok());
        // An expert tensor of an unknown type refuses the MoE view.
        bytes[24 + 8 + 26 + 4 + 24..][..4].copy_from_slice(&1000u32.to_le_bytes());
        let file = GgufFile::parse(&bytes).unwrap();
        assert!(matches!(file.moe(), Err(GgufError::Tensor { problem: TensorProblem::UnknownType(1000), .. })));
    }

    #[test]
    fn tensor_records_built_by_hand_are_checked_where_used() {
        let bytes = Writer::new().tensor("t", &[32], Format::F32).build();
        let file = GgufFile::parse(&bytes).unwrap();
        let t = file.tensor("t").unwrap();
        assert_eq!(file.tensor_data(t).unwrap().len(), 128);
        let out_of_bounds =
            |start, size| GgufError::Tensor { name: "t".into(), problem: TensorProblem::OutOfBounds { start, size } };
        // Past the end of the address space, and past the end of this file.
        let wrapped = TensorInfo { data_offset: u64::MAX - 1, ..t.clone() };
        assert_eq!(wrapped.range().unwrap_err(), out_of_bounds(u64::MAX - 1, 128));
        assert_eq!(file.tensor_data(&wrapped).unwrap_err(), out_of_bounds(u64::MAX - 1, 128));
        let beyond = TensorInfo { data_offset: bytes.len() as u64, ..t.clone() };
        assert_eq!(file.tensor_data(&beyond).unwrap_err(), out_of_bounds(bytes.len() as u64, 128));
    }

    #[test]
    fn a_missing_data_section_is_truncation_even_for_unknown_types() {
        let mut bytes = Writer::new().tensor("t", &[32], Format::F32).build();
        // Type 31 is unknown, so the tensor's size cannot be checked; the data section still must exist.
        let record = 24 + 8 + 1 + 4 + 8;
        bytes[record..record + 4].copy_from_slice(&31u32.to_le_bytes());
        let infos_end = record + 4 + 8;
        assert!(GgufFile::parse(&bytes[..infos_end + 8]).is_ok());
        assert_eq!(
            GgufFile::parse(&bytes[..infos_end]).unwrap_err(),
            GgufError::Truncated { what: "the data section", offset: infos_end as u64 }
        );
    }

    #[test]
    fn expert_count_is_cross_checked() {
        let bytes = Writer::new()
            .kv_str("general.architecture", "mix")
            .kv_u32("mix.expert_count", 8)
            .tensor("blk.3.ffn_down_exps.weight", &[32, 2, 4], Format::F32)
            .build();
        assert_eq!(
            GgufModel::new(bytes.as_slice()).unwrap_err(),
            GgufError::Moe { block: 3, problem: MoeProblem::ExpertCount { tensors: 4, metadata: 8 } }
        );
        let flat = Writer::new().tensor("blk.0.ffn_up_exps.weight", &[32, 2], Format::F32).build();
        assert_eq!(
            GgufModel::new(flat.as_slice()).unwrap_err(),
            GgufError::Moe { block: 0, problem: MoeProblem::NotThreeDimensional }
        );
    }

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
