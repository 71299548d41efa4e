//! `RouteConfiguration` (RDS, or inline in a Listener): the public types apart from their
//! decoding, and the rules both obey.

mod decode;
mod rules;
mod types;

pub(crate) use decode::{decode, validate};
pub use rules::ValidationError;
pub use types::*;

// The tests build resources with the deprecated fields control planes still send.
#[cfg(test)]
#[allow(deprecated)]
mod tests;
