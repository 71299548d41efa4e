//! `Cluster` (CDS): the public types apart from their decoding.

mod decode;
mod types;

pub(crate) use decode::{CommonTls, RAW_BUFFER_TYPE_URL, TLS_TRANSPORT_SOCKET, common_tls, decode};
pub use types::*;

// The tests build resources with the deprecated fields control planes still send.
#[cfg(test)]
#[allow(deprecated)]
mod tests;
