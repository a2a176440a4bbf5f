#!/usr/bin/env python3
"""amdim_torch: the AMDIM model of this project in plain PyTorch.

Written by the amdim project from ../docs/model.md (§1-4), not
derived from the authors' code: only the `state_dict` keys equal theirs
(the spec's appendix), so their checkpoints, ours (`model.safetensors`
written by amdim) and this module exchange weights in both directions.

What it owns: the encoder (32, 64 and 128 px), the multiscale NCE loss, the
online classifiers and their loss, safetensors reading/writing without the
`safetensors` package, and a small `embed` command. What it must not do:
train (a caller runs its own optimizer), or change key names or shapes.

    import amdim_torch as at
    model = at.build_model(32, ndf=128, n_rkhs=1024, n_depth=3)
    at.load_safetensors(model, "model.safetensors")
    r1, r5, r7 = model.encode(images)          # [B, D], [B, D, 5, 5], [B, D, 7, 7]
    losses = model.step_losses(view1, view2, labels)
    losses["total"].backward()

Command line (float32 NCHW .npy in, already normalised; r1 [N, D] out):

    python3 amdim_torch.py embed --weights model.safetensors --npy x.npy --out r1.npy

The architecture (image size, ndf, n_rkhs, depth) is read from the weights'
shapes, `use_bn` from the file's metadata or its BatchNorm counters (see
`infer_config`); `--use-bn 0|1` overrides it.
"""
import argparse
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5
CLASSIFIER_HIDDEN = 1024
DROPOUT = 0.2


# ---------------------------------------------------------------- building blocks


class Switchable(nn.Module):
    """A BatchNorm held as `.bn` (so it is always in the state_dict), used only when `on`."""

    def __init__(self, channels, on):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.on = on

    def forward(self, x):
        return self.bn(x) if self.on else x


class Stem(nn.Module):
    """Optional reflect padding, k x k conv with bias, ReLU (docs/model.md §1)."""

    def __init__(self, cin, cout, kernel, stride, reflect=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=True)
        self.reflect = reflect

    def forward(self, x):
        if self.reflect:
            x = F.pad(x, [self.reflect] * 4, mode="reflect")
        return F.relu(self.conv(x))


class Residual(nn.Module):
    """Res(cin, cout, k, s): conv k (no bias) -> BN? -> ReLU -> conv 1x1, plus an
    average-pooled shortcut whose missing channels are zeros appended last."""

    def __init__(self, cin, cout, kernel, stride, use_bn):
        super().__init__()
        if cout < cin:
            raise ValueError(f"residual unit needs cout >= cin, got {cin} -> {cout}")
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 1, 1, bias=False)
        self.bn1 = Switchable(cout, use_bn)
        self.kernel, self.stride, self.extra = kernel, stride, cout - cin

    def forward(self, x):
        branch = self.conv2(F.relu(self.bn1(self.conv1(x))))
        skip = F.avg_pool2d(x, self.kernel, self.stride)
        if self.extra:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        return branch + skip


class Stack(nn.Module):
    """Blk(cin, cout, k, s): Res(cin, cout, k, s) then depth - 1 Res(cout, cout, 1, 1)."""

    def __init__(self, cin, cout, kernel, stride, depth, use_bn):
        super().__init__()
        units = [Residual(cin, cout, kernel, stride, use_bn)]
        units += [Residual(cout, cout, 1, 1, use_bn) for _ in range(depth - 1)]
        self.layer_list = nn.Sequential(*units)

    def forward(self, x):
        return self.layer_list(x)


class Head(nn.Module):
    """The embedding head: BN_out(conv_b(ReLU(BN_hid?(conv_a(x)))) + short(x))."""

    def __init__(self, cin, d, use_bn):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, d, 1, bias=False)
        self.bn_hid = Switchable(d, use_bn)
        self.conv2 = nn.Conv2d(d, d, 1, bias=False)
        self.bn_out = Switchable(d, True)
        self.shortcut = nn.Conv2d(cin, d, 1, bias=True)

    def forward(self, x):
        return self.bn_out(self.conv2(F.relu(self.bn_hid(self.conv1(x)))) + self.shortcut(x))


