#include "ops/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace idem {
namespace {

// A strict little parser for the text exposition format 0.0.4, enough to check what
// renderPrometheus() writes: comments, sample lines, label escaping, float values.
struct Exposition {
  std::map<std::string, std::string> help;  // family → help (unescaped)
  std::map<std::string, std::string> type;  // family → type
  // "name{a=\"x\",b=\"y\"}" (labels in rendered order, values unescaped) → value
  std::map<std::string, double> samples;
  std::vector<std::string> order;  // sample keys in rendered order
  std::string error;

  double at(const std::string& key) const {
    auto it = samples.find(key);
    if (it == samples.end()) {
      ADD_FAILURE() << "no sample " << key;
      return std::nan("");
    }
    return it->second;
  }
  bool has(const std::string& key) const { return samples.count(key) != 0; }
};

bool isNameChar(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
         (!first && c >= '0' && c <= '9');
}

std::optional<double> parseValue(const std::string& s) {
  if (s == "+Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  try {
    size_t used = 0;
    double v = std::stod(s, &used);
    if (used != s.size()) return std::nullopt;
    return v;
  } catch (...) {
    return std::nullopt;
  }
}

Exposition parse(const std::string& text) {
  Exposition e;
  if (!text.empty() && text.back() != '\n') {
    e.error = "does not end with a newline";
    return e;
  }
  std::istringstream in(text);
  std::string line;
  std::string currentFamily;
  while (std::getline(in, line)) {
    if (line.empty()) {
      e.error = "empty line";
      return e;
    }
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
      std::string rest = line.substr(7);
      auto sp = rest.find(' ');
      if (sp == std::string::npos) {
        e.error = "comment without text: " + line;
        return e;
      }
      std::string name = rest.substr(0, sp);
      std::string body = rest.substr(sp + 1);
      if (line[2] == 'H') {
        std::string unescaped;
        for (size_t i = 0; i < body.size(); ++i) {
          if (body[i] == '\\' && i + 1 < body.size()) {
            char n = body[++i];
            unescaped += n == 'n' ? '\n' : n;
          } else {
            unescaped += body[i];
          }
        }
        e.help[name] = unescaped;
      } else {
        if (body != "counter" && body != "gauge" && body != "histogram") {
          e.error = "bad type: " + line;
          return e;
        }
        if (e.type.count(name)) {
          e.error = "TYPE twice for " + name;
          return e;
        }
        e.type[name] = body;
        currentFamily = name;
      }
      continue;
    }
    if (line[0] == '#') {
      e.error = "unexpected comment: " + line;
      return e;
    }
    size_t i = 0;
    while (i < line.size() && isNameChar(line[i], i == 0)) ++i;
    std::string name = line.substr(0, i);
    if (name.empty()) {
      e.error = "no metric name: " + line;
      return e;
    }
    std::string key = name;
    if (i < line.size() && line[i] == '{') {
      key += '{';
      ++i;
      bool first = true;
      while (true) {
        if (i >= line.size()) {
          e.error = "unterminated labels: " + line;
          return e;
        }
        if (line[i] == '}') {
          ++i;
          break;
        }
        if (!first) {
          if (line[i] != ',') {
            e.error = "expected ',': " + line;
            return e;
          }
          ++i;
          key += ',';
        }
        first = false;
        size_t start = i;
        while (i < line.size() && isNameChar(line[i], i == start) && line[i] != ':') ++i;
        std::string lname = line.substr(start, i - start);
        if (lname.empty() || line.compare(i, 2, "=\"") != 0) {
          e.error = "bad label: " + line;
          return e;
        }
        i += 2;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\') {
            if (i + 1 >= line.size()) break;
            char n = line[i + 1];
            if (n == 'n') {
              value += '\n';
            } else if (n == '\\' || n == '"') {
              value += n;
            } else {
              e.error = "bad escape: " + line;
              return e;
            }
            i += 2;
          } else {
            value += line[i++];
          }
        }
        if (i >= line.size()) {
          e.error = "unterminated label value: " + line;
          return e;
        }
        ++i;  // closing quote
        key += lname + "=\"" + value + "\"";
      }
      key += '}';
    }
    if (i >= line.size() || line[i] != ' ') {
      e.error = "expected one space before the value: " + line;
      return e;
    }
    auto value = parseValue(line.substr(i + 1));
    if (!value) {
      e.error = "bad value: " + line;
      return e;
    }
    // Samples must follow their family's TYPE line.
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!e.type.count(family) && name.ends_with(suffix)) {
        family = name.substr(0, name.size() - std::string(suffix).size());
      }
    }
    if (family != currentFamily) {
      e.error = "sample outside its family: " + line;
      return e;
    }
    if (e.samples.count(key)) {
      e.error = "duplicate sample: " + line;
      return e;
    }
    e.samples[key] = *value;
    e.order.push_back(key);
  }
  return e;
}

