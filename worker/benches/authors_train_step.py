#!/usr/bin/env python3
"""Baseline for `amdim-worker bench`: the same model and multiscale NCE in
PyTorch (worker/python/amdim_torch.py, this project's reference, with the
authors' layer structure) trained with Adam on synthetic images, on this
machine's CPU. Prints one JSON line with image pairs/s for forward + backward
+ Adam and for the forward alone, like `amdim-worker bench --json`.

usage: /usr/bin/python3 authors_train_step.py [SIZE NDF N_RKHS DEPTH BATCH STEPS THREADS USE_BN]
(default: the CIFAR bench config 32 128 1024 3 32 3 2 0; use_bn 0 is the
authors' default and `model.use_bn`'s, so the last BatchNorm only)
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import amdim_torch  # noqa: E402


def main():
    args = [int(a) for a in sys.argv[1:]] + [32, 128, 1024, 3, 32, 3, 2, 0][len(sys.argv) - 1:]
    size, ndf, n_rkhs, depth, batch, steps, threads, use_bn = args[:8]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = amdim_torch.build_model(size, ndf, n_rkhs, depth, use_bn=use_bn == 1, reg_lambda=4e-2)
    # The encoder and the NCE loss only, as `amdim-worker bench` measures them.
    opt = torch.optim.Adam(model.encoder.parameters(), lr=2e-4, betas=(0.8, 0.999), eps=1e-8)
    v1, v2 = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
    locs = torch.randint(0, 25, (2, batch))

    def loss():
        return model.step_losses(v1, v2, None, locs)["total"]

    def train_step():
        opt.zero_grad()
        loss().backward()
        opt.step()

    train_step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_s = (time.perf_counter() - started) / steps
    with torch.no_grad():
        loss()
        started = time.perf_counter()
        for _ in range(steps):
            loss()
        forward_s = (time.perf_counter() - started) / steps
    print(json.dumps({
        "backend": f"pytorch-{torch.__version__}-cpu",
        "threads": threads, "use_bn": use_bn == 1, "image_size": size, "ndf": ndf, "n_rkhs": n_rkhs, "depth": depth,
        "batch": batch, "steps": steps,
        "train_pairs_per_s": batch / train_s, "train_step_s": train_s,
        "forward_pairs_per_s": batch / forward_s, "forward_s": forward_s,
    }))


if __name__ == "__main__":
    main()
