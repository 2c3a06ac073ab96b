// Placeholder until the io_uring core lands: proves the build links liburing.
#include <napi.h>
#include <liburing.h>

static Napi::Value Probe(const Napi::CallbackInfo& info) {
  struct io_uring ring;
  int rc = io_uring_queue_init(4, &ring, 0);
  if (rc == 0) io_uring_queue_exit(&ring);
  return Napi::Number::New(info.Env(), rc);
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probe", Napi::Function::New(env, Probe));
  return exports;
}

NODE_API_MODULE(migbridge_uring, Init)
