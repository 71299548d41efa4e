//! Resource names as the cache keys them: an `xdstp:` name (gRFC A47) in its canonical form,
//! context parameters sorted by key, so two spellings of one resource are one subscription
//! and one cache entry. Old-style names are kept as they are.

use std::borrow::Cow;

/// The canonical form of `name`, the form subscriptions, the cache and the dump key it by:
/// for an `xdstp:` name with context parameters, the parameters sorted by key (then value),
/// empty ones dropped, and no `?` when none is left. A fragment (`#...`) is kept after them
/// as it is. Any other name is its own canonical form.
///
/// ```
/// use meshwork_xds::resource::canonical_name;
///
/// let name = "xdstp://auth/envoy.config.cluster.v3.Cluster/c?b=2&a=1";
/// assert_eq!(
///     canonical_name(name),
///     "xdstp://auth/envoy.config.cluster.v3.Cluster/c?a=1&b=2"
/// );
/// assert_eq!(canonical_name("outbound|80||svc"), "outbound|80||svc");
/// ```
pub fn canonical_name(name: &str) -> Cow<'_, str> {
    if !name.starts_with("xdstp:") {
        return Cow::Borrowed(name);
    }
    let Some((base, rest)) = name.split_once('?') else {
        return Cow::Borrowed(name);
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let sorted = params.windows(2).all(|w| key(&w[0]) <= key(&w[1]));
    if sorted && params.len() == query.split('&').count() {
        return Cow::Borrowed(name);
    }
    params.sort_by(|a, b| key(a).cmp(&key(b)));
    let mut out = String::with_capacity(name.len());
    out.push_str(base);
    for (i, param) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(param);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Cow::Owned(out)
}

/// A context parameter's key and value, as they sort.
fn key<'a>(param: &&'a str) -> (&'a str, &'a str) {
    param.split_once('=').unwrap_or((param, ""))
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[test]
    fn context_parameters_are_sorted_by_key() {
        let t = "xdstp://a/envoy.config.cluster.v3.Cluster/c";
        assert_eq!(
            canonical_name(&format!("{t}?b=2&a=1")),
            format!("{t}?a=1&b=2")
        );
        assert_eq!(
            canonical_name(&format!("{t}?a=1&b=2")),
            format!("{t}?a=1&b=2")
        );
        // By key, not by the whole text: "a" sorts before "a2" though "a2=" < "a=" as text.
        assert_eq!(
            canonical_name(&format!("{t}?a2=1&a=1")),
            format!("{t}?a=1&a2=1")
        );
        assert_eq!(
            canonical_name(&format!("{t}?b=1&&a=2")),
            format!("{t}?a=2&b=1")
        );
        assert_eq!(canonical_name(&format!("{t}?")), t);
        assert_eq!(canonical_name(&format!("{t}?z&y=")), format!("{t}?y=&z"));
        assert_eq!(
            canonical_name(&format!("{t}?b=1&a=2#f")),
            format!("{t}?a=2&b=1#f")
        );
    }

    #[test]
    fn other_names_are_kept() {
        for name in ["outbound|80||svc", "svc?b=1&a=2", "xdstp://a/t/x", ""] {
            assert_eq!(canonical_name(name), name);
        }
    }
}
