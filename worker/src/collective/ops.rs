//! What training does with a collective (docs/architecture.md §5–6):
//!
//! - [`all_gather_rows`]: every rank's tensor concatenated along dim 0, as a
//!   differentiable op. Its backward sums the incoming gradient over ranks
//!   (reduce-scatter) and keeps this rank's slice: the gradient reaching a
//!   rank's targets is the sum over *all* ranks' losses, which is what makes
//!   W ranks of B images equal to one rank of W·B. `exact = false` keeps
//!   only the local gradient instead (the silent bug of several public
//!   trainers), for the test that shows the difference.
//! - [`all_reduce_sum`]: differentiable sum over ranks (synchronised
//!   BatchNorm); its backward is the same sum of the incoming gradients.
//! - [`average_gradients`]: parameter gradients averaged in buckets.
//!
//! On CUDA ranks whose collective works on device memory (NCCL) the
//! gathered targets, their gradients, BatchNorm statistics and gradient
//! buckets stay on the GPU ([`super::device`] says how and which copies
//! remain); otherwise (CPU, `dist.backend = "tcp"`) they go through host
//! buffers.
//!
//! Autodiff backward passes cannot return errors, so [`Comm`] keeps the
//! first failure; ops after it return zeros without talking to anyone and
//! the step reports the failure once the pass is over. Time spent in each
//! kind of exchange is accumulated for the step's time split.

use super::{CollResult, Collective, CollectiveError, device};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Seconds spent in each kind of exchange, and the bytes this rank put in.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CommTimes {
    /// All-gather of the targets and the reduce-scatter of their gradients.
    pub gather_s: f64,
    /// Synchronised BatchNorm statistics, forward and backward.
    pub bn_s: f64,
    /// Gradient, metric and statistics averaging.
    pub all_reduce_s: f64,
    /// The per-step exchange that finds stragglers: the fast ranks wait
    /// there for the slowest one.
    pub rank_sync_s: f64,
    pub gather_bytes: u64,
    pub bn_bytes: u64,
    pub all_reduce_bytes: u64,
}

impl CommTimes {
    pub fn total(&self) -> f64 {
        self.gather_s + self.bn_s + self.all_reduce_s + self.rank_sync_s
    }

    pub fn add(&mut self, other: &CommTimes) {
        self.gather_s += other.gather_s;
        self.bn_s += other.bn_s;
        self.all_reduce_s += other.all_reduce_s;
        self.rank_sync_s += other.rank_sync_s;
        self.gather_bytes += other.gather_bytes;
        self.bn_bytes += other.bn_bytes;
        self.all_reduce_bytes += other.all_reduce_bytes;
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Exchange {
    Gather,
    BatchNorm,
    AllReduce,
    /// [`end_of_step`]'s two floats per rank.
    RankSync,
}

/// A collective plus the failure and timing bookkeeping of a training rank.
pub struct Comm {
    collective: Box<dyn Collective>,
    failure: Mutex<Option<CollectiveError>>,
    times: Mutex<CommTimes>,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Comm(rank {} of {})", self.rank(), self.world())
    }
}

impl Comm {
    pub fn new(collective: Box<dyn Collective>) -> Arc<Self> {
        Arc::new(Self {
            collective,
            failure: Mutex::new(None),
            times: Mutex::new(CommTimes::default()),
        })
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn world(&self) -> usize {
        self.collective.world()
    }

    /// Whether the collective works on device memory (NCCL).
    #[cfg(feature = "cuda")]
    pub(crate) fn has_device_path(&self) -> bool {
        self.collective.device().is_some()
    }

    /// Ends this rank's part in the world from another thread (the agent,
    /// when a stop is overdue): a collective blocked now, and every later
    /// one, fails at once with [`CollectiveError::Cancelled`] naming `reason`.
    pub fn cancel(&self, reason: &str) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| CollectiveError::Cancelled {
                rank: self.rank(),
                reason: reason.to_string(),
            });
        self.collective.cancel(reason);
    }

