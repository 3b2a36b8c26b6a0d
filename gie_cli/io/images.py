"""Image loading with an explicit mode/alpha policy, tensor conversion, hashing and input discovery."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError, features

from gie_cli.errors import GieError, ImageLoadError, UsageError

__all__ = [
    "ALPHA_POLICIES",
    "IMAGE_SUFFIXES",
    "load_image",
    "image_size",
    "max_image_pixels",
    "image_to_tensor",
    "tensor_to_image",
    "mask_to_image",
    "images_to_batch",
    "batch_to_images",
    "sha256_file",
    "iter_image_files",
]

logger = logging.getLogger(__name__)

ALPHA_POLICIES: tuple[str, ...] = ("white", "black", "drop", "error")

# Suffixes picked up when scanning folders (compared case-insensitively). Files named explicitly are always used.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm",
) + ((".avif",) if features.check_module("avif") else ())  # fmt: skip

_HIGH_DEPTH_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


# ----------------------------------------------------------------------------------------------- loading


def load_image(path: str | Path, alpha: str = "white") -> Image.Image:
    """Loads an image file as an 8-bit RGB PIL image.

    The format is detected from the content (a PNG named ``.jpg`` loads fine). The file is opened read-only
    and fully decoded, so truncated or corrupt files fail here rather than later. EXIF orientation is applied.

    Mode policy: 1/L/P/RGBX/CMYK/YCbCr/LAB/HSV are converted to RGB; 16-bit grayscale (I;16*) is scaled from
    0..65535 to 0..255 (``v / 257``); 32-bit integer grayscale (I) is treated as 16-bit data when it lies in
    0..65535, otherwise min-max stretched; float grayscale (F) is taken as 0..1, 0..255 or 0..65535 by its range,
    otherwise min-max stretched. 16-bit RGB(A) PNGs are decoded to 8 bits by PIL itself. Images with an alpha
    channel (LA/PA/RGBA, palette or L/RGB with a transparency key) are handled by ``alpha``; a fully opaque
    alpha channel is simply dropped. Only the first frame of animated/multi-page files is used.

    Args:
        path: Image file.
        alpha: Alpha policy: ``"white"`` (composite over white), ``"black"`` (over black), ``"drop"`` (discard the
            alpha channel) or ``"error"`` (raise if any pixel is not fully opaque).

    Returns:
        A detached RGB image (mode ``"RGB"``, 8 bits per channel).

    Raises:
        UsageError: ``alpha`` is not a known policy.
        ImageLoadError: The file is missing, empty, not an image, truncated/corrupt, too large, has an
            unsupported mode, or has transparency with ``alpha="error"``.
    """
    if alpha not in ALPHA_POLICIES:
        raise UsageError(f"unknown alpha policy {alpha!r}", hint=f"use one of {', '.join(ALPHA_POLICIES)}")
    p = Path(path)
    _check_file(p)
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; treat that as an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:  # opens "rb"; the input is never written
                if Image.registered_extensions().get(p.suffix.lower()) != im.format:
                    logger.debug("%s: content is %s, whatever the suffix says", p, im.format)
                if getattr(im, "n_frames", 1) > 1:
                    logger.info("%s has %d frames; using the first", p, im.n_frames)
                im.load()  # full decode: truncation and corruption surface here
                img = _exif_transpose(im, p)
                out = _to_rgb(img, alpha, p)
                if out is im:  # never return the file-backed object
                    out = out.copy()
    except GieError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(p, f"image too large to decode safely ({_pixels_text(e)})", hint=_bomb_hint()) from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(p, "not an image file (format not recognised)", hint="pass JPEG, PNG or WebP files") from e
    except PermissionError as e:
        raise ImageLoadError(p, "permission denied") from e
    except FileNotFoundError as e:
        raise ImageLoadError(p, "file not found") from e
    except MemoryError as e:
        raise ImageLoadError(p, "not enough memory to decode the image") from e
    except Exception as e:  # PIL raises OSError/SyntaxError/EOFError/ValueError/struct.error for bad data
        raise ImageLoadError(
            p, f"truncated or corrupt image data ({type(e).__name__}: {e})", hint="re-export or re-download the file"
        ) from e
    return out


def max_image_pixels() -> int | None:
    """The largest image (in pixels) gie decodes: PIL's ``Image.MAX_IMAGE_PIXELS`` (gie keeps PIL's default,
    89,478,485 = 0.25 GiB of 24-bit RGB, and refuses anything larger instead of PIL's warn-up-to-twice-that);
    None when a caller disabled PIL's check."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else None


