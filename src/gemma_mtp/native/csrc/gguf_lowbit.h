// Decoders of the low-bit GGUF types into `Sub` / `VBlock` (gguf_blocks.h): Q2_K, Q3_K (super-blocks
// of 256), IQ4_NL (blocks of 32), IQ4_XS and the grid i-quants IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS,
// IQ2_S, IQ1_S, IQ1_M, with the byte layouts of ggml's block_* structs (ggml-common.h).
//
// Each one reproduces gguf-py's float32 arithmetic (`gguf.quants`), so `d * s * c + m * ms` is its
// dequantized weight bit for bit:
// - Q2_K: d * (scale & 15) * q - dmin * (scale >> 4), scale and min per 16;
// - Q3_K: d * (6-bit scale - 32) * (q - 4 unless the hmask bit is set), scale per 16;
// - IQ4_NL / IQ4_XS: d * kvalue (IQ4_XS: d * (6-bit scale - 32) * kvalue);
// - IQ3_XXS, IQ2_XXS: db * (+-grid) with db = d * (0.5 + ls) * k (k = 0.5, 0.25) per 32, as is;
// - IQ3_S: d * (1 + 2 ls) * (+-grid) per 32;
// - IQ2_XS, IQ2_S: db = d * (0.5 + ls) * 0.25 per 16, written (d / 8) * (2 ls + 1): equal because
//   scaling by a power of two is exact (d is an fp16, far above float32's subnormals);
// - IQ1_S, IQ1_M: dl * (grid + delta) with delta = +-1/8 and dl = d * (2 ls + 1), written
//   (d / 8) * (2 ls + 1) * (8 grid +- 1), exact for the same reason.
#pragma once

#include "gguf_blocks.h"
#include "iq_tables.h"

#include <torch/extension.h>

