"""Edit sessions: latent files in, every planned (direction, power) rendered by the method that made each latent."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gie_cli.editing.binding import check_generator, generator_fingerprint, pick_for_generator
from gie_cli.editing.direction import Direction
from gie_cli.editing.edit import Edit, render_edit
from gie_cli.editing.library import load_direction_candidates
from gie_cli.errors import GieError, UsageError
from gie_cli.methods import (
    EDIT_MASK_KEY,
    Inversion,
    InversionMethod,
    NonFiniteError,
    create_method,
    nonfinite,
    nonfinite_parts,
    nonfinite_reason,
)

if TYPE_CHECKING:
    from PIL.Image import Image


log = logging.getLogger(__name__)


#: a power further than this many times the largest end of a direction's recommended range from zero warns.
FAR_OUTSIDE = 2.0


def far_powers(direction: Direction, powers: Sequence[float], factor: float = FAR_OUTSIDE) -> list[float]:
    """The ``powers`` far outside ``direction``'s recommended range: ``|p| > factor * max(|low|, |high|)``.

    The recommended range is where the direction was fitted or documented (world directions: the attribute change on
    the [-1, 1] scale the regression was fitted on; official files: the range their authors give); far outside it
    the edit leaves the generator's domain and renders saturated images. A direction without a range gives none.
    """
    if not direction.power_range:
        return []
    reach = factor * max(abs(direction.power_range[0]), abs(direction.power_range[1]))
    return [p for p in powers if abs(p) > reach] if reach > 0 else []


def format_power(power: float) -> str:
    """Signed short form used in file names: ``3 -> "+3"``, ``-1.5 -> "-1.5"``, ``0 -> "+0"``."""
    return f"{power:+g}"


def edit_key(name: str, power: float) -> str:
    """The key of one edit in outputs and records: ``smile+3``, ``age-1.5``."""
    return f"{name}{format_power(power)}"


@dataclass
class ReferenceEdit:
    """A reference-based edit (Style Transformer): ``attribute`` taken from the face in ``image``.

    Attributes:
        attribute: the editing transformer's attribute.
        image: the reference face (an aligned crop, inverted by each latent's own method).
        powers: edit powers (1 = the transformer's edit, 0 = none).
    """

    attribute: str
    image: Path
    powers: list[float]

    @property
    def name(self) -> str:
        """The name in output keys: ``<attribute>-ref``."""
        return f"{self.attribute}-ref"


@dataclass
class EditPlan:
    """The directions to apply and their powers, with every same-named direction file for other generators.

    Attributes:
        entries: ``(direction, powers)`` per requested direction, in order (the search-path winner of each name).
        candidates: direction name -> the same-named directions on the search path (first = ``entries``' one).
        references: reference-based edits, after the directions.
    """

    entries: list[tuple[Direction, list[float]]]
    candidates: dict[str, list[Direction]] = field(default_factory=dict)
    references: list[ReferenceEdit] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        directions: Sequence[str],
        powers: Sequence[float] = (),
        extra: Sequence[Direction] = (),
        references: Sequence[ReferenceEdit] = (),
    ) -> EditPlan:
        """Load directions by name or path and pair each with ``powers`` (default: the ends of its recommended range).

        Args:
            directions: direction names or files.
            powers: the powers of every direction.
            extra: directions made for this run (label edits of ``--classifier``), after the named ones.
            references: reference-based edits (their own powers).

        Raises:
            UsageError: no edit, a direction not found, repeated names, or no powers for a direction.
        """
        if not directions and not extra and not references:
            raise UsageError(
                "no direction given",
                hint="see `gie directions list`, or edit with --classifier or --reference",
                param="direction",
            )
        candidates = [load_direction_candidates(d) for d in directions] + [[d] for d in extra]
        names = [c[0].name for c in candidates]
        if len(set(names)) != len(names):
            raise UsageError(f"direction names repeat: {', '.join(names)}", param="direction")
        entries = []
        for d in (c[0] for c in candidates):
            ps = list(powers) or (list(dict.fromkeys(d.power_range)) if d.power_range else [])
            if not ps:
                raise UsageError(
                    f"direction {d.name} has no recommended power range", hint="give the powers", param="power"
                )
            far = far_powers(d, ps)
            if far:  # once per direction, before any item runs
                lo, hi = d.power_range or (0.0, 0.0)
                log.warning(
                    "direction %s: power %s is far outside its recommended range [%g, %g]; expect a saturated "
                    "image that no longer resembles the face",
                    d.name,
                    ", ".join(f"{p:g}" for p in far),
                    lo,
                    hi,
                )
            entries.append((d, ps))
        return cls(entries, {c[0].name: c for c in candidates}, list(references))

    def keys(self) -> list[str]:
        """Every edit's key (:func:`edit_key`), in plan order."""
        keys = [edit_key(d.name, p) for d, ps in self.entries for p in ps]
        return keys + [edit_key(r.name, p) for r in self.references for p in r.powers]

    def __len__(self) -> int:
        return sum(len(ps) for _, ps in self.entries) + sum(len(r.powers) for r in self.references)


def label_directions(
    classifier: str, attributes: Sequence[str], target: float = 1.0, order: int = 2, xi: float = 1e-3
) -> list[Direction]:
    """Style Transformer's label-based edits (Hu et al. 2022) of ``attributes`` with a latent classifier, as
    ``label`` directions named ``<attribute>-label<order>`` (``-to<target>`` added when the target is not 1).

    Args:
        classifier: a classifier file or registry name (gie's, or an official ``LCNet_40`` checkpoint).
        attributes: attribute names (or indexes) of the classifier.
        target: target label in [0, 1] (1: more of the attribute, 0: less).
        order: 1 (first-order) or 2 (second-order) edit.
        xi: the second-order finite-difference step.

    Raises:
        UsageError: an unknown attribute, a bad target or order, or a file that is not a latent classifier.
    """
    from gie_cli.editing.binding import provenance
    from gie_cli.editing.fit import label_direction
    from gie_cli.editing.label import load_latent_classifier
    from gie_cli.weights import resolve_weights

    if order not in (1, 2):
        raise UsageError(f"--order must be 1 or 2, got {order}", param="order")
    path = resolve_weights(classifier, method="label editing", what="a latent classifier")
    clf = load_latent_classifier(path)
    binding = dict(clf.generator)
    if not binding.get("n_latent"):  # an official LCNet_40 file: no generator record; W+ rows of 512
        binding = {"id": Path(path).name, "fingerprint": None, "style_dim": 512, "n_latent": clf.fmaps[0] // 512}
    suffix = "" if target == 1.0 else "-to" + f"{target:g}".replace(".", "p")
    out = []
    for a in attributes:
        try:
            idx = clf.attribute_index(a)
        except ValueError as e:
            raise UsageError(f"{path}: {e}", param="attribute", value=a) from None
        name = (clf.attributes[idx] if clf.attributes else f"attr{idx}").replace(" ", "_")
        prov = provenance(f"label[order={order}]", source=str(path))
        out.append(label_direction(f"{name}-label{order}{suffix}", clf, idx, binding, prov, target, order, xi))
    return out


@dataclass
class EditResult:
    """The edits of one latent file.

    Attributes:
        latent: the latent file.
        meta: its record (method, weights, alignment, ...).
        images: edit key (:func:`edit_key`) -> edited image, in plan order.
        rows: per direction, its edited images in power order (grid rows).
        reconstruction: the unedited render, when asked for.
        info: what the manifest records: method, weights, per direction its space, powers and generator id.
        timings_ms: ``load`` (latent, method, checks) and ``render``.
    """

    latent: Path
    meta: dict[str, Any]
    images: dict[str, Image]
    rows: list[list[Image]]
    reconstruction: Image | None
    info: dict[str, Any]
    timings_ms: dict[str, float]


class EditSession:
    """Edits latent files along a plan: rebuilds each latent's method from its record (once per method, weights and
    settings), resolves every direction name for that method's generator and checks the binding once per generator,
    and renders each direction's powers in batches through the method's own editing path.

    Args:
        plan: the directions and powers.
        device: where methods run.
        dtype: the methods' precision.
        weights: a checkpoint overriding the one each latent records.
        force: apply directions bound to another generator (same shapes) anyway, with a warning.
        batch_size: edits rendered per batch.
        editor: the editing transformer of the plan's reference edits.
        mask: masked editing (methods with ``accepts_edit_mask``, SFE): ``landmarks`` (from each latent's alignment
            record), a mask image for every latent, or a folder of ``NAME.mask.png``; None = no mask.
    """

    def __init__(
        self,
        plan: EditPlan,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        weights: str | None = None,
        force: bool = False,
        batch_size: int = 4,
        editor: torch.nn.Module | None = None,
        mask: str | None = None,
    ) -> None:
        self.plan, self.device, self.dtype = plan, device, dtype
        self.mask = mask
        self.weights, self.force, self.batch_size = weights, force, batch_size
        if plan.references and editor is None:
            raise UsageError("reference edits need an editing transformer", param="editor")
        self.editor = editor.to(device) if editor is not None else None
        self._reference_codes: dict[tuple, torch.Tensor] = {}
        self._methods: dict[tuple, tuple[InversionMethod, str] | GieError] = {}  # key -> (method, fingerprint)
        self._checked: dict[tuple, GieError | None] = {}
        self._picked: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------------------------------- methods
    def method_for(self, meta: dict[str, Any], source: Path) -> tuple[InversionMethod, tuple, str]:
        """The method that made a latent, built once per (method, weights, settings).

        Args:
            meta: the latent's record.
            source: the latent file (for messages).

        Returns:
            ``(method, cache key, generator fingerprint)``.

        The record decides (unless the session has ``weights``): the method is ``meta["method"]`` with the file
        ``meta["weights_path"]``, and the weights it gives must be ``meta["weights"]`` (file name and sha256 prefix).
        A record without a path is built with the method's embedded default only when that default *is* the recorded
        weights; never silently with another model.

        Raises:
            UsageError: the record names no method, weights that do not exist, or weights that cannot be resolved
                (no path and not the embedded default; the message names them).
            GieError: building the method failed (remembered: later latents of that method fail the same way).
        """
        name = meta.get("method")
        if not name:
            raise UsageError(f"{source}: the latent file records no method", hint="re-run `gie invert`")
        recorded = meta.get("weights_path") or ""
        recorded_id = str(meta.get("weights") or "")
        path = self.weights or recorded
        if not self.weights and recorded and not Path(recorded).exists():
            raise UsageError(
                f"{source}: the recorded weights {recorded_id or recorded} ({recorded}) do not exist",
                hint=f"pass the {name} checkpoint with --weights",
                param="weights",
            )
        opts = {str(k): str(v) for k, v in (meta.get("method_options") or {}).items()}
        key = (name, path, tuple(sorted(opts.items())))
        hit = self._methods.get(key)
        if isinstance(hit, GieError):
            raise hit
        if hit is None:
            try:
                method = create_method(name, path or None, self.device, **opts)
            except GieError as e:
                self._methods[key] = e
                raise
            fp = generator_fingerprint(method.generator)  # in fp32, before any dtype cast
            if self.dtype != method.generator.dtype:
                method = method.to(self.dtype)
            if self.weights and meta.get("weights") and method.weights_id != meta["weights"]:
                log.warning("%s was inverted with %s; editing with %s", source, meta["weights"], method.weights_id)
            log.info("method %s, weights %s", name, method.weights_id)
            hit = self._methods[key] = (method, fp)
        if not self.weights and recorded_id and hit[0].weights_id != recorded_id:
            where = f"the file {recorded} now holds" if recorded else "the record has no weights_path; the default is"
            raise UsageError(
                f"{source}: made by {name} with weights {recorded_id}, which cannot be resolved ({where} "
                f"{hit[0].weights_id})",
                hint=f"pass the checkpoint of {recorded_id} with --weights",
                param="weights",
            )
        return hit[0], key, hit[1]

    # ------------------------------------------------------------------------------------------- directions
    def plan_for(self, fingerprint: str) -> list[tuple[Direction, list[float]]]:
        """The plan with each direction name resolved for the generator ``fingerprint`` (a same-named file bound to
        it wins)."""
        out = []
        for d, ps in self.plan.entries:
            chosen = pick_for_generator(self.plan.candidates.get(d.name, [d]), fingerprint)
            if chosen is not d and (d.name, fingerprint) not in self._picked:
                self._picked.add((d.name, fingerprint))
                log.info("direction %s: using %s (bound to this generator)", d.name, chosen.path or d.name)
            out.append((chosen, ps))
        return out

    def check(self, direction: Direction, method: InversionMethod, key: tuple, fingerprint: str) -> None:
        """:func:`~gie_cli.editing.binding.check_generator`, once per (method, direction); its outcome is remembered.

        Raises:
            DirectionError: the direction does not fit the method's generator.
        """
        ck = (key, direction.name)
        if ck not in self._checked:
            try:
                check_generator(direction, method.generator, self.force, fingerprint)
                self._checked[ck] = None
            except GieError as e:
                self._checked[ck] = e
        err = self._checked[ck]
        if err is not None:
            raise err

    # ------------------------------------------------------------------------------------------- one latent
    def edit(self, latent: Path, reconstruction: bool = False, batch_size: int | None = None) -> EditResult:
        """Render every planned edit of one latent file.

        Args:
            latent: a latent file of ``gie invert`` (W+ ``[1, n_latent, D]`` plus the method's extras).
            reconstruction: also render the unedited image (for grids).
            batch_size: edits rendered per batch (default: the session's); a caller lowers it after running out of
                memory.

        Returns:
            The edited images and what to record.

        Raises:
            GieError: the latent, its method or a direction cannot be used (this latent fails; others may not).
        """
        from gie_cli.io.images import tensor_to_image
        from gie_cli.io.latents import load_latent

        t0 = time.perf_counter()
        wplus, extras, meta = load_latent(latent)
        bad = nonfinite_parts(Inversion(wplus, extras))
        if bad:
            raise NonFiniteError(f"the latent holds NaN/Inf values ({', '.join(bad)})", hint="invert the image again")
        method, key, fp = self.method_for(meta, latent)
        g = method.generator
        if tuple(wplus.shape[1:]) != (g.n_latent, g.style_dim):
            raise UsageError(
                f"latent W+ is {list(wplus.shape[1:])}, the method's generator takes [{g.n_latent}, {g.style_dim}]"
            )
        plan = self.plan_for(fp)
        for d, _ in plan:
            self.check(d, method, key, fp)
        mask_info = None
        if self.mask:
            extras[EDIT_MASK_KEY], mask_info = self.edit_mask(method, latent, meta)
        t_load = time.perf_counter()
        inv = Inversion(wplus, extras).to(self.device, self.dtype)
        images: dict[str, Image] = {}
        rows: list[list[Image]] = []
        with torch.no_grad():
            recon = None
            if reconstruction:
                rendered = method.render(inv)[0].float().cpu()
                if nonfinite(rendered):
                    raise NonFiniteError(nonfinite_reason(method, "the reconstruction"))
                recon = tensor_to_image(rendered)
            for d, ps in plan:
                row = [tensor_to_image(img) for img in self._render_powers(method, inv, d, ps, batch_size)]
                images.update({edit_key(d.name, p): img for p, img in zip(ps, row, strict=True)})
                rows.append(row)
            for r in self.plan.references:
                row = [tensor_to_image(img) for img in self._render_reference(method, key, fp, inv, r, batch_size)]
                images.update({edit_key(r.name, p): img for p, img in zip(r.powers, row, strict=True)})
                rows.append(row)
        t_render = time.perf_counter()
        info = {
            "method": meta.get("method"),
            "weights": method.weights_id,
            "directions": {
                d.name: {"space": d.space, "powers": ps, "generator": (d.generator or {}).get("id")} for d, ps in plan
            },
        }
        if mask_info is not None:
            info["mask"] = mask_info
        if self.plan.references:
            info["references"] = {
                r.name: {"image": str(r.image), "attribute": r.attribute, "powers": r.powers}
                for r in self.plan.references
            }
        timings = {"load": (t_load - t0) * 1000, "render": (t_render - t_load) * 1000}
        return EditResult(latent, meta, images, rows, recon, info, timings)

    def edit_mask(self, method: InversionMethod, latent: Path, meta: dict[str, Any]) -> tuple[torch.Tensor, str]:
        """The edit mask ``[1, 1, S, S]`` of one latent (S = the generator's size) and where it came from.

        Raises:
            UsageError: the method has no masked editing, or the mask is missing or unreadable (naming the fix).
        """
        from gie_cli.alignment.face_mask import face_mask_from_align_record, load_mask_file
        from gie_cli.alignment.sidecar import read_align_meta
        from gie_cli.io.latents import LATENT_SUFFIX

        if not method.accepts_edit_mask:
            raise UsageError(
                f"--mask: {latent.name} was inverted with {method.name}, which has no masked editing",
                hint="masked editing is SFE's (invert with --method sfe), or drop --mask",
            )
        size = method.generator.size
        if self.mask == "landmarks":
            record = find_align_record(latent, meta)
            if record is None:
                raise UsageError(
                    f"--mask landmarks: no alignment record for {latent.name}",
                    hint="invert photos aligned by gie (NAME.align.json), or pass a mask image/folder",
                )
            rec = record if isinstance(record, dict) else read_align_meta(record)
            m, source = (
                face_mask_from_align_record(rec, size),
                f"landmarks ({record if isinstance(record, Path) else 'latent meta'})",
            )
        else:
            path = Path(self.mask)
            if path.is_dir():
                path = path / f"{latent.name.removesuffix(LATENT_SUFFIX)}.mask.png"
            m, source = load_mask_file(path, size), str(path)
        return torch.as_tensor(m, dtype=torch.float32)[None, None], source

    def _render_powers(
        self,
        method: InversionMethod,
        inv: Inversion,
        direction: Direction,
        powers: Sequence[float],
        batch_size: int | None = None,
    ) -> list[torch.Tensor]:
        """``direction`` at each of ``powers`` on a one-item inversion, in batches of ``batch_size`` (default: the
        session's): ``[3, S, S]`` float32 CPU each.

        Raises:
            NonFiniteError: an edited image holds NaN/Inf; the reason names the cause (the power, the weights).
        """
        bs = max(1, batch_size or self.batch_size)
        edit = Edit.cat([direction.apply(p, inv.wplus) for p in powers])
        out: list[torch.Tensor] = []
        for i in range(0, len(powers), bs):
            chunk = edit.select(i, i + bs)
            images = render_edit(method, Inversion.stack([inv] * len(chunk)), chunk).float().cpu()
            for j, img in enumerate(images):
                if nonfinite(img):
                    raise NonFiniteError(self._edit_nonfinite(method, inv, direction, powers[i + j]))
            out.extend(images)
        return out

    def _reference_code(self, method: InversionMethod, key: tuple, fingerprint: str, image: Path) -> torch.Tensor:
        """The W+ code ``[1, n_latent, D]`` of a reference face, inverted once per method; the editing transformer's
        generator is checked against the method's.

        Raises:
            DirectionError: the editing transformer was trained for another generator (without ``force``).
            GieError: the reference image cannot be read.
        """
        from gie_cli.editing.errors import DirectionError
        from gie_cli.io.images import image_to_tensor, load_image

        ck = (key, str(image))
        if ck not in self._reference_codes:
            bound = (self.editor.generator or {}).get("fingerprint")
            if bound and bound != fingerprint:
                made = self.editor.generator.get("id") or "another generator"
                if not self.force:
                    raise DirectionError(
                        f"the editing transformer was trained for {made}, not this method's generator",
                        hint="train one for it (gie train --method edit_transformer) or pass --force",
                    )
                log.warning("editing transformer trained for %s: applied to another generator (--force)", made)
            x = image_to_tensor(load_image(image))[None].to(self.device, self.dtype)
            with torch.no_grad():
                self._reference_codes[ck] = method.invert(x).wplus.float()
        return self._reference_codes[ck]

    def _render_reference(
        self,
        method: InversionMethod,
        key: tuple,
        fingerprint: str,
        inv: Inversion,
        ref: ReferenceEdit,
        batch_size: int | None = None,
    ) -> list[torch.Tensor]:
        """A reference edit at each of its powers on a one-item inversion (as :meth:`_render_powers`).

        Raises:
            NonFiniteError: an edited image holds NaN/Inf.
        """
        assert self.editor is not None
        wr = self._reference_code(method, key, fingerprint, ref.image)
        k = self.editor.attribute_index(ref.attribute)
        ws = inv.wplus.float()
        deltas = torch.cat([self.editor.offset(ws, wr, k, p) for p in ref.powers]).to(inv.wplus.dtype)
        bs = max(1, batch_size or self.batch_size)
        out: list[torch.Tensor] = []
        for i in range(0, len(ref.powers), bs):
            chunk = Edit(deltas[i : i + bs])
            images = render_edit(method, Inversion.stack([inv] * len(chunk)), chunk).float().cpu()
            for j, img in enumerate(images):
                if nonfinite(img):
                    what = f"the edit {edit_key(ref.name, ref.powers[i + j])}"
                    raise NonFiniteError(f"{what} is not finite (NaN/Inf)", hint="use a smaller power")
            out.extend(images)
        return out

    @staticmethod
    def _edit_nonfinite(method: InversionMethod, inv: Inversion, direction: Direction, power: float) -> str:
        """Why ``direction`` at ``power`` rendered NaN/Inf: the weights, else the power when the unedited render is
        finite (or the edit offset itself overflows), else the method."""
        what = f"the edit {edit_key(direction.name, power)}"
        if method.nonfinite_weights():
            return nonfinite_reason(method, what)
        edit = direction.apply(power, inv.wplus)
        offsets = [edit.delta, *edit.style_offsets.values()]
        if any(nonfinite(t) for t in offsets) or not nonfinite(method.render(inv)):
            rng = direction.power_range
            hint = f"its recommended range is [{rng[0]:g}, {rng[1]:g}]" if rng else "use a smaller power"
            return f"{what} is not finite (NaN/Inf): power {power:g} is too large for {direction.name}; {hint}"
        return nonfinite_reason(method, what)

    # ------------------------------------------------------------------------------------------- paste-back
    def paste_back(self, result: EditResult) -> tuple[dict[str, Image], str]:
        """Paste every edit of ``result`` into the photo of the latent's alignment record.

        Returns:
            ``(edit key -> pasted photo, the record used: its path or "latent meta")``.

        Raises:
            UsageError: no alignment record for the latent.
        """
        from gie_cli.alignment import paste_back, read_align_meta
        from gie_cli.io.images import load_image

        record = find_align_record(result.latent, result.meta)
        if record is None:
            raise UsageError(
                f"no alignment record for {result.latent} (looked for NAME.align.json beside it and beside its source "
                "image)",
                hint="align the photos with `gie align` first, or drop --paste-back",
            )
        am = read_align_meta(record) if isinstance(record, Path) else record
        photo = load_image(am["source"])
        pasted = {k: paste_back(img, am, photo) for k, img in result.images.items()}
        return pasted, str(record) if isinstance(record, Path) else "latent meta"


def find_align_record(latent: Path, meta: dict[str, Any]) -> Path | dict | None:
    """``meta["align"]`` (a record or a path), else ``NAME.align.json`` beside the latent, else beside its source."""
    from gie_cli.alignment import find_align_sidecar

    rec = meta.get("align")
    if isinstance(rec, dict):
        return rec
    if isinstance(rec, str) and Path(rec).is_file():
        return Path(rec)
    found = find_align_sidecar(latent)
    if found is None and meta.get("source"):
        found = find_align_sidecar(meta["source"])
    return found


def edit_grid(reconstruction: Image, rows: Sequence[Sequence[Image]], tile: int) -> Image:
    """One row per direction: the reconstruction, then the powers in order (``tile`` pixels per cell)."""
    from PIL import Image as PILImage

    cols = 1 + max(len(r) for r in rows)
    out = PILImage.new("RGB", (cols * tile, len(rows) * tile), "white")
    small = reconstruction.resize((tile, tile), PILImage.Resampling.LANCZOS)
    for y, row in enumerate(rows):
        out.paste(small, (0, y * tile))
        for x, img in enumerate(row, start=1):
            out.paste(img.resize((tile, tile), PILImage.Resampling.LANCZOS), (x * tile, y * tile))
    return out
