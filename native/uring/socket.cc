// What an inherited fd is, for `fd:N` endpoints: Node can tell a socket from a pipe (fstat)
// but not whether a socket is a stream, or listening or connected. Returns
// [family, type, listening, nodelay] or -errno (ENOTSOCK for a pipe or file, EBADF when not
// open); nodelay (TCP_NODELAY) is false on a non-TCP socket.
#include "addon.h"

#include <cerrno>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace migbridge {

static int IntOption(int fd, int name, int* out, int level = SOL_SOCKET) {
  socklen_t len = sizeof(*out);
  return getsockopt(fd, level, name, out, &len);
}

static Napi::Value SocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int family = 0, type = 0, listening = 0;
  if (IntOption(fd, SO_DOMAIN, &family) < 0 || IntOption(fd, SO_TYPE, &type) < 0 ||
      IntOption(fd, SO_ACCEPTCONN, &listening) < 0) {
    return Napi::Number::New(env, -errno);
  }
  int nodelay = 0;
  bool tcp = (family == AF_INET || family == AF_INET6) && type == SOCK_STREAM;
  if (tcp && IntOption(fd, TCP_NODELAY, &nodelay, IPPROTO_TCP) < 0) return Napi::Number::New(env, -errno);
  Napi::Array out = Napi::Array::New(env, 4);
  out.Set(0u, Napi::Number::New(env, family));
  out.Set(1u, Napi::Number::New(env, type));
  out.Set(2u, Napi::Boolean::New(env, listening != 0));
  out.Set(3u, Napi::Boolean::New(env, nodelay != 0));
  return out;
}

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo));
}

}  // namespace migbridge
