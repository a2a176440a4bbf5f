//! Where a resumed run starts (docs/architecture.md §7): the newest
//! checkpoint that verifies, and the checks that it fits the job spec
//! before the trainer takes its state.
//!
//! With several ranks, rank 0 alone chooses the checkpoint and broadcasts
//! its step; every other rank loads exactly that one. A second exchange
//! tells every rank whether all of them could read it: if one could not, all
//! of them fail (the failing rank naming the object), so that no rank ever
//! starts from an older checkpoint, or from step 0, on its own. This module
//! does not decide which checkpoints exist or verify (`checkpoint::store`).

use crate::checkpoint::format::{read_model, read_optimizer, weights_info};
use crate::checkpoint::{CheckpointStore, LoadedCheckpoint};
use crate::collective::ops::{Comm, Exchange};
use crate::model::kernels::Kernels;
use crate::train::step::Trainer;
use amdim_shared::checkpoint::{MODEL_FILE, OPTIMIZER_FILE, step_folder};
use anyhow::{Context, Result, anyhow, bail};

/// Bits of a step carried by one f32 of the broadcast (exact below 2^24).
const LIMB_BITS: u32 = 21;
const LIMB: u64 = 1 << LIMB_BITS;

/// What rank 0 tells the others: [what, step in three 21-bit limbs].
/// `what`: 0 = nothing to resume, 1 = resume `step`, 2 = rank 0 failed.
fn encode(choice: &Result<Option<u64>>) -> [f32; 4] {
    let (what, step) = match choice {
        Ok(None) => (0.0, 0),
        Ok(Some(step)) => (1.0, *step),
        Err(_) => (2.0, 0),
    };
    let limb = |k: u32| ((step >> (k * LIMB_BITS)) % LIMB) as f32;
    [what, limb(0), limb(1), limb(2)]
}

fn decode(msg: [f32; 4]) -> Result<Option<u64>> {
    let step = (0..3).fold(0u64, |acc, k| acc | ((msg[k + 1] as u64) << (k as u32 * LIMB_BITS)));
    match msg[0] as u32 {
        0 => Ok(None),
        1 => Ok(Some(step)),
        _ => Err(anyhow!("rank 0 could not choose a checkpoint to resume from (its log says why)")),
    }
}

/// The checkpoint a run resumed from: its step and the bytes of its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resumed {
    pub step: u64,
    pub bytes: u64,
}

impl Resumed {
    fn of(ckpt: &LoadedCheckpoint) -> Self {
        Self {
            step: ckpt.manifest.step,
            bytes: ckpt.manifest.files.iter().map(|f| f.size).sum(),
        }
    }
}

/// Restores the newest verified checkpoint into `t` (one process); returns
/// the one it took, if any.
pub fn resume<B: Kernels>(t: &mut Trainer<B>, store: &CheckpointStore) -> Result<Option<Resumed>> {
    store.load_latest()?.map(|ckpt| restore(t, &ckpt)).transpose()
}

/// [`resume`] for every rank of `comm` from the same checkpoint: rank 0
/// chooses, the others load what it chose. Any rank failing fails all.
pub fn resume_agreed<B: Kernels>(t: &mut Trainer<B>, store: &CheckpointStore, comm: Option<&Comm>) -> Result<Option<Resumed>> {
    let Some(comm) = comm.filter(|c| c.world() > 1) else {
        return resume(t, store);
    };
    let rank = comm.rank();
    let loaded = if rank == 0 {
        let chosen = store.load_latest();
        let mut msg = encode(
            &chosen
                .as_ref()
                .map(|c| c.as_ref().map(|c| c.manifest.step))
                .map_err(|e| anyhow!("{e}")),
        );
        comm.run(Exchange::AllReduce, msg.len(), |c| c.broadcast(&mut msg, 0))
            .context("rank 0: telling the other ranks which checkpoint to resume from")?;
        chosen
    } else {
        let mut msg = [0.0f32; 4];
        comm.run(Exchange::AllReduce, msg.len(), |c| c.broadcast(&mut msg, 0))
            .with_context(|| format!("rank {rank}: learning from rank 0 which checkpoint to resume from"))?;
        decode(msg).and_then(|choice| match choice {
            Some(step) => store.load_step(step).map(Some).with_context(|| {
                format!(
                    "rank {rank} cannot read {}, the checkpoint rank 0 chose to resume from",
                    step_folder(step)
                )
            }),
            None => Ok(None),
        })
    };
    let ok = [if loaded.is_ok() { 1.0f32 } else { 0.0 }];
    let all = comm
        .run(Exchange::RankSync, 1, |c| c.all_gather(&ok))
        .with_context(|| format!("rank {rank}: checking that every rank read the checkpoint"))?;
    let failed: Vec<usize> = all.iter().enumerate().filter(|(_, v)| **v < 0.5).map(|(r, _)| r).collect();
    let loaded = loaded.with_context(|| format!("rank {rank}: resuming failed; the generation fails"))?;
    if !failed.is_empty() {
        bail!(
            "rank {rank}: rank(s) {failed:?} could not read the checkpoint to resume from (their logs name the object); \
             the generation fails rather than ranks starting from different steps"
        );
    }
    loaded.map(|ckpt| restore(t, &ckpt)).transpose()
}

/// Checks that `ckpt` fits `t`'s job spec, then takes its state.
fn restore<B: Kernels>(t: &mut Trainer<B>, ckpt: &LoadedCheckpoint) -> Result<Resumed> {
    let m = &ckpt.manifest;
    if m.global_batch != t.spec.train.batch_size {
        bail!(
            "checkpoint step {} was trained with global batch {} but train.batch_size = {}; the sample order would change",
            m.step,
            m.global_batch,
            t.spec.train.batch_size
        );
    }
    if m.seed != t.spec.job.seed {
        bail!(
            "checkpoint step {} was trained with job.seed {} but the spec says {}",
            m.step,
            m.seed,
            t.spec.job.seed
        );
    }
    if m.config_hash != t.spec.config_hash() {
        tracing::warn!(step = m.step, "the job spec differs from the one this checkpoint was written with");
    }
    let model = ckpt.file(MODEL_FILE).context("checkpoint has no model file")?;
    let optim = ckpt.file(OPTIMIZER_FILE).context("checkpoint has no optimizer file")?;
    if let Some(info) = weights_info(model, MODEL_FILE)? {
        info.check(&t.spec)
            .with_context(|| format!("checkpoint step {} does not fit the job spec", m.step))?;
    }
    let state = read_model(&t.plan, model, MODEL_FILE, &t.host_state(), true)?;
    let adam = read_optimizer(&t.plan, optim, OPTIMIZER_FILE)?;
    t.restore(state, adam, m.step);
    tracing::info!(step = m.step, epoch = m.epoch, "resumed from checkpoint");
    Ok(Resumed::of(ckpt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broadcast_carries_any_step_exactly() {
        for step in [0u64, 1, 4, (1 << 24) + 1, (1 << 42) + 12345, (1 << 63) - 1] {
            assert_eq!(decode(encode(&Ok(Some(step)))).unwrap(), Some(step));
        }
        assert_eq!(decode(encode(&Ok(None))).unwrap(), None);
        assert!(decode(encode(&Err(anyhow!("down")))).is_err());
    }
}
