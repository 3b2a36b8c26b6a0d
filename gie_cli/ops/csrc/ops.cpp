// Python bindings and argument checks for gie's StyleGAN2 (Karras et al. 2020) CUDA ops.
// The kernels themselves live in upfirdn2d_kernel.cu and bias_act_kernel.cu (written for gie, MIT licence).

#include <torch/extension.h>

// Defined in the .cu files.
at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t up_x, int64_t up_y, int64_t down_x,
                          int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                          int64_t variant);
at::Tensor upfirdn2d_separable_cuda(const at::Tensor& x, const at::Tensor& ky, const at::Tensor& kx, int64_t up_x,
                                    int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                                    int64_t pad_y0, int64_t pad_y1, int64_t variant);
at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& bias, double negative_slope, double scale);

// y = upfirdn2d(x, kernel): x [B, C, H, W] (float/double/half/bfloat16), kernel [kh, kw] float32 (float64 for
// double x). Returns [B, C, out_h, out_w] with out_h = (H*up_y + pad_y0 + pad_y1 - kh) / down_y + 1 (same for w).
// variant: 0 = the tiled kernel where it fits, else the direct one; 1 = direct; 2 = tiled.
static torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x, int64_t up_y,
                               int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                               int64_t pad_y1, int64_t variant) {
  TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
  TORCH_CHECK(kernel.device() == x.device(), "upfirdn2d: kernel must be on the device of x");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [B, C, H, W]");
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be [kh, kw]");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(kernel.scalar_type() == acc, "upfirdn2d: kernel must be float32 (float64 for float64 x)");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up/down must be >= 1");
  TORCH_CHECK(x.size(2) * up_y + pad_y0 + pad_y1 >= kernel.size(0) &&
                  x.size(3) * up_x + pad_x0 + pad_x1 >= kernel.size(1),
              "upfirdn2d: empty output");
  return upfirdn2d_cuda(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, variant);
}

// y = upfirdn2d(x, outer(ky, kx)) with the separable kernel: ky [kh], kx [kw] float32 (float64 for double x).
// variant: the 2-D kernel choice (as for upfirdn2d) where the separable kernel's shared memory does not fit.
static torch::Tensor upfirdn2d_separable(const torch::Tensor& x, const torch::Tensor& ky, const torch::Tensor& kx,
                                         int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                                         int64_t pad_x1, int64_t pad_y0, int64_t pad_y1, int64_t variant) {
  TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
  TORCH_CHECK(ky.device() == x.device() && kx.device() == x.device(), "upfirdn2d: taps must be on the device of x");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [B, C, H, W]");
  TORCH_CHECK(ky.dim() == 1 && kx.dim() == 1, "upfirdn2d: separable taps must be [kh] and [kw]");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(ky.scalar_type() == acc && kx.scalar_type() == acc,
              "upfirdn2d: taps must be float32 (float64 for float64 x)");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up/down must be >= 1");
  TORCH_CHECK(x.size(2) * up_y + pad_y0 + pad_y1 >= ky.size(0) && x.size(3) * up_x + pad_x0 + pad_x1 >= kx.size(0),
              "upfirdn2d: empty output");
  return upfirdn2d_separable_cuda(x, ky, kx, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, variant);
}

// y = leaky_relu(x + bias, negative_slope) * scale, bias [C] broadcast on dim 1 (or empty for no bias).
static torch::Tensor bias_act(const torch::Tensor& x, const torch::Tensor& bias, double negative_slope, double scale) {
  TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() >= 2, "bias_act: x must be [B, C, ...]");
  if (bias.numel() > 0) {
    TORCH_CHECK(bias.device() == x.device(), "bias_act: bias must be on the device of x");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(1), "bias_act: bias must be [C]");
    TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "bias_act: bias must have the dtype of x");
  }
  return bias_act_cuda(x, bias, negative_slope, scale);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d, "upsample, FIR filter, downsample (CUDA)");
  m.def("upfirdn2d_separable", &upfirdn2d_separable, "upfirdn2d with an outer-product kernel, two 1-D passes (CUDA)");
  m.def("bias_act", &bias_act, "bias + leaky ReLU + gain (CUDA)");
}
