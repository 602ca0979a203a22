#pragma once
// The fixture both upstream test files share: a libevent loop on the test thread, a plain
// upstream configuration, and one exchange run to its end. Parameterised over the client.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "base/c_handles.h"
#include "upstream/upstream.h"

namespace idem::testing {

class UpstreamFixture : public ::testing::TestWithParam<UpstreamBackend> {
 protected:
  static void SetUpTestSuite() { upstreamGlobalInit(); }

  static UpstreamConfig config(const std::string& url) {
    UpstreamConfig c;
    c.name = "test";
    c.url = url;
    c.connect_timeout = std::chrono::seconds(2);
    c.timeout = std::chrono::seconds(5);
    return c;
  }

  // Runs the loop until `pred` holds; false when `limit` passes first. A 10 ms tick keeps
  // EVLOOP_ONCE from returning at once when nothing else is pending.
  bool runUntil(const std::function<bool()>& pred,
                std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    EventPtr tick(event_new(
        base_.get(), -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr));
    timeval tv{0, 10'000};
    event_add(tick.get(), &tv);
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      event_base_loop(base_.get(), EVLOOP_ONCE);
    }
    return true;
  }

  UpstreamResult exchange(Upstream& up, UpstreamRequest req) {
    std::optional<UpstreamResult> result;
    up.send(std::move(req), [&](UpstreamResult r) { result = std::move(r); });
    EXPECT_TRUE(runUntil([&] { return result.has_value(); }));
    return result ? std::move(*result) : UpstreamResult{};
  }

  EventBasePtr base_{event_base_new()};
};

}  // namespace idem::testing
