"""Tests of gie_cli.io.images and gie_cli.io.atomic: mode/alpha policy, failures, tensors, discovery, atomic writes."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gie_cli.errors import ImageLoadError, UsageError
from gie_cli.io.atomic import atomic_save_image, atomic_write, atomic_write_bytes, atomic_write_text
from gie_cli.io.images import (
    IMAGE_SUFFIXES,
    batch_to_images,
    image_to_tensor,
    images_to_batch,
    iter_image_files,
    load_image,
    sha256_file,
    tensor_to_image,
)


def _noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_rgb16(path: Path, arr: np.ndarray) -> None:
    """Writes a 16-bit RGB PNG by hand (PIL cannot save one). ``arr``: uint16 [H, W, 3]."""
    h, w, _ = arr.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


# ----------------------------------------------------------------------------------------------- loading


def test_rgb_png_and_jpeg(tmp_path: Path) -> None:
    src = _noise()
    src.save(tmp_path / "a.png")
    src.save(tmp_path / "a.jpg", quality=95)
    png = load_image(tmp_path / "a.png")
    assert png.mode == "RGB" and png.size == (64, 48)
    assert np.array_equal(np.asarray(png), np.asarray(src))
    jpg = load_image(str(tmp_path / "a.jpg"))
    assert jpg.mode == "RGB" and jpg.size == (64, 48)
    assert getattr(jpg, "fp", None) is None  # detached from the file


def test_png_with_jpg_suffix_loads(tmp_path: Path) -> None:
    src = _noise(seed=1)
    (tmp_path / "really_png.jpg").write_bytes(b"")
    src.save(tmp_path / "really_png.jpg", format="PNG")
    assert np.array_equal(np.asarray(load_image(tmp_path / "really_png.jpg")), np.asarray(src))


def test_grayscale_l(tmp_path: Path) -> None:
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "g.png")
    out = _pixels(load_image(tmp_path / "g.png"))
    assert out.shape == (16, 16, 3)
    assert (out == arr[..., None]).all()


def test_gray16_scaled_to_full_range(tmp_path: Path) -> None:
    arr = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # k * 257 -> k exactly
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    out = _pixels(load_image(tmp_path / "g16.png"))
    assert (out == np.arange(256).reshape(16, 16)[..., None]).all()


def test_gray32_int_and_float_tiff(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 65535], [257 * 10, 257 * 200]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert _pixels(load_image(tmp_path / "i.tif"))[..., 0].tolist() == [[0, 255], [10, 200]]
    Image.fromarray(np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert _pixels(load_image(tmp_path / "f.tif"))[..., 0].tolist() == [[0, 255], [128, 64]]
    Image.fromarray(np.array([[-1000, 0], [1000, 3000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    assert _pixels(load_image(tmp_path / "wide.tif"))[..., 0].tolist() == [[0, 64], [128, 255]]  # min-max stretch


def test_rgb16_png(tmp_path: Path) -> None:
    k = np.arange(48, dtype=np.uint16).reshape(4, 4, 3) * 5
    _png_rgb16(tmp_path / "rgb16.png", k * 257)
    out = load_image(tmp_path / "rgb16.png")
    assert out.mode == "RGB"
    assert (_pixels(out) == k).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    img.save(tmp_path / "p.png", transparency=0)
    white = _pixels(load_image(tmp_path / "p.png"))
    assert white[0, 0].tolist() == [255, 255, 255] and white[1, 1].tolist() == [10, 200, 30]
    black = _pixels(load_image(tmp_path / "p.png", alpha="black"))
    assert black[0, 0].tolist() == [0, 0, 0]
    drop = _pixels(load_image(tmp_path / "p.png", alpha="drop"))
    assert drop[0, 0].tolist() == [0, 0, 0] and drop[1, 1].tolist() == [10, 200, 30]
    with pytest.raises(ImageLoadError, match="transparent"):
        load_image(tmp_path / "p.png", alpha="error")


def test_rgba_alpha_policies(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (200, 0, 0, 255))
    img.putpixel((0, 0), (200, 0, 0, 128))
    img.putpixel((1, 0), (200, 0, 0, 0))
    img.save(tmp_path / "rgba.png")
    white = _pixels(load_image(tmp_path / "rgba.png", alpha="white"))
    a = 128 / 255
    assert np.abs(white[0, 0] - np.array([200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)])).max() <= 1
    assert white[0, 1].tolist() == [255, 255, 255] and white[1, 1].tolist() == [200, 0, 0]
    black = _pixels(load_image(tmp_path / "rgba.png", alpha="black"))
    assert abs(black[0, 0, 0] - 200 * a) <= 1 and black[0, 1].tolist() == [0, 0, 0]
    assert _pixels(load_image(tmp_path / "rgba.png", alpha="drop"))[0, 1].tolist() == [200, 0, 0]
    with pytest.raises(ImageLoadError, match="transparent"):
        load_image(tmp_path / "rgba.png", alpha="error")
    Image.new("RGBA", (4, 4), (1, 2, 3, 255)).save(tmp_path / "opaque.png")  # opaque alpha is just dropped
    assert _pixels(load_image(tmp_path / "opaque.png", alpha="error"))[0, 0].tolist() == [1, 2, 3]


def test_la_and_l_with_transparency_key(tmp_path: Path) -> None:
    Image.new("LA", (2, 2), (90, 0)).save(tmp_path / "la.png")
    assert _pixels(load_image(tmp_path / "la.png"))[0, 0].tolist() == [255, 255, 255]
    Image.fromarray(np.array([[0, 50]], dtype=np.uint8)).save(tmp_path / "ltrns.png", transparency=0)
    assert _pixels(load_image(tmp_path / "ltrns.png", alpha="black"))[0].tolist() == [[0, 0, 0], [50, 50, 50]]
    assert _pixels(load_image(tmp_path / "ltrns.png"))[0].tolist() == [[255, 255, 255], [50, 50, 50]]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    img.paste((0, 255, 255, 0), (0, 0, 8, 16))  # magenta + yellow: red
    img.save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    out = _pixels(load_image(tmp_path / "cmyk.jpg"))
    assert out.shape == (16, 16, 3)
    assert (out[:, 12:] > 240).all()
    assert (out[:, :4, 0] > 220).all() and (out[:, :4, 1:] < 40).all()


def test_exif_orientation_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 64, 16))  # top half red, bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (32, 64)  # width and height swapped
    px = _pixels(out)
    assert px[32, 28, 0] > 200 and px[32, 28, 2] < 60  # the stored top (red) is now on the right
    assert px[32, 3, 2] > 200 and px[32, 3, 0] < 60  # the stored bottom (blue) is now on the left


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert _pixels(load_image(tmp_path / "anim.gif"))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("missing.jpg", None, "file not found"),
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty file"),
        ("text.jpg", lambda p: p.write_text("hello, I am not a JPEG\n"), "not an image"),
        ("folder.jpg", lambda p: p.mkdir(), "directory"),
    ],
)
def test_load_failures(tmp_path: Path, name: str, make, match: str) -> None:
    p = tmp_path / name
    if make is not None:
        make(p)
    with pytest.raises(ImageLoadError, match=match) as info:
        load_image(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    _noise(128, 128).save(tmp_path / f"full.{fmt}")
    data = (tmp_path / f"full.{fmt}").read_bytes()
    (tmp_path / f"half.{fmt}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(tmp_path / f"half.{fmt}")


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _noise(64, 64).save(tmp_path / "big.png")  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # PIL would only warn
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(tmp_path / "big.png")


def test_unknown_alpha_policy(tmp_path: Path) -> None:
    _noise().save(tmp_path / "a.png")
    with pytest.raises(UsageError, match="alpha"):
        load_image(tmp_path / "a.png", alpha="transparent")


def test_inputs_never_modified(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    _noise().save(tmp_path / "rot.jpg", exif=exif)
    _noise().save(tmp_path / "a.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 100)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "g16.png")
    Image.new("CMYK", (8, 8)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "bad.jpg").write_text("nope")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    for p in before:
        try:
            load_image(p)
        except ImageLoadError:
            pass
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------------------------- tensors


def test_image_tensor_round_trip() -> None:
    img = _noise(20, 10)
    t = image_to_tensor(img)
    assert t.shape == (3, 10, 20) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    px = np.asarray(img)[0, 0].astype(np.float32)
    assert torch.allclose(t[:, 0, 0], torch.from_numpy(px / 127.5 - 1))
    assert np.array_equal(np.asarray(tensor_to_image(t)), np.asarray(img))
    assert np.array_equal(np.asarray(tensor_to_image(t[None])), np.asarray(img))


def test_image_to_tensor_extremes_and_resize() -> None:
    img = Image.new("RGB", (64, 64), (0, 255, 0))
    t = image_to_tensor(img, size=32)
    assert t.shape == (3, 32, 32)
    assert torch.allclose(t[:, 5, 5], torch.tensor([-1.0, 1.0, -1.0]))
    assert image_to_tensor(img, size=100).shape == (3, 100, 100)
    assert image_to_tensor(img.convert("L"), size=16).shape == (3, 16, 16)  # non-RGB converted


def test_tensor_to_image_clamps_and_rounds() -> None:
    t = torch.tensor([3.0, -3.0, float("nan")]).view(3, 1, 1).expand(3, 2, 2)
    assert tensor_to_image(t.half()).getpixel((0, 0)) == (255, 0, 128)
    with pytest.raises(ValueError, match="3, H, W"):
        tensor_to_image(torch.zeros(4, 2, 2))


def test_batches() -> None:
    imgs = [_noise(40, 30, seed=i) for i in range(3)]
    b = images_to_batch(imgs, 16)
    assert b.shape == (3, 3, 16, 16) and b.dtype == torch.float32
    back = batch_to_images(b)
    assert len(back) == 3 and back[0].size == (16, 16)
    with pytest.raises(ValueError, match="different sizes"):
        images_to_batch([_noise(8, 8), _noise(9, 9)])
    with pytest.raises(ValueError):
        images_to_batch([])


# ----------------------------------------------------------------------------------------------- files


def test_sha256_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    (tmp_path / "x.bin").write_bytes(data)
    assert sha256_file(tmp_path / "x.bin", chunk=4096) == hashlib.sha256(data).hexdigest()


def test_iter_image_files(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ["b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/c.webp", "sub/deeper/d.jpeg", ".git/e.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    odd = tmp_path / "photo.dat"
    odd.write_bytes(b"x")
    assert iter_image_files([root]) == [root / "a.PNG", root / "b.jpg"]
    assert iter_image_files([str(root)], recursive=True) == [
        root / "a.PNG",
        root / "b.jpg",
        root / "sub" / "c.webp",
        root / "sub" / "deeper" / "d.jpeg",
    ]
    assert iter_image_files([odd, root / "b.jpg", root]) == [odd, root / "b.jpg", root / "a.PNG"]  # no duplicates
    with pytest.raises(UsageError, match="nothere"):
        iter_image_files([root, tmp_path / "nothere"])
    assert ".jpg" in IMAGE_SUFFIXES and ".png" in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------------- atomic writes


def test_atomic_write_success(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "out.bin"
    with atomic_write(target) as f:
        f.write(b"abc")
        assert not target.exists()  # nothing under the final name until the block completes
    assert target.read_bytes() == b"abc"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(tmp_path / "t.txt", b"over")
    assert (tmp_path / "t.txt").read_bytes() == b"over"


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "w") as f:
            f.write("new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_atomic_save_image(tmp_path: Path) -> None:
    img = _noise(16, 16)
    for suffix in (".png", ".jpg", ".jpeg", ".webp"):
        atomic_save_image(img, tmp_path / f"o{suffix}")
        with Image.open(tmp_path / f"o{suffix}") as im:
            assert im.size == (16, 16)
    with Image.open(tmp_path / "o.png") as im:
        assert np.array_equal(np.asarray(im), np.asarray(img))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jpeg", "o.jpg", "o.png", "o.webp"]
    with pytest.raises(UsageError, match="suffix"):
        atomic_save_image(img, tmp_path / "o.gifx")
