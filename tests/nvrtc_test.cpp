// NVRTC needs no GPU: these run everywhere, CI included.
#include "runtime/device/nvrtc.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "jitattn/error.h"

namespace jitattn::device {
namespace {

const char* const kSaxpy = R"(
extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
)";

bool is_elf(const std::vector<char>& image) {
  return image.size() > 4 && image[0] == '\x7f' && image[1] == 'E' && image[2] == 'L' &&
         image[3] == 'F';
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(Nvrtc, CompilesSmallKernelForSm80AndSm90) {
  for (int sm : {80, 90}) {
    SCOPED_TRACE(sm);
    const CompileResult r = compile_to_cubin(kSaxpy, "saxpy", sm);
    EXPECT_TRUE(is_elf(r.cubin));
    EXPECT_EQ(r.kernel_name, "saxpy");
    EXPECT_GT(r.registers, 0) << r.log;
    EXPECT_EQ(r.spill_store_bytes, 0);
    EXPECT_EQ(r.spill_load_bytes, 0);
    EXPECT_EQ(r.stack_frame_bytes, 0);
    EXPECT_EQ(r.static_shared_bytes, 0);
    EXPECT_GT(r.compile_ms, 0.0);
    EXPECT_TRUE(contains(r.options, "--gpu-architecture=sm_" + std::to_string(sm))) << r.options;
    EXPECT_TRUE(contains(r.log, "ptxas info")) << r.log;
  }
}

TEST(Nvrtc, RepeatedCompileStillReportsResources) {
  // Where libcuda is present, NVRTC can serve a repeat from the driver's compute cache and skip
  // ptxas, leaving no report; compile_to_cubin must turn that cache off.
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const CompileResult r = compile_to_cubin(kSaxpy, "saxpy", 90);
    EXPECT_GT(r.registers, 0) << r.log;
  }
}

TEST(Nvrtc, ArchSpecificTargetUsesSuffix) {
  const CompileResult r = compile_to_cubin(kSaxpy, "saxpy", 90, /*arch_specific=*/true);
  EXPECT_TRUE(is_elf(r.cubin));
  EXPECT_TRUE(contains(r.options, "--gpu-architecture=sm_90a")) << r.options;
  EXPECT_TRUE(contains(r.log, "for 'sm_90a'")) << r.log;
}

TEST(Nvrtc, TemplatedKernelReportsLoweredName) {
  const char* source = R"(
namespace demo {
template <int N> __global__ void scale(float* x) { x[threadIdx.x] *= N; }
}  // namespace demo
)";
  const CompileResult r = compile_to_cubin(source, "demo::scale<4>", 80);
  EXPECT_EQ(r.kernel_name.rfind("_Z", 0), 0u) << r.kernel_name;
  EXPECT_GT(r.registers, 0) << r.log;
}

TEST(Nvrtc, ReportsStaticSharedMemory) {
  const char* source = R"(
extern "C" __global__ void reverse(float* x) {
  __shared__ float tile[64];                                      // (64,)
  tile[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  x[threadIdx.x] = tile[63 - threadIdx.x];
}
)";
  const CompileResult r = compile_to_cubin(source, "reverse", 80);
  EXPECT_EQ(r.static_shared_bytes, 64 * 4) << r.log;
}

TEST(Nvrtc, LocalArrayReportsStackFrame) {
  // A runtime-indexed array cannot live in registers: ptxas puts it on the stack.
  const char* source = R"(
extern "C" __global__ void gather(const float* in, float* out, int stride, int j) {
  float a[512];
  for (int i = 0; i < 512; ++i) a[i] = in[i * stride + threadIdx.x];
  out[threadIdx.x] = a[j & 511] + a[(j * 7) & 511];
}
)";
  const CompileResult r = compile_to_cubin(source, "gather", 80);
  EXPECT_GE(r.stack_frame_bytes, 512 * 4) << r.log;
}

