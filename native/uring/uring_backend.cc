// The io_uring backend: one ring for every fd of the process, its completions signalled
// on the facade's eventfd (io_uring_register_eventfd) and reaped in place, in batches,
// on the JS thread. Submission only prepares SQEs; Flush() sends all of them with one
// io_uring_enter per event-loop turn.
#include <liburing.h>

#include <cerrno>
#include <cstring>

#include "backend.h"

namespace migbridge {
namespace {

constexpr uint64_t kTimeoutTag = 1ull << 32;  // user_data of a linked timeout: ignored

class UringBackend final : public IoBackend {
 public:
  explicit UringBackend(Completions& c) : c_(c) {}

  // False (and the ring torn down) when the ring or its eventfd cannot be set up.
  bool Init(unsigned entries, int maxOps, uint8_t* pool, unsigned bufferCount, size_t bufferSize, std::string& reason) {
    io_uring_params p{};
    // CQ sized so every op plus its linked timeout fits without overflow.
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = std::max<unsigned>(entries * 2, unsigned(maxOps) * 2 + 64);
    int rc = io_uring_queue_init_params(entries, &ring_, &p);
    if (rc < 0) {
      reason = std::string("io_uring_setup failed: ") + strerror(-rc) + " (errno " + std::to_string(-rc) +
               "); using the worker-pool fallback";
      return false;
    }
    if ((rc = io_uring_register_eventfd(&ring_, c_.efd)) < 0) {
      io_uring_queue_exit(&ring_);
      reason = std::string("io_uring_register_eventfd failed: ") + strerror(-rc) + "; using the worker-pool fallback";
      return false;
    }
    entries_ = p.sq_entries;
    std::vector<iovec> iov(bufferCount);
    for (unsigned i = 0; i < bufferCount; i++) iov[i] = {pool + i * bufferSize, bufferSize};
    rc = bufferCount ? io_uring_register_buffers(&ring_, iov.data(), bufferCount) : -EINVAL;
    fixed_ = rc == 0;
    reason = fixed_ ? "io_uring ready (fixed buffers registered)"
                    : std::string("io_uring ready; fixed buffers not registered (") + strerror(-rc) +
                          "), reads use plain buffers";
    return true;
  }

  const char* Name() const override { return "io_uring"; }
  unsigned RingEntries() const override { return entries_; }
  bool FixedBuffers() const override { return fixed_; }
  uint64_t Enters() const override { return enters_; }
  uint64_t Sqes() const override { return sqes_; }

  void SubmitRw(int id, int fixedIndex, double timeoutMs) override {
    Op& op = c_.ops[id];
    io_uring_sqe* sqe = GetSqe(timeoutMs > 0 ? 2 : 1);
    uint64_t off = uint64_t(op.offset);  // -1 = current position
    bool fixed = fixed_ && fixedIndex >= 0;
    switch (op.kind) {
      case kRead:
        if (fixed)
          io_uring_prep_read_fixed(sqe, op.fd, op.iov[0].iov_base, op.iov[0].iov_len, off, fixedIndex);
        else
          io_uring_prep_read(sqe, op.fd, op.iov[0].iov_base, op.iov[0].iov_len, off);
        break;
      case kWrite:  // a slice of a pooled read goes back out from the same registered buffer
        if (fixed)
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

  void SubmitPoll(int id, double timeoutMs) override {
    Op& op = c_.ops[id];
    io_uring_sqe* sqe = GetSqe(timeoutMs > 0 ? 2 : 1);
    io_uring_prep_poll_add(sqe, op.fd, op.events);
    Finish(sqe, id, op, timeoutMs);
  }

  void SubmitClose(int id) override {
    Op& op = c_.ops[id];
    io_uring_sqe* sqe = GetSqe(1);
    io_uring_prep_close(sqe, op.fd);
    Finish(sqe, id, op, 0);
  }

  void SubmitCancelFd(int id, int fd) override {
    io_uring_sqe* sqe = GetSqe(1);
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, uint64_t(id));
  }

  int Flush() override { return stopped_ ? 0 : Submit(); }

  size_t Reap(int32_t* out, size_t cap) override {
    if (stopped_) return 0;
    size_t n = 0;
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (n == cap) break;
      seen++;
      if (cqe->user_data & kTimeoutTag) continue;
      out[2 * n] = int32_t(cqe->user_data);
      out[2 * n + 1] = cqe->res;
      n++;
    }
    io_uring_cq_advance(&ring_, seen);
    return n;
  }

  // The kernel cancels whatever is still in flight when the ring goes.
  void Stop() override {
    if (stopped_) return;
    stopped_ = true;
    io_uring_queue_exit(&ring_);
  }

 private:
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

  Completions& c_;
  io_uring ring_{};
  unsigned entries_ = 0;
  bool fixed_ = false, stopped_ = false;
  uint64_t enters_ = 0, sqes_ = 0;
};

}  // namespace

std::unique_ptr<IoBackend> MakeUringBackend(Completions& c, unsigned entries, int maxOps, uint8_t* pool,
                                            unsigned bufferCount, size_t bufferSize, std::string& reason) {
  auto b = std::make_unique<UringBackend>(c);
  if (!b->Init(entries, maxOps, pool, bufferCount, bufferSize, reason)) return nullptr;
  return b;
}

}  // namespace migbridge
