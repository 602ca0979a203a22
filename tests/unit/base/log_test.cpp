#include "base/log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/c_handles.h"
#include "base/clock.h"
#include "base/digest.h"

namespace idem {
namespace {

CJsonPtr parseJson(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "exactly one line";
  CJsonPtr j(cJSON_Parse(line.c_str()));
  EXPECT_TRUE(j && cJSON_IsObject(j.get())) << line;
  return j;
}

std::string str(const cJSON* obj, const char* key) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsString(v) ? v->valuestring : "<not a string>";
}

// Reads everything a temp file received.
std::string slurp(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  return out;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) {
      out.push_back(text.substr(start));
      break;
    }
    out.push_back(text.substr(start, nl - start + 1));
    start = nl + 1;
  }
  return out;
}

class Log : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::tmpfile();
    ASSERT_NE(file_, nullptr);
    oldFd_ = log::setFd(fileno(file_));
    log::setLevel(LogLevel::Debug);
    log::setClock(&clock_);
  }
  void TearDown() override {
    log::setFd(oldFd_);
    log::setLevel(LogLevel::Info);
    log::setClock(nullptr);
    std::fclose(file_);
  }
  FILE* file_ = nullptr;
  int oldFd_ = STDERR_FILENO;
  FakeClock clock_{1'700'000'000'123};
};

