// JSON written by hand: one flat object per line is all the CLI emits, so no JSON library.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <concepts>
#include <string>
#include <string_view>

namespace jitattn::cli {

/// A JSON string literal of `s` (quotes, backslashes and control characters escaped; UTF-8 kept).
inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

/// JSON has no NaN or infinity: they become null (an unmeasured timing, say).
inline std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : "null"; }

/// One flat JSON object, fields in insertion order.
class JsonObject {
 public:
  JsonObject& add(std::string_view key, std::string_view v) { return raw(key, json_string(v)); }
  JsonObject& add(std::string_view key, const char* v) { return add(key, std::string_view(v)); }
  JsonObject& add(std::string_view key, const std::string& v) { return add(key, std::string_view(v)); }
  JsonObject& add(std::string_view key, bool v) { return raw(key, v ? "true" : "false"); }
  template <std::integral T>
  JsonObject& add(std::string_view key, T v) { return raw(key, fmt::format("{}", v)); }
  JsonObject& add(std::string_view key, double v) { return raw(key, json_number(v)); }
  JsonObject& raw(std::string_view key, std::string_view json) {
    if (!body_.empty()) body_ += ", ";
    body_ += json_string(key);
    body_ += ": ";
    body_ += json;
    return *this;
  }
  std::string str() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

}  // namespace jitattn::cli
