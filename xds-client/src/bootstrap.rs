//! The gRPC xDS bootstrap: which control plane to talk to, how, and as whom.
//!
//! This is the JSON file (or inline JSON) that proxyless gRPC reads, defined by gRFC A27 and
//! extended by A47 (federation: `authorities` and Listener-name templates), A65 (`tls`
//! channel credentials), A71 (`xds_servers` as an ordered fallback list) and A81
//! (`trusted_xds_server`). Istio's agent writes this same file for proxyless workloads, so a
//! meshwork service in an Istio mesh reads exactly what a gRPC one does.
//!
//! [`Bootstrap::from_env`] reads `GRPC_XDS_BOOTSTRAP` (a file path) or, if that is unset,
//! `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON itself). Every field is validated when loaded; a
//! malformed one is a [`BootstrapError::Field`] naming its JSON path. Unknown keys are
//! ignored, as gRPC ignores them, but remembered in [`Bootstrap::unknown_fields`].
//!
//! One field is meshwork's own: an `xds_servers` entry's `"api_type"`, Envoy's name for the
//! ADS variant: `"GRPC"` (state of the world, the default) or `"DELTA_GRPC"` (incremental),
//! per server ([`XdsServer::api_type`]). gRPC skips it as an unknown key (grpc-go decodes a
//! server entry with `encoding/json`, which ignores unknown keys), so one file serves both.
//!
//! Code and tests can build one without JSON:
//!
//! ```
//! use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
//!
//! let bootstrap = Bootstrap::builder()
//!     .server(XdsServer::new("http://127.0.0.1:1234")?)
//!     .node_id("test-node")
//!     .build()?;
//! assert_eq!(bootstrap.listener_resource_name("xds:///greeter:50051")?, "greeter:50051");
//! # Ok::<(), meshwork_xds::bootstrap::BootstrapError>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

mod certs;
mod error;
mod json;
mod node;
mod server;
mod target;

pub use certs::{
    CertificateProviderConfig, DEFAULT_REFRESH_INTERVAL, FILE_WATCHER_PLUGIN, FileWatcherConfig,
};
pub use error::{BootstrapError, FieldErrorKind, ServerUriError};
pub use node::{Locality, Node};
pub use server::{
    ApiType, ChannelCredentials, SERVER_FEATURE_FAIL_ON_DATA_ERRORS,
    SERVER_FEATURE_IGNORE_RESOURCE_DELETION, SERVER_FEATURE_RESOURCE_TIMER_IS_TRANSIENT_FAILURE,
    SERVER_FEATURE_TRUSTED_XDS_SERVER, SERVER_FEATURE_XDS_V3, ServerAddress, TlsCredentials,
    XdsServer,
};
pub use target::{TargetParseError, XdsTarget, is_path_byte};

use json::{ROOT, as_array, as_object, child, get, index, opt_str, record_unknown};
pub(crate) use target::xdstp_authority;
use target::{authority_prefix, expand_template};

/// The environment variable holding the path of the bootstrap file.
pub const BOOTSTRAP_FILE_ENV: &str = "GRPC_XDS_BOOTSTRAP";

/// The environment variable holding the bootstrap JSON itself (used when
/// [`BOOTSTRAP_FILE_ENV`] is unset).
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// The default `client_default_listener_resource_name_template`: the target's name as is.
const DEFAULT_CLIENT_LISTENER_TEMPLATE: &str = "%s";

const TOP_LEVEL_KEYS: &[&str] = &[
    "xds_servers",
    "node",
    "certificate_providers",
    "server_listener_resource_name_template",
    "client_default_listener_resource_name_template",
    "authorities",
];

/// A validated gRPC xDS bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    xds_servers: Vec<XdsServer>,
    node: Node,
    certificate_providers: BTreeMap<String, CertificateProviderConfig>,
    server_listener_resource_name_template: Option<String>,
    client_default_listener_resource_name_template: String,
    authorities: BTreeMap<String, Authority>,
    unknown_fields: Vec<String>,
}

impl Bootstrap {
    /// A builder, for a bootstrap written in code.
    pub fn builder() -> BootstrapBuilder {
        BootstrapBuilder::default()
    }

    /// Loads the bootstrap the way gRPC does: from the file named by `GRPC_XDS_BOOTSTRAP`
    /// if set (and not empty), else from the JSON in `GRPC_XDS_BOOTSTRAP_CONFIG`; neither is
    /// [`BootstrapError::NotConfigured`].
    pub fn from_env() -> Result<Self, BootstrapError> {
        Self::from_env_with(|name| std::env::var_os(name))
    }

    /// [`Bootstrap::from_env`] with the environment read through `lookup`, so callers (and
    /// tests) can supply variables without touching the process environment.
    pub fn from_env_with<F>(lookup: F) -> Result<Self, BootstrapError>
    where
        F: Fn(&str) -> Option<OsString>,
    {
        if let Some(path) = lookup(BOOTSTRAP_FILE_ENV).filter(|v| !v.is_empty()) {
            return Self::from_file(PathBuf::from(path));
        }
        if let Some(config) = lookup(BOOTSTRAP_CONFIG_ENV).filter(|v| !v.is_empty()) {
            let config = config
                .into_string()
                .map_err(|_| BootstrapError::EnvNotUnicode {
                    var: BOOTSTRAP_CONFIG_ENV,
                })?;
            return Self::from_json_str(&config);
        }
        Err(BootstrapError::NotConfigured)
    }