TEST(LogFormat, Rfc3339UtcWithMilliseconds) {
  EXPECT_EQ(log::rfc3339Utc(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(log::rfc3339Utc(1'700'000'000'123), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(log::rfc3339Utc(951'782'400'007), "2000-02-29T00:00:00.007Z");
  EXPECT_EQ(log::rfc3339Utc(-1), "1969-12-31T23:59:59.999Z");
}

TEST(LogFormat, OneObjectWithTypedFields) {
  const std::string line = log::formatLine(LogLevel::Info, "request",
                                           {{"route", std::string("payments")},
                                            {"status", 201},
                                            {"duration_ms", 1.25},
                                            {"replayed", true},
                                            {"method", "POST"},
                                            {"view", std::string_view("sv")}},
                                           1'700'000'000'123);
  CJsonPtr j = parseJson(line);
  ASSERT_TRUE(j);
  EXPECT_EQ(str(j.get(), "time"), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(str(j.get(), "level"), "info");
  EXPECT_EQ(str(j.get(), "event"), "request");
  EXPECT_EQ(str(j.get(), "route"), "payments");
  EXPECT_EQ(str(j.get(), "method"), "POST");
  EXPECT_EQ(str(j.get(), "view"), "sv");
  const cJSON* status = cJSON_GetObjectItemCaseSensitive(j.get(), "status");
  ASSERT_TRUE(cJSON_IsNumber(status));
  EXPECT_EQ(status->valuedouble, 201);
  EXPECT_EQ(cJSON_GetObjectItemCaseSensitive(j.get(), "duration_ms")->valuedouble, 1.25);
  EXPECT_TRUE(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j.get(), "replayed")));
  // Field order is kept: time, level, event first.
  EXPECT_EQ(
      line.rfind(R"({"time":"2023-11-14T22:13:20.123Z","level":"info","event":"request",)", 0), 0u)
      << line;
}

TEST(LogFormat, IntegersAreExact) {
  const std::string line = log::formatLine(
      LogLevel::Info, "e",
      {{"min", INT64_MIN}, {"umax", UINT64_MAX}, {"u8", uint8_t{7}}, {"neg", -3}}, 0);
  EXPECT_NE(line.find(R"("min":-9223372036854775808)"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("umax":18446744073709551615)"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("u8":7)"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("neg":-3)"), std::string::npos) << line;
  parseJson(line);
}

TEST(LogFormat, StringsAreEscapedAndValidUtf8) {
  const std::string nasty = std::string("q\"b\\s\nn\tt\x01") + "\xC3\xA9" + "\xFF" + "\xC3" +
                            std::string(1, '\0') + "end";
  const std::string line = log::formatLine(LogLevel::Warn, "e\"vent", {{"v", nasty}}, 0);
  CJsonPtr j = parseJson(line);
  ASSERT_TRUE(j);
  EXPECT_EQ(str(j.get(), "event"), "e\"vent");
  EXPECT_EQ(str(j.get(), "v"),
            "q\"b\\s\nn\tt\x01\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
            "end");
  EXPECT_EQ(str(j.get(), "level"), "warn");
}

TEST(LogFormat, LongValuesAreCutOnACharacterBoundary) {
  std::string big;
  while (big.size() < 5000) big += "\xC3\xA9";  // é, two bytes each
  const std::string line = log::formatLine(LogLevel::Info, "e", {{"v", big}}, 0);
  CJsonPtr j = parseJson(line);
  ASSERT_TRUE(j);
  const std::string v = str(j.get(), "v");
  EXPECT_LE(v.size(), log::kMaxValueBytes + 3);
  EXPECT_TRUE(v.ends_with("\xC3\xA9..."));
  EXPECT_EQ(v.find("\xEF\xBF\xBD"), std::string::npos);
}

TEST(LogFormat, SecretsAreRedactedAndKeysHashed) {
  const std::string rawKey = "order-7f3a-very-secret";
  const std::string line = log::formatLine(LogLevel::Info, "e",
                                           {{"Authorization", "Bearer sk_live_123"},
                                            {"set-cookie", "sid=abc"},
                                            {"body", "{\"card\":\"4242\"}"},
                                            {"idempotency_key", rawKey},
                                            log::keyHash(rawKey)},
                                           0);
  EXPECT_EQ(line.find("sk_live_123"), std::string::npos) << line;
  EXPECT_EQ(line.find("sid=abc"), std::string::npos) << line;
  EXPECT_EQ(line.find("4242"), std::string::npos) << line;
  EXPECT_EQ(line.find(rawKey), std::string::npos) << line;
  CJsonPtr j = parseJson(line);
  ASSERT_TRUE(j);
  EXPECT_EQ(str(j.get(), "Authorization"), "[redacted]");
  EXPECT_EQ(str(j.get(), "key_hash"), keyHashForLog(rawKey));
  EXPECT_EQ(str(j.get(), "key_hash").size(), 16u);
}

TEST(LogFormat, ReservedAndRepeatedKeys) {
  log::Fields f;
  f.add("event", "mine").add("n", 1).add("n", 2).add(log::Field("time", 5));
  const std::string line = log::formatLine(LogLevel::Error, "real", f, 0);
  CJsonPtr j = parseJson(line);
  ASSERT_TRUE(j);
  EXPECT_EQ(str(j.get(), "event"), "real");
  EXPECT_EQ(str(j.get(), "field_event"), "mine");
  EXPECT_EQ(cJSON_GetObjectItemCaseSensitive(j.get(), "n")->valuedouble, 2);
  EXPECT_EQ(cJSON_GetObjectItemCaseSensitive(j.get(), "field_time")->valuedouble, 5);
  EXPECT_EQ(cJSON_GetArraySize(j.get()), 6);  // time level event field_event n field_time
}

TEST_F(Log, WritesLinesAtOrAboveTheLevel) {
  log::setLevel(LogLevel::Warn);
  EXPECT_FALSE(log::enabled(LogLevel::Info));
  EXPECT_TRUE(log::enabled(LogLevel::Error));
  log::debug("d");
  log::info("i", {{"a", 1}});
  log::warn("w", {{"route", "p"}});
  log::error("e");
  log::setLevel(LogLevel::Debug);
  log::debug("d2");
  const auto got = lines(slurp(file_));
  ASSERT_EQ(got.size(), 3u);
  CJsonPtr w = parseJson(got[0]);
  EXPECT_EQ(str(w.get(), "event"), "w");
  EXPECT_EQ(str(w.get(), "level"), "warn");
  EXPECT_EQ(str(w.get(), "time"), "2023-11-14T22:13:20.123Z");  // the injected clock
  EXPECT_EQ(str(parseJson(got[1]).get(), "level"), "error");
  EXPECT_EQ(str(parseJson(got[2]).get(), "event"), "d2");
}

TEST_F(Log, LinesFromManyThreadsNeverInterleave) {
  constexpr int kThreads = 8;
  constexpr int kLines = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      const std::string pad(900, static_cast<char>('a' + t));  // lines well past PIPE_BUF/4
      for (int i = 0; i < kLines; ++i) log::info("line", {{"t", t}, {"i", i}, {"pad", pad}});
    });
  }
  for (auto& th : threads) th.join();
  const auto got = lines(slurp(file_));
  ASSERT_EQ(got.size(), static_cast<size_t>(kThreads * kLines));
  std::set<std::pair<int, int>> seen;
  for (const auto& l : got) {
    CJsonPtr j = parseJson(l);
    ASSERT_TRUE(j) << l;
    const int t = cJSON_GetObjectItemCaseSensitive(j.get(), "t")->valueint;
    const int i = cJSON_GetObjectItemCaseSensitive(j.get(), "i")->valueint;
    EXPECT_EQ(str(j.get(), "pad"), std::string(900, static_cast<char>('a' + t)));
    seen.emplace(t, i);
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads * kLines));
}

// ---- The batched path (log::deferred) ----

TEST(LogFormat, ViewFieldsFormatLikeOwnedOnes) {
  const std::string nasty = std::string("a\"b\n\x01\xFF") + std::string(1, '\0') + "z";
  const log::FieldView views[] = {{"route", "payments"}, {"status", 201},      {"d", 1.5},
                                  {"u", uint64_t{7}},    {"ok", false},        {"v", nasty},
                                  {"token", "secret!"},  {"event", "renamed"}, {"status", 202},
                                  {"nan", std::nan("")}};
  const std::string viewLine = log::formatLine(LogLevel::Info, "request", views, 42);
  const std::string ownedLine = log::formatLine(LogLevel::Info, "request",
                                                {{"route", "payments"},
                                                 {"status", 201},
                                                 {"d", 1.5},
                                                 {"u", uint64_t{7}},
                                                 {"ok", false},
                                                 {"v", nasty},
                                                 {"token", "secret!"},
                                                 {"event", "renamed"},
                                                 {"status", 202},
                                                 {"nan", std::nan("")}},
                                                42);
  EXPECT_EQ(viewLine, ownedLine);
  EXPECT_EQ(viewLine, R"({"time":"1970-01-01T00:00:00.042Z","level":"info","event":"request",)"
                      R"("route":"payments","status":202,"d":1.5,"u":7,"ok":false,)"
                      R"("v":"a\"b\n\u0001)"
                      "\xEF\xBF\xBD\xEF\xBF\xBD"
                      R"(z","token":"[redacted]","field_event":"renamed","nan":null})"
                      "\n");
  parseJson(viewLine);
}

