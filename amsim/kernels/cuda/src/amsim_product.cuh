// amsim_product.cuh: the approximate product of two float32 values, exactly as docs/semantics.md defines it.
//
// One implementation shared by the CUDA kernels (amsim_gemm.cu) and by host code: tests/test_cuda_host.py
// compiles this header with a plain C++ compiler and compares it bit for bit with the NumPy golden model.
// Under a host compiler the CUDA qualifiers are defined away (AMSIM_HD); under nvcc/NVRTC the functions are
// __host__ __device__.
//
// Nothing here depends on the CUDA headers, so NVRTC needs no include paths.
#ifndef AMSIM_PRODUCT_CUH
#define AMSIM_PRODUCT_CUH

#if defined(__CUDACC__)
#define AMSIM_HD __host__ __device__ __forceinline__
#else
#define AMSIM_HD inline
#endif

#if !defined(__CUDACC_RTC__) && !defined(__CUDA_ARCH__)
#include <cmath>
#include <cstring>
#endif

#ifndef AMSIM_NAN_BITS  // the canonical NaN, defined once in amsim/_operands.py and passed as -DAMSIM_NAN_BITS
#error "compile through amsim.kernels.cuda._source, which defines AMSIM_NAN_BITS"
#endif
#define AMSIM_INF_BITS 0x7F800000u
#define AMSIM_SIGN_BIT 0x80000000u
#define AMSIM_EXP_MASK 0x7F800000u
#define AMSIM_FRAC_MASK 0x007FFFFFu
// the fast-path code keeps sign and exponent field where float32 has them (so masking yields the scale)
#define AMSIM_SCALE_MASK 0xFF800000u

AMSIM_HD unsigned int amsim_f2u(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    unsigned int u;
    std::memcpy(&u, &x, sizeof u);
    return u;
#endif
}

AMSIM_HD float amsim_u2f(unsigned int u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
#endif
}

// Read a table entry from global memory through the read-only (non-coherent) cache on the device.
AMSIM_HD float amsim_ldg(const float* p) {
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

AMSIM_HD unsigned int amsim_ldg(const unsigned int* p) {
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

AMSIM_HD int amsim_ldg(const int* p) {
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

// IEEE float32 arithmetic, rounded to nearest even, subnormals kept, never contracted. On the device these are
// explicit PTX instructions: CuPy compiles every RawModule with -ftz=true, which would flush subnormal inputs and
// results of ordinary float operations (and of __fadd_rn & co.) to zero, while the semantics keep them (a sum
// of products can cancel into the subnormal range). Inline PTX is emitted verbatim, so no compiler flag changes
// it; the "rn" rounding modifier also rules out fma contraction.
AMSIM_HD float amsim_fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return a + b;
#endif
}

AMSIM_HD float amsim_fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return a * b;
#endif
}

// a * b + c with a single rounding (used only where a * b is exact, so it equals amsim_fadd(amsim_fmul(a, b), c))
AMSIM_HD float amsim_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    float r;
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
#else
    return std::fma(a, b, c);
#endif
}

// Step 1 of the semantics: round float32 bits to m kept fraction bits (1 <= m <= 11), round-half-to-even on
// the bit pattern or truncation. A carry runs into the exponent (past the largest finite value it gives Inf);
// every NaN becomes the canonical quiet NaN.
AMSIM_HD unsigned int amsim_round_bits(unsigned int u, int m, bool truncate) {
    if ((u & AMSIM_EXP_MASK) == AMSIM_EXP_MASK && (u & AMSIM_FRAC_MASK) != 0u) return AMSIM_NAN_BITS;
    const int shift = 23 - m;
    // no overflow of 32 bits: the largest non-NaN pattern 0xFF800000 has a zero fraction
    if (!truncate) u += ((1u << (shift - 1)) - 1u) + ((u >> shift) & 1u);
    return u & ~((1u << shift) - 1u);
}

