// Device layer: the CUDA driver, loaded at run time.
//
// Owns loading libcuda, devices, primary contexts, device memory, modules and launches. It knows
// nothing of SQL, the engine or the generator. libcuda is dlopen'ed (never linked) so that the
// library, the CLI and the tests start on machines with no GPU; cuda.h is used for types only.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_<name>_v<version>: the ABI of each versioned entry point

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

// Entry points are resolved with the legacy default stream semantics (CU_GET_PROC_ADDRESS_DEFAULT).
// With per-thread default streams cuda.h renames members of Driver differently in different
// translation units (an ODR violation), so refuse that configuration outright.
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "jitattn's device layer requires the legacy default stream API names"
#endif

namespace jitattn::device {

// Every driver entry point the project uses, with the ABI version to ask cuGetProcAddress for.
// The version is not CUDA_VERSION for all of them: asked for at 13000, "cuCtxSynchronize" and
// "cuCtxGetDevice" resolve to their 13.0 forms that take a CUcontext argument and "cuStreamGetCtx"
// to its 12.5 form with a CUgreenCtx* out-parameter, while cuda.h's plain prototypes (and its
// documentation) are the older forms; calling through the wrong one corrupts memory (seen on an
// H200 with driver 580). Each version below is the one whose cudaTypedefs.h PFN type equals the
// prototype that cuda.h's default name (after its #define, e.g. cuMemAlloc -> cuMemAlloc_v2)
// declares; driver.cpp static_asserts that.
#define JITATTN_DRIVER_FUNCTIONS(X)                                                          \
  X(cuInit, 2000) X(cuDriverGetVersion, 2020) X(cuGetErrorName, 6000)                        \
  X(cuGetErrorString, 6000) X(cuDeviceGetCount, 2000) X(cuDeviceGet, 2000)                   \
  X(cuDeviceGetName, 2000) X(cuDeviceGetAttribute, 2000) X(cuDeviceTotalMem, 3020)           \
  X(cuDevicePrimaryCtxRetain, 7000) X(cuDevicePrimaryCtxRelease, 11000)                      \
  X(cuCtxPushCurrent, 4000) X(cuCtxPopCurrent, 4000) X(cuCtxGetCurrent, 4000)               \
  X(cuCtxGetDevice, 2000) X(cuCtxSynchronize, 2000) X(cuCtxGetLimit, 3010)                   \
  X(cuStreamGetCtx, 9020) X(cuStreamSynchronize, 2000) X(cuStreamCreate, 2000)              \
  X(cuStreamDestroy, 4000) X(cuPointerGetAttribute, 4000) X(cuMemAlloc, 3020)               \
  X(cuMemFree, 3020) X(cuMemcpyHtoD, 3020) X(cuMemcpyDtoH, 3020) X(cuMemsetD8, 3020)         \
  X(cuMemsetD8Async, 3020) X(cuModuleLoadData, 2000) X(cuModuleUnload, 2000)                 \
  X(cuModuleGetFunction, 2000) X(cuFuncSetAttribute, 9000) X(cuFuncGetAttribute, 2020)       \
  X(cuLaunchKernel, 4000) X(cuEventCreate, 2000) X(cuEventRecord, 2000)                      \
  X(cuEventSynchronize, 2000) X(cuEventElapsedTime, 12080) X(cuEventDestroy, 4000)           \
  X(cuTensorMapEncodeTiled, 12000)

/// Typed pointers to the driver's entry points. Obtain the loaded instance with driver().
/// Members are named as cuda.h spells the call, so `d.cuMemAlloc(&p, n)` reads like the docs.
struct Driver {
#define JITATTN_DRIVER_MEMBER(name, version) PFN_##name##_v##version name = nullptr;
  JITATTN_DRIVER_FUNCTIONS(JITATTN_DRIVER_MEMBER)
#undef JITATTN_DRIVER_MEMBER
  int version = 0;  ///< cuDriverGetVersion, e.g. 13000
};

/// The loaded driver. The first call dlopens libcuda.so.1 and runs cuInit(0); on failure throws
/// jitattn::NoDevice saying why, and every later call throws the same message. Thread-safe.
const Driver& driver();

/// True when driver() would succeed; otherwise stores the reason in `*reason`. Never throws.
bool driver_available(std::string* reason = nullptr);

/// Number of CUDA devices; 0 when there is no driver or no device. Never throws.
int device_count();

/// "CUDA_ERROR_X (text) in `expr` at file:line". Needs no driver, so it is testable anywhere.
std::string cu_error_message(int code, const char* name, const char* text, const char* expr,
                             const char* file, int line);

/// Throws jitattn::CudaError for a failed driver call, with the CUresult's name and text.
[[noreturn]] void throw_cu(CUresult result, const char* expr, const char* file, int line);

/// Evaluates a driver call once; throws jitattn::CudaError naming the call if it fails.
#define JITATTN_CU_CHECK(expr)                                                          \
  do {                                                                                  \
    const CUresult jitattn_cu_result_ = (expr);                                         \
    if (jitattn_cu_result_ != CUDA_SUCCESS)                                             \
      ::jitattn::device::throw_cu(jitattn_cu_result_, #expr, __FILE__, __LINE__);       \
  } while (0)

/// What the tuner and the cache key need to know about a device.
struct DeviceInfo {
  int ordinal = -1;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  int l2_bytes = 0;
  int max_shared_per_block_optin = 0;  ///< dynamic + static shared memory a block may opt into
  int max_shared_per_sm = 0;
  int max_threads_per_block = 0;
  int clock_khz = 0;  ///< nominal SM clock; provenance only
  size_t total_mem = 0;
  int driver_version = 0;  ///< e.g. 13000
  int sm() const { return cc_major * 10 + cc_minor; }
};

/// Properties of device `ordinal`; throws InvalidArgument("device", ...) when out of range.
DeviceInfo device_info(int ordinal);

/// The device's primary context, retained once per process and never released: releasing it
/// at exit would race the driver's own teardown, and the process owns the GPU until then anyway.
CUcontext primary_context(int ordinal);

/// Makes device `ordinal`'s primary context current on this thread for the scope's lifetime.
class ScopedContext {
 public:
  explicit ScopedContext(int ordinal);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;
};

/// Ordinal of the device that owns `p`; -1 when `p` is not memory CUDA knows (host memory, null)
/// or there is no driver. Mapped pinned host memory reports the device of its context.
int device_of_pointer(const void* p);

/// Ordinal of the device whose context owns stream `s`; -1 for the null/legacy/per-thread
/// stream, which means "whatever context is current".
int device_of_stream(CUstream s);

/// A loaded cubin. Unloaded on destruction, in the context it was loaded into.
class Module {
 public:
  /// Loads into the current context; throws CudaError (e.g. no context, wrong architecture).
  static Module load(const std::vector<char>& cubin);
  /// Throws CudaError naming `name` when the module has no such kernel.
  CUfunction function(const std::string& name) const;
  CUmodule get() const { return module_; }

  Module() = default;
  Module(Module&& other) noexcept;
  Module& operator=(Module&& other) noexcept;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  ~Module();

 private:
  void reset() noexcept;
  CUmodule module_ = nullptr;
  CUcontext context_ = nullptr;
};

/// A device allocation in the context current at construction. 0 bytes gives a null data().
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return reinterpret_cast<void*>(ptr_); }
  CUdeviceptr device_ptr() const { return ptr_; }
  size_t size() const { return size_; }

