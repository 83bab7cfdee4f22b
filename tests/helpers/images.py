"""Class-per-folder image trees for tests: ``ROOT/train/<class>/*.png`` and ``ROOT/val/<class>/*.png``."""

import numpy as np
from PIL import Image


def colour_folder(root, per_class=24, val_per_class=12, size=32, classes=("c0", "c1", "c2")):
    """Up to 3 classes told apart by their dominant colour channel, under noise: learnable in a few steps."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.uniform(0, 120, (size, size, 3))
                pixels[..., c] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root
