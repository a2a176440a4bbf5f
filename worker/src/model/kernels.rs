//! Channels-last data movement of the encoder, with gradients: im2col (the
//! k×k windows at stride s of an [N, H, W, C] map as matrix rows), average
//! pooling, zero channel padding of the residual shortcut, and the
//! rearrangement of a PyTorch conv weight into im2col's column order. Also
//! the product x·Wᵀ with a backward that forms dW in W's own layout; on
//! flex its 2-D products call gemm directly (flex would copy each output
//! once more).
//!
//! [`Kernels`] has a portable default written with tensor ops (used by CUDA).
//! On flex those ops copy strided views one element at a time (its generic
//! strided iterator), which cost more than the convolutions' matrix products;
//! flex and autodiff-on-flex therefore get hand-written loops here, with their
//! own backward nodes (the loops themselves are in `model/moves.rs`). It
//! also wraps the fused NCE direction of `loss/fused.rs` as a flex op with
//! its backward node. This module knows shapes only: no parameters, no
//! layer semantics, no loss maths.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, Slice, Tensor, TensorCreationOptions, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

pub use super::moves::Move;
use super::moves::{Elem, out_size};
use crate::loss::fused::{self, NceGeometry};

/// The encoder's data-movement primitives on channels-last [N, H, W, C] maps,
/// and the layer product x·Wᵀ.
///
/// A backend with hand-written loops sets `NATIVE` and implements
/// [`Kernels::native`]; every autodiff wrapper of a `Kernels` backend is one
/// too, with the transposed movement as its backward. The others use the
/// portable tensor-op versions.
pub trait Kernels: Backend {
    /// Whether [`Kernels::native`] is implemented.
    const NATIVE: bool = false;

    /// Applies `op` (or, with `transpose`, its adjoint) to a primitive.
    fn native(op: &Move, x: FloatTensor<Self>, transpose: bool) -> FloatTensor<Self> {
        let _ = (x, transpose);
        unreachable!("{op:?} called natively on a backend without native kernels")
    }

    /// [N, H, W, C] → [N·Ho·Wo, k·k·C]; a row holds one window, ordered (dy, dx, c).
    fn im2col(x: Tensor<Self, 4>, kernel: usize, stride: usize) -> Tensor<Self, 2> {
        if Self::NATIVE {
            let op = Move::Im2col {
                dims: x.dims(),
                kernel,
                stride,
            };
            return wrap(Self::native(&op, float(x), false));
        }
        portable::im2col(x, kernel, stride)
    }

    /// k×k average pooling at stride s, no padding: [N, H, W, C] → [N, Ho, Wo, C].
    fn avg_pool(x: Tensor<Self, 4>, kernel: usize, stride: usize) -> Tensor<Self, 4> {
        if Self::NATIVE {
            let op = Move::AvgPool {
                dims: x.dims(),
                kernel,
                stride,
            };
            return wrap(Self::native(&op, float(x), false));
        }
        portable::avg_pool(x, kernel, stride)
    }

    /// [M, cin] → [M, cout], the extra channels zero (appended after the existing ones).
    fn pad_channels(x: Tensor<Self, 2>, cout: usize) -> Tensor<Self, 2> {
        if Self::NATIVE {
            let [rows, cin] = x.dims();
            return wrap(Self::native(&Move::PadChannels { rows, cin, cout }, float(x), false));
        }
        portable::pad_channels(x, cout)
    }

    /// A conv weight stored flat as PyTorch's [cout, cin, k, k], as the
    /// matrix [cout, k·k·cin] whose columns follow im2col's (dy, dx, c) order.
    fn conv_weight_matrix(weight: Tensor<Self, 1>, cin: usize, cout: usize, kernel: usize) -> Tensor<Self, 2> {
        if kernel == 1 {
            return weight.reshape([cout, cin]);
        }
        if Self::NATIVE {
            return wrap(Self::native(&Move::ConvWeight { cout, cin, kernel }, float(weight), false));
        }
        weight
            .reshape([cout, cin, kernel, kernel])
            .permute([0, 2, 3, 1])
            .reshape([cout, kernel * kernel * cin])
    }