TEST_F(Log, DeferredLinesAreWrittenByTheLogThread) {
  const log::FieldView f[] = {{"n", 1}};
  log::deferred(LogLevel::Info, "batched", f);
  // No flush: the log's own thread writes the batch (50 ms after its first line).
  std::string text;
  for (int i = 0; i < 2000 && text.find("batched") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    text = slurp(file_);
  }
  const auto got = lines(text);
  ASSERT_EQ(got.size(), 1u) << text;
  EXPECT_EQ(str(parseJson(got[0]).get(), "event"), "batched");
  EXPECT_EQ(str(parseJson(got[0]).get(), "time"), "2023-11-14T22:13:20.123Z");
}

TEST_F(Log, DeferredLinesBelowTheLevelAreDropped) {
  log::setLevel(LogLevel::Warn);
  const log::FieldView f[] = {{"n", 1}};
  log::deferred(LogLevel::Info, "quiet", f);
  log::flush();
  EXPECT_EQ(slurp(file_), "");
}

TEST_F(Log, AnImmediateLineComesAfterTheDeferredOnesBeforeIt) {
  for (int i = 0; i < 3; ++i) {
    const log::FieldView f[] = {{"i", i}};
    log::deferred(LogLevel::Info, "request", f);
  }
  log::warn("after");
  const auto got = lines(slurp(file_));
  ASSERT_EQ(got.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    CJsonPtr j = parseJson(got[static_cast<size_t>(i)]);
    EXPECT_EQ(str(j.get(), "event"), "request");
    EXPECT_EQ(cJSON_GetObjectItemCaseSensitive(j.get(), "i")->valueint, i);
  }
  EXPECT_EQ(str(parseJson(got[3]).get(), "event"), "after");
}

TEST_F(Log, DeferredLinesFromManyThreadsStayWholeAndInThreadOrder) {
  constexpr int kThreads = 8;
  constexpr int kLines = 2000;  // 8 × 2000 × ~1 KiB: past the 1 MiB per-thread bound
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      const std::string pad(900, static_cast<char>('a' + t));
      for (int i = 0; i < kLines; ++i) {
        const log::FieldView f[] = {{"t", t}, {"i", i}, {"pad", pad}};
        log::deferred(LogLevel::Info, "line", f);
      }
    });
  }
  for (auto& th : threads) th.join();
  log::flush();
  const auto got = lines(slurp(file_));
  ASSERT_EQ(got.size(), static_cast<size_t>(kThreads * kLines));
  std::vector<int> next(kThreads, 0);
  for (const auto& l : got) {
    CJsonPtr j = parseJson(l);
    ASSERT_TRUE(j) << l;
    const int t = cJSON_GetObjectItemCaseSensitive(j.get(), "t")->valueint;
    const int i = cJSON_GetObjectItemCaseSensitive(j.get(), "i")->valueint;
    EXPECT_EQ(str(j.get(), "pad"), std::string(900, static_cast<char>('a' + t)));
    EXPECT_EQ(i, next[static_cast<size_t>(t)]++) << "thread " << t << " out of order";
  }
}

