//! Element formats: plain scalars and GGML block-quantized types.
//!
//! Every format is described by its *block shape*: how many elements one block holds and how many
//! bytes it takes. Plain formats are blocks of one element (`F32` is `1 × 4 bytes`); GGML's
//! quantized formats pack 32 or 256 elements into a fixed-size block (`Q4_K` is `256 × 144 bytes`).
//! A row of `cols` elements is `cols / block_elems` whole blocks, so `cols` must be a multiple of
//! the block size. The table follows ggml's `type_traits` (ids are GGML's `ggml_type` values, the
//! ones stored in GGUF tensor infos).

use crate::error::LayoutError;

/// The shape of one block of a format: elements per block and bytes per block.
///
/// Both are non-zero; construct one with [`BlockShape::new`] to describe a format the table does
/// not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BlockShape {
    elems: u32,
    bytes: u32,
}

impl BlockShape {
    /// A block of `elems` elements stored in `bytes` bytes.
    ///
    /// # Errors
    /// [`LayoutError::InvalidBlockShape`] when either is zero.
    pub const fn new(elems: u32, bytes: u32) -> Result<Self, LayoutError> {
        if elems == 0 || bytes == 0 {
            return Err(LayoutError::InvalidBlockShape { elems, bytes });
        }
        Ok(Self { elems, bytes })
    }

    /// Elements in one block.
    pub const fn elems(self) -> u32 {
        self.elems
    }

    /// Bytes of one block.
    pub const fn bytes(self) -> u32 {
        self.bytes
    }
}

macro_rules! formats {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $elems:literal, $bytes:literal; )*) => {
        /// The storage format of a weight stack's elements.
        ///
        /// Plain formats (`F32`, `F16`, `BF16`, `I8`, …) and GGML block-quantized formats, with
        /// GGML's type ids and names, plus [`Format::Custom`] for any other block shape.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[non_exhaustive]
        #[allow(non_camel_case_types)]
        pub enum Format {
            $( $(#[$doc])* $variant, )*
            /// A format outside the table, given by its block shape.
            Custom(BlockShape),
        }

        impl Format {
            /// Every format of the table, in GGML type-id order (without [`Format::Custom`]).
            pub const ALL: &'static [Format] = &[$(Format::$variant,)*];

            /// The block shape: elements and bytes per block.
            pub const fn block(self) -> BlockShape {
                match self {
                    $( Format::$variant => BlockShape { elems: $elems, bytes: $bytes }, )*
                    Format::Custom(shape) => shape,
                }
            }

            /// GGML's type id (`ggml_type`), or `None` for [`Format::Custom`].
            pub const fn ggml_type(self) -> Option<u32> {
                match self {
                    $( Format::$variant => Some($id), )*
                    Format::Custom(_) => None,
                }
            }

            /// The name as ggml spells it (`"f32"`, `"q4_K"`, `"iq4_nl"`, …); `"custom"` for
            /// [`Format::Custom`].
            pub const fn name(self) -> &'static str {
                match self {
                    $( Format::$variant => $name, )*
                    Format::Custom(_) => "custom",
                }
            }

            /// The format ggml names `name` (`"f32"`, `"q4_K"`, …; case-sensitive as ggml spells
            /// it), or `None` for names outside the table.
            pub fn from_name(name: &str) -> Option<Format> {
                // A search of the table by type id rather than a `match` on the names: the same
                // answer in a fraction of the code (names are parsed at setup).
                (0..=Self::MAX_GGML_TYPE)
                    .filter_map(|id| Format::from_ggml_type(id).ok())
                    .find(|format| format.name() == name)
            }

            /// The largest GGML type id of the table.
            const MAX_GGML_TYPE: u32 = {
                let mut max = 0;
                $( max = max_of(max, $id); )*
                max
            };

            /// The format of GGML type id `id`.
            ///
            /// # Errors
            /// [`LayoutError::UnknownGgmlType`] for ids this table does not know, including
            /// the ids GGML retired (31–33, 36–38: the interleaved repacks that are never stored
            /// in files).
            pub const fn from_ggml_type(id: u32) -> Result<Format, LayoutError> {
                match id {
                    $( $id => Ok(Format::$variant), )*
                    _ => Err(LayoutError::UnknownGgmlType { id }),
                }
            }
        }
    };
}

