"""Reference numbers from the authors' PyTorch model (amdim-public, model.py and
costs.py, transcribed), for the parity test of `amdim-worker score` and `embed`.

Usage: python3 authors_model.py OUT_DIR IMAGE_SIZE NDF N_RKHS DEPTH USE_BN LAMBDA
Writes OUT_DIR/weights.safetensors (the model's state_dict, PyTorch names),
v1.npy, v2.npy, locs.npy, and expected.json (loss terms and eval-mode r1).
"""
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MaybeBatchNorm2d(nn.Module):
    def __init__(self, n_ftr, affine, use_bn):
        super().__init__()
        self.bn = nn.BatchNorm2d(n_ftr, affine=affine)
        self.use_bn = use_bn

    def forward(self, x):
        return self.bn(x) if self.use_bn else x


class Conv3x3(nn.Module):
    def __init__(self, n_in, n_out, n_kern, n_stride, n_pad, use_bn=True, pad_mode="constant"):
        super().__init__()
        self.n_pad = (n_pad, n_pad, n_pad, n_pad)
        self.pad_mode = pad_mode
        self.conv = nn.Conv2d(n_in, n_out, n_kern, n_stride, 0, bias=(not use_bn))
        self.bn = MaybeBatchNorm2d(n_out, True, use_bn) if use_bn else None

    def forward(self, x):
        if self.n_pad[0] > 0:
            x = F.pad(x, self.n_pad, mode=self.pad_mode)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


class ConvResNxN(nn.Module):
    def __init__(self, n_in, n_out, width, stride, pad, use_bn=False):
        super().__init__()
        assert n_out >= n_in
        self.n_in, self.n_out, self.width, self.stride, self.pad = n_in, n_out, width, stride, pad
        self.conv1 = nn.Conv2d(n_in, n_out, width, stride, pad, bias=False)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, 1, 0, bias=False)
        self.bn1 = MaybeBatchNorm2d(n_out, True, use_bn)

    def forward(self, x):
        h1 = self.bn1(self.conv1(x))
        h2 = self.conv2(F.relu(h1))
        if self.n_in == self.n_out:
            h3 = F.avg_pool2d(x, self.width, self.stride, self.pad)
        else:
            h3_pool = F.avg_pool2d(x, self.width, self.stride, self.pad)
            h3 = F.pad(h3_pool, (0, 0, 0, 0, 0, self.n_out - self.n_in))
        return h2 + h3


class ConvResBlock(nn.Module):
    def __init__(self, n_in, n_out, width, stride, pad, depth, use_bn):
        super().__init__()
        layers = [ConvResNxN(n_in, n_out, width, stride, pad, use_bn)]
        for _ in range(depth - 1):
            layers.append(ConvResNxN(n_out, n_out, 1, 1, 0, use_bn))
        self.layer_list = nn.Sequential(*layers)

    def forward(self, x):
        return self.layer_list(x)


