#!/usr/bin/env python3
"""The PyTorch side of scripts/gpu-check.sh: one training step (forward of
both views, every loss term, backward, Adam) of the project's own PyTorch
reference (worker/python/amdim_torch.py, written from the spec) timed on
the same device as the worker's `bench`. Prints one JSON object.

Owns only this measurement; it must not change the reference model.
"""
import argparse
import importlib.util
import json
import time


def load_reference(path):
    spec = importlib.util.spec_from_file_location("amdim_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--ndf", type=int, required=True)
    p.add_argument("--n-rkhs", type=int, required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()

    import torch

    at = load_reference(a.reference)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = at.build_model(a.image_size, a.ndf, a.n_rkhs, a.depth, use_bn=False).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-8)
    shape = (a.batch, 3, a.image_size, a.image_size)
    x1, x2 = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    labels = torch.randint(0, 10, (a.batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        losses = model.step_losses(x1, x2, labels)
        losses["total"].backward()
        opt.step()
        return losses

    for _ in range(a.warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        losses = step()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    out = {
        "framework": f"torch {torch.__version__}",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "image_size": a.image_size,
        "batch": a.batch,
        "steps": a.steps,
        "train_step_s": median,
        "train_pairs_per_s": a.batch / median,
        "peak_device_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "loss_total": float(losses["total"]),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
