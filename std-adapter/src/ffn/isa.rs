//! The instruction sets the host FFN is compiled for, chosen at run time. Every variant runs
//! the same code of [`super::order`] in the same order: they differ in speed, never in bits.

use expertslab::Format;

use super::order::{silu_mul, Bf16, RowFormat, BLOCK, F32, Q4K, Q6K, Q8_0};

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

/// Rows of gate and up: `h[r] = silu_mul(gate_r · x, up_r · x)` for the rows of `h`, which
/// start at row `first`; accumulators `GROUP` at a time.
#[inline(always)]
fn gate_up_rows<R: RowFormat, const GROUP: usize>(
    gate: &[u8],
    up: &[u8],
    cols: usize,
    xt: &[f32],
    first: usize,
    h: &mut [f32],
) {
    let rb = R::row_bytes(cols).max(1);
    let rows = gate.chunks_exact(rb).zip(up.chunks_exact(rb)).skip(first);
    for (out, (g, u)) in h.iter_mut().zip(rows) {
        *out = silu_mul(R::dot::<GROUP>(g, cols, xt), R::dot::<GROUP>(u, cols, xt));
    }
}

/// Rows of down: `part[r] = down_r · h` for the rows of `part`, starting at row `first`.
#[inline(always)]
fn down_rows<R: RowFormat, const GROUP: usize>(down: &[u8], cols: usize, ht: &[f32], first: usize, part: &mut [f32]) {
    let rb = R::row_bytes(cols).max(1);
    for (out, d) in part.iter_mut().zip(down.chunks_exact(rb).skip(first)) {
        *out = R::dot::<GROUP>(d, cols, ht);
    }
}

/// The row kernels of one format, monomorphised per instruction set with the accumulator group
/// its registers hold ([`super::order::dot_in_groups`]).
macro_rules! variants {
    ($gate_up:ident, $down:ident, $group:expr $(, $feature:literal)?) => {
        $(#[target_feature(enable = $feature)])?
        fn $gate_up(format: Format, gate: &[u8], up: &[u8], cols: usize, xt: &[f32], first: usize, h: &mut [f32]) {
            match format {
                Format::BF16 => gate_up_rows::<Bf16, $group>(gate, up, cols, xt, first, h),
                Format::Q8_0 => gate_up_rows::<Q8_0, $group>(gate, up, cols, xt, first, h),
                Format::Q4_K => gate_up_rows::<Q4K, $group>(gate, up, cols, xt, first, h),
                Format::Q6_K => gate_up_rows::<Q6K, $group>(gate, up, cols, xt, first, h),
                _ => gate_up_rows::<F32, $group>(gate, up, cols, xt, first, h),
            }
        }
        $(#[target_feature(enable = $feature)])?
        fn $down(format: Format, down: &[u8], cols: usize, ht: &[f32], first: usize, part: &mut [f32]) {
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

/// [`super::order::reduce`] with AVX2: the same sums, each with the same operands in the same
/// order (the lower-numbered accumulator first), eight at a time. Per group of eight lanes:
/// each lane's halves added (lanes `l` and `l + 4` in one register), then `+ 2`, then `+ 1`,
/// leaving the eight lanes' sums in order; then the butterfly at offsets 16 and 8 across those
/// registers, 4, 2 and 1 within one.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code, reason = "unaligned vector loads of the accumulators")]
#[allow(clippy::arithmetic_side_effects, reason = "lane indexes below 32")]
pub(super) unsafe fn reduce_avx2(acc: &[f32; BLOCK]) -> f32 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_loadu_ps, _mm256_permute2f128_ps,
        _mm256_shuffle_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
    };
    const { assert!(super::order::CHUNK == 8 && super::order::LANES == 32) };
    let lanes_of = |group: usize| -> __m256 {
        // Lane `l`'s eight accumulators, `acc[8l .. 8l + 8]`.
        // SAFETY: `l` < 32, so the eight floats at `8l` are inside `acc`'s 256.
        let lane = |l: usize| unsafe { _mm256_loadu_ps(acc.as_ptr().add(8 * (8 * group + l))) };
        // [t_l | t_{l+4}]: `v[e] + v[e + 4]` of lanes `l` and `l + 4`.
        let t = |l: usize| {
            let (a, b) = (lane(l), lane(l + 4));
            _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
        };
        // [u_l, u_n | u_{l+4}, u_{n+4}]: `t[e] + t[e + 2]`.
        let u = |p: __m256, q: __m256| {
            _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(p, q), _mm256_shuffle_ps::<0b11_10_11_10>(p, q))
        };
        let (r, s) = (u(t(0), t(1)), u(t(2), t(3)));
        // Lanes 0..8 of the group in order: `u[0] + u[1]`.
        _mm256_add_ps(_mm256_shuffle_ps::<0b10_00_10_00>(r, s), _mm256_shuffle_ps::<0b11_01_11_01>(r, s))
    };
    let (g0, g1, g2, g3) = (lanes_of(0), lanes_of(1), lanes_of(2), lanes_of(3));
    // Offsets 16, then 8.
    let v = _mm256_add_ps(_mm256_add_ps(g0, g2), _mm256_add_ps(g1, g3));
    // Offsets 4, 2, 1.
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps::<0b01>(v, v)))
}

/// Gate/up rows under `isa` (which the caller checked is [`Isa::available`]).
#[allow(clippy::too_many_arguments, reason = "the row kernel's operands")]
#[allow(unsafe_code, reason = "calling a function compiled for an instruction set the CPU was found to have")]
pub(super) fn gate_up(
    isa: Isa,
    format: Format,
    gate: &[u8],
    up: &[u8],
    cols: usize,
    xt: &[f32],
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
pub(super) fn down(isa: Isa, format: Format, down: &[u8], cols: usize, ht: &[f32], first: usize, part: &mut [f32]) {
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
