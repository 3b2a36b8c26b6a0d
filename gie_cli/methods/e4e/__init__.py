"""pSp (Richardson et al., CVPR 2021) and e4e (Tov et al., SIGGRAPH 2021): the feed-forward W+ encoders that are gie's
baselines and the base encoder of several other methods.

- ``method``: the ``e4e`` and ``psp`` inversion methods and their checkpoint loader (official files load unchanged).
- ``train``: the ``e4e`` and ``psp`` trainers (``gie train``); never imported by inference code.
"""

from gie_cli.methods.e4e.method import EncoderMethod, load_encoder_method

__all__ = ["EncoderMethod", "load_encoder_method"]
