"""Latent editing: direction files, official importers, fitting (InterFaceGAN, GANSpace, StyleSpace, label-based)."""

from gie_cli.editing.directions import (
    DIRECTION_SUFFIX,
    SPACES,
    Direction,
    DirectionError,
    Edit,
    apply,
    check_generator,
    find_direction,
    generator_binding,
    generator_fingerprint,
    list_directions,
    load_direction,
    render_edit,
    search_path,
    user_directions_dir,
)

__all__ = [
    "DIRECTION_SUFFIX",
    "SPACES",
    "Direction",
    "DirectionError",
    "Edit",
    "apply",
    "check_generator",
    "find_direction",
    "generator_binding",
    "generator_fingerprint",
    "list_directions",
    "load_direction",
    "render_edit",
    "search_path",
    "user_directions_dir",
]
