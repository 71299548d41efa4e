//! TEMPORARY STUB (replaced by the snapfile branch): just enough to compile the worker.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use envoy_types::pb::google::protobuf::Any;

pub(crate) struct SnapshotRecord {
    pub type_url: String,
    pub name: String,
    pub version: String,
    pub resource: Any,
}
pub(crate) struct SnapshotFile {
    pub node_id: String,
    pub servers: Vec<String>,
    pub written_at: SystemTime,
    pub records: Vec<SnapshotRecord>,
}
pub(crate) struct Expected<'a> {
    pub node_id: &'a str,
    pub servers: &'a [String],
    pub max_age: Duration,
    pub now: SystemTime,
    pub max_bytes: usize,
}
pub(crate) fn file_name(node_id: &str, servers: &[String]) -> String {
    format!("xds-{}-{}.mwxs", node_id.len(), servers.len())
}
pub(crate) fn read(dir: &Path, expected: &Expected<'_>) -> Result<SnapshotFile, SnapshotError> {
    let _ = expected;
    Err(SnapshotError::Missing {
        path: dir.join("x"),
    })
}
pub(crate) fn write(dir: &Path, file: &SnapshotFile, max_bytes: usize) -> Result<u64, SnapshotError> {
    let _ = (dir, file, max_bytes);
    Ok(0)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("missing {path:?}")]
    Missing { path: PathBuf },
    #[error("io {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {type_url} {name}")]
    Invalid {
        type_url: String,
        name: String,
        #[source]
        source: crate::resource::ResourceError,
    },
}
impl SnapshotError {
    pub fn kind(&self) -> &'static str {
        "x"
    }
}
