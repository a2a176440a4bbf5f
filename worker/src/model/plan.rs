//! The architecture as data: every tensor the model owns, with its PyTorch
//! `state_dict` name, shape and initialisation (docs/model.md §1–2, §4).
//!
//! Building a plan allocates nothing, so parameter counts of the 600 M
//! parameter configurations can be checked in a unit test. The layer structs
//! hold indices into the plan's entry list; `encoder.rs` runs them.

use amdim_shared::spec::{LossSpec, ModelSpec};

/// How one tensor starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Uniform(−b, b), b = scale / √fan_in: PyTorch's default conv/linear
    /// weight init (Kaiming-uniform with a = √5) and its default bias init.
    FanInUniform {
        fan_in: usize,
        scale: f64,
    },
    Zeros,
    Ones,
    /// Uniform(−0.01, 0.01) with the identity entries (out i ← in i) set to 1.
    ShortcutIdentity {
        cin: usize,
        cout: usize,
    },
}

/// Whether an entry is trained, a running statistic, or a batch counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Param,
    Buffer,
    /// `num_batches_tracked` of a BatchNorm: an int64 scalar in PyTorch.
    Counter,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: EntryKind,
    pub init: Init,
}

impl Entry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A convolution's weight [cout, cin, k, k] and optional bias.
#[derive(Clone, Debug)]
pub struct Conv {
    pub weight: usize,
    pub bias: Option<usize>,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// A BatchNorm's affine parameters, running statistics and counter.
#[derive(Clone, Debug)]
pub struct Bn {
    pub weight: usize,
    pub bias: usize,
    pub running_mean: usize,
    pub running_var: usize,
    pub counter: usize,
    pub channels: usize,
}

/// `Res(cin, cout, k, s)` of docs/model.md §1.
#[derive(Clone, Debug)]
pub struct ResUnit {
    pub conv1: Conv,
    pub bn1: Bn,
    pub conv2: Conv,
    pub use_bn: bool,
}

/// One entry of the encoder's `layer_list`.
#[derive(Clone, Debug)]
pub enum Layer {
    /// Optional reflect padding, conv with bias, ReLU.
    Stem { conv: Conv, reflect_pad: usize },
    /// A single residual unit (32 px layer b, and the final Res(C, D, 3, 1)).
    Res(ResUnit),
    /// `Blk`: a list of residual units.
    Block(Vec<ResUnit>),
    /// `MaybeBatchNorm2d`: applied only when `on`.
    MaybeBn { bn: Bn, on: bool },
}

/// The "fake RKHS" embedding head of docs/model.md §1.
#[derive(Clone, Debug)]
pub struct Head {
    pub conv1: Conv,
    /// The hidden BatchNorm, `bn_hid` in the authors' `FakeRKHSConvNet`.
    pub bn_hid: Bn,
    pub conv2: Conv,
    pub bn_out: Bn,
    pub shortcut: Conv,
    pub use_bn: bool,
}

#[derive(Clone, Debug)]
pub struct EncoderPlan {
    pub layers: Vec<Layer>,
    /// Output spatial size of each layer for the configured input.
    pub sizes: Vec<usize>,
    pub f7_layer: usize,
    pub f5_layer: usize,
    pub head5: Head,
    pub head7: Head,
    pub n_rkhs: usize,
}

/// Linear and MLP online classifiers (docs/model.md §4).
#[derive(Clone, Debug)]
pub struct ClassifierPlan {
    pub lin_weight: usize,
    pub lin_bias: usize,
    pub mlp_weight1: usize,
    pub mlp_bn: Bn,
    pub mlp_weight2: usize,
    pub mlp_bias2: usize,
    pub n_classes: usize,
    pub hidden: usize,
}

/// The k-component mixture map of docs/model.md §3 (r1 → r1 + W2·ReLU(W1·r1 + b1) + b2).
#[derive(Clone, Debug)]
pub struct MixturePlan {
    pub weight1: usize,
    pub bias1: usize,
    pub weight2: usize,
    pub bias2: usize,
    pub k: usize,
}

/// Everything the model owns.
#[derive(Clone, Debug)]
pub struct ModelPlan {
    pub entries: Vec<Entry>,
    pub encoder: EncoderPlan,
    pub classifier: Option<ClassifierPlan>,
    pub mixture: Option<MixturePlan>,
}

impl ModelPlan {
    /// Number of trainable parameters whose names start with `prefix`.
    pub fn count_params(&self, prefix: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::Param && e.name.starts_with(prefix))
            .map(Entry::numel)
            .sum()
    }
}

struct Builder {
    entries: Vec<Entry>,
    use_bn: bool,
    init_scale: f64,
    depth: usize,
}