def _pixels_text(e: Exception) -> str:
    """``W x H = N megapixels, above the limit of M megapixels`` from PIL's message (its sizes), else its text."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(e))
    limit = max_image_pixels()
    if m is None or limit is None:
        return str(e)
    return f"{int(m.group(1)) / 1e6:.1f} megapixels, above gie's limit of {limit / 1e6:.1f} megapixels"


def _bomb_hint() -> str:
    limit = max_image_pixels()
    lim = f"{limit:,} pixels ({limit / 1e6:.1f} MP)" if limit else "PIL's limit"
    return (
        f"downscale it to at most {lim}, e.g. 8000x8000 at most (gie uses PIL's Image.MAX_IMAGE_PIXELS, "
        "unchanged); faces need far fewer pixels"
    )


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(W, H)`` from an image file's header (no decode), or None when it cannot be read as an image.

    PIL's ``DecompressionBombWarning`` for very large images is swallowed here (and an image over twice the limit
    gives None): :func:`load_image` reports them with gie's own message when the image is loaded.

    Args:
        path: Image file.

    Returns:
        The stored size (EXIF orientation not applied), or None.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - the loader reports unreadable files with its own message
        return None


def _check_file(p: Path) -> None:
    """Raises ImageLoadError unless ``p`` is an existing, non-empty regular file."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found") from None
    except OSError as e:
        raise ImageLoadError(p, f"cannot access file ({e.strerror or e})") from None
    if p.is_dir():
        raise ImageLoadError(p, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)", hint="re-export or re-download the file")


