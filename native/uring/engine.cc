// The asynchronous I/O engine: one io_uring ring for every fd of the process
// (or, when io_uring cannot be set up, a small worker pool with the same
// surface), plus a worker pool for ioctls (io_uring has no generic ioctl op and
// VFIO implements no uring_cmd).
//
// Completion path, chosen: an eventfd registered with the ring
// (io_uring_register_eventfd) and watched by a libuv uv_poll on the JS thread.
// Why not a completion thread + ThreadSafeFunction: that costs one extra thread
// and one cross-thread hand-off (mutex + uv_async) per batch, and the thread
// would only move CQEs it could equally read in place. With the eventfd the
// kernel wakes the event loop directly, the loop drains the CQ ring in place in
// batches, and the uv_poll handle can be unref'd whenever nothing is pending so
// an idle process exits. Worker threads (ioctls, fallback I/O) post their
// results to a queue and write the same eventfd: one completion path for all.
// Measured by bench/uring.ts (completions per wakeup, enters per SQE).
//
// Submission: submit*() only prepares SQEs; TypeScript calls flush() once per
// event-loop turn, so every op queued in that turn (across all fds) goes to the
// kernel in one io_uring_enter.
//
// Results: each op yields (id, res) with res = bytes/revents/count or -errno;
// the id is chosen by TypeScript, which owns all retry/short-I/O logic.
#include "addon.h"

#include <liburing.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

