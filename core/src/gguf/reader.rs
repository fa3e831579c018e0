//! The byte cursor: little-endian values and metadata values read from a byte slice, every read
//! bounds-checked.

use super::error::GgufError;

/// How deeply metadata arrays may nest before the file is refused.
pub(super) const MAX_ARRAY_DEPTH: u32 = 4;

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

/// Reads little-endian values from a byte slice, every read bounds-checked.
pub(super) struct Cursor<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(super) fn remaining(&self) -> u64 {
        #[allow(
            clippy::arithmetic_side_effects,
            reason = "pos only ever holds positions inside the data: `bytes` checks the end, rewinds go back"
        )]
        let left = self.data.len() - self.pos;
        left as u64
    }

    pub(super) fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let truncated = GgufError::Truncated { what, offset: self.offset() };
        let len = usize::try_from(len).map_err(|_| truncated.clone())?;
        let end = self.pos.checked_add(len).ok_or(truncated.clone())?;
        let bytes = self.data.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    pub(super) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let bytes = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub(super) fn string(&mut self, what: &'static str) -> Result<&'a str, GgufError> {
        let start = self.offset();
        let len = self.u64(what)?;
        let bytes = self.bytes(len, what)?;
        core::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset: start })
    }

    /// A count of items of at least `min_bytes` each, refused when the rest of the file cannot
    /// hold that many.
    pub(super) fn count(&mut self, what: &'static str, min_bytes: u64) -> Result<u64, GgufError> {
        let offset = self.offset();
        let count = self.u64(what)?;
        #[allow(clippy::arithmetic_side_effects, reason = "the divisor is at least 1")]
        let most = self.remaining() / min_bytes.max(1);
        if count > most {
            return Err(GgufError::TooMany { what, count, offset });
        }
        Ok(count)
    }

    pub(super) fn value(&mut self, type_id: u32, depth: u32) -> Result<MetaValue<'a>, GgufError> {
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
pub(super) fn fixed_size(type_id: u32) -> Option<u64> {
    match type_id {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}