    /// x [M, K] · Wᵀ for W [N, K]: the product of a layer (or of sources
    /// against targets). Autodiff backends override it so that dW comes out
    /// as gradᵀ·x, already in W's [N, K] layout; burn's matmul backward forms
    /// dWᵀ and transposes it, which flex then copies element by element when
    /// the gradient is reshaped.
    fn matmul_t(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        x.matmul(w.transpose())
    }

    /// The product of two 2-D primitives (either may be a strided view).
    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// One NCE direction from the products [n_src, n_trg·L] of sources and
    /// targets: [loss, mean squared score] (`loss::fused`). Only where
    /// `NATIVE`; the others compute it with tensor ops (`loss::nce`).
    fn nce_direction(raw: Tensor<Self, 2>, geometry: NceGeometry) -> Tensor<Self, 1> {
        wrap(Self::nce_native(float(raw), &geometry).0)
    }

    /// The fused forward on a primitive: the two means [2] and what the
    /// backward needs.
    fn nce_native(raw: FloatTensor<Self>, geometry: &NceGeometry) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (raw, geometry);
        unreachable!("the fused NCE called on a backend without native kernels")
    }

    /// The fused backward: the gradient with respect to `raw` for the
    /// means' gradient `grad` [2].
    fn nce_native_backward(
        raw: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        geometry: &NceGeometry,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let _ = (raw, saved, geometry, grad);
        unreachable!("the fused NCE called on a backend without native kernels")
    }
}

fn float<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

impl Kernels for Flex {
    const NATIVE: bool = true;

    fn native(op: &Move, x: FlexTensor, transpose: bool) -> FlexTensor {
        op.run(&x, transpose)
    }

    fn nce_native(raw: FlexTensor, geometry: &NceGeometry) -> (FlexTensor, FlexTensor) {
        let raw = raw.to_contiguous();
        match raw.dtype() {
            DType::F64 => nce_forward::<f64>(&raw, geometry),
            DType::F32 => nce_forward::<f32>(&raw, geometry),
            other => unreachable!("encoder tensors are f32 or f64, got {other:?}"),
        }
    }

    fn nce_native_backward(raw: FlexTensor, saved: FlexTensor, geometry: &NceGeometry, grad: FlexTensor) -> FlexTensor {
        let (raw, saved, grad) = (raw.to_contiguous(), saved.to_contiguous(), grad.to_contiguous());
        match raw.dtype() {
            DType::F64 => nce_backward::<f64>(&raw, &saved, geometry, &grad),
            DType::F32 => nce_backward::<f32>(&raw, &saved, geometry, &grad),
            other => unreachable!("encoder tensors are f32 or f64, got {other:?}"),
        }
    }

    fn matmul_t(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        wrap(Self::matmul_2d(float(x), float(w.transpose())))
    }

    fn matmul_2d(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        match lhs.dtype() {
            DType::F64 => gemm_2d::<f64>(&lhs, &rhs),
            DType::F32 => gemm_2d::<f32>(&lhs, &rhs),
            other => unreachable!("encoder tensors are f32 or f64, got {other:?}"),
        }
    }
}