    /// Runs `f` on the collective, timed as `kind`, counting `values` f32s
    /// this rank puts in; Err once anything failed.
    pub fn run<T>(&self, kind: Exchange, values: usize, f: impl FnOnce(&dyn Collective) -> CollResult<T>) -> CollResult<T> {
        if let Some(e) = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(e);
        }
        let started = Instant::now();
        let out = f(self.collective.as_ref());
        let secs = started.elapsed().as_secs_f64();
        {
            let mut t = self.times.lock().unwrap_or_else(|e| e.into_inner());
            let bytes = 4 * values as u64;
            match kind {
                Exchange::Gather => (t.gather_s += secs, t.gather_bytes += bytes),
                Exchange::BatchNorm => (t.bn_s += secs, t.bn_bytes += bytes),
                Exchange::AllReduce => (t.all_reduce_s += secs, t.all_reduce_bytes += bytes),
                Exchange::RankSync => (t.rank_sync_s += secs, t.gather_bytes += bytes),
            };
        }
        if let Err(e) = &out {
            self.failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| e.clone());
        }
        out
    }

    /// The first failure since the communicator was made, if any.
    pub fn check(&self) -> CollResult<()> {
        match self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Time spent since the last call.
    pub fn take_times(&self) -> CommTimes {
        std::mem::take(&mut *self.times.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn host<B: Backend>(t: FloatTensor<B>) -> (Vec<f32>, B::Device) {
    let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let device = t.device();
    let values = t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    (values, device)
}

fn device_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> FloatTensor<B> {
    let n = values.len();
    Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device)
        .into_primitive()
        .tensor()
}

/// Gathers `t` (n elements) from every rank: W·n elements; zeros on failure.
fn gather_inner<B: Backend>(t: FloatTensor<B>, comm: &Comm) -> FloatTensor<B> {
    if let Some(out) = device::all_gather::<B>(&t, comm) {
        let n = t.shape().num_elements() * comm.world();
        return out.unwrap_or_else(|_| zeros_like::<B>(&t, n));
    }
    let (local, device) = host::<B>(t);
    let n = local.len();
    let all = comm
        .run(Exchange::Gather, n, |c| c.all_gather(&local))
        .unwrap_or_else(|_| vec![0.0; n * comm.world()]);
    device_tensor::<B>(all, &device)
}

/// `n` zeros on `t`'s device (the result of a failed exchange).
fn zeros_like<B: Backend>(t: &FloatTensor<B>, n: usize) -> FloatTensor<B> {
    Tensor::<B, 1>::zeros([n], &B::float_device(t)).into_primitive().tensor()
}

fn sum_inner<B: Backend>(t: FloatTensor<B>, comm: &Comm, kind: Exchange) -> FloatTensor<B> {
    if let Some(out) = device::all_reduce_sum::<B>(&t, comm, kind) {
        let n = t.shape().num_elements();
        return out.unwrap_or_else(|_| zeros_like::<B>(&t, n));
    }
    let (mut values, device) = host::<B>(t);
    if comm.run(kind, values.len(), |c| c.all_reduce_sum(&mut values)).is_err() {
        values.iter_mut().for_each(|v| *v = 0.0);
    }
    device_tensor::<B>(values, &device)
}

#[derive(Clone, Debug)]
struct GatherState {
    comm: Arc<Comm>,
    exact: bool,
}

#[derive(Debug)]
struct GatherBackward;

impl<B: Backend> Backward<B, 1> for GatherBackward {
    type State = GatherState;

    fn backward(self, ops: Ops<GatherState, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = parent else { return };
        let GatherState { comm, exact } = ops.state;
        if exact && let Some(own) = device::reduce_scatter_sum::<B>(&grad, &comm) {
            let n = grad.shape().num_elements() / comm.world();
            grads.register::<B>(node.id, own.unwrap_or_else(|_| zeros_like::<B>(&grad, n)));
            return;
        }
        let (full, device) = host::<B>(grad);
        let n = full.len() / comm.world();
        let own = if exact {
            comm.run(Exchange::Gather, full.len(), |c| c.reduce_scatter_sum(&full))
                .unwrap_or_else(|_| vec![0.0; n])
        } else {
            let r = comm.rank();
            full[r * n..(r + 1) * n].to_vec()
        };
        grads.register::<B>(node.id, device_tensor::<B>(own, &device));
    }
}

#[derive(Clone, Debug)]
struct SumState {
    comm: Arc<Comm>,
}

#[derive(Debug)]
struct SumBackward;

impl<B: Backend> Backward<B, 1> for SumBackward {
    type State = SumState;

    fn backward(self, ops: Ops<SumState, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, sum_inner::<B>(grad, &ops.state.comm, Exchange::BatchNorm));
        }
    }
}

