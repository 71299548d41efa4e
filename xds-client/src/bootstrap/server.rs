//! One entry of `xds_servers`: where the control plane is, how to secure the channel, and
//! what the server promises (gRFC A27, A47, A65, A71, A81, A88).

use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::certs::{FileWatcherConfig, parse_cert_files};
use super::error::{BootstrapError, FieldErrorKind, ServerUriError};
use super::json::{
    as_array, as_object, child, get, index, opt_str, opt_str_list, record_unknown, req_str,
};

/// Server feature (gRFC A53): keep a resource the server deleted, instead of reporting it
/// gone.
pub const SERVER_FEATURE_IGNORE_RESOURCE_DELETION: &str = "ignore_resource_deletion";
/// Server feature: the server speaks xDS v3 (the only version meshwork speaks).
pub const SERVER_FEATURE_XDS_V3: &str = "xds_v3";
/// Server feature (gRFC A81): the server is trusted with security-relevant configuration.
pub const SERVER_FEATURE_TRUSTED_XDS_SERVER: &str = "trusted_xds_server";
/// Server feature (gRFC A88): a data error on a cached resource drops the cached resource.
pub const SERVER_FEATURE_FAIL_ON_DATA_ERRORS: &str = "fail_on_data_errors";
/// Server feature (gRFC A88): a resource-does-not-exist timer firing is a transient failure,
/// not proof of absence.
pub const SERVER_FEATURE_RESOURCE_TIMER_IS_TRANSIENT_FAILURE: &str =
    "resource_timer_is_transient_failure";

const KNOWN_SERVER_FEATURES: &[&str] = &[
    SERVER_FEATURE_IGNORE_RESOURCE_DELETION,
    SERVER_FEATURE_XDS_V3,
    SERVER_FEATURE_TRUSTED_XDS_SERVER,
    SERVER_FEATURE_FAIL_ON_DATA_ERRORS,
    SERVER_FEATURE_RESOURCE_TIMER_IS_TRANSIENT_FAILURE,
];

/// Which ADS protocol variant to speak to a server: the `api_type` of an `xds_servers`
/// entry, named as Envoy names it (`envoy.config.core.v3.ApiConfigSource.ApiType`). gRPC
/// ignores the field (its server config decoding skips unknown JSON fields), so a
/// bootstrap shared with gRPC clients may carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiType {
    /// `"GRPC"`: state-of-the-world ADS (`StreamAggregatedResources`), the default and
    /// what gRPC speaks.
    #[default]
    Grpc,
    /// `"DELTA_GRPC"`: incremental ADS (`DeltaAggregatedResources`): a response carries only
    /// what changed and names what was removed, so a push to a big mesh costs the changed
    /// resources, not every resource of the type.
    DeltaGrpc,
}

impl ApiType {
    /// The name the bootstrap uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiType::Grpc => "GRPC",
            ApiType::DeltaGrpc => "DELTA_GRPC",
        }
    }
}

impl fmt::Display for ApiType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An xDS management server: one entry of `xds_servers` (top-level or per authority).
///
/// Equality and hashing cover the URI, the chosen credentials, all server features and the
/// API type, so a server listed under several authorities can share one ADS stream (gRFC
/// A47).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XdsServer {
    uri: String,
    address: ServerAddress,
    channel_credentials: ChannelCredentials,
    server_features: Vec<String>,
    api_type: ApiType,
}

impl XdsServer {
    /// A server at `uri`, dialed without TLS ([`ChannelCredentials::Insecure`]) and with no
    /// server features.
    ///
    /// `uri` is one of `host:port`, `dns:///host:port`, `unix:///absolute/path`,
    /// `unix:path` or `http://host:port`. Without a port, `http://` means 80 and the others
    /// 443, as in gRPC.
    ///
    /// ```
    /// use meshwork_xds::bootstrap::{ServerAddress, XdsServer};
    ///
    /// let server = XdsServer::new("dns:///istiod.istio-system.svc:15010")?;
    /// assert_eq!(
    ///     server.address(),
    ///     &ServerAddress::Tcp { host: "istiod.istio-system.svc".into(), port: 15010 }
    /// );
    /// assert!(XdsServer::new("ftp://example.com").is_err());
    /// # Ok::<(), meshwork_xds::bootstrap::ServerUriError>(())
    /// ```
    pub fn new(uri: impl Into<String>) -> Result<Self, ServerUriError> {
        let uri = uri.into();
        let address = parse_address(&uri)?;
        Ok(Self {
            uri,
            address,
            channel_credentials: ChannelCredentials::Insecure,
            server_features: Vec::new(),
            api_type: ApiType::Grpc,
        })
    }

