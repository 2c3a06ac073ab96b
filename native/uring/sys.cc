// Synchronous syscall helpers for TypeScript: pipes, socketpairs, fcntl flags,
// ioctl and close. Each returns -errno on failure (never throws) so that the
// TypeScript side builds one typed SysError with the op and fd it knows.
#include "addon.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace migbridge {

static Napi::Value PairOrErrno(Napi::Env env, int rc, const int fds[2]) {
  if (rc < 0) return Napi::Number::New(env, -errno);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, fds[0]));
  out.Set(1u, Napi::Number::New(env, fds[1]));
  return out;
}

static Napi::Value Pipe(const Napi::CallbackInfo& info) {
  int fds[2];
  int rc = pipe2(fds, O_CLOEXEC);
  return PairOrErrno(info.Env(), rc, fds);
}

static Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int fds[2];
  int rc = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
  return PairOrErrno(info.Env(), rc, fds);
}

static Napi::Value SetPipeSize(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  int bytes = info[1].As<Napi::Number>().Int32Value();
  int rc = fcntl(fd, F_SETPIPE_SZ, bytes);
  return Napi::Number::New(info.Env(), rc < 0 ? -errno : rc);
}

static Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  bool on = info[1].As<Napi::Boolean>().Value();
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return Napi::Number::New(info.Env(), -errno);
  int next = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (next != flags && fcntl(fd, F_SETFL, next) < 0) return Napi::Number::New(info.Env(), -errno);
  return Napi::Number::New(info.Env(), 0);
}

// The ioctl argument as the kernel sees it: a pointer to caller bytes (the
// kernel may write results back into them), a plain integer, or 0.
unsigned long IoctlArg(const Napi::Value& v) {
  if (v.IsBuffer()) return reinterpret_cast<unsigned long>(v.As<Napi::Buffer<uint8_t>>().Data());
  if (v.IsNumber()) return static_cast<unsigned long>(v.As<Napi::Number>().Int64Value());
  return 0;
}

static Napi::Value IoctlSync(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  unsigned long req = static_cast<unsigned long>(info[1].As<Napi::Number>().Int64Value());
  int rc = ioctl(fd, req, IoctlArg(info[2]));
  return Napi::Number::New(info.Env(), rc < 0 ? -errno : rc);
}

static Napi::Value CloseSync(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  int rc = close(fd);
  // EINTR from close still released the fd on Linux; do not retry.
  return Napi::Number::New(info.Env(), rc < 0 && errno != EINTR ? -errno : 0);
}

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("pipe", Napi::Function::New(env, Pipe));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair));
  exports.Set("setPipeSize", Napi::Function::New(env, SetPipeSize));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking));
  exports.Set("ioctl", Napi::Function::New(env, IoctlSync));
  exports.Set("close", Napi::Function::New(env, CloseSync));
}

}  // namespace migbridge
