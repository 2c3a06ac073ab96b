// migbridge native addon entry: synchronous syscall helpers (sys.cc) and the
// asynchronous I/O engine (engine.cc). I/O and ioctls only; all logic is in TS.
#include "addon.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  migbridge::InitSys(env, exports);
  migbridge::InitSocket(env, exports);
  migbridge::InitEngine(env, exports);
  return exports;
}

NODE_API_MODULE(migbridge_uring, Init)