/// lhs [M, K] · rhs [K, N] of two strided 2-D flex tensors: flex's own 2-D
/// gemm call, except that the output is a typed Vec handed over as is
/// (flex's `FlexTensor::empty` allocates bytes and copies them into a
/// second, aligned allocation: a full extra pass over every product).
fn gemm_2d<E: Elem>(lhs: &FlexTensor, rhs: &FlexTensor) -> FlexTensor {
    let (ls, rs) = (lhs.layout(), rhs.layout());
    let ([m, k], [k2, n]) = (ls.shape().dims::<2>(), rs.shape().dims::<2>());
    assert_eq!(k, k2, "matmul_2d: [{m}, {k}] · [{k2}, {n}]");
    let (lst, rst) = (ls.strides(), rs.strides());
    let (lhs_data, rhs_data): (&[E], &[E]) = (lhs.storage(), rhs.storage());
    // SAFETY: the pointers and strides describe the two tensors' views
    // (start offset, row and column strides) inside their own storage.
    let out = unsafe {
        gemm_rows(
            [m, n, k],
            lhs_data.as_ptr().add(ls.start_offset()),
            [lst[0], lst[1]],
            rhs_data.as_ptr().add(rs.start_offset()),
            [rst[0], rst[1]],
        )
    };
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// lhs [m, k] · rhs [k, n] (each given by a pointer and its row and column
/// strides) into a fresh row-major [m, n] Vec; on the rayon pool from
/// flex's threshold (192³ multiply-adds) up.
///
/// # Safety
/// Every element (r, c) of both operands, at `ptr + r·strides[0] +
/// c·strides[1]`, must lie inside a live allocation of `E`.
pub(crate) unsafe fn gemm_rows<E: Element>(
    [m, n, k]: [usize; 3],
    lhs: *const E,
    lhs_strides: [isize; 2],
    rhs: *const E,
    rhs_strides: [isize; 2],
) -> Vec<E> {
    // Not zeroed first: with `read_dst` false gemm writes every element of
    // its destination without reading it (k = 0 included); zeroing it took
    // about 3 % of a training step.
    let mut out = Vec::with_capacity(m * n);
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller vouches for the operands; `out` holds m·n
    // contiguous elements, all written by gemm before the length is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs,
            lhs_strides[1],
            lhs_strides[0],
            rhs,
            rhs_strides[1],
            rhs_strides[0],
            E::from_elem(0.0),
            E::from_elem(1.0),
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

fn nce_forward<E: Elem>(raw: &FlexTensor, geometry: &NceGeometry) -> (FlexTensor, FlexTensor) {
    let (means, saved) = fused::forward::<E>(raw.storage(), geometry);
    let len = saved.len();
    let means = TensorData::new(means.map(E::from_elem).to_vec(), [2]);
    (FlexTensor::from_data(means), FlexTensor::from_data(TensorData::new(saved, [len])))
}

fn nce_backward<E: Elem>(raw: &FlexTensor, saved: &FlexTensor, geometry: &NceGeometry, grad: &FlexTensor) -> FlexTensor {
    let d: &[E] = grad.storage();
    let out = fused::backward::<E>(raw.storage(), saved.storage(), geometry, [d[0].elem::<f64>(), d[1].elem::<f64>()]);
    FlexTensor::from_data(TensorData::new(out, raw.layout().shape().clone()))
}

/// Autodiff node of the fused NCE direction; the state keeps the products
/// and the forward's saved values.
#[derive(Debug)]
struct NceBackward;

impl<B: Kernels> Backward<B, 1> for NceBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, NceGeometry);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (raw, saved, geometry) = ops.state;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::nce_native_backward(raw, saved, &geometry, grad));
        }
    }
}

/// Autodiff node of a native [`Move`]: the gradient is the transposed movement.
#[derive(Debug)]
struct MoveBackward;

impl<B: Kernels> Backward<B, 1> for MoveBackward {
    type State = Move;

    fn backward(self, ops: Ops<Move, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::native(&ops.state, grad, true));
        }
    }
}

/// Autodiff node of [`Kernels::matmul_t`]; the state keeps x (when W needs
/// a gradient) and W (when x does).
#[derive(Debug)]
struct MatmulTBackward;

