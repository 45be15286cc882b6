// In-process clang -> LLVM module -> host object code, and ORC LLJIT loading. See cpu_jit.h.
#include "runtime/device/cpu_jit.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <fstream>
#include <thread>

#include <pthread.h>
#include <unistd.h>

#include "jitattn/error.h"

#if JITATTN_WITH_LLVM
#include <clang/Basic/Diagnostic.h>
#include <clang/Basic/DiagnosticOptions.h>
#include <clang/CodeGen/CodeGenAction.h>
#include <clang/Frontend/CompilerInstance.h>
#include <clang/Frontend/CompilerInvocation.h>
#include <clang/Frontend/TextDiagnosticPrinter.h>
#include <clang/Lex/PreprocessorOptions.h>
#include <llvm/ADT/SmallVector.h>
#include <llvm/ADT/StringMap.h>
#include <llvm/Config/llvm-config.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/MC/TargetRegistry.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>
#include <llvm/Target/TargetOptions.h>
#include <llvm/TargetParser/Host.h>
#endif

namespace jitattn::device {

namespace {
// The per-core L2 size: glibc's sysconf, else Linux' sysfs ("1024K"); 1 when neither says.
int64_t host_l2_bytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  if (const long v = sysconf(_SC_LEVEL2_CACHE_SIZE); v > 0) return v;
#endif
  std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index2/size");
  int64_t n = 0;
  char unit = 0;
  if (in >> n >> unit && n > 0) return unit == 'K' ? n * 1024 : unit == 'M' ? n * 1024 * 1024 : n;
  return 1;
}
}  // namespace

std::string HostCpu::arch_key() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the triple and features
  for (unsigned char c : triple + "|" + features) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("cpu-{}-{:08x}", name, static_cast<uint32_t>(h ^ (h >> 32)));
}

#if JITATTN_WITH_LLVM

namespace {

void init_llvm() {
  static std::once_flag once;
  std::call_once(once, [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
    llvm::InitializeNativeTargetAsmParser();
  });
}

std::string error_text(llvm::Error e) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << e;
  return os.str();
}

constexpr const char* kInputName = "jitattn_kernel.cpp";

}  // namespace

bool cpu_jit_available() { return true; }

const HostCpu& host_cpu() {
  static const HostCpu cpu = [] {
    HostCpu c;
    c.triple = llvm::sys::getProcessTriple();
    c.name = llvm::sys::getHostCPUName().str();
    // A CPU this LLVM does not know by name (e.g. a newer one under a VM) is "generic"; the
    // feature list below still enables everything it has (AVX2, AVX-512, FMA, ...).
    if (c.name == "generic" && c.triple.rfind("x86_64", 0) == 0) c.name = "x86-64";
    llvm::StringMap<bool> map;
    std::vector<std::string> on;
    if (llvm::sys::getHostCPUFeatures(map)) {
      for (const auto& f : map) {
        if (f.getValue()) on.push_back("+" + f.getKey().str());
      }
    }
    std::sort(on.begin(), on.end());
    c.features = fmt::format("{}", fmt::join(on, ","));
    c.threads = std::max(1u, std::thread::hardware_concurrency());
    c.l2_bytes = host_l2_bytes();
    return c;
  }();
  return cpu;
}

std::string llvm_version() { return LLVM_VERSION_STRING; }

std::vector<std::string> cpu_compile_options() {
  // cc1 options: the driver's -O3 set (loop and SLP vectorizers on), C++17 with no exceptions,
  // RTTI or standard headers (cc1 sets no errno for math builtins by default), FMA contraction,
  // position-independent
  // code for the JIT linker, and the host CPU.
  const HostCpu& cpu = host_cpu();
  std::vector<std::string> o = {"-triple", cpu.triple, "-target-cpu", cpu.name,
                                "-O3", "-vectorize-loops", "-vectorize-slp", "-std=c++17",
                                "-fno-rtti", "-ffp-contract=fast",
                                "-nostdsysteminc", "-nobuiltininc", "-mrelocation-model", "pic",
                                "-pic-level", "2", "-x", "c++"};
  if (!cpu.features.empty()) {
    size_t start = 0;
    while (start <= cpu.features.size()) {
      size_t end = cpu.features.find(',', start);
      if (end == std::string::npos) end = cpu.features.size();
      o.push_back("-target-feature");
      o.push_back(cpu.features.substr(start, end - start));
      start = end + 1;
    }
  }
  return o;
}

