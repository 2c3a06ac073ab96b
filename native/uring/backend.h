// The two ways the engine does data I/O, behind one interface: an io_uring ring
// (uring_backend.cc) and, where io_uring cannot be set up, a small worker pool with a
// poller thread (pool_backend.cc). The N-API facade (engine.cc) owns the op table and
// the completion path they share, picks a backend once, and never asks which one it has
// on the hot path.
#pragma once

#include <linux/time_types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace migbridge {

enum Kind : uint8_t { kRead, kWrite, kReadv, kWritev, kPoll, kClose, kIoctl };
enum State : uint8_t { kIdle, kQueued, kPolling, kRunning };

// One preallocated slot per op id (TigerBeetle style: no allocation per op).
struct Op {
  Kind kind = kRead;
  State state = kIdle;
  bool cancelled = false;
  bool polled = false;
  int fd = -1;
  int events = 0;
  int64_t offset = -1;  // -1: the fd's current position (stream)
  std::vector<iovec> iov;
  unsigned long request = 0, arg = 0;
  __kernel_timespec ts{};
  int64_t deadlineNs = 0;  // threadpool: 0 = none
};

int64_t NowNs();

// What the facade and the backends share: the op table, and the one completion path of
// every thread that is not the ring (ioctl workers, fallback I/O): a queue of (id, res)
// plus the eventfd the JS thread's event loop watches.
struct Completions {
  explicit Completions(int maxOps) : ops(maxOps) {}
  std::vector<Op> ops;
  std::mutex mu;
  std::deque<std::pair<int, int>> done;
  int efd = -1;

  void Signal() {
    uint64_t one = 1;
    (void)!write(efd, &one, 8);
  }
  // Caller holds mu.
  void CompleteLocked(int id, int res) {
    ops[id].state = kIdle;
    done.push_back({id, res});
    Signal();
  }
};

// A small pool of threads taking op ids from a queue; threads start lazily up to `max`
// (only when every started thread is busy).
class WorkerPool {
 public:
  void Start(std::mutex* mu, int max, std::function<void(int, std::unique_lock<std::mutex>&)> fn) {
    mu_ = mu;
    max_ = std::max(1, max);
    fn_ = std::move(fn);
  }
  // Caller holds mu.
  void PushLocked(int id) {
    queue_.push_back(id);
    if (idle_ == 0 && int(threads_.size()) < max_) threads_.emplace_back([this] { Loop(); });
    cv_.notify_one();
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> g(*mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lk(*mu_);
    for (;;) {
      idle_++;
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      idle_--;
      if (stopping_) return;
      int id = queue_.front();
      queue_.pop_front();
      fn_(id, lk);
    }
  }
  std::mutex* mu_ = nullptr;
  std::deque<int> queue_;
  std::function<void(int, std::unique_lock<std::mutex>&)> fn_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  int max_ = 1, idle_ = 0;
  bool stopping_ = false;
};

// Data I/O of one backend. The facade fills ops[id] (kind, fd, iov, offset, events)
// before each Submit*; every op completes exactly once, with res = bytes/revents/count
// or -errno, through Reap() or the shared Completions queue. Called on the JS thread only.
class IoBackend {
 public:
  virtual ~IoBackend() = default;
  virtual const char* Name() const = 0;
  // read/write/readv/writev; fixedIndex >= 0: the buffer lies in that registered pool buffer.
  virtual void SubmitRw(int id, int fixedIndex, double timeoutMs) = 0;
  virtual void SubmitPoll(int id, double timeoutMs) = 0;
  virtual void SubmitClose(int id) = 0;
  // Cancels every pending op on fd; op `id` completes with the number cancelled.
  virtual void SubmitCancelFd(int id, int fd) = 0;
  // Hands everything prepared to the kernel (one io_uring_enter); the count or -errno.
  virtual int Flush() = 0;
  // Moves up to cap finished (id, res) pairs of the backend's own queue into out.
  virtual size_t Reap(int32_t* out, size_t cap) = 0;
  // Ends everything in flight (the kernel or the threads cancel it) and joins threads. Once.
  virtual void Stop() = 0;
  virtual unsigned RingEntries() const { return 0; }
  virtual bool FixedBuffers() const { return false; }
  virtual uint64_t Enters() const { return 0; }
  virtual uint64_t Sqes() const { return 0; }
};

// The ring, or nullptr with `reason` saying why not (then the facade falls back).
std::unique_ptr<IoBackend> MakeUringBackend(Completions& c, unsigned entries, int maxOps, uint8_t* pool,
                                            unsigned bufferCount, size_t bufferSize, std::string& reason);
std::unique_ptr<IoBackend> MakePoolBackend(Completions& c, int workers);

}  // namespace migbridge
