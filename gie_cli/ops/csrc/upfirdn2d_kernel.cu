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
      const int uy = oy * down_y + i - pad_y0;  // row in the zero-inserted (unpadded) signal
      if (uy < 0 || uy % up_y != 0) continue;
      const int iy = uy / up_y;
      if (iy >= in_h) continue;
      const acc_t* krow = kernel + static_cast<int64_t>(kh - 1 - i) * kw;  // flipped rows
      const scalar_t* srow = src + static_cast<int64_t>(iy) * in_w;
      for (int j = 0; j < kw; ++j) {
        const int ux = ox * down_x + j - pad_x0;
        if (ux < 0 || ux % up_x != 0) continue;
        const int ix = ux / up_x;
        if (ix >= in_w) continue;
        acc += static_cast<acc_t>(srow[ix]) * krow[kw - 1 - j];  // flipped columns
      }
    }
    y[idx] = static_cast<scalar_t>(acc);
  }
}

// Tiled kernel: a block computes a kTileH x kTileW tile of outputs of one plane. It first stages the input rows and
// columns the tile reads (zero outside the input) and the flipped filter taps in shared memory, then every thread
// sums its outputs from there with the direct kernel's index arithmetic and summation order, so both kernels agree
// bit for bit. in_y0 / in_x0 are the first staged input row / column; tile_in_h / tile_in_w the staged extent.
constexpr int kTileH = 32;
constexpr int kTileW = 32;

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_tiled_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ kernel,
                                       scalar_t* __restrict__ y, int64_t planes, int in_h, int in_w, int out_h,
                                       int out_w, int kh, int kw, int up_x, int up_y, int down_x, int down_y,
                                       int pad_x0, int pad_y0, int tile_in_h, int tile_in_w) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* taps = reinterpret_cast<acc_t*>(smem_raw);  // kh * kw taps, flipped: taps[i * kw + j] = k[kh-1-i][kw-1-j]
  acc_t* tile = taps + kh * kw;                      // tile_in_h * tile_in_w staged input samples
  const int tiles_x = (out_w + kTileW - 1) / kTileW;
  const int oy0 = (blockIdx.x / tiles_x) * kTileH;
  const int ox0 = (blockIdx.x % tiles_x) * kTileW;
  // first input row / column any output of this tile reads (floor division of a possibly negative position)
  const int uy_lo = oy0 * down_y - pad_y0, ux_lo = ox0 * down_x - pad_x0;
  const int in_y0 = uy_lo >= 0 ? (uy_lo + up_y - 1) / up_y : -((-uy_lo) / up_y);
  const int in_x0 = ux_lo >= 0 ? (ux_lo + up_x - 1) / up_x : -((-ux_lo) / up_x);
  const int threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int t = tid; t < kh * kw; t += threads) {
    const int i = t / kw, j = t % kw;
    taps[t] = kernel[static_cast<int64_t>(kh - 1 - i) * kw + (kw - 1 - j)];
  }
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const scalar_t* src = x + plane * in_h * in_w;
    __syncthreads();  // the previous plane's tile is no longer read
    for (int t = tid; t < tile_in_h * tile_in_w; t += threads) {
      const int iy = in_y0 + t / tile_in_w, ix = in_x0 + t % tile_in_w;
      tile[t] = (iy >= 0 && iy < in_h && ix >= 0 && ix < in_w)
                    ? static_cast<acc_t>(src[static_cast<int64_t>(iy) * in_w + ix])
                    : acc_t(0);
    }
    __syncthreads();
    scalar_t* dst = y + plane * out_h * out_w;
    for (int dy = threadIdx.y; dy < kTileH; dy += blockDim.y) {
      const int oy = oy0 + dy;
      if (oy >= out_h) break;
      for (int dx = threadIdx.x; dx < kTileW; dx += blockDim.x) {
        const int ox = ox0 + dx;
        if (ox >= out_w) break;
        acc_t acc = 0;
        for (int i = 0; i < kh; ++i) {
          const int uy = oy * down_y + i - pad_y0;
          if (uy < 0 || uy % up_y != 0) continue;
          const int iy = uy / up_y;
          if (iy >= in_h) continue;
          const acc_t* trow = taps + i * kw;
          const acc_t* srow = tile + (iy - in_y0) * tile_in_w;
          for (int j = 0; j < kw; ++j) {
            const int ux = ox * down_x + j - pad_x0;
            if (ux < 0 || ux % up_x != 0) continue;
            const int ix = ux / up_x;
            if (ix >= in_w) continue;
            acc += srow[ix - in_x0] * trow[j];
          }
        }
        dst[static_cast<int64_t>(oy) * out_w + ox] = static_cast<scalar_t>(acc);
      }
    }
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
  const int tiles_x = (out_w + kTileW - 1) / kTileW;
  const int oy0 = (blockIdx.x / tiles_x) * kTileH;
  const int ox0 = (blockIdx.x % tiles_x) * kTileW;
  const int uy_lo = oy0 * down_y - pad_y0, ux_lo = ox0 * down_x - pad_x0;
  const int in_y0 = uy_lo >= 0 ? (uy_lo + up_y - 1) / up_y : -((-uy_lo) / up_y);
  const int in_x0 = ux_lo >= 0 ? (ux_lo + up_x - 1) / up_x : -((-ux_lo) / up_x);
  const int threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int t = tid; t < kh; t += threads) taps_y[t] = ky[kh - 1 - t];
  for (int t = tid; t < kw; t += threads) taps_x[t] = kx[kw - 1 - t];
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const scalar_t* src = x + plane * in_h * in_w;
    __syncthreads();  // the previous plane's tile and rows are no longer read
    for (int t = tid; t < tile_in_h * tile_in_w; t += threads) {
      const int iy = in_y0 + t / tile_in_w, ix = in_x0 + t % tile_in_w;
      tile[t] = (iy >= 0 && iy < in_h && ix >= 0 && ix < in_w)
                    ? static_cast<acc_t>(src[static_cast<int64_t>(iy) * in_w + ix])
                    : acc_t(0);
    }
    __syncthreads();
    // pass 1: output row oy of every staged column
    for (int t = tid; t < kTileH * tile_in_w; t += threads) {
      const int dy = t / tile_in_w, c = t % tile_in_w, oy = oy0 + dy;
      acc_t acc = 0;
      if (oy < out_h) {
        for (int i = 0; i < kh; ++i) {
          const int uy = oy * down_y + i - pad_y0;
          if (uy < 0 || uy % up_y != 0) continue;
          const int iy = uy / up_y;
          if (iy >= in_h) continue;
          acc += tile[(iy - in_y0) * tile_in_w + c] * taps_y[i];
        }
      }
      mid[t] = acc;
    }
    __syncthreads();
    // pass 2: the row filter on the column-filtered rows
    scalar_t* dst = y + plane * out_h * out_w;
    for (int dy = threadIdx.y; dy < kTileH; dy += blockDim.y) {
      const int oy = oy0 + dy;
      if (oy >= out_h) break;
      const acc_t* row = mid + dy * tile_in_w;
      for (int dx = threadIdx.x; dx < kTileW; dx += blockDim.x) {
        const int ox = ox0 + dx;
        if (ox >= out_w) break;
        acc_t acc = 0;
        for (int j = 0; j < kw; ++j) {
          const int ux = ox * down_x + j - pad_x0;
          if (ux < 0 || ux % up_x != 0) continue;
          const int ix = ux / up_x;
          if (ix >= in_w) continue;
          acc += row[ix - in_x0] * taps_x[j];
        }
        dst[static_cast<int64_t>(oy) * out_w + ox] = static_cast<scalar_t>(acc);
      }
    }
  }
}

