// Float64 reference forward. Work is split into (sequence, query head, block of query rows)
// items run on a few threads; each item gathers the keys it can see into float64 buffers, with
// K transposed ([dim][key]) so that both products are unit-stride loops the compiler vectorises.
#include "runtime/reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "jitattn/error.h"
#include "runtime/numeric.h"
#include "runtime/problem.h"
#include "runtime/reference_internal.h"
#include "templates/philox.h"

namespace jitattn::reference {
namespace detail {
// Reads n elements t[offset + s * stride] into out[s * out_stride] as doubles.
template <typename Load>
void gather_with(Load load, int64_t offset, int64_t stride, int64_t n, double* out,
                 int64_t out_stride) {
  for (int64_t s = 0; s < n; ++s) out[s * out_stride] = load(offset + s * stride);
}

void gather(const TensorRef& t, int64_t offset, int64_t stride, int64_t n, double* out,
            int64_t out_stride) {
  // The dtype switch is hoisted out of the element loop.
  switch (t.dtype) {
    case DType::f16: {
      const auto* p = static_cast<const uint16_t*>(t.data);
      gather_with([p](int64_t i) { return double(f16_bits_to_float(p[i])); }, offset, stride, n,
                  out, out_stride);
      return;
    }
    case DType::bf16: {
      const auto* p = static_cast<const uint16_t*>(t.data);
      gather_with([p](int64_t i) { return double(bf16_bits_to_float(p[i])); }, offset, stride, n,
                  out, out_stride);
      return;
    }
    case DType::f32: {
      const auto* p = static_cast<const float*>(t.data);
      gather_with([p](int64_t i) { return double(p[i]); }, offset, stride, n, out, out_stride);
      return;
    }
  }
}

std::vector<Sequence> sequences(const AttentionArgs& args, const Problem& p) {
  std::vector<Sequence> seqs(static_cast<size_t>(p.batch));
  for (int b = 0; b < p.batch; ++b) {
    Sequence& s = seqs[static_cast<size_t>(b)];
    s.bias_batch = b;
    if (p.varlen == VarlenKind::packed) {
      const int32_t* cu[2] = {args.cu_seqlens_q, args.cu_seqlens_k};
      const char* names[2] = {"cu_seqlens_q", "cu_seqlens_k"};
      const int64_t totals[2] = {p.total_q, p.total_k};
      const int64_t maxima[2] = {p.seqlen_q, p.seqlen_k};
      int64_t begin[2] = {};
      int64_t len[2] = {};
      for (int w = 0; w < 2; ++w) {
        const int64_t lo = cu[w][b];
        const int64_t hi = cu[w][b + 1];
        if (lo < 0 || hi < lo || hi > totals[w] || hi - lo > maxima[w]) {
          throw InvalidArgument(names[w], fmt::format("entries {}..{} are [{}, {}]: offsets must "
                                                      "be non-decreasing within [0, {}] and each "
                                                      "length <= max_seqlen ({})",
                                                      b, b + 1, lo, hi, totals[w], maxima[w]));
        }
        begin[w] = lo;
        len[w] = hi - lo;
      }
      s.q_row0 = begin[0];
      s.k_row0 = begin[1];
      s.len_q = len[0];
      s.len_k = len[1];
    } else {
      s.batch_index = b;
      s.len_q = p.seqlen_q;
      s.len_k = p.seqlen_k;
      if (p.varlen == VarlenKind::padded) {
        if (args.seqused_q != nullptr) s.len_q = args.seqused_q[b];
        if (args.seqused_k != nullptr) s.len_k = args.seqused_k[b];
        if (s.len_q < 0 || s.len_q > p.seqlen_q) {
          throw InvalidArgument("seqused_q", fmt::format("entry {} must be in [0, {}], got {}", b,
                                                         p.seqlen_q, s.len_q));
        }
        if (s.len_k < 0 || s.len_k > p.seqlen_k) {
          throw InvalidArgument("seqused_k", fmt::format("entry {} must be in [0, {}], got {}", b,
                                                         p.seqlen_k, s.len_k));
        }
      }
    }
  }
  return seqs;
}

Problem validate_for_reference(const AttentionArgs& args) {
  if (args.q.dtype != DType::f32) return validate(args);
  AttentionArgs a = args;
  for (TensorRef* t : {&a.q, &a.k, &a.v, &a.o, &a.bias}) {
    if (t == &a.bias && t->empty()) continue;
    if (t->dtype != DType::f32) {
      throw InvalidArgument("q.dtype", "f32 inputs (reference only) need f32 k, v, o and bias");
    }
    t->dtype = DType::bf16;  // validate() checks everything else; element strides are unchanged
  }
  Problem p = validate(a);
  p.dtype = DType::f32;
  return p;
}

double dropout_factor(const AttentionArgs& args, const Problem& p, int64_t b, int64_t h,
                      int64_t i, int64_t j) {
  if (!p.dropout()) return 1.0;
  const uint32_t bh = static_cast<uint32_t>(b * p.heads_q + h);
  const bool keep = jitattn_kernel::dropout_keep(args.dropout_seed, args.dropout_offset, bh,
                                                 static_cast<uint32_t>(i), static_cast<uint32_t>(j),
                                                 dropout_threshold(p.dropout_p));
  return keep ? 1.0 / (1.0 - double(p.dropout_p)) : 0.0;
}

}  // namespace detail

namespace {

using detail::gather;
using detail::Sequence;
using detail::sequences;
using detail::dropout_factor;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
// Query rows per work item: large enough that gathering K/V (O(keys * dim)) is cheap next to
// the products (O(rows * keys * dim)), small enough to spread one long sequence over threads.
constexpr int64_t kRowBlock = 64;
// Rows computed together so that each K/V element loaded is used kGroup times, and keys per
// chunk of the QK product (kKeyChunk doubles of K per dim stay in L1).
constexpr int64_t kGroup = 8;
constexpr int64_t kKeyChunk = 256;

class Forward {
 public:
  Forward(const AttentionArgs& args, const Problem& p, std::vector<Sequence> seqs, Result& result)
      : args_(args), p_(p), seqs_(std::move(seqs)), result_(result) {}

