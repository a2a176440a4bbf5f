//! Input data: dataset readers (IDX, CIFAR binary, synthetic), the 32 px
//! augmentations, `.npy` files and image folders for `embed`.
//!
//! Datasets are held in memory as u8 images [N, 3, 32, 32]; batches are
//! assembled on the host from the global sample order (shared::order) and the
//! keyed augmentation streams, so a sample's views never depend on rank,
//! thread or world size.

pub mod augment;
pub mod dataset;
pub mod images;
pub mod npy;

pub use dataset::{Dataset, Split};
