//! `Cluster` (CDS): the public types apart from their decoding.

mod decode;
mod types;

#[cfg(test)]
pub(crate) use decode::RAW_BUFFER_TYPE_URL;
pub(crate) use decode::{CommonTls, common_tls, decode, tls_transport_socket};
pub use types::*;

// The tests build resources with the deprecated fields control planes still send.
#[cfg(test)]
#[allow(deprecated)]
mod tests;
