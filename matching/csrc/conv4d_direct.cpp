// Direct 4D convolution kernels for NCNet's neighbourhood consensus (float32, CPU, inference only).
// Loaded through ctypes by matching/native.py: plain C ABI, no Python or torch headers.
//
// Conventions (shared with matching/conv4d.py):
//   4D conv = cross-correlation with zero 'same' padding over (wA, hB, wB) and 'valid' over the row axis hA
//   (the caller passes k - 1 halo rows); weight [O, C/groups, k, k, k, k], kernel axes follow (hA, wA, hB, wB);
//   out[o, r, a, h, w] = bias[o] + sum_{c, d} W[o, c, d] * x[c, r + d0, a + d1 - p, h + d2 - p, w + d3 - p].
//
// Layout: one hA row of activations is a zero-padded volume of WA + 2p planes, each plane HB + p rows of
// WB + p values (the p zeros after a row are also the left padding of the next row, the p zero rows after
// a plane the top padding of the next plane), stored channel-blocked: [C / VL][volume][VL] (VL = vector
// width in floats, one block = one 64-byte line with AVX-512; a single channel is stored unblocked). A plane
// is walked as a flat array, so every kernel tap is a constant offset, and blocks of consecutive flat
// positions are computed at once (positions with w >= WB fall on the padding and are dropped). Two
// register-blocked micro-kernels (GCC vector extensions):
//   * bcast: output channels in the vector lanes, one broadcast input value per position, each loaded value
//     reused by the k taps along wB; for groups with several output channels (1->16, 16->16 layers).
//   * hsum: input channels in the lanes (a multiple of VL), VL positions, each loaded input vector reused by
//     the k taps along wB, partial sums reduced by a shuffle tree; for 16c->1 layers. Strips of positions
//     run over consecutive planes, so the k^2 plane regions a strip reads stay in L2.
// A stack of layers (the consensus network) streams over hA rows: each intermediate layer keeps a ring of
// k rows, so the temporary memory is a few rows whatever the tensor size.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// Vector width and register count of the target: AVX-512 -> 16 floats and 32 registers; otherwise 8 floats
// and 16 registers (AVX2: one ymm register each; a conservative choice elsewhere). The register blockings
// below are sized from these.
#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int NREG = 32;
#else
constexpr int VL = 8;
constexpr int NREG = 16;
#endif
// positions per bcast block: accumulators (P x NV) + K x NV weight vectors + 1 broadcast value <= NREG
template <int K, int NV>
constexpr int bcast_positions() { return NREG == 32 && NV == 1 ? 24 : (K <= 3 ? 12 : 10); }
typedef float vec __attribute__((vector_size(VL * sizeof(float)), aligned(4), may_alias));

inline vec loadu(const float* p) { return *reinterpret_cast<const vec*>(p); }
inline void storeu(float* p, vec v) { *reinterpret_cast<vec*>(p) = v; }

// Freed buffers are kept for the next call (up to CACHE_LIMIT bytes in all), so repeated calls of the same
// size do not pay page faults again; ncdirect_release_workspace() frees them.
constexpr size_t CACHE_LIMIT = size_t(256) << 20;
struct CachedBlock {
  size_t cap;      // capacity in floats
  void* raw;       // calloc'd block
  uint64_t layout;  // tag of the zero-border layout it holds (0: none)
};
std::mutex cache_mutex;
std::vector<CachedBlock> cache;
size_t cache_bytes = 0;

