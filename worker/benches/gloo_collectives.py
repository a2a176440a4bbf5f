"""torch.distributed's gloo backend on the same loopback, for comparison with
`amdim-worker bench-collective`: all-reduce and all-gather of float32
buffers of 4-256 MiB between W processes; one JSON line per (op, size) with
the nccl-tests definitions (all-reduce bus = alg * 2(W-1)/W, all-gather bus
= alg * (W-1)/W, size = whole buffer).

    python3 worker/benches/gloo_collectives.py [--world 2] [--sizes-mib 4,16,64,256] [--iters 5]
"""
import argparse, json, os, socket, sys, time

def worker(rank, world, port, sizes, iters):
    import torch, torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for mib in sizes:
        n = (mib << 20) // 4
        buf = torch.ones(n)
        local = torch.ones(n // world)
        outs = [torch.empty(n // world) for _ in range(world)]
        dist.all_reduce(buf)
        dist.barrier()
        t = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        ar = (time.perf_counter() - t) / iters
        dist.all_gather(outs, local)
        dist.barrier()
        t = time.perf_counter()
        for _ in range(iters):
            dist.all_gather(outs, local)
        ag = (time.perf_counter() - t) / iters
        if rank == 0:
            for op, sec, factor, size in (("all_reduce", ar, 2 * (world - 1) / world, n * 4),
                                          ("all_gather", ag, (world - 1) / world, (n // world) * world * 4)):
                alg = size / sec / 1e9
                print(json.dumps({"impl": "gloo", "op": op, "world": world, "bytes": size, "seconds": sec,
                                  "algbw_gb_s": alg, "busbw_gb_s": alg * factor}), flush=True)
    dist.destroy_process_group()

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes-mib", default="4,16,64,256")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rank", type=int)
    p.add_argument("--port", type=int)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes_mib.split(",")]
    if a.rank is not None:
        worker(a.rank, a.world, a.port, sizes, a.iters)
        return
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    import subprocess
    procs = [subprocess.Popen([sys.executable, __file__, "--world", str(a.world), "--sizes-mib", a.sizes_mib,
                               "--iters", str(a.iters), "--rank", str(r), "--port", str(port)]) for r in range(a.world)]
    sys.exit(max(p.wait() for p in procs))

if __name__ == "__main__":
    main()
