//! `xds:` targets and the Listener-name templates of gRFC A47.

use std::fmt;
use std::str::FromStr;

/// A parsed `xds:` channel target: `xds:///greeter:50051`, `xds:greeter:50051` or
/// `xds://authority/greeter:50051`.
///
/// ```
/// use meshwork_xds::bootstrap::XdsTarget;
///
/// let t = XdsTarget::parse("xds://xds.example.com/greeter:50051")?;
/// assert_eq!(t.authority(), Some("xds.example.com"));
/// assert_eq!(t.name(), "greeter:50051");
///
/// let t: XdsTarget = "xds:///echo.default.svc.cluster.local:7070".parse()?;
/// assert_eq!(t.authority(), None);
/// assert_eq!(t.name(), "echo.default.svc.cluster.local:7070");
/// # Ok::<(), meshwork_xds::bootstrap::TargetParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XdsTarget {
    original: String,
    authority: Option<String>,
    name: String,
}

impl XdsTarget {
    /// Parses an `xds:` target. The scheme is case-insensitive; the path is percent-decoded;
    /// a query or fragment is ignored, as gRPC does.
    pub fn parse(target: &str) -> Result<Self, TargetParseError> {
        let Some((scheme, rest)) = target.split_once(':') else {
            return Err(TargetParseError::MissingScheme {
                target: target.to_owned(),
            });
        };
        if !scheme.eq_ignore_ascii_case("xds") {
            return Err(TargetParseError::NotXds {
                target: target.to_owned(),
                scheme: scheme.to_owned(),
            });
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.strip_prefix("//") {
            Some(after) => match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            },
            None => ("", rest),
        };
        let path = path.strip_prefix('/').unwrap_or(path);
        let invalid = || TargetParseError::InvalidPercentEncoding {
            target: target.to_owned(),
        };
        let name = percent_decode(path).ok_or_else(invalid)?;
        if name.is_empty() {
            return Err(TargetParseError::EmptyName {
                target: target.to_owned(),
            });
        }
        let authority = percent_decode(authority).ok_or_else(invalid)?;
        Ok(Self {
            original: target.to_owned(),
            authority: (!authority.is_empty()).then_some(authority),
            name,
        })
    }

    /// The authority (`xds://<authority>/...`), or `None` when absent or empty.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The path without its leading `/`, percent-decoded: what replaces `%s` in a Listener
    /// name template.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The authority data-plane requests carry and virtual hosts are matched on: the last
    /// `/`-separated segment of [`XdsTarget::name`] (gRFC A47).
    pub fn data_plane_authority(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// The target as given.
    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl FromStr for XdsTarget {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for XdsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// Why a string is not an `xds:` target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetParseError {
    /// No `scheme:` at all.
    #[error(
        "{target:?} is not an xds target: no scheme (expected xds:///name or xds://authority/name)"
    )]
    MissingScheme {
        /// The target.
        target: String,
    },
    /// A scheme other than `xds`.
    #[error("{target:?} is not an xds target: scheme {scheme:?} (expected \"xds\")")]
    NotXds {
        /// The target.
        target: String,
        /// The scheme found.
        scheme: String,
    },
    /// No name after the authority.
    #[error("xds target {target:?} names no service: its path is empty")]
    EmptyName {
        /// The target.
        target: String,
    },
    /// A `%` not followed by two hex digits, or an escape that does not decode to UTF-8.
    #[error("xds target {target:?} has invalid percent-encoding")]
    InvalidPercentEncoding {
        /// The target.
        target: String,
    },
}

/// Whether a byte may stand for itself, unescaped, in a URI path: RFC 3986's `pchar`
/// without `%` (unreserved, sub-delims, `:` and `@`; section 3.3), and the `/` between
/// segments.
///
/// The set xDS resource names from a target are escaped to (gRFC A47) and that
/// meshwork-core's inbound authorization reads a normal request path in.
///
/// ```
/// use meshwork_xds::bootstrap::is_path_byte;
///
/// assert!(is_path_byte(b'a') && is_path_byte(b'/') && is_path_byte(b'@'));
/// assert!(!is_path_byte(b'%') && !is_path_byte(b'?') && !is_path_byte(b' '));
/// ```
pub const fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