class FakeRKHSConvNet(nn.Module):
    def __init__(self, n_input, n_output, use_bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(n_input, n_output, 1, 1, 0, bias=False)
        self.bn1 = MaybeBatchNorm2d(n_output, True, use_bn)
        self.conv2 = nn.Conv2d(n_output, n_output, 1, 1, 0, bias=False)
        self.bn_out = MaybeBatchNorm2d(n_output, True, True)
        self.shortcut = nn.Conv2d(n_input, n_output, 1, 1, 0, bias=True)

    def forward(self, x):
        h_res = self.conv2(F.relu(self.bn1(self.conv1(x))))
        return self.bn_out(h_res + self.shortcut(x))


class Encoder(nn.Module):
    def __init__(self, ndf, n_rkhs, n_depth, encoder_size, use_bn):
        super().__init__()
        d = n_depth
        if encoder_size == 32:
            self.layer_list = nn.ModuleList([
                Conv3x3(3, ndf, 3, 1, 0, False),
                ConvResNxN(ndf, ndf, 1, 1, 0, use_bn),
                ConvResBlock(ndf, ndf * 2, 4, 2, 0, d, use_bn),
                ConvResBlock(ndf * 2, ndf * 4, 2, 2, 0, d, use_bn),
                MaybeBatchNorm2d(ndf * 4, True, use_bn),
                ConvResBlock(ndf * 4, ndf * 4, 3, 1, 0, d, use_bn),
                ConvResBlock(ndf * 4, ndf * 4, 3, 1, 0, d, use_bn),
                ConvResNxN(ndf * 4, n_rkhs, 3, 1, 0, use_bn),
                MaybeBatchNorm2d(n_rkhs, True, True),
            ])
            c = ndf * 4
        elif encoder_size == 64:
            self.layer_list = nn.ModuleList([
                Conv3x3(3, ndf, 3, 1, 0, False),
                ConvResBlock(ndf, ndf * 2, 4, 2, 0, d, use_bn),
                ConvResBlock(ndf * 2, ndf * 4, 4, 2, 0, d, use_bn),
                ConvResBlock(ndf * 4, ndf * 8, 2, 2, 0, d, use_bn),
                MaybeBatchNorm2d(ndf * 8, True, use_bn),
                ConvResBlock(ndf * 8, ndf * 8, 3, 1, 0, d, use_bn),
                ConvResBlock(ndf * 8, ndf * 8, 3, 1, 0, d, use_bn),
                ConvResNxN(ndf * 8, n_rkhs, 3, 1, 0, use_bn),
                MaybeBatchNorm2d(n_rkhs, True, True),
            ])
            c = ndf * 8
        else:
            self.layer_list = nn.ModuleList([
                Conv3x3(3, ndf, 5, 2, 2, False, pad_mode="reflect"),
                Conv3x3(ndf, ndf, 3, 1, 0, False),
                ConvResBlock(ndf, ndf * 2, 4, 2, 0, d, use_bn),
                ConvResBlock(ndf * 2, ndf * 4, 4, 2, 0, d, use_bn),
                ConvResBlock(ndf * 4, ndf * 8, 2, 2, 0, d, use_bn),
                MaybeBatchNorm2d(ndf * 8, True, use_bn),
                ConvResBlock(ndf * 8, ndf * 8, 3, 1, 0, d, use_bn),
                ConvResBlock(ndf * 8, ndf * 8, 3, 1, 0, d, use_bn),
                ConvResNxN(ndf * 8, n_rkhs, 3, 1, 0, use_bn),
                MaybeBatchNorm2d(n_rkhs, True, True),
            ])
            c = ndf * 8
        self.rkhs_block_5 = FakeRKHSConvNet(c, n_rkhs, use_bn)
        self.rkhs_block_7 = FakeRKHSConvNet(c, n_rkhs, use_bn)

    def forward(self, x):
        acts = []
        for layer in self.layer_list:
            x = layer(x)
            acts.append(x)
        sizes = [a.size(2) for a in acts]
        f7 = acts[max(i for i, s in enumerate(sizes) if s == 7)]
        f5 = acts[max(i for i, s in enumerate(sizes) if s == 5)]
        r1 = acts[-1]
        return r1, self.rkhs_block_5(f5), self.rkhs_block_7(f7)


def tanh_clip(x, clip_val):
    return clip_val * torch.tanh(x / clip_val)


def model_scores(r_src, r_trg, mask_mat, tclip, lam):
    """The authors' NCE_MI_MULTI._model_scores, with lambda as a parameter."""
    n_batch_gpu, n_batch = mask_mat.size(0), mask_mat.size(1)
    n_locs = r_trg.size(1) // n_batch
    n_rkhs = r_src.size(1)
    mask_pos = mask_mat.unsqueeze(dim=2).expand(-1, -1, n_locs).float()
    mask_neg = 1.0 - mask_pos
    raw_scores = torch.mm(r_src, r_trg).float().reshape(n_batch_gpu, n_batch, n_locs) / n_rkhs ** 0.5
    lgt_reg = lam * (raw_scores ** 2.0).mean()
    raw_scores = tanh_clip(raw_scores, tclip)
    pos_scores = (mask_pos * raw_scores).sum(dim=1)
    neg_scores = (mask_neg * raw_scores) - (tclip * mask_pos)
    neg_scores = neg_scores.reshape(n_batch_gpu, -1)
    mask_neg = mask_neg.reshape(n_batch_gpu, -1)
    neg_maxes = torch.max(neg_scores, dim=1, keepdim=True)[0]
    neg_sumexp = (mask_neg * torch.exp(neg_scores - neg_maxes)).sum(dim=1, keepdim=True)
    all_logsumexp = torch.log(torch.exp(pos_scores - neg_maxes) + neg_sumexp)
    nce_scores = (pos_scores - neg_maxes) - all_logsumexp
    return -nce_scores.mean(), lgt_reg


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    out, size, ndf, n_rkhs, depth, use_bn, lam = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", float(sys.argv[7])
    torch.manual_seed(0)
    enc = Encoder(ndf, n_rkhs, depth, size, use_bn)
    # Non-trivial values everywhere (the authors' zero init would hide most of the network).
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("bn.weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
            else:
                fan_in = p[0].numel()
                p.uniform_(-1.5 / math.sqrt(fan_in), 1.5 / math.sqrt(fan_in))
        for name, b in enc.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.3, 0.3)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                b.fill_(3)
    n = 6
    v1 = torch.randn(n, 3, size, size)
    v2 = torch.randn(n, 3, size, size)
    locs = torch.randint(0, 25, (2, n), dtype=torch.int64)
    state = {"encoder." + k: v for k, v in enc.state_dict().items()}
    write_safetensors(f"{out}/weights.safetensors", state)
    np.save(f"{out}/v1.npy", v1.numpy())
    np.save(f"{out}/v2.npy", v2.numpy())
    np.save(f"{out}/locs.npy", locs.numpy())
    with torch.no_grad():
        enc.eval()
        r1_eval, r5_eval, _ = enc(v1)
        enc.train()
        r1_1, r5_1, r7_1 = enc(v1)
        r1_2, r5_2, r7_2 = enc(v2)
        mask = torch.eye(n)

        def trg(r):
            return r.permute(1, 0, 2, 3).reshape(n_rkhs, -1)

        def src5(r, loc):
            return r.reshape(n, n_rkhs, 25)[torch.arange(n), :, loc]

        r1_1, r1_2 = r1_1.reshape(n, n_rkhs), r1_2.reshape(n, n_rkhs)
        l15a, g15a = model_scores(r1_1, trg(r5_2), mask, 20.0, lam)
        l15b, g15b = model_scores(r1_2, trg(r5_1), mask, 20.0, lam)
        l17a, g17a = model_scores(r1_1, trg(r7_2), mask, 20.0, lam)
        l17b, g17b = model_scores(r1_2, trg(r7_1), mask, 20.0, lam)
        l55a, g55a = model_scores(src5(r5_1, locs[0]), trg(r5_2), mask, 20.0, lam)
        l55b, g55b = model_scores(src5(r5_2, locs[1]), trg(r5_1), mask, 20.0, lam)
        reg = 0.5 * (g15a + g15b + g17a + g17b + g55a + g55b)
        terms = {
            "loss_1t5": float(0.5 * (l15a + l15b)),
            "loss_1t7": float(0.5 * (l17a + l17b)),
            "loss_5t5": float(0.5 * (l55a + l55b)),
            "reg": float(reg),
        }
        terms["loss_total"] = terms["loss_1t5"] + terms["loss_1t7"] + terms["loss_5t5"] + terms["reg"]
    expected = {"score": terms, "r1_eval": r1_eval.reshape(n, n_rkhs).tolist(), "r5_eval_first": r5_eval[0].reshape(-1)[:50].tolist()}
    with open(f"{out}/expected.json", "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
