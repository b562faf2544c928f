"""Real photographs shipped by installed packages (scikit-image, scikit-learn): demo, test and canary images."""

from __future__ import annotations

import io
import random
from importlib.resources import files

from PIL import Image

# name -> where it comes from; what is in the picture is written by a person who looked at it.
PHOTOGRAPHS = {
    "chelsea": ("skimage", "chelsea.png", "a tabby cat"),
    "coffee": ("skimage", "coffee.png", "a cup of coffee on a saucer"),
    "astronaut": ("skimage", "astronaut.png", "an astronaut in a space suit with a flag"),
    "rocket": ("skimage", "rocket.jpg", "a rocket on its launch pad"),
    "motorcycle": ("skimage", "motorcycle_left.png", "a motorcycle in a garage"),
    "china": ("sklearn", "china.jpg", "a Chinese temple roof among trees"),
    "flower": ("sklearn", "flower.jpg", "a flower close up"),
}


def photograph(name: str) -> Image.Image:
    package, filename, _ = PHOTOGRAPHS[name]
    folder = ("data",) if package == "skimage" else ("datasets", "images")
    data = files(package).joinpath(*folder, filename).read_bytes()
    return Image.open(io.BytesIO(data)).convert("RGB")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def sample_set(variants_per_photo: int = 1, seed: int = 7) -> list[tuple[str, bytes]]:
    """Each photograph as a JPEG, plus seeded crops of it (still real photographs, just framed differently)."""
    rng = random.Random(seed)
    images = []
    for name in PHOTOGRAPHS:
        original = photograph(name)
        images.append((f"{name}.jpg", jpeg(original)))
        width, height = original.size
        for variant in range(1, variants_per_photo):
            scale = rng.uniform(0.7, 0.95)
            w, h = int(width * scale), int(height * scale)
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            crop = original.crop((left, top, left + w, top + h))
            images.append((f"{name}-{variant}.jpg", jpeg(crop, quality=rng.randint(85, 95))))
    return images