TEST(Metrics, EmptyRegistryRendersNothing) {
  MetricsRegistry r;
  EXPECT_EQ(r.renderPrometheus(), "");
}

TEST(Metrics, CountersWithLabels) {
  MetricsRegistry r;
  Counter& fwd = r.counter(metric::kRequestsTotal, metric::kRequestsTotalHelp,
                           {{"route", "payments"}, {"outcome", "forwarded"}});
  Counter& rep = r.counter(metric::kRequestsTotal, metric::kRequestsTotalHelp,
                           {{"route", "payments"}, {"outcome", "replayed"}});
  // Label order does not matter: the same series, the same handle.
  Counter& again = r.counter(metric::kRequestsTotal, metric::kRequestsTotalHelp,
                             {{"outcome", "forwarded"}, {"route", "payments"}});
  EXPECT_EQ(&fwd, &again);
  EXPECT_NE(&fwd, &rep);
  fwd.inc();
  fwd.inc(4);
  rep.inc();
  Counter& plain = r.counter("idemproxy_reloads_total", "Config reloads.");
  plain.inc(7);

  const std::string text = r.renderPrometheus();
  Exposition e = parse(text);
  ASSERT_EQ(e.error, "") << text;
  EXPECT_EQ(e.type["idemproxy_requests_total"], "counter");
  EXPECT_EQ(e.help["idemproxy_requests_total"], std::string(metric::kRequestsTotalHelp));
  EXPECT_EQ(e.at(R"(idemproxy_requests_total{outcome="forwarded",route="payments"})"), 5);
  EXPECT_EQ(e.at(R"(idemproxy_requests_total{outcome="replayed",route="payments"})"), 1);
  EXPECT_EQ(e.at("idemproxy_reloads_total"), 7);
  EXPECT_NE(text.find("idemproxy_reloads_total 7\n"), std::string::npos) << text;
  // Families sorted by name.
  EXPECT_LT(text.find("idemproxy_reloads_total"), text.find("idemproxy_requests_total"));
}

TEST(Metrics, LabelValuesAndHelpAreEscaped) {
  MetricsRegistry r;
  const std::string nasty = "a\\b\"c\nd}e,f=g";
  r.counter("x_total", "line one\nback\\slash", {{"route", nasty}}).inc(3);
  const std::string text = r.renderPrometheus();
  EXPECT_NE(text.find(R"(x_total{route="a\\b\"c\nd}e,f=g"} 3)"), std::string::npos) << text;
  EXPECT_NE(text.find("# HELP x_total line one\\nback\\\\slash\n"), std::string::npos) << text;
  Exposition e = parse(text);
  ASSERT_EQ(e.error, "") << text;
  EXPECT_EQ(e.help["x_total"], "line one\nback\\slash");
  EXPECT_EQ(e.at("x_total{route=\"" + nasty + "\"}"), 3);
}