// The product of two operands that are already rounded (amsim_round_bits), as float32 bits.
//
// lut is the row-major (2**m, 2**m) table of significand products, finite and >= 0 (a -0.0 entry counts as
// zero). The magnitude is p * 2**(ea + eb) formed exactly from the bits: at or above 2**128 it is Inf, below
// 2**-126 (the normal range) it is a signed zero. Zero and subnormal operands give a zero whose sign is the
// xor of the operand signs; NaN gives NaN; Inf times zero gives NaN; Inf times anything else gives Inf.
AMSIM_HD unsigned int amsim_product_rounded(unsigned int ua, unsigned int ub, int m, const float* lut) {
    const unsigned int sign = (ua ^ ub) & AMSIM_SIGN_BIT;
    const int ea = (int)((ua >> 23) & 0xFFu);
    const int eb = (int)((ub >> 23) & 0xFFu);
    const bool nan_a = ea == 255 && (ua & AMSIM_FRAC_MASK) != 0u;
    const bool nan_b = eb == 255 && (ub & AMSIM_FRAC_MASK) != 0u;
    if (nan_a || nan_b) return AMSIM_NAN_BITS;
    if (ea == 255 || eb == 255) return (ea == 0 || eb == 0) ? AMSIM_NAN_BITS : (sign | AMSIM_INF_BITS);
    if (ea == 0 || eb == 0) return sign;  // zeros and subnormals are flushed
    const int shift = 23 - m;
    const unsigned int mask = (1u << m) - 1u;
    const unsigned int ia = (ua >> shift) & mask;
    const unsigned int ib = (ub >> shift) & mask;
    const unsigned int pu = amsim_f2u(amsim_ldg(lut + ((ia << m) | ib))) & ~AMSIM_SIGN_BIT;
    if (pu == 0u) return sign;
    // p = 1.f * 2**(pe - 127); a subnormal table entry is normalised first
    int pe = (int)(pu >> 23);
    unsigned int f = pu & AMSIM_FRAC_MASK;
    if (pe == 0) {
        pe = 1;
        while ((f & 0x00800000u) == 0u) {
            f <<= 1;
            --pe;
        }
        f &= AMSIM_FRAC_MASK;
    }
    const int e = pe + ea + eb - 254;  // biased exponent of the product
    if (e >= 255) return sign | AMSIM_INF_BITS;
    if (e <= 0) return sign;
    return sign | ((unsigned int)e << 23) | f;
}

// The whole scalar semantics: round both operands, then multiply. The bits of the float32 result.
AMSIM_HD unsigned int amsim_product_bits(unsigned int a, unsigned int b, int m, bool truncate, const float* lut) {
    return amsim_product_rounded(amsim_round_bits(a, m, truncate), amsim_round_bits(b, m, truncate), m, lut);
}

AMSIM_HD float amsim_product(float a, float b, int m, bool truncate, const float* lut) {
    return amsim_u2f(amsim_product_bits(amsim_f2u(a), amsim_f2u(b), m, truncate, lut));
}

// Fast-path operand code used by the GEMM kernels: sign | exponent field | LUT index (the index sits in the
// low m bits, below the exponent, so `code & AMSIM_SCALE_MASK` is the signed power-of-two scale, +-0 for
// zero and subnormal operands). The product of two codes is then scale_a * (lut[ia, ib] * scale_b), and both
// multiplications are exact as long as the unbiased exponents lie in [lo, hi] (the "tame" range computed on
// the host from the table, see _cuda.py): every intermediate stays normal or is an exact zero.
//
// Operands outside that range, Inf and NaN are "special": their code is 0 (a +0 scale, so they add nothing
// harmful) and *special is set; the caller recomputes every output that touches one with the scalar path.
AMSIM_HD unsigned int amsim_operand_code(unsigned int u_rounded, int m, int lo, int hi, bool* special) {
    const int e = (int)((u_rounded >> 23) & 0xFFu);
    const bool sp = e == 255 || (e != 0 && (e - 127 < lo || e - 127 > hi));
    *special = sp;
    if (sp) return 0u;
    return (u_rounded & AMSIM_SCALE_MASK) | ((u_rounded >> (23 - m)) & ((1u << m) - 1u));
}

#endif  // AMSIM_PRODUCT_CUH
