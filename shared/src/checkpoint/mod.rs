//! Checkpoints (docs/architecture.md §7): the layout under a job's checkpoint URI
//! (`layout`), the manifest and the check of a file against it
//! (`manifest`), what a weights file says about itself in its safetensors
//! metadata (`weights`), and the folder I/O on object storage that the
//! worker (writing, resuming, pruning) and `amdimctl` (listing, exporting)
//! share (`store`), and the job's stored log objects next to the
//! checkpoints (`logs`). What goes into a checkpoint is the worker's business,
//! not this module's.

mod layout;
mod logs;
mod manifest;
mod store;
mod weights;

pub use layout::{HISTORY_FILE, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE, OPTIMIZER_FILE, parse_step_folder, step_folder};
pub use logs::{LOGS_FOLDER, LogObject, list_logs, put_log, read_log};
pub use manifest::{FileEntry, Manifest, VerifyError};
pub use store::{CheckpointError, MULTIPART_THRESHOLD, PART_BYTES, complete_steps, delete_step, put_file, read_manifest, read_verified};
pub use weights::{Mismatch, WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION, WeightsInfo, WeightsMetaError, safetensors_metadata};