/// Percent-encodes every byte not allowed in a URI path (`%` included), uppercase hex.
pub(super) fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_path_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Replaces every `%s` of `template` with `replacement`, percent-encoded when the template
/// starts with `xdstp:` (gRFC A47).
pub(super) fn expand_template(template: &str, replacement: &str) -> String {
    if !template.contains("%s") {
        return template.to_owned();
    }
    if template.starts_with("xdstp:") {
        template.replace("%s", &percent_encode_path(replacement))
    } else {
        template.replace("%s", replacement)
    }
}

/// The authority of a new-style (`xdstp:`) resource name, percent-decoded; the empty string
/// for `xdstp:` names without one; `None` for old-style names.
pub(crate) fn xdstp_authority(resource_name: &str) -> Option<String> {
    let rest = resource_name.strip_prefix("xdstp:")?;
    let Some(after) = rest.strip_prefix("//") else {
        return Some(String::new());
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let raw = &after[..end];
    Some(percent_decode(raw).unwrap_or_else(|| raw.to_owned()))
}

/// The prefix an authority's `client_listener_resource_name_template` must start with.
pub(super) fn authority_prefix(authority: &str) -> String {
    // '/' is not allowed inside an authority, so escape it too.
    let encoded = percent_encode_path(authority).replace('/', "%2F");
    format!("xdstp://{encoded}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_forms() {
        let t = XdsTarget::parse("xds:///greeter:50051").unwrap();
        assert_eq!((t.authority(), t.name()), (None, "greeter:50051"));
        assert_eq!(t.as_str(), "xds:///greeter:50051");
        assert_eq!(t.to_string(), "xds:///greeter:50051");

        let t = XdsTarget::parse("xds://auth/greeter").unwrap();
        assert_eq!((t.authority(), t.name()), (Some("auth"), "greeter"));

        let t = XdsTarget::parse("xds:greeter:50051").unwrap();
        assert_eq!((t.authority(), t.name()), (None, "greeter:50051"));

        let t = XdsTarget::parse("XDS:///a/b/svc.ns:80").unwrap();
        assert_eq!(t.name(), "a/b/svc.ns:80");
        assert_eq!(t.data_plane_authority(), "svc.ns:80");

        let t = XdsTarget::parse("xds:///svc?lb=x#frag").unwrap();
        assert_eq!(t.name(), "svc");

        let t = XdsTarget::parse("xds:///my%20svc%2Fx").unwrap();
        assert_eq!(t.name(), "my svc/x");
        assert_eq!(t.data_plane_authority(), "x");

        let t: XdsTarget = "xds://a.b.c/svc".parse().unwrap();
        assert_eq!(t.authority(), Some("a.b.c"));
        assert_eq!(t.data_plane_authority(), "svc");
    }

    #[test]
    fn bad_targets() {
        assert!(matches!(
            XdsTarget::parse("greeter"),
            Err(TargetParseError::MissingScheme { .. })
        ));
        assert!(matches!(
            XdsTarget::parse("dns:///greeter:50051"),
            Err(TargetParseError::NotXds { scheme, .. }) if scheme == "dns"
        ));
        assert!(matches!(
            XdsTarget::parse("greeter:50051"),
            Err(TargetParseError::NotXds { scheme, .. }) if scheme == "greeter"
        ));
        for empty in ["xds:", "xds:///", "xds://auth", "xds://auth/", "xds:///?q"] {
            assert!(
                matches!(
                    XdsTarget::parse(empty),
                    Err(TargetParseError::EmptyName { .. })
                ),
                "{empty}"
            );
        }
        for bad in ["xds:///a%2", "xds:///a%zz", "xds:///%ff%fe", "xds://a%/b"] {
            assert!(
                matches!(
                    XdsTarget::parse(bad),
                    Err(TargetParseError::InvalidPercentEncoding { .. })
                ),
                "{bad}"
            );
        }
        let e = XdsTarget::parse("dns:///x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"dns:///x\" is not an xds target: scheme \"dns\" (expected \"xds\")"
        );
    }

    #[test]
    fn percent_encoding_keeps_path_characters() {
        assert_eq!(percent_encode_path("greeter:50051"), "greeter:50051");
        assert_eq!(percent_encode_path("a/b"), "a/b");
        assert_eq!(
            percent_encode_path("Az09-._~!$&'()*+,;=:@"),
            "Az09-._~!$&'()*+,;=:@"
        );
        assert_eq!(percent_encode_path("a b"), "a%20b");
        assert_eq!(percent_encode_path("50%"), "50%25");
        assert_eq!(percent_encode_path("q?x#y"), "q%3Fx%23y");
        assert_eq!(percent_encode_path("[::1]:80"), "%5B::1%5D:80");
        assert_eq!(percent_encode_path("é"), "%C3%A9");
        assert_eq!(
            percent_encode_path("\"<>\\^`{|}"),
            "%22%3C%3E%5C%5E%60%7B%7C%7D"
        );
    }

    #[test]
    fn percent_round_trip() {
        for s in ["plain", "a b/c?d#e%f", "é日本", "[::]:80"] {
            assert_eq!(percent_decode(&percent_encode_path(s)).as_deref(), Some(s));
        }
    }

    #[test]
    fn templates() {
        assert_eq!(expand_template("%s", "a b"), "a b");
        assert_eq!(expand_template("fixed", "x"), "fixed");
        assert_eq!(expand_template("pre/%s/%s", "x"), "pre/x/x");
        assert_eq!(
            expand_template("xdstp://a/envoy.config.listener.v3.Listener/%s", "a b/c"),
            "xdstp://a/envoy.config.listener.v3.Listener/a%20b/c"
        );
        assert_eq!(
            expand_template("xds.istio.io/grpc/lds/inbound/%s", "[::]:8080"),
            "xds.istio.io/grpc/lds/inbound/[::]:8080"
        );
    }

    #[test]
    fn xdstp_authorities() {
        assert_eq!(xdstp_authority("xdstp://a.b/t/x").as_deref(), Some("a.b"));
        assert_eq!(xdstp_authority("xdstp://a.b").as_deref(), Some("a.b"));
        assert_eq!(xdstp_authority("xdstp://a.b?x=1").as_deref(), Some("a.b"));
        assert_eq!(xdstp_authority("xdstp://a%20b/t").as_deref(), Some("a b"));
        assert_eq!(xdstp_authority("xdstp:///t/x").as_deref(), Some(""));
        assert_eq!(xdstp_authority("xdstp:t/x").as_deref(), Some(""));
        assert_eq!(xdstp_authority("xds://a/b"), None);
        assert_eq!(xdstp_authority("outbound|80||svc"), None);
        assert_eq!(
            xdstp_authority("xdstp://xds.example.com/envoy.config.listener.v3.Listener/greeter")
                .as_deref(),
            Some("xds.example.com")
        );
        assert_eq!(
            xdstp_authority("xdstp:///envoy.config.listener.v3.Listener/x").as_deref(),
            Some("")
        );
        assert_eq!(xdstp_authority("greeter:50051"), None);
    }

    proptest::proptest! {
        #[test]
        fn encoding_round_trips_and_leaves_only_path_bytes(s in "\\PC*") {
            let encoded = percent_encode_path(&s);
            proptest::prop_assert!(encoded.bytes().all(|b| is_path_byte(b) || b == b'%' || b.is_ascii_hexdigit()));
            proptest::prop_assert_eq!(percent_decode(&encoded), Some(s));
        }

        #[test]
        fn target_parsing_never_panics(s in "(xds|XDS|dns)?:?(//)?[a-z%./?#:0-9]{0,12}") {
            if let Ok(t) = XdsTarget::parse(&s) {
                proptest::prop_assert!(!t.name().is_empty());
                proptest::prop_assert!(t.authority() != Some(""));
            }
        }
    }

    #[test]
    fn authority_prefixes() {
        assert_eq!(
            authority_prefix("xds.example.com"),
            "xdstp://xds.example.com/"
        );
        assert_eq!(authority_prefix("a b"), "xdstp://a%20b/");
        assert_eq!(authority_prefix("a/b"), "xdstp://a%2Fb/");
    }
}