namespace gguf_blocks {

// Q3_K: the k-th of the 16 signed 6-bit scales packed in 12 bytes.
inline int scale_q3k(int k, const uint8_t* sc) {
  const int lo = k < 8 ? sc[k] & 0xF : sc[k - 8] >> 4;
  const int hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

// IQ4_XS: the j-th signed 6-bit scale (one per 32).
inline int scale_iq4xs(int j, const uint8_t* b) {
  const int lo = (b[4 + j / 2] >> (4 * (j % 2))) & 0xF;
  const int hi = (u16(b + 2) >> (2 * j)) & 3;
  return (lo | (hi << 4)) - 32;
}

// IQ1_M: the fp16 super-block scale, spread over the top nibbles of the four scale words.
inline float scale_iq1m(const uint8_t* b) {
  const uint8_t* sc = b + 48;
  return f16_bits(uint16_t((u16(sc) >> 12) | ((u16(sc + 2) >> 8) & 0x00F0) | ((u16(sc + 4) >> 4) & 0x0F00) |
                           (u16(sc + 6) & 0xF000)));
}

// 8 codes c[l] = (sign bit l ? -1 : 1) * byte l of a grid row (for rows of 4 bytes, two rows).
inline void signed_row(uint64_t row, uint8_t signs, int8_t* c) {
  for (int l = 0; l < 8; ++l) {
    const int v = int(row >> (8 * l)) & 0xFF;
    c[l] = int8_t((signs >> l) & 1 ? -v : v);
  }
}

// IQ1_S / IQ1_M: 8 codes 8 * grid + delta (grid bytes in {-1, 0, 1}, delta = +-1).
inline void iq1_row(uint64_t row, int delta, int8_t* c) {
  for (int l = 0; l < 8; ++l) c[l] = int8_t(8 * int8_t(row >> (8 * l)) + delta);
}

// Sub-block j (0..7; 0 for IQ4_NL) of a low-bit block at `b`.
inline void decode_sub_lowbit(int64_t type, const uint8_t* b, int j, Sub& o) {
  o.s[0] = o.s[1] = 1;
  o.ms[0] = o.ms[1] = 1;
  o.m = 0.f;
  switch (type) {
    case Q2_K: {
      const uint8_t* sc = b + 2 * j;
      const uint8_t* q = b + 16 + 32 * (j / 4);
      const int shift = 2 * (j % 4);
      o.d = f16(b + 80);
      o.m = -f16(b + 82);
      o.s[0] = sc[0] & 0xF, o.s[1] = sc[1] & 0xF;
      o.ms[0] = sc[0] >> 4, o.ms[1] = sc[1] >> 4;
      for (int i = 0; i < 32; ++i) o.c[i] = int8_t((q[i] >> shift) & 3);
      return;
    }
    case Q3_K: {
      const uint8_t* q = b + 32 + 32 * (j / 4);
      const int shift = 2 * (j % 4);
      o.d = f16(b + 108);
      o.s[0] = int16_t(scale_q3k(2 * j, b + 96)), o.s[1] = int16_t(scale_q3k(2 * j + 1, b + 96));
      for (int i = 0; i < 32; ++i) o.c[i] = int8_t(((q[i] >> shift) & 3) - ((b[i] >> j) & 1 ? 0 : 4));
      return;
    }
    case IQ4_NL:
    case IQ4_XS: {
      const uint8_t* q = type == IQ4_NL ? b + 2 : b + 8 + 16 * j;
      o.d = f16(b);
      if (type == IQ4_XS) o.s[0] = o.s[1] = int16_t(scale_iq4xs(j, b));
      for (int i = 0; i < 16; ++i) {
        o.c[i] = kvalues_iq4nl[q[i] & 0xF];
        o.c[i + 16] = kvalues_iq4nl[q[i] >> 4];
      }
      return;
    }
    case IQ2_XXS: {
      const uint32_t idx = u32(b + 2 + 8 * j), aux = u32(b + 6 + 8 * j);
      o.d = f16(b) * (0.5f + float(aux >> 28)) * 0.25f;
      for (int k = 0; k < 4; ++k)
        signed_row(iq2xxs_grid[(idx >> (8 * k)) & 0xFF], ksigns_iq2xs[(aux >> (7 * k)) & 127], o.c + 8 * k);
      return;
    }
    case IQ2_XS: {
      const uint8_t sc = b[66 + j];
      o.d = f16(b) * 0.125f;
      o.s[0] = int16_t(2 * (sc & 0xF) + 1), o.s[1] = int16_t(2 * (sc >> 4) + 1);
      for (int k = 0; k < 4; ++k) {
        const uint16_t q = u16(b + 2 + 2 * (4 * j + k));
        signed_row(iq2xs_grid[q & 511], ksigns_iq2xs[q >> 9], o.c + 8 * k);
      }
      return;
    }
    case IQ2_S: {
      const uint8_t sc = b[74 + j], qh = b[66 + j];
      o.d = f16(b) * 0.125f;
      o.s[0] = int16_t(2 * (sc & 0xF) + 1), o.s[1] = int16_t(2 * (sc >> 4) + 1);
      for (int k = 0; k < 4; ++k) {
        const int idx = b[2 + 4 * j + k] | (((qh >> (2 * k)) & 3) << 8);
        signed_row(iq2s_grid[idx], b[34 + 4 * j + k], o.c + 8 * k);
      }
      return;
    }
    case IQ3_XXS: {
      const uint8_t* q = b + 2 + 8 * j;
      const uint32_t aux = u32(b + 66 + 4 * j);
      o.d = f16(b) * (0.5f + float(aux >> 28)) * 0.5f;
      for (int k = 0; k < 4; ++k) {
        const uint64_t row = iq3xxs_grid[q[2 * k]] | uint64_t(iq3xxs_grid[q[2 * k + 1]]) << 32;
        signed_row(row, ksigns_iq2xs[(aux >> (7 * k)) & 127], o.c + 8 * k);
      }
      return;
    }
    case IQ3_S: {
      const uint8_t* q = b + 2 + 8 * j;
      const uint8_t qh = b[66 + j];
      o.d = f16(b);
      o.s[0] = o.s[1] = int16_t(1 + 2 * ((b[106 + j / 2] >> (4 * (j % 2))) & 0xF));
      for (int k = 0; k < 4; ++k) {
        const int i0 = q[2 * k] | (((qh >> (2 * k)) & 1) << 8), i1 = q[2 * k + 1] | (((qh >> (2 * k + 1)) & 1) << 8);
        signed_row(iq3s_grid[i0] | uint64_t(iq3s_grid[i1]) << 32, b[74 + 4 * j + k], o.c + 8 * k);
      }
      return;
    }
    case IQ1_S: {
      const uint16_t qh = u16(b + 34 + 2 * j);
      o.d = f16(b) * 0.125f;
      o.s[0] = o.s[1] = int16_t(2 * ((qh >> 12) & 7) + 1);
      const int delta = qh & 0x8000 ? -1 : 1;
      for (int k = 0; k < 4; ++k)
        iq1_row(iq1s_grid[b[2 + 4 * j + k] | (((qh >> (3 * k)) & 7) << 8)], delta, o.c + 8 * k);
      return;
    }
    case IQ1_M: {
      const uint16_t sc = u16(b + 48 + 2 * (j / 2));
      o.d = scale_iq1m(b) * 0.125f;
      o.s[0] = int16_t(2 * ((sc >> (6 * (j % 2))) & 7) + 1), o.s[1] = int16_t(2 * ((sc >> (6 * (j % 2) + 3)) & 7) + 1);
      for (int k = 0; k < 4; ++k) {
        const int nib = (b[32 + 2 * j + k / 2] >> (4 * (k % 2))) & 0xF;
        iq1_row(iq1s_grid[b[4 * j + k] | ((nib & 7) << 8)], nib & 8 ? -1 : 1, o.c + 8 * k);
      }
      return;
    }
    default:
      TORCH_CHECK(false, "gguf_mm: unsupported GGUF type ", type);
  }
}

#if GG_AVX2
// Codes = (sign bit i ? -1 : 1) * byte i of g.
inline __m256i apply_signs(__m256i g, uint32_t sign_bits) {
  return _mm256_sign_epi8(g, _mm256_or_si256(bytes_from_bits(sign_bits), _mm256_set1_epi8(1)));
}

// Four 7-bit sign indices (bits 0..27 of aux) -> 32 sign bits.
inline uint32_t ksigns4(uint32_t aux) {
  return uint32_t(ksigns_iq2xs[aux & 127]) | uint32_t(ksigns_iq2xs[(aux >> 7) & 127]) << 8 |
         uint32_t(ksigns_iq2xs[(aux >> 14) & 127]) << 16 | uint32_t(ksigns_iq2xs[(aux >> 21) & 127]) << 24;
}

inline __m256i grid64(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  return _mm256_set_epi64x(static_cast<long long>(d), static_cast<long long>(c), static_cast<long long>(b),
                           static_cast<long long>(a));
}

// IQ1_S / IQ1_M: 8 * grid + delta per byte, grid bytes in {-1, 0, 1}, deltas per 8 lanes as bytes.
inline __m256i iq1_codes(__m256i g, __m256i delta) {
  return _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), g), delta);
}

