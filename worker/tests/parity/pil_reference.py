#!/usr/bin/env python3
"""Pillow/torchvision reference pixels for the photo pipeline tests.

usage: /usr/bin/python3 pil_reference.py IMAGE OUT_DIR LEFT TOP WIDTH HEIGHT
Writes raw RGB (HWC, uint8) files and meta.json to OUT_DIR:
  decoded.rgb  Pillow's decoding of IMAGE
  crop.rgb     crop(LEFT, TOP, LEFT+WIDTH, TOP+HEIGHT) then resize to 128x128, bicubic
               (torchvision's resized_crop, as RandomResizedCrop applies it)
  eval128.rgb  Resize(146) + CenterCrop(128), bicubic (the 128 px evaluation transform)
  eval64.rgb   Resize(70) + CenterCrop(64)
"""
import json
import os
import sys

from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as F

BICUBIC = transforms.InterpolationMode.BICUBIC


def main(path, out, left, top, width, height):
    os.makedirs(out, exist_ok=True)
    img = Image.open(path).convert("RGB")
    crop = F.resized_crop(img, top, left, height, width, [128, 128], interpolation=BICUBIC)
    eval128 = transforms.Compose([transforms.Resize(146, interpolation=BICUBIC), transforms.CenterCrop(128)])(img)
    eval64 = transforms.Compose([transforms.Resize(70, interpolation=BICUBIC), transforms.CenterCrop(64)])(img)
    for name, im in [("decoded", img), ("crop", crop), ("eval128", eval128), ("eval64", eval64)]:
        with open(os.path.join(out, name + ".rgb"), "wb") as f:
            f.write(im.tobytes())
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"width": img.width, "height": img.height}, f)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
