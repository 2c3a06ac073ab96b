// Shared declarations of the migbridge native addon (I/O and ioctls only).
#pragma once
#include <napi.h>

namespace migbridge {
void InitSys(Napi::Env env, Napi::Object exports);
void InitSocket(Napi::Env env, Napi::Object exports);
void InitEngine(Napi::Env env, Napi::Object exports);
void InitFdPass(Napi::Env env, Napi::Object exports);
unsigned long IoctlArg(const Napi::Value& v);
}  // namespace migbridge