    /// Sets the channel credentials.
    pub fn with_channel_credentials(mut self, credentials: ChannelCredentials) -> Self {
        self.channel_credentials = credentials;
        self
    }

    /// Adds a server feature, e.g. [`SERVER_FEATURE_IGNORE_RESOURCE_DELETION`].
    pub fn with_server_feature(mut self, feature: impl Into<String>) -> Self {
        self.server_features.push(feature.into());
        self
    }

    /// Sets the ADS protocol variant (default [`ApiType::Grpc`], state of the world).
    pub fn with_api_type(mut self, api_type: ApiType) -> Self {
        self.api_type = api_type;
        self
    }

    /// The ADS protocol variant to speak to this server: the entry's `api_type`,
    /// [`ApiType::Grpc`] (state of the world) unless it says `"DELTA_GRPC"`.
    pub fn api_type(&self) -> ApiType {
        self.api_type
    }

    /// The `server_uri` exactly as configured.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Where to connect.
    pub fn address(&self) -> &ServerAddress {
        &self.address
    }

    /// The channel credentials: the first entry of `channel_creds` whose type meshwork
    /// supports.
    pub fn channel_credentials(&self) -> &ChannelCredentials {
        &self.channel_credentials
    }

    /// All server features as configured, known or not.
    pub fn server_features(&self) -> &[String] {
        &self.server_features
    }

    /// Whether the server lists `feature`.
    pub fn has_server_feature(&self, feature: &str) -> bool {
        self.server_features.iter().any(|f| f == feature)
    }

    /// The server features meshwork does not interpret.
    pub fn unknown_server_features(&self) -> impl Iterator<Item = &str> {
        self.server_features
            .iter()
            .map(String::as_str)
            .filter(|f| !KNOWN_SERVER_FEATURES.contains(f))
    }

    /// `ignore_resource_deletion` (gRFC A53).
    pub fn ignore_resource_deletion(&self) -> bool {
        self.has_server_feature(SERVER_FEATURE_IGNORE_RESOURCE_DELETION)
    }

    /// `xds_v3`.
    pub fn xds_v3(&self) -> bool {
        self.has_server_feature(SERVER_FEATURE_XDS_V3)
    }

    /// `trusted_xds_server` (gRFC A81).
    pub fn trusted_xds_server(&self) -> bool {
        self.has_server_feature(SERVER_FEATURE_TRUSTED_XDS_SERVER)
    }

    /// `fail_on_data_errors` (gRFC A88): the client drops a cached resource whose update it
    /// rejects (see `XdsClientBuilder::fail_on_data_errors`; the primary server's feature
    /// applies).
    pub fn fail_on_data_errors(&self) -> bool {
        self.has_server_feature(SERVER_FEATURE_FAIL_ON_DATA_ERRORS)
    }

    /// `resource_timer_is_transient_failure` (gRFC A88). Parsed, not yet acted on: the
    /// does-not-exist timer still reports absence after 15 s.
    pub fn resource_timer_is_transient_failure(&self) -> bool {
        self.has_server_feature(SERVER_FEATURE_RESOURCE_TIMER_IS_TRANSIENT_FAILURE)
    }
}

