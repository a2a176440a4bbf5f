//! Input data: dataset readers (IDX, CIFAR binary, synthetic; ImageFolder
//! trees and packed shards on disk or object storage),
//! photo decoding and the augmentations of every family, the batch pipeline,
//! and the inputs of `embed` and `score` (image folders and `.npy` files,
//! through the same evaluation transform).
//!
//! Small datasets are held in memory as u8 images [N, 3, 32, 32]; photos are
//! read and decoded on demand. Batches are assembled on the host from the
//! global sample order (shared::order) and the keyed augmentation streams,
//! so a sample's views never depend on rank, thread or world size.

pub mod augment;
pub mod dataset;
pub mod encoded;
pub mod inputs;
pub mod npy;
pub mod photo;
pub mod pipeline;
pub mod prefetch;

pub use dataset::{Dataset, Split};