    /// Loads the bootstrap from a JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BootstrapError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Parses and validates bootstrap JSON.
    ///
    /// ```
    /// use meshwork_xds::bootstrap::{ApiType, Bootstrap, ChannelCredentials, ServerAddress};
    ///
    /// let bootstrap = Bootstrap::from_json_str(r#"{
    ///     "xds_servers": [{
    ///         "server_uri": "unix:///etc/istio/proxy/XDS",
    ///         "channel_creds": [{"type": "insecure"}],
    ///         "server_features": ["xds_v3"],
    ///         "api_type": "DELTA_GRPC"
    ///     }],
    ///     "node": {"id": "sidecar~10.0.0.1~echo-1.default~default.svc.cluster.local"},
    ///     "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"
    /// }"#)?;
    ///
    /// let server = &bootstrap.xds_servers()[0];
    /// assert!(matches!(server.address(), ServerAddress::Unix { .. }));
    /// assert_eq!(server.channel_credentials(), &ChannelCredentials::Insecure);
    /// assert!(server.xds_v3());
    /// assert_eq!(server.api_type(), ApiType::DeltaGrpc);
    /// assert_eq!(
    ///     bootstrap.listener_resource_name("xds:///echo.default.svc.cluster.local:7070")?,
    ///     "echo.default.svc.cluster.local:7070"
    /// );
    ///
    /// // Errors name the field.
    /// let err = Bootstrap::from_json_str(r#"{"xds_servers": [{"server_uri": 42}]}"#).unwrap_err();
    /// assert_eq!(err.to_string(), "xds_servers[0].server_uri: expected a string, got 42");
    /// # Ok::<(), meshwork_xds::bootstrap::BootstrapError>(())
    /// ```
    pub fn from_json_str(json: &str) -> Result<Self, BootstrapError> {
        let value: Value = serde_json::from_str(json).map_err(BootstrapError::Json)?;
        Self::from_json_value(&value)
    }

    /// Validates bootstrap JSON that is already parsed.
    pub fn from_json_value(value: &Value) -> Result<Self, BootstrapError> {
        let mut unknown = Vec::new();
        let root = as_object(value, ROOT)?;
        record_unknown(root, TOP_LEVEL_KEYS, ROOT, &mut unknown);

        let xds_servers = match get(root, "xds_servers") {
            None => {
                return Err(BootstrapError::field(
                    "xds_servers",
                    FieldErrorKind::Missing,
                ));
            }
            Some(v) => parse_servers(v, "xds_servers", &mut unknown)?,
        };
        let node = node::parse_node(get(root, "node"), "node", &mut unknown)?;

        let mut certificate_providers = BTreeMap::new();
        if let Some(v) = get(root, "certificate_providers") {
            let path = "certificate_providers";
            for (name, entry) in as_object(v, path)? {
                let config =
                    certs::parse_certificate_provider(entry, &child(path, name), &mut unknown)?;
                certificate_providers.insert(name.clone(), config);
            }
        }

        let server_listener_resource_name_template =
            opt_str(root, "server_listener_resource_name_template", ROOT)?.map(str::to_owned);
        let client_default_listener_resource_name_template =
            opt_str(root, "client_default_listener_resource_name_template", ROOT)?
                .map(str::to_owned);

        let mut authorities = BTreeMap::new();
        if let Some(v) = get(root, "authorities") {
            for (name, entry) in as_object(v, "authorities")? {
                let path = child("authorities", name);
                authorities.insert(name.clone(), parse_authority(entry, &path, &mut unknown)?);
            }
        }

        BootstrapBuilder {
            xds_servers,
            node,
            certificate_providers,
            server_listener_resource_name_template,
            client_default_listener_resource_name_template,
            authorities,
            unknown_fields: unknown,
        }
        .build()
    }

    /// The top-level xDS servers, in fallback order (gRFC A71); never empty.
    pub fn xds_servers(&self) -> &[XdsServer] {
        &self.xds_servers
    }

    /// The node: who this client is.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The certificate provider instances, by instance name.
    pub fn certificate_providers(&self) -> &BTreeMap<String, CertificateProviderConfig> {
        &self.certificate_providers
    }

    /// One certificate provider instance (Istio's is `default`).
    pub fn certificate_provider(&self, instance_name: &str) -> Option<&CertificateProviderConfig> {
        self.certificate_providers.get(instance_name)
    }

    /// The template of the Listener name an xDS-enabled server subscribes to, if set.
    pub fn server_listener_resource_name_template(&self) -> Option<&str> {
        self.server_listener_resource_name_template.as_deref()
    }

