//! The instruction sets the host FFN is compiled for, chosen at run time. Every variant runs
//! the same code of [`super::order`] in the same order: they differ in speed, never in bits.

use expertslab::Format;

use super::blocks::{Q4K, Q6K, Q8_0};
use super::order::{silu_mul, Bf16, BLOCK, F32};
use super::rows::{Activations, RowFormat};

/// An instruction set the host FFN's inner loops run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// No vector extension assumed (on x86-64 without FMA, each fused multiply-add is a library
    /// call: correct, slow).
    Portable,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// x86-64 AVX-512 (F) with FMA.
    Avx512,
    /// AArch64 NEON (always present there).
    Neon,
}

impl Isa {
    /// The fastest instruction set this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if Self::Avx512.available() {
                return Self::Avx512;
            }
            if Self::Avx2.available() {
                return Self::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return Self::Neon;
        }
        #[allow(unreachable_code, reason = "reached on targets other than aarch64")]
        Self::Portable
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Self::Neon => true,
            #[allow(unreachable_patterns, reason = "the arms of other targets")]
            _ => false,
        }
    }

    /// Every instruction set this CPU can run.
    pub fn all_available() -> Vec<Self> {
        [Self::Portable, Self::Avx2, Self::Avx512, Self::Neon].into_iter().filter(|i| i.available()).collect()
    }

    /// The name: `portable`, `avx2`, `avx512`, `neon`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }
}

/// Asks the CPU to bring `bytes` into its caches, a cache line at a time, without waiting for
/// them: a row fetched this way while the one before it is computed arrives from memory while
/// the core computes, where the hardware's own prefetch, which runs only a few lines ahead of
/// the reads, leaves a thread alternately waiting on memory and computing. Changes nothing the
/// row computes.
#[inline(always)]
#[allow(unsafe_code, reason = "a prefetch hint, an SSE instruction every x86-64 CPU has")]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: SSE is part of x86-64; a prefetch reads nothing the program sees and cannot
        // fault, and the address is within `bytes`.
        unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Bytes of each matrix the row loops keep on their way from memory ([`prefetch`]): at least a
/// row, and the rows that make up 2 KiB, which a thread computing a few GB/s takes longer to
/// compute than a loaded server's memory takes to answer (1, 2 and 4 KiB measured; 2 the
/// fastest by a few percent, BENCHMARKS.md).
const PREFETCH_BYTES: usize = 2 << 10;

/// Rows of `rb` bytes of format `R` fetched ahead: enough for [`PREFETCH_BYTES`], at least one;
/// none for formats that do not fetch ahead ([`RowFormat::FETCH_AHEAD`]).
const fn rows_ahead<R: RowFormat>(rb: usize) -> usize {
    if !R::FETCH_AHEAD {
        return 0;
    }
    // At least one: PREFETCH_BYTES is not 0.
    PREFETCH_BYTES.div_ceil(if rb == 0 { 1 } else { rb })
}

/// Row `r` of `rb` bytes of each matrix of `matrices` fetched ([`prefetch`]), if they have it.
#[inline(always)]
fn prefetch_row(matrices: &[&[u8]], rb: usize, r: usize) {
    for m in matrices {
        if let Some(row) = m.get(r.saturating_mul(rb)..r.saturating_add(1).saturating_mul(rb)) {
            prefetch(row);
        }
    }
}

/// Rows of gate and up: `h[r] = silu_mul(gate_r · x, up_r · x)` for the rows of `h`, which
/// start at row `first`; accumulators `GROUP` at a time. The next [`PREFETCH_BYTES`] or so of
/// each matrix are fetched ([`prefetch`], [`rows_ahead`]) while a row is computed.
#[inline(always)]
fn gate_up_rows<R: RowFormat, const GROUP: usize>(
    gate: &[u8],
    up: &[u8],
    cols: usize,
    xt: &Activations,
    first: usize,
    h: &mut [f32],
) {
    let rb = R::row_bytes(cols).max(1);
    let at = first.saturating_mul(rb);
    let (gate, up) = (gate.get(at..).unwrap_or_default(), up.get(at..).unwrap_or_default());
    let (ahead, rows) = (rows_ahead::<R>(rb), h.len());
    // The rows after the first on their way; then one more with each row computed, within the
    // rows of `h`.
    let fetch = |r: usize| {
        if r < rows {
            prefetch_row(&[gate, up], rb, r);
        }
    };
    (1..ahead).for_each(fetch);
    for (r, (out, (g, u))) in h.iter_mut().zip(gate.chunks_exact(rb).zip(up.chunks_exact(rb))).enumerate() {
        if ahead > 0 {
            fetch(r.saturating_add(ahead));
        }
        *out = silu_mul(R::dot::<GROUP>(g, cols, xt), R::dot::<GROUP>(u, cols, xt));
    }
}

