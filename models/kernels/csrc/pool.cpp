// Large CPU blocks kept for reuse: a c10::Allocator in front of PyTorch's own CPU allocator.
//
// glibc serves a block above its mmap threshold (32 MiB at most, mallopt(3)) with fresh pages
// and unmaps it on free, so every step of a large batch faults its big activations in afresh,
// 4 KiB at a time and zeroed. In a VM a fault cost about 2.8 us here, 28 ms per 40 MiB. The
// harness turns that off with mallopt (benchmarks/machine/runtime.py); a user's own script does not.
// This pool keeps freed blocks of at least 32 MiB (smaller ones glibc already reuses) and hands
// them out again, up to a cap; new ones are mapped with transparent huge pages asked for.
// Everything smaller goes to the allocator it replaced.

#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <mutex>

namespace {

constexpr size_t kLarge = size_t(32) << 20;  // glibc's largest mmap threshold (M_MMAP_THRESHOLD)
constexpr size_t kHuge = size_t(2) << 20;    // a transparent huge page

class LargeBlockPool final : public c10::Allocator {
 public:
  LargeBlockPool(c10::Allocator* base, size_t cap) : base_(base), cap_(cap) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kLarge) return base_->allocate(n);
    size_t size = (n + kHuge - 1) / kHuge * kHuge;
    void* p = take(size);  // size: the kept block's own, where one is taken
    if (!p) {
      p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return base_->allocate(n);  // the base allocator reports the failure
#ifdef MADV_HUGEPAGE
      madvise(p, size, MADV_HUGEPAGE);
#endif
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_.emplace(p, size);
    }
    // data and context the same pointer, as raw_allocate (oneDNN's scratch, for one) requires
    return {p, p, &LargeBlockPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &LargeBlockPool::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  // every kept block back to the OS; the bytes released
  size_t empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t released = 0;
    for (auto& [size, ptr] : free_) {
      munmap(ptr, size);
      released += size;
    }
    free_.clear();
    kept_ = 0;
    return released;
  }

  size_t kept() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_;
  }

  c10::Allocator* base() const { return base_; }

  static LargeBlockPool* instance;

 private:
  // a kept block of ``size``, or of at most a quarter more (a step's shapes repeat); its own
  // size goes back into ``size``
  void* take(size_t& size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) return nullptr;
    void* p = it->second;
    size = it->first;
    kept_ -= size;
    free_.erase(it);
    return p;
  }

  // a block of this pool kept or unmapped; any other pointer is the base allocator's
  static void release(void* p) {
    LargeBlockPool* pool = instance;
    size_t size = 0;
    bool keep = false;
    {
      std::lock_guard<std::mutex> lock(pool->mutex_);
      auto it = pool->live_.find(p);
      if (it != pool->live_.end()) {
        size = it->second;
        pool->live_.erase(it);
        keep = pool->kept_ + size <= pool->cap_;
        if (keep) {
          pool->free_.emplace(size, p);
          pool->kept_ += size;
        }
      }
    }
    if (size == 0)
      pool->base_->raw_deleter()(p);
    else if (!keep)
      munmap(p, size);
  }

  c10::Allocator* base_;
  size_t cap_;
  size_t kept_ = 0;
  std::multimap<size_t, void*> free_;  // kept blocks by size
  std::map<void*, size_t> live_;       // blocks handed out, with their mapped size
  std::mutex mutex_;
};

LargeBlockPool* LargeBlockPool::instance = nullptr;

}  // namespace

// Put the pool in front of the CPU allocator, keeping at most cap_bytes of freed blocks; once
// per process (later calls change nothing). Whether it is in place.
bool pool_install(int64_t cap_bytes) {
  static std::once_flag once;
  std::call_once(once, [cap_bytes] {
    LargeBlockPool::instance = new LargeBlockPool(c10::GetCPUAllocator(), size_t(cap_bytes));
    c10::SetCPUAllocator(LargeBlockPool::instance, /*priority=*/255);
  });
  return c10::GetCPUAllocator() == LargeBlockPool::instance;
}

// The bytes of freed large blocks the pool keeps (0 where it is not installed).
int64_t pool_kept() { return LargeBlockPool::instance ? LargeBlockPool::instance->kept() : 0; }

// Every kept block back to the OS; the bytes released.
int64_t pool_empty() { return LargeBlockPool::instance ? LargeBlockPool::instance->empty() : 0; }
