// Q4_K (and Q5_0, below) repacked 8 rows at a time ("x8"): the layout llama.cpp's CPU backend also repacks
// Q4_K into for its GEMM (q4_K_8x8), with our own arithmetic. A group of 8 weight rows keeps, per
// super-block of 256 inputs, the 8 rows' codes interleaved 4 bytes at a time, so one 32-byte load
// holds 4 packed bytes (8 codes) of each row and the int32 lanes of a dot product are the 8 rows:
// no horizontal sums, and a sub-block's scale is one lane-wise multiply of exact int32 sums.
//
// Group g, super-block sb (kX8Bytes = 1184 bytes, at (g * nsb + sb) * kX8Bytes):
//   [0, 16)      d of rows 0..7 (float16, as in the file)
//   [16, 32)     dmin of rows 0..7 (float16)
//   [32, 96)     scale of sub-block j, row r at 32 + 8 j + r (6-bit, unpacked)
//   [96, 160)    mins, for t = 0..3 16 bytes: min(2t, r), min(2t + 1, r) for r = 0..7 (int16 pairs)
//   [160, 1184)  codes: for p = 0..3, c = 0..7, r = 0..7 the 4 bytes qs[32 p + 4 c .. + 4) of row r,
//                at 160 + ((8 p + c) * 8 + r) * 4 (low nibbles: sub-block 2p, high: 2p + 1)
// That is 1184 bytes per 8 x 256 weights against the file's 1152: the same bytes read per token.
//
// Against activations rounded per 256 inputs (Acts256: codes x, scale a, code sums b per 16),
// lane r of a super-block is
//   I = sum_j sc(j, r) * sum_{i in j} q(r, i) x(i)   and   Z = sum_j mn(j, r) * (b(2j) + b(2j+1)),
// both exact in int32 (|I| <= 8 * 63 * 32 * 15 * 127 < 2^25), then
//   acc = fma(float(I), d * a, acc);  acc = fma(-float(Z), dmin * a, acc)
// over the super-blocks in order: the same operations for every row and every M, so a row's
// result is independent of the batch (and the scalar loop gives the vector loop's bits).
#pragma once

#include "gguf_blocks.h"
#include "gguf_k256.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace gguf_blocks {

constexpr int64_t Q4_K_X8 = 1000 + Q4_K;  // the kernel type code of a repacked Q4_K matrix
constexpr int64_t kX8Rows = 8;
constexpr int64_t kX8Bytes = 1184;

// One group of 8 Q4_K rows (file layout, row stride pitch, nsb super-blocks) -> the x8 layout.
inline void repack_q4k_x8(const uint8_t* w, int64_t pitch, int64_t nsb, uint8_t* out) {
  for (int64_t sb = 0; sb < nsb; ++sb) {
    uint8_t* o = out + sb * kX8Bytes;
    uint8_t mn[8][8];
    for (int r = 0; r < 8; ++r) {
      const uint8_t* b = w + r * pitch + sb * 144;
      std::memcpy(o + 2 * r, b, 2);
      std::memcpy(o + 16 + 2 * r, b + 2, 2);
      uint8_t sc[8], m[8];
      scales_mins_k4(b + 4, sc, m);
      for (int j = 0; j < 8; ++j) {
        o[32 + 8 * j + r] = sc[j];
        mn[j][r] = m[j];
      }
      for (int p = 0; p < 4; ++p)
        for (int c = 0; c < 8; ++c) std::memcpy(o + 160 + ((8 * p + c) * 8 + r) * 4, b + 16 + 32 * p + 4 * c, 4);
    }
    for (int t = 0; t < 4; ++t)
      for (int r = 0; r < 8; ++r) {
        o[96 + 16 * t + 2 * r] = mn[2 * t][r];
        o[96 + 16 * t + 2 * r + 1] = mn[2 * t + 1][r];
      }
  }
}

// The per-16 code sums of one activation super-block as the 8 per-32 sums.
inline void sums32(const int16_t* bs, int* s) {
  for (int j = 0; j < 8; ++j) s[j] = int(bs[2 * j]) + int(bs[2 * j + 1]);
}