TEST(Metrics, GaugesSetAndCallback) {
  MetricsRegistry r;
  Gauge& g = r.gauge("idemproxy_inflight", "Requests in flight.", {{"route", "p"}});
  g.set(10);
  g.inc();
  g.dec();
  g.dec();
  g.add(0.5);
  std::atomic<double> records{42};
  auto reg = r.gaugeCallback(metric::kRecordsHeld, metric::kRecordsHeldHelp, {},
                             [&] { return records.load(); });
  Exposition e = parse(r.renderPrometheus());
  ASSERT_EQ(e.error, "");
  EXPECT_EQ(e.type["idemproxy_inflight"], "gauge");
  EXPECT_EQ(e.at(R"(idemproxy_inflight{route="p"})"), 9.5);
  EXPECT_EQ(e.at("idemproxy_store_records"), 42);

  records = 43;  // sampled at render time
  e = parse(r.renderPrometheus());
  EXPECT_EQ(e.at("idemproxy_store_records"), 43);

  reg.reset();  // the series goes with its registration
  e = parse(r.renderPrometheus());
  ASSERT_EQ(e.error, "");
  EXPECT_FALSE(e.has("idemproxy_store_records"));
  EXPECT_EQ(e.type.count("idemproxy_store_records"), 0u);
}

TEST(Metrics, CallbackReplacedIsNotRemovedByTheOldRegistration) {
  MetricsRegistry r;
  auto first = r.gaugeCallback("g", "h", {}, [] { return 1.0; });
  auto second = r.gaugeCallback("g", "h", {}, [] { return 2.0; });
  first.reset();
  Exposition e = parse(r.renderPrometheus());
  EXPECT_EQ(e.at("g"), 2);
  GaugeCallbackRegistration moved = std::move(second);
  second.reset();  // moved-from: no effect
  EXPECT_EQ(parse(r.renderPrometheus()).at("g"), 2);
  moved = GaugeCallbackRegistration();
  EXPECT_FALSE(parse(r.renderPrometheus()).has("g"));
}

TEST(Metrics, HistogramBucketsAreCumulativeWithInf) {
  MetricsRegistry r;
  Histogram& h = r.histogram(metric::kUpstreamLatency, metric::kUpstreamLatencyHelp, {0.01, 0.1, 1},
                             {{"route", "p"}});
  h.observe(0.005);
  h.observe(0.1);  // on a bound: le is inclusive
  h.observe(0.5);
  h.observe(3);
  h.observe(100);
  h.observe(std::nan(""));  // ignored

  const std::string text = r.renderPrometheus();
  Exposition e = parse(text);
  ASSERT_EQ(e.error, "") << text;
  const std::string n = "idemproxy_upstream_latency_seconds";
  EXPECT_EQ(e.type[n], "histogram");
  EXPECT_EQ(e.at(n + R"(_bucket{route="p",le="0.01"})"), 1);
  EXPECT_EQ(e.at(n + R"(_bucket{route="p",le="0.1"})"), 2);
  EXPECT_EQ(e.at(n + R"(_bucket{route="p",le="1"})"), 3);
  EXPECT_EQ(e.at(n + R"(_bucket{route="p",le="+Inf"})"), 5);
  EXPECT_EQ(e.at(n + R"(_count{route="p"})"), 5);
  EXPECT_DOUBLE_EQ(e.at(n + R"(_sum{route="p"})"), 0.005 + 0.1 + 0.5 + 3 + 100);
  // Buckets in increasing order, then _sum, then _count.
  std::vector<std::string> expected = {n + R"(_bucket{route="p",le="0.01"})",
                                       n + R"(_bucket{route="p",le="0.1"})",
                                       n + R"(_bucket{route="p",le="1"})",
                                       n + R"(_bucket{route="p",le="+Inf"})",
                                       n + R"(_sum{route="p"})",
                                       n + R"(_count{route="p"})"};
  EXPECT_EQ(e.order, expected);
}

