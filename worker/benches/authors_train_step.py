#!/usr/bin/env python3
"""Baseline for `amdim-worker bench`: the authors' encoder and multiscale NCE
(transcribed in worker/tests/parity/authors_model.py) trained with Adam on
synthetic images, on this machine's CPU. Prints one JSON line with image
pairs/s for forward + backward + Adam and for the forward alone, like
`amdim-worker bench --json`.

usage: /usr/bin/python3 authors_train_step.py [SIZE NDF N_RKHS DEPTH BATCH STEPS THREADS USE_BN]
(default: the CIFAR bench config 32 128 1024 3 32 3 2 0; use_bn 0 is the
authors' default and `model.use_bn`'s, so the last BatchNorm only)
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "parity"))
from authors_model import Encoder, model_scores  # noqa: E402


def main():
    args = [int(a) for a in sys.argv[1:]] + [32, 128, 1024, 3, 32, 3, 2, 0][len(sys.argv) - 1:]
    size, ndf, n_rkhs, depth, batch, steps, threads, use_bn = args[:8]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    enc = Encoder(ndf, n_rkhs, depth, size, use_bn == 1)
    opt = torch.optim.Adam(enc.parameters(), lr=2e-4, betas=(0.8, 0.999), eps=1e-8)
    v1, v2 = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
    locs = torch.randint(0, 25, (2, batch))
    mask = torch.eye(batch)

    def trg(r):
        return r.permute(1, 0, 2, 3).reshape(n_rkhs, -1)

    def src5(r, loc):
        return r.reshape(batch, n_rkhs, 25)[torch.arange(batch), :, loc]

    def loss():
        r1_1, r5_1, r7_1 = enc(v1)
        r1_2, r5_2, r7_2 = enc(v2)
        r1_1, r1_2 = r1_1.reshape(batch, n_rkhs), r1_2.reshape(batch, n_rkhs)
        total = 0.0
        for src, t in [(r1_1, r5_2), (r1_2, r5_1), (r1_1, r7_2), (r1_2, r7_1),
                       (src5(r5_1, locs[0]), r5_2), (src5(r5_2, locs[1]), r5_1)]:
            nce, reg = model_scores(src, trg(t), mask, 20.0, 4e-2)
            total = total + 0.5 * (nce + reg)
        return total

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