struct Buffer {  // 64-byte aligned, zero-initialised float array
  float* data = nullptr;
  void* raw = nullptr;
  size_t cap = 0;
  uint64_t layout = 0;
  // layout != 0: the caller only ever writes interiors of that padded layout, so a cached block last used
  // with the same layout and size still has zero borders and needs no clearing
  explicit Buffer(int64_t count, uint64_t layout_tag = 0) : layout(layout_tag) {
    const size_t n = (size_t)std::max<int64_t>(count, 1) + 16;
    bool clean = false;
    {
      std::lock_guard<std::mutex> lk(cache_mutex);
      size_t best = cache.size();
      for (size_t i = 0; i < cache.size(); ++i) {
        if (cache[i].cap < n) continue;
        const bool same = layout != 0 && cache[i].layout == layout && cache[i].cap == n;
        if (best == cache.size() || same || (cache[i].cap < cache[best].cap && !clean)) {
          best = i;
          clean = same;
          if (same) break;
        }
      }
      if (best < cache.size()) {
        cap = cache[best].cap;
        raw = cache[best].raw;
        cache_bytes -= cap * sizeof(float);
        cache.erase(cache.begin() + (long)best);
      }
    }
    if (raw) {
      if (!clean) std::memset(raw, 0, n * sizeof(float));
    } else {
      raw = std::calloc(n, sizeof(float));  // fresh pages come zeroed: no second pass
      cap = n;
    }
    if (raw) data = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(raw) + 63) / 64 * 64);
  }
  ~Buffer() {
    if (!raw) return;
    std::lock_guard<std::mutex> lk(cache_mutex);
    if (cache_bytes + cap * sizeof(float) <= CACHE_LIMIT) {
      cache.push_back({cap, raw, layout});
      cache_bytes += cap * sizeof(float);
    } else {
      std::free(raw);
    }
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

struct Geo {  // spatial geometry shared by every layer of one call
  int WA, HB, WB, p, WAp, WBp;
  int64_t plane;  // positions between two wA planes: (HB + p) * WBp
  int64_t vol;    // positions per channel block of a row: WAp * plane + slack for the last block's over-reads
  int nq;         // flat positions covering the output plane: HB * WBp
};

Geo make_geo(int WA, int HB, int WB, int k) {
  Geo g{};
  g.WA = WA; g.HB = HB; g.WB = WB; g.p = k / 2;
  // row pitch WB + p: the p zeros after a row are also the left padding of the next row; likewise the p
  // zero rows after a plane are the top padding of the next plane (plane stride (HB + p) rows)
  g.WAp = WA + 2 * g.p; g.WBp = WB + g.p;
  g.plane = (int64_t)(HB + g.p) * g.WBp;
  g.vol = g.WAp * g.plane + 2 * g.WBp + 64;
  g.nq = HB * g.WBp;
  return g;
}

inline int block_size(int C) { return C == 1 ? 1 : VL; }
inline int padded_channels(int C) { return (C + block_size(C) - 1) / block_size(C) * block_size(C); }
// floats of one padded, channel-blocked row with C channels
int64_t row_floats(const Geo& g, int C) { return g.vol * padded_channels(C); }

struct Out {  // destination of one output row: padded channel-blocked row, or planar [O][WA][HB][WB]
  float* data;
  bool planar;
  int C;  // channel count of the destination
  bool relu;
};

// Writes the values of output position (a, h, w) for channels [ch0, ch0 + n).
inline void put(const Geo& g, const Out& o, int a, int h, int w, int ch0, int n, const float* v) {
  if (o.planar) {
    float* d = o.data + (((int64_t)ch0 * g.WA + a) * g.HB + h) * g.WB + w;
    const int64_t cs = (int64_t)g.WA * g.HB * g.WB;
    for (int j = 0; j < n; ++j) d[j * cs] = (o.relu && v[j] < 0.0f) ? 0.0f : v[j];
  } else {
    const int64_t pos = (int64_t)(a + g.p) * g.plane + (int64_t)(h + g.p) * g.WBp + w + g.p;
    const int bs = block_size(o.C);
    int j = 0;
    if (bs == VL && ch0 % VL == 0)
      for (; j + VL <= n; j += VL) {
        vec x = loadu(v + j);
        if (o.relu) x = x < vec{} ? vec{} : x;
        storeu(o.data + ((ch0 + j) / VL * g.vol + pos) * VL, x);
      }
    for (; j < n; ++j) {
      const int c = ch0 + j;
      o.data[((int64_t)(c / bs) * g.vol + pos) * bs + c % bs] = (o.relu && v[j] < 0.0f) ? 0.0f : v[j];
    }
  }
}

// Writes the block of P flat positions starting at q0 (values lanes[m][0..n)), skipping border positions.
template <int P, int W>
inline void put_block(const Geo& g, const Out& o, int a, int q0, int ch0, int n, const float (&lanes)[P][W]) {
  int h = q0 / g.WBp, w = q0 - h * g.WBp;
  for (int m = 0; m < P && h < g.HB; ++m) {
    if (w < g.WB) put(g, o, a, h, w, ch0, n, lanes[m]);
    if (++w == g.WBp) { w = 0; ++h; }
  }
}

// bcast micro-kernel: output plane a of one row, channels [ch0, ch0 + nch) of one group (NV*16 lanes).
// rows[d0] = padded input row d0 (channel blocks of BS); wblk [Cg][K^4][NV*16]; bblk [NV*16].
template <int K, int NV, int P, int BS>
void bcast_plane(const Geo& g, const float* const* rows, int cin0, int Cg, const float* wblk,
                 const float* bblk, int a, int q_begin, int q_end, const Out& out, int ch0, int nch) {
  constexpr int K2 = K * K, K4 = K2 * K2;
  for (int q0 = q_begin; q0 < q_end; q0 += P) {
    vec acc[P][NV];
    for (int v = 0; v < NV; ++v) {
      const vec b = loadu(bblk + v * VL);
      for (int m = 0; m < P; ++m) acc[m][v] = b;
    }
    for (int c = 0; c < Cg; ++c) {
      for (int d0 = 0; d0 < K; ++d0) {
        for (int d1 = 0; d1 < K; ++d1) {
          for (int d2 = 0; d2 < K; ++d2) {
            const int ci = cin0 + c;
            const float* src = rows[d0] + ((ci / BS) * g.vol + (int64_t)(a + d1) * g.plane + q0 + (int64_t)d2 * g.WBp) * BS
                               + ci % BS;
            const float* wt = wblk + ((int64_t)c * K4 + ((d0 * K + d1) * K + d2) * K) * NV * VL;
            vec wv[K][NV];
            for (int d3 = 0; d3 < K; ++d3)
              for (int v = 0; v < NV; ++v) wv[d3][v] = loadu(wt + (d3 * NV + v) * VL);
            // the input value at flat offset s serves position m = s - d3 with tap d3
#pragma GCC unroll 40
            for (int s = 0; s < P + K - 1; ++s) {
              const float xs = src[s * BS];
#pragma GCC unroll 8
              for (int d3 = 0; d3 < K; ++d3) {
                const int m = s - d3;
                if (m >= 0 && m < P)
                  for (int v = 0; v < NV; ++v) acc[m][v] += xs * wv[d3][v];
              }
            }
          }
        }
      }
    }
    alignas(64) float lanes[P][NV * VL];
    for (int m = 0; m < P; ++m)
      for (int v = 0; v < NV; ++v) storeu(lanes[m] + v * VL, acc[m][v]);
    put_block<P, NV * VL>(g, out, a, q0, ch0, nch, lanes);
  }
}

#if defined(__AVX512F__)
// sum of the lanes of 16 vectors: result lane m = sum of the lanes of x[m]
inline vec hsum_lanes(const vec* x) {
  vec c[8], d[4], e[2];
  for (int j = 0; j < 8; ++j)
    c[j] = __builtin_shufflevector(x[2 * j], x[2 * j + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(x[2 * j], x[2 * j + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int j = 0; j < 4; ++j)
    d[j] = __builtin_shufflevector(c[2 * j], c[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(c[2 * j], c[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int j = 0; j < 2; ++j)
    e[j] = __builtin_shufflevector(d[2 * j], d[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(d[2 * j], d[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(e[0], e[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(e[0], e[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#else
// sum of the lanes of 8 vectors: result lane m = sum of the lanes of x[m]
inline vec hsum_lanes(const vec* x) {
  vec d[4], e[2];
  for (int j = 0; j < 4; ++j)
    d[j] = __builtin_shufflevector(x[2 * j], x[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(x[2 * j], x[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int j = 0; j < 2; ++j)
    e[j] = __builtin_shufflevector(d[2 * j], d[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(d[2 * j], d[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(e[0], e[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(e[0], e[1], 1, 3, 5, 7, 9, 11, 13, 15);
}
#endif

// hsum strip length in blocks of 16 positions: long enough that the K-1 halo rows of a plane (K-1 times WBp
// positions) are a small part of what a strip reads, short enough that the K^2 plane regions one strip
// reads stay in L2 while a run of consecutive planes a re-uses them
inline int strip_blocks(const Geo& g) { return std::max(8, std::min(64, (4 * g.WBp + VL - 1) / VL)); }

// hsum micro-kernel: output planes [a_begin, a_end) of one row, positions [q_begin, q_end), one output
// channel; input channels (Cg, a multiple of 16) in the lanes. wblk [Cg/16][K^4][16]. Strips of positions
// outside, planes inside: plane a + 1 re-reads K^2 - K of the K^2 input plane regions plane a read.
template <int K>
void hsum_run(const Geo& g, const float* const* rows, int cin0, int Cg, const float* wblk, float bias, int a_begin,
              int a_end, int q_begin, int q_end, const Out& out, int ch) {
  constexpr int P = VL, K2 = K * K, K4 = K2 * K2;
  const int ncv = Cg / VL, STRIP = strip_blocks(g);
  thread_local std::vector<float> strip_buf;  // STRIP x P accumulator vectors, 64-byte aligned
  if (strip_buf.size() < (size_t)STRIP * P * VL + VL) strip_buf.resize((size_t)STRIP * P * VL + VL);
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(strip_buf.data()) + 63) / 64 * 64);
  vec (*strip)[P] = reinterpret_cast<vec (*)[P]>(base);
  for (int s0 = q_begin; s0 < q_end; s0 += STRIP * P)
  for (int a = a_begin; a < a_end; ++a) {
    const int nb = std::min(STRIP, (q_end - s0 + P - 1) / P);
    for (int b = 0; b < nb; ++b)
      for (int m = 0; m < P; ++m) strip[b][m] = vec{};
    for (int cv = 0; cv < ncv; ++cv) {
      for (int d0 = 0; d0 < K; ++d0) {
        for (int d1 = 0; d1 < K; ++d1) {
          const float* plane = rows[d0] + ((cin0 / VL + cv) * g.vol + (int64_t)(a + d1) * g.plane) * VL;
          const float* wp = wblk + ((int64_t)cv * K4 + (d0 * K + d1) * K2) * VL;
          for (int b = 0; b < nb; ++b) {
            vec acc[P];
            for (int m = 0; m < P; ++m) acc[m] = strip[b][m];
            const int q0 = s0 + b * P;
            for (int d2 = 0; d2 < K; ++d2) {
              const float* src = plane + (int64_t)(q0 + d2 * g.WBp) * VL;
              vec wv[K];
              for (int d3 = 0; d3 < K; ++d3) wv[d3] = loadu(wp + (d2 * K + d3) * VL);
#pragma GCC unroll 32
              for (int s = 0; s < P + K - 1; ++s) {
                vec xv = loadu(src + s * VL);
                asm("" : "+v"(xv));  // keep the loaded vector in a register: it serves K taps
#pragma GCC unroll 8
                for (int d3 = 0; d3 < K; ++d3) {
                  const int m = s - d3;
                  if (m >= 0 && m < P) acc[m] += wv[d3] * xv;
                }
              }
            }
            for (int m = 0; m < P; ++m) strip[b][m] = acc[m];
          }
        }
      }
    }
    for (int b = 0; b < nb; ++b) {
      alignas(64) float lanes[P][1];
      alignas(64) float sums[VL];
      storeu(sums, hsum_lanes(strip[b]) + bias);
      for (int m = 0; m < P; ++m) lanes[m][0] = sums[m];
      put_block<P, 1>(g, out, a, s0 + b * P, ch, 1, lanes);
    }
  }
}

// A fixed set of worker threads for one call; run(n, fn) executes fn(0..n-1) on all of them and waits.
// Thread i first takes the i-th contiguous share of the tasks (callers order tasks so that a share is one
// channel block or group: the same data lands on the same core row after row and layer after layer, and
// is still in that core's L2), then helps the others with what is left.
class Pool {
 public:
  explicit Pool(int nthreads) : cursors_(std::max(1, nthreads)) {
    for (int i = 1; i < nthreads; ++i) threads_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return (int)threads_.size() + 1; }
  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    if (threads_.empty() || n <= 1) {
      for (int64_t t = 0; t < n; ++t) fn(t);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      const int T = size();
      for (int i = 0; i < T; ++i) cursors_[i].store(n * i / T, std::memory_order_relaxed);
      busy_ = (int)threads_.size();
      busy_atomic_.store(busy_, std::memory_order_relaxed);
      ++gen_;
      gen_atomic_.store(gen_, std::memory_order_release);
    }
    cv_.notify_all();
    work(0);
    for (int spin = 0; spin < SPINS && busy_atomic_.load(std::memory_order_acquire) != 0; ++spin) pause();
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [this] { return busy_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work(int self) {
    const int T = size();
    for (int k = 0; k < T; ++k) {  // own share first, then the others' leftovers
      const int i = (self + k) % T;
      const int64_t end = n_ * (i + 1) / T;
      for (int64_t t; (t = cursors_[i].fetch_add(1)) < end;) (*fn_)(t);
    }
  }
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  void loop(int self) {
    uint64_t seen = 0;
    for (;;) {
      // rows come every few hundred microseconds: spin briefly before sleeping on the condition variable
      for (int spin = 0; spin < SPINS && gen_atomic_.load(std::memory_order_acquire) == seen; ++spin) pause();
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || gen_ != seen; });
        if (stop_) return;
        seen = gen_;
      }
      work(self);
      std::lock_guard<std::mutex> lk(m_);
      busy_atomic_.store(--busy_, std::memory_order_release);
      if (busy_ == 0) done_.notify_one();
    }
  }
  static constexpr int SPINS = 20000;  // ~100 microseconds of pause instructions
  std::atomic<uint64_t> gen_atomic_{0};
  std::atomic<int> busy_atomic_{0};
  std::vector<std::thread> threads_;
  std::mutex m_;
  std::condition_variable cv_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::vector<std::atomic<int64_t>> cursors_;
  int64_t n_ = 0;
  int busy_ = 0;
  uint64_t gen_ = 0;
  bool stop_ = false;
};

// Weights of one layer repacked for its micro-kernel.
struct Packed {
  bool hsum;
  int K, C, O, groups, Cg, Og, nv, nblk;
  std::vector<float> w, b;
};

Packed pack(int K, int C, int O, int groups, const float* w, const float* bias) {
  Packed pk{};
  const int K4 = K * K * K * K;
  pk.K = K; pk.C = C; pk.O = O; pk.groups = groups; pk.Cg = C / groups; pk.Og = O / groups;
  pk.hsum = pk.Og == 1 && pk.Cg % VL == 0;
  if (pk.hsum) {  // [g][cv][tap][16 input channels]
    pk.w.assign((int64_t)groups * pk.Cg * K4, 0.0f);
    pk.b.assign(groups, 0.0f);
    for (int grp = 0; grp < groups; ++grp) {
      if (bias) pk.b[grp] = bias[grp];
      for (int c = 0; c < pk.Cg; ++c)
        for (int t = 0; t < K4; ++t)
          pk.w[(((int64_t)grp * (pk.Cg / VL) + c / VL) * K4 + t) * VL + c % VL] = w[((int64_t)grp * pk.Cg + c) * K4 + t];
    }
    return pk;
  }
  // 24 accumulators: 24 positions x 1 vector, or 12 x 2 for group sizes that are not whole 16-channel blocks;
  // one block per task keeps the next layer's groups (16-channel blocks) apart
  pk.nv = (pk.Og <= VL || pk.Og % VL == 0 || NREG < 32) ? 1 : 2;
  pk.nblk = (pk.Og + pk.nv * VL - 1) / (pk.nv * VL);
  const int lanes = pk.nv * VL;
  pk.w.assign((int64_t)groups * pk.nblk * pk.Cg * K4 * lanes, 0.0f);  // [g][block][c][tap][lanes]
  pk.b.assign((int64_t)groups * pk.nblk * lanes, 0.0f);
  for (int grp = 0; grp < groups; ++grp)
    for (int o = 0; o < pk.Og; ++o) {
      const int blk = grp * pk.nblk + o / lanes, lane = o % lanes, oo = grp * pk.Og + o;
      if (bias) pk.b[(int64_t)blk * lanes + lane] = bias[oo];
      for (int c = 0; c < pk.Cg; ++c)
        for (int t = 0; t < K4; ++t)
          pk.w[(((int64_t)blk * pk.Cg + c) * K4 + t) * lanes + lane] = w[((int64_t)oo * pk.Cg + c) * K4 + t];
    }
  return pk;
}

// One output row of one layer: rows[0..K) are the padded input rows (channel-blocked, pk.C channels).
// sum_groups (hsum layers, planar output): write the sum over groups of the ReLU'd outputs as channel 0;
// groups after the first are computed into ``scratch`` ((groups - 1) planar rows) and added at the end, so
// that every group is a separate task. Tasks are ordered group (or channel block) first, then runs of
// consecutive wA planes (a plane a reads input planes a..a+K-1, so a run re-uses most of what it reads),
// then position ranges when there are few planes.
template <int K>
void layer_row(Pool& pool, const Geo& g, const Packed& pk, const float* const* rows, const Out& out, bool sum_groups,
               float* scratch) {
  constexpr int K4 = K * K * K * K;
  const int64_t plane_floats = (int64_t)g.WA * g.HB * g.WB;
  const int64_t others = (int64_t)pk.groups * (pk.hsum ? 1 : pk.nblk);
  const int want = 2 * pool.size();  // tasks per (group, block) unit: a little more than one per thread
  const int nruns = std::min(g.WA, want);
  const int run_len = (g.WA + nruns - 1) / nruns;
  const int quantum = pk.hsum ? strip_blocks(g) * VL : bcast_positions<K, 1>();
  const int nchunks_max = std::max(1, (g.nq + quantum - 1) / quantum);
  const int nsplit = std::min(nchunks_max, std::max(1, (want + nruns - 1) / nruns));
  const int span = ((g.nq + nsplit - 1) / nsplit + quantum - 1) / quantum * quantum;
  pool.run(others * nruns * nsplit, [&](int64_t t) {
    const int part = t % nsplit;
    const int run = (t / nsplit) % nruns;
    const int64_t u = t / nsplit / nruns;
    const int q_begin = part * span, q_end = std::min(g.nq, q_begin + span);
    const int a_begin = run * run_len, a_end = std::min(g.WA, a_begin + run_len);
    if (q_begin >= q_end || a_begin >= a_end) return;
    if (pk.hsum) {
      const int grp = (int)u;
      Out o = out;
      if (sum_groups && grp > 0) o.data = scratch + (grp - 1) * plane_floats;
      hsum_run<K>(g, rows, grp * pk.Cg, pk.Cg, pk.w.data() + (int64_t)grp * pk.Cg * K4, pk.b[grp], a_begin, a_end,
                  q_begin, q_end, o, sum_groups ? 0 : grp);
      return;
    }
    const int b = u % pk.nblk, grp = (int)(u / pk.nblk);
    const int lanes = pk.nv * VL, blk = grp * pk.nblk + b;
    const int ch0 = grp * pk.Og + b * lanes, nch = std::min(lanes, pk.Og - b * lanes);
    const float* wb = pk.w.data() + (int64_t)blk * pk.Cg * K4 * lanes;
    const float* bb = pk.b.data() + (int64_t)blk * lanes;
    // accumulators + K * nv weight vectors + 1 broadcast value fit the vector registers
    constexpr int P1 = bcast_positions<K, 1>(), P2 = bcast_positions<K, 2>();
    const int cin0 = grp * pk.Cg;
    for (int a = a_begin; a < a_end; ++a) {
      if (block_size(pk.C) == 1) {
        if (pk.nv == 1)
          bcast_plane<K, 1, P1, 1>(g, rows, cin0, pk.Cg, wb, bb, a, q_begin, q_end, out, ch0, nch);
        else if constexpr (NREG == 32)
          bcast_plane<K, 2, P2, 1>(g, rows, cin0, pk.Cg, wb, bb, a, q_begin, q_end, out, ch0, nch);
      } else {
        if (pk.nv == 1)
          bcast_plane<K, 1, P1, VL>(g, rows, cin0, pk.Cg, wb, bb, a, q_begin, q_end, out, ch0, nch);
        else if constexpr (NREG == 32)
          bcast_plane<K, 2, P2, VL>(g, rows, cin0, pk.Cg, wb, bb, a, q_begin, q_end, out, ch0, nch);
      }
    }
  });
  if (sum_groups && pk.groups > 1) {
    const int64_t chunk = (plane_floats + 2 * pool.size() - 1) / (2 * pool.size());
    pool.run(2 * pool.size(), [&](int64_t t) {
      const int64_t lo = t * chunk, hi = std::min(plane_floats, lo + chunk);
      for (int grp = 1; grp < pk.groups; ++grp) {
        const float* src = scratch + (grp - 1) * plane_floats;
        for (int64_t i = lo; i < hi; ++i) out.data[i] += src[i];
      }
    });
  }
}

// scratch: (groups - 1) planar rows, needed when sum_groups
void run_row(Pool& pool, const Geo& g, const Packed& pk, const float* const* rows, const Out& out,
             bool sum_groups = false, float* scratch = nullptr) {
  if (pk.K == 3)
    layer_row<3>(pool, g, pk, rows, out, sum_groups, scratch);
  else
    layer_row<5>(pool, g, pk, rows, out, sum_groups, scratch);
}

// planar [C][WA][HB][WB] (one row) -> padded channel-blocked row (borders untouched)
void to_row(const Geo& g, const float* x, int C, float* row) {
  const int bs = block_size(C);
  for (int c = 0; c < C; ++c)
    for (int a = 0; a < g.WA; ++a) {
      const float* s = x + ((int64_t)c * g.WA + a) * g.HB * g.WB;
      float* d = row + ((int64_t)(c / bs) * g.vol + (int64_t)(a + g.p) * g.plane + (int64_t)g.p * g.WBp + g.p) * bs + c % bs;
      for (int h = 0; h < g.HB; ++h)
        for (int w = 0; w < g.WB; ++w) d[((int64_t)h * g.WBp + w) * bs] = s[h * g.WB + w];
    }
}

bool supported(int k) { return k == 3 || k == 5; }

}  // namespace

extern "C" {

int ncdirect_abi_version() { return 2; }

// Frees the buffers kept for reuse between calls; returns the number of bytes released.
long long ncdirect_release_workspace() {
  std::lock_guard<std::mutex> lk(cache_mutex);
  const long long bytes = (long long)cache_bytes;
  for (auto& e : cache) std::free(e.raw);
  cache.clear();
  cache_bytes = 0;
  return bytes;
}

// One 4D conv layer. x [B, R + k - 1, C, WA, HB, WB] (row layout), w [O, C/groups, k, k, k, k], bias [O] or
// null, out [B, R, O, WA, HB, WB]. Returns 0, -1 for invalid arguments, -2 for an unsupported kernel size,
// -3 when memory runs out.
int ncdirect_conv4d_rows_valid(const float* x, const float* w, const float* bias, float* out, int B, int R, int C,
                               int WA, int HB, int WB, int O, int k, int groups, int relu, int nthreads) {
  if (k % 2 == 0 || groups < 1 || C % groups || O % groups || B < 1 || R < 1 || WA < 1 || HB < 1 || WB < 1) return -1;
  if (!supported(k)) return -2;
  const Geo g = make_geo(WA, HB, WB, k);
  const int Rp = R + k - 1;
  const int64_t rf = row_floats(g, C), in_row = (int64_t)C * WA * HB * WB, out_row = (int64_t)O * WA * HB * WB;
  Buffer act(rf * Rp);
  if (!act.data) return -3;
  const Packed pk = pack(k, C, O, groups, w, bias);
  Pool pool(std::max(1, nthreads));
  for (int b = 0; b < B; ++b) {
    const float* xb = x + (int64_t)b * Rp * in_row;
    pool.run(Rp, [&](int64_t r) { to_row(g, xb + r * in_row, C, act.data + r * rf); });
    for (int r = 0; r < R; ++r) {
      const float* rows[5];
      for (int d = 0; d < k; ++d) rows[d] = act.data + (int64_t)(r + d) * rf;
      const Out o{out + ((int64_t)b * R + r) * out_row, true, O, relu != 0};
      run_row(pool, g, pk, rows, o);
    }
  }
  return 0;
}

// A stack of 4D conv + ReLU layers (the consensus network) on rows [row_start, row_stop) of its input, every
// layer with kernel k. x [HA, C0, WA, HB, WB] is the whole input; rows outside [0, HA) are zero, as are
// intermediate rows outside [0, HA) (the next layer's padding). out [Rout, O_last or O_last/groups, WA, HB, WB]
// holds output rows [row_start + L*p, row_stop - L*p); sum_groups: the last layer's groups (which must have
// one output channel each) are summed after their ReLU (NCNet's symmetric mode). Streams over rows: each layer's
// input is a ring of k padded rows. Returns 0, -1 for invalid arguments, -2 for an unsupported kernel size,
// -3 when memory runs out.
int ncdirect_conv4d_stack(const float* x, int HA, int C0, int WA, int HB, int WB, int row_start, int row_stop,
                          int nlayers, int k, const int* couts, const int* groups, const float* const* weights,
                          const float* const* biases, int sum_groups, float* out, int nthreads) {
  if (nlayers < 1 || nlayers > 16 || k % 2 == 0 || HA < 1 || WA < 1 || HB < 1 || WB < 1 || C0 < 1) return -1;
  if (!supported(k)) return -2;
  const int s = k - 1, Rin = row_stop - row_start, row0 = row_start;
  const int Rout = Rin - nlayers * s;
  if (Rout < 1) return -1;
  const Geo g = make_geo(WA, HB, WB, k);
  std::vector<Packed> pks;
  std::vector<int> cin(nlayers + 1);
  cin[0] = C0;
  for (int l = 0; l < nlayers; ++l) {
    if (groups[l] < 1 || cin[l] % groups[l] || couts[l] % groups[l] || couts[l] < 1) return -1;
    pks.push_back(pack(k, cin[l], couts[l], groups[l], weights[l], biases[l]));
    cin[l + 1] = couts[l];
  }
  const int last = nlayers - 1;
  if (sum_groups && !pks[last].hsum) return -1;
  const int Olast = sum_groups ? 1 : couts[last];
  // ring[l]: k padded rows of layer l's input (layer 0: the converted x rows)
  std::vector<Buffer*> ring;
  std::vector<int64_t> rfs;
  bool ok = true;
  for (int l = 0; l < nlayers; ++l) {
    rfs.push_back(row_floats(g, cin[l]));
    // tag: geometry + channels; the padded borders of such a ring are never written
    const uint64_t tag = 1 + (((((uint64_t)WA * 4099 + HB) * 4099 + WB) * 131 + k) * 4099 + cin[l]);
    ring.push_back(new Buffer(rfs[l] * k, tag));
    ok = ok && ring.back()->data;
  }
  int rc = ok ? 0 : -3;
  std::vector<float> scratch(sum_groups ? (size_t)(pks[last].groups - 1) * WA * HB * WB : 0);
  Pool pool(std::max(1, nthreads));
  // have[l] = number of rows of layer l's input produced so far (in order)
  std::vector<int> have(nlayers, 0);
  const int64_t in_row = (int64_t)C0 * WA * HB * WB, out_row = (int64_t)Olast * WA * HB * WB;
  // produce rows of layer l's input in order; row j of layer l's input has global index row0 + l*s/2 + j
  std::function<void(int)> produce = [&](int l) {
    const int j = have[l];
    float* slot = ring[l]->data + (int64_t)(j % k) * rfs[l];
    if (l == 0) {
      const int glob = row0 + j;  // to_row rewrites the whole interior; the borders stay zero
      if (glob >= 0 && glob < HA)
        to_row(g, x + (int64_t)glob * in_row, C0, slot);
      else
        std::memset(slot, 0, sizeof(float) * rfs[0]);
    } else {
      const int glob = row0 + l * s / 2 + j;
      while (have[l - 1] < j + k) produce(l - 1);
      if (glob < 0 || glob >= HA) {
        std::memset(slot, 0, sizeof(float) * rfs[l]);
      } else {
        const float* rows[5];
        for (int d = 0; d < k; ++d) rows[d] = ring[l - 1]->data + (int64_t)((j + d) % k) * rfs[l - 1];
        const Out o{slot, false, cin[l], true};
        run_row(pool, g, pks[l - 1], rows, o);
      }
    }
    ++have[l];
  };
  for (int r = 0; r < Rout && rc == 0; ++r) {
    while (have[last] < r + k) produce(last);
    const float* rows[5];
    for (int d = 0; d < k; ++d) rows[d] = ring[last]->data + (int64_t)((r + d) % k) * rfs[last];
    float* dst = out + (int64_t)r * out_row;
    const int glob = row0 + nlayers * s / 2 + r;
    if (glob < 0 || glob >= HA) {
      std::memset(dst, 0, sizeof(float) * out_row);
      continue;
    }
    const Out o{dst, true, Olast, true};
    run_row(pool, g, pks[last], rows, o, sum_groups != 0, scratch.data());
  }
  for (auto* b : ring) delete b;
  return rc;
}

}
