//! The benchmark commands: `bench` (training throughput, [`train`]),
//! `bench-data` (the input pipeline, [`data`]), `bench-checkpoint`
//! (checkpoint cost, [`checkpoint`]) and `bench-collective` (collective
//! bandwidth between processes, [`collective`]). Each file holds its
//! command's flags, its measurement and its report. They measure and print;
//! they assert nothing, and nothing in training depends on them.

pub mod checkpoint;
pub mod collective;
pub mod data;
pub mod train;
