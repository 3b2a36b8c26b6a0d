"""I/O layer: atomic writes, image loading/conversion and safe checkpoint reading/writing."""

from gie_cli.io.atomic import atomic_save_image, atomic_write, atomic_write_bytes, atomic_write_text
from gie_cli.io.checkpoint import (
    GIE_CONFIG_KEY,
    get_prefixed,
    latent_avg_as_wplus,
    load_safetensors,
    load_state_dict_strict,
    read_checkpoint,
    save_safetensors,
    strip_prefix,
)
from gie_cli.io.images import (
    ALPHA_POLICIES,
    IMAGE_SUFFIXES,
    batch_to_images,
    image_to_tensor,
    images_to_batch,
    iter_image_files,
    load_image,
    mask_to_image,
    sha256_file,
    tensor_to_image,
)

__all__ = [
    "ALPHA_POLICIES",
    "GIE_CONFIG_KEY",
    "IMAGE_SUFFIXES",
    "atomic_save_image",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "batch_to_images",
    "get_prefixed",
    "image_to_tensor",
    "images_to_batch",
    "iter_image_files",
    "latent_avg_as_wplus",
    "load_image",
    "load_safetensors",
    "load_state_dict_strict",
    "mask_to_image",
    "read_checkpoint",
    "save_safetensors",
    "sha256_file",
    "strip_prefix",
    "tensor_to_image",
]
