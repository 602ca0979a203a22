#include "ops/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace idem {

namespace {

[[noreturn]] void misuse(std::string_view what, std::string_view name) {
  std::fprintf(stderr, "idemproxy: metrics misuse: %.*s: %.*s\n", static_cast<int>(what.size()),
               what.data(), static_cast<int>(name.size()), name.data());
  std::abort();
}

bool isAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool validMetricName(std::string_view n) {
  if (n.empty() || isDigit(n[0])) return false;
  return std::all_of(n.begin(), n.end(),
                     [](char c) { return isAlpha(c) || isDigit(c) || c == '_' || c == ':'; });
}

// [a-zA-Z_][a-zA-Z0-9_]*, and names starting with "__" are reserved.
bool validLabelName(std::string_view n) {
  if (n.empty() || isDigit(n[0]) || n.starts_with("__")) return false;
  return std::all_of(n.begin(), n.end(),
                     [](char c) { return isAlpha(c) || isDigit(c) || c == '_'; });
}

void appendDouble(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
    out.append(buf, end);
  }
}

void appendUint(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

// HELP text: backslash and newline are escaped.
void appendHelp(std::string& out, std::string_view help) {
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

// Label values: backslash, double quote and newline are escaped.
void appendLabelValue(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

// `{a="x",b="y"}` (with an optional extra label last, used for "le"); nothing when empty.
void appendLabels(std::string& out, const Labels& labels, std::string_view extraName = {},
                  std::string_view extraValue = {}) {
  if (labels.empty() && extraName.empty()) return;
  out += '{';
  bool first = true;
  auto one = [&](std::string_view n, std::string_view v) {
    if (!first) out += ',';
    first = false;
    out += n;
    out += "=\"";
    appendLabelValue(out, v);
    out += '"';
  };
  for (const auto& [n, v] : labels) one(n, v);
  if (!extraName.empty()) one(extraName, extraValue);
  out += '}';
}

std::string formatBound(double b) {
  std::string s;
  appendDouble(s, b);
  return s;
}

}  // namespace

// ---- Histogram ----------------------------------------------------------------------------

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && !(bounds_[i - 1] < bounds_[i]))) {
      misuse("histogram bounds must be finite and strictly increasing", formatBound(bounds_[i]));
    }
  }
}

void Histogram::observe(double v) noexcept {
  if (std::isnan(v)) return;  // would poison the sum; a NaN duration is a caller bug
  // First bound >= v: "le" is inclusive. Past the last bound lands in the +Inf bucket.
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);
  auto index = static_cast<size_t>(it - bounds_.begin());
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> exponentialBuckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1) misuse("exponentialBuckets", "bad arguments");
  std::vector<double> out;
  out.reserve(static_cast<size_t>(count));
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

std::vector<double> linearBuckets(double start, double width, int count) {
  if (!(width > 0) || count < 1) misuse("linearBuckets", "bad arguments");
  std::vector<double> out;
  out.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) out.push_back(start + width * i);
  return out;
}

namespace metric {
std::vector<double> latencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}
std::vector<double> commitLatencyBuckets() {
  return exponentialBuckets(0.00005, 2, 19);
}
std::vector<double> batchSizeBuckets() {
  return exponentialBuckets(1, 2, 11);
}
}  // namespace metric

// ---- Registry -----------------------------------------------------------------------------

struct MetricsRegistry::Series {
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
  std::function<double()> sample;  // callback gauge
  uint64_t generation = 0;         // of the callback registration
};

