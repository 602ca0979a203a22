#pragma once
// Names the calling thread for `top -H`, `ps -L`, perf and gdb (/proc/PID/task/TID/comm). Linux
// keeps 15 bytes; a longer name is cut, never refused.
#include <pthread.h>

#include <cstring>
#include <string>

namespace idem {

inline void nameThisThread(std::string name) {
  if (name.size() > 15) name.resize(15);
  ::pthread_setname_np(::pthread_self(), name.c_str());
}

}  // namespace idem
