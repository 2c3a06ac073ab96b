// The asynchronous I/O engine's N-API facade: the op table, the completion path and the
// ioctl worker pool (io_uring has no generic ioctl op and VFIO implements no uring_cmd),
// over one data I/O backend chosen at construction (backend.h): the io_uring ring, or,
// when io_uring cannot be set up, a small worker pool with the same surface.
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
#include "backend.h"

#include <uv.h>

#include <cerrno>
#include <cstring>

#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>

namespace migbridge {

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

namespace {

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
    c_ = std::make_unique<Completions>(maxOps_);

    c_->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c_->efd < 0) throw Napi::Error::New(env, std::string("eventfd: ") + strerror(errno));

    if (forceThreadpool)
      reason_ = "threadpool forced (IoEngine.open force or MIGBRIDGE_IO=threadpool)";
    else
      io_ = MakeUringBackend(*c_, entries, maxOps_, pool.Data(), bufferCount, bufferSize, reason_);
    if (!io_) io_ = MakePoolBackend(*c_, ioWorkers);
    ioctlPool_.Start(&c_->mu, ioctlWorkers, [this](int id, std::unique_lock<std::mutex>& lk) { RunIoctl(id, lk); });

    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    uv_poll_init(loop, poll_, c_->efd);
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
    o.Set("io", io_->Name());
    o.Set("reason", reason_);
    o.Set("ringEntries", io_->RingEntries());
    o.Set("fixedBuffers", io_->FixedBuffers());
    return o;
  }

  int Prepare(const Napi::CallbackInfo& info, Kind kind) {
    if (closed_) throw Napi::Error::New(info.Env(), "engine is shut down");
    int id = info[0].As<Napi::Number>().Int32Value();
    if (id < 0 || id >= maxOps_) throw Napi::RangeError::New(info.Env(), "op id out of range");
    Op& op = c_->ops[id];
    op.kind = kind;
    op.fd = info[1].As<Napi::Number>().Int32Value();
    op.cancelled = false;
    op.polled = false;
    op.deadlineNs = 0;
    op.offset = -1;
    return id;
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

  // submitRead/Write/Readv/Writev(id, fd, buffers, offset, timeoutMs, fixedIndex)
  void SubmitRw(const Napi::CallbackInfo& info, Kind kind) {
    int id = Prepare(info, kind);
    Op& op = c_->ops[id];
    SetBuffers(op, info[2]);
    op.offset = info[3].As<Napi::Number>().Int64Value();
    double timeoutMs = TimeoutArg(info, 4);
    int fixedIndex = info.Length() > 5 ? info[5].As<Napi::Number>().Int32Value() : -1;
    pending_++;
    io_->SubmitRw(id, fixedIndex, timeoutMs);
    UpdateRef();
  }

  void SubmitRead(const Napi::CallbackInfo& info) { SubmitRw(info, kRead); }
  void SubmitWrite(const Napi::CallbackInfo& info) { SubmitRw(info, kWrite); }
  void SubmitReadv(const Napi::CallbackInfo& info) { SubmitRw(info, kReadv); }
  void SubmitWritev(const Napi::CallbackInfo& info) { SubmitRw(info, kWritev); }

  // submitPoll(id, fd, events, timeoutMs)
  void SubmitPoll(const Napi::CallbackInfo& info) {
    int id = Prepare(info, kPoll);
    c_->ops[id].events = info[2].As<Napi::Number>().Int32Value();
    pending_++;
    io_->SubmitPoll(id, TimeoutArg(info, 3));
    UpdateRef();
  }

  void SubmitClose(const Napi::CallbackInfo& info) {
    int id = Prepare(info, kClose);
    pending_++;
    io_->SubmitClose(id);
    UpdateRef();
  }

  // Cancels every pending op on fd; completes with the number cancelled.
  void SubmitCancelFd(const Napi::CallbackInfo& info) {
    int id = Prepare(info, kClose);
    Op& op = c_->ops[id];
    int fd = op.fd;
    op.fd = -1;
    pending_++;
    io_->SubmitCancelFd(id, fd);
    UpdateRef();
  }

  // submitIoctl(id, fd, request, arg): always on the ioctl worker pool.
  void SubmitIoctl(const Napi::CallbackInfo& info) {
    int id = Prepare(info, kIoctl);
    Op& op = c_->ops[id];
    op.request = static_cast<unsigned long>(info[2].As<Napi::Number>().Int64Value());
    op.arg = IoctlArg(info[3]);
    pending_++;
    {
      std::lock_guard<std::mutex> g(c_->mu);
      op.state = kQueued;
      ioctlPool_.PushLocked(id);
    }
    UpdateRef();
  }

  Napi::Value Flush(const Napi::CallbackInfo& info) {
    int n = closed_ ? 0 : io_->Flush();
    UpdateRef();
    return Napi::Number::New(info.Env(), n);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("enters", double(io_->Enters()));
    o.Set("sqes", double(io_->Sqes()));
    o.Set("wakeups", double(wakeups_));
    o.Set("completions", double(completions_));
    o.Set("maxBatch", double(maxBatch_));
    return o;
  }

  void Destroy(const Napi::CallbackInfo&) { Close(); }

  void RunIoctl(int id, std::unique_lock<std::mutex>& lk) {
    Op& op = c_->ops[id];
    op.state = kRunning;
    lk.unlock();
    int rc = ioctl(op.fd, op.request, op.arg);
    int res = rc < 0 ? -errno : rc;
    lk.lock();
    c_->CompleteLocked(id, res);
  }

  // ---- completion delivery on the JS thread --------------------------------

  static void OnReadable(uv_poll_t* h, int, int) { static_cast<Engine*>(h->data)->Drain(); }

  void Drain() {
    uint64_t v;
    (void)!read(c_->efd, &v, 8);
    wakeups_++;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    while (!closed_) {
      size_t n = io_->Reap(comp_, compCap_);
      {
        std::lock_guard<std::mutex> g(c_->mu);
        while (n < compCap_ && !c_->done.empty()) {
          comp_[2 * n] = c_->done.front().first;
          comp_[2 * n + 1] = c_->done.front().second;
          c_->done.pop_front();
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
      io_->Flush();  // ops queued by the callbacks go out now
      UpdateRef();
    }
  }

  // The event loop stays alive only while ops are pending (JS thread only).
  void UpdateRef() {
    if (!poll_) return;
    uv_handle_t* h = reinterpret_cast<uv_handle_t*>(poll_);
    if (pending_ > 0)
      uv_ref(h);
    else
      uv_unref(h);
  }

  static void CleanupHook(void* arg) { static_cast<Engine*>(arg)->Close(); }

  // Marks everything cancelled, stops the backend (the kernel or its threads end what is
  // left) and the ioctl threads, and releases the eventfd and the poll handle. Idempotent.
  void Close() {
    if (closed_) return;
    closed_ = true;
    napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
    {
      std::lock_guard<std::mutex> g(c_->mu);
      for (Op& o : c_->ops) o.cancelled = true;
    }
    io_->Stop();
    ioctlPool_.Stop();
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    close(c_->efd);
    cb_.Reset();
    compRef_.Reset();
    poolRef_.Reset();
  }

  std::unique_ptr<Completions> c_;
  std::unique_ptr<IoBackend> io_;
  WorkerPool ioctlPool_;
  bool closed_ = false;
  std::string reason_;
  int maxOps_ = 0;
  uv_poll_t* poll_ = nullptr;
  Napi::AsyncContext async_;
  Napi::FunctionReference cb_;
  Napi::Reference<Napi::Int32Array> compRef_;
  Napi::Reference<Napi::Buffer<uint8_t>> poolRef_;
  int32_t* comp_ = nullptr;
  size_t compCap_ = 0;
  int64_t pending_ = 0;
  uint64_t wakeups_ = 0, completions_ = 0, maxBatch_ = 0;
};

}  // namespace

void InitEngine(Napi::Env env, Napi::Object exports) { exports.Set("Engine", Engine::Define(env)); }

}  // namespace migbridge