/// Every rank's `x` [n, …] concatenated in rank order: [W·n, …].
pub fn all_gather_rows<B: Backend, const D: usize>(x: Tensor<Autodiff<B>, D>, comm: &Arc<Comm>, exact: bool) -> Tensor<Autodiff<B>, D> {
    let dims = x.dims();
    let flat = x.reshape([dims.iter().product::<usize>()]).into_primitive().tensor();
    let out = gather_inner::<B>(flat.primitive.clone(), comm);
    let state = GatherState { comm: comm.clone(), exact };
    let out = match GatherBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([flat.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    let mut gathered = dims;
    gathered[0] *= comm.world();
    Tensor::<Autodiff<B>, 1>::from_primitive(TensorPrimitive::Float(out)).reshape(gathered)
}

/// The element-wise sum of `x` over ranks, differentiable.
pub fn all_reduce_sum<B: Backend>(x: Tensor<Autodiff<B>, 1>, comm: &Arc<Comm>) -> Tensor<Autodiff<B>, 1> {
    let prim = x.into_primitive().tensor();
    let out = sum_inner::<B>(prim.primitive.clone(), comm, Exchange::BatchNorm);
    let out = match SumBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([prim.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(SumState { comm: comm.clone() }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Replaces every gradient by its mean over ranks, exchanging buckets of
/// about `bucket_bytes` (in parameter order, so all ranks agree). On a
/// device collective each bucket is concatenated on the device and the
/// averaged gradients are views of the summed bucket.
pub fn average_gradients<B: Backend>(grads: &mut [Option<Tensor<B, 1>>], comm: &Comm, bucket_bytes: usize) -> CollResult<()> {
    let scale = 1.0 / comm.world() as f32;
    let mut start = 0;
    while start < grads.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < grads.len() && (bytes < bucket_bytes || end == start) {
            bytes += grads[end].as_ref().map_or(0, |g| 4 * g.dims()[0]);
            end += 1;
        }
        let present: Vec<Tensor<B, 1>> = grads[start..end].iter().flatten().cloned().collect();
        if present.is_empty() {
            start = end;
            continue;
        }
        let flat = Tensor::cat(present, 0).into_primitive().tensor();
        let summed: Tensor<B, 1> = match device::all_reduce_sum::<B>(&flat, comm, Exchange::AllReduce) {
            Some(out) => Tensor::from_primitive(TensorPrimitive::Float(out?)),
            None => {
                let (mut bucket, device) = host::<B>(flat);
                comm.run(Exchange::AllReduce, bucket.len(), |c| c.all_reduce_sum(&mut bucket))?;
                let n = bucket.len();
                Tensor::from_data(TensorData::new(bucket, [n]), &device)
            }
        };
        let averaged = summed.mul_scalar(scale);
        let mut offset = 0;
        for g in grads[start..end].iter_mut().flatten() {
            let n = g.dims()[0];
            *g = averaged.clone().narrow(0, offset, n);
            offset += n;
        }
        start = end;
    }
    Ok(())
}

/// The mean over ranks of `values` (metrics, statistics), on the host.
pub fn mean_over_ranks(values: &mut [f32], comm: &Comm) -> CollResult<()> {
    comm.run(Exchange::AllReduce, values.len(), |c| c.all_reduce_sum(values))?;
    let w = comm.world() as f32;
    values.iter_mut().for_each(|v| *v /= w);
    Ok(())
}

/// The end of a step, agreed by every rank ([`end_of_step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepEnd {
    /// How much longer this rank computed than the fastest: 0 on the
    /// fastest rank, the straggler's delay on the slowest.
    pub lag_s: f64,
    /// Some rank was asked to stop: every rank stops after this same step.
    pub stop: bool,
}

/// Ends a step on every rank at once: gathers each rank's compute seconds
/// and whether it was asked to stop (two floats per rank), so that a stop
/// seen by any rank, at any moment, ends the run after the same step
/// everywhere, instead of leaving the ranks that had already begun the
/// next step waiting in its collectives for the one that left.
pub fn end_of_step(compute_s: f64, stop_requested: bool, comm: &Comm) -> CollResult<StepEnd> {
    let mine = [compute_s as f32, if stop_requested { 1.0 } else { 0.0 }];
    let all = comm.run(Exchange::RankSync, mine.len(), |c| c.all_gather(&mine))?;
    Ok(agree_end_of_step(compute_s, &all))
}

/// [`end_of_step`]'s decision from the gathered pairs (compute seconds,
/// stop) of every rank.
fn agree_end_of_step(compute_s: f64, gathered: &[f32]) -> StepEnd {
    let pairs = gathered.chunks_exact(2);
    let min = pairs.clone().map(|p| p[0]).fold(f32::INFINITY, f32::min);
    StepEnd {
        lag_s: (compute_s - f64::from(min)).max(0.0),
        stop: pairs.into_iter().any(|p| p[1] != 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::tcp::connect_loopback;
    use burn::backend::Flex;
    use std::time::Duration;

    type A = Autodiff<Flex>;

    fn world_of(world: usize) -> Vec<Arc<Comm>> {
        connect_loopback(world, Duration::from_secs(20), true)
            .into_iter()
            .map(|c| Comm::new(Box::new(c)))
            .collect()
    }

    fn rows(rank: usize) -> Vec<f32> {
        (0..6).map(|i| (i as f32 + 1.0) * (rank as f32 + 1.0)).collect()
    }

    /// Each rank's loss Σ_j w_j·g_j over the gathered rows g (w depends on
    /// the rank): d(Σ_r L_r)/d(x_r) = Σ_r w^(r) restricted to r's rows.
    #[test]
    fn gather_backward_sums_every_ranks_gradient_of_the_local_slice() {
        let comms = world_of(2);
        let weights = |rank: usize| -> Vec<f32> { (0..12).map(|j| (j as f32 + 1.0) * if rank == 0 { 1.0 } else { -0.5 }).collect() };
        let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .enumerate()
                .map(|(rank, comm)| {
                    let weights = &weights;
                    s.spawn(move || {
                        let device = Default::default();
                        let run = |exact: bool| {
                            let x = Tensor::<A, 2>::from_data(TensorData::new(rows(rank), [3, 2]), &device).require_grad();
                            let g = all_gather_rows(x.clone(), comm, exact);
                            let w = Tensor::<A, 2>::from_data(TensorData::new(weights(rank), [6, 2]), &device);
                            let grads = (g.clone() * w).sum().backward();
                            let gathered = g.inner().into_data().to_vec::<f32>().unwrap();
                            (gathered, x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap())
                        };
                        let (gathered, exact) = run(true);
                        let (_, local) = run(false);
                        (gathered, exact, local)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (gathered, exact, local)) in results.into_iter().enumerate() {
            let expect: Vec<f32> = rows(0).into_iter().chain(rows(1)).collect();
            assert_eq!(gathered, expect);
            let own = rank * 6..(rank + 1) * 6;
            let summed: Vec<f32> = own.clone().map(|j| weights(0)[j] + weights(1)[j]).collect();
            assert_eq!(exact, summed, "rank {rank}: exact gradient");
            assert_eq!(local, weights(rank)[own].to_vec(), "rank {rank}: local-only gradient");
        }
        assert!(comms.iter().all(|c| c.check().is_ok()));
    }

    #[test]
    fn all_reduce_backward_sums_gradients_and_averaging_divides_by_the_world() {
        let comms = world_of(3);
        let out: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .enumerate()
                .map(|(rank, comm)| {
                    s.spawn(move || {
                        let device = Default::default();
                        let x = Tensor::<A, 1>::from_data(TensorData::new(vec![rank as f32, 1.0], [2]), &device).require_grad();
                        let y = all_reduce_sum(x.clone(), comm);
                        // L_r = (r+1)·y0 + y1²
                        let l = y.clone().narrow(0, 0, 1).mul_scalar(rank as f32 + 1.0) + y.clone().narrow(0, 1, 1).square();
                        let grads = l.sum().backward();
                        let gx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
                        let mut g = vec![
                            Some(Tensor::<Flex, 1>::from_data(TensorData::new(vec![rank as f32; 3], [3]), &device)),
                            None,
                            Some(Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.0 + rank as f32], [1]), &device)),
                        ];
                        average_gradients(&mut g, comm, 4).unwrap();
                        let flat: Vec<f32> = g
                            .into_iter()
                            .flatten()
                            .flat_map(|t| t.into_data().to_vec::<f32>().unwrap())
                            .collect();
                        (y.inner().into_data().to_vec::<f32>().unwrap(), gx, flat)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (y, gx, avg) in out {
            assert_eq!(y, vec![3.0, 3.0]);
            // d(Σ_r L_r)/dx_r = [Σ_r (r+1), Σ_r 2·y1] = [6, 18]
            assert_eq!(gx, vec![6.0, 18.0]);
            assert_eq!(avg, vec![1.0, 1.0, 1.0, 2.0]);
        }
    }

    #[test]
    fn a_stop_on_any_rank_ends_the_step_everywhere_and_the_lag_is_over_the_fastest() {
        let quiet = [2.0, 0.0, 1.5, 0.0, 3.0, 0.0];
        assert_eq!(agree_end_of_step(3.0, &quiet), StepEnd { lag_s: 1.5, stop: false });
        assert_eq!(agree_end_of_step(1.5, &quiet), StepEnd { lag_s: 0.0, stop: false });
        let one_stops = [2.0, 0.0, 1.5, 0.0, 3.0, 1.0];
        assert!(agree_end_of_step(2.0, &one_stops).stop);
    }

    #[test]
    fn every_rank_learns_of_a_stop_that_only_one_saw() {
        let comms = world_of(3);
        let ends: Vec<StepEnd> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .enumerate()
                .map(|(r, c)| s.spawn(move || end_of_step(r as f64, r == 2, c).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ends.iter().map(|e| e.lag_s).collect::<Vec<_>>(), vec![0.0, 1.0, 2.0]);
        assert!(ends.iter().all(|e| e.stop));
    }
}