TEST(Nvrtc, ParsesWgmmaSerializationOfTheRequestedKernelOnly) {
  const std::string log =
      "ptxas info    : (C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized due "
      "to wgmma pipeline crossing function boundary at a function call in the function 'k2'\n"
      "ptxas info    : Compiling entry function 'k2' for 'sm_90a'\n"
      "ptxas info    : Function properties for k2\n"
      "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 168 registers, used 1 barriers\n"
      "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
      "ptxas info    : Function properties for k\n"
      "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 90 registers, used 1 barriers\n";
  CompileResult k2;
  ASSERT_TRUE(parse_ptxas_info(log, "k2", k2));
  EXPECT_TRUE(k2.wgmma_serialized);
  EXPECT_TRUE(contains(k2.wgmma_note, "function call")) << k2.wgmma_note;
  EXPECT_EQ(k2.registers, 168);
  CompileResult k;
  ASSERT_TRUE(parse_ptxas_info(log, "k", k));
  EXPECT_FALSE(k.wgmma_serialized);
  EXPECT_TRUE(k.wgmma_note.empty());
}

// A call while a wgmma is in flight makes ptxas serialise the kernel's wgmma instructions (a debug
// printf in the Hopper backward did); the same kernel without the call keeps them asynchronous.
TEST(Nvrtc, ReportsSerializedWgmma) {
  const std::string body = R"(
extern "C" __global__ void NAME(float* out, unsigned long long da, unsigned long long db) {
  float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, %4, %5, 1, 1, 1, 0, 0;\n"
               : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3) : "l"(da), "l"(db));
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  CALL
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  out[threadIdx.x] = d0 + d1 + d2 + d3;
}
)";
  auto source = [&](const std::string& name, const std::string& call) {
    std::string s = body;
    s.replace(s.find("NAME"), 4, name);
    s.replace(s.find("CALL"), 4, call);
    return s;
  };
  const CompileResult serial = compile_to_cubin(source("serial", "printf(\"%d\\n\", threadIdx.x);"), "serial", 90, true);
  EXPECT_TRUE(serial.wgmma_serialized) << serial.log;
  EXPECT_TRUE(contains(serial.wgmma_note, "serialized")) << serial.log;
  const CompileResult async = compile_to_cubin(source("async", ""), "async", 90, true);
  EXPECT_FALSE(async.wgmma_serialized) << async.log;
  EXPECT_GT(async.registers, 0) << async.log;
}

TEST(Nvrtc, RegisterPressureReportsSpills) {
  // 96 live values per thread under a 32-register cap must spill.
  const char* source = R"(
extern "C" __global__ void pressure(const float* __restrict__ in, float* __restrict__ out) {
  float v[96];
#pragma unroll
  for (int i = 0; i < 96; ++i) v[i] = in[threadIdx.x + i * 128];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
#pragma unroll
    for (int i = 0; i < 96; ++i) v[i] = v[i] * v[(i + r + 1) % 96] + 1.f;
  }
  float acc = 0;
#pragma unroll
  for (int i = 0; i < 96; ++i) acc += v[i] * i;
  out[threadIdx.x] = acc;
}
)";
  const CompileResult r = compile_to_cubin(source, "pressure", 90, false, {"--maxrregcount=32"});
  EXPECT_TRUE(contains(r.options, "--maxrregcount=32"));
  EXPECT_LE(r.registers, 32) << r.log;
  EXPECT_GT(r.spill_store_bytes, 0) << r.log;
  EXPECT_GT(r.spill_load_bytes, 0) << r.log;
  EXPECT_GT(r.stack_frame_bytes, 0) << r.log;
}

TEST(Nvrtc, SyntaxErrorThrowsCompileErrorWithLog) {
  const char* source = "extern \"C\" __global__ void broken_kernel(float* o) { o[0] = 1.0f }\n";
  try {
    compile_to_cubin(source, "broken_kernel", 80);
    FAIL() << "expected CompileError";
  } catch (const CompileError& e) {
    EXPECT_TRUE(contains(e.log(), "error: expected a \";\"")) << e.log();
    EXPECT_TRUE(contains(e.what(), "broken_kernel")) << e.what();
    EXPECT_TRUE(contains(e.what(), "sm_80")) << e.what();
    EXPECT_TRUE(contains(e.options(), "-std=c++17")) << e.options();
  }
}

TEST(Nvrtc, MissingKernelNameThrows) {
  try {
    compile_to_cubin(kSaxpy, "not_a_kernel", 80);
    FAIL() << "expected CompileError";
  } catch (const CompileError& e) {
    EXPECT_TRUE(contains(e.log(), "not_a_kernel")) << e.log();
  }
}

