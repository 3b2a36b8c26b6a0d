"""Latent editing: direction files, edit spaces, generator binding, lookup, fitting and edit sessions."""

from gie_cli.editing.binding import (
    check_generator,
    generator_binding,
    generator_fingerprint,
    load_generator,
    pick_for_generator,
    provenance,
    weights_binding,
)
from gie_cli.editing.direction import DIRECTION_FORMAT, DIRECTION_SUFFIX, Direction, check_name
from gie_cli.editing.edit import Edit, render_edit
from gie_cli.editing.errors import DirectionError
from gie_cli.editing.library import (
    DIRECTIONS_PATH_ENV,
    find_direction,
    find_direction_candidates,
    list_directions,
    load_direction,
    load_direction_candidates,
    output_dir,
    read_direction_config,
    save_directions,
    search_path,
    shipped_directions_dirs,
    user_directions_dir,
)
from gie_cli.editing.session import EditPlan, EditResult, EditSession, edit_grid, edit_key, format_power
from gie_cli.editing.spaces import EDIT_SPACES, GANSPACE_MODES, SPACES, EditSpace, apply, edit_space

__all__ = [
    "DIRECTIONS_PATH_ENV",
    "DIRECTION_FORMAT",
    "DIRECTION_SUFFIX",
    "EDIT_SPACES",
    "GANSPACE_MODES",
    "SPACES",
    "Direction",
    "DirectionError",
    "Edit",
    "EditPlan",
    "EditResult",
    "EditSession",
    "EditSpace",
    "apply",
    "check_generator",
    "check_name",
    "edit_grid",
    "edit_key",
    "edit_space",
    "find_direction",
    "find_direction_candidates",
    "format_power",
    "generator_binding",
    "generator_fingerprint",
    "list_directions",
    "load_direction",
    "load_direction_candidates",
    "load_generator",
    "output_dir",
    "pick_for_generator",
    "provenance",
    "read_direction_config",
    "render_edit",
    "save_directions",
    "search_path",
    "shipped_directions_dirs",
    "user_directions_dir",
    "weights_binding",
]