def _exif_transpose(im: Image.Image, p: Path) -> Image.Image:
    """Applies the EXIF orientation tag; malformed EXIF data is logged and ignored."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as e:  # broken EXIF should not make an otherwise good photo unusable
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", p, e)
        return im
    return im if out is None else out


def _to_rgb(img: Image.Image, alpha: str, p: Path) -> Image.Image:
    """Converts any supported mode to RGB following the documented mode and alpha policy."""
    if img.mode in _HIGH_DEPTH_GRAY:
        img = _high_depth_gray_to_8bit(img, p)
    mode = img.mode
    if mode in _ALPHA_MODES or (mode in _PLAIN_MODES and "transparency" in img.info):
        return _apply_alpha(img.convert("RGBA"), alpha, p)
    if mode == "RGB":
        return img
    if mode in _PLAIN_MODES:
        return img.convert("RGB")
    raise ImageLoadError(p, f"unsupported image mode {mode!r}", hint="convert it to an 8-bit RGB PNG or JPEG")


def _high_depth_gray_to_8bit(img: Image.Image, p: Path) -> Image.Image:
    """Scales 16/32-bit integer or float grayscale to an 8-bit "L" (or "LA" if a transparency key is set)."""
    arr = np.asarray(img)
    data = arr.astype(np.float64)
    if img.mode == "F":
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = data / 257.0
    elif img.mode == "I" and lo >= 0 and hi <= 65535:
        scaled = data / 257.0  # 16-bit data in a 32-bit container (e.g. 16-bit PGM/TIFF)
    elif img.mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = data * 255.0
    elif img.mode == "F" and lo >= 0 and hi <= 255.0:
        scaled = data
    elif img.mode == "F" and lo >= 0 and hi <= 65535.0:
        scaled = data / 257.0
    else:
        logger.warning("%s: %s values span %g..%g; stretching to 0..255", p, img.mode, lo, hi)
        scaled = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    trns = img.info.get("transparency")
    if isinstance(trns, int | float):
        mask = Image.fromarray(np.where(arr == trns, 0, 255).astype(np.uint8))
        gray = Image.merge("LA", (gray, mask))
    return gray


def _apply_alpha(rgba: Image.Image, alpha: str, p: Path) -> Image.Image:
    """Flattens an RGBA image to RGB according to the alpha policy."""
    lo, _ = rgba.getchannel("A").getextrema()
    if lo == 255 or alpha == "drop":
        return rgba.convert("RGB")
    if alpha == "error":
        raise ImageLoadError(
            p, "image has transparent pixels", hint="use alpha white, black or drop, or flatten the image first"
        )
    bg = (255, 255, 255, 255) if alpha == "white" else (0, 0, 0, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, bg), rgba).convert("RGB")


# ----------------------------------------------------------------------------------------------- tensors


def image_to_tensor(
    img: Image.Image, size: int | None = None, resample: Image.Resampling | None = None
) -> torch.Tensor:
    """Converts an RGB image to a float tensor in [-1, 1], optionally resized to ``size`` x ``size``.

    Resizing uses PIL: LANCZOS when shrinking (PIL scales the kernel, so it is antialiased) and BICUBIC when
    enlarging, unless ``resample`` is given (pSp-family encoders were trained with PIL BILINEAR via torchvision's
    ``Resize``; pass ``Image.Resampling.BILINEAR`` to match them exactly). Non-square images are stretched:
    crop/align first.

    Args:
        img: PIL image; non-RGB modes are converted with ``Image.convert("RGB")`` (use ``load_image`` for the
            full mode/alpha policy).
        size: Output side length, or None to keep the image size.
        resample: Optional PIL resampling filter overriding the default choice.

    Returns:
        Tensor [3, H, W] float32 in [-1, 1] (``x / 127.5 - 1``, same as ToTensor + Normalize(0.5, 0.5)).
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        w, h = img.size
        if (w, h) != (size, size):
            if w != h:
                logger.warning("resizing non-square %dx%d image to %dx%d changes its aspect ratio", w, h, size, size)
            if resample is None:
                resample = Image.Resampling.LANCZOS if size < max(w, h) else Image.Resampling.BICUBIC
            img = img.resize((size, size), resample=resample)
    arr = np.array(img, dtype=np.uint8, copy=True)  # [H, W, 3], writable copy for torch
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """Converts a [-1, 1] image tensor to an 8-bit RGB PIL image (clamped and rounded).

    Args:
        t: Tensor [3, H, W] (or [1, 3, H, W]) of any float dtype and device; NaNs become 0 (mid grey).

    Returns:
        RGB PIL image of size (W, H).
    """
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(t.shape)}")
    x = torch.nan_to_num(t.detach().to("cpu", torch.float32), nan=0.0).clamp(-1.0, 1.0)
    x = ((x + 1.0) * 127.5).round_().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def mask_to_image(m: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """Converts a [0, 1] mask tensor to an 8-bit grayscale PIL image (0 -> 0, 1 -> 255; clamped and rounded).

    Args:
        m: Tensor [H, W], [1, H, W] or [1, 1, H, W] of any float dtype and device; NaNs become 0.
        size: ``(W, H)`` to resize the mask to first (bilinear, on the float values), or None to keep its size.

    Returns:
        Grayscale (``L``) PIL image of size ``size`` (or (W, H)).

    Raises:
        ValueError: ``m`` is not a single-channel mask.
    """
    x = m.detach().to("cpu", torch.float32)
    if x.dim() == 4 and x.shape[:2] == (1, 1):
        x = x[0, 0]
    elif x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise ValueError(f"expected a mask tensor [H, W], [1, H, W] or [1, 1, H, W], got shape {tuple(m.shape)}")
    x = torch.nan_to_num(x, nan=0.0)
    if size is not None and (size[1], size[0]) != tuple(x.shape):
        x = torch.nn.functional.interpolate(x[None, None], size=(size[1], size[0]), mode="bilinear")[0, 0]
    x = (x.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    return Image.fromarray(x.contiguous().numpy())


def images_to_batch(
    images: Sequence[Image.Image], size: int | None = None, resample: Image.Resampling | None = None
) -> torch.Tensor:
    """Stacks images into a batch via ``image_to_tensor``.

    Args:
        images: Non-empty sequence of PIL images (all the same size if ``size`` is None).
        size: Output side length S, or None to keep the sizes.
        resample: Optional PIL resampling filter (see ``image_to_tensor``).

    Returns:
        Tensor [B, 3, S, S] float32 in [-1, 1].
    """
    if not images:
        raise ValueError("images_to_batch needs at least one image")
    tensors = [image_to_tensor(img, size, resample) for img in images]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass size= to resize them")
    return torch.stack(tensors)


def batch_to_images(batch: torch.Tensor) -> list[Image.Image]:
    """Converts a batch [B, 3, H, W] in [-1, 1] to a list of B RGB PIL images."""
    if batch.dim() != 4:
        raise ValueError(f"expected a batch [B, 3, H, W], got shape {tuple(batch.shape)}")
    return [tensor_to_image(t) for t in batch]


# ----------------------------------------------------------------------------------------------- files


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Returns the hex SHA-256 digest of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_image_files(inputs: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Expands input files and folders into a deterministic list of image paths.

    Files given explicitly are always included, whatever their suffix (non-images fail later in
    ``load_image``). Folders contribute files whose suffix is in ``IMAGE_SUFFIXES`` (case-insensitive),
    skipping hidden files and folders (names starting with "."), recursively if asked; each folder's files
    are sorted by their relative path parts. Inputs keep their given order; duplicates are dropped.

    Args:
        inputs: Files and/or folders.
        recursive: Also scan sub-folders.

    Returns:
        Paths built from the inputs as given (not resolved).

    Raises:
        UsageError: An input path does not exist.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    suffixes = {s.lower() for s in IMAGE_SUFFIXES}
    for raw in inputs:
        root = Path(raw).expanduser()
        if root.is_dir():
            found: list[Path] = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
                base = Path(dirpath)
                found += [
                    base / n for n in filenames
                    if not n.startswith(".") and Path(n).suffix.lower() in suffixes and (base / n).is_file()
                ]  # fmt: skip
            if not found:
                logger.warning("no image files found in %s%s", root, "" if recursive else " (not recursive)")
            for p in sorted(found, key=lambda q: q.relative_to(root).parts):
                add(p)
        elif root.exists():
            add(root)
        else:
            raise UsageError(f"input path not found: {root}", hint="check the spelling or quote paths with spaces")
    return out