    /// The template of the Listener name for an `xds:` target without authority; `%s` (the
    /// target's name as is) unless configured.
    pub fn client_default_listener_resource_name_template(&self) -> &str {
        &self.client_default_listener_resource_name_template
    }

    /// The federation authorities (gRFC A47), by name.
    pub fn authorities(&self) -> &BTreeMap<String, Authority> {
        &self.authorities
    }

    /// One authority.
    pub fn authority(&self, name: &str) -> Option<&Authority> {
        self.authorities.get(name)
    }

    /// The JSON paths of keys this bootstrap has that meshwork does not read, such as
    /// `allowed_grpc_services` or `xds_servers[0].call_creds`, for config dumps. Opaque
    /// configurations (of unsupported credentials or certificate provider plugins) are not
    /// walked.
    pub fn unknown_fields(&self) -> &[String] {
        &self.unknown_fields
    }

    /// The Listener resource name to subscribe to for a client channel to `target` (an
    /// `xds:` URI), following gRFC A47:
    ///
    /// - `xds:///name`: `client_default_listener_resource_name_template` with `%s` replaced
    ///   by `name` (percent-encoded if the template starts with `xdstp:`, in which case the
    ///   resulting name's authority must be in `authorities`);
    /// - `xds://authority/name`: the authority must be in `authorities`; its
    ///   `client_listener_resource_name_template` (default
    ///   `xdstp://<authority>/envoy.config.listener.v3.Listener/%s`) with `%s` replaced by
    ///   the percent-encoded `name`.
    pub fn listener_resource_name(&self, target: &str) -> Result<String, BootstrapError> {
        self.listener_resource_name_for(&XdsTarget::parse(target)?)
    }

    /// [`Bootstrap::listener_resource_name`] for a target already parsed.
    pub fn listener_resource_name_for(&self, target: &XdsTarget) -> Result<String, BootstrapError> {
        match target.authority() {
            Some(authority) => {
                let config = self.authorities.get(authority).ok_or_else(|| {
                    BootstrapError::UnknownAuthority {
                        authority: authority.to_owned(),
                        name: target.as_str().to_owned(),
                    }
                })?;
                let template = match &config.client_listener_resource_name_template {
                    Some(t) => t.clone(),
                    None => format!(
                        "{}envoy.config.listener.v3.Listener/%s",
                        authority_prefix(authority)
                    ),
                };
                // The template starts with "xdstp://<authority>/" (checked when built), so
                // the name is percent-encoded, as A47 requires for this case.
                Ok(expand_template(&template, target.name()))
            }
            None => {
                let name = expand_template(
                    &self.client_default_listener_resource_name_template,
                    target.name(),
                );
                self.check_xdstp_authority(&name)?;
                Ok(name)
            }
        }
    }

    /// The Listener resource name an xDS-enabled server listening on `addr` subscribes to:
    /// `server_listener_resource_name_template` with `%s` replaced by `ip:port` (`[ip]:port`
    /// for IPv6; percent-encoded if the template starts with `xdstp:`). Istio's template
    /// gives `xds.istio.io/grpc/lds/inbound/0.0.0.0:7070`.
    pub fn server_listener_resource_name(
        &self,
        addr: SocketAddr,
    ) -> Result<String, BootstrapError> {
        let template = self
            .server_listener_resource_name_template
            .as_deref()
            .ok_or(BootstrapError::NoServerListenerTemplate)?;
        let name = expand_template(template, &addr.to_string());
        self.check_xdstp_authority(&name)?;
        Ok(name)
    }

    /// The servers, in fallback order, for resources of `authority`:
    ///
    /// - `None` (old-style names): the top-level `xds_servers`;
    /// - a listed authority: its own `xds_servers`, or the top-level ones if it lists none;
    /// - an authority not listed: no servers (an empty slice), since subscribing to it is an
    ///   error (see [`Bootstrap::servers_for_resource_name`] for a checked lookup).
    pub fn servers_for_authority(&self, authority: Option<&str>) -> &[XdsServer] {
        let Some(authority) = authority else {
            return &self.xds_servers;
        };
        match self.authorities.get(authority) {
            Some(a) if a.xds_servers.is_empty() => &self.xds_servers,
            Some(a) => &a.xds_servers,
            None => &[],
        }
    }

    /// The servers, in fallback order, for the resource `name`: old-style names use the
    /// top-level servers; `xdstp:` names use their authority's, which must be listed.
    pub fn servers_for_resource_name(&self, name: &str) -> Result<&[XdsServer], BootstrapError> {
        match xdstp_authority(name) {
            None => Ok(&self.xds_servers),
            Some(authority) => {
                if !self.authorities.contains_key(&authority) {
                    return Err(BootstrapError::UnknownAuthority {
                        authority,
                        name: name.to_owned(),
                    });
                }
                Ok(self.servers_for_authority(Some(&authority)))
            }
        }
    }

