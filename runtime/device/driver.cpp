// Loads libcuda with dlopen and wraps the few driver objects the project uses in RAII types.
#include "runtime/device/driver.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <utility>

#include "jitattn/error.h"

namespace jitattn::device {
namespace {

// The outcome of the one load attempt: either a usable Driver or the reason there is none.
struct Loaded {
  Driver driver;
  std::string error;
};

using GetProcAddress = PFN_cuGetProcAddress_v12000;  // cuGetProcAddress_v2

// The versions in JITATTN_DRIVER_FUNCTIONS must give the ABI that cuda.h documents for each name.
#define JITATTN_CHECK_ABI(name, version)                                                      \
  static_assert(std::is_same_v<PFN_##name##_v##version, decltype(&::name)>,                   \
                #name ": the version in JITATTN_DRIVER_FUNCTIONS is not cuda.h's prototype");
JITATTN_DRIVER_FUNCTIONS(JITATTN_CHECK_ABI)
#undef JITATTN_CHECK_ABI

const char* result_name(const Driver& d, CUresult r) {
  const char* name = nullptr;
  if (d.cuGetErrorName == nullptr || d.cuGetErrorName(r, &name) != CUDA_SUCCESS) return nullptr;
  return name;
}

const char* result_text(const Driver& d, CUresult r) {
  const char* text = nullptr;
  if (d.cuGetErrorString == nullptr || d.cuGetErrorString(r, &text) != CUDA_SUCCESS)
    return nullptr;
  return text;
}

// Each entry point is asked for at the version its PFN type was written for (see driver.h).
template <class Fn>
std::string resolve(GetProcAddress get, const char* name, int version, Fn* out) {
  void* fn = nullptr;
  CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  const CUresult r = get(name, &fn, version, CU_GET_PROC_ADDRESS_DEFAULT, &status);
  if (r == CUDA_SUCCESS && status == CU_GET_PROC_ADDRESS_SUCCESS && fn != nullptr) {
    *out = reinterpret_cast<Fn>(fn);
    return {};
  }
  const char* why = status == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                        ? "needs a newer driver"
                        : "not found";
  return fmt::format("the NVIDIA driver is too old for jitattn: {} (version {}) {} "
                     "(cuGetProcAddress returned {})",
                     name, version, why, static_cast<int>(r));
}

// Fills `d`; returns the reason on failure. Runs once per process.
std::string load_driver(Driver& d) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* first = dlerror();
    const std::string reason = first != nullptr ? first : "unknown error";
    // Some containers ship only the unversioned development name.
    lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      return fmt::format("libcuda.so.1 not found: no NVIDIA driver on this machine (dlopen: {})",
                         reason);
    }
  }
  // The handle is never closed: driver state must outlive every static destructor.
  auto get = reinterpret_cast<GetProcAddress>(dlsym(lib, "cuGetProcAddress_v2"));
  if (get == nullptr) {
    return "the NVIDIA driver is too old for jitattn: libcuda has no cuGetProcAddress_v2 "
           "(needs a CUDA 12.0 or newer driver)";
  }
#define JITATTN_RESOLVE(name, version)                                              \
  if (std::string error = resolve(get, #name, version, &d.name); !error.empty()) return error;
  JITATTN_DRIVER_FUNCTIONS(JITATTN_RESOLVE)
#undef JITATTN_RESOLVE

  if (const CUresult r = d.cuDriverGetVersion(&d.version); r != CUDA_SUCCESS) d.version = 0;
  if (const CUresult r = d.cuInit(0); r != CUDA_SUCCESS) {
    const char* name = result_name(d, r);
    const char* text = result_text(d, r);
    return fmt::format("cuInit failed: {} ({}) with driver version {}",
                       name != nullptr ? name : fmt::format("CUresult {}", static_cast<int>(r)),
                       text != nullptr ? text : "no description", d.version);
  }
  return {};
}

// A function-local static is initialized exactly once even under concurrent first calls, and a
// failure is kept so that every caller sees the same reason.
const Loaded& loaded() {
  static const Loaded instance = [] {
    Loaded l;
    l.error = load_driver(l.driver);
    if (!l.error.empty()) l.driver = Driver{};
    return l;
  }();
  return instance;
}

CUdeviceptr to_device_ptr(const void* p) {
  return static_cast<CUdeviceptr>(reinterpret_cast<std::uintptr_t>(p));
}

void check_ordinal(int ordinal) {
  const int count = device_count();
  if (ordinal < 0 || ordinal >= count) {
    throw InvalidArgument("device", fmt::format("ordinal {} is out of range: this machine has {} "
                                                "CUDA device(s)",
                                                ordinal, count));
  }
}

// Runs `fn` with `ctx` current; for cleanup paths that must not throw.
template <class Fn>
void with_context_noexcept(CUcontext ctx, Fn fn) noexcept {
  const Driver& d = loaded().driver;
  const bool pushed = ctx != nullptr && d.cuCtxPushCurrent(ctx) == CUDA_SUCCESS;
  fn(d);
  CUcontext popped = nullptr;
  if (pushed) d.cuCtxPopCurrent(&popped);
}

}  // namespace

const Driver& driver() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw NoDevice(l.error);
  return l.driver;
}

