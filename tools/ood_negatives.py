"""A greyscale set of images that are not chest X-rays, made offline, to test the unusual-image flag against.

Every image is grayscale (colour would give a photograph away by its colour alone) and made from
what ships offline or from code, the same every time (fixed seeds):

- photographs: crops, flips and rotations of scikit-learn's two sample photographs
  (`sklearn.datasets.load_sample_images`: a temple in China, a flower), in greyscale;
- documents: rendered text pages, dark on light and light on dark, some with form lines;
- noise (uniform, Gaussian, smoothed blobs), gradients (linear, radial), checkerboards and stripes;
- other "body parts": synthetic skull, limb and hand radiographs (bright bone shapes on soft tissue);
- inverted chest X-rays (`xray_paths`, e.g. a few training images): the hard case, a real X-ray's
  anatomy with its intensities turned around.

    python tools/ood_negatives.py OUT_FOLDER [--xrays FOLDER]   # writes the PNGs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

SIZE = 256
WORDS = ("patient", "report", "invoice", "total", "date", "signature", "lorem", "ipsum", "dolor", "amet", "page", "item")


def _photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(image).convert("L") for image in load_sample_images().images]


def photographs(n: int = 24, seed: int = 0) -> dict[str, Image.Image]:
    """`n` greyscale crops (random place and size), some flipped or rotated, of the sample photographs."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = {}
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(rng.integers(160, min(w, h) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        crop = crop.rotate(int(rng.choice([0, 0, 90, 180, 270])))
        if rng.random() < 0.3:
            crop = ImageOps.mirror(crop)
        out[f"photo-{i:02d}.png"] = crop
    return out


def documents(n: int = 8, seed: int = 1) -> dict[str, Image.Image]:
    """Text pages: lines of words at several spacings, dark on light (a few light on dark), some with form lines."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        dark = i % 4 == 3
        page = Image.new("L", (SIZE, SIZE), int(rng.integers(20, 60)) if dark else int(rng.integers(200, 250)))
        draw = ImageDraw.Draw(page)
        ink = int(rng.integers(200, 255)) if dark else int(rng.integers(0, 60))
        step = int(rng.integers(10, 20))
        for y in range(8, SIZE - 10, step):
            line = " ".join(str(rng.choice(WORDS)) for _ in range(8))
            draw.text((8, y), line, fill=ink)
            if i % 2 and y % (3 * step) < step:
                draw.line((4, y + step - 2, SIZE - 4, y + step - 2), fill=ink)
        out[f"document-{i:02d}.png"] = page
    return out


def patterns(seed: int = 2) -> dict[str, Image.Image]:
    """Noise, smoothed noise, gradients, checkerboards and stripes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    radius = np.hypot(x - SIZE / 2, y - SIZE / 2)
    arrays = {
        "noise-uniform": rng.integers(0, 256, (SIZE, SIZE)),
        "noise-gaussian-dark": rng.normal(60, 25, (SIZE, SIZE)),
        "noise-gaussian-mid": rng.normal(128, 40, (SIZE, SIZE)),
        "gradient-horizontal": x,
        "gradient-vertical": 255 - y,
        "gradient-radial": 255 - radius * 255 / radius.max(),
        "gradient-radial-dark-centre": radius * 255 / radius.max(),
        "checkerboard-16": ((x // 16 + y // 16) % 2) * 255,
        "checkerboard-48": ((x // 48 + y // 48) % 2) * 200 + 30,
        "stripes-vertical": (np.sin(x / 6) + 1) * 127,
        "stripes-diagonal": (np.sin((x + y) / 10) + 1) * 100 + 20,
    }
    out = {f"{name}.png": Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)) for name, a in arrays.items()}
    for i, radius_px in enumerate((2, 5, 10)):
        blobs = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius_px))
        out[f"noise-smooth-{i}.png"] = ImageOps.autocontrast(blobs)
    return out


def _radiograph(draw_bones, seed: int) -> Image.Image:
    """Dark background, a grey soft-tissue shape and bright bones (drawn by `draw_bones`), blurred, with noise."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (SIZE, SIZE), int(rng.integers(0, 25)))
    draw_bones(ImageDraw.Draw(image), rng)
    image = image.filter(ImageFilter.GaussianBlur(2))
    pixels = np.asarray(image, np.float64) + rng.normal(0, 6, (SIZE, SIZE))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _skull(draw: ImageDraw.ImageDraw, rng) -> None:
    draw.ellipse((40, 30, 216, 236), fill=90)
    draw.ellipse((40, 30, 216, 236), outline=230, width=int(rng.integers(8, 16)))
    draw.ellipse((80, 150, 176, 230), fill=170)  # jaw and teeth
    draw.ellipse((75, 100, 115, 135), fill=40)  # orbits
    draw.ellipse((141, 100, 181, 135), fill=40)


def _limb(draw: ImageDraw.ImageDraw, rng) -> None:
    angle = rng.uniform(-0.3, 0.3)
    draw.rectangle((70, 0, 186, SIZE), fill=90)
    for offset in (-22, 22):
        cx = 128 + offset
        top, bottom = (cx + 40 * angle, 0), (cx - 40 * angle, SIZE)
        draw.line((*top, *bottom), fill=225, width=int(rng.integers(14, 24)))
    draw.ellipse((95, 110, 161, 150), fill=240)  # a joint


def _hand(draw: ImageDraw.ImageDraw, rng) -> None:
    draw.ellipse((60, 120, 200, 250), fill=95)  # palm
    for i in range(5):
        x = 70 + 30 * i + int(rng.integers(-4, 5))
        draw.rectangle((x - 11, 20 + (30 if i in (0, 4) else 0), x + 11, 170), fill=95)
        for top in range(30 + (30 if i in (0, 4) else 0), 170, 40):
            draw.rounded_rectangle((x - 6, top, x + 6, top + 32), radius=5, fill=225)
    for i in range(5):
        draw.line((70 + 30 * i, 170, 128, 235), fill=220, width=10)  # metacarpals


def body_parts(n_each: int = 2) -> dict[str, Image.Image]:
    """Synthetic radiographs of other body parts: skulls, limbs and hands, `n_each` of each."""
    return {
        f"{name}-{i}.png": _radiograph(draw, seed=10 * j + i)
        for j, (name, draw) in enumerate((("skull", _skull), ("limb", _limb), ("hand", _hand)))
        for i in range(n_each)
    }


def inverted_xrays(xray_paths: list[str], n: int = 10) -> dict[str, Image.Image]:
    """The first `n` of `xray_paths` in greyscale with their intensities inverted (bones dark, lungs bright)."""
    out = {}
    for path in xray_paths[:n]:
        with Image.open(path) as image:
            out[f"inverted-{Path(path).stem}.png"] = ImageOps.invert(image.convert("L")).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return out


def xrays_to_invert(folder: str | Path, n: int = 10) -> list[str]:
    """`n` X-rays spread over `folder` (every 97th .jpeg file, sorted): the ones `inverted_xrays` turns around."""
    return sorted(str(p) for p in Path(folder).rglob("*.jpeg"))[::97][:n]


def negative_images(xray_paths: list[str] | None = None) -> dict[str, Image.Image]:
    """The whole set, file name -> greyscale image (64 images with 10 X-rays to invert)."""
    return {**photographs(), **documents(), **patterns(), **body_parts(), **inverted_xrays(xray_paths or [])}


def write_negatives(folder: str | Path, xray_paths: list[str] | None = None) -> list[str]:
    """Write `negative_images` as PNGs into `folder` (made if needed); their paths, sorted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in negative_images(xray_paths).items():
        image.save(folder / name)
        paths.append(str(folder / name))
    return sorted(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--xrays", help="a folder of chest X-rays to invert (the first ten .jpeg files found, sorted)")
    args = parser.parse_args(argv)
    xrays = xrays_to_invert(args.xrays) if args.xrays else []
    paths = write_negatives(args.out, xrays)
    print(f"{len(paths)} images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