/// The larger of `a` and `b` (`Ord::max` is not `const`).
const fn max_of(a: u32, b: u32) -> u32 {
    if a > b {
        a
    } else {
        b
    }
}

formats! {
    /// 32-bit IEEE float.
    F32 = 0, "f32", 1, 4;
    /// 16-bit IEEE float.
    F16 = 1, "f16", 1, 2;
    /// GGML Q4_0: 32 elements, f16 scale + 16 bytes of nibbles.
    Q4_0 = 2, "q4_0", 32, 18;
    /// GGML Q4_1: 32 elements, f16 scale and min + 16 bytes of nibbles.
    Q4_1 = 3, "q4_1", 32, 20;
    /// GGML Q5_0: 32 elements.
    Q5_0 = 6, "q5_0", 32, 22;
    /// GGML Q5_1: 32 elements.
    Q5_1 = 7, "q5_1", 32, 24;
    /// GGML Q8_0: 32 elements, f16 scale + 32 signed bytes.
    Q8_0 = 8, "q8_0", 32, 34;
    /// GGML Q8_1: 32 elements (an activation format, listed for completeness).
    Q8_1 = 9, "q8_1", 32, 36;
    /// GGML Q2_K: 256-element super-block.
    Q2_K = 10, "q2_K", 256, 84;
    /// GGML Q3_K: 256-element super-block.
    Q3_K = 11, "q3_K", 256, 110;
    /// GGML Q4_K: 256-element super-block.
    Q4_K = 12, "q4_K", 256, 144;
    /// GGML Q5_K: 256-element super-block.
    Q5_K = 13, "q5_K", 256, 176;
    /// GGML Q6_K: 256-element super-block.
    Q6_K = 14, "q6_K", 256, 210;
    /// GGML Q8_K: 256-element super-block.
    Q8_K = 15, "q8_K", 256, 292;
    /// GGML IQ2_XXS.
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    /// GGML IQ2_XS.
    IQ2_XS = 17, "iq2_xs", 256, 74;
    /// GGML IQ3_XXS.
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    /// GGML IQ1_S.
    IQ1_S = 19, "iq1_s", 256, 50;
    /// GGML IQ4_NL: 32 elements, f16 scale + 16 bytes of non-linear nibbles.
    IQ4_NL = 20, "iq4_nl", 32, 18;
    /// GGML IQ3_S.
    IQ3_S = 21, "iq3_s", 256, 110;
    /// GGML IQ2_S.
    IQ2_S = 22, "iq2_s", 256, 82;
    /// GGML IQ4_XS.
    IQ4_XS = 23, "iq4_xs", 256, 136;
    /// 8-bit signed integer.
    I8 = 24, "i8", 1, 1;
    /// 16-bit signed integer.
    I16 = 25, "i16", 1, 2;
    /// 32-bit signed integer.
    I32 = 26, "i32", 1, 4;
    /// 64-bit signed integer.
    I64 = 27, "i64", 1, 8;
    /// 64-bit IEEE float.
    F64 = 28, "f64", 1, 8;
    /// GGML IQ1_M.
    IQ1_M = 29, "iq1_m", 256, 56;
    /// bfloat16.
    BF16 = 30, "bf16", 1, 2;
    /// GGML TQ1_0 (ternary).
    TQ1_0 = 34, "tq1_0", 256, 54;
    /// GGML TQ2_0 (ternary).
    TQ2_0 = 35, "tq2_0", 256, 66;
    /// MXFP4: 32 elements, one E8M0 exponent byte + 16 bytes of E2M1 nibbles.
    MXFP4 = 39, "mxfp4", 32, 17;
    /// NVFP4: 64 elements, four UE4M3 scales + 32 bytes of nibbles.
    NVFP4 = 40, "nvfp4", 64, 36;
}