impl fmt::Display for XdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Where an [`XdsServer`] listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerAddress {
    /// A DNS name or IP address and a port, over TCP. IPv6 hosts are stored without
    /// brackets.
    Tcp {
        /// The DNS name or IP literal.
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix domain socket (Istio's agent serves `unix:///etc/istio/proxy/XDS`).
    Unix {
        /// The socket's path; relative paths are relative to the working directory.
        path: PathBuf,
    },
}

impl ServerAddress {
    /// The HTTP/2 `:authority` to send: `host:port` (`[v6]:port` for IPv6), or `localhost`
    /// for a Unix socket, as gRPC does.
    pub fn authority(&self) -> String {
        match self {
            Self::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Self::Tcp { host, port } => format!("{host}:{port}"),
            Self::Unix { .. } => "localhost".to_owned(),
        }
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { .. } => f.write_str(&self.authority()),
            Self::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How the channel to an xDS server is secured: the first supported entry of
/// `channel_creds`. (`google_default` is not supported; a server listing only it is an
/// error.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ChannelCredentials {
    /// `insecure`: plaintext. Also what Istio's agent uses over its local Unix socket.
    #[default]
    Insecure,
    /// `tls` (gRFC A65): TLS, optionally with a client certificate (mTLS).
    Tls(TlsCredentials),
}

impl ChannelCredentials {
    /// The `type` this came from: `"insecure"` or `"tls"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Insecure => "insecure",
            Self::Tls(_) => "tls",
        }
    }
}

/// The configuration of `tls` channel credentials (gRFC A65).
///
/// The files are the same as the `file_watcher` certificate provider's. With no file at all,
/// the server is verified against the platform's roots and no client certificate is sent;
/// without `ca_certificate_file` (and without a SPIFFE bundle map) the platform's roots are
/// used too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsCredentials {
    files: Option<FileWatcherConfig>,
}

impl TlsCredentials {
    /// TLS with the platform's roots and no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// TLS with certificate files, watched and re-read like the `file_watcher` provider's.
    pub fn from_files(files: FileWatcherConfig) -> Self {
        Self { files: Some(files) }
    }

    /// The watched files, if any.
    pub fn files(&self) -> Option<&FileWatcherConfig> {
        self.files.as_ref()
    }

    /// The root certificates file, if set.
    pub fn ca_certificate_file(&self) -> Option<&Path> {
        self.files.as_ref()?.ca_certificate_file()
    }

    /// The client certificate chain file, if set (then the key is set too).
    pub fn certificate_file(&self) -> Option<&Path> {
        self.files.as_ref()?.certificate_file()
    }

    /// The client private key file, if set (then the certificate is set too).
    pub fn private_key_file(&self) -> Option<&Path> {
        self.files.as_ref()?.private_key_file()
    }
}

/// Strips an ASCII prefix, ignoring case (URI schemes are case-insensitive).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn parse_address(uri: &str) -> Result<ServerAddress, ServerUriError> {
    if uri.is_empty() {
        return Err(ServerUriError::Empty);
    }
    if let Some(rest) = strip_prefix_ci(uri, "unix:") {
        return parse_unix(uri, rest);
    }
    if let Some(rest) = strip_prefix_ci(uri, "dns:") {
        let host_port = match rest.strip_prefix("//") {
            Some(after) => {
                let (authority, host_port) = after.split_once('/').unwrap_or((after, ""));
                if !authority.is_empty() {
                    return Err(ServerUriError::DnsAuthority {
                        uri: uri.to_owned(),
                        authority: authority.to_owned(),
                    });
                }
                host_port
            }
            None => rest,
        };
        return parse_host_port(uri, host_port, 443);
    }
    if let Some(rest) = strip_prefix_ci(uri, "http://") {
        let host_port = match rest.split_once('/') {
            Some((host_port, "")) => host_port,
            Some((_, path)) => {
                return Err(ServerUriError::UnexpectedPath {
                    uri: uri.to_owned(),
                    path: format!("/{path}"),
                });
            }
            None => rest,
        };
        return parse_host_port(uri, host_port, 80);
    }
    if strip_prefix_ci(uri, "https://").is_some() {
        return Err(ServerUriError::Https {
            uri: uri.to_owned(),
        });
    }
    // `localhost:1234` also looks like scheme `localhost`; an all-digit rest is a port (and
    // an empty one a missing port, reported as such below).
    if let Some((scheme, rest)) = uri.split_once(':') {
        let is_port = rest.bytes().all(|b| b.is_ascii_digit());
        if is_scheme(scheme) && !is_port {
            return Err(ServerUriError::UnsupportedScheme {
                uri: uri.to_owned(),
                scheme: scheme.to_owned(),
            });
        }
    }
    parse_host_port(uri, uri, 443)
}

