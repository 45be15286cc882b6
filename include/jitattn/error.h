// Typed exceptions of the public API. Every error derives from jitattn::Error, so a caller can
// catch one type; the subtypes say which stage failed and carry what is needed to act on it.
#pragma once

#include <stdexcept>
#include <string>

namespace jitattn {

/// Base of every exception jitattn throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An argument of a call is invalid. `argument()` names it (e.g. "q.stride[3]"); nothing was
/// launched and nothing stored was changed.
class InvalidArgument : public Error {
 public:
  InvalidArgument(std::string argument, const std::string& what)
      : Error(argument + ": " + what), argument_(std::move(argument)) {}
  const std::string& argument() const { return argument_; }

 private:
  std::string argument_;
};

/// The problem is valid but this build or device cannot run it (e.g. a head dim above the
/// supported maximum, a tile config that does not fit the device).
class Unsupported : public Error {
 public:
  using Error::Error;
};

/// No usable CUDA driver or device (libcuda.so.1 missing, no GPU, driver too old).
class NoDevice : public Error {
 public:
  using Error::Error;
};

/// A CUDA driver call failed. Carries the CUresult code, its name and text, and the call.
class CudaError : public Error {
 public:
  CudaError(int code, const std::string& message) : Error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

/// NVRTC failed to compile a generated kernel. Carries the full program log and the options.
class CompileError : public Error {
 public:
  CompileError(const std::string& message, std::string log, std::string options)
      : Error(message + "\n" + log), log_(std::move(log)), options_(std::move(options)) {}
  const std::string& log() const { return log_; }
  const std::string& options() const { return options_; }

 private:
  std::string log_;
  std::string options_;
};

}  // namespace jitattn
