#include "request/waiters.h"

#include <gtest/gtest.h>

namespace idem {
namespace {

RecordId idOf(uint8_t b) {
  RecordId id{};
  id[0] = b;
  return id;
}

TEST(Waiters, ParkOnlyWhileOwnedHere) {
  WaiterRegistry reg;
  EXPECT_FALSE(reg.park(idOf(1), 1, [] {}));
  reg.ownerStarted(idOf(1));
  EXPECT_TRUE(reg.park(idOf(1), 1, [] {}));
  EXPECT_EQ(reg.parked(), 1u);
}

TEST(Waiters, FinishWakesEveryWaiterOfThatKeyOnly) {
  WaiterRegistry reg;
  reg.ownerStarted(idOf(1));
  reg.ownerStarted(idOf(2));
  int woken1 = 0, woken2 = 0;
  ASSERT_TRUE(reg.park(idOf(1), 1, [&] { ++woken1; }));
  ASSERT_TRUE(reg.park(idOf(1), 2, [&] { ++woken1; }));
  ASSERT_TRUE(reg.park(idOf(2), 3, [&] { ++woken2; }));
  reg.ownerFinished(idOf(1));
  EXPECT_EQ(woken1, 2);
  EXPECT_EQ(woken2, 0);
  EXPECT_EQ(reg.parked(), 1u);
  EXPECT_FALSE(reg.park(idOf(1), 4, [] {}));  // no longer owned here
}

TEST(Waiters, CancelledWaiterIsNotWoken) {
  WaiterRegistry reg;
  reg.ownerStarted(idOf(1));
  int woken = 0;
  ASSERT_TRUE(reg.park(idOf(1), 7, [&] { ++woken; }));
  reg.cancel(idOf(1), 7);
  reg.ownerFinished(idOf(1));
  EXPECT_EQ(woken, 0);
  EXPECT_EQ(reg.parked(), 0u);
}

TEST(Waiters, TwoReservationsOfOneIdCountSeparately) {
  WaiterRegistry reg;
  reg.ownerStarted(idOf(1));
  reg.ownerStarted(idOf(1));  // taken over after an abandoned lease, say
  reg.ownerFinished(idOf(1));
  EXPECT_TRUE(reg.park(idOf(1), 1, [] {}));
}

}  // namespace
}  // namespace idem
