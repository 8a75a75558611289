// A decoder layer's blocks in one call each, for float32 inference on the CPU over GGUF block
// weights: at one token per step a layer is ~20 small ops, and their Python and dispatcher cost
// was a third of a decode step. Each block is exactly the composition of the ops it replaces (the
// same kernels, in the same order), so every row's result stays independent of the other rows.
#include <torch/extension.h>

#include "common.h"

#include <cstring>
#include <vector>

namespace {

enum Activation : int64_t { GELU_TANH = 0, GELU = 1, SILU = 2 };

}  // namespace

// x [..., D] -> x + post_norm(down(act(gate) * up)) with gate/up = the two halves of one call over
// `gate_up` (pre_norm(x) in): the feed-forward half of a decoder layer.
torch::Tensor mlp_block(const torch::Tensor& x, const torch::Tensor& pre_w, const torch::Tensor& post_w, double eps,
                        const std::vector<torch::Tensor>& gate_up, const std::vector<int64_t>& gate_up_types,
                        const torch::Tensor& down, int64_t down_type, int64_t act) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "mlp_block: float32 x");
  const int64_t D = x.size(-1);
  auto x2 = x.reshape({-1, D}).contiguous();
  auto g = gguf_mm(rms_norm(x2, pre_w, eps), gate_up, gate_up_types, true);
  const int64_t I = g.size(1) / 2;
  TORCH_CHECK(g.size(1) == 2 * I, "mlp_block: gate and up must have the same width");
  // torch's own vectorized activations (the same numbers as the module path)
  const auto gate = g.narrow(1, 0, I), up = g.narrow(1, I, I);
  const auto a = (act == GELU_TANH ? at::gelu(gate, "tanh") : act == GELU ? at::gelu(gate) : at::silu(gate)) * up;
  auto y = gguf_mm(a, {down}, {down_type}, true);
  return (x2 + rms_norm(y, post_w, eps)).view(x.sizes());
}

// x [B, T, D] -> q [B, T, Hq, Dh] and k, v [B, T, Hk, Dh]: the input norm, one call over the q/k/v
// blocks (`sizes`: their widths; a zero v width means v = k before its norm; zero k and v widths:
// q only), per-head norms and rotary on q and k, and the plain RMS norm on v when `v_norm`; with a
// non-empty `k_cache`, k and v are also written to the cache at [rows[r], :, slots[r, t]].
namespace {
// kc/vc [Bc, H, S, D] (contiguous float32) at [rows[r], :, slots[r, t], :] <- k/v [R, T, H, D]
void write_kv(const torch::Tensor& kc, const torch::Tensor& vc, const torch::Tensor& rows, const torch::Tensor& slots,
              const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t R = k.size(0), T = k.size(1), H = k.size(2), D = k.size(3);
  TORCH_CHECK(kc.dim() == 4 && kc.is_contiguous() && vc.is_contiguous() && kc.sizes() == vc.sizes() &&
                  kc.scalar_type() == torch::kFloat32 && vc.scalar_type() == torch::kFloat32 &&
                  kc.size(1) == H && kc.size(3) == D,
              "attn_in: the KV cache must be contiguous float32 [B, H, S, D] matching k");
  TORCH_CHECK(rows.numel() == R && slots.dim() == 2 && slots.size(0) == R && slots.size(1) == T &&
                  rows.scalar_type() == torch::kLong && slots.scalar_type() == torch::kLong,
              "attn_in: rows [R] and slots [R, T] int64");
  auto rc = rows.contiguous(), sc = slots.contiguous();
  auto kk = k.contiguous(), vv = v.contiguous();
  const int64_t* rp = rc.data_ptr<int64_t>();
  const int64_t* sp = sc.data_ptr<int64_t>();
  const int64_t B = kc.size(0), S = kc.size(2);
  float* kcp = kc.data_ptr<float>();
  float* vcp = vc.data_ptr<float>();
  const float* kp = kk.data_ptr<float>();
  const float* vp = vv.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(rp[r] >= 0 && rp[r] < B, "attn_in: cache row out of range");
    for (int64_t t = 0; t < T; ++t) {
      const int64_t slot = sp[r * T + t];
      TORCH_CHECK(slot >= 0 && slot < S, "attn_in: cache slot out of range");
      for (int64_t h = 0; h < H; ++h) {
        const int64_t dst = ((rp[r] * H + h) * S + slot) * D, src = ((r * T + t) * H + h) * D;
        std::memcpy(kcp + dst, kp + src, D * sizeof(float));
        std::memcpy(vcp + dst, vp + src, D * sizeof(float));
      }
    }
  }
}
}  // namespace

std::vector<torch::Tensor> attn_in(const torch::Tensor& x, const torch::Tensor& in_w, double eps,
                                   const std::vector<torch::Tensor>& qkv, const std::vector<int64_t>& types,
                                   const std::vector<int64_t>& sizes, int64_t head_dim, const torch::Tensor& q_w,
                                   const torch::Tensor& k_w, bool v_norm, const torch::Tensor& cos,
                                   const torch::Tensor& sin, const torch::Tensor& k_cache,
                                   const torch::Tensor& v_cache, const torch::Tensor& rows,
                                   const torch::Tensor& slots) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && sizes.size() == 3, "attn_in: float32 x [B, T, D]");
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2);
  auto p = gguf_mm(rms_norm(x.reshape({-1, D}).contiguous(), in_w, eps), qkv, types, true);
  const int64_t nq = sizes[0], nk = sizes[1], nv = sizes[2];
  TORCH_CHECK(p.size(1) == nq + nk + nv, "attn_in: the q/k/v widths do not add up");
  auto q = head_norm_rope(p.narrow(1, 0, nq).contiguous().view({B, T, -1, head_dim}), q_w, eps, cos, sin);
  if (nk == 0) return {q};  // a layer reading another layer's KV
  auto k_raw = p.narrow(1, nq, nk).contiguous().view({B, T, -1, head_dim});
  auto k = head_norm_rope(k_raw, k_w, eps, cos, sin);
  auto v = nv ? p.narrow(1, nq + nk, nv).contiguous().view({B, T, -1, head_dim}) : k_raw;
  if (v_norm) v = rms_norm(v.contiguous(), torch::empty({0}, x.options()), eps);
  if (k_cache.numel() > 0) write_kv(k_cache, v_cache, rows, slots, k, v);
  return {q, k, v};
}

// residual [B, T, D], q [B, T, Hq, Dh], keys/values [B, Hk, S, Dh], mask [B or 1, 1, T, S] ->
// residual + post_norm(o_proj(attention)), attention one query row at a time.
torch::Tensor attn_out(const torch::Tensor& residual, const torch::Tensor& q, const torch::Tensor& keys,
                       const torch::Tensor& values, const torch::Tensor& mask, double scale, double cap,
                       const torch::Tensor& o, int64_t o_type, const torch::Tensor& post_w, double eps) {
  const int64_t B = q.size(0), T = q.size(1), D = residual.size(-1);
  auto a = attend_rows(q, keys, values, mask.expand({B, 1, T, keys.size(2)}), scale, cap);
  auto y = gguf_mm(a.view({B * T, -1}), {o}, {o_type}, true);
  return (residual.reshape({-1, D}) + rms_norm(y, post_w, eps)).view(residual.sizes());
}