// Input rows (or columns) a tile of `tile` outputs reads: from the first to the last sample its taps can land on.
int64_t staged_extent(int64_t tile, int64_t down, int64_t k, int64_t up) { return ((tile - 1) * down + k - 1) / up + 2; }

}  // namespace

// variant: 0 = the tiled kernel where its shared memory fits, else the direct one; 1 = direct; 2 = tiled (error if it
// does not fit).
at::Tensor upfirdn2d_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                          int64_t pad_y1, int64_t variant) {
  const at::cuda::OptionalCUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor kernel = kernel_in.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t out_h = (in_h * up_y + pad_y0 + pad_y1 - kh) / down_y + 1;
  const int64_t out_w = (in_w * up_x + pad_x0 + pad_x1 - kw) / down_x + 1;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(in_h * up_y + std::abs(pad_y0) + kh < kIntMax && in_w * up_x + std::abs(pad_x0) + kw < kIntMax &&
                  out_h * down_y < kIntMax && out_w * down_x < kIntMax,
              "upfirdn2d: spatial size too large");

  at::Tensor y = at::empty({batch, channels, out_h, out_w}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t tile_in_h = staged_extent(kTileH, down_y, kh, up_y), tile_in_w = staged_extent(kTileW, down_x, kw, up_x);
  const int64_t acc_bytes = x.scalar_type() == at::kDouble ? 8 : 4;
  const int64_t smem = (kh * kw + tile_in_h * tile_in_w) * acc_bytes;
  const bool tiled_fits = smem <= 48 * 1024;
  TORCH_CHECK(variant >= 0 && variant <= 2, "upfirdn2d: variant must be 0, 1 or 2");
  TORCH_CHECK(variant != 2 || tiled_fits, "upfirdn2d: the tiled kernel's shared memory does not fit");
  if (variant == 2 || (variant == 0 && tiled_fits)) {
    const int64_t tiles = ((out_h + kTileH - 1) / kTileH) * ((out_w + kTileW - 1) / kTileW);
    TORCH_CHECK(tiles < kIntMax, "upfirdn2d: too many tiles");
    const dim3 block(32, 8);
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(batch * channels, 65535)));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_tiled_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      TORCH_CHECK(kernel.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "upfirdn2d: wrong kernel dtype");
      upfirdn2d_tiled_kernel<scalar_t, acc_t><<<grid, block, static_cast<size_t>(smem), stream>>>(
          x.data_ptr<scalar_t>(), kernel.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), batch * channels,
          static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h), static_cast<int>(out_w),
          static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(up_x), static_cast<int>(up_y),
          static_cast<int>(down_x), static_cast<int>(down_y), static_cast<int>(pad_x0), static_cast<int>(pad_y0),
          static_cast<int>(tile_in_h), static_cast<int>(tile_in_w));
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
        x.data_ptr<scalar_t>(), kernel.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), batch * channels,
        static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h), static_cast<int>(out_w),
        static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(up_x), static_cast<int>(up_y),
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
  const int64_t batch = x.size(0), channels = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t kh = ky.size(0), kw = kx.size(0);
  const int64_t out_h = (in_h * up_y + pad_y0 + pad_y1 - kh) / down_y + 1;
  const int64_t out_w = (in_w * up_x + pad_x0 + pad_x1 - kw) / down_x + 1;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(in_h * up_y + std::abs(pad_y0) + kh < kIntMax && in_w * up_x + std::abs(pad_x0) + kw < kIntMax &&
                  out_h * down_y < kIntMax && out_w * down_x < kIntMax,
              "upfirdn2d: spatial size too large");
  at::Tensor y = at::empty({batch, channels, out_h, out_w}, x.options());
  if (y.numel() == 0) return y;
  const int64_t tile_in_h = staged_extent(kTileH, down_y, kh, up_y), tile_in_w = staged_extent(kTileW, down_x, kw, up_x);
  const int64_t acc_bytes = x.scalar_type() == at::kDouble ? 8 : 4;
  const int64_t smem = (kh + kw + tile_in_h * tile_in_w + kTileH * tile_in_w) * acc_bytes;
  if (smem > 48 * 1024) {
    return upfirdn2d_cuda(x, at::outer(ky, kx), up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, variant);
  }
  const int64_t tiles = ((out_h + kTileH - 1) / kTileH) * ((out_w + kTileW - 1) / kTileW);
  TORCH_CHECK(tiles < kIntMax, "upfirdn2d: too many tiles");
  const dim3 block(32, 8);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(batch * channels, 65535)));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_separable_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(ky.scalar_type() == c10::CppTypeToScalarType<acc_t>::value &&
                    kx.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "upfirdn2d: wrong kernel dtype");
    upfirdn2d_separable_kernel<scalar_t, acc_t><<<grid, block, static_cast<size_t>(smem), stream>>>(
        x.data_ptr<scalar_t>(), ky.data_ptr<acc_t>(), kx.data_ptr<acc_t>(), y.data_ptr<scalar_t>(),
        batch * channels, static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h),
        static_cast<int>(out_w), static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(up_x),
        static_cast<int>(up_y), static_cast<int>(down_x), static_cast<int>(down_y), static_cast<int>(pad_x0),
        static_cast<int>(pad_y0), static_cast<int>(tile_in_h), static_cast<int>(tile_in_w));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}
