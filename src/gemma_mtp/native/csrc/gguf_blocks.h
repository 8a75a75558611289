// What the GGUF block decoders share: ggml's type ids and block sizes, the decoded 32-wide
// sub-block (`Sub`, the scalar form every path is tested against), the decoded block of the AVX2
// loop (`VBlock`) and the byte helpers both need.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define GG_AVX2 1
#else
#define GG_AVX2 0
#endif

namespace gguf_blocks {

// ggml type ids
enum : int {
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  IQ1_M = 29,
};

struct Layout {
  int64_t elems;  // weights per block
  int64_t bytes;  // bytes per block
};

// {0, 0} for a type without a decoder here
constexpr Layout layout_of(int64_t type) {
  switch (type) {
    case Q4_0: return {32, 18};
    case Q4_1: return {32, 20};
    case Q5_0: return {32, 22};
    case Q5_1: return {32, 24};
    case Q8_0: return {32, 34};
    case IQ4_NL: return {32, 18};
    case Q2_K: return {256, 84};
    case Q3_K: return {256, 110};
    case Q4_K: return {256, 144};
    case Q5_K: return {256, 176};
    case Q6_K: return {256, 210};
    case IQ2_XXS: return {256, 66};
    case IQ2_XS: return {256, 74};
    case IQ2_S: return {256, 82};
    case IQ3_XXS: return {256, 98};
    case IQ3_S: return {256, 110};
    case IQ1_S: return {256, 50};
    case IQ1_M: return {256, 56};
    case IQ4_XS: return {256, 136};
    default: return {0, 0};
  }
}

// Types whose weights carry a zero (w = scale * code + zero); the others are scale * code only.
constexpr bool has_zero_term(int64_t type) {
  return type == Q4_1 || type == Q5_1 || type == Q4_K || type == Q5_K || type == Q2_K;
}

inline float f16_bits(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

inline uint16_t u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline float f16(const uint8_t* p) { return f16_bits(u16(p)); }

// One 32-wide sub-block, decoded:
//   w[i] = d * s[i / 16] * c[i] + m * ms[i / 16]
// with int8 codes c, small integer scales s and zero multipliers ms per 16 (ms is Q2_K's per-16
// mins, 1 for every other type), a float scale d and a float zero m (0 for the symmetric types).
// Evaluated in this order in float32 it is exactly what `gguf.quants.dequantize` computes.
struct Sub {
  int8_t c[32];
  int16_t s[2];
  int16_t ms[2];
  float d;
  float m;
};

#if GG_AVX2
// A block decoded for the vector loop: per sub-block the codes, the int16 scales (one per 16
// lanes of maddubs' output: low 128 bits = inputs 0..15), the float scale and the zero; for
// Q2_K also the 16 per-16 mins (int16) and their float scale `dm`, applied to the activations'
// per-16 sums once per block.
struct VBlock {
  __m256i c[8];
  __m256i s[8];
  float d[8];
  float m[8];
  __m256i ms;
  float dm;
  int n;
};

// 16 bytes -> 32 nibbles: the low nibbles in bytes 0..15, the high ones in bytes 16..31.
inline __m256i nibbles16(const uint8_t* p) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m));
}

// 32 bits -> byte i = 0xFF where bit i is set, else 0.
inline __m256i bytes_from_bits(uint32_t bits) {
  const __m256i pick = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0LL);
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), pick), bit);
  return _mm256_cmpeq_epi8(v, bit);
}

// 32 bits -> byte i = 0x10 where bit i is set, else 0.
inline __m256i bit4_from_bits(uint32_t bits) {
  return _mm256_and_si256(bytes_from_bits(bits), _mm256_set1_epi8(0x10));
}

// The two int16 scales of a sub-block, one per 16 lanes.
inline __m256i scales16(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16(int16_t(hi)), _mm_set1_epi16(int16_t(lo)));
}
#endif

}  // namespace gguf_blocks