TEST(Metrics, HistogramWithoutLabelsAndPresetBuckets) {
  MetricsRegistry r;
  Histogram& h = r.histogram(metric::kStoreCommitBatch, metric::kStoreCommitBatchHelp,
                             metric::batchSizeBuckets());
  for (int i = 1; i <= 1000; ++i) h.observe(i);
  Exposition e = parse(r.renderPrometheus());
  ASSERT_EQ(e.error, "");
  const std::string n = "idemproxy_store_commit_batch_size";
  EXPECT_EQ(e.at(n + R"(_bucket{le="1"})"), 1);
  EXPECT_EQ(e.at(n + R"(_bucket{le="2"})"), 2);
  EXPECT_EQ(e.at(n + R"(_bucket{le="512"})"), 512);
  EXPECT_EQ(e.at(n + R"(_bucket{le="1024"})"), 1000);
  EXPECT_EQ(e.at(n + R"(_bucket{le="+Inf"})"), 1000);
  EXPECT_EQ(e.at(n + "_sum"), 500500);
  EXPECT_EQ(e.at(n + "_count"), 1000);

  for (const auto& b : {metric::latencyBuckets(), metric::commitLatencyBuckets()}) {
    ASSERT_FALSE(b.empty());
    for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]);
  }
}

TEST(Metrics, ConcurrentUpdatesAreExactAndRenderIsAlwaysValid) {
  MetricsRegistry r;
  Counter& c = r.counter("c_total", "c", {{"route", "r"}});
  Histogram& h = r.histogram("h_seconds", "h", {0.5, 1.5});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 50'000;
  std::atomic<bool> done{false};
  std::thread renderer([&] {
    while (!done.load()) {
      Exposition e = parse(r.renderPrometheus());
      ASSERT_EQ(e.error, "");
      // The histogram stays self-consistent while being written.
      EXPECT_EQ(e.at(R"(h_seconds_bucket{le="+Inf"})"), e.at("h_seconds_count"));
      EXPECT_LE(e.at(R"(h_seconds_bucket{le="0.5"})"), e.at(R"(h_seconds_bucket{le="1.5"})"));
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      // Registration from several threads returns the one handle.
      Counter& mine = r.counter("c_total", "c", {{"route", "r"}});
      EXPECT_EQ(&mine, &c);
      for (int i = 0; i < kPerThread; ++i) {
        mine.inc();
        h.observe(t % 2 == 0 ? 1.0 : 2.0);
      }
    });
  }
  for (auto& w : workers) w.join();
  done = true;
  renderer.join();
  Exposition e = parse(r.renderPrometheus());
  EXPECT_EQ(e.at(R"(c_total{route="r"})"), kThreads * kPerThread);
  EXPECT_EQ(e.at(R"(h_seconds_bucket{le="0.5"})"), 0);
  EXPECT_EQ(e.at(R"(h_seconds_bucket{le="1.5"})"), kThreads / 2 * kPerThread);
  EXPECT_EQ(e.at("h_seconds_count"), kThreads * kPerThread);
  EXPECT_EQ(e.at("h_seconds_sum"), (kThreads / 2) * kPerThread * 3.0);
}

using MetricsDeathTest = ::testing::Test;

TEST_F(MetricsDeathTest, MisuseAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MetricsRegistry r;
  EXPECT_DEATH(r.counter("1bad", "h"), "invalid metric name");
  EXPECT_DEATH(r.counter("ok", "h", {{"__reserved", "x"}}), "invalid label name");
  EXPECT_DEATH(r.counter("ok", "h", {{"a", "x"}, {"a", "y"}}), "repeated label");
  EXPECT_DEATH(r.histogram("h", "h", {0.1}, {{"le", "x"}}), "le");
  EXPECT_DEATH(r.histogram("h", "h", {1, 0.5}), "strictly increasing");
  r.counter("taken", "h", {{"route", "a"}});
  EXPECT_DEATH(r.gauge("taken", "h"), "another type");
  EXPECT_DEATH(r.counter("taken", "other help", {{"route", "a"}}), "other help");
  EXPECT_DEATH(r.counter("taken", "h", {{"outcome", "a"}}), "other labels");
  r.histogram("hist", "h", {1, 2});
  EXPECT_DEATH(r.histogram("hist", "h", {1, 3}), "other bounds");
}

}  // namespace
}  // namespace idem