namespace migbridge {
namespace {

enum Kind : uint8_t { kRead, kWrite, kReadv, kWritev, kPoll, kClose, kIoctl };
enum State : uint8_t { kIdle, kQueued, kPolling, kRunning };

constexpr uint64_t kTimeoutTag = 1ull << 32;  // user_data of a linked timeout: ignored

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

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// A small pool of threads taking op ids from a queue; threads start lazily up
// to `max` (only when every started thread is busy).
class WorkerPool {
 public:
  template <typename Fn>
  void Start(int max, Fn fn) {
    max_ = std::max(1, max);
    fn_ = fn;
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
  std::mutex* mu_ = nullptr;
  std::deque<int> queue_;

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
  std::function<void(int, std::unique_lock<std::mutex>&)> fn_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  int max_ = 1, idle_ = 0;
  bool stopping_ = false;
};

class Engine : public Napi::ObjectWrap<Engine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("info", &Engine::Info), InstanceMethod("submitRead", &Engine::SubmitRead),
                        InstanceMethod("submitWrite", &Engine::SubmitWrite),
                        InstanceMethod("submitReadv", &Engine::SubmitReadv),
                        InstanceMethod("submitWritev", &Engine::SubmitWritev),
                        InstanceMethod("submitPoll", &Engine::SubmitPoll),
                        InstanceMethod("submitClose", &Engine::SubmitClose),
                        InstanceMethod("submitCancelFd", &Engine::SubmitCancelFd),
                        InstanceMethod("submitIoctl", &Engine::SubmitIoctl), InstanceMethod("flush", &Engine::Flush),
                        InstanceMethod("stats", &Engine::Stats), InstanceMethod("destroy", &Engine::Destroy)});
  }

  // new Engine(opts, pool, bufferCount, bufferSize, completions, onComplete)
  explicit Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info), async_(info.Env(), "migbridge.io") {
    Napi::Env env = info.Env();
    Napi::Object opts = info[0].As<Napi::Object>();
    unsigned entries = opts.Get("entries").As<Napi::Number>().Uint32Value();
    maxOps_ = opts.Get("maxOps").As<Napi::Number>().Int32Value();
    bool forceThreadpool = opts.Get("forceThreadpool").As<Napi::Boolean>().Value();
    int ioWorkers = opts.Get("ioWorkers").As<Napi::Number>().Int32Value();
    int ioctlWorkers = opts.Get("ioctlWorkers").As<Napi::Number>().Int32Value();
    Napi::Buffer<uint8_t> pool = info[1].As<Napi::Buffer<uint8_t>>();
    unsigned bufferCount = info[2].As<Napi::Number>().Uint32Value();
    size_t bufferSize = info[3].As<Napi::Number>().Int64Value();
    Napi::Int32Array comp = info[4].As<Napi::Int32Array>();
    compRef_ = Napi::Persistent(comp);
    comp_ = comp.Data();
    compCap_ = comp.ElementLength() / 2;
    cb_ = Napi::Persistent(info[5].As<Napi::Function>());
    poolRef_ = Napi::Persistent(pool);
    ops_.resize(maxOps_);

    efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0) throw Napi::Error::New(env, std::string("eventfd: ") + strerror(errno));

    if (forceThreadpool) {
      reason_ = "threadpool forced (IoEngine.open force or MIGBRIDGE_IO=threadpool)";
    } else {
      io_uring_params p{};
      // CQ sized so every op plus its linked timeout fits without overflow.
      p.flags = IORING_SETUP_CQSIZE;
      p.cq_entries = std::max<unsigned>(entries * 2, unsigned(maxOps_) * 2 + 64);
      int rc = io_uring_queue_init_params(entries, &ring_, &p);
      if (rc < 0) {
        reason_ = std::string("io_uring_setup failed: ") + strerror(-rc) + " (errno " + std::to_string(-rc) +
                  "); using the worker-pool fallback";
      } else if ((rc = io_uring_register_eventfd(&ring_, efd_)) < 0) {
        io_uring_queue_exit(&ring_);
        reason_ = std::string("io_uring_register_eventfd failed: ") + strerror(-rc) + "; using the worker-pool fallback";
      } else {
        uring_ = true;
        ringEntries_ = p.sq_entries;
        std::vector<iovec> iov(bufferCount);
        for (unsigned i = 0; i < bufferCount; i++) iov[i] = {pool.Data() + i * bufferSize, bufferSize};
        rc = bufferCount ? io_uring_register_buffers(&ring_, iov.data(), bufferCount) : -EINVAL;
        fixed_ = rc == 0;
        reason_ = fixed_ ? "io_uring ready (fixed buffers registered)"
                         : std::string("io_uring ready; fixed buffers not registered (") + strerror(-rc) +
                               "), reads use plain buffers";
      }
    }
    mu_ = std::make_unique<std::mutex>();
    ioPool_.mu_ = mu_.get();
    ioctlPool_.mu_ = mu_.get();
    ioPool_.Start(ioWorkers, [this](int id, std::unique_lock<std::mutex>& lk) { RunIo(id, lk); });
    ioctlPool_.Start(ioctlWorkers, [this](int id, std::unique_lock<std::mutex>& lk) { RunIoctl(id, lk); });

    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    uv_poll_init(loop, poll_, efd_);
    poll_->data = this;
    uv_poll_start(poll_, UV_READABLE, OnReadable);
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    napi_add_env_cleanup_hook(env, CleanupHook, this);
  }

  ~Engine() override { Close(); }

 private:
  // ---- JS methods --------------------------------------------------------

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("io", uring_ ? "io_uring" : "threadpool");
    o.Set("reason", reason_);
    o.Set("ringEntries", ringEntries_);
    o.Set("fixedBuffers", fixed_);
    return o;
  }

  Op& Prepare(const Napi::CallbackInfo& info, Kind kind) {
    if (closed_) throw Napi::Error::New(info.Env(), "engine is shut down");
    int id = info[0].As<Napi::Number>().Int32Value();
    if (id < 0 || id >= maxOps_) throw Napi::RangeError::New(info.Env(), "op id out of range");
    Op& op = ops_[id];
    op.kind = kind;
    op.fd = info[1].As<Napi::Number>().Int32Value();
    op.cancelled = false;
    op.polled = false;
    op.deadlineNs = 0;
    op.offset = -1;
    return op;
  }

  static double TimeoutArg(const Napi::CallbackInfo& info, size_t i) {
    return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : 0;
  }

  void SetBuffers(Op& op, const Napi::Value& v) {
    op.iov.clear();
    if (v.IsBuffer()) {
      auto b = v.As<Napi::Buffer<uint8_t>>();
      op.iov.push_back({b.Data(), b.Length()});
      return;
    }
    Napi::Array arr = v.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      auto b = arr.Get(i).As<Napi::Buffer<uint8_t>>();
      op.iov.push_back({b.Data(), b.Length()});
    }
  }

  void SubmitRw(const Napi::CallbackInfo& info, Kind kind) {
    Op& op = Prepare(info, kind);
    SetBuffers(op, info[2]);
    op.offset = info[3].As<Napi::Number>().Int64Value();
    double timeoutMs = TimeoutArg(info, 4);
    int fixedIndex = info.Length() > 5 ? info[5].As<Napi::Number>().Int32Value() : -1;
    int id = info[0].As<Napi::Number>().Int32Value();
    pending_++;
    if (!uring_) return QueueIo(id, timeoutMs);
    io_uring_sqe* sqe = GetSqe(timeoutMs > 0 ? 2 : 1);
    uint64_t off = uint64_t(op.offset);  // -1 = current position
    switch (kind) {
      case kRead:
        if (fixed_ && fixedIndex >= 0)
          io_uring_prep_read_fixed(sqe, op.fd, op.iov[0].iov_base, op.iov[0].iov_len, off, fixedIndex);
        else
          io_uring_prep_read(sqe, op.fd, op.iov[0].iov_base, op.iov[0].iov_len, off);
        break;
      case kWrite:  // a slice of a pooled read goes back out from the same registered buffer
        if (fixed_ && fixedIndex >= 0)
          io_uring_prep_write_fixed(sqe, op.fd, op.iov[0].iov_base, op.iov[0].iov_len, off, fixedIndex);
        else
          io_uring_prep_write(sqe, op.fd, op.iov[0].iov_base, op.iov[0].iov_len, off);
        break;
      case kReadv:
        io_uring_prep_readv(sqe, op.fd, op.iov.data(), op.iov.size(), off);
        break;
      default:
        io_uring_prep_writev(sqe, op.fd, op.iov.data(), op.iov.size(), off);
        break;
    }
    // A page-cache read/write of a regular file would run inline inside
    // io_uring_enter, i.e. on the JS thread, one stream after another; punting
    // it to io-wq spreads the copies over all cores (bench: 1.0x -> ~2.4x the
    // serial C loop on tmpfs). An explicit offset is what marks a seekable fd
    // (TypeScript passes one for every file it reads or writes), so no fstat()
    // is needed per op; pipes, sockets and data_fds (offset -1) keep the
    // default path (poll-armed retry, no kernel thread while they wait).
    if (op.offset >= 0) sqe->flags |= IOSQE_ASYNC;
    Finish(sqe, id, op, timeoutMs);
  }

  void SubmitRead(const Napi::CallbackInfo& info) { SubmitRw(info, kRead); }
  void SubmitWrite(const Napi::CallbackInfo& info) { SubmitRw(info, kWrite); }
  void SubmitReadv(const Napi::CallbackInfo& info) { SubmitRw(info, kReadv); }
  void SubmitWritev(const Napi::CallbackInfo& info) { SubmitRw(info, kWritev); }

  // submitPoll(id, fd, events, timeoutMs)
  void SubmitPoll(const Napi::CallbackInfo& info) {
    Op& op = Prepare(info, kPoll);
    op.events = info[2].As<Napi::Number>().Int32Value();
    double timeoutMs = TimeoutArg(info, 3);
    int id = info[0].As<Napi::Number>().Int32Value();
    pending_++;
    if (!uring_) return QueueIo(id, timeoutMs);
    io_uring_sqe* sqe = GetSqe(timeoutMs > 0 ? 2 : 1);
    io_uring_prep_poll_add(sqe, op.fd, op.events);
    Finish(sqe, id, op, timeoutMs);
  }

  void SubmitClose(const Napi::CallbackInfo& info) {
    Op& op = Prepare(info, kClose);
    int id = info[0].As<Napi::Number>().Int32Value();
    pending_++;
    if (!uring_) return QueueIo(id, 0);
    io_uring_sqe* sqe = GetSqe(1);
    io_uring_prep_close(sqe, op.fd);
    Finish(sqe, id, op, 0);
  }

  // Cancels every pending op on fd; completes with the number cancelled.
  void SubmitCancelFd(const Napi::CallbackInfo& info) {
    Op& op = Prepare(info, kClose);
    int id = info[0].As<Napi::Number>().Int32Value();
    int fd = op.fd;
    op.fd = -1;
    pending_++;
    if (uring_) {
      io_uring_sqe* sqe = GetSqe(1);
      io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, uint64_t(id));
      return;
    }
    int count = 0;
    {
      std::lock_guard<std::mutex> g(*mu_);
      for (Op& o : ops_)
        if (o.fd == fd && (o.state == kQueued || o.state == kPolling) && o.kind != kIoctl && !o.cancelled) {
          o.cancelled = true;
          count++;
        }
      done_.push_back({id, count});
    }
    WakePoller();
    Signal();
  }

  // submitIoctl(id, fd, request, arg): always on the ioctl worker pool.
  void SubmitIoctl(const Napi::CallbackInfo& info) {
    Op& op = Prepare(info, kIoctl);
    op.request = static_cast<unsigned long>(info[2].As<Napi::Number>().Int64Value());
    op.arg = IoctlArg(info[3]);
    int id = info[0].As<Napi::Number>().Int32Value();
    pending_++;
    std::lock_guard<std::mutex> g(*mu_);
    op.state = kQueued;
    ioctlPool_.PushLocked(id);
    UpdateRefLocked();
  }

  Napi::Value Flush(const Napi::CallbackInfo& info) {
    int n = uring_ && !closed_ ? Submit() : 0;
    UpdateRef();
    return Napi::Number::New(info.Env(), n);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("enters", double(enters_));
    o.Set("sqes", double(sqes_));
    o.Set("wakeups", double(wakeups_));
    o.Set("completions", double(completions_));
    o.Set("maxBatch", double(maxBatch_));
    return o;
  }

  void Destroy(const Napi::CallbackInfo&) { Close(); }

  // ---- io_uring ----------------------------------------------------------

  io_uring_sqe* GetSqe(unsigned need) {
    if (io_uring_sq_space_left(&ring_) < need) Submit();
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {  // the kernel did not take everything; block until it does
      Submit();
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  void Finish(io_uring_sqe* sqe, int id, Op& op, double timeoutMs) {
    io_uring_sqe_set_data64(sqe, uint64_t(id));
    if (timeoutMs <= 0) return;
    sqe->flags |= IOSQE_IO_LINK;
    int64_t ns = int64_t(timeoutMs * 1e6);
    op.ts.tv_sec = ns / 1000000000;
    op.ts.tv_nsec = ns % 1000000000;
    io_uring_sqe* t = io_uring_get_sqe(&ring_);  // GetSqe reserved room for it
    io_uring_prep_link_timeout(t, &op.ts, 0);
    io_uring_sqe_set_data64(t, kTimeoutTag | uint64_t(id));
  }

  int Submit() {
    unsigned ready = io_uring_sq_ready(&ring_);
    if (ready == 0) return 0;
    int rc;
    do rc = io_uring_submit(&ring_);
    while (rc == -EINTR || rc == -EAGAIN);
    if (rc > 0) {
      enters_++;
      sqes_ += rc;
    }
    return rc;
  }

  // ---- fallback: worker pool + one poller thread -------------------------

  void QueueIo(int id, double timeoutMs) {
    Op& op = ops_[id];
    if (timeoutMs > 0) op.deadlineNs = NowNs() + int64_t(timeoutMs * 1e6);
    std::lock_guard<std::mutex> g(*mu_);
    if (op.kind == kPoll) {
      ToPollerLocked(id);
    } else {
      op.state = kQueued;
      ioPool_.PushLocked(id);
    }
    UpdateRefLocked();
  }

  void ToPollerLocked(int id) {
    ops_[id].state = kPolling;
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
    Op& op = ops_[id];
    if (op.cancelled) return CompleteLocked(id, -ECANCELED);
    if (op.deadlineNs && NowNs() >= op.deadlineNs) return CompleteLocked(id, -ETIME);
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
        // Streams: try without blocking; wait in the poller when not ready so a
        // worker is never parked on a pipe and cancel/timeout stay possible.
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
      if (op.cancelled) return CompleteLocked(id, -ECANCELED);
      return ToPollerLocked(id);
    }
    CompleteLocked(id, res);
  }

  void RunIoctl(int id, std::unique_lock<std::mutex>& lk) {
    Op& op = ops_[id];
    op.state = kRunning;
    lk.unlock();
    int rc = ioctl(op.fd, op.request, op.arg);
    int res = rc < 0 ? -errno : rc;
    lk.lock();
    CompleteLocked(id, res);
  }

  void PollerLoop() {
    std::vector<pollfd> pfds;
    std::vector<int> ids;
    std::unique_lock<std::mutex> lk(*mu_);
    while (!stopping_) {
      pfds.assign(1, pollfd{pollWake_, POLLIN, 0});
      ids.assign(1, -1);
      int64_t now = NowNs(), next = -1;
      for (size_t i = 0; i < polling_.size();) {
        int id = polling_[i];
        Op& op = ops_[id];
        if (op.cancelled || (op.deadlineNs && now >= op.deadlineNs)) {
          polling_[i] = polling_.back();
          polling_.pop_back();
          CompleteLocked(id, op.cancelled ? -ECANCELED : (op.kind == kPoll ? 0 : -ETIME));
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
        Op& op = ops_[id];
        auto it = std::find(polling_.begin(), polling_.end(), id);
        if (it == polling_.end() || op.state != kPolling) continue;
        *it = polling_.back();
        polling_.pop_back();
        if (op.cancelled) {
          CompleteLocked(id, -ECANCELED);
        } else if (op.kind == kPoll) {
          CompleteLocked(id, pfds[i].revents & POLLNVAL ? -EBADF : pfds[i].revents);
        } else if (pfds[i].revents & POLLNVAL) {
          CompleteLocked(id, -EBADF);
        } else {
          op.polled = true;
          op.state = kQueued;
          ioPool_.PushLocked(id);
        }
      }
    }
  }

  void CompleteLocked(int id, int res) {
    ops_[id].state = kIdle;
    done_.push_back({id, res});
    Signal();
  }

  void Signal() {
    uint64_t one = 1;
    (void)!write(efd_, &one, 8);
  }

  // ---- completion delivery on the JS thread --------------------------------

  static void OnReadable(uv_poll_t* h, int, int) { static_cast<Engine*>(h->data)->Drain(); }

  void Drain() {
    uint64_t v;
    (void)!read(efd_, &v, 8);
    wakeups_++;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    while (!closed_) {
      size_t n = 0;
      if (uring_) {
        io_uring_cqe* cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring_, head, cqe) {
          if (n == compCap_) break;
          seen++;
          if (cqe->user_data & kTimeoutTag) continue;
          comp_[2 * n] = int32_t(cqe->user_data);
          comp_[2 * n + 1] = cqe->res;
          n++;
        }
        io_uring_cq_advance(&ring_, seen);
      }
      {
        std::lock_guard<std::mutex> g(*mu_);
        while (n < compCap_ && !done_.empty()) {
          comp_[2 * n] = done_.front().first;
          comp_[2 * n + 1] = done_.front().second;
          done_.pop_front();
          n++;
        }
      }
      if (n == 0) break;
      pending_ -= n;
      completions_ += n;
      maxBatch_ = std::max<uint64_t>(maxBatch_, n);
      try {
        cb_.MakeCallback(env.Global(), {Napi::Number::New(env, double(n))}, async_);
      } catch (const Napi::Error& e) {
        napi_fatal_exception(env, e.Value());
        break;
      }
    }
    if (!closed_) {
      if (uring_) Submit();  // ops queued by the callbacks go out now
      UpdateRef();
    }
  }

  // The event loop stays alive only while ops are pending.
  void UpdateRefLocked() {
    if (!poll_) return;
    uv_handle_t* h = reinterpret_cast<uv_handle_t*>(poll_);
    if (pending_ > 0)
      uv_ref(h);
    else
      uv_unref(h);
  }
  void UpdateRef() { UpdateRefLocked(); }

  static void CleanupHook(void* arg) { static_cast<Engine*>(arg)->Close(); }

  // Stops threads, tears down the ring (the kernel cancels what is left) and
  // releases the eventfd and the poll handle. Idempotent.
  void Close() {
    if (closed_) return;
    closed_ = true;
    napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
    if (uring_) io_uring_queue_exit(&ring_);
    {
      std::lock_guard<std::mutex> g(*mu_);
      stopping_ = true;
      for (Op& o : ops_) o.cancelled = true;
    }
    WakePoller();
    ioPool_.Stop();
    ioctlPool_.Stop();
    if (poller_.joinable()) poller_.join();
    if (pollWake_ >= 0) close(pollWake_);
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    close(efd_);
    cb_.Reset();
    compRef_.Reset();
    poolRef_.Reset();
  }

  io_uring ring_{};
  bool uring_ = false, fixed_ = false, closed_ = false, stopping_ = false;
  unsigned ringEntries_ = 0;
  std::string reason_;
  int maxOps_ = 0;
  std::vector<Op> ops_;
  int efd_ = -1, pollWake_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::AsyncContext async_;
  Napi::FunctionReference cb_;
  Napi::Reference<Napi::Int32Array> compRef_;
  Napi::Reference<Napi::Buffer<uint8_t>> poolRef_;
  int32_t* comp_ = nullptr;
  size_t compCap_ = 0;
  int64_t pending_ = 0;
  std::unique_ptr<std::mutex> mu_;
  WorkerPool ioPool_, ioctlPool_;
  std::thread poller_;
  std::vector<int> polling_;
  std::deque<std::pair<int, int>> done_;
  uint64_t enters_ = 0, sqes_ = 0, wakeups_ = 0, completions_ = 0, maxBatch_ = 0;
};

}  // namespace

void InitEngine(Napi::Env env, Napi::Object exports) { exports.Set("Engine", Engine::Define(env)); }

}  // namespace migbridge