    fn check_xdstp_authority(&self, name: &str) -> Result<(), BootstrapError> {
        match xdstp_authority(name) {
            Some(authority) if !self.authorities.contains_key(&authority) => {
                Err(BootstrapError::UnknownAuthority {
                    authority,
                    name: name.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl FromStr for Bootstrap {
    type Err = BootstrapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_json_str(s)
    }
}

/// One entry of `authorities` (gRFC A47).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authority {
    client_listener_resource_name_template: Option<String>,
    xds_servers: Vec<XdsServer>,
}

impl Authority {
    /// An authority served by the top-level servers, with the default Listener template.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the Listener name template; it must start with `xdstp://<authority name>/`
    /// (checked when the bootstrap is built).
    pub fn with_client_listener_resource_name_template(
        mut self,
        template: impl Into<String>,
    ) -> Self {
        self.client_listener_resource_name_template = Some(template.into());
        self
    }

    /// Adds a server for this authority (the first added is tried first).
    pub fn with_server(mut self, server: XdsServer) -> Self {
        self.xds_servers.push(server);
        self
    }

    /// The configured Listener name template, if any (the default is
    /// `xdstp://<authority>/envoy.config.listener.v3.Listener/%s`).
    pub fn client_listener_resource_name_template(&self) -> Option<&str> {
        self.client_listener_resource_name_template.as_deref()
    }

    /// This authority's own servers, in fallback order; empty means the top-level servers.
    pub fn xds_servers(&self) -> &[XdsServer] {
        &self.xds_servers
    }
}

/// Builds a [`Bootstrap`] in code. [`BootstrapBuilder::build`] applies the same checks as
/// the JSON loader.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct BootstrapBuilder {
    xds_servers: Vec<XdsServer>,
    node: Node,
    certificate_providers: BTreeMap<String, CertificateProviderConfig>,
    server_listener_resource_name_template: Option<String>,
    client_default_listener_resource_name_template: Option<String>,
    authorities: BTreeMap<String, Authority>,
    unknown_fields: Vec<String>,
}

impl BootstrapBuilder {
    /// Adds a top-level server (the first added is tried first). At least one is required.
    pub fn server(mut self, server: XdsServer) -> Self {
        self.xds_servers.push(server);
        self
    }

    /// Sets the whole node.
    pub fn node(mut self, node: Node) -> Self {
        self.node = node;
        self
    }

    /// Sets `node.id`.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node.id = id.into();
        self
    }

    /// Sets `node.cluster`.
    pub fn node_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.node.cluster = cluster.into();
        self
    }

    /// Sets `node.locality`.
    pub fn locality(mut self, locality: Locality) -> Self {
        self.node.locality = Some(locality);
        self
    }

    /// Sets one `node.metadata` entry.
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.node.metadata.insert(key.into(), value);
        self
    }

    /// Adds a certificate provider instance.
    pub fn certificate_provider(
        mut self,
        instance_name: impl Into<String>,
        config: CertificateProviderConfig,
    ) -> Self {
        self.certificate_providers
            .insert(instance_name.into(), config);
        self
    }

    /// Sets `server_listener_resource_name_template` (no default).
    pub fn server_listener_resource_name_template(mut self, template: impl Into<String>) -> Self {
        self.server_listener_resource_name_template = Some(template.into());
        self
    }

    /// Sets `client_default_listener_resource_name_template` (default `%s`).
    pub fn client_default_listener_resource_name_template(
        mut self,
        template: impl Into<String>,
    ) -> Self {
        self.client_default_listener_resource_name_template = Some(template.into());
        self
    }

    /// Adds a federation authority.
    pub fn authority(mut self, name: impl Into<String>, authority: Authority) -> Self {
        self.authorities.insert(name.into(), authority);
        self
    }

    /// Checks the cross-field rules and builds the bootstrap.
    pub fn build(self) -> Result<Bootstrap, BootstrapError> {
        if self.xds_servers.is_empty() {
            return Err(BootstrapError::field("xds_servers", FieldErrorKind::Empty));
        }
        for (name, authority) in &self.authorities {
            if let Some(template) = &authority.client_listener_resource_name_template {
                let prefix = authority_prefix(name);
                if !template.starts_with(&prefix) {
                    return Err(BootstrapError::field(
                        child(
                            &child("authorities", name),
                            "client_listener_resource_name_template",
                        ),
                        FieldErrorKind::TemplatePrefix {
                            prefix,
                            template: template.clone(),
                        },
                    ));
                }
            }
        }
        let client_default_listener_resource_name_template = self
            .client_default_listener_resource_name_template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_CLIENT_LISTENER_TEMPLATE.to_owned());
        Ok(Bootstrap {
            xds_servers: self.xds_servers,
            node: self.node,
            certificate_providers: self.certificate_providers,
            server_listener_resource_name_template: self.server_listener_resource_name_template,
            client_default_listener_resource_name_template,
            authorities: self.authorities,
            unknown_fields: self.unknown_fields,
        })
    }
}