bool driver_available(std::string* reason) {
  const Loaded& l = loaded();
  if (reason != nullptr) *reason = l.error;
  return l.error.empty();
}

int device_count() {
  const Loaded& l = loaded();
  if (!l.error.empty()) return 0;
  int count = 0;
  if (l.driver.cuDeviceGetCount(&count) != CUDA_SUCCESS) return 0;
  return count;
}

std::string cu_error_message(int code, const char* name, const char* text, const char* expr,
                             const char* file, int line) {
  return fmt::format("{} ({}) in `{}` at {}:{}",
                     name != nullptr ? std::string(name) : fmt::format("CUresult {}", code),
                     text != nullptr ? text : "no description", expr, file, line);
}

void throw_cu(CUresult result, const char* expr, const char* file, int line) {
  const Driver& d = loaded().driver;  // null entry points when not loaded: the code alone then
  throw CudaError(static_cast<int>(result),
                  cu_error_message(static_cast<int>(result), result_name(d, result),
                                   result_text(d, result), expr, file, line));
}

DeviceInfo device_info(int ordinal) {
  const Driver& d = driver();
  check_ordinal(ordinal);
  CUdevice dev = 0;
  JITATTN_CU_CHECK(d.cuDeviceGet(&dev, ordinal));
  DeviceInfo info;
  info.ordinal = ordinal;
  info.driver_version = d.version;
  char name[256] = {};
  JITATTN_CU_CHECK(d.cuDeviceGetName(name, static_cast<int>(sizeof(name)), dev));
  info.name = name;
  JITATTN_CU_CHECK(d.cuDeviceTotalMem(&info.total_mem, dev));
  const auto attribute = [&](CUdevice_attribute a, int* out) {
    JITATTN_CU_CHECK(d.cuDeviceGetAttribute(out, a, dev));
  };
  attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &info.cc_major);
  attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &info.cc_minor);
  attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, &info.sm_count);
  attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, &info.l2_bytes);
  attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            &info.max_shared_per_block_optin);
  attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, &info.max_shared_per_sm);
  attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, &info.max_threads_per_block);
  attribute(CU_DEVICE_ATTRIBUTE_CLOCK_RATE, &info.clock_khz);
  return info;
}

CUcontext primary_context(int ordinal) {
  const Driver& d = driver();
  check_ordinal(ordinal);
  // Leaked on purpose: it must outlive static destructors of callers that still hold contexts.
  struct Cache {
    std::mutex mutex;
    std::vector<CUcontext> contexts;
  };
  static Cache* cache = new Cache;
  std::lock_guard lock(cache->mutex);
  const auto index = static_cast<size_t>(ordinal);
  if (cache->contexts.size() <= index) cache->contexts.resize(index + 1, nullptr);
  if (cache->contexts[index] == nullptr) {
    CUdevice dev = 0;
    JITATTN_CU_CHECK(d.cuDeviceGet(&dev, ordinal));
    CUcontext ctx = nullptr;
    JITATTN_CU_CHECK(d.cuDevicePrimaryCtxRetain(&ctx, dev));
    cache->contexts[index] = ctx;
  }
  return cache->contexts[index];
}

ScopedContext::ScopedContext(int ordinal) {
  JITATTN_CU_CHECK(driver().cuCtxPushCurrent(primary_context(ordinal)));
}

ScopedContext::~ScopedContext() {
  CUcontext popped = nullptr;
  loaded().driver.cuCtxPopCurrent(&popped);  // the constructor succeeded, so the driver is loaded
}

int device_of_pointer(const void* p) {
  if (p == nullptr || !driver_available()) return -1;
  const Driver& d = loaded().driver;
  int ordinal = -1;
  const CUresult r =
      d.cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, to_device_ptr(p));
  // INVALID_VALUE is the driver's answer for memory it did not allocate or register.
  if (r == CUDA_ERROR_INVALID_VALUE) return -1;
  if (r != CUDA_SUCCESS) throw_cu(r, "cuPointerGetAttribute(DEVICE_ORDINAL)", __FILE__, __LINE__);
  return ordinal >= 0 && ordinal < device_count() ? ordinal : -1;
}

