// The Hopper family's kernels are on Hopper's own path: NVRTC compiles a representative kernel for
// sm_90a and its SASS (cuobjdump -sass) holds warpgroup MMAs (HGMMA) fed by TMA loads (UTMALDG),
// with no local-memory traffic. Needs no GPU; skipped with a message where cuobjdump is absent.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "generator/generator.h"
#include "runtime/device/nvrtc.h"

namespace jitattn {
namespace {

std::string find_cuobjdump() {
  std::vector<std::filesystem::path> dirs = {"/usr/local/cuda/bin"};
  if (const char* home = std::getenv("CUDA_HOME")) dirs.insert(dirs.begin(), std::filesystem::path(home) / "bin");
  if (const char* path = std::getenv("PATH")) {
    std::string p(path);
    for (size_t at = 0; at <= p.size();) {
      const size_t end = std::min(p.find(':', at), p.size());
      if (end > at) dirs.emplace_back(p.substr(at, end - at));
      at = end + 1;
    }
  }
  for (const auto& d : dirs) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(d / "cuobjdump", ec)) return (d / "cuobjdump").string();
  }
  return {};
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  std::array<char, 4096> buf;
  for (size_t n; (n = fread(buf.data(), 1, buf.size(), f)) > 0;) out.append(buf.data(), n);
  pclose(f);
  return out;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class Sm90Sass : public ::testing::TestWithParam<std::pair<int, MaskKind>> {};

TEST_P(Sm90Sass, HasHgmmaAndTmaAndNoLocalMemory) {
  const std::string cuobjdump = find_cuobjdump();
  if (cuobjdump.empty()) GTEST_SKIP() << "cuobjdump not found (CUDA_HOME/bin, /usr/local/cuda/bin, PATH)";
  KernelSpec spec;
  spec.target.sm = 90;
  spec.head_dim = spec.head_dim_v = GetParam().first;
  spec.mask = GetParam().second;
  spec.lse = true;
  spec.scale = 0.125f;
  const DeviceLimits limits = limits_for_arch(90);
  const TileConfig cfg = default_config(spec, limits);
  ASSERT_TRUE(cfg.hopper()) << cfg.canonical();
  const KernelSource src = generate(spec, cfg, limits);
  ASSERT_TRUE(src.arch_specific);
  const device::CompileResult r = device::compile_to_cubin(src.source, src.name, 90, true);
  const auto path = std::filesystem::temp_directory_path() /
                    fmt::format("jitattn_sass_{}_{}.cubin", ::getpid(), std::random_device{}());
  {
    std::ofstream f(path, std::ios::binary);
    f.write(r.cubin.data(), static_cast<std::streamsize>(r.cubin.size()));
  }
  const std::string sass = run(fmt::format("'{}' -sass '{}' 2>&1", cuobjdump, path.string()));
  std::filesystem::remove(path);
  ASSERT_NE(sass.find(src.name), std::string::npos) << sass.substr(0, 2000);
  // S = Q K^T: head_dim / 16 wgmmas per tile, O += P V: block_n / 16.
  EXPECT_GE(count(sass, "HGMMA"), static_cast<size_t>(spec.head_dim / 16 + cfg.block_n / 16));
  EXPECT_GT(count(sass, "UTMALDG"), 0u) << "no TMA loads";
  EXPECT_EQ(count(sass, "HMMA"), 0u) << "mma.sync path in a Hopper-family kernel";
  EXPECT_EQ(count(sass, "LDL"), 0u) << "local-memory loads (spills or indexed arrays)";
  EXPECT_EQ(count(sass, "STL"), 0u) << "local-memory stores (spills or indexed arrays)";
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90Sass,
                         ::testing::Values(std::pair{64, MaskKind::none}, std::pair{128, MaskKind::causal},
                                           std::pair{256, MaskKind::none},
                                           std::pair{512, MaskKind::causal}),  // the _x2 kernel
                         [](const auto& info) {
                           return fmt::format("d{}_{}", info.param.first,
                                              info.param.second == MaskKind::none ? "none" : "causal");
                         });

}  // namespace
}  // namespace jitattn
