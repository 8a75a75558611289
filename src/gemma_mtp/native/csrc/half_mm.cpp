// Float32 activations times a bfloat16 or float16 weight matrix kept as stored (a GGUF file's BF16 /
// F16 matrices, e.g. Gemma 4's per_layer_model_proj): each weight is widened to float32 exactly and
// multiplied in float32, so the product is exact up to float32 accumulation. The weights are read
// once per group of up to 4 activation rows (2 bytes a weight instead of a float32 copy's 4).
//
// Batch invariance: every activation row is accumulated in the same order whatever M is and
// whichever group of 4 it falls in (per row: 4 running 8-lane sums over each 32 inputs, then
// (s0 + s1) + (s2 + s3), then the lanes, then the inputs past the last multiple of 32 in order), so
// verifying drafts gives the bits a single-row decode step gives.
#include "common.h"

namespace half_mm_impl {

inline float widen(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
template <bool BF16>
inline __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

// out[m * ldo + n] for weight rows [n0, n1) and MB activation rows.
template <bool BF16, int MB>
void rows(const float* x, int64_t K, const uint16_t* w, int64_t pitch, int64_t n0, int64_t n1, float* out,
          int64_t ldo) {
  const int64_t K32 = K / 32 * 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * pitch;
    __m256 acc[MB][4];
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K32; k += 32) {
      const __m256 w0 = load8<BF16>(wr + k), w1 = load8<BF16>(wr + k + 8);
      const __m256 w2 = load8<BF16>(wr + k + 16), w3 = load8<BF16>(wr + k + 24);
      for (int m = 0; m < MB; ++m) {
        const float* xm = x + m * K + k;
        acc[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xm), acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8), acc[m][1]);
        acc[m][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xm + 16), acc[m][2]);
        acc[m][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xm + 24), acc[m][3]);
      }
    }
    for (int m = 0; m < MB; ++m) {
      float s = native::hsum(_mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3])));
      for (int64_t k = K32; k < K; ++k) s += widen(wr[k], BF16) * x[m * K + k];
      out[m * ldo + n] = s;
    }
  }
}
#endif

// The portable path: the same order of operations per row, lane by lane.
inline void rows_scalar(bool bf16, const float* x, int64_t K, const uint16_t* w, int64_t pitch, int64_t n0,
                        int64_t n1, float* out, int64_t ldo, int64_t M) {
  const int64_t K32 = K / 32 * 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * pitch;
    for (int64_t m = 0; m < M; ++m) {
      float acc[4][8] = {};
      for (int64_t k = 0; k < K32; k += 32)
        for (int j = 0; j < 4; ++j)
          for (int l = 0; l < 8; ++l)
            acc[j][l] = std::fma(widen(wr[k + 8 * j + l], bf16), x[m * K + k + 8 * j + l], acc[j][l]);
      float lanes[8];
      for (int l = 0; l < 8; ++l) lanes[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
      // native::hsum's order: (l, l + 4), then (l, l + 2), then (0, 1)
      float h[4];
      for (int l = 0; l < 4; ++l) h[l] = lanes[l] + lanes[l + 4];
      const float s01 = h[0] + h[2], s23 = h[1] + h[3];
      float s = s01 + s23;
      for (int64_t k = K32; k < K; ++k) s += widen(wr[k], bf16) * x[m * K + k];
      out[m * ldo + n] = s;
    }
  }
}

}  // namespace half_mm_impl

// x [M, K] (any float dtype) times w [N, K] (bfloat16 or float16, rows contiguous) -> float32 [M, N].
torch::Tensor half_mm(const torch::Tensor& x, const torch::Tensor& w, bool vectorized) {
  using namespace half_mm_impl;
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "half_mm: x [M, K] and w [N, K]");
  TORCH_CHECK(w.is_cpu() && w.stride(1) == 1 &&
                  (w.scalar_type() == torch::kBFloat16 || w.scalar_type() == torch::kHalf),
              "half_mm: w must be a bfloat16 or float16 CPU tensor with contiguous rows");
  const bool bf16 = w.scalar_type() == torch::kBFloat16;
  const auto xf = x.to(torch::kFloat32).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), N = w.size(0);
  auto out = torch::empty({M, N}, xf.options());
  if (M == 0 || N == 0) return out;
  const float* xp = xf.data_ptr<float>();
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  const int64_t pitch = w.stride(0);
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(16, (int64_t(1) << 17) / std::max<int64_t>(1, K));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const float* xm = xp + m0 * K;
      float* om = o + m0 * N;
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
      if (vectorized) {
#define HALF_ROWS(B)                                                   \
  switch (mb) {                                                        \
    case 1: rows<B, 1>(xm, K, wp, pitch, n0, n1, om, N); break;        \
    case 2: rows<B, 2>(xm, K, wp, pitch, n0, n1, om, N); break;        \
    case 3: rows<B, 3>(xm, K, wp, pitch, n0, n1, om, N); break;        \
    default: rows<B, 4>(xm, K, wp, pitch, n0, n1, om, N); break;       \
  }
        if (bf16) {
          HALF_ROWS(true)
        } else {
          HALF_ROWS(false)
        }
#undef HALF_ROWS
        continue;
      }
#endif
      rows_scalar(bf16, xm, K, wp, pitch, n0, n1, om, N, mb);
    }
  });
  return out;
}
