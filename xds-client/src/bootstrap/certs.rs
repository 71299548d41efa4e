//! `certificate_providers` (gRFC A29, with the SPIFFE bundle map of A87) and the file set
//! shared with the `tls` channel credentials (A65).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::error::{BootstrapError, FieldErrorKind};
use super::json::{as_object, as_str, child, get, opt_str, record_unknown, req_str};

/// The `plugin_name` of the file-watcher certificate provider.
pub const FILE_WATCHER_PLUGIN: &str = "file_watcher";

/// How often watched certificate files are re-read when the configuration does not say:
/// ten minutes, as in gRPC.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(600);

/// The largest duration the protobuf JSON mapping allows (about 10,000 years).
const MAX_DURATION_SECS: u64 = 315_576_000_000;

/// One entry of `certificate_providers`: a named instance that xDS security configuration
/// (`CertificateProviderPluginInstance.instance_name`) refers to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CertificateProviderConfig {
    /// The `file_watcher` plugin: PEM files on disk, re-read periodically.
    FileWatcher(FileWatcherConfig),
    /// A plugin meshwork does not implement, kept as written so it can be shown in a config
    /// dump. Referring to it from a resource fails when the resource is used, not at load.
    Other {
        /// The plugin's name.
        plugin_name: String,
        /// The plugin's configuration as written (`null` when absent).
        config: Value,
    },
}

impl CertificateProviderConfig {
    /// The `plugin_name` this instance was configured with.
    pub fn plugin_name(&self) -> &str {
        match self {
            Self::FileWatcher(_) => FILE_WATCHER_PLUGIN,
            Self::Other { plugin_name, .. } => plugin_name,
        }
    }

    /// The file-watcher configuration, if this is a `file_watcher` instance.
    pub fn as_file_watcher(&self) -> Option<&FileWatcherConfig> {
        match self {
            Self::FileWatcher(config) => Some(config),
            Self::Other { .. } => None,
        }
    }
}

/// The configuration of the `file_watcher` certificate provider (gRFC A29 and A87).
///
/// Invariants, checked when parsed and kept by the constructors: the certificate and the
/// private key are both set or both unset, at least one file is set, and the refresh interval
/// is positive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileWatcherConfig {
    certificate_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    ca_certificate_file: Option<PathBuf>,
    spiffe_trust_bundle_map_file: Option<PathBuf>,
    refresh_interval: Duration,
}

impl FileWatcherConfig {
    /// Watches an identity: a certificate chain and its private key (PEM).
    pub fn from_identity(
        certificate_file: impl Into<PathBuf>,
        private_key_file: impl Into<PathBuf>,
    ) -> Self {
        Self::empty().with_identity(certificate_file, private_key_file)
    }

    /// Watches a file of root certificates (PEM).
    pub fn from_ca_certificate_file(ca_certificate_file: impl Into<PathBuf>) -> Self {
        Self::empty().with_ca_certificate_file(ca_certificate_file)
    }

    /// Watches a SPIFFE trust bundle map (JSON, gRFC A87).
    pub fn from_spiffe_trust_bundle_map_file(file: impl Into<PathBuf>) -> Self {
        Self::empty().with_spiffe_trust_bundle_map_file(file)
    }

    fn empty() -> Self {
        Self {
            certificate_file: None,
            private_key_file: None,
            ca_certificate_file: None,
            spiffe_trust_bundle_map_file: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
        }
    }

    /// Also watches an identity: a certificate chain and its private key (PEM).
    pub fn with_identity(
        mut self,
        certificate_file: impl Into<PathBuf>,
        private_key_file: impl Into<PathBuf>,
    ) -> Self {
        self.certificate_file = Some(certificate_file.into());
        self.private_key_file = Some(private_key_file.into());
        self
    }

    /// Also watches a file of root certificates (PEM).
    pub fn with_ca_certificate_file(mut self, ca_certificate_file: impl Into<PathBuf>) -> Self {
        self.ca_certificate_file = Some(ca_certificate_file.into());
        self
    }