  const Sequence& sequence(int64_t b) const { return seqs_[static_cast<size_t>(b)]; }

  // One work item: query head h, rows [row_begin, row_end) of sequence b.
  void run(int64_t b, int64_t h, int64_t row_begin, int64_t row_end) const;

 private:
  // Allowed keys of query i form one interval [lo, hi] (empty when lo > hi): the causal and
  // window bounds are all of the form j <= i + c or j >= i - c.
  void key_range(const Sequence& s, int64_t i, int64_t& lo, int64_t& hi) const {
    const int64_t diag = i + offset(s);
    lo = 0;
    hi = s.len_k - 1;
    if (p_.mask != MaskKind::none) hi = std::min(hi, diag);
    if (p_.window) {
      if (p_.window_left >= 0) lo = std::max(lo, diag - p_.window_left);
      if (p_.window_right >= 0) hi = std::min(hi, diag + p_.window_right);
    }
  }
  int64_t offset(const Sequence& s) const {
    return p_.mask == MaskKind::causal_bottom_right ? s.len_k - s.len_q : 0;
  }

  const AttentionArgs& args_;
  const Problem& p_;
  std::vector<Sequence> seqs_;
  Result& result_;
};

void Forward::run(int64_t b, int64_t h, int64_t row_begin, int64_t row_end) const {
  const Sequence& s = seqs_[static_cast<size_t>(b)];
  const TensorRef& q = args_.q;
  const TensorRef& k = args_.k;
  const TensorRef& v = args_.v;
  const int64_t d = p_.head_dim;
  const int64_t dv = p_.head_dim_v;
  const int64_t h_kv = h / (p_.heads_q / p_.heads_kv);
  const bool packed = p_.varlen == VarlenKind::packed;

  // Keys visible to any row of the item: both interval bounds are non-decreasing in i.
  int64_t key0 = 0, unused = 0, last_hi = 0;
  key_range(s, row_begin, key0, unused);
  key_range(s, row_end - 1, unused, last_hi);
  const int64_t nk = std::max<int64_t>(std::min(last_hi + 1, s.len_k) - key0, 0);
  if (nk == 0) return;  // every row fully masked: result stays 0 / -inf

  // kt: (d, nk) transposed keys; vs: (nk, dv) values; key j lives at column j - key0.
  std::vector<double> kt(static_cast<size_t>(d * nk));
  std::vector<double> vs(static_cast<size_t>(nk * dv));
  for (int64_t c = 0; c < nk; ++c) {
    const int64_t row = s.k_row0 + key0 + c;
    gather(k, s.batch_index * k.stride[0] + row * k.stride[1] + h_kv * k.stride[2], k.stride[3], d,
           kt.data() + c, nk);
    gather(v, s.batch_index * v.stride[0] + row * v.stride[1] + h_kv * v.stride[2], v.stride[3], dv,
           vs.data() + c * dv, 1);
  }

  const TensorRef& bias = args_.bias;
  const bool has_bias = !bias.empty();
  auto bias_offset = [&bias](size_t dim, int64_t i) {
    return bias.shape[dim] == 1 ? 0 : i * bias.stride[dim];
  };
  const double scale = p_.scale;
  const double softcap = p_.softcap;
  const double slope = p_.alibi ? double(args_.alibi_slopes[h]) : 0.0;

  std::vector<double> qg(static_cast<size_t>(kGroup * d));    // (kGroup, d)
  std::vector<double> sc(static_cast<size_t>(kGroup * nk));   // (kGroup, nk) scores, then p
  std::vector<double> acc(static_cast<size_t>(kGroup * dv));  // (kGroup, dv)
  std::vector<double> bias_row(static_cast<size_t>(nk));
  for (int64_t g0 = row_begin; g0 < row_end; g0 += kGroup) {
    const int64_t rows = std::min(kGroup, row_end - g0);
    int64_t lo[kGroup], hi[kGroup];
    double row_max[kGroup], row_sum[kGroup];
    int64_t glo = s.len_k, ghi = -1;  // union of the group's key intervals
    for (int64_t r = 0; r < rows; ++r) {
      key_range(s, g0 + r, lo[r], hi[r]);
      if (lo[r] > hi[r]) continue;
      glo = std::min(glo, lo[r]);
      ghi = std::max(ghi, hi[r]);
      gather(q, s.batch_index * q.stride[0] + (s.q_row0 + g0 + r) * q.stride[1] + h * q.stride[2],
             q.stride[3], d, qg.data() + r * d, 1);
    }
    if (glo > ghi) continue;
    const int64_t c0 = glo - key0;
    const int64_t c1 = ghi - key0 + 1;

    // S = Q K^T over the union, in key chunks so that a chunk of K stays in L1 while every row
    // of the group uses it; the inner loop is a unit-stride axpy.
    for (int64_t r = 0; r < rows; ++r)
      std::fill(&sc[size_t(r * nk + c0)], &sc[size_t(r * nk + c1)], 0.0);
    for (int64_t cc = c0; cc < c1; cc += kKeyChunk) {
      const int64_t ce = std::min(cc + kKeyChunk, c1);
      for (int64_t e = 0; e < d; ++e) {
        const double* kr = kt.data() + e * nk;
        for (int64_t r = 0; r < rows; ++r) {
          if (lo[r] > hi[r]) continue;
          const double qe = qg[static_cast<size_t>(r * d + e)];
          double* sr = sc.data() + r * nk;
          for (int64_t c = cc; c < ce; ++c) sr[c] += qe * kr[c];
        }
      }
    }

    // Modifiers and softmax numerators per row; keys outside the row's interval get p = 0.
    const double neg_inf = kNegInf;
    for (int64_t r = 0; r < rows; ++r) {
      double* sr = sc.data() + r * nk;
      row_max[r] = neg_inf;
      row_sum[r] = 0.0;
      if (lo[r] > hi[r]) {
        std::fill(sr + c0, sr + c1, 0.0);
        continue;
      }
      const int64_t i = g0 + r;
      const int64_t a = lo[r] - key0;
      const int64_t n = hi[r] - lo[r] + 1;
      std::fill(sr + c0, sr + a, 0.0);
      std::fill(sr + a + n, sr + c1, 0.0);
      if (has_bias) {
        const int64_t base = bias_offset(0, s.bias_batch) + bias_offset(1, h) + bias_offset(2, i) +
                             bias_offset(3, lo[r]);
        gather(bias, base, bias.shape[3] == 1 ? 0 : bias.stride[3], n, bias_row.data(), 1);
      }
      const double diag = double(i + offset(s));
      for (int64_t j = 0; j < n; ++j) {
        double x = scale * sr[a + j];
        if (softcap > 0.0) x = softcap * std::tanh(x / softcap);
        if (has_bias) x += bias_row[static_cast<size_t>(j)];
        if (p_.alibi) x -= slope * std::fabs(diag - double(lo[r] + j));
        sr[a + j] = x;
        row_max[r] = std::max(row_max[r], x);
      }
      // Every score -inf (a -inf bias over the whole row) is a fully masked row, not NaN.
      if (row_max[r] == neg_inf) {
        std::fill(sr + a, sr + a + n, 0.0);
        continue;
      }
      for (int64_t j = a; j < a + n; ++j) {
        sr[j] = std::exp(sr[j] - row_max[r]);
        row_sum[r] += sr[j];
      }
      // Dropout acts on the normalised probabilities; the LSE is that of the kept-and-dropped
      // row, so only the P V product sees the keep factors.
      if (p_.dropout()) {
        for (int64_t j = 0; j < n; ++j) sr[a + j] *= dropout_factor(args_, p_, b, h, i, lo[r] + j);
      }
    }

    // O = P V, one V row shared by the group while it is in L1.
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t c = c0; c < c1; ++c) {
      const double* vr = vs.data() + c * dv;
      for (int64_t r = 0; r < rows; ++r) {
        const double pr = sc[static_cast<size_t>(r * nk + c)];
        if (pr == 0.0) continue;
        double* ar = acc.data() + r * dv;
        for (int64_t e = 0; e < dv; ++e) ar[e] += pr * vr[e];
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (row_max[r] == neg_inf) continue;  // stays 0 / -inf
      const int64_t i = g0 + r;
      const int64_t out_row = packed ? s.q_row0 + i : b * p_.seqlen_q + i;
      double* out = result_.out.data() + (out_row * p_.heads_q + h) * dv;
      for (int64_t e = 0; e < dv; ++e) out[e] = acc[static_cast<size_t>(r * dv + e)] / row_sum[r];
      const int64_t lse_index =
          packed ? h * p_.total_q + out_row : (b * p_.heads_q + h) * p_.seqlen_q + i;
      result_.lse[static_cast<size_t>(lse_index)] = row_max[r] + std::log(row_sum[r]);
    }
  }
}

}  // namespace

Result forward(const AttentionArgs& host_args, int threads) {
  // o is never written here, so a caller that only wants the reference need not allocate it.
  AttentionArgs args = host_args;
  alignas(16) static const char placeholder[16] = {};
  if (args.o.data == nullptr) args.o.data = placeholder;
  const Problem p = detail::validate_for_reference(args);

  Result result;
  result.heads_q = p.heads_q;
  result.head_dim_v = p.head_dim_v;
  result.rows_q =
      p.varlen == VarlenKind::packed ? int64_t{p.total_q} : int64_t{p.batch} * p.seqlen_q;
  result.out.assign(static_cast<size_t>(result.rows_q * p.heads_q * p.head_dim_v), 0.0);
  result.lse.assign(static_cast<size_t>(result.rows_q * p.heads_q), kNegInf);
  if (p.empty()) return result;

  const Forward fwd(args, p, sequences(args, p), result);

  struct Item {
    int64_t b, h, row_begin, row_end;
  };
  std::vector<Item> items;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t len_q = fwd.sequence(b).len_q;
    for (int64_t h = 0; h < p.heads_q; ++h) {
      for (int64_t r = 0; r < len_q; r += kRowBlock) {
        items.push_back({b, h, r, std::min(r + kRowBlock, len_q)});
      }
    }
  }

  // Items write disjoint rows of the result, so threads need no locking beyond the counter.
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    try {
      for (size_t n = next++; n < items.size(); n = next++) {
        const Item& it = items[n];
        fwd.run(it.b, it.h, it.row_begin, it.row_end);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = items.size();
    }
  };
  unsigned count = threads > 0 ? static_cast<unsigned>(threads)
                               : std::max(1u, std::thread::hardware_concurrency());
  count = static_cast<unsigned>(std::min<size_t>(count, items.size()));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < count; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
  return result;
}

}  // namespace jitattn::reference
