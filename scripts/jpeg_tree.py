"""An ImageNet-layout tree of generated JPEGs, for timing the input pipeline without ImageNet.

    python scripts/jpeg_tree.py DIR [--images 2000] [--classes 10] [--size 500x375]

Each image is smooth random colour fields with some grain, saved at JPEG quality 90: about the bytes
and decode cost of an ImageNet photo of the same size (noise alone would be far larger and slower).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--images", type=int, default=2000, help="in train/; val/ gets a tenth as many")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    rng = np.random.default_rng(0)
    for split, count in (("train", args.images), ("val", max(args.images // 10, args.classes))):
        for i in range(count):
            folder = args.dir / split / f"class_{i % args.classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            fields = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((width, height), Image.BICUBIC)
            grain = rng.normal(0, 8, (height, width, 3))
            pixels = (np.asarray(fields, np.float32) + grain).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:06d}.JPEG", quality=90)


if __name__ == "__main__":
    main()