    /// Also watches a SPIFFE trust bundle map (JSON, gRFC A87).
    pub fn with_spiffe_trust_bundle_map_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.spiffe_trust_bundle_map_file = Some(file.into());
        self
    }

    /// Sets how often the files are re-read. The default is [`DEFAULT_REFRESH_INTERVAL`]; a
    /// zero interval, which would re-read in a busy loop, keeps the default.
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        if !interval.is_zero() {
            self.refresh_interval = interval;
        }
        self
    }

    /// The certificate chain file, if an identity is watched.
    pub fn certificate_file(&self) -> Option<&Path> {
        self.certificate_file.as_deref()
    }

    /// The private key file, if an identity is watched.
    pub fn private_key_file(&self) -> Option<&Path> {
        self.private_key_file.as_deref()
    }

    /// The root certificates file, if set.
    pub fn ca_certificate_file(&self) -> Option<&Path> {
        self.ca_certificate_file.as_deref()
    }

    /// The SPIFFE trust bundle map file, if set.
    pub fn spiffe_trust_bundle_map_file(&self) -> Option<&Path> {
        self.spiffe_trust_bundle_map_file.as_deref()
    }

    /// How often the files are re-read.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval
    }
}

const CERT_FILE_KEYS: &[&str] = &[
    "certificate_file",
    "private_key_file",
    "ca_certificate_file",
    "spiffe_trust_bundle_map_file",
    "refresh_interval",
];