// Groups [g0, g1) of a repacked matrix times MB activation rows -> out[m * ldo + 8 g + r].
template <int MB>
void rows_q4k_x8_scalar(const uint8_t* w, const A256& a, int64_t g0, int64_t g1, float* out, int64_t ldo) {
  const int64_t nsb = a.K / 256, n16 = a.K / 16;
  for (int64_t g = g0; g < g1; ++g) {
    float acc[MB][8] = {};
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const uint8_t* b = w + (g * nsb + sb) * kX8Bytes;
      for (int m = 0; m < MB; ++m) {
        const int8_t* x = a.q + m * a.K + sb * 256;
        int s[8];
        sums32(a.bs + m * n16 + sb * 16, s);
        const float ad = a.d[m * nsb + sb];
        for (int r = 0; r < 8; ++r) {
          int32_t I = 0, Z = 0;
          for (int p = 0; p < 4; ++p) {
            int32_t s0 = 0, s1 = 0;
            for (int c = 0; c < 8; ++c) {
              const uint8_t* q = b + 160 + ((8 * p + c) * 8 + r) * 4;
              for (int i = 0; i < 4; ++i) {
                s0 += int32_t(q[i] & 0x0F) * x[64 * p + 4 * c + i];
                s1 += int32_t(q[i] >> 4) * x[64 * p + 32 + 4 * c + i];
              }
            }
            I += s0 * int32_t(b[32 + 8 * (2 * p) + r]) + s1 * int32_t(b[32 + 8 * (2 * p + 1) + r]);
          }
          for (int t = 0; t < 4; ++t)
            Z += int32_t(b[96 + 16 * t + 2 * r]) * s[2 * t] + int32_t(b[96 + 16 * t + 2 * r + 1]) * s[2 * t + 1];
          const float d = f16(b + 2 * r), dmin = f16(b + 16 + 2 * r);
          acc[m][r] = std::fma(float(I), d * ad, acc[m][r]);
          acc[m][r] = std::fma(-float(Z), dmin * ad, acc[m][r]);
        }
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 8; ++r) out[m * ldo + 8 * g + r] = acc[m][r];
  }
}

#if GG_AVX2
// acc + the products of u8 lanes u and s8 lanes s, 4 per int32 lane (exact).
inline __m256i dp_acc(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else  // pairs of products fit int16 (|pair| <= 2 * 15 * 127): no saturation
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// Software prefetch distance for 2+ activation rows: with long rows (an E2B ffn_down, 12288 inputs)
// the activations no longer fit L1 beside the weights and the hardware prefetcher alone left 4 rows
// at 2.3x the time of one streaming from memory; 4 KB ahead: 1.55-1.65x (stream2.py, 18 layers'
// ffn_down; 2 KB 1.76x, 8 KB 1.45x but slower for the short-row gate/up). Prefetch never faults, so
// the last groups prefetch past the end harmlessly.
constexpr int64_t kX8Prefetch = 4096;

template <int MB>
void rows_q4k_x8_avx2(const uint8_t* w, const A256& a, int64_t g0, int64_t g1, float* out, int64_t ldo) {
  const int64_t nsb = a.K / 256, n16 = a.K / 16;
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t g = g0; g < g1; ++g) {
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const uint8_t* b = w + (g * nsb + sb) * kX8Bytes;
      if constexpr (MB >= 2)  // the weight stream (one run of bytes over the whole matrix), kX8Prefetch ahead
        for (int64_t off = 0; off < kX8Bytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(b + kX8Prefetch + off), _MM_HINT_T0);
      const int8_t* x[MB];
      __m256i I[MB];
      for (int m = 0; m < MB; ++m) {
        x[m] = a.q + m * a.K + sb * 256;
        I[m] = _mm256_setzero_si256();
      }
      for (int p = 0; p < 4; ++p) {
        __m256i s0[MB], s1[MB];
        for (int m = 0; m < MB; ++m) s0[m] = s1[m] = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 160 + (8 * p + c) * 32));
          const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
          for (int m = 0; m < MB; ++m) {
            int32_t x0, x1;
            std::memcpy(&x0, x[m] + 64 * p + 4 * c, 4);
            std::memcpy(&x1, x[m] + 64 * p + 32 + 4 * c, 4);
            s0[m] = dp_acc(s0[m], lo, _mm256_set1_epi32(x0));
            s1[m] = dp_acc(s1[m], hi, _mm256_set1_epi32(x1));
          }
        }
        const __m256i sc0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 32 + 16 * p)));
        const __m256i sc1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 40 + 16 * p)));
        for (int m = 0; m < MB; ++m)
          I[m] = _mm256_add_epi32(I[m], _mm256_add_epi32(_mm256_mullo_epi32(s0[m], sc0), _mm256_mullo_epi32(s1[m], sc1)));
      }
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
      const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
      __m256i mn[4];
      for (int t = 0; t < 4; ++t) mn[t] = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 96 + 16 * t)));
      for (int m = 0; m < MB; ++m) {
        int s[8];
        sums32(a.bs + m * n16 + sb * 16, s);
        __m256i Z = _mm256_setzero_si256();
        for (int t = 0; t < 4; ++t) {
          const int32_t pair = int32_t(uint32_t(uint16_t(s[2 * t])) | (uint32_t(uint16_t(s[2 * t + 1])) << 16));
          Z = _mm256_add_epi32(Z, _mm256_madd_epi16(mn[t], _mm256_set1_epi32(pair)));
        }
        const __m256 ad = _mm256_set1_ps(a.d[m * nsb + sb]);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I[m]), _mm256_mul_ps(d, ad), acc[m]);
        acc[m] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(Z), _mm256_mul_ps(dmin, ad), acc[m]);
      }
    }
    for (int m = 0; m < MB; ++m) _mm256_storeu_ps(out + m * ldo + 8 * g, acc[m]);
  }
}
#endif