TEST_F(Log, SwitchingTheDescriptorWritesPendingLinesToTheOldOne) {
  const log::FieldView f[] = {{"n", 1}};
  log::deferred(LogLevel::Info, "pending", f);
  FILE* other = std::tmpfile();
  ASSERT_NE(other, nullptr);
  log::setFd(fileno(other));
  log::flush();
  EXPECT_NE(slurp(file_).find("pending"), std::string::npos);
  EXPECT_EQ(slurp(other), "");
  log::setFd(fileno(file_));
  std::fclose(other);
}

void logOneLineAndExit(int fd) {
  log::setFd(fd);
  const log::FieldView fields[] = {{"n", 7}};
  log::deferred(LogLevel::Info, "last-words", fields);
  std::exit(0);  // no flush: the exit handler writes the buffered line
}

TEST(LogExit, DeferredLinesAreWrittenWhenTheProcessExits) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a forked child of a threaded process may not start threads under TSan";
#endif
  // Forked ("fast" style, whatever another test set), so the child writes to this very file.
  GTEST_FLAG_SET(death_test_style, "fast");
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  EXPECT_EXIT(logOneLineAndExit(fileno(f)), ::testing::ExitedWithCode(0), "");
  EXPECT_NE(slurp(f).find("last-words"), std::string::npos);
  std::fclose(f);
}

// JOURNAL_STREAM's format: "<st_dev>:<st_ino>" of the stream journald gave the service.
std::string journalStreamOf(int fd) {
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

// Sets JOURNAL_STREAM for one test and restores what was there.
class ScopedJournalStream {
 public:
  explicit ScopedJournalStream(const std::string& value) {
    if (const char* old = std::getenv("JOURNAL_STREAM")) old_ = old;
    ::setenv("JOURNAL_STREAM", value.c_str(), 1);
  }
  ~ScopedJournalStream() {
    if (old_) {
      ::setenv("JOURNAL_STREAM", old_->c_str(), 1);
    } else {
      ::unsetenv("JOURNAL_STREAM");
    }
  }

 private:
  std::optional<std::string> old_;
};

TEST(LogJournal, StreamMatchesOnlyItsOwnDeviceAndInode) {
  FILE* f = std::tmpfile();
  FILE* other = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ASSERT_NE(other, nullptr);
  const std::string mine = journalStreamOf(fileno(f));
  EXPECT_TRUE(log::journalStreamIs(mine.c_str(), fileno(f)));
  EXPECT_FALSE(log::journalStreamIs(mine.c_str(), fileno(other)));  // inherited, not ours
  EXPECT_FALSE(log::journalStreamIs(nullptr, fileno(f)));
  const std::vector<std::string> bads = {"", ":", "1", "1:", ":2", "x:y", mine + "x", " " + mine};
  for (const std::string& bad : bads) {
    EXPECT_FALSE(log::journalStreamIs(bad.c_str(), fileno(f))) << bad;
  }
  EXPECT_FALSE(log::journalStreamIs(mine.c_str(), -1));
  std::fclose(f);
  std::fclose(other);
}

TEST(LogJournal, PrefixesAreSdDaemonPriorities) {
  EXPECT_EQ(log::journalPrefix(LogLevel::Error), "<3>");  // LOG_ERR
  EXPECT_EQ(log::journalPrefix(LogLevel::Warn), "<4>");   // LOG_WARNING
  EXPECT_EQ(log::journalPrefix(LogLevel::Info), "<6>");   // LOG_INFO
  EXPECT_EQ(log::journalPrefix(LogLevel::Debug), "<7>");  // LOG_DEBUG
}

TEST_F(Log, LinesToTheJournalStreamCarryTheirPriority) {
  ScopedJournalStream env(journalStreamOf(fileno(file_)));
  log::setFd(fileno(file_));  // decided when the descriptor is set
  log::error("e");
  log::warn("w");
  log::info("i");
  log::debug("d");
  const auto got = lines(slurp(file_));
  ASSERT_EQ(got.size(), 4u);
  const char* prefixes[] = {"<3>", "<4>", "<6>", "<7>"};
  const char* levels[] = {"error", "warn", "info", "debug"};
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].substr(0, 3), prefixes[i]) << got[i];
    EXPECT_EQ(str(parseJson(got[i].substr(3)).get(), "level"), levels[i]);
  }
}

TEST_F(Log, LinesElsewhereArePlainJsonEvenWithJournalStreamSet) {
  FILE* journal = std::tmpfile();  // stands for the journal stream stderr was before a redirect
  ASSERT_NE(journal, nullptr);
  ScopedJournalStream env(journalStreamOf(fileno(journal)));
  log::setFd(fileno(file_));
  log::error("e");
  const auto got = lines(slurp(file_));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].front(), '{') << got[0];
  EXPECT_EQ(str(parseJson(got[0]).get(), "level"), "error");
  std::fclose(journal);
}

}  // namespace
}  // namespace idem
