//! `Cluster` (CDS): the public types apart from their decoding.

mod decode;
mod types;

#[cfg(test)]
use decode::RAW_BUFFER_TYPE_URL;
pub(crate) use decode::decode;
pub use types::*;

// The tests build resources with the deprecated fields control planes still send.
#[cfg(test)]
#[allow(deprecated)]
mod tests;
