//! String and regex matchers shared by routes (headers, query parameters) and clusters
//! (upstream SAN matchers).

use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;

use super::unsupported::{Unsupported, unsupported_fields};
use super::{FieldPath, ResourceErrorKind, Result};

/// The compiled-program size limit for regexes from the control plane (the `regex` crate's
/// `size_limit`). Envoy bounds RE2 program size instead (`max_program_size`, default 100);
/// the two units differ, so we pick a limit that admits any realistic routing regex while
/// keeping a hostile one from costing megabytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regular expression in RE2 syntax (xDS `safe_regex`), compiled with the `regex` crate.
///
/// Matchers built from `safe_regex` are anchored at both ends, because xDS regex matches are
/// full matches; regex rewrites (`regex_rewrite` in hash policies) are not anchored.
/// Two `SafeRegex` compare equal when their sources (and anchoring) are equal.
#[derive(Clone)]
pub struct SafeRegex {
    source: Arc<str>,
    regex: regex::Regex,
}

impl SafeRegex {
    /// Compiles `pattern` for full matches (anchored as `^(?:pattern)$`).
    pub fn full_match(pattern: &str) -> std::result::Result<Self, regex::Error> {
        Self::build(pattern, &format!("^(?:{pattern})$"))
    }

    /// Compiles `pattern` unanchored, for searching and rewriting.
    pub fn unanchored(pattern: &str) -> std::result::Result<Self, regex::Error> {
        Self::build(pattern, pattern)
    }

    fn build(source: &str, compiled: &str) -> std::result::Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(compiled)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.into(),
            regex,
        })
    }

    /// The pattern as the control plane sent it (without our anchors).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled regex (anchored for full-match regexes).
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }

    /// Whether `haystack` matches (a full match for [`SafeRegex::full_match`] regexes).
    pub fn is_match(&self, haystack: &str) -> bool {
        self.regex.is_match(haystack)
    }
}

impl PartialEq for SafeRegex {
    fn eq(&self, other: &Self) -> bool {
        self.regex.as_str() == other.regex.as_str()
    }
}

impl Eq for SafeRegex {}

impl fmt::Debug for SafeRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SafeRegex").field(&&*self.source).finish()
    }
}

/// Compiles an xDS `RegexMatcher` for full matches; errors name `path`.
pub(crate) fn full_match_regex(
    path: &FieldPath<'_>,
    m: &matcher_pb::RegexMatcher,
) -> Result<SafeRegex> {
    SafeRegex::full_match(&m.regex).map_err(|e| ResourceErrorKind::InvalidRegex {
        path: path.to_string(),
        source: Arc::new(e),
    })
}

/// What a [`StringMatcher`] compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatchKind {
    /// The whole string equals this.
    Exact(String),
    /// The string starts with this.
    Prefix(String),
    /// The string ends with this.
    Suffix(String),
    /// The string contains this.
    Contains(String),
    /// The whole string matches this regex (`ignore_case` does not apply).
    Regex(SafeRegex),
}

/// An xDS `StringMatcher` (gRFC A63 semantics: `ignore_case` applies to exact, prefix,
/// suffix and contains, and compares ASCII letters case-insensitively, as Envoy does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatcher {
    /// The comparison.
    pub kind: StringMatchKind,
    /// Compare ASCII letters case-insensitively (not for regexes).
    pub ignore_case: bool,
}