fn parse_servers(
    value: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<Vec<XdsServer>, BootstrapError> {
    as_array(value, path)?
        .iter()
        .enumerate()
        .map(|(i, v)| server::parse_server(v, &index(path, i), unknown))
        .collect()
}

fn parse_authority(
    value: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<Authority, BootstrapError> {
    let map = as_object(value, path)?;
    record_unknown(
        map,
        &["client_listener_resource_name_template", "xds_servers"],
        path,
        unknown,
    );
    let client_listener_resource_name_template =
        opt_str(map, "client_listener_resource_name_template", path)?.map(str::to_owned);
    let xds_servers = match get(map, "xds_servers") {
        None => Vec::new(),
        Some(v) => parse_servers(v, &child(path, "xds_servers"), unknown)?,
    };
    Ok(Authority {
        client_listener_resource_name_template,
        xds_servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::error::Error as _;
    use std::time::Duration;

    const MINIMAL: &str = r#"{
        "xds_servers": [{"server_uri": "127.0.0.1:18000", "channel_creds": [{"type": "insecure"}]}]
    }"#;

    fn with(extra: Value) -> Value {
        let mut v: Value = serde_json::from_str(MINIMAL).unwrap();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    fn err(v: Value) -> String {
        Bootstrap::from_json_value(&v).unwrap_err().to_string()
    }

    fn server(uri: &str) -> XdsServer {
        XdsServer::new(uri).unwrap()
    }

    #[test]
    fn minimal_bootstrap_has_grpc_defaults() {
        let b = Bootstrap::from_json_str(MINIMAL).unwrap();
        assert_eq!(b.xds_servers().len(), 1);
        assert_eq!(
            b.xds_servers()[0].address(),
            &ServerAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 18000
            }
        );
        assert_eq!(b.node(), &Node::default());
        assert_eq!(b.client_default_listener_resource_name_template(), "%s");
        assert_eq!(b.server_listener_resource_name_template(), None);
        assert!(b.certificate_providers().is_empty());
        assert!(b.authorities().is_empty());
        assert!(b.unknown_fields().is_empty());
        assert_eq!(Bootstrap::from_str(MINIMAL).unwrap(), b);
    }

    #[test]
    fn servers_keep_their_order() {
        let b = Bootstrap::from_json_value(&json!({"xds_servers": [
            {"server_uri": "primary:1", "channel_creds": [{"type": "insecure"}]},
            {"server_uri": "fallback:2", "channel_creds": [{"type": "insecure"}]}
        ]}))
        .unwrap();
        let uris: Vec<_> = b.xds_servers().iter().map(XdsServer::uri).collect();
        assert_eq!(uris, ["primary:1", "fallback:2"]);
    }

    #[test]
    fn top_level_errors_name_their_path() {
        let cases = [
            (json!([]), "(root): expected an object, got an array"),
            (json!({}), "xds_servers: required field is missing"),
            (
                json!({"xds_servers": null}),
                "xds_servers: required field is missing",
            ),
            (json!({"xds_servers": []}), "xds_servers: must not be empty"),
            (
                json!({"xds_servers": {}}),
                "xds_servers: expected an array, got an object",
            ),
            (
                json!({"xds_servers": [
                    {"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]},
                    {"server_uri": "b:1", "channel_creds": [{"type": "tls", "config": {"certificate_file": 42}}]}
                ]}),
                "xds_servers[1].channel_creds[0].config.certificate_file: expected a string, got 42",
            ),
            (
                with(json!({"node": "me"})),
                "node: expected an object, got \"me\"",
            ),
            (
                with(json!({"node": {"metadata": 1}})),
                "node.metadata: expected an object, got 1",
            ),
            (
                with(json!({"certificate_providers": []})),
                "certificate_providers: expected an object, got an array",
            ),
            (
                with(
                    json!({"certificate_providers": {"default": {"plugin_name": "file_watcher",
                    "config": {"certificate_file": "c"}}}}),
                ),
                "certificate_providers.default.config.private_key_file: required because \
                 certificate_file is set (set both or neither)",
            ),
            (
                with(
                    json!({"certificate_providers": {"my.ca": {"plugin_name": "file_watcher",
                    "config": {"ca_certificate_file": "c", "refresh_interval": 600}}}}),
                ),
                "certificate_providers[\"my.ca\"].config.refresh_interval: expected a string, got 600",
            ),
            (
                with(json!({"server_listener_resource_name_template": 1})),
                "server_listener_resource_name_template: expected a string, got 1",
            ),
            (
                with(json!({"client_default_listener_resource_name_template": ["%s"]})),
                "client_default_listener_resource_name_template: expected a string, got an array",
            ),
            (
                with(json!({"authorities": "x"})),
                "authorities: expected an object, got \"x\"",
            ),
            (
                with(json!({"authorities": {"xds.example.com": null}})),
                "authorities[\"xds.example.com\"]: expected an object, got null",
            ),
            (
                with(json!({"authorities": {"xds.example.com": {
                    "client_listener_resource_name_template": 5}}})),
                "authorities[\"xds.example.com\"].client_listener_resource_name_template: \
                 expected a string, got 5",
            ),
            (
                with(json!({"authorities": {"xds.example.com": {
                    "client_listener_resource_name_template": "xdstp://other.com/x/%s"}}})),
                "authorities[\"xds.example.com\"].client_listener_resource_name_template: must \
                 start with \"xdstp://xds.example.com/\", got \"xdstp://other.com/x/%s\"",
            ),
            (
                with(
                    json!({"authorities": {"a": {"client_listener_resource_name_template": "xdstp://a"}}}),
                ),
                "authorities.a.client_listener_resource_name_template: must start with \
                 \"xdstp://a/\", got \"xdstp://a\"",
            ),
            (
                with(json!({"authorities": {"xds.example.com": {"xds_servers": [
                    {"server_uri": 7, "channel_creds": [{"type": "insecure"}]}]}}})),
                "authorities[\"xds.example.com\"].xds_servers[0].server_uri: expected a string, got 7",
            ),
            (
                with(json!({"authorities": {"a": {"xds_servers": "b:1"}}})),
                "authorities.a.xds_servers: expected an array, got \"b:1\"",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(err(json.clone()), want, "for {json}");
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            prop::sample::select(vec![
                "insecure",
                "tls",
                "file_watcher",
                "a:1",
                "unix:///x",
                "600s",
                "%s",
                "xdstp://a/%s",
                "",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop::sample::select(vec![
                "xds_servers",
                "server_uri",
                "channel_creds",
                "type",
                "config",
                "node",
                "metadata",
                "locality",
                "certificate_providers",
                "plugin_name",
                "certificate_file",
                "private_key_file",
                "ca_certificate_file",
                "refresh_interval",
                "authorities",
                "a",
                "server_features",
                "client_listener_resource_name_template",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..5).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_json_never_panics(v in arbitrary_json()) {
            match Bootstrap::from_json_value(&v) {
                Ok(b) => proptest::prop_assert!(!b.xds_servers().is_empty()),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn invalid_json_keeps_serde_error_as_source() {
        let e = Bootstrap::from_json_str("{\"xds_servers\": [").unwrap_err();
        assert!(matches!(e, BootstrapError::Json(_)));
        assert_eq!(e.to_string(), "xDS bootstrap is not valid JSON");
        let source = e.source().expect("has a source");
        assert!(source.to_string().contains("line 1"), "{source}");
    }

    #[test]
    fn unknown_fields_are_recorded_not_rejected() {
        let b = Bootstrap::from_json_value(&json!({
            "xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}],
                             "call_creds": [{"type": "jwt_token_file"}]}],
            "node": {"id": "n", "user_agent_name": "me"},
            "allowed_grpc_services": {},
            "authorities": {"x.com": {"future": 1}},
            "a future key": true
        }))
        .unwrap();
        let mut unknown = b.unknown_fields().to_vec();
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "[\"a future key\"]",
                "allowed_grpc_services",
                "authorities[\"x.com\"].future",
                "node.user_agent_name",
                "xds_servers[0].call_creds",
            ]
        );
    }

    #[test]
    fn empty_default_template_means_default() {
        let b = Bootstrap::from_json_value(&with(
            json!({"client_default_listener_resource_name_template": ""}),
        ))
        .unwrap();
        assert_eq!(b.client_default_listener_resource_name_template(), "%s");
    }

    #[test]
    fn env_prefers_the_file() {
        let dir =
            std::env::temp_dir().join(format!("meshwork-bootstrap-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bootstrap.json");
        std::fs::write(
            &file,
            r#"{"xds_servers": [{"server_uri": "from-file:1", "channel_creds": [{"type": "insecure"}]}]}"#,
        )
        .unwrap();
        let inline = r#"{"xds_servers": [{"server_uri": "inline:1", "channel_creds": [{"type": "insecure"}]}]}"#;
        let env = |file: Option<&Path>, config: Option<&str>| {
            let file = file.map(|p| p.as_os_str().to_owned());
            let config = config.map(OsString::from);
            move |name: &str| match name {
                BOOTSTRAP_FILE_ENV => file.clone(),
                BOOTSTRAP_CONFIG_ENV => config.clone(),
                _ => None,
            }
        };
        let uri = |b: Bootstrap| b.xds_servers()[0].uri().to_owned();

        let both = Bootstrap::from_env_with(env(Some(&file), Some(inline))).unwrap();
        assert_eq!(uri(both), "from-file:1");
        let only_inline = Bootstrap::from_env_with(env(None, Some(inline))).unwrap();
        assert_eq!(uri(only_inline), "inline:1");
        let only_file = Bootstrap::from_env_with(env(Some(&file), None)).unwrap();
        assert_eq!(uri(only_file), "from-file:1");
        // An empty variable counts as unset, as in gRPC.
        let empty_file = Bootstrap::from_env_with(env(Some(Path::new("")), Some(inline))).unwrap();
        assert_eq!(uri(empty_file), "inline:1");

        assert!(matches!(
            Bootstrap::from_env_with(env(None, None)),
            Err(BootstrapError::NotConfigured)
        ));
        assert!(matches!(
            Bootstrap::from_env_with(env(Some(Path::new("")), Some(""))),
            Err(BootstrapError::NotConfigured)
        ));

        // The file wins even when it is broken: no silent fallback to the inline JSON.
        let missing = dir.join("missing.json");
        let e = Bootstrap::from_env_with(env(Some(&missing), Some(inline))).unwrap_err();
        match &e {
            BootstrapError::Read { path, source } => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("missing.json"), "{e}");
        assert!(e.source().is_some());

        let e = Bootstrap::from_env_with(env(None, Some("{"))).unwrap_err();
        assert!(matches!(e, BootstrapError::Json(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn env_config_must_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let e = Bootstrap::from_env_with(|name| {
            (name == BOOTSTRAP_CONFIG_ENV).then(|| OsString::from_vec(vec![b'{', 0xff]))
        })
        .unwrap_err();
        assert!(matches!(
            e,
            BootstrapError::EnvNotUnicode {
                var: BOOTSTRAP_CONFIG_ENV
            }
        ));
    }

    #[test]
    fn builder_matches_json() {
        let built = Bootstrap::builder()
            .server(server("http://127.0.0.1:1234"))
            .node_id("x")
            .build()
            .unwrap();
        assert_eq!(built.node().id, "x");
        assert_eq!(built.xds_servers()[0].uri(), "http://127.0.0.1:1234");

        let json = Bootstrap::from_json_value(&json!({
            "xds_servers": [{"server_uri": "istiod:15012",
                "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": "/ca.pem"}}],
                "server_features": ["xds_v3", "ignore_resource_deletion"]}],
            "node": {"id": "n", "cluster": "c", "locality": {"zone": "z"}, "metadata": {"k": [1, null]}},
            "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
                "certificate_file": "/c", "private_key_file": "/k", "refresh_interval": "900s"}}},
            "server_listener_resource_name_template": "srv/%s",
            "client_default_listener_resource_name_template": "cli/%s",
            "authorities": {"a.com": {"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}]}}
        }))
        .unwrap();
        let built = Bootstrap::builder()
            .server(
                server("istiod:15012")
                    .with_channel_credentials(ChannelCredentials::Tls(TlsCredentials::from_files(
                        FileWatcherConfig::from_ca_certificate_file("/ca.pem"),
                    )))
                    .with_server_feature(SERVER_FEATURE_XDS_V3)
                    .with_server_feature(SERVER_FEATURE_IGNORE_RESOURCE_DELETION),
            )
            .node_id("n")
            .node_cluster("c")
            .locality(Locality::new("", "z", ""))
            .metadata("k", json!([1, null]))
            .certificate_provider(
                "default",
                CertificateProviderConfig::FileWatcher(
                    FileWatcherConfig::from_identity("/c", "/k")
                        .with_refresh_interval(Duration::from_secs(900)),
                ),
            )
            .server_listener_resource_name_template("srv/%s")
            .client_default_listener_resource_name_template("cli/%s")
            .authority("a.com", Authority::new().with_server(server("a:1")))
            .build()
            .unwrap();
        assert_eq!(json, built);
    }

    #[test]
    fn builder_checks_like_the_parser() {
        let e = Bootstrap::builder().node_id("x").build().unwrap_err();
        assert_eq!(e.to_string(), "xds_servers: must not be empty");
        let e = Bootstrap::builder()
            .server(server("a:1"))
            .authority(
                "fed.example.com",
                Authority::new().with_client_listener_resource_name_template("%s"),
            )
            .build()
            .unwrap_err();
        assert_eq!(
            e.field_path(),
            Some("authorities[\"fed.example.com\"].client_listener_resource_name_template")
        );
        let e: BootstrapError = XdsServer::new("nope://x").unwrap_err().into();
        assert!(matches!(e, BootstrapError::ServerUri(_)));
    }

    fn federated() -> Bootstrap {
        Bootstrap::builder()
            .server(server("top:1"))
            .authority("auth.com", Authority::new())
            .authority(
                "custom.com",
                Authority::new()
                    .with_client_listener_resource_name_template(
                        "xdstp://custom.com/envoy.config.listener.v3.Listener/grpc/client/%s?project=1",
                    )
                    .with_server(server("custom-a:1"))
                    .with_server(server("custom-b:1")),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn listener_names_without_authority() {
        let b = federated();
        assert_eq!(
            b.listener_resource_name("xds:///greeter:50051").unwrap(),
            "greeter:50051"
        );
        // Old-style names are used as given, not encoded.
        assert_eq!(b.listener_resource_name("xds:///a%20b").unwrap(), "a b");
        assert_eq!(b.listener_resource_name("xds:greeter").unwrap(), "greeter");
    }

    #[test]
    fn listener_names_with_an_xdstp_default_template() {
        let b = Bootstrap::builder()
            .server(server("top:1"))
            .client_default_listener_resource_name_template(
                "xdstp://auth.com/envoy.config.listener.v3.Listener/%s",
            )
            .authority("auth.com", Authority::new())
            .build()
            .unwrap();
        assert_eq!(
            b.listener_resource_name("xds:///greeter:50051").unwrap(),
            "xdstp://auth.com/envoy.config.listener.v3.Listener/greeter:50051"
        );
        assert_eq!(
            b.listener_resource_name("xds:///my%20svc/v1?x").unwrap(),
            "xdstp://auth.com/envoy.config.listener.v3.Listener/my%20svc/v1"
        );

        // The resulting name's authority must be listed.
        let b = Bootstrap::builder()
            .server(server("top:1"))
            .client_default_listener_resource_name_template("xdstp://nowhere.com/L/%s")
            .build()
            .unwrap();
        match b.listener_resource_name("xds:///greeter").unwrap_err() {
            BootstrapError::UnknownAuthority { authority, name } => {
                assert_eq!(authority, "nowhere.com");
                assert_eq!(name, "xdstp://nowhere.com/L/greeter");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn listener_names_with_an_authority() {
        let b = federated();
        assert_eq!(
            b.listener_resource_name("xds://auth.com/greeter:50051")
                .unwrap(),
            "xdstp://auth.com/envoy.config.listener.v3.Listener/greeter:50051"
        );
        assert_eq!(
            b.listener_resource_name("xds://auth.com/a%20b%5B1%5D")
                .unwrap(),
            "xdstp://auth.com/envoy.config.listener.v3.Listener/a%20b%5B1%5D"
        );
        assert_eq!(
            b.listener_resource_name("xds://custom.com/greeter")
                .unwrap(),
            "xdstp://custom.com/envoy.config.listener.v3.Listener/grpc/client/greeter?project=1"
        );
        let e = b
            .listener_resource_name("xds://stranger.com/greeter")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "authority \"stranger.com\" of \"xds://stranger.com/greeter\" is not in the \
             bootstrap's authorities"
        );
        let e = b.listener_resource_name("dns:///greeter").unwrap_err();
        assert!(
            matches!(e, BootstrapError::Target(TargetParseError::NotXds { .. })),
            "{e:?}"
        );
        let e = b.listener_resource_name("xds:///").unwrap_err();
        assert!(matches!(
            e,
            BootstrapError::Target(TargetParseError::EmptyName { .. })
        ));
    }

    #[test]
    fn servers_per_authority() {
        let b = federated();
        let uris = |s: &[XdsServer]| s.iter().map(|s| s.uri().to_owned()).collect::<Vec<_>>();
        assert_eq!(uris(b.servers_for_authority(None)), ["top:1"]);
        assert_eq!(uris(b.servers_for_authority(Some("auth.com"))), ["top:1"]);
        assert_eq!(
            uris(b.servers_for_authority(Some("custom.com"))),
            ["custom-a:1", "custom-b:1"]
        );
        assert!(b.servers_for_authority(Some("stranger.com")).is_empty());

        assert_eq!(
            uris(b.servers_for_resource_name("greeter:1").unwrap()),
            ["top:1"]
        );
        assert_eq!(
            uris(
                b.servers_for_resource_name("xdstp://custom.com/envoy.config.cluster.v3.Cluster/c")
                    .unwrap()
            ),
            ["custom-a:1", "custom-b:1"]
        );
        assert_eq!(
            uris(b.servers_for_resource_name("xdstp://auth.com/t/x").unwrap()),
            ["top:1"]
        );
        assert!(matches!(
            b.servers_for_resource_name("xdstp://stranger.com/t/x"),
            Err(BootstrapError::UnknownAuthority { .. })
        ));
        assert_eq!(b.authority("custom.com").unwrap().xds_servers().len(), 2);
        assert!(
            b.authority("auth.com")
                .unwrap()
                .client_listener_resource_name_template()
                .is_none()
        );
    }

    #[test]
    fn server_listener_names() {
        let b = Bootstrap::builder()
            .server(server("a:1"))
            .server_listener_resource_name_template("xds.istio.io/grpc/lds/inbound/%s")
            .build()
            .unwrap();
        assert_eq!(
            b.server_listener_resource_name("0.0.0.0:7070".parse().unwrap())
                .unwrap(),
            "xds.istio.io/grpc/lds/inbound/0.0.0.0:7070"
        );
        assert_eq!(
            b.server_listener_resource_name("[::]:7070".parse().unwrap())
                .unwrap(),
            "xds.istio.io/grpc/lds/inbound/[::]:7070"
        );

        let b = Bootstrap::builder()
            .server(server("a:1"))
            .server_listener_resource_name_template(
                "xdstp://auth.com/envoy.config.listener.v3.Listener/grpc/server/%s",
            )
            .authority("auth.com", Authority::new())
            .build()
            .unwrap();
        assert_eq!(
            b.server_listener_resource_name("[::]:8080".parse().unwrap())
                .unwrap(),
            "xdstp://auth.com/envoy.config.listener.v3.Listener/grpc/server/%5B::%5D:8080"
        );

        let b = Bootstrap::builder().server(server("a:1")).build().unwrap();
        assert!(matches!(
            b.server_listener_resource_name("0.0.0.0:1".parse().unwrap()),
            Err(BootstrapError::NoServerListenerTemplate)
        ));
    }
}
