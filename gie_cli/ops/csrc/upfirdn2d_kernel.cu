// upfirdn2d CUDA kernels for gie's StyleGAN2 (Karras et al. 2020) ops (written for gie, MIT licence).
//
// Three kernels: direct, tiled and separable (the last two below). Direct kernel: one thread per output sample.
// Output (oy, ox) reads the padded, zero-inserted input at rows oy*down_y + i and columns ox*down_x + j (i < kh,
// j < kw) and weights them with the flipped kernel (true convolution). Position u of the padded signal is input
// sample (u - pad0) / up when (u - pad0) is a non-negative multiple of up that lands inside the input, and zero
// otherwise; negative pads therefore crop without special cases.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

namespace {

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count > 0 ? count : 1;
}

// Input sample that tap t of output o reads along one axis: position o*down + t - pad0 of the zero-inserted signal,
// or -1 where that position is an inserted zero or lies outside the n input samples.
__device__ __forceinline__ int tap_source(int o, int t, int down, int up, int pad0, int n) {
  const int u = o * down + t - pad0;
  if (u < 0 || u % up != 0) return -1;
  const int i = u / up;
  return i < n ? i : -1;
}

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_direct_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ kernel,
                                        scalar_t* __restrict__ y, int64_t planes, int in_h, int in_w, int out_h,
                                        int out_w, int kh, int kw, int up_x, int up_y, int down_x, int down_y,
                                        int pad_x0, int pad_y0) {
  const int64_t total = planes * out_h * out_w;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int ox = static_cast<int>(idx % out_w);
    const int oy = static_cast<int>((idx / out_w) % out_h);
    const int64_t plane = idx / (static_cast<int64_t>(out_w) * out_h);
    const scalar_t* src = x + plane * in_h * in_w;
    acc_t acc = 0;
    for (int i = 0; i < kh; ++i) {
      const int iy = tap_source(oy, i, down_y, up_y, pad_y0, in_h);
      if (iy < 0) continue;
      const acc_t* krow = kernel + static_cast<int64_t>(kh - 1 - i) * kw;  // flipped rows
      const scalar_t* srow = src + static_cast<int64_t>(iy) * in_w;
      for (int j = 0; j < kw; ++j) {
        const int ix = tap_source(ox, j, down_x, up_x, pad_x0, in_w);
        if (ix < 0) continue;
        acc += static_cast<acc_t>(srow[ix]) * krow[kw - 1 - j];  // flipped columns
      }
    }
    y[idx] = static_cast<scalar_t>(acc);
  }
}

// Output tiles of the tiled and separable kernels.
constexpr int kTileH = 32;
constexpr int kTileW = 32;

// The output tile of block blockIdx.x (kTileH x kTileW outputs from (oy0, ox0)) and the first input row / column any
// of its outputs reads (in_y0 / in_x0: floor division of a possibly negative position).
struct TileOrigin {
  int oy0, ox0, in_y0, in_x0;
};

__device__ TileOrigin tile_origin(int out_w, int up_x, int up_y, int down_x, int down_y, int pad_x0, int pad_y0) {
  const int tiles_x = (out_w + kTileW - 1) / kTileW;
  TileOrigin o;
  o.oy0 = (blockIdx.x / tiles_x) * kTileH;
  o.ox0 = (blockIdx.x % tiles_x) * kTileW;
  const int uy_lo = o.oy0 * down_y - pad_y0, ux_lo = o.ox0 * down_x - pad_x0;
  o.in_y0 = uy_lo >= 0 ? (uy_lo + up_y - 1) / up_y : -((-uy_lo) / up_y);
  o.in_x0 = ux_lo >= 0 ? (ux_lo + up_x - 1) / up_x : -((-ux_lo) / up_x);
  return o;
}

// Stage tile_in_h x tile_in_w input samples of one plane from (in_y0, in_x0) in shared memory, zero outside the input.
template <typename scalar_t, typename acc_t>
__device__ void stage_tile(const scalar_t* __restrict__ src, acc_t* tile, int in_h, int in_w, const TileOrigin& o,
                           int tile_in_h, int tile_in_w, int tid, int threads) {
  for (int t = tid; t < tile_in_h * tile_in_w; t += threads) {
    const int iy = o.in_y0 + t / tile_in_w, ix = o.in_x0 + t % tile_in_w;
    const bool inside = iy >= 0 && iy < in_h && ix >= 0 && ix < in_w;
    tile[t] = inside ? static_cast<acc_t>(src[static_cast<int64_t>(iy) * in_w + ix]) : acc_t(0);
  }
}

