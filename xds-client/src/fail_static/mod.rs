//! Fail-static: the last good configuration kept on disk for restarts that cannot reach a
//! control plane (`docs/fail-static.md`).

// The worker that reads and writes snapshots lands separately; until then only the tests
// and the fuzz entry points use the file layer.
#[allow(dead_code)]
mod file;

#[doc(hidden)]
pub use file::fuzzing;
pub use file::{CorruptReason, SnapshotError};
