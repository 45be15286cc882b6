// Engine: validate -> spec -> config -> kernel (compiled once per process and device) -> launch.
#include "jitattn/engine.h"

#include <fmt/format.h>

#include <map>
#include <mutex>
#include <unordered_map>

#include "generator/generator.h"
#include "jitattn/error.h"
#include "runtime/device/driver.h"
#include "runtime/device/nvrtc.h"
#include "runtime/plan.h"
#include "runtime/problem.h"

namespace jitattn {
namespace {

// A kernel loaded on one device. The compile result is shared by every device of the same arch.
struct LoadedKernel {
  device::Module module;
  CUfunction function = nullptr;
  KernelSource source;
  std::shared_ptr<const device::CompileResult> compiled;
};

// Guards one kernel's compile+load so concurrent first calls compile it once.
struct KernelSlot {
  std::mutex mu;
  std::unique_ptr<LoadedKernel> kernel;
};

struct DeviceState {
  device::DeviceInfo info;
  DeviceLimits limits;
  std::mutex mu;
  std::unordered_map<std::string, std::shared_ptr<KernelSlot>> kernels;  // by spec + config
};

// Every device pointer of a call must live on the device that owns q.
void require_on_device(const void* p, int device, const char* argument) {
  if (p == nullptr) return;
  const int d = device::device_of_pointer(p);
  if (d != device) {
    throw InvalidArgument(argument, d < 0 ? fmt::format("must be device memory of device {} (q's device)", device)
                                          : fmt::format("is on device {}, q is on device {}", d, device));
  }
}

}  // namespace

struct Engine::Impl {
  std::mutex mu;
  std::map<int, std::unique_ptr<DeviceState>> devices;
  // Compiled cubins by (arch, kernel name): devices of one arch share them.
  std::mutex compiled_mu;
  std::map<std::pair<int, std::string>, std::shared_ptr<const device::CompileResult>> compiled;

  DeviceState& device_state(int ordinal) {
    std::lock_guard lock(mu);
    auto& slot = devices[ordinal];
    if (!slot) {
      auto st = std::make_unique<DeviceState>();
      st->info = device::device_info(ordinal);
      st->limits.sm = st->info.sm();
      st->limits.max_shared_per_block = st->info.max_shared_per_block_optin;
      st->limits.max_threads_per_block = st->info.max_threads_per_block;
      slot = std::move(st);
    }
    return *slot;
  }

  std::shared_ptr<const device::CompileResult> compile(const KernelSource& src, int sm, bool* compiled_now) {
    const auto key = std::make_pair(sm, src.name);
    {
      std::lock_guard lock(compiled_mu);
      if (auto it = compiled.find(key); it != compiled.end()) return it->second;
    }
    auto result = std::make_shared<const device::CompileResult>(
        device::compile_to_cubin(src.source, src.name, sm));
    *compiled_now = true;
    std::lock_guard lock(compiled_mu);
    return compiled.emplace(key, std::move(result)).first->second;
  }

  // Returns the loaded kernel; the device's primary context must be current.
  LoadedKernel& kernel(DeviceState& dev, const KernelSpec& spec, const TileConfig& cfg,
                       bool* compiled_now) {
    // Keyed by the canonical texts, so a warm call generates no source.
    const std::string key = spec.canonical() + " " + cfg.canonical();
    std::shared_ptr<KernelSlot> slot;
    {
      std::lock_guard lock(dev.mu);
      auto& s = dev.kernels[key];
      if (!s) s = std::make_shared<KernelSlot>();
      slot = s;
    }
    std::lock_guard lock(slot->mu);
    if (!slot->kernel) {
      KernelSource src = generate(spec, cfg, dev.limits);
      auto k = std::make_unique<LoadedKernel>();
      k->compiled = compile(src, spec.target.sm, compiled_now);
      k->module = device::Module::load(k->compiled->cubin);
      k->function = k->module.function(src.name);
      if (src.shared_bytes > 48 * 1024) {
        JITATTN_CU_CHECK(device::driver().cuFuncSetAttribute(
            k->function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, src.shared_bytes));
      }
      k->source = std::move(src);
      slot->kernel = std::move(k);
    }
    return *slot->kernel;
  }
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

Engine& Engine::global() {
  static Engine engine;
  return engine;
}

KernelReport Engine::forward(const AttentionArgs& args, const ForwardOptions& options) {
  const Problem problem = validate(args);
  std::optional<TileConfig> forced;
  if (!options.config.empty()) forced = parse_config(options.config);
  if (!problem.has_output_rows()) return {};

  // Device checks need the driver; all of them run before anything is launched.
  device::driver();
  const int dev = device::device_of_pointer(args.q.data);
  if (dev < 0) throw InvalidArgument("q.data", "is not device memory known to CUDA");
  require_on_device(args.k.data, dev, "k.data");
  require_on_device(args.v.data, dev, "v.data");
  require_on_device(args.o.data, dev, "o.data");
  require_on_device(args.lse, dev, "lse");
  if (problem.bias) require_on_device(args.bias.data, dev, "bias.data");
  if (problem.alibi) require_on_device(args.alibi_slopes, dev, "alibi_slopes");
  require_on_device(args.cu_seqlens_q, dev, "cu_seqlens_q");
  require_on_device(args.cu_seqlens_k, dev, "cu_seqlens_k");
  require_on_device(args.seqused_q, dev, "seqused_q");
  require_on_device(args.seqused_k, dev, "seqused_k");
  auto stream = static_cast<CUstream>(args.stream);
  if (const int sd = device::device_of_stream(stream); sd >= 0 && sd != dev) {
    throw InvalidArgument("stream", fmt::format("belongs to device {}, tensors are on device {}", sd, dev));
  }

  DeviceState& state = impl_->device_state(dev);
  const KernelSpec spec = make_spec(problem, state.info.sm());
  const TileConfig cfg = forced ? *forced : default_config(spec, state.limits);
  if (auto why = why_illegal(spec, cfg, state.limits)) {
    throw InvalidArgument("config", fmt::format("{}: {}", cfg.canonical(), *why));
  }

  device::ScopedContext ctx(dev);
  bool compiled_now = false;
  LoadedKernel& k = impl_->kernel(state, spec, cfg, &compiled_now);
  jitattn_kernel::AttnFwdParams params = make_params(args, problem);
  void* launch_args[] = {&params};
  device::launch(k.function, make_grid(problem, cfg), {static_cast<unsigned>(k.source.threads), 1, 1},
                 static_cast<unsigned>(k.source.shared_bytes), stream, launch_args);

  KernelReport r;
  r.name = k.source.name;
  r.spec = spec.canonical();
  r.config = cfg.canonical();
  r.sm = spec.target.sm;
  r.device = dev;
  r.registers = k.compiled->registers;
  r.spill_bytes = k.compiled->spill_store_bytes + k.compiled->spill_load_bytes;
  r.shared_bytes = k.source.shared_bytes;
  r.compile_ms = k.compiled->compile_ms;
  r.compiled_now = compiled_now;
  return r;
}

}  // namespace jitattn