/// Rows of down: `part[r] = down_r · h` for the rows of `part`, starting at row `first`, the
/// next [`PREFETCH_BYTES`] or so of rows fetched while a row is computed.
#[inline(always)]
fn down_rows<R: RowFormat, const GROUP: usize>(
    down: &[u8],
    cols: usize,
    ht: &Activations,
    first: usize,
    part: &mut [f32],
) {
    let rb = R::row_bytes(cols).max(1);
    let down = down.get(first.saturating_mul(rb)..).unwrap_or_default();
    let (ahead, rows) = (rows_ahead::<R>(rb), part.len());
    let fetch = |r: usize| {
        if r < rows {
            prefetch_row(&[down], rb, r);
        }
    };
    (1..ahead).for_each(fetch);
    for (r, (out, d)) in part.iter_mut().zip(down.chunks_exact(rb)).enumerate() {
        if ahead > 0 {
            fetch(r.saturating_add(ahead));
        }
        *out = R::dot::<GROUP>(d, cols, ht);
    }
}

/// The row kernels of one format, monomorphised per instruction set with the accumulator group
/// its registers hold ([`super::order::dot_in_groups`]).
macro_rules! variants {
    ($gate_up:ident, $down:ident, $group:expr $(, $feature:literal)?) => {
        $(#[target_feature(enable = $feature)])?
        fn $gate_up(format: Format, gate: &[u8], up: &[u8], cols: usize, xt: &Activations, first: usize, h: &mut [f32]) {
            match format {
                Format::BF16 => gate_up_rows::<Bf16, $group>(gate, up, cols, xt, first, h),
                Format::Q8_0 => gate_up_rows::<Q8_0, $group>(gate, up, cols, xt, first, h),
                Format::Q4_K => gate_up_rows::<Q4K, $group>(gate, up, cols, xt, first, h),
                Format::Q6_K => gate_up_rows::<Q6K, $group>(gate, up, cols, xt, first, h),
                _ => gate_up_rows::<F32, $group>(gate, up, cols, xt, first, h),
            }
        }
        $(#[target_feature(enable = $feature)])?
        fn $down(format: Format, down: &[u8], cols: usize, ht: &Activations, first: usize, part: &mut [f32]) {
            match format {
                Format::BF16 => down_rows::<Bf16, $group>(down, cols, ht, first, part),
                Format::Q8_0 => down_rows::<Q8_0, $group>(down, cols, ht, first, part),
                Format::Q4_K => down_rows::<Q4K, $group>(down, cols, ht, first, part),
                Format::Q6_K => down_rows::<Q6K, $group>(down, cols, ht, first, part),
                _ => down_rows::<F32, $group>(down, cols, ht, first, part),
            }
        }
    };
}

// 64 accumulators: 16 of the 16-byte registers of the portable baseline (x86-64's SSE2,
// AArch64's NEON, which has 32), 8 of AVX2's 16; AVX-512's 32 registers hold all 256.
variants!(gate_up_portable, down_portable, 64);
#[cfg(target_arch = "x86_64")]
variants!(gate_up_avx2, down_avx2, 64, "avx2,fma");
#[cfg(target_arch = "x86_64")]
variants!(gate_up_avx512, down_avx512, BLOCK, "avx512f,avx2,fma");

/// Gate/up rows under `isa` (which the caller checked is [`Isa::available`]).
#[allow(clippy::too_many_arguments, reason = "the row kernel's operands")]
#[allow(unsafe_code, reason = "calling a function compiled for an instruction set the CPU was found to have")]
pub(super) fn gate_up(
    isa: Isa,
    format: Format,
    gate: &[u8],
    up: &[u8],
    cols: usize,
    xt: &Activations,
    first: usize,
    h: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is available (checked when the FFN was built), so the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { gate_up_avx2(format, gate, up, cols, xt, first, h) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { gate_up_avx512(format, gate, up, cols, xt, first, h) },
        _ => gate_up_portable(format, gate, up, cols, xt, first, h),
    }
}

/// Down rows under `isa` (which the caller checked is [`Isa::available`]).
#[allow(unsafe_code, reason = "calling a function compiled for an instruction set the CPU was found to have")]
pub(super) fn down(
    isa: Isa,
    format: Format,
    down: &[u8],
    cols: usize,
    ht: &Activations,
    first: usize,
    part: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is available (checked when the FFN was built), so the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { down_avx2(format, down, cols, ht, first, part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { down_avx512(format, down, cols, ht, first, part) },
        _ => down_portable(format, down, cols, ht, first, part),
    }
}
