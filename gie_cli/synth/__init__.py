"""Synthetic face world: parameters, an antialiased renderer with ground truth, photos and datasets."""

from gie_cli.synth.dataset import WORLD_VERSION, write_dataset
from gie_cli.synth.geometry import ffhq_quad, points5_from_68
from gie_cli.synth.params import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    OOD_KINDS,
    AttributeSpec,
    FaceParams,
    OODObject,
    attribute_index,
    attribute_vector,
    clip_params,
    params_from_attribute_vector,
    sample_ood_object,
    sample_params,
)
from gie_cli.synth.photo import PhotoFace, PhotoResult, render_photo, sidecar_dict
from gie_cli.synth.render import RenderResult, default_supersample, render

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "OOD_KINDS",
    "WORLD_VERSION",
    "AttributeSpec",
    "FaceParams",
    "OODObject",
    "PhotoFace",
    "PhotoResult",
    "RenderResult",
    "attribute_index",
    "attribute_vector",
    "clip_params",
    "default_supersample",
    "ffhq_quad",
    "params_from_attribute_vector",
    "points5_from_68",
    "render",
    "render_photo",
    "sample_ood_object",
    "sample_params",
    "sidecar_dict",
    "write_dataset",
]