impl Format {
    /// A format outside the table with `elems` elements in `bytes` bytes per block.
    ///
    /// # Errors
    /// [`LayoutError::InvalidBlockShape`] when either is zero.
    pub const fn custom(elems: u32, bytes: u32) -> Result<Format, LayoutError> {
        match BlockShape::new(elems, bytes) {
            Ok(shape) => Ok(Format::Custom(shape)),
            Err(e) => Err(e),
        }
    }

    /// Whether a block holds more than one element (a quantized format).
    pub const fn is_block_quantized(self) -> bool {
        self.block().elems > 1
    }

    /// Bytes of a row of `cols` elements.
    ///
    /// # Errors
    /// [`LayoutError::NotWholeBlocks`] when `cols` is not a multiple of the block size,
    /// [`LayoutError::Overflow`] when the byte count does not fit `usize`.
    pub fn row_bytes(self, cols: usize) -> Result<usize, LayoutError> {
        let block = self.block();
        let elems = block.elems as usize;
        if !cols.is_multiple_of(elems) {
            return Err(LayoutError::NotWholeBlocks { cols, block_elems: block.elems });
        }
        #[allow(clippy::arithmetic_side_effects, reason = "elems > 0: `BlockShape::new` refuses zero")]
        let blocks = cols / elems;
        blocks.checked_mul(block.bytes as usize).ok_or(LayoutError::Overflow)
    }
}

impl core::fmt::Display for Format {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Format::Custom(shape) => write!(f, "custom({}x{}B)", shape.elems, shape.bytes),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for (i, f) in Format::ALL.iter().enumerate() {
            let id = f.ggml_type().unwrap();
            assert_eq!(Format::from_ggml_type(id), Ok(*f));
            assert_eq!(Format::from_name(f.name()), Some(*f));
            for g in &Format::ALL[i + 1..] {
                assert_ne!(g.ggml_type(), Some(id));
                assert_ne!(g.name(), f.name());
            }
        }
    }

    #[test]
    fn table_matches_ggml_sizes() {
        let expect = [
            (Format::F32, 1, 4),
            (Format::F16, 1, 2),
            (Format::BF16, 1, 2),
            (Format::I8, 1, 1),
            (Format::Q4_0, 32, 18),
            (Format::Q4_1, 32, 20),
            (Format::Q5_0, 32, 22),
            (Format::Q5_1, 32, 24),
            (Format::Q8_0, 32, 34),
            (Format::Q2_K, 256, 84),
            (Format::Q3_K, 256, 110),
            (Format::Q4_K, 256, 144),
            (Format::Q5_K, 256, 176),
            (Format::Q6_K, 256, 210),
            (Format::Q8_K, 256, 292),
            (Format::IQ4_NL, 32, 18),
            (Format::MXFP4, 32, 17),
        ];
        for (f, e, b) in expect {
            assert_eq!((f.block().elems(), f.block().bytes()), (e, b), "{f}");
        }
    }

    #[test]
    fn unknown_names_are_none() {
        assert_eq!(Format::from_name("q4_k"), None);
        assert_eq!(Format::from_name("custom"), None);
    }

    #[test]
    fn unknown_and_retired_ids_are_errors() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 41, 1000, u32::MAX] {
            assert_eq!(Format::from_ggml_type(id), Err(LayoutError::UnknownGgmlType { id }));
        }
    }

    #[test]
    fn row_bytes_follow_ggml_row_size() {
        assert_eq!(Format::Q4_K.row_bytes(4096), Ok(2304));
        assert_eq!(Format::Q6_K.row_bytes(14336), Ok(11760));
        assert_eq!(Format::F32.row_bytes(7), Ok(28));
        assert_eq!(Format::Q8_0.row_bytes(33), Err(LayoutError::NotWholeBlocks { cols: 33, block_elems: 32 }));
        assert_eq!(Format::F64.row_bytes(usize::MAX), Err(LayoutError::Overflow));
    }

    #[test]
    fn custom_shapes_are_validated() {
        assert!(Format::custom(0, 4).is_err());
        assert!(Format::custom(4, 0).is_err());
        let f = Format::custom(16, 9).unwrap();
        assert_eq!(f.row_bytes(32), Ok(18));
        assert_eq!(f.ggml_type(), None);
    }
}
