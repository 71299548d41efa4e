//! What a service needs to join the mesh, in one place. Each adapter re-exports it at its
//! root (`use meshwork_grpc::{MeshChannel, XdsClient, Bootstrap, MtlsConfig, ...}`), so one
//! `use` line of the adapter suffices for the common cases; everything else stays under its
//! module.

pub use crate::config::{StaticConfig, TargetConfig};
pub use crate::identity::{
    CertificateProviders, FileWatcherSource, MtlsConfig, PeerIdentity, SpiffeId, StaticSource,
    SvidSource, TrustDomain, WorkloadApiSource,
};
pub use crate::inbound::{AuthorizationPolicy, Operation, Principal, Rule, ServerLimits};
pub use crate::telemetry::Telemetry;
pub use crate::upstream::{ConnectError, UpstreamPolicy};
pub use meshwork_xds::bootstrap::Bootstrap;
pub use meshwork_xds::client::XdsClient;
