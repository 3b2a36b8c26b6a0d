"""The issue-16 zoo test's checks (tests/test_zoo.py) run on the world.gradstyle shipped before issue 16.

The old checkpoint is read from git (commit 964c26a) and loaded through a shim that reproduces its Aligner exactly
(keys from the residual, no skip path, an output bias). Prints per stage the relative L1 error of the Aligner's output
and of the warped residual, |Aligner(0, f)|, and the Editing Stream's zero-edit PSNR against the reconstruction's.

Usage: python benchmarks/gradstyle_old_model.py   (in a git checkout of gie)
"""

import pathlib
import subprocess

import torch
from torch import nn

from gie_cli.benchmark.data import synthface_data
from gie_cli.methods.gradstyle.method import GradStyleMethod
from gie_cli.methods.gradstyle.modules import GradStyleNet
from gie_cli.models.loading import build_encoder, build_generator, wplus_average
from gie_cli.ops.warp import random_perspective
from gie_cli.weights import load_components

OLD = "964c26a:gie_cli/zoo/world-gradstyle.safetensors"
blob = subprocess.run(["git", "show", OLD], capture_output=True, check=True).stdout
tmp = pathlib.Path("gie_cli/zoo/_old-gradstyle.safetensors")
tmp.write_bytes(blob)
try:
    comp = load_components(str(tmp))
finally:
    tmp.unlink()
cfg = dict(comp.config["gradstyle"])
cfg["aligner_keys"] = "residual"
net = GradStyleNet(**cfg)
sd = {k: v.float() for k, v in comp.part("gradstyle").items()}
missing = net.load_state_dict({k: v for k, v in sd.items() if not k.endswith("out.bias")}, strict=False).missing_keys
assert all(k.endswith("keep.weight") for k in missing), missing
for k, g in net.gam.items():
    g.keep.weight.data.zero_()
    lin = nn.Linear(g.out.in_features, g.out.out_features)
    lin.weight.data.copy_(sd[f"gam.{k}.out.weight"])
    lin.bias.data.copy_(sd[f"gam.{k}.out.bias"])
    g.out = lin
g = build_generator(comp)
enc, ecfg = build_encoder(comp, "e4e")
m = GradStyleMethod(g, enc, wplus_average(comp, g).float(), ecfg, net).eval()
x = synthface_data(16, 64, seed=321).images
src, dst = random_perspective(len(x), 0.15, torch.Generator().manual_seed(5))


def psnr(a: torch.Tensor) -> float:
    return float((10 * torch.log10(4 / (a.clamp(-1, 1) - x).square().flatten(1).mean(1))).mean())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


with torch.no_grad():
    probe = m.probe_alignment(x, src, dst)
    for stage, e in probe.stages.items():
        a, u = float(e["aligned"].mean()), float(e["unaligned"].mean())
        print(f"{stage}: aligned {a:.3f} unaligned {u:.3f} -> {verdict(a < u)}")
    inv = m.invert(x)
    res = m.stored_residuals(inv)
    srcs = m.source_features(inv.wplus, res)
    for s in net.stages:
        z = float(
            net.gam[str(s.layer)](torch.zeros_like(res[s.layer]).float(), srcs[s.layer], srcs[s.layer]).abs().max()
        )
        print(f"layer {s.layer}: |Aligner(0, f)| max {z:.4f} -> {verdict(z == 0)}")
    zero, rec = psnr(probe.zero_edit), psnr(m.render(inv))
    print(f"zero edit {zero:.2f} dB vs reconstruction {rec:.2f} dB -> {verdict(zero > rec - 0.5)}")