fn parse_unix(uri: &str, rest: &str) -> Result<ServerAddress, ServerUriError> {
    let path = match rest.strip_prefix("//") {
        Some("") => "",
        Some(after) if !after.starts_with('/') => {
            return Err(ServerUriError::UnixAuthority {
                uri: uri.to_owned(),
                authority: after.split('/').next().unwrap_or(after).to_owned(),
            });
        }
        Some(after) => after,
        None => rest,
    };
    if path.is_empty() {
        return Err(ServerUriError::EmptyUnixPath {
            uri: uri.to_owned(),
        });
    }
    Ok(ServerAddress::Unix {
        path: PathBuf::from(path),
    })
}

fn parse_host_port(uri: &str, s: &str, default_port: u16) -> Result<ServerAddress, ServerUriError> {
    let invalid_host = |host: &str| ServerUriError::InvalidHost {
        uri: uri.to_owned(),
        host: host.to_owned(),
    };
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']').ok_or_else(|| invalid_host(s))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(invalid_host(host));
        }
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or_else(|| invalid_host(s))?),
        };
        (host, port)
    } else {
        match s.split_once(':') {
            None => (s, None),
            // A second colon: an IPv6 literal without brackets, or garbage.
            Some((_, port)) if port.contains(':') => return Err(invalid_host(s)),
            Some((host, port)) => (host, Some(port)),
        }
    };
    if host.is_empty() {
        return Err(ServerUriError::EmptyHost {
            uri: uri.to_owned(),
        });
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/?#@[]%\\".contains(c))
    {
        return Err(invalid_host(host));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| ServerUriError::InvalidPort {
                uri: uri.to_owned(),
                port: p.to_owned(),
            })?,
    };
    Ok(ServerAddress::Tcp {
        host: host.to_owned(),
        port,
    })
}

