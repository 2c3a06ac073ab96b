// The fallback backend, for kernels or sandboxes without io_uring: a few worker threads
// do the syscalls, and one poller thread waits for pipes and sockets that are not ready,
// so a worker is never parked on a stream and cancel/timeout stay possible. Results go
// through the shared Completions queue and eventfd, like the ioctl workers'.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <cerrno>

#include "backend.h"

namespace migbridge {
namespace {

class PoolBackend final : public IoBackend {
 public:
  PoolBackend(Completions& c, int workers) : c_(c) {
    pool_.Start(&c_.mu, workers, [this](int id, std::unique_lock<std::mutex>& lk) { RunIo(id, lk); });
  }

  const char* Name() const override { return "threadpool"; }

  void SubmitRw(int id, int, double timeoutMs) override { Queue(id, timeoutMs); }
  void SubmitPoll(int id, double timeoutMs) override { Queue(id, timeoutMs); }
  void SubmitClose(int id) override { Queue(id, 0); }

  void SubmitCancelFd(int id, int fd) override {
    {
      std::lock_guard<std::mutex> g(c_.mu);
      int count = 0;
      for (Op& o : c_.ops)
        if (o.fd == fd && (o.state == kQueued || o.state == kPolling) && o.kind != kIoctl && !o.cancelled) {
          o.cancelled = true;
          count++;
        }
      c_.done.push_back({id, count});
    }
    WakePoller();
    c_.Signal();
  }

  int Flush() override { return 0; }
  size_t Reap(int32_t*, size_t) override { return 0; }

  void Stop() override {
    {
      std::lock_guard<std::mutex> g(c_.mu);
      if (stopping_) return;
      stopping_ = true;
    }
    WakePoller();
    pool_.Stop();
    if (poller_.joinable()) poller_.join();
    if (pollWake_ >= 0) close(pollWake_);
  }

 private:
  void Queue(int id, double timeoutMs) {
    Op& op = c_.ops[id];
    if (timeoutMs > 0) op.deadlineNs = NowNs() + int64_t(timeoutMs * 1e6);
    std::lock_guard<std::mutex> g(c_.mu);
    if (op.kind == kPoll) {
      ToPollerLocked(id);
    } else {
      op.state = kQueued;
      pool_.PushLocked(id);
    }
  }

  void ToPollerLocked(int id) {
    c_.ops[id].state = kPolling;
    polling_.push_back(id);
    if (!poller_.joinable()) {
      pollWake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      poller_ = std::thread([this] { PollerLoop(); });
    }
    WakePoller();
  }

  void WakePoller() {
    if (pollWake_ >= 0) {
      uint64_t one = 1;
      (void)!write(pollWake_, &one, 8);
    }
  }

  // Called by a worker with mu held; does the syscall with mu released.
  void RunIo(int id, std::unique_lock<std::mutex>& lk) {
    Op& op = c_.ops[id];
    if (op.cancelled) return c_.CompleteLocked(id, -ECANCELED);
    if (op.deadlineNs && NowNs() >= op.deadlineNs) return c_.CompleteLocked(id, -ETIME);
    op.state = kRunning;
    lk.unlock();
    int res = 0;
    bool wait = false;
    if (op.kind == kClose) {
      res = close(op.fd) < 0 && errno != EINTR ? -errno : 0;
    } else {
      bool isWrite = op.kind == kWrite || op.kind == kWritev;
      struct stat st;
      bool seekable = op.offset >= 0 || (fstat(op.fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)));
      ssize_t r;
      int cnt = int(op.iov.size());
      if (seekable) {  // files: no readiness to wait for; readv/writev move the position
        if (op.offset >= 0)
          r = isWrite ? pwritev(op.fd, op.iov.data(), cnt, op.offset) : preadv(op.fd, op.iov.data(), cnt, op.offset);
        else
          r = isWrite ? writev(op.fd, op.iov.data(), cnt) : readv(op.fd, op.iov.data(), cnt);
      } else {
        // Streams: try without blocking; wait in the poller when not ready.
        r = isWrite ? pwritev2(op.fd, op.iov.data(), cnt, -1, RWF_NOWAIT) : preadv2(op.fd, op.iov.data(), cnt, -1, RWF_NOWAIT);
        if (r < 0 && errno == EOPNOTSUPP) {
          if (op.polled)
            r = isWrite ? writev(op.fd, op.iov.data(), cnt) : readv(op.fd, op.iov.data(), cnt);
          else
            errno = EAGAIN;
        }
      }
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !seekable) wait = true;
      res = r < 0 ? -errno : int(r);
    }
    lk.lock();
    if (wait) {
      op.events = (op.kind == kWrite || op.kind == kWritev) ? POLLOUT : POLLIN;
      if (op.cancelled) return c_.CompleteLocked(id, -ECANCELED);
      return ToPollerLocked(id);
    }
    c_.CompleteLocked(id, res);
  }

  void PollerLoop() {
    std::vector<pollfd> pfds;
    std::vector<int> ids;
    std::unique_lock<std::mutex> lk(c_.mu);
    while (!stopping_) {
      pfds.assign(1, pollfd{pollWake_, POLLIN, 0});
      ids.assign(1, -1);
      int64_t now = NowNs(), next = -1;
      for (size_t i = 0; i < polling_.size();) {
        int id = polling_[i];
        Op& op = c_.ops[id];
        if (op.cancelled || (op.deadlineNs && now >= op.deadlineNs)) {
          polling_[i] = polling_.back();
          polling_.pop_back();
          c_.CompleteLocked(id, op.cancelled ? -ECANCELED : (op.kind == kPoll ? 0 : -ETIME));
          continue;
        }
        if (op.deadlineNs && (next < 0 || op.deadlineNs < next)) next = op.deadlineNs;
        pfds.push_back(pollfd{op.fd, short(op.events), 0});
        ids.push_back(id);
        i++;
      }
      int timeoutMs = next < 0 ? -1 : int((next - now + 999999) / 1000000);
      lk.unlock();
      int n = poll(pfds.data(), pfds.size(), timeoutMs);
      if (pfds[0].revents) {
        uint64_t v;
        (void)!read(pollWake_, &v, 8);
      }
      lk.lock();
      if (n <= 0) continue;
      for (size_t i = 1; i < pfds.size(); i++) {
        if (!pfds[i].revents) continue;
        int id = ids[i];
        Op& op = c_.ops[id];
        auto it = std::find(polling_.begin(), polling_.end(), id);
        if (it == polling_.end() || op.state != kPolling) continue;
        *it = polling_.back();
        polling_.pop_back();
        if (op.cancelled) {
          c_.CompleteLocked(id, -ECANCELED);
        } else if (op.kind == kPoll) {
          c_.CompleteLocked(id, pfds[i].revents & POLLNVAL ? -EBADF : pfds[i].revents);
        } else if (pfds[i].revents & POLLNVAL) {
          c_.CompleteLocked(id, -EBADF);
        } else {
          op.polled = true;
          op.state = kQueued;
          pool_.PushLocked(id);
        }
      }
    }
  }

  Completions& c_;
  WorkerPool pool_;
  std::thread poller_;
  std::vector<int> polling_;
  int pollWake_ = -1;
  bool stopping_ = false;  // guarded by c_.mu
};

}  // namespace

std::unique_ptr<IoBackend> MakePoolBackend(Completions& c, int workers) { return std::make_unique<PoolBackend>(c, workers); }

}  // namespace migbridge
