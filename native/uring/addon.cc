// migbridge native addon entry: synchronous syscall helpers (sys.cc), socket queries
// (socket.cc), the asynchronous I/O engine (engine.cc) and fd passing over unix sockets
// (fdpass.cc). I/O and ioctls only; all logic is in TS.
#include "addon.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  migbridge::InitSys(env, exports);
  migbridge::InitSocket(env, exports);
  migbridge::InitEngine(env, exports);
  migbridge::InitFdPass(env, exports);
  return exports;
}

NODE_API_MODULE(migbridge_uring, Init)