def trunk_layers(image_size, ndf, d, depth, use_bn):
    """The encoder's layer list of docs/model.md §2 and the width C of its 7x7 and 5x5 maps."""
    blk = lambda cin, cout, k, s: Stack(cin, cout, k, s, depth, use_bn)  # noqa: E731
    if image_size == 32:
        c = 4 * ndf
        layers = [Stem(3, ndf, 3, 1), Residual(ndf, ndf, 1, 1, use_bn), blk(ndf, 2 * ndf, 4, 2), blk(2 * ndf, c, 2, 2)]
    elif image_size == 64:
        c = 8 * ndf
        layers = [Stem(3, ndf, 3, 1), blk(ndf, 2 * ndf, 4, 2), blk(2 * ndf, 4 * ndf, 4, 2), blk(4 * ndf, c, 2, 2)]
    elif image_size == 128:
        c = 8 * ndf
        layers = [Stem(3, ndf, 5, 2, reflect=2), Stem(ndf, ndf, 3, 1)]
        layers += [blk(ndf, 2 * ndf, 4, 2), blk(2 * ndf, 4 * ndf, 4, 2), blk(4 * ndf, c, 2, 2)]
    else:
        raise ValueError(f"image_size must be 32, 64 or 128, got {image_size}")
    layers += [Switchable(c, use_bn), blk(c, c, 3, 1), blk(c, c, 3, 1), Residual(c, d, 3, 1, use_bn), Switchable(d, True)]
    return layers, c


class Encoder(nn.Module):
    """Images [B, 3, S, S] -> (f1 [B, D, 1, 1], r5 [B, D, 5, 5], r7 [B, D, 7, 7])."""

    def __init__(self, image_size, ndf, d, depth, use_bn):
        super().__init__()
        layers, c = trunk_layers(image_size, ndf, d, depth, use_bn)
        self.layer_list = nn.ModuleList(layers)
        self.rkhs_block_5 = Head(c, d, use_bn)
        self.rkhs_block_7 = Head(c, d, use_bn)
        # The last layer of each spatial size feeds the heads: the switchable BN
        # after the strided blocks (7x7) and the first 3x3 block (5x5).
        self.tap7 = len(layers) - 5
        self.tap5 = len(layers) - 4

    def forward(self, x):
        taps = {}
        for i, layer in enumerate(self.layer_list):
            x = layer(x)
            taps[i] = x
        return x, self.rkhs_block_5(taps[self.tap5]), self.rkhs_block_7(taps[self.tap7])


class Probe(nn.Module):
    """A classifier as `block_forward`, an nn.Sequential whose indices give the keys."""

    def __init__(self, layers):
        super().__init__()
        self.block_forward = nn.Sequential(*layers)


class OnlineEval(nn.Module):
    """Linear and MLP classifiers on detached r1 (docs/model.md §4)."""

    def __init__(self, d, n_classes):
        super().__init__()
        self.block_glb_mlp = Probe([
            nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(d, CLASSIFIER_HIDDEN, bias=False),
            nn.BatchNorm1d(CLASSIFIER_HIDDEN, eps=BN_EPS), nn.ReLU(), nn.Dropout(DROPOUT),
            nn.Linear(CLASSIFIER_HIDDEN, n_classes),
        ])
        self.block_glb_lin = Probe([nn.Flatten(), nn.Identity(), nn.Linear(d, n_classes)])

    def forward(self, r1, keep=None):
        """Linear and MLP logits; `keep` = two dropout multipliers [N, D], [N, 1024]
        (already scaled by 1/(1-p)) replaces the module's own random dropout."""
        mlp = self.block_glb_mlp.block_forward
        lin = self.block_glb_lin.block_forward[2](r1)
        h = r1 * keep[0] if keep is not None else mlp[1](r1)
        h = F.relu(mlp[3](mlp[2](h)))
        h = h * keep[1] if keep is not None else mlp[5](h)
        return lin, mlp[6](h)


