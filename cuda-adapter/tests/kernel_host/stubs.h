// Host stand-ins for the CUDA built-ins the kernel source uses, so its device functions compile
// as plain C++ and run one lane at a time (tests/kernel_host.rs). Arithmetic intrinsics round
// as the device's do: one IEEE single-precision operation each, nothing fused.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
struct int2 { int x, y; };
static inline int2 make_int2(int x, int y) { return {x, y}; }
struct uint2 { unsigned x, y; };
static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
struct float4 { float x, y, z, w; };
struct dim3 { unsigned x, y, z; };
static dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
static inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static inline float __int2float_rn(int v) { return (float)v; }
// dp4a: the four signed bytes of a times those of b, summed onto c.
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
// The funnel shift: the 64 bits {hi, lo} shifted right by shift & 31, the low word.
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> (shift & 31u));
}
static inline unsigned char __ldg(const unsigned char* p) { return *p; }
static inline unsigned short __ldg(const unsigned short* p) { return *p; }
static inline unsigned __ldg(const unsigned* p) { return *p; }
static inline uint4 __ldg(const uint4* p) { return *p; }
static inline float4 __ldg(const float4* p) { return *p; }
static inline float __ldcg(const float* p) { return *p; }
static inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
static inline int __shfl_xor_sync(unsigned, int v, int) { return v; }
static inline void __syncwarp(unsigned = 0xffffffffu) {}
static inline unsigned atomicOr(unsigned* p, unsigned v) { unsigned o = *p; *p |= v; return o; }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p += v; return o; }
static inline void __syncthreads() {}
static inline void __threadfence() {}
using std::min;
