//! TEMPORARY stand-in for the chaintls branch's `for_downstream`; removed at merge.

use meshwork_xds::resource::DownstreamTls;

use super::{CertificateProviders, IdentityError, MtlsConfig};

impl CertificateProviders {
    /// Stand-in.
    pub fn for_downstream(&self, tls: &DownstreamTls) -> Result<MtlsConfig, IdentityError> {
        Ok(MtlsConfig::new(self.instance(&tls.identity.instance_name)?))
    }
}
