//! The identity an example process takes from its environment, as a workload in a mesh would.

use std::sync::Arc;

use meshwork_grpc::core::identity::{
    CertificateProviders, IdentityError, SvidSource, WorkloadApiSource,
};
use meshwork_grpc::core::xds::bootstrap::Bootstrap;

/// Our SVID source: the SPIFFE Workload API when `SPIFFE_ENDPOINT_SOCKET` is set (SPIRE),
/// otherwise the bootstrap's certificate provider instance `instance` (Istio's agent writes
/// one named `default`), or its only instance when `instance` is `None`.
pub async fn svid_source(
    bootstrap: Option<&Bootstrap>,
    instance: Option<&str>,
) -> Result<Arc<dyn SvidSource>, Box<dyn std::error::Error + Send + Sync>> {
    if std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_some() {
        return Ok(Arc::new(WorkloadApiSource::connect().await?));
    }
    let Some(bootstrap) = bootstrap else {
        return Err("no identity: set SPIFFE_ENDPOINT_SOCKET, or GRPC_XDS_BOOTSTRAP with certificate_providers".into());
    };
    let names: Vec<&String> = bootstrap.certificate_providers().keys().collect();
    let name = match (instance, names.as_slice()) {
        (Some(name), _) => name.to_owned(),
        (None, [only]) => (*only).clone(),
        (None, _) if names.iter().any(|n| *n == "default") => "default".to_owned(),
        (None, _) => {
            return Err(format!(
                "the bootstrap has certificate provider instances {names:?}; pick one with --cert-provider"
            )
            .into());
        }
    };
    let providers = CertificateProviders::from_bootstrap(bootstrap);
    providers
        .instance(&name)
        .map_err(|e: IdentityError| format!("certificate provider {name:?}: {e}").into())
}