// Call f(dy, oy, ox) for each of this thread's outputs of the tile from (oy0, ox0): the block's threads stride over
// its rows and columns, stopping at the map's edge.
template <typename F>
__device__ void for_tile_outputs(int oy0, int ox0, int out_h, int out_w, F&& f) {
  for (int dy = threadIdx.y; dy < kTileH; dy += blockDim.y) {
    const int oy = oy0 + dy;
    if (oy >= out_h) break;
    for (int dx = threadIdx.x; dx < kTileW; dx += blockDim.x) {
      const int ox = ox0 + dx;
      if (ox >= out_w) break;
      f(dy, oy, ox);
    }
  }
}

// Tiled kernel: a block computes a kTileH x kTileW tile of outputs of one plane. It first stages the input rows and
// columns the tile reads (zero outside the input) and the flipped filter taps in shared memory, then every thread
// sums its outputs from there with the direct kernel's index arithmetic and summation order, so both kernels agree
// bit for bit. in_y0 / in_x0 are the first staged input row / column; tile_in_h / tile_in_w the staged extent.
template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_tiled_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ kernel,
                                       scalar_t* __restrict__ y, int64_t planes, int in_h, int in_w, int out_h,
                                       int out_w, int kh, int kw, int up_x, int up_y, int down_x, int down_y,
                                       int pad_x0, int pad_y0, int tile_in_h, int tile_in_w) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* taps = reinterpret_cast<acc_t*>(smem_raw);  // kh * kw taps, flipped: taps[i * kw + j] = k[kh-1-i][kw-1-j]
  acc_t* tile = taps + kh * kw;                      // tile_in_h * tile_in_w staged input samples
  const TileOrigin o = tile_origin(out_w, up_x, up_y, down_x, down_y, pad_x0, pad_y0);
  const int oy0 = o.oy0, ox0 = o.ox0, in_y0 = o.in_y0, in_x0 = o.in_x0;
  const int threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int t = tid; t < kh * kw; t += threads) {
    const int i = t / kw, j = t % kw;
    taps[t] = kernel[static_cast<int64_t>(kh - 1 - i) * kw + (kw - 1 - j)];
  }
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const scalar_t* src = x + plane * in_h * in_w;
    __syncthreads();  // the previous plane's tile is no longer read
    stage_tile(src, tile, in_h, in_w, o, tile_in_h, tile_in_w, tid, threads);
    __syncthreads();
    scalar_t* dst = y + plane * out_h * out_w;
    for_tile_outputs(oy0, ox0, out_h, out_w, [&](int, int oy, int ox) {
      acc_t acc = 0;
      for (int i = 0; i < kh; ++i) {
        const int iy = tap_source(oy, i, down_y, up_y, pad_y0, in_h);
        if (iy < 0) continue;
        const acc_t* trow = taps + i * kw;
        const acc_t* srow = tile + (iy - in_y0) * tile_in_w;
        for (int j = 0; j < kw; ++j) {
          const int ix = tap_source(ox, j, down_x, up_x, pad_x0, in_w);
          if (ix < 0) continue;
          acc += srow[ix - in_x0] * trow[j];
        }
      }
      dst[static_cast<int64_t>(oy) * out_w + ox] = static_cast<scalar_t>(acc);
    });
  }
}

