// Suite Driver runs everywhere and checks how the device layer behaves without a driver.
// Suite DriverGpu needs a GPU and skips, saying why, when there is none.
#include "runtime/device/driver.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "jitattn/error.h"
#include "runtime/device/nvrtc.h"

namespace jitattn::device {
namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define SKIP_WITH_DRIVER()                                                  \
  if (driver_available()) GTEST_SKIP() << "a CUDA driver is present here"

#define SKIP_WITHOUT_GPU()                                                  \
  if (device_count() == 0) {                                                \
    std::string reason;                                                     \
    driver_available(&reason);                                              \
    GTEST_SKIP() << "no CUDA device: "                                      \
                 << (reason.empty() ? "the driver reports 0 devices" : reason); \
  }

TEST(Driver, ReasonNamesWhatIsMissing) {
  SKIP_WITH_DRIVER();
  std::string reason;
  EXPECT_FALSE(driver_available(&reason));
  EXPECT_FALSE(reason.empty());
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    EXPECT_TRUE(contains(reason, "libcuda.so.1 not found")) << reason;
  } else {
    dlclose(lib);  // a driver without a usable GPU: cuInit is what failed
    EXPECT_TRUE(contains(reason, "cuInit")) << reason;
  }
}

TEST(Driver, NoDriverMeansNoDevices) {
  SKIP_WITH_DRIVER();
  EXPECT_EQ(device_count(), 0);
  const int host_value = 1;
  EXPECT_EQ(device_of_pointer(&host_value), -1);
  EXPECT_EQ(device_of_stream(nullptr), -1);
}

TEST(Driver, DriverThrowsNoDeviceWithTheSameReasonEveryTime) {
  SKIP_WITH_DRIVER();
  std::string reason;
  driver_available(&reason);
  for (int i = 0; i < 2; ++i) {
    try {
      driver();
      FAIL() << "expected NoDevice";
    } catch (const NoDevice& e) {
      EXPECT_EQ(std::string(e.what()), reason);
    }
  }
  EXPECT_THROW(driver(), Error);
  EXPECT_THROW(device_info(0), NoDevice);
  EXPECT_THROW(primary_context(0), NoDevice);
  EXPECT_THROW(ScopedContext(0), NoDevice);
  EXPECT_THROW(DeviceBuffer(16), NoDevice);
}

TEST(Driver, EmptyBufferNeedsNoDriver) {
  DeviceBuffer empty(0);
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.size(), 0u);
  std::uint8_t byte = 7;
  EXPECT_THROW(empty.upload(&byte, 1), InvalidArgument);
  EXPECT_NO_THROW(empty.fill(0xAB));
}

TEST(Driver, ErrorMessageNamesResultCallAndPlace) {
  EXPECT_EQ(cu_error_message(1, "CUDA_ERROR_INVALID_VALUE", "invalid argument",
                             "d.cuMemAlloc(&p, n)", "runtime/device/driver.cpp", 42),
            "CUDA_ERROR_INVALID_VALUE (invalid argument) in `d.cuMemAlloc(&p, n)` at "
            "runtime/device/driver.cpp:42");
  EXPECT_EQ(cu_error_message(9999, nullptr, nullptr, "f()", "a.cpp", 1),
            "CUresult 9999 (no description) in `f()` at a.cpp:1");
}

TEST(Driver, CheckMacroEvaluatesOnceAndThrowsCudaError) {
  int calls = 0;
  const auto fails = [&] {
    ++calls;
    return CUDA_ERROR_INVALID_VALUE;
  };
  const int line = __LINE__ + 2;
  try {
    JITATTN_CU_CHECK(fails());
    FAIL() << "expected CudaError";
  } catch (const CudaError& e) {
    EXPECT_EQ(e.code(), static_cast<int>(CUDA_ERROR_INVALID_VALUE));
    const std::string what = e.what();
    // Without a driver there is nobody to name the code; the number still identifies it.
    EXPECT_TRUE(contains(what, driver_available() ? "CUDA_ERROR_INVALID_VALUE" : "CUresult 1"))
        << what;
    EXPECT_TRUE(contains(what, "`fails()`")) << what;
    EXPECT_TRUE(contains(what, "driver_test.cpp:" + std::to_string(line))) << what;
  }
  EXPECT_EQ(calls, 1);
  calls = 0;
  const auto succeeds = [&] {
    ++calls;
    return CUDA_SUCCESS;
  };
  EXPECT_NO_THROW(JITATTN_CU_CHECK(succeeds()));
  EXPECT_EQ(calls, 1);
}

// ---- GPU ----

std::vector<std::uint8_t> random_bytes(size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<std::uint8_t> out(n);
  for (auto& b : out) b = static_cast<std::uint8_t>(byte(gen));
  return out;
}

TEST(DriverGpu, DeviceInfoIsPlausible) {
  SKIP_WITHOUT_GPU();
  const DeviceInfo info = device_info(0);
  EXPECT_EQ(info.ordinal, 0);
  EXPECT_FALSE(info.name.empty());
  EXPECT_GE(info.sm(), 70);
  EXPECT_GT(info.sm_count, 0);
  EXPECT_GT(info.l2_bytes, 0);
  EXPECT_GE(info.max_shared_per_block_optin, 48 * 1024);
  EXPECT_GE(info.max_threads_per_block, 1024);
  EXPECT_GT(info.total_mem, size_t{1} << 30);
  EXPECT_GE(info.driver_version, 12000);
  try {
    device_info(device_count());
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "device");
  }
  EXPECT_THROW(device_info(-1), InvalidArgument);
  EXPECT_EQ(primary_context(0), primary_context(0));
}

