//! The encoder's data movements on channels-last [N, H, W, C] maps as plain
//! loops over typed buffers: im2col, average pooling, zero channel padding
//! and the conv-weight rearrangement, each forward and transposed (its
//! backward). [`super::kernels`] wraps them as backend ops with gradients;
//! this file knows geometry and element types only, no burn graph.

use burn::tensor::{DType, Element, ElementConversion, Shape, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::ops::{AddAssign, Mul};
/// Output side of a window operation.
pub(crate) fn out_size(size: usize, kernel: usize, stride: usize) -> usize {
    (size - kernel) / stride + 1
}

/// One data movement with its geometry; forward and backward are linear maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    Im2col {
        dims: [usize; 4],
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        dims: [usize; 4],
        kernel: usize,
        stride: usize,
    },
    PadChannels {
        rows: usize,
        cin: usize,
        cout: usize,
    },
    /// Flat [cout, cin, k, k] → [cout, k·k·cin].
    ConvWeight {
        cout: usize,
        cin: usize,
        kernel: usize,
    },
}

/// Element types the loops run on (f32 for training, f64 for gradient checks).
pub(crate) trait Elem: Element + bytemuck::Pod + AddAssign + Mul<Output = Self> + Send + Sync {}
impl Elem for f32 {}
impl Elem for f64 {}

impl Move {
    fn input_shape(&self) -> Vec<usize> {
        match *self {
            Move::Im2col { dims, .. } | Move::AvgPool { dims, .. } => dims.to_vec(),
            Move::PadChannels { rows, cin, .. } => vec![rows, cin],
            Move::ConvWeight { cout, cin, kernel } => vec![cout * cin * kernel * kernel],
        }
    }

    fn output_shape(&self) -> Vec<usize> {
        match *self {
            Move::Im2col {
                dims: [n, h, w, c],
                kernel,
                stride,
            } => {
                vec![n * out_size(h, kernel, stride) * out_size(w, kernel, stride), kernel * kernel * c]
            }
            Move::AvgPool {
                dims: [n, h, w, c],
                kernel,
                stride,
            } => vec![n, out_size(h, kernel, stride), out_size(w, kernel, stride), c],
            Move::PadChannels { rows, cout, .. } => vec![rows, cout],
            Move::ConvWeight { cout, cin, kernel } => vec![cout, kernel * kernel * cin],
        }
    }

