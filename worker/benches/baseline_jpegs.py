#!/usr/bin/env python3
"""Re-encodes a tree of JPEGs as baseline (sequential) JPEGs at quality 90,
keeping the layout, for `bench-data` on the kind of file ImageNet's training
set holds (baseline JFIF). The foolbox photos are progressive JPEGs, which
every decoder (libjpeg-turbo and zune-jpeg alike) reads about 2.5x slower.

usage: /usr/bin/python3 baseline_jpegs.py SRC DST
"""
import os
import sys

from PIL import Image


def main(src, dst):
    count = 0
    for root, _, files in os.walk(src):
        for name in sorted(files):
            if not name.lower().endswith((".jpg", ".jpeg")):
                continue
            out_dir = os.path.join(dst, os.path.relpath(root, src))
            os.makedirs(out_dir, exist_ok=True)
            with Image.open(os.path.join(root, name)) as img:
                img.convert("RGB").save(os.path.join(out_dir, name), quality=90, progressive=False)
            count += 1
    if count == 0:
        sys.exit(f"no JPEG files under {src}")
    print(f"{count} baseline JPEGs in {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