// Separable tiled kernel, for a kernel that is the outer product ky x kx (StyleGAN2's [1, 3, 3, 1] filters): the block
// stages the input tile like the tiled kernel, filters its columns with ky into kTileH rows of staged width (pass 1),
// then filters those rows with kx into the output tile (pass 2): kh + kw multiply-adds per output instead of kh * kw.
// The sums run in another order than the direct kernel's, so the results agree to rounding, not bit for bit.
template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_separable_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ ky,
                                           const acc_t* __restrict__ kx, scalar_t* __restrict__ y, int64_t planes,
                                           int in_h, int in_w, int out_h, int out_w, int kh, int kw, int up_x,
                                           int up_y, int down_x, int down_y, int pad_x0, int pad_y0, int tile_in_h,
                                           int tile_in_w) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* taps_y = reinterpret_cast<acc_t*>(smem_raw);  // flipped: taps_y[i] = ky[kh-1-i]
  acc_t* taps_x = taps_y + kh;                         // flipped: taps_x[j] = kx[kw-1-j]
  acc_t* tile = taps_x + kw;                           // tile_in_h * tile_in_w staged input samples
  acc_t* mid = tile + tile_in_h * tile_in_w;           // kTileH * tile_in_w column-filtered rows
  const TileOrigin o = tile_origin(out_w, up_x, up_y, down_x, down_y, pad_x0, pad_y0);
  const int oy0 = o.oy0, ox0 = o.ox0, in_y0 = o.in_y0, in_x0 = o.in_x0;
  const int threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int t = tid; t < kh; t += threads) taps_y[t] = ky[kh - 1 - t];
  for (int t = tid; t < kw; t += threads) taps_x[t] = kx[kw - 1 - t];
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const scalar_t* src = x + plane * in_h * in_w;
    __syncthreads();  // the previous plane's tile and rows are no longer read
    stage_tile(src, tile, in_h, in_w, o, tile_in_h, tile_in_w, tid, threads);
    __syncthreads();
    // pass 1: output row oy of every staged column
    for (int t = tid; t < kTileH * tile_in_w; t += threads) {
      const int dy = t / tile_in_w, c = t % tile_in_w, oy = oy0 + dy;
      acc_t acc = 0;
      if (oy < out_h) {
        for (int i = 0; i < kh; ++i) {
          const int iy = tap_source(oy, i, down_y, up_y, pad_y0, in_h);
          if (iy < 0) continue;
          acc += tile[(iy - in_y0) * tile_in_w + c] * taps_y[i];
        }
      }
      mid[t] = acc;
    }
    __syncthreads();
    // pass 2: the row filter on the column-filtered rows
    scalar_t* dst = y + plane * out_h * out_w;
    for_tile_outputs(oy0, ox0, out_h, out_w, [&](int dy, int oy, int ox) {
      const acc_t* row = mid + dy * tile_in_w;
      acc_t acc = 0;
      for (int j = 0; j < kw; ++j) {
        const int ix = tap_source(ox, j, down_x, up_x, pad_x0, in_w);
        if (ix < 0) continue;
        acc += row[ix - in_x0] * taps_x[j];
      }
      dst[static_cast<int64_t>(oy) * out_w + ox] = static_cast<scalar_t>(acc);
    });
  }
}

// Input rows (or columns) a tile of `tile` outputs reads: from the first to the last sample its taps can land on.
int64_t staged_extent(int64_t tile, int64_t down, int64_t k, int64_t up) {
  return ((tile - 1) * down + k - 1) / up + 2;
}

// Sizes of one upfirdn2d call (checked to fit the kernels' int index arithmetic) and, for the tiled and separable
// kernels, the staged extent of a tile and their launch grid (one block per output tile and plane).
struct Geometry {
  int64_t planes, in_h, in_w, out_h, out_w, kh, kw, tile_in_h, tile_in_w;
  dim3 tile_grid, tile_block{32, 8};
};

Geometry geometry(const at::Tensor& x, int64_t kh, int64_t kw, int64_t up_x, int64_t up_y, int64_t down_x,
                  int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  Geometry g;
  g.planes = x.size(0) * x.size(1), g.in_h = x.size(2), g.in_w = x.size(3), g.kh = kh, g.kw = kw;
  g.out_h = (g.in_h * up_y + pad_y0 + pad_y1 - kh) / down_y + 1;
  g.out_w = (g.in_w * up_x + pad_x0 + pad_x1 - kw) / down_x + 1;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(g.in_h * up_y + std::abs(pad_y0) + kh < kIntMax && g.in_w * up_x + std::abs(pad_x0) + kw < kIntMax &&
                  g.out_h * down_y < kIntMax && g.out_w * down_x < kIntMax,
              "upfirdn2d: spatial size too large");
  g.tile_in_h = staged_extent(kTileH, down_y, kh, up_y), g.tile_in_w = staged_extent(kTileW, down_x, kw, up_x);
  const int64_t tiles = ((g.out_h + kTileH - 1) / kTileH) * ((g.out_w + kTileW - 1) / kTileW);
  TORCH_CHECK(tiles < kIntMax, "upfirdn2d: too many tiles");
  g.tile_grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(g.planes, 65535)));
  return g;
}

constexpr int64_t kSharedBytes = 48 * 1024;  // shared memory a block may use without opting in

}  // namespace

