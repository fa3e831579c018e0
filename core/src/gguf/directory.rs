//! The header, metadata and tensor directory of a GGUF file.

use alloc::vec::Vec;
use core::ops::Range;

use super::error::{tensor_error, GgufError, TensorProblem, MAX_DIMS};
use super::reader::{Cursor, MetaValue};
use crate::format::Format;
use crate::name::MAX_NAME_LEN;

const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Fewest bytes one metadata entry takes: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes one tensor record takes: name length, dimension count, type, offset.
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;

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