CpuCompileResult compile_cpu(const std::string& source, const std::string& kernel_name) {
  init_llvm();
  const auto t0 = std::chrono::steady_clock::now();
  CpuCompileResult result;
  result.kernel_name = kernel_name;

  std::vector<std::string> options = cpu_compile_options();
  options.push_back(kInputName);
  std::vector<const char*> argv;
  for (const auto& o : options) argv.push_back(o.c_str());

  std::string diag_text;
  llvm::raw_string_ostream diag_os(diag_text);
  auto diag_opts = llvm::makeIntrusiveRefCnt<clang::DiagnosticOptions>();
  auto* printer = new clang::TextDiagnosticPrinter(diag_os, diag_opts.get());
  clang::CompilerInstance ci;
  ci.createDiagnostics(printer, /*ShouldOwnClient=*/true);
  ci.setVerboseOutputStream(diag_os);  // "N errors generated." goes to the log, not stderr
  auto invocation = std::make_shared<clang::CompilerInvocation>();
  if (!clang::CompilerInvocation::CreateFromArgs(*invocation, argv, ci.getDiagnostics())) {
    throw CompileError(fmt::format("clang rejected the CPU compile options for {}", kernel_name),
                       diag_os.str(), fmt::format("{}", fmt::join(options, " ")));
  }
  // The source lives in memory only: the frontend reads the remapped buffer, no file is written.
  invocation->getPreprocessorOpts().addRemappedFile(
      kInputName, llvm::MemoryBuffer::getMemBufferCopy(source, kInputName).release());
  invocation->getFrontendOpts().DisableFree = false;
  ci.setInvocation(std::move(invocation));

  llvm::LLVMContext context;
  clang::EmitLLVMOnlyAction action(&context);
  const bool ok = ci.ExecuteAction(action);
  std::unique_ptr<llvm::Module> module = ok ? action.takeModule() : nullptr;
  result.log = diag_os.str();
  if (!module) {
    throw CompileError(fmt::format("clang failed to compile CPU kernel {}", kernel_name), result.log,
                       fmt::format("{}", fmt::join(options, " ")));
  }
  const llvm::Function* fn = module->getFunction(kernel_name);
  if (fn == nullptr || fn->isDeclaration()) {
    throw CompileError(fmt::format("the CPU source does not define extern \"C\" {}", kernel_name),
                       result.log, fmt::format("{}", fmt::join(options, " ")));
  }

  // Module (already optimised by clang at -O3) -> object code in memory.
  const HostCpu& cpu = host_cpu();
  std::string err;
  const llvm::Target* target = llvm::TargetRegistry::lookupTarget(cpu.triple, err);
  if (target == nullptr) throw CompileError("LLVM has no target for the host: " + err, result.log, "");
  llvm::TargetOptions topts;
  topts.AllowFPOpFusion = llvm::FPOpFusion::Fast;
  std::unique_ptr<llvm::TargetMachine> tm(target->createTargetMachine(
      cpu.triple, cpu.name, cpu.features, topts, llvm::Reloc::PIC_, llvm::CodeModel::Small,
      llvm::CodeGenOpt::Aggressive));
  module->setDataLayout(tm->createDataLayout());
  llvm::SmallVector<char, 0> buffer;
  {
    llvm::raw_svector_ostream os(buffer);
    llvm::legacy::PassManager pm;
    if (tm->addPassesToEmitFile(pm, os, nullptr, llvm::CGFT_ObjectFile)) {
      throw CompileError("LLVM cannot emit object code for the host target", result.log, "");
    }
    pm.run(*module);
  }
  result.object.assign(buffer.begin(), buffer.end());
  result.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

struct CpuModule::Impl {
  std::unique_ptr<llvm::orc::LLJIT> jit;
};

CpuModule CpuModule::load(const std::vector<char>& object, const std::string& kernel_name) {
  init_llvm();
  auto jit = llvm::orc::LLJITBuilder().create();
  if (!jit) throw CompileError("ORC LLJIT could not start", error_text(jit.takeError()), "");
  // Calls the optimiser may have introduced (memset, memcpy) resolve to this process' libc.
  auto gen = llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(
      (*jit)->getDataLayout().getGlobalPrefix());
  if (!gen) throw CompileError("ORC could not search this process' symbols", error_text(gen.takeError()), "");
  (*jit)->getMainJITDylib().addGenerator(std::move(*gen));
  auto buffer = llvm::MemoryBuffer::getMemBufferCopy(llvm::StringRef(object.data(), object.size()),
                                                     kernel_name + ".o");
  if (auto e = (*jit)->addObjectFile(std::move(buffer))) {
    throw CompileError(fmt::format("ORC could not link the object of {}", kernel_name), error_text(std::move(e)), "");
  }
  auto addr = (*jit)->lookup(kernel_name);
  if (!addr) {
    throw CompileError(fmt::format("the object does not define {}", kernel_name), error_text(addr.takeError()), "");
  }
  CpuModule m;
  m.impl_->jit = std::move(*jit);
  m.kernel_ = addr->toPtr<Kernel>();
  return m;
}

CpuModule::Kernel CpuModule::symbol(const std::string& name) const {
  if (!impl_ || !impl_->jit) throw CompileError(fmt::format("no object loaded to look up {} in", name), "", "");
  auto addr = impl_->jit->lookup(name);
  if (!addr) throw CompileError(fmt::format("the object does not define {}", name), error_text(addr.takeError()), "");
  return addr->toPtr<Kernel>();
}

#else  // no LLVM in this build

namespace {
[[noreturn]] void no_llvm() {
  throw Unsupported("this jitattn was built without LLVM (JITATTN_WITH_LLVM=OFF), so it has no CPU "
                    "backend; install Debian's llvm-16-dev and libclang-16-dev and rebuild");
}
}  // namespace

bool cpu_jit_available() { return false; }
const HostCpu& host_cpu() {
  static const HostCpu cpu = [] {
    HostCpu c;
    c.name = "unknown";
    c.threads = std::max(1u, std::thread::hardware_concurrency());
    c.l2_bytes = host_l2_bytes();
    return c;
  }();
  return cpu;
}
std::string llvm_version() { return "none"; }
std::vector<std::string> cpu_compile_options() { return {}; }
CpuCompileResult compile_cpu(const std::string&, const std::string&) { no_llvm(); }

struct CpuModule::Impl {};
CpuModule CpuModule::load(const std::vector<char>&, const std::string&) { no_llvm(); }
CpuModule::Kernel CpuModule::symbol(const std::string&) const { no_llvm(); }

#endif

CpuModule::CpuModule() : impl_(std::make_unique<Impl>()) {}
CpuModule::~CpuModule() = default;
CpuModule::CpuModule(CpuModule&&) noexcept = default;
CpuModule& CpuModule::operator=(CpuModule&&) noexcept = default;

// ---- thread pool ---------------------------------------------------------------------------

namespace {

// Kernels keep their blocks on the stack (kCpuScratchBudget per work item, plus frames), so
// they run only on the pool's own threads, created with this stack size: never on the caller's
// thread, whose stack may be small (a user's thread, a runtime's fiber).
constexpr size_t kWorkerStackBytes = size_t{16} << 20;

// A fixed pool of host_cpu().threads workers; each parallel_for is one job that the workers drain
// in chunks while the caller waits. Jobs from different callers run one after another.
class Pool {
 public:
  Pool() {
    const int n = std::max(1, host_cpu().threads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, kWorkerStackBytes);
    for (int i = 0; i < n; ++i) {
      pthread_t t;
      if (pthread_create(&t, &attr, &Pool::entry, this) == 0) workers_.push_back(t);
    }
    pthread_attr_destroy(&attr);
    if (workers_.empty()) throw Error("jitattn: could not start any CPU worker thread");
  }
  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (pthread_t t : workers_) pthread_join(t, nullptr);
  }

  int size() const { return static_cast<int>(workers_.size()); }

  void run(long long items, long long grain, const std::function<void(long long, long long)>& fn,
           int threads) {
    std::lock_guard serial(run_mu_);
    Job job;
    job.items = items;
    job.grain = std::max(1LL, grain);
    job.fn = &fn;
    const long long chunks = (items + job.grain - 1) / job.grain;
    job.workers_left = static_cast<int>(std::min<long long>(chunks, threads > 0 ? std::min(threads, size()) : size()));
    std::unique_lock lock(mu_);
    job_ = &job;
    cv_.notify_all();
    // Done when every chunk was handed out and every worker that joined has finished.
    done_cv_.wait(lock, [&] { return job.workers_left == 0 && job.active == 0; });
    job_ = nullptr;
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    long long items = 0, grain = 1;
    const std::function<void(long long, long long)>* fn = nullptr;
    std::atomic<long long> next{0};
    int workers_left = 0;  // workers still to join; guarded by mu_
    int active = 0;        // guarded by mu_
    std::exception_ptr error;
    std::mutex error_mu;
  };

  static void* entry(void* self) {
    static_cast<Pool*>(self)->work();
    return nullptr;
  }

  static void drain(Job& job) {
    for (;;) {
      const long long begin = job.next.fetch_add(job.grain);
      if (begin >= job.items) return;
      try {
        (*job.fn)(begin, std::min(job.items, begin + job.grain));
      } catch (...) {
        std::lock_guard lock(job.error_mu);
        if (!job.error) job.error = std::current_exception();
        job.next.store(job.items);  // stop handing out work
      }
    }
  }

  void work() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || (job_ != nullptr && job_->workers_left > 0); });
      if (stop_) return;
      Job* job = job_;
      --job->workers_left;
      ++job->active;
      lock.unlock();
      drain(*job);
      lock.lock();
      --job->active;
      if (job->active == 0) done_cv_.notify_all();
    }
  }

  std::vector<pthread_t> workers_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  Job* job_ = nullptr;
  bool stop_ = false;
};

}  // namespace

void parallel_for(long long items, long long grain, const std::function<void(long long, long long)>& fn,
                  int threads) {
  if (items <= 0) return;
  static Pool pool;
  pool.run(items, grain, fn, threads);
}

}  // namespace jitattn::device
