//! The sum of a row's accumulators ([`super::order::reduce`]) with AVX2: the shared order's
//! sums, eight at a time. Apart from `order`, which calls it, so the order's module does not
//! import the instruction sets' module (which imports it).

/// [`super::order::reduce`] with AVX2 (256 accumulators, 32 lanes of 8): the same sums, each
/// with the same operands in the same order (the lower-numbered accumulator first), eight at a
/// time. Per group of eight lanes:
/// each lane's halves added (lanes `l` and `l + 4` in one register), then `+ 2`, then `+ 1`,
/// leaving the eight lanes' sums in order; then the butterfly at offsets 16 and 8 across those
/// registers, 4, 2 and 1 within one.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[allow(unsafe_code, reason = "unaligned vector loads of the accumulators")]
#[allow(clippy::arithmetic_side_effects, reason = "lane indexes below 32")]
pub(super) unsafe fn reduce(acc: &[f32; 256]) -> f32 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_loadu_ps, _mm256_permute2f128_ps,
        _mm256_shuffle_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
    };
    let lanes_of = |group: usize| -> __m256 {
        // Lane `8·group + l`'s eight accumulators.
        // SAFETY: `group` < 4 and `l` < 8, so lane `8·group + l` < 32 and its eight floats are
        // inside `acc`'s 256.
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
