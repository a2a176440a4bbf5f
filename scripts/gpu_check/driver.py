#!/usr/bin/env python3
"""The checks of scripts/gpu-check.sh, run in order against a prebuilt
amdim-worker, each recorded (command, seconds, numbers, pass/fail) into one
JSON file; the run goes on after a failed check and exits 1 if any failed.

On a GPU (default): CUDA `bench` of the CIFAR config (batch 32, 200) and the
128 px config next to the PyTorch reference on the same GPU (pairs/s, peak
device memory); CUDA vs CPU `score` on the same weights and views (every
term within 1e-4 relative); NCCL world 1 all-reduce/all-gather of 4-256 MiB
burn CUDA tensors (values, bandwidth, device path vs host path); two
worker processes on the one GPU (`dist.backend = "tcp"`) training 50 steps
against one process with the global batch; kill -9 of one of them mid-step.

`--dry-run`: the same commands on the CPU backend with tiny sizes (what can
run without a GPU), so that every command line and every parser here is
exercised before the script runs blind on a GPU machine.

Owns orchestration and the JSON; the numbers come from the worker and
scripts/gpu_check/torch_bench.py. It must not build anything.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class Check:
    def __init__(self, name):
        self.name, self.ok, self.data, self.commands, self.error = name, None, {}, [], None
        self.started = time.monotonic()

    def record(self):
        return {
            "name": self.name,
            "ok": self.ok,
            "seconds": round(time.monotonic() - self.started, 2),
            "commands": self.commands,
            "data": self.data,
            "error": self.error,
        }


class Runner:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.work = Path(tempfile.mkdtemp(prefix="amdim-gpu-check-"))
        self.checks = []
        self.deadline = time.monotonic() + args.budget_s
        self.backend = "cpu" if self.dry else "cuda"

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, check, argv, env=None, timeout=None, ok_codes=(0,)):
        """Runs a command; returns stdout; raises on a bad exit or timeout."""
        timeout = max(5.0, min(timeout or self.left(), self.left()))
        check.commands.append(" ".join(str(a) for a in argv))
        proc = subprocess.run([str(a) for a in argv], env=self.env(env), capture_output=True, text=True, timeout=timeout)
        if proc.returncode not in ok_codes:
            tail = proc.stderr[:1500] + "\n…\n" + proc.stderr[-1000:]
            raise RuntimeError(f"exit {proc.returncode}: {' '.join(map(str, argv))}\n{tail}")
        return proc.stdout, proc.stderr

    def env(self, extra=None):
        e = dict(os.environ)
        e.update({"NO_COLOR": "1", "AMDIM_RUNTIME__BACKEND": self.backend})
        e.update(extra or {})
        return e

    def section(self, name, f):
        c = Check(name)
        if self.left() < 10:
            c.ok, c.error = False, "skipped: the time budget is spent"
        else:
            try:
                f(c)
                if c.ok is None:
                    c.ok = True
            except Exception as exc:  # a failed check is recorded, the run goes on
                c.ok, c.error = False, f"{type(exc).__name__}: {exc}"
        self.checks.append(c)
        print(f"[{'PASS' if c.ok else 'FAIL'}] {name} ({time.monotonic() - c.started:.1f} s){'' if c.ok else ': ' + str(c.error)[:400]}", flush=True)

    # ------------------------------------------------------------ configs

    def sizes(self):
        if self.dry:
            return {
                "cifar": dict(image_size=32, ndf=8, n_rkhs=32, depth=1),
                "px128": dict(image_size=64, ndf=8, n_rkhs=64, depth=1),
                "batches": {"cifar": [4, 6], "px128": [2]},
                "steps": 2,
                "train_steps": 3,
                "mib": [1, 2],
            }
        return {
            "cifar": dict(image_size=32, ndf=128, n_rkhs=1024, depth=3),
            "px128": dict(image_size=128, ndf=192, n_rkhs=1536, depth=8),
            "batches": {"cifar": [32, 200], "px128": [32]},
            "steps": 10,
            "train_steps": 50,
            "mib": [4, 16, 64, 256],
        }

    def job(self, name, model, batch, extra=""):
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "job.toml"
        path.write_text(
            f'[job]\nname = "{name}"\nseed = 7\n'
            f'[data]\nformat = "synthetic"\nsynthetic_samples = {max(4 * batch, 64)}\n'
            f'[model]\nimage_size = {model["image_size"]}\nndf = {model["ndf"]}\nn_rkhs = {model["n_rkhs"]}\ndepth = {model["depth"]}\n'
            f"[train]\nbatch_size = {batch}\nlog_every = 1\n"
            f"[eval]\nenabled = false\n"
            f'[checkpoint]\nuri = "{d / "ckpt"}"\nevery_steps = 0\nkeep = 0\n{extra}'
        )
        return path

    # ------------------------------------------------------------ device memory

    def gpu_used_mib(self):
        if self.dry or not shutil.which("nvidia-smi"):
            return None
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(self.args.device)],
                capture_output=True, text=True, timeout=10,
            ).stdout
            return float(out.split()[0])
        except Exception:
            return None

    def with_peak_memory(self, f):
        """(f's result, peak device MiB used above the idle level while f ran)."""
        idle = self.gpu_used_mib()
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                v = self.gpu_used_mib()
                if v is not None and (peak[0] is None or v > peak[0]):
                    peak[0] = v
                done.wait(0.1)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            result = f()
        finally:
            done.set()
            t.join()
        return result, (None if idle is None or peak[0] is None else peak[0] - idle)

    # ------------------------------------------------------------ checks

    def check_bench(self, c):
        s = self.sizes()
        rows = []
        for key in ("cifar", "px128"):
            for batch in s["batches"][key]:
                model = s[key]
                cfg = self.job(f"bench-{key}-{batch}", model, batch)
                (out, _), peak = self.with_peak_memory(
                    lambda: self.run(c, [self.args.worker, "bench", "-c", cfg, "--steps", s["steps"], "--json"], timeout=240)
                )
                ours = json.loads(out.strip().splitlines()[-1])
                ours["peak_device_mib"] = peak
                ref = None
                if self.args.reference:
                    out, _ = self.run(c, [
                        sys.executable, HERE / "torch_bench.py", "--reference", self.args.reference,
                        "--device", "cpu" if self.dry else f"cuda:{self.args.device}",
                        "--image-size", model["image_size"], "--ndf", model["ndf"], "--n-rkhs", model["n_rkhs"],
                        "--depth", model["depth"], "--batch", batch, "--steps", s["steps"],
                    ], timeout=240)
                    ref = json.loads(out.strip().splitlines()[-1])
                rows.append({
                    "config": key, "batch": batch, "amdim": ours, "torch": ref,
                    "amdim_over_torch": (ours["train_pairs_per_s"] / ref["train_pairs_per_s"]) if ref else None,
                })
        c.data["rows"] = rows
        c.data["reference"] = str(self.args.reference) if self.args.reference else "not found: no PyTorch comparison"
        c.ok = all(r["amdim"]["train_pairs_per_s"] > 0 for r in rows)

    def check_score(self, c):
        import numpy as np

        s = self.sizes()
        model, batch = s["cifar"], 8
        cfg = self.job("score", model, batch)
        d = self.work / "score"
        rng = np.random.default_rng(3)
        views = []
        for i in (1, 2):
            p = d / f"view{i}.npy"
            np.save(p, rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
            views.append(p)
        locs = d / "locs.npy"
        np.save(locs, rng.integers(0, 25, (2, batch)).astype(np.int64))
        weights = d / "model.safetensors"
        self.write_weights(c, model, weights)
        argv = [self.args.worker, "score", "--weights", weights, "-c", cfg, "--view1", views[0], "--view2", views[1],
                "--r5-locations", locs, "--json"]
        cpu, _ = self.run(c, argv, env={"AMDIM_RUNTIME__BACKEND": "cpu"}, timeout=180)
        dev, _ = self.run(c, argv, timeout=180)
        a, b = json.loads(cpu.strip().splitlines()[-1]), json.loads(dev.strip().splitlines()[-1])
        terms = ["loss_1t5", "loss_1t7", "loss_5t5", "reg", "loss_total"]
        rel = {t: abs(a[t] - b[t]) / max(abs(a[t]), 1e-12) for t in terms}
        c.data.update({"cpu": a, "device": b, "relative_difference": rel, "tolerance": 1e-4})
        c.ok = all(r <= 1e-4 for r in rel.values())
        if not c.ok:
            c.error = f"terms differ beyond 1e-4 relative: {rel}"

    def write_weights(self, c, model, path):
        """Weights of two CPU training steps of the worker itself (its final
        checkpoint), so that every loss term is non-trivial."""
        cfg = self.job("score-weights", model, 8)
        self.run(c, [self.args.worker, "train", "-c", cfg], env={"AMDIM_RUNTIME__BACKEND": "cpu", "AMDIM_TRAIN__MAX_STEPS": "2"},
                 timeout=180)
        found = sorted((cfg.parent / "ckpt").glob("step-*/model.safetensors"))
        if not found:
            raise RuntimeError("the training run wrote no model.safetensors")
        shutil.copy(found[-1], path)

    def check_nccl(self, c):
        s = self.sizes()
        if self.dry:
            # Without a GPU: the host collective path at world 2, and the
            # CUDA flag's parse (a CPU build must refuse it by name).
            out, _ = self.run(c, [self.args.worker, "bench-collective", "--world", "2", "--sizes-mib",
                                  ",".join(map(str, s["mib"])), "--iters", "2", "--json"], timeout=120)
            c.data["host_world2"] = json.loads(out.strip().splitlines()[-1])
            _, err = self.run(c, [self.args.worker, "bench-collective", "--cuda-device", "0", "--sizes-mib", "1"],
                              ok_codes=(0, 1), timeout=60)
            c.data["cuda_flag"] = err.strip().splitlines()[-1] if err.strip() else ""
            c.ok = "without CUDA support" in err or "cuda" in err.lower()
            return
        out, err = self.run(c, [self.args.worker, "bench-collective", "--cuda-device", self.args.device, "--sizes-mib",
                                ",".join(map(str, s["mib"])), "--iters", "5", "--timeout-s", "60"], timeout=240)
        rows = json.loads(out.strip().splitlines()[-1])
        c.data["rows"] = rows
        c.data["nccl_log"] = [l for l in err.splitlines() if "NCCL" in l][-5:]
        bad = [r for r in rows if not r["values_ok"]]
        # No host copy on the device path: on large buffers it must beat
        # the path through host memory by a wide margin (HBM vs PCIe).
        slow = [r for r in rows if r["bytes"] >= 64 << 20 and r["host_over_device"] < 2.0]
        c.ok = not bad and not slow
        if not c.ok:
            c.error = f"wrong values: {[(r['op'], r['bytes']) for r in bad]}; not faster than the host path: {[(r['op'], r['bytes'], r['host_over_device']) for r in slow]}"

    @staticmethod
    def free_addr():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{s.getsockname()[1]}"

    @staticmethod
    def step_losses(log):
        out = []
        for line in log.splitlines():
            if " step " in line and " loss=" in line:
                try:
                    out.append(float(line.split(" loss=")[1].split()[0]))
                except ValueError:
                    pass
        return out

    def spawn_ranks(self, c, cfg, world, logs, env):
        addr = self.free_addr()
        procs = []
        for rank in range(world):
            argv = [self.args.worker, "train", "-c", cfg, "--rank", rank, "--world-size", world, "--rendezvous", addr]
            c.commands.append(" ".join(map(str, argv)))
            log = open(logs / f"rank{rank}.log", "w")
            procs.append(subprocess.Popen([str(a) for a in argv], env=self.env(env), stdout=subprocess.DEVNULL, stderr=log))
        return procs

    def check_two_processes(self, c):
        s = self.sizes()
        steps = s["train_steps"]
        batch = s["batches"]["cifar"][0]
        extra = '[dist]\nsync_bn = true\ntimeout_s = 60\nbackend = "tcp"\n'
        env = {"AMDIM_TRAIN__MAX_STEPS": str(steps)}
        single_cfg = self.job("train-single", s["cifar"], batch, extra)
        _, single_log = self.run(c, [self.args.worker, "train", "-c", single_cfg], env=env, timeout=300)
        multi_cfg = self.job("train-multi", s["cifar"], batch, extra)
        logs = multi_cfg.parent
        procs = self.spawn_ranks(c, multi_cfg, 2, logs, env)
        try:
            codes = [p.wait(timeout=max(10, self.left())) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        log0 = (logs / "rank0.log").read_text()
        if codes != [0, 0]:
            raise RuntimeError(f"ranks exited {codes}:\n{log0[-2000:]}")
        a, b = self.step_losses(single_log), self.step_losses(log0)
        rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)]
        # float32 on a GPU: different reduction orders over 50 Adam steps.
        tol = 1e-5 if self.dry else 1e-3
        comm = [l for l in log0.splitlines() if "exposed_comm_share" in l][-3:]
        c.data.update({"steps": steps, "single": a, "two_processes": b, "max_relative_difference": max(rel, default=None),
                       "tolerance": tol, "comm_log": comm})
        c.ok = len(a) == steps and len(b) == steps and max(rel) <= tol
        if not c.ok:
            c.error = f"{len(a)} vs {len(b)} logged steps (want {steps}); max relative difference {max(rel, default=None)}"

    def check_kill(self, c):
        s = self.sizes()
        timeout_s = 20
        extra = f'[dist]\ntimeout_s = {timeout_s}\nbackend = "tcp"\n'
        cfg = self.job("kill", s["cifar"], s["batches"]["cifar"][0], extra)
        logs = cfg.parent
        env = {"AMDIM_TRAIN__MAX_STEPS": "100000", "AMDIM_TRAIN__EPOCHS": "100000"}
        procs = self.spawn_ranks(c, cfg, 2, logs, env)
        try:
            start = time.monotonic()
            while "step=3" not in (logs / "rank1.log").read_text():
                if time.monotonic() - start > min(180, self.left()) or any(p.poll() is not None for p in procs):
                    raise RuntimeError("rank 1 never reached step 3:\n" + (logs / "rank1.log").read_text()[-2000:])
                time.sleep(0.02)
            procs[1].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            code = procs[0].wait(timeout=timeout_s + 30)
            took = time.monotonic() - killed
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        log0 = (logs / "rank0.log").read_text()
        error = log0.split("Error:")[1][:600] if "Error:" in log0 else log0[-600:]
        names = "lost rank 1" in error or "[1] lost" in error
        c.data.update({"exit_code": code, "seconds_to_fail": round(took, 2), "timeout_s": timeout_s, "error": error.strip()})
        c.ok = code != 0 and names and took <= timeout_s
        if not c.ok:
            c.error = f"rank 0 exit {code} after {took:.1f} s (limit {timeout_s} s), names rank 1: {names}"

    def main(self):
        started = time.time()
        info = {"dry_run": self.dry, "worker": str(self.args.worker), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not self.dry and shutil.which("nvidia-smi"):
            info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                         capture_output=True, text=True).stdout.strip()
        self.section("bench", self.check_bench)
        self.section("score_parity", self.check_score)
        self.section("nccl_world1", self.check_nccl)
        self.section("two_processes_tcp", self.check_two_processes)
        self.section("kill_one_process", self.check_kill)
        info["seconds"] = round(time.time() - started, 1)
        result = {"info": info, "ok": all(c.ok for c in self.checks), "checks": [c.record() for c in self.checks]}
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / ("gpu-check-dry-run.json" if self.dry else "gpu-check.json")
        path.write_text(json.dumps(result, indent=1))
        print(f"{'all checks passed' if result['ok'] else 'SOME CHECKS FAILED'}; results in {path}", flush=True)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if result["ok"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", required=True, type=Path)
    p.add_argument("--out", required=True)
    p.add_argument("--reference", default=None, help="amdim_torch.py (default: worker/python/amdim_torch.py if present)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting checks after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    if args.reference is None:
        default = REPO / "worker" / "python" / "amdim_torch.py"
        args.reference = default if default.exists() else None
    sys.exit(Runner(args).main())


if __name__ == "__main__":
    main()
