#pragma once
// RAII owners for the C libraries' handles. One place, so every handle has exactly one deleter.
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include <memory>

namespace idem {

template <auto Fn>
struct CDeleter {
  template <typename T>
  void operator()(T* p) const noexcept {
    if (p) Fn(p);
  }
};

using EventBasePtr = std::unique_ptr<event_base, CDeleter<&event_base_free>>;
using EventPtr = std::unique_ptr<event, CDeleter<&event_free>>;
using EvhttpPtr = std::unique_ptr<evhttp, CDeleter<&evhttp_free>>;
using EvbufferPtr = std::unique_ptr<evbuffer, CDeleter<&evbuffer_free>>;
using CurlPtr = std::unique_ptr<CURL, CDeleter<&curl_easy_cleanup>>;
using CurlMultiPtr = std::unique_ptr<CURLM, CDeleter<&curl_multi_cleanup>>;
using CurlSlistPtr = std::unique_ptr<curl_slist, CDeleter<&curl_slist_free_all>>;
using CJsonPtr = std::unique_ptr<cJSON, CDeleter<&cJSON_Delete>>;

// cJSON_Print* results are malloc'd.
struct FreeDeleter {
  void operator()(char* p) const noexcept { cJSON_free(p); }
};
using CJsonString = std::unique_ptr<char, FreeDeleter>;

}  // namespace idem
