"""`gie benchmark`: every inversion method on the same images, quality (L2, PSNR, SSIM, MS-SSIM, LPIPS, ArcFace
identity, FID, and on the synthetic world attribute, OOD-region and edit ground-truth errors) and speed in one run.

Modules: :mod:`~gie_cli.benchmark.data` (the images), :mod:`~gie_cli.benchmark.metrics` (the metric set and its
definitions), :mod:`~gie_cli.benchmark.world` (the world's ground truth), :mod:`~gie_cli.benchmark.runner` (one
method: timings, memory, metrics) and :mod:`~gie_cli.benchmark.report` (environment, JSON, markdown, tables).
"""
