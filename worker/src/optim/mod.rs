//! Optimisation (docs/model.md §6): Adam with PyTorch's update rule and L2 weight
//! decay, and the learning-rate schedule (linear warm-up, step decay at
//! milestone epochs). State is per parameter and serialisable for exact resume.

pub mod adam;
pub mod schedule;
