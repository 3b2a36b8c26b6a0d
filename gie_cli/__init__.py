"""gie: batch GAN inversion and attribute editing of face photos with StyleGAN2."""

__version__ = "0.1.0"