// 8 bytes of delta: -1 where `bit` (0 or 1) is set, else +1; without a branch (the bits are random).
inline long long delta8(uint32_t bit) { return static_cast<long long>(0x0101010101010101ULL | (0ULL - bit)); }

// The codes and scales of a low-bit block, as `decode_sub_lowbit` gives them (AVX2).
template <int T>
inline void decode_vec_lowbit(const uint8_t* b, VBlock& o) {
  const __m256i ones = _mm256_set1_epi16(1);
  o.n = T == IQ4_NL ? 1 : 8;
  for (int j = 0; j < o.n; ++j) o.m[j] = 0.f;
  if constexpr (T == IQ4_NL) {
    o.d[0] = f16(b);
    o.s[0] = ones;
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kvalues_iq4nl)));
    o.c[0] = _mm256_shuffle_epi8(kv, nibbles16(b + 2));
  } else if constexpr (T == Q2_K || T == Q3_K) {
    const uint8_t* qs = b + (T == Q2_K ? 16 : 32);
    const __m256i three = _mm256_set1_epi8(3);
    const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32));
    const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));  // Q3_K's hmask
    const float d = f16(b + (T == Q2_K ? 80 : 108));
    for (int j = 0; j < 8; ++j) {
      const __m256i q = j < 4 ? q0 : q1;
      const __m256i ql = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (j % 4)), three);
      o.d[j] = d;
      if constexpr (T == Q2_K) {
        o.c[j] = ql;
        o.s[j] = scales16(b[2 * j] & 0xF, b[2 * j + 1] & 0xF);
      } else {
        const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << j));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit);
        o.c[j] = _mm256_sub_epi8(ql, _mm256_andnot_si256(set, _mm256_set1_epi8(4)));
        o.s[j] = scales16(scale_q3k(2 * j, b + 96), scale_q3k(2 * j + 1, b + 96));
      }
    }
    if constexpr (T == Q2_K) {
      const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
      o.ms = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0F)));
      o.dm = -f16(b + 82);
    }
  } else if constexpr (T == IQ4_XS) {
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kvalues_iq4nl)));
    const float d = f16(b);
    for (int j = 0; j < 8; ++j) {
      const int ls = scale_iq4xs(j, b);
      o.d[j] = d;
      o.s[j] = scales16(ls, ls);
      o.c[j] = _mm256_shuffle_epi8(kv, nibbles16(b + 8 + 16 * j));
    }
  } else if constexpr (T == IQ2_XXS) {
    const float d = f16(b);
    for (int j = 0; j < 8; ++j) {
      const uint32_t idx = u32(b + 2 + 8 * j), aux = u32(b + 6 + 8 * j);
      o.d[j] = d * (0.5f + float(aux >> 28)) * 0.25f;
      o.s[j] = ones;
      const __m256i g = grid64(iq2xxs_grid[idx & 0xFF], iq2xxs_grid[(idx >> 8) & 0xFF], iq2xxs_grid[(idx >> 16) & 0xFF],
                               iq2xxs_grid[idx >> 24]);
      o.c[j] = apply_signs(g, ksigns4(aux));
    }
  } else if constexpr (T == IQ2_XS || T == IQ2_S) {
    const float d = f16(b) * 0.125f;
    for (int j = 0; j < 8; ++j) {
      const uint8_t sc = b[(T == IQ2_XS ? 66 : 74) + j];
      o.d[j] = d;
      o.s[j] = scales16(2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1);
      if constexpr (T == IQ2_XS) {
        const uint8_t* q = b + 2 + 8 * j;
        const uint16_t q0 = u16(q), q1 = u16(q + 2), q2 = u16(q + 4), q3 = u16(q + 6);
        const __m256i g =
            grid64(iq2xs_grid[q0 & 511], iq2xs_grid[q1 & 511], iq2xs_grid[q2 & 511], iq2xs_grid[q3 & 511]);
        const uint32_t signs = uint32_t(ksigns_iq2xs[q0 >> 9]) | uint32_t(ksigns_iq2xs[q1 >> 9]) << 8 |
                               uint32_t(ksigns_iq2xs[q2 >> 9]) << 16 | uint32_t(ksigns_iq2xs[q3 >> 9]) << 24;
        o.c[j] = apply_signs(g, signs);
      } else {
        const uint8_t* q = b + 2 + 4 * j;
        const int qh = b[66 + j];
        const __m256i g = grid64(iq2s_grid[q[0] | ((qh << 8) & 0x300)], iq2s_grid[q[1] | ((qh << 6) & 0x300)],
                                 iq2s_grid[q[2] | ((qh << 4) & 0x300)], iq2s_grid[q[3] | ((qh << 2) & 0x300)]);
        o.c[j] = apply_signs(g, u32(b + 34 + 4 * j));
      }
    }
  } else if constexpr (T == IQ3_XXS || T == IQ3_S) {
    const float d = f16(b);
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = b + 2 + 8 * j;
      uint32_t signs;
      __m256i g;
      if constexpr (T == IQ3_XXS) {
        const uint32_t aux = u32(b + 66 + 4 * j);
        o.d[j] = d * (0.5f + float(aux >> 28)) * 0.5f;
        o.s[j] = ones;
        g = _mm256_set_epi32(int(iq3xxs_grid[q[7]]), int(iq3xxs_grid[q[6]]), int(iq3xxs_grid[q[5]]),
                             int(iq3xxs_grid[q[4]]), int(iq3xxs_grid[q[3]]), int(iq3xxs_grid[q[2]]),
                             int(iq3xxs_grid[q[1]]), int(iq3xxs_grid[q[0]]));
        signs = ksigns4(aux);
      } else {
        const int qh = b[66 + j];
        const int ls = 1 + 2 * ((b[106 + j / 2] >> (4 * (j % 2))) & 0xF);
        o.d[j] = d;
        o.s[j] = scales16(ls, ls);
        g = _mm256_set_epi32(int(iq3s_grid[q[7] | ((qh << 1) & 0x100)]), int(iq3s_grid[q[6] | ((qh << 2) & 0x100)]),
                             int(iq3s_grid[q[5] | ((qh << 3) & 0x100)]), int(iq3s_grid[q[4] | ((qh << 4) & 0x100)]),
                             int(iq3s_grid[q[3] | ((qh << 5) & 0x100)]), int(iq3s_grid[q[2] | ((qh << 6) & 0x100)]),
                             int(iq3s_grid[q[1] | ((qh << 7) & 0x100)]), int(iq3s_grid[q[0] | ((qh << 8) & 0x100)]));
        signs = u32(b + 74 + 4 * j);
      }
      o.c[j] = apply_signs(g, signs);
    }
  } else if constexpr (T == IQ1_S) {
    const float d = f16(b) * 0.125f;
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = b + 2 + 4 * j;
      const int qh = u16(b + 34 + 2 * j);
      o.d[j] = d;
      o.s[j] = scales16(2 * ((qh >> 12) & 7) + 1, 2 * ((qh >> 12) & 7) + 1);
      const __m256i g = grid64(iq1s_grid[q[0] | ((qh << 8) & 0x700)], iq1s_grid[q[1] | ((qh << 5) & 0x700)],
                               iq1s_grid[q[2] | ((qh << 2) & 0x700)], iq1s_grid[q[3] | ((qh >> 1) & 0x700)]);
      o.c[j] = iq1_codes(g, _mm256_set1_epi64x(delta8(uint32_t(qh) >> 15)));
    }
  } else {  // IQ1_M
    static_assert(T == IQ1_M, "decode_vec_lowbit: not a low-bit type");
    const float d = scale_iq1m(b) * 0.125f;
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = b + 4 * j;
      const int sc = u16(b + 48 + 2 * (j / 2)) >> (6 * (j % 2));
      const int h0 = b[32 + 2 * j], h1 = b[33 + 2 * j];
      o.d[j] = d;
      o.s[j] = scales16(2 * (sc & 7) + 1, 2 * ((sc >> 3) & 7) + 1);
      const __m256i g = grid64(iq1s_grid[q[0] | ((h0 << 8) & 0x700)], iq1s_grid[q[1] | ((h0 << 4) & 0x700)],
                               iq1s_grid[q[2] | ((h1 << 8) & 0x700)], iq1s_grid[q[3] | ((h1 << 4) & 0x700)]);
      const __m256i delta = _mm256_set_epi64x(delta8((h1 >> 7) & 1), delta8((h1 >> 3) & 1), delta8((h0 >> 7) & 1),
                                              delta8((h0 >> 3) & 1));
      o.c[j] = iq1_codes(g, delta);
    }
  }
}
#endif

}  // namespace gguf_blocks
