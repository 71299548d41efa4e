//! The bootstrap's error types.

use std::io;
use std::path::PathBuf;

use super::target::TargetParseError;

/// Why a bootstrap could not be loaded, or a name could not be resolved with it.
///
/// A malformed field is [`BootstrapError::Field`], whose message starts with the JSON path of
/// the field, e.g. `xds_servers[1].channel_creds[0].config.certificate_file: expected a
/// string, got 42`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// Neither `GRPC_XDS_BOOTSTRAP` nor `GRPC_XDS_BOOTSTRAP_CONFIG` is set (or both are empty).
    #[error(
        "no xDS bootstrap configured: set GRPC_XDS_BOOTSTRAP (a file path) or \
         GRPC_XDS_BOOTSTRAP_CONFIG (inline JSON)"
    )]
    NotConfigured,
    /// An environment variable that must hold text is not valid UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable's name.
        var: &'static str,
    },
    /// The bootstrap file could not be read.
    #[error("cannot read xDS bootstrap file {}", path.display())]
    Read {
        /// The file's path, as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The bootstrap is not valid JSON.
    #[error("xDS bootstrap is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// A field of the bootstrap is malformed or missing.
    #[error("{path}: {kind}")]
    Field {
        /// The JSON path of the field, e.g. `xds_servers[0].server_uri`; `(root)` for the
        /// document itself.
        path: String,
        /// What is wrong with it.
        kind: FieldErrorKind,
    },
    /// A server URI given in code (not in JSON) is invalid.
    #[error(transparent)]
    ServerUri(#[from] ServerUriError),
    /// An `xds:` target could not be parsed.
    #[error(transparent)]
    Target(#[from] TargetParseError),
    /// A target or resource name uses an authority the bootstrap does not list (gRFC A47).
    #[error("authority {authority:?} of {name:?} is not in the bootstrap's authorities")]
    UnknownAuthority {
        /// The authority.
        authority: String,
        /// The target or resource name that carried it.
        name: String,
    },
    /// A server-side Listener name was asked for, but the bootstrap has no
    /// `server_listener_resource_name_template` (gRFC A36: there is no default).
    #[error(
        "server_listener_resource_name_template is not set in the xDS bootstrap; \
         xDS-enabled servers need it"
    )]
    NoServerListenerTemplate,
}

impl BootstrapError {
    /// The JSON path of the malformed field, for [`BootstrapError::Field`].
    pub fn field_path(&self) -> Option<&str> {
        match self {
            Self::Field { path, .. } => Some(path),
            _ => None,
        }
    }