impl<B: Kernels> Backward<B, 2> for MatmulTBackward {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [x_parent, w_parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        if let (Some(node), Some(w)) = (x_parent, w) {
            grads.register::<B>(node.id, B::matmul_2d(grad.clone(), w));
        }
        if let (Some(node), Some(x)) = (w_parent, x) {
            grads.register::<B>(node.id, B::matmul_2d(B::float_transpose(grad), x));
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    const NATIVE: bool = B::NATIVE;

    fn matmul_t(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (x, w) = (float(x), float(w));
        let out = B::matmul_2d(x.primitive.clone(), B::float_transpose(w.primitive.clone()));
        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        wrap(
            match MatmulTBackward
                .prepare::<C>([x.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((w_tracked.then_some(x.primitive), x_tracked.then_some(w.primitive)), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            },
        )
    }

    fn nce_direction(raw: Tensor<Self, 2>, geometry: NceGeometry) -> Tensor<Self, 1> {
        let raw = float(raw);
        let (out, saved) = B::nce_native(raw.primitive.clone(), &geometry);
        wrap(match NceBackward.prepare::<C>([raw.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((raw.primitive, saved, geometry), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        })
    }

    fn native(op: &Move, x: FloatTensor<Self>, transpose: bool) -> FloatTensor<Self> {
        // The adjoint is only ever taken inside `MoveBackward`, on the inner backend.
        debug_assert!(!transpose, "autodiff tensors are moved forward only");
        let out = B::native(op, x.primitive.clone(), false);
        match MoveBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(*op, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}

/// The same movements written with tensor ops, for backends whose strided
/// copies are fast (autodiff differentiates them).
pub mod portable {
    use super::*;

    /// The window at offset (dy, dx) of every output position: [N, Ho, Wo, C].
    fn shifted<B: Backend>(x: &Tensor<B, 4>, dy: usize, dx: usize, kernel: usize, stride: usize) -> Tensor<B, 4> {
        let [_, h, w, _] = x.dims();
        let (ho, wo) = (out_size(h, kernel, stride), out_size(w, kernel, stride));
        x.clone().slice([
            Slice::new(0, None, 1),
            Slice::new(dy as isize, Some((dy + stride * (ho - 1) + 1) as isize), stride as isize),
            Slice::new(dx as isize, Some((dx + stride * (wo - 1) + 1) as isize), stride as isize),
            Slice::new(0, None, 1),
        ])
    }

    pub fn im2col<B: Backend>(x: Tensor<B, 4>, kernel: usize, stride: usize) -> Tensor<B, 2> {
        let [n, h, w, c] = x.dims();
        let rows = n * out_size(h, kernel, stride) * out_size(w, kernel, stride);
        let windows: Vec<Tensor<B, 4>> = (0..kernel * kernel)
            .map(|i| shifted(&x, i / kernel, i % kernel, kernel, stride))
            .collect();
        Tensor::cat(windows, 3).reshape([rows, kernel * kernel * c])
    }

    pub fn avg_pool<B: Backend>(x: Tensor<B, 4>, kernel: usize, stride: usize) -> Tensor<B, 4> {
        (0..kernel * kernel)
            .map(|i| shifted(&x, i / kernel, i % kernel, kernel, stride))
            .reduce(|a, b| a + b)
            .unwrap_or(x)
            .div_scalar((kernel * kernel) as f64)
    }

    pub fn pad_channels<B: Backend>(x: Tensor<B, 2>, cout: usize) -> Tensor<B, 2> {
        let [rows, cin] = x.dims();
        if cout == cin {
            return x;
        }
        let options = TensorCreationOptions::new(x.device()).with_dtype(x.dtype());
        let zeros = Tensor::zeros([rows, cout - cin], options);
        Tensor::cat(vec![x, zeros], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type AD = Autodiff<Flex>;
    /// One movement as a function of (map, kernel, stride), flattened to 2-D.
    type Movement = fn(Tensor<AD, 4>, usize, usize) -> Tensor<AD, 2>;

    /// Each flex kernel equals the portable tensor-op version, forward and backward.
    #[test]
    fn flex_kernels_match_portable_tensor_ops_with_gradients() {
        let dev = Default::default();
        for (n, hw, c, k, s) in [(2, 9, 3, 3, 1), (3, 10, 4, 4, 2), (2, 8, 5, 2, 2), (1, 5, 2, 1, 1)] {
            let x = Tensor::<AD, 4>::random([n, hw, hw, c], Distribution::Normal(0.0, 1.0), &dev).require_grad();
            let cases: [(&str, Movement, Movement); 3] = [
                ("im2col", |x, k, s| <AD as Kernels>::im2col(x, k, s), portable::im2col),
                (
                    "avg_pool",
                    |x, k, s| {
                        let y = <AD as Kernels>::avg_pool(x, k, s);
                        let [a, b, c, d] = y.dims();
                        y.reshape([a * b * c, d])
                    },
                    |x, k, s| {
                        let y = portable::avg_pool(x, k, s);
                        let [a, b, c, d] = y.dims();
                        y.reshape([a * b * c, d])
                    },
                ),
                (
                    "pad_channels",
                    |x, _, _| {
                        let [a, b, c, d] = x.dims();
                        <AD as Kernels>::pad_channels(x.reshape([a * b * c, d]), d + 3)
                    },
                    |x, _, _| {
                        let [a, b, c, d] = x.dims();
                        portable::pad_channels(x.reshape([a * b * c, d]), d + 3)
                    },
                ),
            ];
            for (name, fast, reference) in cases {
                let y_fast = fast(x.clone(), k, s);
                let y_ref = reference(x.clone(), k, s);
                assert_eq!(y_fast.dims(), y_ref.dims(), "{name}");
                y_fast
                    .clone()
                    .into_data()
                    .assert_approx_eq::<f32>(&y_ref.clone().into_data(), Tolerance::rel_abs(1e-6, 1e-6));
                let weights = Tensor::<AD, 2>::random(y_ref.dims(), Distribution::Normal(0.0, 1.0), &dev);
                let g_fast = (y_fast * weights.clone()).sum().backward();
                let g_ref = (y_ref * weights).sum().backward();
                x.grad(&g_fast)
                    .unwrap_or_else(|| panic!("{name}: no gradient"))
                    .into_data()
                    .assert_approx_eq::<f32>(&x.grad(&g_ref).unwrap().into_data(), Tolerance::rel_abs(1e-5, 1e-6));
            }
        }
    }

    #[test]
    fn weight_rearrangement_and_matmul_t_match_burns_ops_with_gradients() {
        let dev = Default::default();
        fn close<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) {
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        }
        for (cin, cout, k) in [(3, 5, 3), (4, 2, 4), (6, 7, 1)] {
            let w = Tensor::<AD, 1>::random([cout * cin * k * k], Distribution::Normal(0.0, 1.0), &dev).require_grad();
            let fast = <AD as Kernels>::conv_weight_matrix(w.clone(), cin, cout, k);
            let reference = w
                .clone()
                .reshape([cout, cin, k, k])
                .permute([0, 2, 3, 1])
                .reshape([cout, k * k * cin]);
            close(fast.clone(), reference.clone());
            let probe = Tensor::<AD, 2>::random([cout, k * k * cin], Distribution::Normal(0.0, 1.0), &dev);
            let (g_fast, g_ref) = ((fast * probe.clone()).sum().backward(), (reference * probe).sum().backward());
            close(
                w.grad(&g_fast).expect("weight gradient").reshape([cout, cin * k * k]),
                w.grad(&g_ref).unwrap().reshape([cout, cin * k * k]),
            );
        }
        // x·Wᵀ with gradients for both, or for one side only.
        for (x_grad, w_grad) in [(true, true), (false, true), (true, false)] {
            let mut x = Tensor::<AD, 2>::random([7, 5], Distribution::Normal(0.0, 1.0), &dev);
            let mut w = Tensor::<AD, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &dev);
            if x_grad {
                x = x.require_grad();
            }
            if w_grad {
                w = w.require_grad();
            }
            let fast = <AD as Kernels>::matmul_t(x.clone(), w.clone());
            let reference = x.clone().matmul(w.clone().transpose());
            close(fast.clone(), reference.clone());
            let probe = Tensor::<AD, 2>::random([7, 4], Distribution::Normal(0.0, 1.0), &dev);
            let (g_fast, g_ref) = ((fast * probe.clone()).sum().backward(), (reference * probe).sum().backward());
            assert_eq!(x.grad(&g_fast).is_some(), x_grad);
            assert_eq!(w.grad(&g_fast).is_some(), w_grad);
            if x_grad {
                close(x.grad(&g_fast).unwrap(), x.grad(&g_ref).unwrap());
            }
            if w_grad {
                close(w.grad(&g_fast).unwrap(), w.grad(&g_ref).unwrap());
            }
        }
    }

    #[test]
    fn flex_matmul_2d_reads_strided_views_at_their_offsets() {
        let dev = Default::default();
        let a = Tensor::<Flex, 2>::random([9, 6], Distribution::Normal(0.0, 1.0), &dev);
        let b = Tensor::<Flex, 2>::random([8, 6], Distribution::Normal(0.0, 1.0), &dev);
        // Rows 2..7 of a (an offset view) times the transposed rows 1..6 of b.
        let lhs = a.narrow(0, 2, 5);
        let rhs = b.narrow(0, 1, 5).transpose();
        let got: Tensor<Flex, 2> = wrap(<Flex as Kernels>::matmul_2d(float(lhs.clone()), float(rhs.clone())));
        got.into_data()
            .assert_approx_eq::<f32>(&lhs.matmul(rhs).into_data(), Tolerance::rel_abs(1e-6, 1e-6));
    }
}
