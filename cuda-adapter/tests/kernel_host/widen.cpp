// Checks, on the host, that the kernels' wide paths give the bits of their element-by-element
// paths: F32 and BF16 weights widened (`load_chunk`) for every lane and pass, and the block
// formats' terms (`block_term`, vector loads and dp4a against byte loads one element at a time)
// for every block of a row, over random bytes at every alignment the wide paths take, and each
// lane's block of a Q8_0 pass staged as words (`staged_block`); and that
// the branch-free f16 widening gives the bits of the branching one (the host FFN's
// `f16_to_f32`) for all 65,536 halves. Built and run by tests/kernel_host.rs with KERNEL naming
// the kernel source. Prints "N bad" lines; exits 1 when any weight or term differs.
#include "stubs.h"
#include KERNEL
#include <cstdio>

// The block formats' shared memory (`act_smem`): unused by the functions checked here.
alignas(16) unsigned char act_smem[16];
#include <random>
#include <vector>

static float f16_branching(u32 h) {
    const u32 sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    float magnitude;
    if (exponent == 0u) magnitude = __fmul_rn((float)mantissa, __uint_as_float(0x33800000u));
    else if (exponent == 31u) magnitude = __uint_as_float(0x7f800000u | (mantissa << 13));
    else magnitude = __uint_as_float(((exponent + 112u) << 23) | (mantissa << 13));
    return __uint_as_float(__float_as_uint(magnitude) | sign);
}

// Rows of `cols` elements starting `shift` bytes into a 16-byte aligned buffer of random bytes.
template <int FMT>
static long check(int cols, int shift, std::mt19937_64& rng) {
    const int rb = row_bytes(FMT, cols);
    std::vector<uint4> storage((rb + shift) / 16 + 2);
    unsigned char* bytes = reinterpret_cast<unsigned char*>(storage.data());
    const unsigned char* row = bytes + shift;
    if (!wide_rows<FMT>(row, rb)) {
        std::printf("format %d shift %d: not taken by the wide path\n", FMT, shift);
        return 1;
    }
    long bad = 0;
    for (int trial = 0; trial < 50; trial++) {
        for (size_t i = 0; i < storage.size() * 16; i++) bytes[i] = (unsigned char)rng();
        if constexpr (FMT >= FMT_Q8_0) {
            // Each block's term from random activations: wide against element by element.
            for (int b = 0; b < cols / Q8_BLOCK; b++) {
                signed char xq[32];
                int xw[8];
                for (int i = 0; i < 32; i++) xq[i] = (signed char)((int)(rng() % 255) - 127);
                std::memcpy(xw, xq, 32);
                const float dx = (float)(rng() % 1000) * 1e-4f;
                const int s0 = (int)(rng() % 255) - 127, s1 = (int)(rng() % 255) - 127;
                const float wide = block_term<FMT, true>(row, b, xw, xq, dx, s0, s1);
                const float element = block_term<FMT, false>(row, b, xw, xq, dx, s0, s1);
                if (__float_as_uint(wide) != __float_as_uint(element) && !(wide != wide && element != element)) {
                    if (bad < 3)
                        std::printf("format %d block %d: %08x, element by element %08x\n", FMT, b, __float_as_uint(wide),
                                    __float_as_uint(element));
                    bad++;
                }
            }
            continue;
        } else {
            for (int lane = 0; lane < 32; lane++) {
                const int at = lane * CHUNK * (FMT == FMT_F32 ? 4 : 2);
                for (int pass = 0; pass < cols / BLOCK; pass++) {
                    Raw raw;
                    fetch<FMT>(row + (u64)pass * pass_bytes<FMT>(), at, raw);
                    float wide[CHUNK], element[CHUNK];
                    widen<FMT>(raw, wide);
                    load_chunk<FMT>(row, pass * BLOCK + lane * CHUNK, cols, element);
                    for (int i = 0; i < CHUNK; i++) {
                        if (__float_as_uint(wide[i]) != __float_as_uint(element[i])) {
                            if (bad < 3)
                                std::printf("format %d lane %d pass %d weight %d: %08x, element by element %08x\n", FMT,
                                            lane, pass, i, __float_as_uint(wide[i]), __float_as_uint(element[i]));
                            bad++;
                        }
                    }
                }
            }
        }
    }
    return bad;
}

// Q8_0's staged pass: each lane's scale and bytes as `staged_block` takes them from the words
// of 32 blocks of random bytes, against the bytes themselves.
static long check_staged(std::mt19937_64& rng) {
    long bad = 0;
    for (int trial = 0; trial < 50; trial++) {
        u32 stage[Q8_0_STAGE_WORDS];
        for (u32& word : stage) word = (u32)rng();
        const unsigned char* bytes = reinterpret_cast<const unsigned char*>(stage);
        for (int lane = 0; lane < 32; lane++) {
            u32 scale, w[8];
            staged_block(stage, lane, scale, w);
            const unsigned char* block = bytes + lane * Q8_0_BYTES;
            u32 want[8];
            std::memcpy(want, block + 2, 32);
            const u32 want_scale = (u32)block[0] | ((u32)block[1] << 8);
            if (scale != want_scale || std::memcmp(w, want, 32) != 0) {
                if (bad < 3) std::printf("staged Q8_0 lane %d: its block read otherwise\n", lane);
                bad++;
            }
        }
    }
    return bad;
}

int main() {
    long halves = 0;
    for (u32 h = 0; h < 65536; h++) halves += __float_as_uint(f16_to_f32(h)) != __float_as_uint(f16_branching(h));
    std::printf("f16: %ld bad\n", halves);
    std::mt19937_64 rng(7);
    long weights = 0;
    for (int shift : {0, 16}) weights += check<FMT_F32>(2048, shift, rng) + check<FMT_BF16>(2048, shift, rng);
    // Q8_0's rows aligned for wide loads are staged (checked below); the others go element by
    // element, the only path `block_term` has for Q8_0.
    for (int shift : {0, 4, 8, 12}) weights += check<FMT_Q6_K>(2048, shift, rng) + check<FMT_Q6_K>(768, shift, rng);
    for (int shift : {0, 16}) weights += check<FMT_Q4_K>(2048, shift, rng) + check<FMT_Q4_K>(768, shift, rng);
    weights += check_staged(rng);
    std::printf("weights: %ld bad\n", weights);
    return halves + weights == 0 ? 0 : 1;
}
