// Internal to cache/: RAII owners of sqlite3* and sqlite3_stmt*, checked calls, and the write
// transaction. Every sqlite3_* return code is checked here; a failure throws CacheError with
// SQLite's message and the statement text. Values always travel as bound parameters.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cache/store.h"

struct sqlite3;
struct sqlite3_stmt;

namespace jitattn::cache::detail {

/// One connection. Not thread-safe (opened with SQLITE_OPEN_NOMUTEX): one Db per thread.
class Db {
 public:
  Db() = default;
  /// Opens `filename` (a path, or a "file:" URI). Throws CacheError if SQLite cannot open it.
  Db(const std::string& filename, bool read_only, bool create);
  ~Db();
  Db(Db&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  Db& operator=(Db&& other) noexcept;
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  sqlite3* get() const { return db_; }
  bool read_only() const;
  void close();
  void set_busy_timeout(std::chrono::milliseconds timeout);
  int64_t changes() const;  ///< rows changed by the last INSERT/UPDATE/DELETE

  /// Runs statements without parameters (schema text, pragmas); throws on any error.
  void exec(const std::string& sql);
  /// Throws CacheError for `rc` unless it is SQLITE_OK/ROW/DONE.
  void check(int rc, std::string_view statement) const;
  /// Builds the CacheError for a failed call without throwing it.
  CacheError error(int rc, std::string_view statement) const;

 private:
  sqlite3* db_ = nullptr;
};

/// One prepared statement; bind by 1-based index, step, read columns.
class Stmt {
 public:
  Stmt(const Db& db, std::string_view sql);
  ~Stmt();
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, std::string_view text);
  Stmt& bind(int i, int64_t value);
  Stmt& bind(int i, int value) { return bind(i, int64_t{value}); }
  Stmt& bind(int i, double value);  ///< NaN binds NULL (SQLite stores NaN as NULL anyway)
  Stmt& bind_blob(int i, const std::vector<char>& blob);
  Stmt& bind_null(int i);

  /// Steps once: true when a row is ready, false when done. Throws on error.
  bool step();
  /// Steps until done (for statements that return no rows).
  void run();
  void reset();

  std::string text(int col) const;
  int64_t int64(int col) const;
  int int32(int col) const;
  double real(int col) const;  ///< NULL reads as NaN
  std::vector<char> blob(int col) const;
  bool is_null(int col) const;

  const std::string& sql() const { return sql_; }

 private:
  const Db& db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::string sql_;
};

/// A short `BEGIN IMMEDIATE` write transaction: takes the write lock up front (waiting through
/// SQLITE_BUSY up to `max_wait`), rolls back unless commit() ran. WAL has one writer at a time.
class WriteTxn {
 public:
  WriteTxn(Db& db, std::chrono::milliseconds max_wait);
  ~WriteTxn();
  WriteTxn(const WriteTxn&) = delete;
  WriteTxn& operator=(const WriteTxn&) = delete;
  void commit();

 private:
  Db& db_;
  std::chrono::milliseconds max_wait_;
  bool open_ = false;
};

/// Runs `sql` (no parameters), retrying on SQLITE_BUSY/LOCKED until `max_wait` has passed.
void exec_retrying(Db& db, const std::string& sql, std::chrono::milliseconds max_wait);

/// UTC ISO-8601 "YYYY-MM-DDTHH:MM:SSZ" of `t`.
std::string iso_utc(std::chrono::system_clock::time_point t);
/// Seconds since the Unix epoch, with sub-second resolution.
double unix_seconds_now();

}  // namespace jitattn::cache::detail