impl Builder {
    fn push(&mut self, name: String, shape: Vec<usize>, kind: EntryKind, init: Init) -> usize {
        self.entries.push(Entry { name, shape, kind, init });
        self.entries.len() - 1
    }

    /// A conv of shape [cin, cout, kernel, stride].
    fn conv(&mut self, prefix: &str, [cin, cout, kernel, stride]: [usize; 4], bias: bool, weight_init: Init) -> Conv {
        let fan_in = cin * kernel * kernel;
        let weight = self.push(
            format!("{prefix}.weight"),
            vec![cout, cin, kernel, kernel],
            EntryKind::Param,
            weight_init,
        );
        let bias = bias.then(|| {
            self.push(
                format!("{prefix}.bias"),
                vec![cout],
                EntryKind::Param,
                Init::FanInUniform { fan_in, scale: 1.0 },
            )
        });
        Conv {
            weight,
            bias,
            cin,
            cout,
            kernel,
            stride,
        }
    }

    fn bn(&mut self, prefix: &str, channels: usize) -> Bn {
        Bn {
            weight: self.push(format!("{prefix}.weight"), vec![channels], EntryKind::Param, Init::Ones),
            bias: self.push(format!("{prefix}.bias"), vec![channels], EntryKind::Param, Init::Zeros),
            running_mean: self.push(format!("{prefix}.running_mean"), vec![channels], EntryKind::Buffer, Init::Zeros),
            running_var: self.push(format!("{prefix}.running_var"), vec![channels], EntryKind::Buffer, Init::Ones),
            counter: self.push(format!("{prefix}.num_batches_tracked"), vec![], EntryKind::Counter, Init::Zeros),
            channels,
        }
    }

    /// `Res(cin, cout, k, s)` with the builder's `use_bn` and `init_scale`.
    fn res(&mut self, prefix: &str, cin: usize, cout: usize, kernel: usize, stride: usize) -> ResUnit {
        let k1 = Init::FanInUniform {
            fan_in: cin * kernel * kernel,
            scale: self.init_scale,
        };
        let conv1 = self.conv(&format!("{prefix}.conv1"), [cin, cout, kernel, stride], false, k1);
        let conv2 = self.conv(&format!("{prefix}.conv2"), [cout, cout, 1, 1], false, Init::Zeros);
        // MaybeBatchNorm2d always owns its BN, used or not (it is in the state_dict).
        let bn1 = self.bn(&format!("{prefix}.bn1.bn"), cout);
        ResUnit {
            conv1,
            bn1,
            conv2,
            use_bn: self.use_bn,
        }
    }

    /// `Blk(cin, cout, k, s)`: one `Res(cin, cout, k, s)` then depth − 1 `Res(cout, cout, 1, 1)`.
    fn block(&mut self, prefix: &str, cin: usize, cout: usize, kernel: usize, stride: usize) -> Vec<ResUnit> {
        let mut units = vec![self.res(&format!("{prefix}.layer_list.0"), cin, cout, kernel, stride)];
        for j in 1..self.depth {
            units.push(self.res(&format!("{prefix}.layer_list.{j}"), cout, cout, 1, 1));
        }
        units
    }

    fn head(&mut self, prefix: &str, cin: usize, d: usize) -> Head {
        let k1 = Init::FanInUniform {
            fan_in: cin,
            scale: self.init_scale,
        };
        let conv1 = self.conv(&format!("{prefix}.conv1"), [cin, d, 1, 1], false, k1);
        let bn_hid = self.bn(&format!("{prefix}.bn_hid.bn"), d);
        let conv2 = self.conv(&format!("{prefix}.conv2"), [d, d, 1, 1], false, Init::Zeros);
        let bn_out = self.bn(&format!("{prefix}.bn_out.bn"), d);
        let shortcut = self.conv(
            &format!("{prefix}.shortcut"),
            [cin, d, 1, 1],
            true,
            Init::ShortcutIdentity { cin, cout: d },
        );
        Head {
            conv1,
            bn_hid,
            conv2,
            bn_out,
            shortcut,
            use_bn: self.use_bn,
        }
    }
}

/// Output size of an unpadded k×k, stride-s convolution or pooling.
pub fn conv_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

