// Compiles the README's API example verbatim (extracted from README.md at build time) and runs
// it on a GPU against the float64 reference. Skips with a message when there is no GPU.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "readme_example.inc"  // generated from README.md
#include "runtime/device/driver.h"
#include "runtime/numeric.h"
#include "runtime/reference.h"
#include "test_util.h"

namespace jitattn {
namespace {

TEST(ReadmeExample, RunsAndMatchesReference) {
  std::string why;
  if (!device::driver_available(&why) || device::device_count() == 0) {
    GTEST_SKIP() << "no CUDA device: " << (why.empty() ? "no GPU found" : why);
  }
  const int batch = 2, seq = 333, heads = 4, kv_heads = 2, dim = 80;
  auto rng = test::seeded_rng();
  test::HostTensor q = test::random_tensor(DType::bf16, {batch, seq, heads, dim}, rng);
  test::HostTensor k = test::random_tensor(DType::bf16, {batch, seq, kv_heads, dim}, rng);
  test::HostTensor v = test::random_tensor(DType::bf16, {batch, seq, kv_heads, dim}, rng);
  device::ScopedContext ctx(0);
  device::DeviceBuffer dq(q.span_bytes), dk(k.span_bytes), dv(v.span_bytes);
  device::DeviceBuffer d_o(q.span_bytes), d_lse(sizeof(float) * batch * heads * seq);
  dq.upload(q.data(), q.span_bytes);
  dk.upload(k.data(), k.span_bytes);
  dv.upload(v.data(), v.span_bytes);
  d_o.fill(0xFF);  // NaN: an unwritten element fails the comparison
  d_lse.fill(0xFF);

  causal_attention(dq.data(), dk.data(), dv.data(), d_o.data(), static_cast<float*>(d_lse.data()),
                   batch, seq, heads, kv_heads, nullptr);
  JITATTN_CU_CHECK(device::driver().cuCtxSynchronize());

  AttentionArgs host;
  host.q = q.ref;
  host.k = k.ref;
  host.v = v.ref;
  host.o = TensorRef::contiguous(nullptr, DType::bf16, {batch, seq, heads, dim});
  host.mask = MaskKind::causal;
  const reference::Result ref = reference::forward(host);

  std::vector<uint16_t> o(q.span_bytes / 2);
  d_o.download(o.data(), q.span_bytes);
  std::vector<double> got(o.size());
  for (size_t i = 0; i < o.size(); ++i) got[i] = bf16_bits_to_float(o[i]);
  EXPECT_LT(relative_error(got, ref.out), 1e-2);
  std::vector<float> lse(ref.lse.size());
  d_lse.download(lse.data(), lse.size() * sizeof(float));
  std::vector<double> lse_d(lse.begin(), lse.end());
  EXPECT_LT(relative_error(lse_d, ref.lse), 1e-3);
}

}  // namespace
}  // namespace jitattn
