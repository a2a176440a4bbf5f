//! Test accuracy of the online classifiers (docs/model.md §4): refresh BatchNorm
//! statistics on a few test batches in training mode, then evaluate the
//! linear and MLP heads in eval mode. With several ranks, each refreshes the
//! same statistics (identical weights, identical batches) and evaluates
//! every W-th test batch; the hit counts are summed over ranks.

use crate::collective::ops::Exchange;
use crate::data::pipeline::Pipeline;
use crate::loss::classifier::correct;
use crate::model::BnMode;
use crate::model::encoder::Forward;
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::train::step::{Trainer, apply_bn_stats, images};

/// Top-1 accuracies in [0, 1].
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalResult {
    pub linear: f64,
    pub mlp: f64,
    pub samples: usize,
}

/// Refreshes BN statistics on a copy of the model and evaluates; None
/// without classifiers or labels. The trainer's own state is untouched, so
/// evaluating (or not) never changes the course of training or a resume.
pub fn evaluate<B: Kernels>(t: &Trainer<B>, test: &Pipeline) -> anyhow::Result<Option<EvalResult>> {
    let mut params = t.params.clone();
    let (Some(cls), Some(labels)) = (t.plan.classifier.clone(), test.source.labels()) else {
        return Ok(None);
    };
    let (rank, world) = t.comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world()));
    let test_len = test.source.len();
    let size = t.spec.model.image_size;
    let batch = t.spec.train.batch_size.min(256);
    let limit = match t.spec.eval.max_test_samples {
        0 => test_len,
        m => m.min(test_len),
    };
    for b in 0..t.spec.eval.bn_refresh_batches {
        let start = (b * batch) % test_len.max(1);
        let end = (start + batch).min(test_len);
        if end - start < 2 {
            break;
        }
        let x = images::<B>(&test.eval_batch(start..end)?, end - start, size, &t.device);
        let mut fwd = Forward::new(&params.values, BnMode::Train);
        let e = fwd.encode(&t.plan.encoder, x);
        let _ = fwd.classify(&cls, e.r1, None);
        let stats = fwd.stats.updates.into_iter().map(|(bn, s)| (bn, s.mean, s.var_unbiased)).collect();
        apply_bn_stats(&mut params, stats);
    }
    let (mut hit_lin, mut hit_mlp) = (0, 0);
    for start in (0..limit).step_by(batch).skip(rank).step_by(world) {
        let end = (start + batch).min(limit);
        let x = images::<B>(&test.eval_batch(start..end)?, end - start, size, &t.device);
        let mut fwd = Forward::new(&params.values, BnMode::Eval);
        let e = fwd.encode(&t.plan.encoder, x);
        let (lin, mlp) = fwd.classify(&cls, e.r1, None);
        hit_lin += correct(&to_vec(lin), cls.n_classes, &labels[start..end]);
        hit_mlp += correct(&to_vec(mlp), cls.n_classes, &labels[start..end]);
    }
    if let Some(comm) = &t.comm {
        let mut hits = [hit_lin as f32, hit_mlp as f32];
        comm.run(Exchange::AllReduce, hits.len(), |c| c.all_reduce_sum(&mut hits))?;
        (hit_lin, hit_mlp) = (hits[0] as usize, hits[1] as usize);
    }
    Ok(Some(EvalResult {
        linear: hit_lin as f64 / limit.max(1) as f64,
        mlp: hit_mlp as f64 / limit.max(1) as f64,
        samples: limit,
    }))
}