  /// Synchronous copies of the first `bytes` bytes; InvalidArgument("bytes") past size().
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  /// Sets every byte; ordered after earlier work on the legacy stream.
  void fill(uint8_t byte);
  /// Sets every byte, ordered on `stream` (poisoning outputs before a timed launch).
  void fill_async(uint8_t byte, CUstream stream);

 private:
  void reset() noexcept;
  CUdeviceptr ptr_ = 0;
  size_t size_ = 0;
  CUcontext context_ = nullptr;
};

/// Launches `f`. Above 48 KiB of dynamic shared memory the kernel must opt in first, so this sets
/// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES before launching. Throws CudaError.
void launch(CUfunction f, std::array<unsigned, 3> grid, std::array<unsigned, 3> block,
            unsigned shared_bytes, CUstream stream, void** params);

/// Element type of a TMA tensor map: 16-bit (f16 / bf16: the copies move bits) or fp32 (the
/// type a reduce-add into the tensor adds in).
enum class TmaElement { bits16, float32 };

/// A TMA tensor map (sm_90+) of a 4-d tensor: dims innermost first (elements), strides of dims
/// 1..3 in bytes (multiples of 16; a dim of size 1 may carry any stride), a box of (box_cols,
/// box_rows, 1, 1) with `swizzle_bytes` (32, 64 or 128; box_cols times the element size must
/// equal it) swizzling, and zero fill outside the tensor. Host-only (no device work). Throws
/// CudaError.
CUtensorMap encode_tensor_map(TmaElement element, const void* base, std::array<uint64_t, 4> dims,
                              std::array<uint64_t, 3> strides_bytes, unsigned box_cols, unsigned box_rows,
                              int swizzle_bytes);
inline CUtensorMap encode_tensor_map_16bit(const void* base, std::array<uint64_t, 4> dims,
                                           std::array<uint64_t, 3> strides_bytes, unsigned box_cols,
                                           unsigned box_rows, int swizzle_bytes) {
  return encode_tensor_map(TmaElement::bits16, base, dims, strides_bytes, box_cols, box_rows, swizzle_bytes);
}

/// Times work on one stream with a pair of CUDA events (created in the current context).
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void start(CUstream stream);
  void stop(CUstream stream);
  /// Waits for the stop event; milliseconds between start and stop.
  float elapsed_ms() const;

 private:
  CUevent start_ = nullptr;
  CUevent stop_ = nullptr;
  CUcontext context_ = nullptr;
};

}  // namespace jitattn::device
