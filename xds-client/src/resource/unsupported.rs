//! The one way a decoder reports the fields of a message that meshwork does not implement.
//!
//! A decoder names such fields in a table ([`unsupported_fields!`]) that says, per field, how
//! to tell it is set and what a set field means: most are harmless and only listed (the
//! resource's `unsupported_fields`, shown in the config dump, the route matching or the
//! connection behaving as if the field were unset), a few change what the resource means
//! and reject it (a NACK naming the field, as gRPC rejects them). [`Unsupported::check`]
//! walks a table in order, so the listed paths keep the order of the table and the first
//! set rejecting field is the one the NACK names.

use super::{FieldPath, ResourceErrorKind, Result};

/// Collects the paths of set-but-unimplemented fields while a resource is validated.
#[derive(Default)]
pub(crate) struct Unsupported(Vec<String>);

/// One row of a table of unimplemented fields.
pub(crate) struct Field {
    /// The field's name (or path) under the table's message.
    pub(crate) name: &'static str,
    /// Whether the resource sets it.
    pub(crate) set: bool,
    /// `None`: a set field is listed. `Some(what)`: a set field rejects the resource, as
    /// needing `what`, which meshwork does not implement.
    pub(crate) reject: Option<&'static str>,
}

/// Whether a proto3 field is set: it differs from its default (a message or wrapper is
/// present, a list or map is non-empty, a scalar or enum is not zero).
pub(crate) fn is_set<T: Default + PartialEq>(value: &T) -> bool {
    *value != T::default()
}

impl Unsupported {
    /// Checks `fields` of the message at `path`, in order: each set field is listed as
    /// `path.name`, or, for a rejecting one, is the error.
    pub(crate) fn check(&mut self, path: &FieldPath<'_>, fields: &[Field]) -> Result<()> {
        for f in fields.iter().filter(|f| f.set) {
            match f.reject {
                None => self.field(path, f.name),
                Some(what) => return Err(ResourceErrorKind::unsupported(path.field(f.name), what)),
            }
        }
        Ok(())
    }

    /// Records `path.field`.
    pub(crate) fn field(&mut self, path: &FieldPath<'_>, field: &str) {
        let rendered = path.to_string();
        self.0.push(if rendered.is_empty() {
            field.to_owned()
        } else {
            format!("{rendered}.{field}")
        });
    }

    /// Records a free-form entry (e.g. `"http_filters[2] (envoy.filters.http.foo)"`) once.
    pub(crate) fn note(&mut self, entry: String) {
        if !self.0.contains(&entry) {
            self.0.push(entry);
        }
    }

    pub(crate) fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// Checks a table of the unimplemented fields of one message `$msg` at `$path`, collecting
/// into `$uns`. A row is one of:
///
/// - `name`: listed when `$msg.name` is set ([`is_set`]);
/// - `name => reject("what")`: the resource is rejected when it is set;
/// - `name = test => reject("what")`: the same, with its own test of "set";
/// - `"label" = test`: listed under a label that is not a field name.
///
/// ```text
/// unsupported_fields!(uns, &path, common, {
///     tls_params => reject("TLS parameters"),
///     alpn_protocols,
/// })?;
/// ```
///
/// Expands to one [`Unsupported::check`] call, a `Result` to `?`.
macro_rules! unsupported_fields {
    ($uns:expr, $path:expr, $msg:expr, { $($rows:tt)* }) => {
        $uns.check($path, &unsupported_fields!(@rows $msg; []; $($rows)*))
    };
    (@rows $msg:expr; [$($out:expr,)*];) => { [$($out,)*] };
    (@rows $msg:expr; [$($out:expr,)*];
        $field:ident = $set:expr => reject($what:expr) $(, $($rest:tt)*)?) => {
        unsupported_fields!(@rows $msg; [$($out,)* $crate::resource::unsupported::Field {
            name: stringify!($field), set: $set, reject: Some($what),
        },]; $($($rest)*)?)
    };
    (@rows $msg:expr; [$($out:expr,)*];
        $field:ident => reject($what:expr) $(, $($rest:tt)*)?) => {
        unsupported_fields!(@rows $msg; [$($out,)* $crate::resource::unsupported::Field {
            name: stringify!($field),
            set: $crate::resource::unsupported::is_set(&$msg.$field),
            reject: Some($what),
        },]; $($($rest)*)?)
    };
    (@rows $msg:expr; [$($out:expr,)*]; $label:literal = $set:expr $(, $($rest:tt)*)?) => {
        unsupported_fields!(@rows $msg; [$($out,)* $crate::resource::unsupported::Field {
            name: $label, set: $set, reject: None,
        },]; $($($rest)*)?)
    };
    (@rows $msg:expr; [$($out:expr,)*]; $field:ident $(, $($rest:tt)*)?) => {
        unsupported_fields!(@rows $msg; [$($out,)* $crate::resource::unsupported::Field {
            name: stringify!($field),
            set: $crate::resource::unsupported::is_set(&$msg.$field),
            reject: None,
        },]; $($($rest)*)?)
    };
}
pub(crate) use unsupported_fields;
