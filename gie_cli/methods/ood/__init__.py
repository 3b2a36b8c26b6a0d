"""OOD GAN inversion by invertibility decomposition (Yin et al., ICCV 2023): SAMM in the official layout."""

from gie_cli.methods.ood.modules import SAMM, AlignNet, SAMMBlock, SPMWarp

__all__ = ["SAMM", "AlignNet", "SAMMBlock", "SPMWarp"]
