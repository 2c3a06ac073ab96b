// Passing a file descriptor to a peer over a unix socket (SCM_RIGHTS), as QEMU's QMP
// `getfd` and `add-fd` expect it: the fd rides on the bytes of the command that names it.
// I/O only; the TypeScript side (src/native/fdpass.ts) decides what to send and when.
#include "addon.h"

#include <cerrno>
#include <cstring>
#include <sys/socket.h>
#include <sys/uio.h>

namespace migbridge {

// sendWithFd(socketFd, bytes, fd): one sendmsg of `bytes` carrying `fd` as SCM_RIGHTS.
// Returns the bytes sent (the fd went with the first of them) or -errno. Non-blocking
// sockets may send fewer bytes than given; the caller writes the rest without the fd.
static Napi::Value SendWithFd(const Napi::CallbackInfo& info) {
  int sock = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> bytes = info[1].As<Napi::Buffer<uint8_t>>();
  int fd = info[2].As<Napi::Number>().Int32Value();
  if (bytes.Length() == 0) return Napi::Number::New(info.Env(), -EINVAL);  // the fd needs a byte to ride on

  struct iovec iov;
  iov.iov_base = bytes.Data();
  iov.iov_len = bytes.Length();
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  std::memset(control, 0, sizeof(control));
  struct msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));

  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return Napi::Number::New(info.Env(), n < 0 ? -errno : static_cast<double>(n));
}

void InitFdPass(Napi::Env env, Napi::Object exports) {
  exports.Set("sendWithFd", Napi::Function::New(env, SendWithFd));
}

}  // namespace migbridge
