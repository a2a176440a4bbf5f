#!/usr/bin/env python3
"""Baseline for `amdim-worker bench-data`: the authors' 128 px two-view
pipeline (TransformsImageNet128 of the AMDIM code) with torchvision + PIL, on
one core, photos decoded from memory. Prints one JSON line.

usage: /usr/bin/python3 torchvision_views.py FOLDER [SECONDS]
(FOLDER: an ImageFolder split or any tree of .jpg/.png files)
"""
import io
import json
import os
import sys
import time

import torch
from PIL import Image
from torchvision import transforms

torch.set_num_threads(1)
INTERP = transforms.InterpolationMode.BICUBIC
normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
flip_lr = transforms.RandomHorizontalFlip(p=0.5)
rand_crop = transforms.RandomResizedCrop(128, scale=(0.3, 1.0), ratio=(0.7, 1.4), interpolation=INTERP)
col_jitter = transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
rnd_gray = transforms.RandomGrayscale(p=0.25)
post = transforms.Compose([transforms.ToTensor(), normalize])


def train_views(img):
    img = flip_lr(img)
    return post(rnd_gray(col_jitter(rand_crop(img)))), post(rnd_gray(col_jitter(rand_crop(img))))


def timed(seconds, f):
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        f(n)
        n += 1
    return n, time.perf_counter() - start


def main(folder, seconds):
    files = []
    for root, _, names in sorted(os.walk(folder)):
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith((".jpg", ".jpeg", ".png"))]
    blobs = [open(f, "rb").read() for f in files[:256]]
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    n_dec, t_dec = timed(seconds, lambda i: Image.open(io.BytesIO(blobs[i % len(blobs)])).convert("RGB"))
    n_v, t_v = timed(seconds, lambda i: train_views(decoded[i % len(decoded)]))
    n_all, t_all = timed(seconds, lambda i: train_views(Image.open(io.BytesIO(blobs[i % len(blobs)])).convert("RGB")))
    print(json.dumps({
        "pipeline": "torchvision+PIL",
        "files": len(blobs),
        "one_thread_images_per_s": n_all / t_all,
        "decode_ms": 1e3 * t_dec / n_dec,
        "two_views_ms": 1e3 * t_v / n_v,
    }))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)