int device_of_stream(CUstream s) {
  if (s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) return -1;
  const Driver& d = driver();
  CUcontext ctx = nullptr;
  JITATTN_CU_CHECK(d.cuStreamGetCtx(s, &ctx));
  // cuCtxGetDevice only reads the current context; cuCtxGetDevice_v2 would need a 12.8 driver.
  JITATTN_CU_CHECK(d.cuCtxPushCurrent(ctx));
  CUdevice dev = 0;
  const CUresult r = d.cuCtxGetDevice(&dev);
  CUcontext popped = nullptr;
  d.cuCtxPopCurrent(&popped);
  if (r != CUDA_SUCCESS) throw_cu(r, "cuCtxGetDevice(&dev)", __FILE__, __LINE__);
  // A CUdevice is a handle, not promised to equal the ordinal.
  const int count = device_count();
  for (int i = 0; i < count; ++i) {
    CUdevice candidate = 0;
    if (d.cuDeviceGet(&candidate, i) == CUDA_SUCCESS && candidate == dev) return i;
  }
  return static_cast<int>(dev);
}

// ---- Module ----

Module Module::load(const std::vector<char>& cubin) {
  if (cubin.empty()) throw InvalidArgument("cubin", "is empty");
  const Driver& d = driver();
  Module m;
  JITATTN_CU_CHECK(d.cuCtxGetCurrent(&m.context_));
  JITATTN_CU_CHECK(d.cuModuleLoadData(&m.module_, cubin.data()));
  return m;
}

CUfunction Module::function(const std::string& name) const {
  if (module_ == nullptr) throw InvalidArgument("module", "is empty (moved from or never loaded)");
  CUfunction f = nullptr;
  const CUresult r = driver().cuModuleGetFunction(&f, module_, name.c_str());
  if (r != CUDA_SUCCESS) {
    throw_cu(r, fmt::format("cuModuleGetFunction(\"{}\")", name).c_str(), __FILE__, __LINE__);
  }
  return f;
}

Module::Module(Module&& other) noexcept
    : module_(std::exchange(other.module_, nullptr)),
      context_(std::exchange(other.context_, nullptr)) {}

Module& Module::operator=(Module&& other) noexcept {
  if (this != &other) {
    reset();
    module_ = std::exchange(other.module_, nullptr);
    context_ = std::exchange(other.context_, nullptr);
  }
  return *this;
}

Module::~Module() { reset(); }

void Module::reset() noexcept {
  if (module_ == nullptr) return;
  // Errors are ignored: at process exit the driver may already be torn down.
  with_context_noexcept(context_, [&](const Driver& d) { d.cuModuleUnload(module_); });
  module_ = nullptr;
  context_ = nullptr;
}

// ---- DeviceBuffer ----

