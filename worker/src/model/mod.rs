//! The AMDIM model: architecture plan, parameter storage, and forward passes
//! of the encoder, online classifiers and mixture map.
//!
//! Owns the maths of docs/model.md §1–2 and §4; the losses live in `loss/`, the
//! optimisation in `optim/`. Must not rename a tensor: the names below are
//! the authors' `state_dict` keys (checked against the project's PyTorch
//! reference, `worker/python/amdim_torch.py`, by `tests/parity.rs`).
//!
//! # The state_dict, name by name
//!
//! `C` = 4·ndf at 32 px and 8·ndf at 64 and 128 px, `D` = n_rkhs, `K` the
//! number of classes; `M` runs over `0..depth` inside a block. A unit
//! `Res(cin, cout, k)` under prefix `P` holds `P.conv1.weight` [cout, cin, k, k],
//! `P.conv2.weight` [cout, cout, 1, 1] and `P.bn1.bn.*`; in a block
//! `Blk(cin, cout, k)` unit `M = 0` is `Res(cin, cout, k)` and the others are
//! `Res(cout, cout, 1)`. `BN(c)` stands for `.weight`, `.bias`,
//! `.running_mean`, `.running_var` (all [c], float32) and
//! `.num_batches_tracked` ([], int64).
//!
//! | `encoder.layer_list.N` | 32 px | 64 px | 128 px |
//! |---|---|---|---|
//! | 0 | `.conv.weight` [ndf, 3, 3, 3], `.conv.bias` [ndf] | same | `.conv.weight` [ndf, 3, 5, 5], `.conv.bias` [ndf] |
//! | 1 | Res(ndf, ndf, 1) | Blk(ndf, 2ndf, 4): `.layer_list.M.…` | `.conv.weight` [ndf, ndf, 3, 3], `.conv.bias` [ndf] |
//! | 2 | Blk(ndf, 2ndf, 4) | Blk(2ndf, 4ndf, 4) | Blk(ndf, 2ndf, 4) |
//! | 3 | Blk(2ndf, 4ndf, 2) | Blk(4ndf, 8ndf, 2) | Blk(2ndf, 4ndf, 4) |
//! | 4 | `.bn.*` BN(C) | `.bn.*` BN(C) | Blk(4ndf, 8ndf, 2) |
//! | 5 | Blk(C, C, 3) | Blk(C, C, 3) | `.bn.*` BN(C) |
//! | 6 | Blk(C, C, 3) | Blk(C, C, 3) | Blk(C, C, 3) |
//! | 7 | Res(C, D, 3) | Res(C, D, 3) | Blk(C, C, 3) |
//! | 8 | `.bn.*` BN(D) | `.bn.*` BN(D) | Res(C, D, 3) |
//! | 9 | – | – | `.bn.*` BN(D) |
//!
//! | other names (all sizes) | shape |
//! |---|---|
//! | `encoder.rkhs_block_{5,7}.conv1.weight` | [D, C, 1, 1] |
//! | `encoder.rkhs_block_{5,7}.bn_hid.bn.*` | BN(D) |
//! | `encoder.rkhs_block_{5,7}.conv2.weight` | [D, D, 1, 1] |
//! | `encoder.rkhs_block_{5,7}.bn_out.bn.*` | BN(D) |
//! | `encoder.rkhs_block_{5,7}.shortcut.weight`, `.bias` | [D, C, 1, 1], [D] |
//! | `g2l_loss.masks_r5` (authors' files only; ignored on load) | [25, 1, 5, 5] uint8 |
//! | `evaluator.block_glb_mlp.block_forward.2.weight` | [1024, D] |
//! | `evaluator.block_glb_mlp.block_forward.3.*` (BatchNorm1d) | BN(1024) |
//! | `evaluator.block_glb_mlp.block_forward.6.weight`, `.bias` | [K, 1024], [K] |
//! | `evaluator.block_glb_lin.block_forward.2.weight`, `.bias` | [K, D], [K] |
//!
//! `use_bn` changes no name or shape: every BatchNorm is in the state_dict
//! whether it runs or not (one that does not run never counts a batch). Entry
//! counts with `masks_r5` and the classifiers: 65 + 28·depth at 32 px (121 at
//! depth 2), 58 + 35·depth at 64 px, 60 + 35·depth at 128 px (130 at depth
//! 2). The authors' raw files, saved from `nn.DataParallel`, spell
//! `encoder.module.` for `encoder.`; loading accepts both.

pub mod encoder;
pub mod kernels;
pub mod layers;
mod moves;
pub mod params;
pub mod plan;

pub use encoder::{BnMode, BnStats, Embeddings};
pub use params::ParamStore;
pub use plan::{ModelPlan, plan};