// Groups [g0, g1) of a repacked matrix (type Q4_K_X8) times M activation rows, 4 at a time while
// the group's weights sit in L1. (Q6_K in the same scheme, its 6-bit codes rebuilt from nibbles and
// 2-bit planes per 8 rows, measured 0.8x the file layout's kernel: its decode costs more than the
// lanes save, so Q6_K stays as stored.)
template <int MB>
inline void x8_block(bool vec, const uint8_t* w, const A256& a, int64_t g, float* out, int64_t ldo) {
#if GG_AVX2
  if (vec) return rows_q4k_x8_avx2<MB>(w, a, g, g + 1, out, ldo);
#endif
  rows_q4k_x8_scalar<MB>(w, a, g, g + 1, out, ldo);
}

inline void rows_x8(bool vec, const uint8_t* w, const A256& a, int64_t M, int64_t g0, int64_t g1,
                    float* out, int64_t ldo) {
  const int64_t nsb = a.K / 256, n16 = a.K / 16;
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const A256 am{a.q + m0 * a.K, a.d + m0 * nsb, a.bs + m0 * n16, a.K};
      float* om = out + m0 * ldo;
      switch (mb) {
        case 1: x8_block<1>(vec, w, am, g, om, ldo); break;
        case 2: x8_block<2>(vec, w, am, g, om, ldo); break;
        case 3: x8_block<3>(vec, w, am, g, om, ldo); break;
        default: x8_block<4>(vec, w, am, g, om, ldo); break;
      }
    }
  }
}

// ---- Q5_0 x8 -------------------------------------------------------------------------------
// Group g, block b of 32 inputs (kX8Bytes50 = 176 bytes = 8 x 22, at (g * nb + b) * kX8Bytes50),
// with q(r, e) the 5-bit code of input e of row r (weight d * (q - 16)):
//   [0, 16)     d of rows 0..7 (float16)
//   [16, 144)   for c = 0..3, r = 0..7, i = 0..3 the byte q(r, 4c + i) & 15 | (q(r, 16 + 4c + i) & 15) << 4
//               at 16 + 32c + 4r + i
//   [144, 176)  for r, i the byte sum_c (q(r, 4c + i) >> 4) << c | (q(r, 16 + 4c + i) >> 4) << (4 + c)
//               at 144 + 4r + i
// Against activations rounded per 32 inputs (codes x, scale a, code sums b per 16), lane r of a
// block is S = sum_e q(r, e) x(e) - 16 (b0 + b1), exact in int32; then acc = fma(float(S), d * a, acc).
constexpr int64_t Q5_0_X8 = 1000 + Q5_0;
constexpr int64_t kX8Bytes50 = 176;

struct A32 {  // activation rows rounded per 32 inputs (gguf_mm.cpp's Acts, the fields used here)
  const int8_t* q;    // [M, K]
  const float* d;     // [M, K / 32]
  const int16_t* bs;  // [M, K / 16]
  int64_t K;
};