DeviceBuffer::DeviceBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  const Driver& d = driver();
  JITATTN_CU_CHECK(d.cuCtxGetCurrent(&context_));
  JITATTN_CU_CHECK(d.cuMemAlloc(&ptr_, bytes));
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, 0)),
      size_(std::exchange(other.size_, 0)),
      context_(std::exchange(other.context_, nullptr)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    ptr_ = std::exchange(other.ptr_, 0);
    size_ = std::exchange(other.size_, 0);
    context_ = std::exchange(other.context_, nullptr);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { reset(); }

void DeviceBuffer::reset() noexcept {
  if (ptr_ != 0) {
    with_context_noexcept(context_, [&](const Driver& d) { d.cuMemFree(ptr_); });
  }
  ptr_ = 0;
  size_ = 0;
  context_ = nullptr;
}

void DeviceBuffer::upload(const void* host, size_t bytes) {
  if (bytes > size_) {
    throw InvalidArgument("bytes", fmt::format("upload of {} bytes into a buffer of {}", bytes,
                                               size_));
  }
  if (bytes == 0) return;
  JITATTN_CU_CHECK(driver().cuMemcpyHtoD(ptr_, host, bytes));
}

void DeviceBuffer::download(void* host, size_t bytes) const {
  if (bytes > size_) {
    throw InvalidArgument("bytes", fmt::format("download of {} bytes from a buffer of {}", bytes,
                                               size_));
  }
  if (bytes == 0) return;
  JITATTN_CU_CHECK(driver().cuMemcpyDtoH(host, ptr_, bytes));
}

void DeviceBuffer::fill(uint8_t byte) {
  if (size_ == 0) return;
  JITATTN_CU_CHECK(driver().cuMemsetD8(ptr_, byte, size_));
}

void DeviceBuffer::fill_async(uint8_t byte, CUstream stream) {
  if (size_ == 0) return;
  JITATTN_CU_CHECK(driver().cuMemsetD8Async(ptr_, byte, size_, stream));
}

// ---- launch ----

CUtensorMap encode_tensor_map(TmaElement element, const void* base, std::array<uint64_t, 4> dims,
                              std::array<uint64_t, 3> strides_bytes, unsigned box_cols, unsigned box_rows,
                              int swizzle_bytes) {
  const Driver& d = driver();
  const uint64_t element_bytes = element == TmaElement::float32 ? 4 : 2;
  // A dim of size 1 is never stepped along; give it a legal stride (a multiple of 16 no smaller
  // than the one before), since the user's stride there may be anything (even 0).
  uint64_t prev = dims[0] * element_bytes;
  for (size_t i = 0; i < 3; ++i) {
    if (dims[i + 1] == 1) strides_bytes[i] = std::max<uint64_t>((prev + 15) / 16 * 16, 16);
    prev = strides_bytes[i] * dims[i + 1];
  }
  const cuuint64_t global_dim[4] = {dims[0], dims[1], dims[2], dims[3]};
  const cuuint64_t global_strides[3] = {strides_bytes[0], strides_bytes[1], strides_bytes[2]};
  const cuuint32_t box[4] = {box_cols, box_rows, 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapSwizzle swizzle = swizzle_bytes == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : swizzle_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                           : CU_TENSOR_MAP_SWIZZLE_32B;
  // For 16-bit copies the data type only sets the element size (copies move bits, never
  // convert); a reduce-add adds in the map's type.
  const CUtensorMapDataType type =
      element == TmaElement::float32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  CUtensorMap map{};
  JITATTN_CU_CHECK(d.cuTensorMapEncodeTiled(&map, type, 4, const_cast<void*>(base), global_dim, global_strides, box,
                                            element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
  return map;
}

void launch(CUfunction f, std::array<unsigned, 3> grid, std::array<unsigned, 3> block,
            unsigned shared_bytes, CUstream stream, void** params) {
  const Driver& d = driver();
  // Kernels get 48 KiB of dynamic shared memory by default; beyond that they must opt in.
  constexpr unsigned kDefaultSharedLimit = 48 * 1024;
  if (shared_bytes > kDefaultSharedLimit) {
    JITATTN_CU_CHECK(d.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                          static_cast<int>(shared_bytes)));
  }
  const CUresult r = d.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                      shared_bytes, stream, params, nullptr);
  if (r != CUDA_SUCCESS) {
    const std::string expr =
        fmt::format("cuLaunchKernel(grid=({},{},{}), block=({},{},{}), shared_bytes={})", grid[0],
                    grid[1], grid[2], block[0], block[1], block[2], shared_bytes);
    throw_cu(r, expr.c_str(), __FILE__, __LINE__);
  }
}

// ---- EventTimer ----

EventTimer::EventTimer() {
  const Driver& d = driver();
  JITATTN_CU_CHECK(d.cuCtxGetCurrent(&context_));
  JITATTN_CU_CHECK(d.cuEventCreate(&start_, CU_EVENT_DEFAULT));
  if (const CUresult r = d.cuEventCreate(&stop_, CU_EVENT_DEFAULT); r != CUDA_SUCCESS) {
    d.cuEventDestroy(start_);
    throw_cu(r, "cuEventCreate(&stop_, CU_EVENT_DEFAULT)", __FILE__, __LINE__);
  }
}

EventTimer::~EventTimer() {
  with_context_noexcept(context_, [&](const Driver& d) {
    d.cuEventDestroy(start_);
    d.cuEventDestroy(stop_);
  });
}

void EventTimer::start(CUstream stream) {
  JITATTN_CU_CHECK(driver().cuEventRecord(start_, stream));
}

void EventTimer::stop(CUstream stream) {
  JITATTN_CU_CHECK(driver().cuEventRecord(stop_, stream));
}

float EventTimer::elapsed_ms() const {
  const Driver& d = driver();
  JITATTN_CU_CHECK(d.cuEventSynchronize(stop_));
  float ms = 0;
  JITATTN_CU_CHECK(d.cuEventElapsedTime(&ms, start_, stop_));
  return ms;
}

}  // namespace jitattn::device
