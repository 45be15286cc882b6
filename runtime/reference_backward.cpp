// Float64 reference backward: recomputes each row's probabilities from scratch and applies the
// chain rule literally. Work items are (sequence, KV head): each owns its keys' dK/dV rows and
// its query heads' dQ rows, so threads never write the same element.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "jitattn/error.h"
#include "runtime/reference.h"
#include "runtime/reference_internal.h"

namespace jitattn::reference {
namespace {

using detail::gather;
using detail::Sequence;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

size_t at(int64_t i) { return static_cast<size_t>(i); }

class Backward {
 public:
  Backward(const AttentionArgs& args, const TensorRef& d_o, const Problem& p,
           std::vector<Sequence> seqs, Gradients& g, std::vector<double>* dbias_full)
      : args_(args), d_o_(d_o), p_(p), seqs_(std::move(seqs)), g_(g), dbias_full_(dbias_full) {}

  // Sequence b, KV head hk and the query heads of its group.
  void run(int64_t b, int64_t hk) const;

 private:
  int64_t offset(const Sequence& s) const {
    return p_.mask == MaskKind::causal_bottom_right ? s.len_k - s.len_q : 0;
  }
  // The allowed keys of query i form one interval [lo, hi] (empty when lo > hi).
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
  // Row of the q/o (k/v) result arrays for row i of sequence b.
  int64_t q_row(int64_t b, const Sequence& s, int64_t i) const {
    return p_.varlen == VarlenKind::packed ? s.q_row0 + i : b * p_.seqlen_q + i;
  }
  int64_t k_row(int64_t b, const Sequence& s, int64_t j) const {
    return p_.varlen == VarlenKind::packed ? s.k_row0 + j : b * p_.seqlen_k + j;
  }

  const AttentionArgs& args_;
  const TensorRef& d_o_;
  const Problem& p_;
  std::vector<Sequence> seqs_;
  Gradients& g_;
  std::vector<double>* dbias_full_;  // [batch][heads_q][seqlen_q][seqlen_k] or null
};

void Backward::run(int64_t b, int64_t hk) const {
  const Sequence& s = seqs_[at(b)];
  if (s.len_q == 0 || s.len_k == 0) return;
  const TensorRef& q = args_.q;
  const TensorRef& k = args_.k;
  const TensorRef& v = args_.v;
  const int64_t d = p_.head_dim;
  const int64_t dv = p_.head_dim_v;
  const int64_t group = p_.heads_q / p_.heads_kv;

  // (len_k, d) keys and (len_k, dv) values of this KV head, and their gradients.
  std::vector<double> ks(at(s.len_k * d)), vs(at(s.len_k * dv));
  std::vector<double> dks(ks.size(), 0.0), dvs(vs.size(), 0.0);
  for (int64_t j = 0; j < s.len_k; ++j) {
    const int64_t row = s.k_row0 + j;
    gather(k, s.batch_index * k.stride[0] + row * k.stride[1] + hk * k.stride[2], k.stride[3], d,
           ks.data() + j * d, 1);
    gather(v, s.batch_index * v.stride[0] + row * v.stride[1] + hk * v.stride[2], v.stride[3], dv,
           vs.data() + j * dv, 1);
  }

  const TensorRef& bias = args_.bias;
  auto bias_offset = [&bias](size_t dim, int64_t i) {
    return bias.shape[dim] == 1 ? 0 : i * bias.stride[dim];
  };
  const double scale = p_.scale;
  const double softcap = p_.softcap;
  std::vector<double> qi(at(d)), doi(at(dv)), dqi(at(d));
  std::vector<double> sc(at(s.len_k)), tanh_c(at(s.len_k)), pr(at(s.len_k)), dp(at(s.len_k)),
      zs(at(s.len_k)), bias_row(at(s.len_k));

  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const double slope = p_.alibi ? double(args_.alibi_slopes[h]) : 0.0;
    for (int64_t i = 0; i < s.len_q; ++i) {
      int64_t lo = 0, hi = 0;
      key_range(s, i, lo, hi);
      if (lo > hi) continue;  // no allowed key: every gradient of this row is 0
      const int64_t n = hi - lo + 1;
      const int64_t row = s.q_row0 + i;
      gather(q, s.batch_index * q.stride[0] + row * q.stride[1] + h * q.stride[2], q.stride[3], d,
             qi.data(), 1);
      gather(d_o_, s.batch_index * d_o_.stride[0] + row * d_o_.stride[1] + h * d_o_.stride[2],
             d_o_.stride[3], dv, doi.data(), 1);
      if (p_.bias) {
        const int64_t base = bias_offset(0, s.bias_batch) + bias_offset(1, h) + bias_offset(2, i) +
                             bias_offset(3, lo);
        gather(bias, base, bias.shape[3] == 1 ? 0 : bias.stride[3], n, bias_row.data(), 1);
      }
      // Scores as the forward defines them, and their softmax.
      const double diag = double(i + offset(s));
      double mx = kNegInf;
      for (int64_t c = 0; c < n; ++c) {
        const double* kj = ks.data() + (lo + c) * d;
        double dot = 0.0;
        for (int64_t e = 0; e < d; ++e) dot += qi[at(e)] * kj[e];
        double x = scale * dot;
        if (softcap > 0.0) {
          tanh_c[at(c)] = std::tanh(x / softcap);
          x = softcap * tanh_c[at(c)];
        }
        if (p_.bias) x += bias_row[at(c)];
        if (p_.alibi) x -= slope * std::fabs(diag - double(lo + c));
        sc[at(c)] = x;
        mx = std::max(mx, x);
      }
      if (mx == kNegInf) continue;  // a -inf bias over the whole row: fully masked
      double sum = 0.0;
      for (int64_t c = 0; c < n; ++c) sum += (pr[at(c)] = std::exp(sc[at(c)] - mx));
      // dP of the dropped probabilities is z * (dO . v); D = sum_j P_j dP_j = rowsum(dO * O).
      double delta = 0.0;
      for (int64_t c = 0; c < n; ++c) {
        pr[at(c)] /= sum;
        zs[at(c)] = detail::dropout_factor(args_, p_, b, h, i, lo + c);
        const double* vj = vs.data() + (lo + c) * dv;
        double dot = 0.0;
        for (int64_t e = 0; e < dv; ++e) dot += doi[at(e)] * vj[e];
        dp[at(c)] = zs[at(c)] * dot;
        delta += pr[at(c)] * dp[at(c)];
      }
      std::fill(dqi.begin(), dqi.end(), 0.0);
      for (int64_t c = 0; c < n; ++c) {
        const int64_t j = lo + c;
        const double pz = pr[at(c)] * zs[at(c)];
        double* dvj = dvs.data() + j * dv;
        for (int64_t e = 0; e < dv; ++e) dvj[e] += pz * doi[at(e)];
        const double ds = pr[at(c)] * (dp[at(c)] - delta);  // dL / dscore
        if (dbias_full_ != nullptr) {
          (*dbias_full_)[at(((b * p_.heads_q + h) * p_.seqlen_q + i) * p_.seqlen_k + j)] = ds;
        }
        // Through softcap (d/dx of c * tanh(x / c) = 1 - tanh^2) and the scale to q . k.
        const double g = ds * scale * (softcap > 0.0 ? 1.0 - tanh_c[at(c)] * tanh_c[at(c)] : 1.0);
        const double* kj = ks.data() + j * d;
        double* dkj = dks.data() + j * d;
        for (int64_t e = 0; e < d; ++e) {
          dqi[at(e)] += g * kj[e];
          dkj[e] += g * qi[at(e)];
        }
      }
      double* out = g_.dq.data() + (q_row(b, s, i) * p_.heads_q + h) * d;
      std::copy(dqi.begin(), dqi.end(), out);
    }
  }
  for (int64_t j = 0; j < s.len_k; ++j) {
    const int64_t r = k_row(b, s, j);
    std::copy_n(dks.data() + j * d, d, g_.dk.data() + (r * p_.heads_kv + hk) * d);
    std::copy_n(dvs.data() + j * dv, dv, g_.dv.data() + (r * p_.heads_kv + hk) * dv);
  }
}

}  // namespace

