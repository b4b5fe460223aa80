#!/usr/bin/env python3
"""Writes the quickstart's bundled photos (assets/photos/*.png, 64x64 RGB) from scikit-image's
sample data, choosing only images that are CC0 or public domain (see assets/photos/CREDITS.md).
Each image: centre square crop, area-resized to 64x64.

    pip install scikit-image pillow && python3 scripts/demo/make_quickstart_photos.py
"""
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = {
    "coffee": data.coffee,        # CC0, Rachel Michetti
    "chelsea": data.chelsea,      # CC0, Stefan van der Walt
    "rocket": data.rocket,        # public domain, SpaceX
    "astronaut": data.astronaut,  # public domain, NASA
    "hubble": data.hubble_deep_field,  # public domain, NASA
    "retina": data.retina,        # CC0, Mikael Häggström
}

out = Path(__file__).resolve().parent.parent / "assets" / "photos"
out.mkdir(parents=True, exist_ok=True)
for name, load in PHOTOS.items():
    img = np.asarray(load())[..., :3]
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(img[top:top + s, left:left + s]).resize((64, 64), Image.BOX)
    crop.save(out / f"{name}.png", optimize=True)
    print(name, img.shape, "->", out / f"{name}.png")