TEST(Nvrtc, UnsupportedArchThrows) {
  EXPECT_THROW(compile_to_cubin(kSaxpy, "saxpy", 12), CompileError);
}

TEST(Nvrtc, ExtraOptionsReachTheCompiler) {
  const char* source = R"(
#if SCALE != 3
#error "SCALE must be 3"
#endif
extern "C" __global__ void scaled(float* x) { x[threadIdx.x] *= SCALE; }
)";
  EXPECT_NO_THROW(compile_to_cubin(source, "scaled", 80, false, {"-DSCALE=3"}));
  EXPECT_THROW(compile_to_cubin(source, "scaled", 80, false, {"-DSCALE=4"}), CompileError);
}

TEST(Nvrtc, VersionAndSupportedArchs) {
  EXPECT_EQ(nvrtc_version().rfind("13.", 0), 0u) << nvrtc_version();
  const std::vector<int> archs = nvrtc_supported_archs();
  EXPECT_NE(std::find(archs.begin(), archs.end(), 80), archs.end());
  EXPECT_NE(std::find(archs.begin(), archs.end(), 90), archs.end());
}

TEST(Nvrtc, ParsesTheRequestedKernelOnly) {
  // Verbatim NVRTC 13.0 output for two kernels.
  const std::string log =
      "ptxas info    : 0 bytes gmem\n"
      "ptxas info    : Compiling entry function 'spill' for 'sm_90'\n"
      "ptxas info    : Function properties for spill\n"
      "ptxas         .     2048 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
      "ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes cumulative stack size, "
      "256 bytes smem\n"
      "ptxas info    : Compile time = 12.060 ms\n"
      "ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
      "ptxas info    : Function properties for k\n"
      "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 8 registers, used 0 barriers\n"
      "ptxas info    : Compile time = 1.655 ms\n";
  CompileResult spill;
  ASSERT_TRUE(parse_ptxas_info(log, "spill", spill));
  EXPECT_EQ(spill.registers, 40);
  EXPECT_EQ(spill.stack_frame_bytes, 2048);
  EXPECT_EQ(spill.spill_store_bytes, 8);
  EXPECT_EQ(spill.spill_load_bytes, 12);
  EXPECT_EQ(spill.static_shared_bytes, 256);
  CompileResult k;
  ASSERT_TRUE(parse_ptxas_info(log, "k", k));
  EXPECT_EQ(k.registers, 8);
  EXPECT_EQ(k.stack_frame_bytes, 0);
  EXPECT_EQ(k.static_shared_bytes, 0);
  CompileResult none;
  EXPECT_FALSE(parse_ptxas_info(log, "spil", none));
  EXPECT_EQ(none.registers, -1);
}

TEST(Nvrtc, CompilesFromFourThreadsAtOnce) {
  constexpr int kThreads = 4;
  std::vector<CompileResult> results(kThreads);
  std::vector<std::exception_ptr> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        // Different sources and targets per thread, so nothing can be shared by accident.
        const std::string name = "add_" + std::to_string(t);
        const std::string source = "extern \"C\" __global__ void " + name +
                                   "(int* x) { x[threadIdx.x] += " + std::to_string(t + 1) +
                                   "; }\n";
        results[static_cast<size_t>(t)] = compile_to_cubin(source, name, t % 2 == 0 ? 80 : 90);
      } catch (...) {
        errors[static_cast<size_t>(t)] = std::current_exception();
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    SCOPED_TRACE(t);
    const auto i = static_cast<size_t>(t);
    if (errors[i]) {
      try {
        std::rethrow_exception(errors[i]);
      } catch (const std::exception& e) {
        FAIL() << e.what();
      }
    }
    EXPECT_EQ(results[i].kernel_name, "add_" + std::to_string(t));
    EXPECT_TRUE(is_elf(results[i].cubin));
    EXPECT_GT(results[i].registers, 0);
    EXPECT_TRUE(contains(results[i].log, t % 2 == 0 ? "'sm_80'" : "'sm_90'"));
  }
}

}  // namespace
}  // namespace jitattn::device