/// Parses one entry of `xds_servers` at `path`.
pub(super) fn parse_server(
    value: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<XdsServer, BootstrapError> {
    let map = as_object(value, path)?;
    record_unknown(
        map,
        &["server_uri", "channel_creds", "server_features", "api_type"],
        path,
        unknown,
    );

    let uri_path = child(path, "server_uri");
    let uri = req_str(map, "server_uri", path)?;
    if uri.is_empty() {
        return Err(BootstrapError::field(uri_path, FieldErrorKind::Empty));
    }
    let address = parse_address(uri)
        .map_err(|e| BootstrapError::field(&uri_path, FieldErrorKind::ServerUri(e)))?;

    let creds_path = child(path, "channel_creds");
    let creds = get(map, "channel_creds")
        .ok_or_else(|| BootstrapError::field(&creds_path, FieldErrorKind::Missing))?;
    let creds = as_array(creds, &creds_path)?;
    if creds.is_empty() {
        return Err(BootstrapError::field(creds_path, FieldErrorKind::Empty));
    }
    let mut chosen = None;
    let mut types = Vec::with_capacity(creds.len());
    for (i, entry) in creds.iter().enumerate() {
        let entry_path = index(&creds_path, i);
        let entry = as_object(entry, &entry_path)?;
        record_unknown(entry, &["type", "config"], &entry_path, unknown);
        let ty = req_str(entry, "type", &entry_path)?;
        types.push(ty.to_owned());
        if chosen.is_some() {
            continue;
        }
        chosen = match ty {
            "insecure" => Some(ChannelCredentials::Insecure),
            "tls" => Some(ChannelCredentials::Tls(parse_tls(
                get(entry, "config"),
                &child(&entry_path, "config"),
                unknown,
            )?)),
            _ => None,
        };
    }
    let channel_credentials = chosen.ok_or_else(|| {
        BootstrapError::field(
            &creds_path,
            FieldErrorKind::NoSupportedChannelCreds { types },
        )
    })?;

    let server_features = opt_str_list(map, "server_features", path)?;
    let api_type = match opt_str(map, "api_type", path)? {
        None | Some("GRPC") => ApiType::Grpc,
        Some("DELTA_GRPC") => ApiType::DeltaGrpc,
        Some(other) => {
            return Err(BootstrapError::field(
                child(path, "api_type"),
                FieldErrorKind::UnsupportedApiType {
                    value: other.to_owned(),
                },
            ));
        }
    };
    Ok(XdsServer {
        uri: uri.to_owned(),
        address,
        channel_credentials,
        server_features,
        api_type,
    })
}

fn parse_tls(
    config: Option<&Value>,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<TlsCredentials, BootstrapError> {
    let Some(config) = config else {
        return Ok(TlsCredentials::new());
    };
    let map = as_object(config, path)?;
    let files = parse_cert_files(map, path, false, unknown)?;
    Ok(TlsCredentials { files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn tcp(host: &str, port: u16) -> ServerAddress {
        ServerAddress::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    fn unix(path: &str) -> ServerAddress {
        ServerAddress::Unix {
            path: PathBuf::from(path),
        }
    }

    #[test]
    fn dialable_uris() {
        let cases = [
            ("127.0.0.1:18000", tcp("127.0.0.1", 18000)),
            ("localhost:1234", tcp("localhost", 1234)),
            (
                "istiod.istio-system.svc:15010",
                tcp("istiod.istio-system.svc", 15010),
            ),
            (
                "xds-server.authority.com",
                tcp("xds-server.authority.com", 443),
            ),
            ("[::1]:9000", tcp("::1", 9000)),
            ("[::1]", tcp("::1", 443)),
            ("dns:///istiod:15012", tcp("istiod", 15012)),
            ("dns:istiod:15012", tcp("istiod", 15012)),
            ("DNS:///istiod", tcp("istiod", 443)),
            ("http://127.0.0.1:1234", tcp("127.0.0.1", 1234)),
            ("http://127.0.0.1:1234/", tcp("127.0.0.1", 1234)),
            ("http://control-plane", tcp("control-plane", 80)),
            ("http://[2001:db8::1]:8080", tcp("2001:db8::1", 8080)),
            ("unix:///etc/istio/proxy/XDS", unix("/etc/istio/proxy/XDS")),
            ("unix:/var/run/xds.sock", unix("/var/run/xds.sock")),
            ("unix:relative/xds.sock", unix("relative/xds.sock")),
        ];
        for (uri, want) in cases {
            let server = XdsServer::new(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(server.address(), &want, "{uri}");
            assert_eq!(server.uri(), uri);
            assert_eq!(server.to_string(), uri);
        }
    }

    #[test]
    fn undialable_uris() {
        let bad = |uri: &str| XdsServer::new(uri).unwrap_err();
        assert_eq!(bad(""), ServerUriError::Empty);
        assert!(
            matches!(bad("ftp://x:1"), ServerUriError::UnsupportedScheme { scheme, .. } if scheme == "ftp")
        );
        assert!(matches!(
            bad("ipv4:127.0.0.1:80"),
            ServerUriError::UnsupportedScheme { .. }
        ));
        assert!(matches!(
            bad("xds:///foo"),
            ServerUriError::UnsupportedScheme { .. }
        ));
        assert!(matches!(
            bad("https://istiod:15012"),
            ServerUriError::Https { .. }
        ));
        assert!(matches!(bad(":1234"), ServerUriError::EmptyHost { .. }));
        assert!(matches!(bad("dns:///"), ServerUriError::EmptyHost { .. }));
        assert!(matches!(bad("http://"), ServerUriError::EmptyHost { .. }));
        assert!(matches!(bad("::1"), ServerUriError::InvalidHost { .. }));
        assert!(matches!(bad("[::1"), ServerUriError::InvalidHost { .. }));
        assert!(matches!(
            bad("[nothex]:1"),
            ServerUriError::InvalidHost { .. }
        ));
        assert!(matches!(bad("[::1]x"), ServerUriError::InvalidHost { .. }));
        assert!(matches!(bad("a b:1"), ServerUriError::InvalidHost { .. }));
        assert!(matches!(
            bad("user@host:1"),
            ServerUriError::InvalidHost { .. }
        ));
        assert!(matches!(bad("host:"), ServerUriError::InvalidPort { .. }));
        assert!(matches!(bad("host:0"), ServerUriError::InvalidPort { .. }));
        assert!(matches!(
            bad("host:65536"),
            ServerUriError::InvalidPort { .. }
        ));
        assert!(matches!(
            bad("host:+80"),
            ServerUriError::UnsupportedScheme { .. }
        ));
        assert!(matches!(
            bad("http://host:+80"),
            ServerUriError::InvalidPort { .. }
        ));
        assert!(
            matches!(bad("http://h:1/path"), ServerUriError::UnexpectedPath { path, .. } if path == "/path")
        );
        assert!(
            matches!(bad("dns://8.8.8.8/istiod:15012"), ServerUriError::DnsAuthority { authority, .. } if authority == "8.8.8.8")
        );
        assert!(matches!(
            bad("dns://istiod:15012"),
            ServerUriError::DnsAuthority { .. }
        ));
        assert!(matches!(bad("unix:"), ServerUriError::EmptyUnixPath { .. }));
        assert!(matches!(
            bad("unix://"),
            ServerUriError::EmptyUnixPath { .. }
        ));
        assert!(
            matches!(bad("unix://host/path"), ServerUriError::UnixAuthority { authority, .. } if authority == "host")
        );
    }

    proptest::proptest! {
        #[test]
        fn uri_parsing_never_panics(s in "(unix:|dns:|http://|https://)?(//)?[a-z0-9:/\\[\\]. @%]{0,16}") {
            if let Ok(server) = XdsServer::new(s.clone()) {
                match server.address() {
                    ServerAddress::Tcp { host, port } => {
                        proptest::prop_assert!(!host.is_empty());
                        proptest::prop_assert!(*port != 0);
                    }
                    ServerAddress::Unix { path } => {
                        proptest::prop_assert!(!path.as_os_str().is_empty())
                    }
                }
            }
        }
    }

    #[test]
    fn uri_errors_name_the_uri() {
        let e = XdsServer::new("ftp://x").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid server URI \"ftp://x\": unsupported scheme \"ftp\""),
            "{e}"
        );
    }

    #[test]
    fn authority_for_http2() {
        assert_eq!(tcp("a", 1).authority(), "a:1");
        assert_eq!(tcp("::1", 1).authority(), "[::1]:1");
        assert_eq!(tcp("::1", 1).to_string(), "[::1]:1");
        assert_eq!(unix("/x").authority(), "localhost");
        assert_eq!(unix("/x").to_string(), "unix:/x");
    }

    fn parse(v: Value) -> Result<(XdsServer, Vec<String>), BootstrapError> {
        let mut unknown = Vec::new();
        let s = parse_server(&v, "xds_servers[1]", &mut unknown)?;
        Ok((s, unknown))
    }

    #[test]
    fn first_supported_channel_creds_win() {
        let (s, _) = parse(json!({
            "server_uri": "istiod:15012",
            "channel_creds": [{"type": "google_default"}, {"type": "tls", "config": {
                "ca_certificate_file": "/ca.pem",
                "certificate_file": "/c.pem", "private_key_file": "/k.pem",
                "refresh_interval": "30s"}}, {"type": "insecure"}]
        }))
        .unwrap();
        let ChannelCredentials::Tls(tls) = s.channel_credentials() else {
            panic!("want tls, got {:?}", s.channel_credentials());
        };
        assert_eq!(s.channel_credentials().type_name(), "tls");
        assert_eq!(tls.ca_certificate_file(), Some(Path::new("/ca.pem")));
        assert_eq!(tls.certificate_file(), Some(Path::new("/c.pem")));
        assert_eq!(tls.private_key_file(), Some(Path::new("/k.pem")));
        assert_eq!(
            tls.files().unwrap().refresh_interval(),
            Duration::from_secs(30)
        );

        let (s, _) = parse(json!({
            "server_uri": "istiod:15010",
            "channel_creds": [{"type": "insecure", "config": {"ignored": 1}}, {"type": "tls"}]
        }))
        .unwrap();
        assert_eq!(s.channel_credentials(), &ChannelCredentials::Insecure);

        // A bad config on an entry after the chosen one is never looked at, as in gRPC.
        let (s, _) = parse(json!({
            "server_uri": "istiod:15010",
            "channel_creds": [{"type": "insecure"}, {"type": "tls", "config": 5}]
        }))
        .unwrap();
        assert_eq!(s.channel_credentials().type_name(), "insecure");
    }

    #[test]
    fn tls_without_config_uses_platform_roots() {
        let (s, _) =
            parse(json!({"server_uri": "a:1", "channel_creds": [{"type": "tls"}]})).unwrap();
        assert_eq!(
            s.channel_credentials(),
            &ChannelCredentials::Tls(TlsCredentials::new())
        );
        let (s, _) =
            parse(json!({"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {}}]}))
                .unwrap();
        let ChannelCredentials::Tls(tls) = s.channel_credentials() else {
            panic!()
        };
        assert!(tls.files().is_none());
        assert_eq!(tls.ca_certificate_file(), None);
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let e = parse(
            json!({"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {
            "certificate_file": "/c.pem"}}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "xds_servers[1].channel_creds[0].config.private_key_file: required because \
             certificate_file is set (set both or neither)"
        );
        let e = parse(
            json!({"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {
            "certificate_file": 42}}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "xds_servers[1].channel_creds[0].config.certificate_file: expected a string, got 42"
        );
        let e = parse(
            json!({"server_uri": "a:1", "channel_creds": [{"type": "google_default"},
            {"type": "tls", "config": []}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "xds_servers[1].channel_creds[1].config: expected an object, got an array"
        );
    }

    #[test]
    fn malformed_servers_name_the_field() {
        let cases = [
            (json!("x"), "xds_servers[1]: expected an object, got \"x\""),
            (
                json!({"channel_creds": [{"type": "insecure"}]}),
                "xds_servers[1].server_uri: required field is missing",
            ),
            (
                json!({"server_uri": null, "channel_creds": [{"type": "insecure"}]}),
                "xds_servers[1].server_uri: required field is missing",
            ),
            (
                json!({"server_uri": "", "channel_creds": [{"type": "insecure"}]}),
                "xds_servers[1].server_uri: must not be empty",
            ),
            (
                json!({"server_uri": 8080, "channel_creds": [{"type": "insecure"}]}),
                "xds_servers[1].server_uri: expected a string, got 8080",
            ),
            (
                json!({"server_uri": "a:1"}),
                "xds_servers[1].channel_creds: required field is missing",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": []}),
                "xds_servers[1].channel_creds: must not be empty",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": {"type": "insecure"}}),
                "xds_servers[1].channel_creds: expected an array, got an object",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": ["insecure"]}),
                "xds_servers[1].channel_creds[0]: expected an object, got \"insecure\"",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": [{"config": {}}]}),
                "xds_servers[1].channel_creds[0].type: required field is missing",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": [{"type": "insecure"}, {"type": 3}]}),
                "xds_servers[1].channel_creds[1].type: expected a string, got 3",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": [{"type": "google_default"}, {"type": "alts"}]}),
                "xds_servers[1].channel_creds: no supported channel credentials type among \
              [\"google_default\", \"alts\"] (meshwork supports \"insecure\" and \"tls\")",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": [{"type": "insecure"}], "server_features": "xds_v3"}),
                "xds_servers[1].server_features: expected an array, got \"xds_v3\"",
            ),
            (
                json!({"server_uri": "a:1", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3", 1]}),
                "xds_servers[1].server_features[1]: expected a string, got 1",
            ),
        ];
        for (json, want) in cases {
            let e = parse(json.clone()).unwrap_err();
            assert_eq!(e.to_string(), want, "for {json}");
        }
        let e = parse(json!({"server_uri": "ftp://a", "channel_creds": [{"type": "insecure"}]}))
            .unwrap_err();
        assert_eq!(e.field_path(), Some("xds_servers[1].server_uri"));
        assert!(matches!(
            e.field_error(),
            Some(FieldErrorKind::ServerUri(
                ServerUriError::UnsupportedScheme { .. }
            ))
        ));
        assert!(
            e.to_string()
                .starts_with("xds_servers[1].server_uri: invalid server URI \"ftp://a\""),
            "{e}"
        );
    }

    /// `api_type` picks delta ADS per server, SotW (`GRPC`) by default; it is a known field
    /// (not reported as unknown), and any other value is an error naming its path.
    #[test]
    fn api_type_selects_delta_per_server() {
        let insecure = json!([{"type": "insecure"}]);
        let (s, unknown) = parse(
            json!({"server_uri": "a:1", "channel_creds": insecure, "api_type": "DELTA_GRPC"}),
        )
        .unwrap();
        assert_eq!(s.api_type(), ApiType::DeltaGrpc);
        assert!(unknown.is_empty(), "{unknown:?}");
        let (s, _) =
            parse(json!({"server_uri": "a:1", "channel_creds": insecure, "api_type": "GRPC"}))
                .unwrap();
        assert_eq!(s.api_type(), ApiType::Grpc);
        let (s, _) = parse(json!({"server_uri": "a:1", "channel_creds": insecure})).unwrap();
        assert_eq!(s.api_type(), ApiType::Grpc);
        assert_ne!(
            s.clone().with_api_type(ApiType::DeltaGrpc),
            s,
            "a different server"
        );
        for (value, want) in [
            (
                json!("REST"),
                "xds_servers[1].api_type: unsupported api_type \"REST\" \
                 (meshwork speaks \"GRPC\" and \"DELTA_GRPC\")",
            ),
            (
                json!(2),
                "xds_servers[1].api_type: expected a string, got 2",
            ),
        ] {
            let e =
                parse(json!({"server_uri": "a:1", "channel_creds": insecure, "api_type": value}))
                    .unwrap_err();
            assert_eq!(e.to_string(), want);
            assert_eq!(e.field_path(), Some("xds_servers[1].api_type"));
        }
    }

    #[test]
    fn server_features() {
        let (s, unknown) = parse(json!({
            "server_uri": "a:1",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3", "ignore_resource_deletion", "trusted_xds_server",
                                "fail_on_data_errors", "resource_timer_is_transient_failure",
                                "something_new"],
            "call_creds": [{"type": "jwt_token_file"}]
        }))
        .unwrap();
        assert!(s.xds_v3());
        assert!(s.ignore_resource_deletion());
        assert!(s.trusted_xds_server());
        assert!(s.fail_on_data_errors());
        assert!(s.resource_timer_is_transient_failure());
        assert!(s.has_server_feature("something_new"));
        assert_eq!(
            s.unknown_server_features().collect::<Vec<_>>(),
            ["something_new"]
        );
        assert_eq!(s.server_features().len(), 6);
        assert_eq!(unknown, ["xds_servers[1].call_creds"]);

        let (s, _) =
            parse(json!({"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]})).unwrap();
        assert!(!s.xds_v3() && !s.ignore_resource_deletion() && !s.trusted_xds_server());
        assert!(!s.fail_on_data_errors() && !s.resource_timer_is_transient_failure());
        assert!(s.server_features().is_empty());
    }

    #[test]
    fn builder_and_parser_agree() {
        let (parsed, _) = parse(json!({
            "server_uri": "istiod:15012",
            "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": "/ca"}}],
            "server_features": ["xds_v3"]
        }))
        .unwrap();
        let built = XdsServer::new("istiod:15012")
            .unwrap()
            .with_channel_credentials(ChannelCredentials::Tls(TlsCredentials::from_files(
                FileWatcherConfig::from_ca_certificate_file("/ca"),
            )))
            .with_server_feature(SERVER_FEATURE_XDS_V3);
        assert_eq!(parsed, built);
        let plain = XdsServer::new("istiod:15012").unwrap();
        assert_ne!(parsed, plain);
        assert_eq!(plain.channel_credentials(), &ChannelCredentials::Insecure);
    }
}
