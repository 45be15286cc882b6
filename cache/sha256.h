// SHA-256 (FIPS 180-4) of compiled kernels' source text, the content key of the binaries table.
// Self-contained so the library needs no crypto library at run time (the GPU machine has none
// guaranteed, and OpenSSL's libcrypto would be a second static dependency for one hash).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace jitattn::cache {

/// Incremental SHA-256: update() any number of times, then digest() once.
class Sha256 {
 public:
  Sha256();
  void update(std::string_view data);
  std::array<uint8_t, 32> digest();  ///< pads and finishes; the object is spent afterwards

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_bytes_ = 0;
};

/// 64 lowercase hex digits of SHA-256(data).
std::string sha256_hex(std::string_view data);

}  // namespace jitattn::cache