    /// Calls `f(input offset, output offset, run length)` for every contiguous
    /// run the movement copies within one image (one row for channel padding);
    /// offsets are relative to that image's input and output blocks.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        match *self {
            // One window row (its k taps, k·C values) is contiguous in the
            // input map and in the output row alike: one run.
            Move::Im2col {
                dims: [_, h, w, c],
                kernel,
                stride,
            } => {
                let (ho, wo) = (out_size(h, kernel, stride), out_size(w, kernel, stride));
                for oy in 0..ho {
                    for ox in 0..wo {
                        for dy in 0..kernel {
                            let src = ((oy * stride + dy) * w + ox * stride) * c;
                            let dst = ((oy * wo + ox) * kernel + dy) * kernel * c;
                            f(src, dst, kernel * c);
                        }
                    }
                }
            }
            Move::AvgPool {
                dims: [_, h, w, c],
                kernel,
                stride,
            } => {
                let (ho, wo) = (out_size(h, kernel, stride), out_size(w, kernel, stride));
                for oy in 0..ho {
                    for ox in 0..wo {
                        for dy in 0..kernel {
                            for dx in 0..kernel {
                                f(((oy * stride + dy) * w + ox * stride + dx) * c, (oy * wo + ox) * c, c);
                            }
                        }
                    }
                }
            }
            Move::PadChannels { cin, .. } => f(0, 0, cin),
            // One output channel's filter: element (c, dy, dx) → (dy, dx, c).
            Move::ConvWeight { cin, kernel, .. } => {
                for c in 0..cin {
                    for tap in 0..kernel * kernel {
                        f(c * kernel * kernel + tap, tap * cin + c, 1);
                    }
                }
            }
        }
    }

    /// (images, input elements per image, output elements per image).
    fn blocks(&self) -> (usize, usize, usize) {
        let input: usize = self.input_shape().iter().product();
        let output: usize = self.output_shape().iter().product();
        let images = match *self {
            Move::Im2col { dims, .. } | Move::AvgPool { dims, .. } => dims[0],
            Move::PadChannels { rows, .. } => rows,
            Move::ConvWeight { cout, .. } => cout,
        };
        (images, input / images.max(1), output / images.max(1))
    }

    fn scale<E: Elem>(&self) -> E {
        match *self {
            Move::AvgPool { kernel, .. } => (1.0 / (kernel * kernel) as f64).elem(),
            _ => 1.0.elem(),
        }
    }

    /// out = M·x, `out` zeroed by the caller.
    fn forward<E: Elem>(&self, x: &[E], out: &mut [E]) {
        let (images, in_block, out_block) = self.blocks();
        if images == 0 || out_block == 0 {
            return;
        }
        let scale = self.scale::<E>();
        out.par_chunks_mut(out_block).enumerate().for_each(|(i, dst)| {
            let src = &x[i * in_block..(i + 1) * in_block];
            self.for_each_run(|s, d, len| {
                for (o, &v) in dst[d..d + len].iter_mut().zip(&src[s..s + len]) {
                    *o += v * scale;
                }
            });
        });
    }

    /// grad_x = Mᵀ·grad_out, `grad_x` zeroed by the caller.
    fn backward<E: Elem>(&self, grad_out: &[E], grad_x: &mut [E]) {
        let (images, in_block, out_block) = self.blocks();
        if images == 0 || in_block == 0 {
            return;
        }
        let scale = self.scale::<E>();
        grad_x.par_chunks_mut(in_block).enumerate().for_each(|(i, dst)| {
            let src = &grad_out[i * out_block..(i + 1) * out_block];
            self.for_each_run(|s, d, len| {
                for (o, &g) in dst[s..s + len].iter_mut().zip(&src[d..d + len]) {
                    *o += g * scale;
                }
            });
        });
    }

    /// im2col's forward, written once without zero-filling first: every
    /// output element is a copy of exactly one input element.
    fn gather<E: Elem>(&self, x: &[E], len: usize) -> Vec<E> {
        debug_assert!(matches!(self, Move::Im2col { .. }));
        let (images, in_block, out_block) = self.blocks();
        let mut out = Vec::with_capacity(len);
        if images > 0 && out_block > 0 {
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(out_block)
                .enumerate()
                .for_each(|(i, dst)| {
                    let src = &x[i * in_block..(i + 1) * in_block];
                    self.for_each_run(|s, d, n| {
                        for (o, &v) in dst[d..d + n].iter_mut().zip(&src[s..s + n]) {
                            o.write(v);
                        }
                    });
                });
        }
        // SAFETY: im2col's runs cover each image's output block exactly
        // (window, tap row) by (window, tap row), and the blocks cover all
        // `len` = images · out_block elements, so all of them were written.
        unsafe { out.set_len(len) };
        out
    }

    fn run_typed<E: Elem>(&self, x: &FlexTensor, transpose: bool) -> FlexTensor {
        let shape = if transpose { self.input_shape() } else { self.output_shape() };
        let len = shape.iter().product();
        let src: &[E] = x.storage();
        // A typed Vec handed over as is: `FlexTensor::zeros` allocates bytes
        // and then copies them into a second, aligned allocation.
        let out = if !transpose && matches!(self, Move::Im2col { .. }) {
            self.gather(src, len)
        } else {
            let mut out = vec![E::from_elem(0.0); len];
            if transpose {
                self.backward(src, &mut out);
            } else {
                self.forward(src, &mut out);
            }
            out
        };
        FlexTensor::from_data(TensorData::new(out, Shape::from(shape)))
    }

    /// Applies the movement (or its transpose) to a flex tensor.
    pub(crate) fn run(&self, x: &FlexTensor, transpose: bool) -> FlexTensor {
        let x = x.to_contiguous();
        match x.dtype() {
            DType::F64 => self.run_typed::<f64>(&x, transpose),
            DType::F32 => self.run_typed::<f32>(&x, transpose),
            other => unreachable!("encoder tensors are f32 or f64, got {other:?}"),
        }
    }
}