class SourceMasks(nn.Module):
    """Holds `masks_r5`, the 25 one-hot 5x5 masks ([25, 1, 5, 5] uint8), a constant
    kept only so that the state_dict has the authors' keys."""

    def __init__(self):
        super().__init__()
        self.register_buffer("masks_r5", torch.eye(25, dtype=torch.uint8).reshape(25, 1, 5, 5))


# ------------------------------------------------------------------------ losses


def nce_direction(src, trg, tclip, reg_lambda):
    """One direction of docs/model.md §3: sources [N, D] against targets [N, D, L].
    Returns (mean NCE loss, regulariser)."""
    n, d = src.shape
    m, _, locs = trg.shape
    scores = (src @ trg.transpose(0, 1).reshape(d, m * locs)).reshape(n, m, locs) / math.sqrt(d)
    reg = reg_lambda * scores.pow(2).mean()
    clipped = tclip * torch.tanh(scores / tclip)
    own = torch.eye(n, dtype=torch.bool, device=src.device)
    positives = clipped[own]  # [N, L]: image i's own locations
    negatives = clipped[~own].reshape(n, -1)  # [N, (N-1) L]: every location of every other image
    neg_lse = torch.logsumexp(negatives, dim=1, keepdim=True)
    loss = torch.logaddexp(positives, neg_lse) - positives
    return loss.mean(), reg


def classifier_loss(logits, labels):
    """Cross-entropy on 10 tanh(z/10) plus 1e-3 mean(z^2)."""
    return F.cross_entropy(10.0 * torch.tanh(logits / 10.0), labels) + 1e-3 * logits.pow(2).mean()


class AmdimModel(nn.Module):
    """Encoder, NCE constants and online classifiers under the authors' key names."""

    def __init__(self, image_size, ndf, n_rkhs, n_depth, use_bn, n_classes, reg_lambda, tclip):
        super().__init__()
        self.encoder = Encoder(image_size, ndf, n_rkhs, n_depth, use_bn)
        self.g2l_loss = SourceMasks()
        self.evaluator = OnlineEval(n_rkhs, n_classes)
        self.config = dict(image_size=image_size, ndf=ndf, n_rkhs=n_rkhs, n_depth=n_depth, use_bn=use_bn, n_classes=n_classes)
        self.reg_lambda, self.tclip = reg_lambda, tclip

    def encode(self, x):
        """(r1 [B, D], r5 [B, D, 5, 5], r7 [B, D, 7, 7]) in the module's current mode."""
        f1, r5, r7 = self.encoder(x)
        return f1.flatten(1), r5, r7

    def step_losses(self, x1, x2, labels, r5_locations=None, dropout_keep=None):
        """Every loss term of one training step (train mode) on views x1, x2.

        r5_locations: int64 [2, B], each image's 5->5 source location (row*5 +
        col) in view 1 and view 2; random when None. labels: int64 [B] or None
        (then no classifier terms). dropout_keep: optional fixed MLP dropout
        multipliers ([2B, D], [2B, 1024]) for the rows [view 1, view 2].
        Returns tensors: nce_1t5, nce_1t7, nce_5t5, reg, class_lin, class_mlp, total.
        """
        self.train()
        b = x1.shape[0]
        if r5_locations is None:
            r5_locations = torch.randint(0, 25, (2, b), device=x1.device)
        views = [self.encode(x1), self.encode(x2)]
        rows = torch.arange(b, device=x1.device)
        terms = {"nce_1t5": 0.0, "nce_1t7": 0.0, "nce_5t5": 0.0, "reg": 0.0}
        for a, o in ((0, 1), (1, 0)):
            r1, r5, _ = views[a]
            _, t5, t7 = views[o]
            t5, t7 = t5.flatten(2), t7.flatten(2)
            picked = r5.flatten(2)[rows, :, r5_locations[a]]
            for key, src, trg in (("nce_1t5", r1, t5), ("nce_1t7", r1, t7), ("nce_5t5", picked, t5)):
                loss, reg = nce_direction(src, trg, self.tclip, self.reg_lambda)
                terms[key] = terms[key] + 0.5 * loss
                terms["reg"] = terms["reg"] + 0.5 * reg
        total = terms["nce_1t5"] + terms["nce_1t7"] + terms["nce_5t5"] + terms["reg"]
        zero = total.new_zeros(())
        terms["class_lin"], terms["class_mlp"] = zero, zero
        if labels is not None:
            features = torch.cat([views[0][0], views[1][0]]).detach()
            both = torch.cat([labels, labels]).long()
            lin, mlp = self.evaluator(features, dropout_keep)
            terms["class_lin"], terms["class_mlp"] = classifier_loss(lin, both), classifier_loss(mlp, both)
        terms["total"] = total + terms["class_lin"] + terms["class_mlp"]
        return terms