TEST(DriverGpu, BufferRoundTripsRandomBytes) {
  SKIP_WITHOUT_GPU();
  ScopedContext ctx(0);
  const std::uint32_t seed = std::random_device{}();
  SCOPED_TRACE(seed);
  const size_t n = (size_t{1} << 20) + 7;
  const std::vector<std::uint8_t> in = random_bytes(n, seed);
  DeviceBuffer buffer(n);
  ASSERT_NE(buffer.data(), nullptr);
  EXPECT_EQ(buffer.size(), n);
  buffer.upload(in.data(), n);
  std::vector<std::uint8_t> out(n, 0xCD);
  buffer.download(out.data(), n);
  EXPECT_EQ(in, out);

  buffer.fill(0xAB);
  buffer.download(out.data(), n);
  EXPECT_EQ(out, std::vector<std::uint8_t>(n, 0xAB));
  EXPECT_THROW(buffer.upload(in.data(), n + 1), InvalidArgument);

  EXPECT_EQ(device_of_pointer(buffer.data()), 0);
  EXPECT_EQ(device_of_pointer(static_cast<char*>(buffer.data()) + 100), 0);
  EXPECT_EQ(device_of_pointer(in.data()), -1);
  EXPECT_EQ(device_of_pointer(nullptr), -1);

  DeviceBuffer moved(std::move(buffer));
  EXPECT_EQ(buffer.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(moved.size(), n);
}

TEST(DriverGpu, LoadsAndLaunchesACompiledKernel) {
  SKIP_WITHOUT_GPU();
  const DeviceInfo info = device_info(0);
  // The dynamic shared memory round trip makes the kernel need the >48 KiB opt-in in launch().
  const char* source = R"(
extern "C" __global__ void write_pattern(unsigned* out, unsigned n, unsigned seed) {
  extern __shared__ unsigned staging[];
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  staging[threadIdx.x] = (i * 2654435761u) ^ seed;
  __syncthreads();
  if (i < n) out[i] = staging[threadIdx.x];
}
)";
  const CompileResult compiled =
      compile_to_cubin(source, "write_pattern", info.sm(), info.sm() >= 90);
  ScopedContext ctx(0);
  const Module module = Module::load(compiled.cubin);
  CUfunction f = module.function(compiled.kernel_name);
  ASSERT_NE(f, nullptr);

  const unsigned n = 100'003;
  const unsigned block = 256;
  std::random_device rd;
  unsigned seed = rd();
  DeviceBuffer out(n * sizeof(unsigned));
  out.fill(0xFF);  // poison: an element the kernel misses cannot match by accident
  CUdeviceptr out_ptr = out.device_ptr();
  void* params[] = {&out_ptr, const_cast<unsigned*>(&n), &seed};
  const auto shared =
      static_cast<unsigned>(std::min(96 * 1024, info.max_shared_per_block_optin));
  launch(f, {(n + block - 1) / block, 1, 1}, {block, 1, 1}, shared, nullptr, params);
  JITATTN_CU_CHECK(driver().cuCtxSynchronize());

  std::vector<unsigned> host(n);
  out.download(host.data(), n * sizeof(unsigned));
  for (unsigned i = 0; i < n; ++i) {
    ASSERT_EQ(host[i], (i * 2654435761u) ^ seed) << "at " << i;
  }

  try {
    module.function("no_such_kernel");
    FAIL() << "expected CudaError";
  } catch (const CudaError& e) {
    EXPECT_TRUE(contains(e.what(), "no_such_kernel")) << e.what();
  }
  const std::vector<char> garbage(64, 'x');
  EXPECT_THROW(Module::load(garbage), CudaError);
}

TEST(DriverGpu, ModuleLoadNeedsACurrentContext) {
  SKIP_WITHOUT_GPU();
  const CompileResult compiled = compile_to_cubin(
      "extern \"C\" __global__ void noop() {}", "noop", device_info(0).sm());
  // A fresh thread has no current context.
  std::thread([&] { EXPECT_THROW(Module::load(compiled.cubin), CudaError); }).join();
}

TEST(DriverGpu, StreamReportsItsDeviceAndTimesWork) {
  SKIP_WITHOUT_GPU();
  ScopedContext ctx(0);
  const Driver& d = driver();
  CUstream stream = nullptr;
  JITATTN_CU_CHECK(d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  EXPECT_EQ(device_of_stream(stream), 0);
  EXPECT_EQ(device_of_stream(nullptr), -1);
  EXPECT_EQ(device_of_stream(CU_STREAM_LEGACY), -1);
  {
    DeviceBuffer buffer(size_t{64} << 20);
    EventTimer timer;
    timer.start(stream);
    buffer.fill_async(0x5A, stream);
    timer.stop(stream);
    EXPECT_GT(timer.elapsed_ms(), 0.0f);
    std::vector<std::uint8_t> head(4096);
    JITATTN_CU_CHECK(d.cuStreamSynchronize(stream));
    buffer.download(head.data(), head.size());
    EXPECT_EQ(head, std::vector<std::uint8_t>(head.size(), 0x5A));
  }
  JITATTN_CU_CHECK(d.cuStreamDestroy(stream));
}

}  // namespace
}  // namespace jitattn::device