struct MetricsRegistry::Family {
  std::string name;
  std::string help;
  Type type;
  std::vector<std::string> labelNames;  // sorted; every series has exactly these
  std::vector<double> bounds;           // histograms
  std::map<Labels, std::unique_ptr<Series>> series;
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Series& MetricsRegistry::seriesLocked(std::string_view name, std::string_view help,
                                                       Type type, Labels& labels,
                                                       const std::vector<double>* bounds) {
  if (!validMetricName(name)) misuse("invalid metric name", name);
  std::sort(labels.begin(), labels.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> labelNames;
  labelNames.reserve(labels.size());
  for (const auto& [n, v] : labels) {
    if (!validLabelName(n)) misuse("invalid label name", n);
    if (type == Type::Histogram && n == "le") misuse("histograms cannot have label 'le'", name);
    if (!labelNames.empty() && labelNames.back() == n) misuse("repeated label", n);
    labelNames.push_back(n);
  }

  auto fit = families_.find(name);
  if (fit == families_.end()) {
    auto fam = std::make_unique<Family>();
    fam->name = std::string(name);
    fam->help = std::string(help);
    fam->type = type;
    fam->labelNames = labelNames;
    if (bounds) fam->bounds = *bounds;
    fit = families_.emplace(fam->name, std::move(fam)).first;
  }
  Family& fam = *fit->second;
  if (fam.type != type) misuse("metric registered again with another type", name);
  if (fam.help != help) misuse("metric registered again with other help text", name);
  if (fam.labelNames != labelNames) misuse("metric registered again with other labels", name);
  if (bounds && fam.bounds != *bounds) misuse("histogram registered again with other bounds", name);

  auto sit = fam.series.find(labels);
  if (sit == fam.series.end()) {
    auto s = std::make_unique<Series>();
    switch (type) {
      case Type::Counter:
        s->counter = std::make_unique<Counter>();
        break;
      case Type::Gauge:
        break;  // plain or callback: the caller fills it in
      case Type::Histogram:
        s->histogram = std::make_unique<Histogram>(fam.bounds);
        break;
    }
    sit = fam.series.emplace(labels, std::move(s)).first;
  }
  return *sit->second;
}

Counter& MetricsRegistry::counter(std::string_view name, std::string_view help, Labels labels) {
  std::lock_guard lock(mu_);
  return *seriesLocked(name, help, Type::Counter, labels, nullptr).counter;
}

Gauge& MetricsRegistry::gauge(std::string_view name, std::string_view help, Labels labels) {
  std::lock_guard lock(mu_);
  Series& s = seriesLocked(name, help, Type::Gauge, labels, nullptr);
  if (s.sample) misuse("gauge series is already a callback gauge", name);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& MetricsRegistry::histogram(std::string_view name, std::string_view help,
                                      std::vector<double> bounds, Labels labels) {
  std::lock_guard lock(mu_);
  return *seriesLocked(name, help, Type::Histogram, labels, &bounds).histogram;
}

GaugeCallbackRegistration MetricsRegistry::gaugeCallback(std::string_view name,
                                                         std::string_view help, Labels labels,
                                                         std::function<double()> sample) {
  if (!sample) misuse("empty gauge callback", name);
  std::lock_guard lock(mu_);
  Series& s = seriesLocked(name, help, Type::Gauge, labels, nullptr);
  if (s.gauge) misuse("gauge series is already a plain gauge", name);
  s.sample = std::move(sample);
  s.generation = nextGeneration_++;
  return GaugeCallbackRegistration(this, std::string(name), std::move(labels), s.generation);
}

void MetricsRegistry::removeCallback(const std::string& name, const Labels& labels,
                                     uint64_t generation) {
  std::lock_guard lock(mu_);
  auto fit = families_.find(name);
  if (fit == families_.end()) return;
  auto& series = fit->second->series;
  auto sit = series.find(labels);
  if (sit == series.end() || sit->second->generation != generation) return;  // replaced
  series.erase(sit);
  if (series.empty()) families_.erase(fit);
}

std::string MetricsRegistry::renderPrometheus() const {
  std::string out;
  std::lock_guard lock(mu_);
  out.reserve(families_.size() * 256);
  for (const auto& [name, fam] : families_) {
    if (fam->series.empty()) continue;
    out += "# HELP ";
    out += name;
    out += ' ';
    appendHelp(out, fam->help);
    out += "\n# TYPE ";
    out += name;
    switch (fam->type) {
      case Type::Counter:
        out += " counter\n";
        break;
      case Type::Gauge:
        out += " gauge\n";
        break;
      case Type::Histogram:
        out += " histogram\n";
        break;
    }
    std::vector<std::string> les;
    if (fam->type == Type::Histogram) {
      for (double b : fam->bounds) les.push_back(formatBound(b));
      les.emplace_back("+Inf");
    }
    for (const auto& [labels, s] : fam->series) {
      switch (fam->type) {
        case Type::Counter:
          out += name;
          appendLabels(out, labels);
          out += ' ';
          appendUint(out, s->counter->value());
          out += '\n';
          break;
        case Type::Gauge:
          out += name;
          appendLabels(out, labels);
          out += ' ';
          appendDouble(out, s->sample ? s->sample() : s->gauge->value());
          out += '\n';
          break;
        case Type::Histogram: {
          const Histogram::Snapshot snap = s->histogram->snapshot();
          for (size_t i = 0; i < les.size(); ++i) {
            out += name;
            out += "_bucket";
            appendLabels(out, labels, "le", les[i]);
            out += ' ';
            appendUint(out, snap.cumulative[i]);
            out += '\n';
          }
          out += name;
          out += "_sum";
          appendLabels(out, labels);
          out += ' ';
          appendDouble(out, snap.sum);
          out += '\n';
          out += name;
          out += "_count";
          appendLabels(out, labels);
          out += ' ';
          appendUint(out, snap.count);
          out += '\n';
          break;
        }
      }
    }
  }
  return out;
}

// ---- GaugeCallbackRegistration ------------------------------------------------------------

GaugeCallbackRegistration::GaugeCallbackRegistration(GaugeCallbackRegistration&& other) noexcept
    : registry_(std::exchange(other.registry_, nullptr)),
      name_(std::move(other.name_)),
      labels_(std::move(other.labels_)),
      generation_(other.generation_) {}

GaugeCallbackRegistration& GaugeCallbackRegistration::operator=(
    GaugeCallbackRegistration&& other) noexcept {
  if (this != &other) {
    reset();
    registry_ = std::exchange(other.registry_, nullptr);
    name_ = std::move(other.name_);
    labels_ = std::move(other.labels_);
    generation_ = other.generation_;
  }
  return *this;
}

GaugeCallbackRegistration::~GaugeCallbackRegistration() {
  reset();
}

void GaugeCallbackRegistration::reset() {
  if (registry_ != nullptr) {
    registry_->removeCallback(name_, labels_, generation_);
    registry_ = nullptr;
  }
}

}  // namespace idem
