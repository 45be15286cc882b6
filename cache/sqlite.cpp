#include "cache/sqlite.h"

#include <sqlite3.h>

#include <cmath>
#include <ctime>
#include <limits>
#include <thread>

namespace jitattn::cache::detail {

namespace {

bool is_busy(int rc) {
  int primary = rc & 0xff;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
}

}  // namespace

Db::Db(const std::string& filename, bool read_only, bool create) {
  int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
  flags |= read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
  if (create && !read_only) flags |= SQLITE_OPEN_CREATE;
  int rc = sqlite3_open_v2(filename.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw CacheError("cannot open cache " + filename, msg, "sqlite3_open_v2", rc);
  }
  // Extended codes say SQLITE_BUSY_SNAPSHOT etc.; checked the same way (primary code).
  sqlite3_extended_result_codes(db_, 1);
}

Db::~Db() { close(); }

Db& Db::operator=(Db&& other) noexcept {
  if (this != &other) {
    close();
    db_ = other.db_;
    other.db_ = nullptr;
  }
  return *this;
}

void Db::close() {
  // sqlite3_close_v2 cannot fail for a connection whose statements are all finalised (Stmt is
  // scoped), and a destructor has no one to report to.
  if (db_) sqlite3_close_v2(db_);
  db_ = nullptr;
}

void Db::set_busy_timeout(std::chrono::milliseconds timeout) {
  check(sqlite3_busy_timeout(db_, static_cast<int>(timeout.count())), "sqlite3_busy_timeout");
}

int64_t Db::changes() const { return sqlite3_changes64(db_); }

bool Db::read_only() const { return sqlite3_db_readonly(db_, "main") == 1; }

void Db::exec(const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    throw CacheError("SQLite statement failed", msg, sql, rc);
  }
}

CacheError Db::error(int rc, std::string_view statement) const {
  std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  return CacheError("SQLite call failed", msg, std::string(statement), rc);
}

void Db::check(int rc, std::string_view statement) const {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return;
  throw error(rc, statement);
}

Stmt::Stmt(const Db& db, std::string_view sql) : db_(db), sql_(sql) {
  int rc = sqlite3_prepare_v2(db.get(), sql_.data(), static_cast<int>(sql_.size()), &stmt_,
                              nullptr);
  db.check(rc, sql_);
}

Stmt::~Stmt() { sqlite3_finalize(stmt_); }

Stmt& Stmt::bind(int i, std::string_view text) {
  db_.check(sqlite3_bind_text64(stmt_, i, text.data(), text.size(), SQLITE_TRANSIENT,
                                SQLITE_UTF8),
            sql_);
  return *this;
}

Stmt& Stmt::bind(int i, int64_t value) {
  db_.check(sqlite3_bind_int64(stmt_, i, value), sql_);
  return *this;
}

Stmt& Stmt::bind(int i, double value) {
  if (std::isnan(value)) return bind_null(i);
  db_.check(sqlite3_bind_double(stmt_, i, value), sql_);
  return *this;
}

Stmt& Stmt::bind_blob(int i, const std::vector<char>& blob) {
  // A zero-length blob binds as an empty BLOB (not NULL), so verify() can report it.
  static const char empty = 0;
  db_.check(sqlite3_bind_blob64(stmt_, i, blob.empty() ? &empty : blob.data(), blob.size(),
                                SQLITE_TRANSIENT),
            sql_);
  return *this;
}

Stmt& Stmt::bind_null(int i) {
  db_.check(sqlite3_bind_null(stmt_, i), sql_);
  return *this;
}

bool Stmt::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw db_.error(rc, sql_);
}

void Stmt::run() {
  while (step()) {
  }
}

void Stmt::reset() {
  sqlite3_reset(stmt_);  // returns the last step's error, already reported by step()
  db_.check(sqlite3_clear_bindings(stmt_), sql_);
}

std::string Stmt::text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_, col);
  int n = sqlite3_column_bytes(stmt_, col);
  return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
}

int64_t Stmt::int64(int col) const { return sqlite3_column_int64(stmt_, col); }
int Stmt::int32(int col) const { return sqlite3_column_int(stmt_, col); }

double Stmt::real(int col) const {
  if (is_null(col)) return std::numeric_limits<double>::quiet_NaN();
  return sqlite3_column_double(stmt_, col);
}

std::vector<char> Stmt::blob(int col) const {
  const char* p = static_cast<const char*>(sqlite3_column_blob(stmt_, col));
  int n = sqlite3_column_bytes(stmt_, col);
  if (!p || n <= 0) return {};
  return std::vector<char>(p, p + n);
}

bool Stmt::is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }

void exec_retrying(Db& db, const std::string& sql, std::chrono::milliseconds max_wait) {
  // busy_timeout already waits inside SQLite; some paths (BEGIN IMMEDIATE racing a checkpoint,
  // journal_mode changes, SQLITE_BUSY_SNAPSHOT) return BUSY without waiting, so retry here too.
  auto deadline = std::chrono::steady_clock::now() + max_wait;
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    char* err = nullptr;
    int rc = sqlite3_exec(db.get(), sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    if (rc == SQLITE_OK) return;
    if (!is_busy(rc) || std::chrono::steady_clock::now() >= deadline) {
      throw CacheError("SQLite statement failed", msg, sql, rc);
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

WriteTxn::WriteTxn(Db& db, std::chrono::milliseconds max_wait) : db_(db), max_wait_(max_wait) {
  exec_retrying(db_, "BEGIN IMMEDIATE", max_wait_);
  open_ = true;
}

WriteTxn::~WriteTxn() {
  if (open_) sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void WriteTxn::commit() {
  exec_retrying(db_, "COMMIT", max_wait_);
  open_ = false;
}

std::string iso_utc(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double unix_seconds_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

}  // namespace jitattn::cache::detail