    /// What is wrong with the field, for [`BootstrapError::Field`].
    pub fn field_error(&self) -> Option<&FieldErrorKind> {
        match self {
            Self::Field { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub(super) fn field(path: impl Into<String>, kind: FieldErrorKind) -> Self {
        Self::Field {
            path: path.into(),
            kind,
        }
    }
}

/// What is wrong with one field of the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// A required field is absent (or `null`).
    #[error("required field is missing")]
    Missing,
    /// The field has the wrong JSON type.
    #[error("expected {expected}, got {got}")]
    WrongType {
        /// What was expected, e.g. `a string`.
        expected: &'static str,
        /// A short rendering of what was found, e.g. `42`, `null` or `an object`.
        got: String,
    },
    /// A string or list that must not be empty is empty.
    #[error("must not be empty")]
    Empty,
    /// The server URI cannot be dialed.
    #[error("{0}")]
    ServerUri(ServerUriError),
    /// No entry of `channel_creds` has a type meshwork supports.
    #[error(
        "no supported channel credentials type among {types:?} \
         (meshwork supports \"insecure\" and \"tls\")"
    )]
    NoSupportedChannelCreds {
        /// The types that were listed.
        types: Vec<String>,
    },
    /// A duration is not a JSON duration string such as `"600s"` or `"1.5s"`.
    #[error(
        "invalid duration {value:?}: expected a JSON duration string such as \"600s\" or \"1.5s\""
    )]
    InvalidDuration {
        /// The value found.
        value: String,
    },
    /// A duration that must be positive is zero or negative.
    #[error("must be a positive duration, got {value:?}")]
    NonPositiveDuration {
        /// The value found.
        value: String,
    },
    /// One of a pair of fields that go together is set without the other.
    #[error("required because {present} is set (set both or neither)")]
    Unpaired {
        /// The field of the pair that is set.
        present: &'static str,
    },
    /// An `xds_servers` entry's `api_type` is neither `"GRPC"` nor `"DELTA_GRPC"`.
    #[error("unsupported api_type {value:?} (meshwork speaks \"GRPC\" and \"DELTA_GRPC\")")]
    UnsupportedApiType {
        /// The value found.
        value: String,
    },
    /// A `file_watcher` configuration names no file to watch.
    #[error(
        "nothing to watch: set certificate_file and private_key_file, ca_certificate_file, \
         or spiffe_trust_bundle_map_file"
    )]
    NothingToWatch,
    /// An authority's `client_listener_resource_name_template` does not start with
    /// `xdstp://<authority>/`.
    #[error("must start with {prefix:?}, got {template:?}")]
    TemplatePrefix {
        /// The required prefix.
        prefix: String,
        /// The template found.
        template: String,
    },
}

/// A `server_uri` meshwork cannot dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerUriError {
    /// The URI is empty.
    #[error("invalid server URI: it is empty")]
    Empty,
    /// The scheme is not one meshwork dials.
    #[error(
        "invalid server URI {uri:?}: unsupported scheme {scheme:?} \
         (use host:port, dns:///host:port, unix:path, unix:///path or http://host:port)"
    )]
    UnsupportedScheme {
        /// The URI.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// `https://` was used; TLS is chosen by `channel_creds`, not by the URI.
    #[error(
        "invalid server URI {uri:?}: https:// does not select TLS; write host:port and \
         list {{\"type\": \"tls\"}} in channel_creds"
    )]
    Https {
        /// The URI.
        uri: String,
    },
    /// The host is empty.
    #[error("invalid server URI {uri:?}: the host is empty")]
    EmptyHost {
        /// The URI.
        uri: String,
    },
    /// The host is not a DNS name or IP literal (IPv6 literals need brackets).
    #[error("invalid server URI {uri:?}: invalid host {host:?}")]
    InvalidHost {
        /// The URI.
        uri: String,
        /// The host as found.
        host: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("invalid server URI {uri:?}: invalid port {port:?}")]
    InvalidPort {
        /// The URI.
        uri: String,
        /// The port as found.
        port: String,
    },
    /// An `http://` URI has a path.
    #[error("invalid server URI {uri:?}: unexpected path {path:?}")]
    UnexpectedPath {
        /// The URI.
        uri: String,
        /// The path.
        path: String,
    },
    /// A `dns:` URI names a DNS server (`dns://8.8.8.8/host:port`), which meshwork does not
    /// support.
    #[error(
        "invalid server URI {uri:?}: a DNS server authority ({authority:?}) is not supported; \
         use dns:///host:port"
    )]
    DnsAuthority {
        /// The URI.
        uri: String,
        /// The DNS server named.
        authority: String,
    },
    /// A `unix:` URI has no path.
    #[error("invalid server URI {uri:?}: the socket path is empty")]
    EmptyUnixPath {
        /// The URI.
        uri: String,
    },
    /// A `unix://` URI has an authority (`unix://host/path`); the absolute form is
    /// `unix:///path`.
    #[error(
        "invalid server URI {uri:?}: unix:// must be followed by an absolute path \
         (unix:///path), found authority {authority:?}"
    )]
    UnixAuthority {
        /// The URI.
        uri: String,
        /// The authority found.
        authority: String,
    },
}