// variant: 0 = the tiled kernel where its shared memory fits, else the direct one; 1 = direct; 2 = tiled (error if it
// does not fit).
at::Tensor upfirdn2d_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                          int64_t pad_y1, int64_t variant) {
  const at::cuda::OptionalCUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor kernel = kernel_in.contiguous();
  const Geometry g =
      geometry(x, kernel.size(0), kernel.size(1), up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
  at::Tensor y = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t acc_bytes = x.scalar_type() == at::kDouble ? 8 : 4;
  const int64_t smem = (g.kh * g.kw + g.tile_in_h * g.tile_in_w) * acc_bytes;
  const bool tiled_fits = smem <= kSharedBytes;
  TORCH_CHECK(variant >= 0 && variant <= 2, "upfirdn2d: variant must be 0, 1 or 2");
  TORCH_CHECK(variant != 2 || tiled_fits, "upfirdn2d: the tiled kernel's shared memory does not fit");
  if (variant == 2 || (variant == 0 && tiled_fits)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_tiled_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      TORCH_CHECK(kernel.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "upfirdn2d: wrong kernel dtype");
      upfirdn2d_tiled_kernel<scalar_t, acc_t><<<g.tile_grid, g.tile_block, static_cast<size_t>(smem), stream>>>(
          x.data_ptr<scalar_t>(), kernel.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), g.planes,
          static_cast<int>(g.in_h), static_cast<int>(g.in_w), static_cast<int>(g.out_h), static_cast<int>(g.out_w),
          static_cast<int>(g.kh), static_cast<int>(g.kw), static_cast<int>(up_x), static_cast<int>(up_y),
          static_cast<int>(down_x), static_cast<int>(down_y), static_cast<int>(pad_x0), static_cast<int>(pad_y0),
          static_cast<int>(g.tile_in_h), static_cast<int>(g.tile_in_w));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return y;
  }
  constexpr int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(multiprocessor_count(x.device().index())) * 32;
  const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, max_blocks));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(kernel.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "upfirdn2d: wrong kernel dtype");
    upfirdn2d_direct_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), kernel.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), g.planes,
        static_cast<int>(g.in_h), static_cast<int>(g.in_w), static_cast<int>(g.out_h), static_cast<int>(g.out_w),
        static_cast<int>(g.kh), static_cast<int>(g.kw), static_cast<int>(up_x), static_cast<int>(up_y),
        static_cast<int>(down_x), static_cast<int>(down_y), static_cast<int>(pad_x0), static_cast<int>(pad_y0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

// y = upfirdn2d(x, outer(ky, kx)) with the separable kernel; where its shared memory does not fit, the 2-D kernels
// run on the outer product instead (variant as for upfirdn2d_cuda).
at::Tensor upfirdn2d_separable_cuda(const at::Tensor& x_in, const at::Tensor& ky_in, const at::Tensor& kx_in,
                                    int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                                    int64_t pad_x1, int64_t pad_y0, int64_t pad_y1, int64_t variant) {
  const at::cuda::OptionalCUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor ky = ky_in.contiguous(), kx = kx_in.contiguous();
  const Geometry g = geometry(x, ky.size(0), kx.size(0), up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
  const int64_t acc_bytes = x.scalar_type() == at::kDouble ? 8 : 4;
  const int64_t smem = (g.kh + g.kw + g.tile_in_h * g.tile_in_w + kTileH * g.tile_in_w) * acc_bytes;
  if (smem > kSharedBytes) {
    return upfirdn2d_cuda(x, at::outer(ky, kx), up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, variant);
  }
  at::Tensor y = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options());
  if (y.numel() == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_separable_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(ky.scalar_type() == c10::CppTypeToScalarType<acc_t>::value &&
                    kx.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "upfirdn2d: wrong kernel dtype");
    upfirdn2d_separable_kernel<scalar_t, acc_t><<<g.tile_grid, g.tile_block, static_cast<size_t>(smem), stream>>>(
        x.data_ptr<scalar_t>(), ky.data_ptr<acc_t>(), kx.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), g.planes,
        static_cast<int>(g.in_h), static_cast<int>(g.in_w), static_cast<int>(g.out_h), static_cast<int>(g.out_w),
        static_cast<int>(g.kh), static_cast<int>(g.kw), static_cast<int>(up_x), static_cast<int>(up_y),
        static_cast<int>(down_x), static_cast<int>(down_y), static_cast<int>(pad_x0), static_cast<int>(pad_y0),
        static_cast<int>(g.tile_in_h), static_cast<int>(g.tile_in_w));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}