# ----------------------------------------------------------------- initialisation


def _initialise(model):
    """Spec §1's initialisation: residual and head output convs zero, head
    shortcuts near identity, everything else PyTorch's defaults."""
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, Residual):
                module.conv2.weight.zero_()
            elif isinstance(module, Head):
                module.conv2.weight.zero_()
                w = module.shortcut.weight
                w.uniform_(-0.01, 0.01)
                n = min(w.shape[0], w.shape[1])
                w[torch.arange(n), torch.arange(n), 0, 0] = 1.0


def build_model(image_size, ndf, n_rkhs, n_depth, use_bn=False, n_classes=10, reg_lambda=4e-2, tclip=20.0):
    """A freshly initialised model whose state_dict keys are the authors'."""
    model = AmdimModel(image_size, ndf, n_rkhs, n_depth, use_bn, n_classes, reg_lambda, tclip)
    _initialise(model)
    return model


# -------------------------------------------------------------------- safetensors

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "F16": np.float16, "I32": np.int32}


def read_safetensors(path):
    """(name -> numpy array, metadata dict) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None) or {}
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor `{name}` has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes name -> tensor/array (float32, float64, int64 or uint8) as safetensors."""
    names = {v: k for k, v in _DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t)
        data = a.tobytes()
        header[name] = {"dtype": names[a.dtype.type], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _canonical(name):
    return "encoder." + name[len("encoder.module."):] if name.startswith("encoder.module.") else name


def load_safetensors(model, path, require_classifiers=False):
    """Loads a safetensors state_dict (amdim's `model.safetensors`, or the
    authors' converted file; `encoder.module.` accepted) into `model`.

    Encoder tensors must all be present with the model's shapes; the
    classifiers may be absent (encoder-only export) unless
    `require_classifiers`; `g2l_loss.masks_r5` is a constant. Raises
    KeyError/ValueError naming the first missing, unexpected or misshapen
    tensor and its expected shape. Returns the file's metadata."""
    tensors, meta = read_safetensors(path)
    found = {_canonical(k): v for k, v in tensors.items()}
    own = model.state_dict()
    for name, value in own.items():
        optional = name == "g2l_loss.masks_r5" or (name.startswith("evaluator.") and not require_classifiers)
        if name not in found:
            if optional:
                continue
            raise KeyError(f"{path}: tensor `{name}` (shape {list(value.shape)}) is missing")
        if tuple(found[name].shape) != tuple(value.shape) and found[name].size != value.numel():
            raise ValueError(f"{path}: tensor `{name}` has shape {list(found[name].shape)}, the model expects {list(value.shape)}")
    for name in found:
        if name.startswith(("encoder.", "evaluator.")) and name not in own:
            raise KeyError(f"{path}: unexpected tensor `{name}` (shape {list(found[name].shape)}); the model has no such tensor")
    with torch.no_grad():
        for name, value in own.items():
            if name in found:
                value.copy_(torch.from_numpy(found[name]).reshape(value.shape).to(value.dtype))
    return meta


def infer_config(tensors, meta=None):
    """The model's (image_size, ndf, n_rkhs, n_depth, use_bn) from a state_dict's
    names and shapes. use_bn comes from the metadata when present — the
    `model` JSON value that amdim's checkpoints carry (its `[model]` section,
    with `format` = "amdim-model"), or a bare `use_bn` — else from whether
    the first block's BatchNorm ever counted a batch (an untrained file reads
    as off; its BatchNorms are then still at mean 0, variance 1, so the
    difference is that of eps). A `model` value whose image_size, ndf,
    n_rkhs or depth contradicts the shapes is a ValueError naming the field."""
    t = {_canonical(k): v for k, v in tensors.items()}
    stem = t["encoder.layer_list.0.conv.weight"].shape
    ndf = stem[0]
    if stem[2] == 5:
        size = 128
    elif "encoder.layer_list.1.conv1.weight" in t:
        size = 32
    else:
        size = 64
    d = t["encoder.rkhs_block_5.conv1.weight"].shape[0]
    depth = sum(1 for k in t if k.startswith("encoder.layer_list.2.layer_list.") and k.endswith(".conv1.weight"))
    meta = meta or {}
    model = json.loads(meta["model"]) if "model" in meta else {}
    for field, value in (("image_size", size), ("ndf", ndf), ("n_rkhs", d), ("depth", depth)):
        if field in model and int(model[field]) != int(value):
            raise ValueError(f"model.{field}: the metadata says {model[field]} but the tensors' shapes say {value}")
    if "use_bn" in model:
        use_bn = bool(model["use_bn"])
    elif "use_bn" in meta:
        use_bn = str(meta["use_bn"]).lower() in ("1", "true")
    else:
        # A BatchNorm that is switched off never counts a batch (theirs and ours).
        counter = t.get("encoder.layer_list.2.layer_list.0.bn1.bn.num_batches_tracked")
        use_bn = bool(counter is not None and int(np.asarray(counter).reshape(-1)[0]) > 0)
    return size, ndf, d, depth, use_bn


def load_model_file(path, use_bn=None):
    """A model built from a weights file's own shapes, with its weights loaded, in eval mode."""
    tensors, meta = read_safetensors(path)
    size, ndf, d, depth, file_bn = infer_config(tensors, meta)
    bn = file_bn if use_bn is None else use_bn
    n_classes = tensors.get("evaluator.block_glb_lin.block_forward.2.bias", np.zeros(10)).shape[0]
    model = build_model(size, ndf, d, depth, use_bn=bool(bn), n_classes=n_classes)
    load_safetensors(model, path)
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed", help="r1 features (eval mode) of a float32 NCHW .npy")
    e.add_argument("--weights", required=True)
    e.add_argument("--npy", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--use-bn", choices=["auto", "0", "1"], default="auto",
                   help="the model's use_bn (auto: from the file, see infer_config)")
    e.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    model = load_model_file(args.weights, None if args.use_bn == "auto" else args.use_bn == "1")
    x = np.load(args.npy)
    size = model.config["image_size"]
    if x.dtype != np.float32 or x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
        sys.exit(f"{args.npy}: {x.dtype} {list(x.shape)}, expected float32 [N, 3, {size}, {size}]")
    out = []
    with torch.no_grad():
        for start in range(0, len(x), args.batch_size):
            out.append(model.encode(torch.from_numpy(x[start:start + args.batch_size]))[0].numpy())
    r1 = np.concatenate(out) if out else np.zeros((0, model.config["n_rkhs"]), np.float32)
    np.save(args.out, r1.astype(np.float32))


if __name__ == "__main__":
    main()