/// Builds the plan for a model spec; `n_classes` adds the online classifiers.
pub fn plan(model: &ModelSpec, loss: &LossSpec, n_classes: Option<usize>) -> ModelPlan {
    let mut b = Builder {
        entries: Vec::new(),
        use_bn: model.use_bn,
        init_scale: model.init_scale,
        depth: model.depth,
    };
    let (ndf, d, bn) = (model.ndf, model.n_rkhs, model.use_bn);
    let p = |i: usize| format!("encoder.layer_list.{i}");
    let default_w = |fan_in: usize| Init::FanInUniform { fan_in, scale: 1.0 };
    let mut layers = Vec::new();
    let mut sizes = Vec::new();
    let mut size = model.image_size;
    let c = if model.image_size == 32 { 4 * ndf } else { 8 * ndf };
    let push = |layers: &mut Vec<Layer>, sizes: &mut Vec<usize>, layer: Layer, out: usize| {
        layers.push(layer);
        sizes.push(out);
    };
    match model.image_size {
        32 => {
            let conv = b.conv(&format!("{}.conv", p(0)), [3, ndf, 3, 1], true, default_w(27));
            size = conv_out(size, 3, 1, 0);
            push(&mut layers, &mut sizes, Layer::Stem { conv, reflect_pad: 0 }, size);
            let unit = b.res(&p(1), ndf, ndf, 1, 1);
            push(&mut layers, &mut sizes, Layer::Res(unit), size);
            for (cin, cout, k) in [(ndf, 2 * ndf, 4), (2 * ndf, 4 * ndf, 2)] {
                let i = layers.len();
                let blk = b.block(&p(i), cin, cout, k, 2);
                size = conv_out(size, k, 2, 0);
                push(&mut layers, &mut sizes, Layer::Block(blk), size);
            }
        }
        _ => {
            let first = if model.image_size == 64 {
                let conv = b.conv(&format!("{}.conv", p(0)), [3, ndf, 3, 1], true, default_w(27));
                size = conv_out(size, 3, 1, 0);
                push(&mut layers, &mut sizes, Layer::Stem { conv, reflect_pad: 0 }, size);
                vec![(ndf, 2 * ndf, 4), (2 * ndf, 4 * ndf, 4), (4 * ndf, 8 * ndf, 2)]
            } else {
                let conv = b.conv(&format!("{}.conv", p(0)), [3, ndf, 5, 2], true, default_w(75));
                size = conv_out(size, 5, 2, 2);
                push(&mut layers, &mut sizes, Layer::Stem { conv, reflect_pad: 2 }, size);
                let conv = b.conv(&format!("{}.conv", p(1)), [ndf, ndf, 3, 1], true, default_w(ndf * 9));
                size = conv_out(size, 3, 1, 0);
                push(&mut layers, &mut sizes, Layer::Stem { conv, reflect_pad: 0 }, size);
                vec![(ndf, 2 * ndf, 4), (2 * ndf, 4 * ndf, 4), (4 * ndf, 8 * ndf, 2)]
            };
            for (cin, cout, k) in first {
                let i = layers.len();
                let blk = b.block(&p(i), cin, cout, k, 2);
                size = conv_out(size, k, 2, 0);
                push(&mut layers, &mut sizes, Layer::Block(blk), size);
            }
        }
    }
    let i = layers.len();
    let bn_f = b.bn(&format!("{}.bn", p(i)), c);
    push(&mut layers, &mut sizes, Layer::MaybeBn { bn: bn_f, on: bn }, size);
    for _ in 0..2 {
        let i = layers.len();
        let blk = b.block(&p(i), c, c, 3, 1);
        size = conv_out(size, 3, 1, 0);
        push(&mut layers, &mut sizes, Layer::Block(blk), size);
    }
    let i = layers.len();
    let unit = b.res(&p(i), c, d, 3, 1);
    size = conv_out(size, 3, 1, 0);
    push(&mut layers, &mut sizes, Layer::Res(unit), size);
    let i = layers.len();
    let bn_j = b.bn(&format!("{}.bn", p(i)), d);
    push(&mut layers, &mut sizes, Layer::MaybeBn { bn: bn_j, on: true }, size);

    let last_with = |s: usize| sizes.iter().rposition(|&x| x == s);
    let f7_layer = last_with(7).unwrap_or(0);
    let f5_layer = last_with(5).unwrap_or(0);
    let head5 = b.head("encoder.rkhs_block_5", c, d);
    let head7 = b.head("encoder.rkhs_block_7", c, d);
    let encoder = EncoderPlan {
        layers,
        sizes,
        f7_layer,
        f5_layer,
        head5,
        head7,
        n_rkhs: d,
    };

    let classifier = n_classes.map(|n| {
        let hidden = 1024;
        let mlp = "evaluator.block_glb_mlp.block_forward";
        let lin = "evaluator.block_glb_lin.block_forward";
        let mlp_weight1 = b.push(format!("{mlp}.2.weight"), vec![hidden, d], EntryKind::Param, default_w(d));
        let mlp_bn = b.bn(&format!("{mlp}.3"), hidden);
        let mlp_weight2 = b.push(format!("{mlp}.6.weight"), vec![n, hidden], EntryKind::Param, default_w(hidden));
        let mlp_bias2 = b.push(format!("{mlp}.6.bias"), vec![n], EntryKind::Param, default_w(hidden));
        let lin_weight = b.push(format!("{lin}.2.weight"), vec![n, d], EntryKind::Param, default_w(d));
        let lin_bias = b.push(format!("{lin}.2.bias"), vec![n], EntryKind::Param, default_w(d));
        ClassifierPlan {
            lin_weight,
            lin_bias,
            mlp_weight1,
            mlp_bn,
            mlp_weight2,
            mlp_bias2,
            n_classes: n,
            hidden,
        }
    });
    let mixture = (loss.mixture.k > 1).then(|| {
        let k = loss.mixture.k;
        MixturePlan {
            weight1: b.push("mixture.hidden.weight".into(), vec![d, d], EntryKind::Param, default_w(d)),
            bias1: b.push("mixture.hidden.bias".into(), vec![d], EntryKind::Param, default_w(d)),
            weight2: b.push("mixture.out.weight".into(), vec![k * d, d], EntryKind::Param, default_w(d)),
            bias2: b.push("mixture.out.bias".into(), vec![k * d], EntryKind::Param, default_w(d)),
            k,
        }
    });
    ModelPlan {
        entries: b.entries,
        encoder,
        classifier,
        mixture,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(image_size: usize, ndf: usize, n_rkhs: usize, depth: usize) -> (usize, usize) {
        let m = ModelSpec {
            image_size,
            ndf,
            n_rkhs,
            depth,
            ..ModelSpec::default()
        };
        let p = plan(&m, &LossSpec::default(), None);
        let all = p.count_params("encoder.");
        let heads = p.count_params("encoder.rkhs_block_");
        (all, all - heads)
    }

    #[test]
    fn parameter_counts_match_the_spec_table_to_the_unit() {
        assert_eq!(count(32, 128, 1024, 3).0, 20_051_200);
        assert_eq!(count(32, 320, 1280, 10).0, 163_754_880);
        assert_eq!(count(128, 192, 1536, 8).0, 208_523_712);
        let (all, trunk) = count(128, 320, 2560, 10);
        assert_eq!(all, 665_960_000);
        assert_eq!(trunk, 626_612_800);
    }

    #[test]
    fn spatial_sizes_and_feature_layers_follow_the_spec() {
        for (size, expect) in [
            (32, vec![30, 30, 14, 7, 7, 5, 3, 1, 1]),
            (64, vec![62, 30, 14, 7, 7, 5, 3, 1, 1]),
            (128, vec![64, 62, 30, 14, 7, 7, 5, 3, 1, 1]),
        ] {
            let m = ModelSpec {
                image_size: size,
                ndf: 8,
                n_rkhs: 64,
                depth: 2,
                ..ModelSpec::default()
            };
            let p = plan(&m, &LossSpec::default(), Some(10));
            assert_eq!(p.encoder.sizes, expect, "size {size}");
            assert_eq!(p.encoder.sizes[p.encoder.f7_layer], 7);
            assert_eq!(p.encoder.sizes[p.encoder.f7_layer + 1], 5);
            assert_eq!(p.encoder.sizes[p.encoder.f5_layer], 5);
            assert!(matches!(p.encoder.layers[p.encoder.f7_layer], Layer::MaybeBn { .. }));
        }
    }

    #[test]
    fn names_are_the_authors_state_dict_names() {
        let m = ModelSpec {
            ndf: 8,
            n_rkhs: 64,
            depth: 2,
            ..ModelSpec::default()
        };
        let p = plan(&m, &LossSpec::default(), Some(10));
        let names: Vec<&str> = p.entries.iter().map(|e| e.name.as_str()).collect();
        for expected in [
            "encoder.layer_list.0.conv.weight",
            "encoder.layer_list.0.conv.bias",
            "encoder.layer_list.1.conv1.weight",
            "encoder.layer_list.1.bn1.bn.running_var",
            "encoder.layer_list.2.layer_list.1.conv2.weight",
            "encoder.layer_list.4.bn.weight",
            "encoder.layer_list.8.bn.num_batches_tracked",
            "encoder.rkhs_block_5.shortcut.bias",
            "encoder.rkhs_block_5.bn_hid.bn.weight",
            "encoder.rkhs_block_7.bn_hid.bn.num_batches_tracked",
            "encoder.rkhs_block_7.conv1.weight",
            "encoder.rkhs_block_7.bn_out.bn.running_mean",
            "evaluator.block_glb_mlp.block_forward.3.running_var",
            "evaluator.block_glb_lin.block_forward.2.weight",
        ] {
            assert!(names.contains(&expected), "missing {expected}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("encoder.rkhs_block_") && n.contains(".bn1.")),
            "the heads' hidden BatchNorm is `bn_hid`"
        );
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "names are unique");
    }
}