Gradients backward(const AttentionArgs& host_args, const TensorRef& d_o, bool want_dbias,
                   int threads) {
  AttentionArgs args = host_args;
  alignas(16) static const char placeholder[16] = {};
  if (args.o.data == nullptr) args.o.data = placeholder;
  const Problem p = detail::validate_for_reference(args);
  for (size_t i = 0; i < 4; ++i) {
    if (d_o.shape[i] != args.o.shape[i]) {
      throw InvalidArgument(fmt::format("d_o.shape[{}]", i),
                            fmt::format("must equal o.shape[{}] ({}), got {}", i, args.o.shape[i],
                                        d_o.shape[i]));
    }
  }
  if (want_dbias && !p.bias) throw InvalidArgument("dbias", "asked for without a bias tensor");

  Gradients g;
  g.forward = forward(args, threads);
  const bool packed = p.varlen == VarlenKind::packed;
  const int64_t rows_q = packed ? int64_t{p.total_q} : int64_t{p.batch} * p.seqlen_q;
  const int64_t rows_k = packed ? int64_t{p.total_k} : int64_t{p.batch} * p.seqlen_k;
  g.dq.assign(at(rows_q * p.heads_q * p.head_dim), 0.0);
  g.dk.assign(at(rows_k * p.heads_kv * p.head_dim), 0.0);
  g.dv.assign(at(rows_k * p.heads_kv * p.head_dim_v), 0.0);
  std::vector<double> dbias_full;
  if (want_dbias) {
    dbias_full.assign(at(int64_t{p.batch} * p.heads_q * p.seqlen_q * p.seqlen_k), 0.0);
    const auto& sh = args.bias.shape;
    g.dbias.assign(at(sh[0] * sh[1] * sh[2] * sh[3]), 0.0);
  }
  if (p.empty()) return g;

  const Backward bwd(args, d_o, p, detail::sequences(args, p), g,
                     want_dbias ? &dbias_full : nullptr);
  const int64_t items = int64_t{p.batch} * p.heads_kv;
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    try {
      for (int64_t n = next++; n < items; n = next++) bwd.run(n / p.heads_kv, n % p.heads_kv);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = items;
    }
  };
  unsigned count = threads > 0 ? static_cast<unsigned>(threads)
                               : std::max(1u, std::thread::hardware_concurrency());
  count = static_cast<unsigned>(std::min<int64_t>(count, items));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < count; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);

  if (want_dbias) {  // sum over the broadcast dims, in a fixed order
    const auto& sh = args.bias.shape;
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t h = 0; h < p.heads_q; ++h)
        for (int64_t i = 0; i < p.seqlen_q; ++i)
          for (int64_t j = 0; j < p.seqlen_k; ++j) {
            const int64_t t = (((sh[0] == 1 ? 0 : b) * sh[1] + (sh[1] == 1 ? 0 : h)) * sh[2] +
                               (sh[2] == 1 ? 0 : i)) * sh[3] + (sh[3] == 1 ? 0 : j);
            g.dbias[at(t)] +=
                dbias_full[at(((b * p.heads_q + h) * p.seqlen_q + i) * p.seqlen_k + j)];
          }
  }
  return g;
}

}  // namespace jitattn::reference