inline void repack_q50_x8(const uint8_t* w, int64_t pitch, int64_t nb, uint8_t* out) {
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* o = out + b * kX8Bytes50;
    for (int r = 0; r < 8; ++r) {
      const uint8_t* blk = w + r * pitch + b * 22;
      std::memcpy(o + 2 * r, blk, 2);
      uint32_t qh;
      std::memcpy(&qh, blk + 2, 4);
      uint8_t q[32];
      for (int j = 0; j < 16; ++j) {
        q[j] = uint8_t((blk[6 + j] & 15) | (((qh >> j) & 1) << 4));
        q[j + 16] = uint8_t((blk[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
      }
      for (int i = 0; i < 4; ++i) {
        uint8_t hi = 0;
        for (int c = 0; c < 4; ++c) {
          o[16 + 32 * c + 4 * r + i] = uint8_t((q[4 * c + i] & 15) | ((q[16 + 4 * c + i] & 15) << 4));
          hi |= uint8_t(((q[4 * c + i] >> 4) << c) | ((q[16 + 4 * c + i] >> 4) << (4 + c)));
        }
        o[144 + 4 * r + i] = hi;
      }
    }
  }
}

template <int MB>
void rows_q50_x8_scalar(const uint8_t* w, const A32& a, int64_t g0, int64_t g1, float* out, int64_t ldo) {
  const int64_t nb = a.K / 32, n16 = a.K / 16;
  for (int64_t g = g0; g < g1; ++g) {
    float acc[MB][8] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + (g * nb + b) * kX8Bytes50;
      for (int m = 0; m < MB; ++m) {
        const int8_t* x = a.q + m * a.K + b * 32;
        const int32_t bsum = int32_t(a.bs[m * n16 + 2 * b]) + a.bs[m * n16 + 2 * b + 1];
        const float ad = a.d[m * nb + b];
        for (int r = 0; r < 8; ++r) {
          int32_t S = 0;
          for (int c = 0; c < 4; ++c)
            for (int i = 0; i < 4; ++i) {
              const uint8_t lo = blk[16 + 32 * c + 4 * r + i], hi = blk[144 + 4 * r + i];
              S += int32_t((lo & 15) | (((hi >> c) & 1) << 4)) * x[4 * c + i];
              S += int32_t((lo >> 4) | (((hi >> (4 + c)) & 1) << 4)) * x[16 + 4 * c + i];
            }
          acc[m][r] = std::fma(float(S - 16 * bsum), f16(blk + 2 * r) * ad, acc[m][r]);
        }
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 8; ++r) out[m * ldo + 8 * g + r] = acc[m][r];
  }
}

#if GG_AVX2
template <int MB>
void rows_q50_x8_avx2(const uint8_t* w, const A32& a, int64_t g0, int64_t g1, float* out, int64_t ldo) {
  const int64_t nb = a.K / 32, n16 = a.K / 16;
  const __m256i low = _mm256_set1_epi8(0x0F), bit = _mm256_set1_epi8(0x10);
  for (int64_t g = g0; g < g1; ++g) {
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + (g * nb + b) * kX8Bytes50;
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 144));
      __m256i S[MB];
      for (int m = 0; m < MB; ++m) S[m] = _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * c));
        // bit c of each byte to bit 4 (lo), bit 4 + c to bit 4 (hi); 16-bit shifts, then per-byte masks
        const __m256i hl = _mm256_slli_epi16(qh, 4 - c), hh = _mm256_srli_epi16(qh, c);
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(hl, bit));
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), _mm256_and_si256(hh, bit));
        for (int m = 0; m < MB; ++m) {
          const int8_t* x = a.q + m * a.K + b * 32;
          int32_t x0, x1;
          std::memcpy(&x0, x + 4 * c, 4);
          std::memcpy(&x1, x + 16 + 4 * c, 4);
          S[m] = dp_acc(S[m], lo, _mm256_set1_epi32(x0));
          S[m] = dp_acc(S[m], hi, _mm256_set1_epi32(x1));
        }
      }
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
      for (int m = 0; m < MB; ++m) {
        const int32_t bsum = int32_t(a.bs[m * n16 + 2 * b]) + a.bs[m * n16 + 2 * b + 1];
        const __m256i s = _mm256_sub_epi32(S[m], _mm256_set1_epi32(16 * bsum));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(a.d[m * nb + b])), acc[m]);
      }
    }
    for (int m = 0; m < MB; ++m) _mm256_storeu_ps(out + m * ldo + 8 * g, acc[m]);
  }
}
#endif

template <int MB>
inline void x8_block50(bool vec, const uint8_t* w, const A32& a, int64_t g, float* out, int64_t ldo) {
#if GG_AVX2
  if (vec) return rows_q50_x8_avx2<MB>(w, a, g, g + 1, out, ldo);
#endif
  rows_q50_x8_scalar<MB>(w, a, g, g + 1, out, ldo);
}

inline void rows_x8_50(bool vec, const uint8_t* w, const A32& a, int64_t M, int64_t g0, int64_t g1, float* out,
                       int64_t ldo) {
  const int64_t nb = a.K / 32, n16 = a.K / 16;
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const A32 am{a.q + m0 * a.K, a.d + m0 * nb, a.bs + m0 * n16, a.K};
      float* om = out + m0 * ldo;
      switch (mb) {
        case 1: x8_block50<1>(vec, w, am, g, om, ldo); break;
        case 2: x8_block50<2>(vec, w, am, g, om, ldo); break;
        case 3: x8_block50<3>(vec, w, am, g, om, ldo); break;
        default: x8_block50<4>(vec, w, am, g, om, ldo); break;
      }
    }
  }
}

inline bool is_x8(int64_t type) { return type == Q4_K_X8 || type == Q5_0_X8; }
// bytes of one repacked group of 8 rows per block of its type (256 inputs Q4_K, 32 Q5_0)
inline int64_t x8_group_bytes(int64_t type) { return type == Q4_K_X8 ? kX8Bytes : kX8Bytes50; }
inline int64_t x8_block_elems(int64_t type) { return type == Q4_K_X8 ? 256 : 32; }

}  // namespace gguf_blocks