impl StringMatcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let v = value.as_bytes();
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.kind {
            StringMatchKind::Exact(p) => eq(v, p.as_bytes()),
            StringMatchKind::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p.as_bytes()),
            StringMatchKind::Suffix(p) => {
                v.len() >= p.len() && eq(&v[v.len() - p.len()..], p.as_bytes())
            }
            StringMatchKind::Contains(p) => {
                if p.is_empty() {
                    true
                } else if self.ignore_case {
                    v.windows(p.len())
                        .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
                } else {
                    value.contains(p.as_str())
                }
            }
            StringMatchKind::Regex(r) => r.is_match(value),
        }
    }

    /// Converts an xDS `StringMatcher`; `custom` matchers and a missing pattern are errors.
    pub(crate) fn from_proto(path: &FieldPath<'_>, m: &matcher_pb::StringMatcher) -> Result<Self> {
        use matcher_pb::string_matcher::MatchPattern;
        let kind = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatchKind::Exact(s.clone()),
            Some(MatchPattern::Prefix(s)) => StringMatchKind::Prefix(s.clone()),
            Some(MatchPattern::Suffix(s)) => StringMatchKind::Suffix(s.clone()),
            Some(MatchPattern::Contains(s)) => StringMatchKind::Contains(s.clone()),
            Some(MatchPattern::SafeRegex(r)) => {
                StringMatchKind::Regex(full_match_regex(&path.field("safe_regex"), r)?)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(ResourceErrorKind::unsupported(
                    path.field("custom"),
                    "custom string matcher extensions",
                ));
            }
            None => {
                return Err(ResourceErrorKind::invalid(
                    path,
                    "string matcher has no match pattern",
                ));
            }
        };
        Ok(Self {
            kind,
            ignore_case: m.ignore_case,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: StringMatchKind, ignore_case: bool) -> StringMatcher {
        StringMatcher { kind, ignore_case }
    }

    #[test]
    fn string_matcher_kinds() {
        let exact = m(StringMatchKind::Exact("Foo".into()), false);
        assert!(exact.matches("Foo"));
        assert!(!exact.matches("foo"));
        assert!(m(StringMatchKind::Exact("Foo".into()), true).matches("fOO"));

        let prefix = m(StringMatchKind::Prefix("ab".into()), true);
        assert!(prefix.matches("ABc"));
        assert!(!prefix.matches("a"));
        let suffix = m(StringMatchKind::Suffix("yz".into()), false);
        assert!(suffix.matches("xyz"));
        assert!(!suffix.matches("xyZ"));
        assert!(!suffix.matches("z"));
        let contains = m(StringMatchKind::Contains("mid".into()), true);
        assert!(contains.matches("aMIDb"));
        assert!(!contains.matches("mi"));
        assert!(m(StringMatchKind::Contains("mid".into()), false).matches("amidb"));
        assert!(!m(StringMatchKind::Contains("mid".into()), false).matches("aMIDb"));
        // Multi-byte text does not panic on byte slicing.
        assert!(!m(StringMatchKind::Suffix("é".into()), false).matches("e"));
        assert!(m(StringMatchKind::Prefix("é".into()), true).matches("été"));
    }

    #[test]
    fn regex_is_full_match_and_ignores_case_flag() {
        let re = m(
            StringMatchKind::Regex(SafeRegex::full_match("a+b").unwrap()),
            true,
        );
        assert!(re.matches("aaab"));
        assert!(!re.matches("xaaab"));
        assert!(!re.matches("aaabx"));
        assert!(!re.matches("AAAB"));
        // Alternation is anchored as a whole.
        let alt = SafeRegex::full_match("a|b").unwrap();
        assert!(!alt.is_match("ab"));
        assert!(alt.is_match("b"));
        assert_eq!(alt.as_str(), "a|b");
    }

    #[test]
    fn regex_equality_and_limits() {
        assert_eq!(
            SafeRegex::full_match("x.*").unwrap(),
            SafeRegex::full_match("x.*").unwrap()
        );
        assert_ne!(
            SafeRegex::full_match("x.*").unwrap(),
            SafeRegex::unanchored("x.*").unwrap()
        );
        assert!(SafeRegex::full_match("(").is_err());
        // A regex whose compiled program exceeds the size limit is rejected.
        assert!(SafeRegex::full_match("(?:\\w{100}){100}").is_err());
    }

    #[test]
    fn from_proto_errors_name_the_path() {
        use matcher_pb::string_matcher::MatchPattern;
        let root = FieldPath::ROOT;
        let p = root.at("match_subject_alt_names", 1);
        let bad = matcher_pb::StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::SafeRegex(matcher_pb::RegexMatcher {
                regex: "a(".into(),
                engine_type: None,
            })),
        };
        let err = StringMatcher::from_proto(&p, &bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("match_subject_alt_names[1].safe_regex: invalid regex"),
            "{err}"
        );
        let empty = matcher_pb::StringMatcher::default();
        assert!(StringMatcher::from_proto(&p, &empty).is_err());
    }
}

/// A header condition.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatcher {
    /// Header name, lower-cased.
    pub name: String,
    /// The comparison.
    pub kind: HeaderMatchKind,
    /// Invert the result.
    pub invert: bool,
}

/// The comparison of a [`HeaderMatcher`].
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatchKind {
    /// Value equals.
    Exact(String),
    /// Value starts with.
    Prefix(String),
    /// Value ends with.
    Suffix(String),
    /// Value contains.
    Contains(String),
    /// Value fully matches the regex.
    SafeRegex(SafeRegex),
    /// Value parses as an integer in `[start, end)`.
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
    /// The header is present (`true`) or absent (`false`).
    Present(bool),
    /// A `StringMatcher` (gRFC A63, may ignore case).
    StringMatch(StringMatcher),
}

/// Decodes and validates a `HeaderMatcher` (routes and RBAC share it).
// `HeaderMatchSpecifier`'s first kinds are deprecated in favour of `string_match`; control
// planes still send them.
#[allow(deprecated)]
pub(crate) fn header_matcher(
    h: &route_pb::HeaderMatcher,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<HeaderMatcher> {
    use route_pb::header_matcher::HeaderMatchSpecifier as S;
    let name = h.name.to_ascii_lowercase();
    // Lower case by construction; the other rule of `route::rules::header_name`.
    if name.is_empty() {
        return Err(ResourceErrorKind::invalid(
            p.field("name"),
            "must not be empty",
        ));
    }
    let kind = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => HeaderMatchKind::Exact(s.clone()),
        Some(S::PrefixMatch(s)) => HeaderMatchKind::Prefix(s.clone()),
        Some(S::SuffixMatch(s)) => HeaderMatchKind::Suffix(s.clone()),
        Some(S::ContainsMatch(s)) => HeaderMatchKind::Contains(s.clone()),
        Some(S::SafeRegexMatch(r)) => {
            HeaderMatchKind::SafeRegex(full_match_regex(&p.field("safe_regex_match"), r)?)
        }
        Some(S::RangeMatch(r)) => HeaderMatchKind::Range {
            start: r.start,
            end: r.end,
        },
        Some(S::PresentMatch(b)) => HeaderMatchKind::Present(*b),
        Some(S::StringMatch(sm)) => {
            HeaderMatchKind::StringMatch(StringMatcher::from_proto(&p.field("string_match"), sm)?)
        }
        None => {
            return Err(ResourceErrorKind::invalid(
                p,
                "header matcher has no match specifier",
            ));
        }
    };
    unsupported_fields!(uns, p, h, { treat_missing_header_as_empty })?;
    Ok(HeaderMatcher {
        name,
        kind,
        invert: h.invert_match,
    })
}