/// Parses the file set of a `file_watcher` config or of a `tls` channel credentials config at
/// `path`. With `require_some` (file_watcher), naming no file is an error; without it
/// (tls creds), it yields `None`.
pub(super) fn parse_cert_files(
    map: &Map<String, Value>,
    path: &str,
    require_some: bool,
    unknown: &mut Vec<String>,
) -> Result<Option<FileWatcherConfig>, BootstrapError> {
    record_unknown(map, CERT_FILE_KEYS, path, unknown);
    // An empty string means "unset", as in gRPC (whose parsers read into zero values).
    let file = |key: &str| -> Result<Option<PathBuf>, BootstrapError> {
        Ok(opt_str(map, key, path)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    };
    let certificate_file = file("certificate_file")?;
    let private_key_file = file("private_key_file")?;
    let ca_certificate_file = file("ca_certificate_file")?;
    let spiffe_trust_bundle_map_file = file("spiffe_trust_bundle_map_file")?;
    let refresh_interval = match get(map, "refresh_interval") {
        None => DEFAULT_REFRESH_INTERVAL,
        Some(v) => parse_positive_duration(v, &child(path, "refresh_interval"))?,
    };

    match (&certificate_file, &private_key_file) {
        (Some(_), None) => {
            return Err(BootstrapError::field(
                child(path, "private_key_file"),
                FieldErrorKind::Unpaired {
                    present: "certificate_file",
                },
            ));
        }
        (None, Some(_)) => {
            return Err(BootstrapError::field(
                child(path, "certificate_file"),
                FieldErrorKind::Unpaired {
                    present: "private_key_file",
                },
            ));
        }
        _ => {}
    }
    if certificate_file.is_none()
        && ca_certificate_file.is_none()
        && spiffe_trust_bundle_map_file.is_none()
    {
        return if require_some {
            Err(BootstrapError::field(path, FieldErrorKind::NothingToWatch))
        } else {
            Ok(None)
        };
    }
    Ok(Some(FileWatcherConfig {
        certificate_file,
        private_key_file,
        ca_certificate_file,
        spiffe_trust_bundle_map_file,
        refresh_interval,
    }))
}

/// Parses one entry of `certificate_providers` at `path`.
pub(super) fn parse_certificate_provider(
    value: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<CertificateProviderConfig, BootstrapError> {
    let map = as_object(value, path)?;
    record_unknown(map, &["plugin_name", "config"], path, unknown);
    let plugin_name = req_str(map, "plugin_name", path)?;
    if plugin_name != FILE_WATCHER_PLUGIN {
        return Ok(CertificateProviderConfig::Other {
            plugin_name: plugin_name.to_owned(),
            config: map.get("config").cloned().unwrap_or(Value::Null),
        });
    }
    let config_path = child(path, "config");
    let config = get(map, "config")
        .ok_or_else(|| BootstrapError::field(&config_path, FieldErrorKind::Missing))?;
    let config = as_object(config, &config_path)?;
    let files = parse_cert_files(config, &config_path, true, unknown)?;
    // parse_cert_files with require_some never returns Ok(None); keep the type honest anyway.
    files
        .map(CertificateProviderConfig::FileWatcher)
        .ok_or_else(|| BootstrapError::field(config_path, FieldErrorKind::NothingToWatch))
}

/// Parses a JSON duration (`"600s"`, `"1.5s"`) that must be positive.
pub(super) fn parse_positive_duration(
    value: &Value,
    path: &str,
) -> Result<Duration, BootstrapError> {
    let text = as_str(value, path)?;
    match parse_json_duration(text) {
        None => Err(BootstrapError::field(
            path,
            FieldErrorKind::InvalidDuration {
                value: text.to_owned(),
            },
        )),
        Some((negative, d)) if negative || d.is_zero() => Err(BootstrapError::field(
            path,
            FieldErrorKind::NonPositiveDuration {
                value: text.to_owned(),
            },
        )),
        Some((_, d)) => Ok(d),
    }
}

/// The protobuf JSON form of `google.protobuf.Duration`: optional `-`, whole seconds, up to
/// nine fractional digits, then `s`. Returns (is negative, magnitude).
fn parse_json_duration(text: &str) -> Option<(bool, Duration)> {
    let body = text.strip_suffix('s')?;
    let (negative, body) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (whole, fraction) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    if secs > MAX_DURATION_SECS {
        return None;
    }
    let nanos = match fraction {
        None => 0,
        Some(f) if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) => {
            return None;
        }
        Some(f) => {
            let digits: u32 = f.parse().ok()?;
            // Scale "5" (tenths) to 500_000_000 nanoseconds; f.len() is 1..=9 here.
            digits * 10u32.pow(9 - f.len() as u32)
        }
    };
    Some((negative, Duration::new(secs, nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn files(v: Value, require_some: bool) -> Result<Option<FileWatcherConfig>, BootstrapError> {
        let mut unknown = Vec::new();
        parse_cert_files(v.as_object().unwrap(), "p", require_some, &mut unknown)
    }

    #[test]
    fn json_durations() {
        let d = |s| parse_json_duration(s);
        assert_eq!(d("600s"), Some((false, Duration::from_secs(600))));
        assert_eq!(d("1.5s"), Some((false, Duration::from_millis(1500))));
        assert_eq!(d("0.000000001s"), Some((false, Duration::from_nanos(1))));
        assert_eq!(d("-2s"), Some((true, Duration::from_secs(2))));
        assert_eq!(d("0s"), Some((false, Duration::ZERO)));
        for bad in [
            "",
            "s",
            "600",
            "10m",
            "1.s",
            ".5s",
            "1.0000000001s",
            "+1s",
            "1 s",
            "--1s",
            "1e3s",
            "315576000001s",
            "99999999999999999999999s",
            "١s",
        ] {
            assert_eq!(d(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn positive_durations_only() {
        assert_eq!(
            parse_positive_duration(&json!("900s"), "r").unwrap(),
            Duration::from_secs(900)
        );
        let e = parse_positive_duration(&json!("0s"), "r").unwrap_err();
        assert_eq!(e.to_string(), "r: must be a positive duration, got \"0s\"");
        let e = parse_positive_duration(&json!("-1s"), "r").unwrap_err();
        assert!(matches!(
            e.field_error(),
            Some(FieldErrorKind::NonPositiveDuration { .. })
        ));
        let e = parse_positive_duration(&json!("10m"), "r").unwrap_err();
        assert_eq!(
            e.to_string(),
            "r: invalid duration \"10m\": expected a JSON duration string such as \"600s\" or \"1.5s\""
        );
        let e = parse_positive_duration(&json!(600), "r").unwrap_err();
        assert_eq!(e.to_string(), "r: expected a string, got 600");
    }

    #[test]
    fn file_watcher_needs_both_cert_and_key() {
        let e = files(json!({"certificate_file": "c.pem"}), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.private_key_file: required because certificate_file is set (set both or neither)"
        );
        let e = files(
            json!({"private_key_file": "k.pem", "ca_certificate_file": "ca"}),
            true,
        )
        .unwrap_err();
        assert_eq!(e.field_path(), Some("p.certificate_file"));
        // An empty string is "unset", as in gRPC.
        let e = files(
            json!({"certificate_file": "c", "private_key_file": ""}),
            true,
        )
        .unwrap_err();
        assert_eq!(e.field_path(), Some("p.private_key_file"));
    }

    #[test]
    fn file_watcher_needs_something_to_watch() {
        let e = files(json!({"refresh_interval": "5s"}), true).unwrap_err();
        assert_eq!(e.field_path(), Some("p"));
        assert_eq!(e.field_error(), Some(&FieldErrorKind::NothingToWatch));
        // The tls channel credentials accept an empty set: system roots, no client cert.
        assert_eq!(files(json!({}), false).unwrap(), None);

        let only_ca = files(json!({"ca_certificate_file": "/ca.pem"}), true)
            .unwrap()
            .unwrap();
        assert_eq!(only_ca.ca_certificate_file(), Some(Path::new("/ca.pem")));
        assert_eq!(only_ca.certificate_file(), None);
        assert_eq!(only_ca.refresh_interval(), DEFAULT_REFRESH_INTERVAL);

        let only_bundle = files(json!({"spiffe_trust_bundle_map_file": "/b.json"}), true)
            .unwrap()
            .unwrap();
        assert_eq!(
            only_bundle.spiffe_trust_bundle_map_file(),
            Some(Path::new("/b.json"))
        );

        let only_identity = files(
            json!({"certificate_file": "c", "private_key_file": "k", "refresh_interval": "1.5s"}),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(only_identity.private_key_file(), Some(Path::new("k")));
        assert_eq!(
            only_identity.refresh_interval(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn file_fields_must_be_strings() {
        let e = files(
            json!({"certificate_file": 42, "private_key_file": "k"}),
            true,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.certificate_file: expected a string, got 42"
        );
        let e = files(json!({"ca_certificate_file": ["a"]}), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.ca_certificate_file: expected a string, got an array"
        );
    }

    #[test]
    fn unknown_plugins_are_kept_raw() {
        let mut unknown = Vec::new();
        let cfg = parse_certificate_provider(
            &json!({"plugin_name": "meshca", "config": {"server": {"x": 1}}}),
            "certificate_providers.m",
            &mut unknown,
        )
        .unwrap();
        assert_eq!(cfg.plugin_name(), "meshca");
        assert!(cfg.as_file_watcher().is_none());
        match cfg {
            CertificateProviderConfig::Other { config, .. } => {
                assert_eq!(config, json!({"server": {"x": 1}}))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            unknown.is_empty(),
            "opaque configs are not walked: {unknown:?}"
        );
    }

    #[test]
    fn provider_entries_are_checked() {
        let mut unknown = Vec::new();
        let p = "certificate_providers.default";
        let e = parse_certificate_provider(&json!({"config": {}}), p, &mut unknown).unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate_providers.default.plugin_name: required field is missing"
        );
        let e =
            parse_certificate_provider(&json!({"plugin_name": "file_watcher"}), p, &mut unknown)
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate_providers.default.config: required field is missing"
        );
        let e = parse_certificate_provider(
            &json!({"plugin_name": "file_watcher", "config": "x"}),
            p,
            &mut unknown,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate_providers.default.config: expected an object, got \"x\""
        );
        let e = parse_certificate_provider(&json!(7), p, &mut unknown).unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate_providers.default: expected an object, got 7"
        );
        let e = parse_certificate_provider(
            &json!({"plugin_name": "file_watcher", "config": {"ca_certificate_file": "a", "refresh_interval": "x"}}),
            p,
            &mut unknown,
        )
        .unwrap_err();
        assert_eq!(
            e.field_path(),
            Some("certificate_providers.default.config.refresh_interval")
        );
    }

    #[test]
    fn unknown_keys_in_file_watcher_config_are_recorded() {
        let mut unknown = Vec::new();
        parse_certificate_provider(
            &json!({"plugin_name": "file_watcher", "extra": 1,
                    "config": {"ca_certificate_file": "a", "watch_me": true}}),
            "certificate_providers.default",
            &mut unknown,
        )
        .unwrap();
        assert_eq!(
            unknown,
            [
                "certificate_providers.default.extra",
                "certificate_providers.default.config.watch_me"
            ]
        );
    }

    #[test]
    fn constructors_keep_the_invariants() {
        let c = FileWatcherConfig::from_identity("c", "k")
            .with_ca_certificate_file("ca")
            .with_refresh_interval(Duration::ZERO);
        assert_eq!(c.certificate_file(), Some(Path::new("c")));
        assert_eq!(c.private_key_file(), Some(Path::new("k")));
        assert_eq!(c.refresh_interval(), DEFAULT_REFRESH_INTERVAL);
        let c = FileWatcherConfig::from_spiffe_trust_bundle_map_file("m")
            .with_refresh_interval(Duration::from_secs(5));
        assert_eq!(c.refresh_interval(), Duration::from_secs(5));
        assert_eq!(
            FileWatcherConfig::from_ca_certificate_file("x").ca_certificate_file(),
            Some(Path::new("x"))
        );
    }
}
