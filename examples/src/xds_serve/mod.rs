//! `xds-serve`'s resource file: Envoy's proto-JSON read into a [`Snapshot`] for meshwork-xds's
//! in-process ADS server, and the poller that notices when the file changes.
//!
//! The file has the shape of Envoy's own file-based config (a `DiscoveryResponse` in JSON):
//!
//! ```json
//! {"version_info": "optional label",
//!  "resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
//!                 "name": "greeter:50051", "api_listener": {...}}]}
//! ```
//!
//! Every resource is read through protobuf reflection over envoy-types' own descriptor set, so
//! any message envoy-types knows can be served, `Any` fields inside a resource (a filter's
//! `typed_config`) resolve by their `@type`, and a field that does not exist is an error, as
//! protobuf's JSON mapping says. This is for local development and interop tests, not a
//! production control plane: there is no authentication and no persistence beyond the file.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use envoy_types::pb::google::protobuf::Any;
use meshwork_xds::server::Snapshot;
use prost::Message as _;
use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
use prost_reflect::prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, Value};

/// The largest resource file read: far above a mesh's worth of config, small enough that a
/// wrong path (a disk image, `/dev/zero`) is refused instead of filling memory.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// envoy-types' descriptor set, copied by `build.rs`.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Every protobuf message envoy-types knows (Envoy's API, xDS's, gRPC's and the well-known
/// types) and the two `TypedStruct`s, decoded once.
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes are envoy-types' own build output and the TypedStructs are fixed here, so
        // a failure is a broken build, which the unit tests catch.
        let mut pool =
            DescriptorPool::decode(DESCRIPTORS).expect("envoy-types' descriptor set decodes");
        pool.add_file_descriptor_protos([
            typed_struct("xds/type/v3/typed_struct.proto", "xds.type.v3"),
            typed_struct("udpa/type/v1/typed_struct.proto", "udpa.type.v1"),
        ])
        .expect("TypedStruct descriptors");
        pool
    })
}

/// `message TypedStruct { string type_url = 1; google.protobuf.Struct value = 2; }` in
/// `package`: what a custom LB policy or filter config (gRFC A52, A39) is wrapped in, and
/// which envoy-types does not ship.
fn typed_struct(file: &str, package: &str) -> FileDescriptorProto {
    let field = |name: &str, number, kind: Type, type_name: Option<&str>| FieldDescriptorProto {
        name: Some(name.to_owned()),
        json_name: Some(if name == "type_url" { "typeUrl" } else { name }.to_owned()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        type_name: type_name.map(str::to_owned),
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some(file.to_owned()),
        package: Some(package.to_owned()),
        dependency: vec!["google/protobuf/struct.proto".to_owned()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".to_owned()),
            field: vec![
                field("type_url", 1, Type::String, None),
                field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".to_owned()),
        ..Default::default()
    }
}

/// A resource file, read: the snapshot to serve and what to say about it.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Every resource, each type named at [`version`](Self::version).
    pub snapshot: Snapshot,
    /// How many resources the file has.
    pub count: usize,
    /// The version named for every type: the file's `version_info` (if any) and a hash of
    /// the file's bytes, so that a changed file always gets a new version and the same file
    /// the same version after a restart. A server applying the snapshot keeps the version
    /// of a type whose resources did not change.
    pub version: String,
}

/// Why a resource file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{} is larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not JSON.
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    /// The file is JSON but not `{"resources": [...]}`.
    #[error("{0}")]
    Shape(&'static str),
    /// The top-level object has a member other than `resources` and `version_info`.
    #[error("unknown top-level field `{0}` (expected `resources` and optionally `version_info`)")]
    UnknownTopLevelField(String),
    /// One resource is wrong.
    #[error("resources[{index}]{}", describe(type_url.as_deref(), name.as_deref()))]
    Resource {
        /// Its position in `resources`.
        index: usize,
        /// Its `@type`, if it has one.
        type_url: Option<String>,
        /// Its name, if it has one.
        name: Option<String>,
        /// What is wrong with it.
        #[source]
        source: ResourceError,
    },
    /// Two resources of one type have the same name.
    #[error(
        "resources[{first}] and resources[{second}] are both {type_url} named {name:?}: names must be unique per type"
    )]
    Duplicate {
        /// The type URL.
        type_url: String,
        /// The name.
        name: String,
        /// The first one's position.
        first: usize,
        /// The second one's position.
        second: usize,
    },
}

fn describe(type_url: Option<&str>, name: Option<&str>) -> String {
    match (type_url, name) {
        (Some(t), Some(n)) => format!(" ({t} {n:?})"),
        (Some(t), None) => format!(" ({t})"),
        (None, Some(n)) => format!(" ({n:?})"),
        (None, None) => String::new(),
    }
}

/// What is wrong with one resource of a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// It is not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// It has no `@type` string.
    #[error("no \"@type\" (e.g. \"type.googleapis.com/envoy.config.listener.v3.Listener\")")]
    MissingType,
    /// Its `@type` names no message envoy-types knows.
    #[error("unknown @type {0:?}")]
    UnknownType(String),
    /// Its type has no name field, so it cannot be an xDS resource.
    #[error("{0} has no `name` field: not an xDS resource type")]
    NotAResource(String),
    /// It does not follow protobuf's JSON mapping for its type (a field that does not
    /// exist, a value of the wrong kind, an `Any` of an unknown `@type`, ...).
    #[error("does not match its type at `{path}`")]
    Invalid {
        /// Where in the resource, e.g. `endpoints[0].lb_endpoints[0]` (`.` for the
        /// resource itself).
        path: String,
        /// What is wrong there.
        #[source]
        source: serde_json::Error,
    },
    /// Its name is empty or missing.
    #[error("has no name (field `{0}`)")]
    NoName(&'static str),
}

/// Reads a resource file of at most [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let read = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read)?;
    // The length first, to refuse a huge file without reading it; the bounded read below
    // still holds for a file that grows meanwhile or reports no length (a device, a pipe).
    if file.metadata().map_err(read)?.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Parses the bytes of a resource file.
pub fn parse(bytes: &[u8]) -> Result<Resources, LoadError> {
    // serde_json bounds nesting (128 levels), so hostile depth is an error, not a stack
    // overflow, here and in the reflection below, which walks this value.
    let file: serde_json::Value = serde_json::from_slice(bytes).map_err(LoadError::Json)?;
    let serde_json::Value::Object(top) = file else {
        return Err(LoadError::Shape(
            "the file must be a JSON object: {\"resources\": [...]}",
        ));
    };
    if let Some(key) = top
        .keys()
        .find(|k| !matches!(k.as_str(), "resources" | "version_info" | "versionInfo"))
    {
        return Err(LoadError::UnknownTopLevelField(key.clone()));
    }
    let label = match top.get("version_info").or_else(|| top.get("versionInfo")) {
        None => None,
        Some(serde_json::Value::String(v)) => Some(v.as_str()),
        Some(_) => return Err(LoadError::Shape("`version_info` must be a string")),
    };
    let Some(serde_json::Value::Array(list)) = top.get("resources") else {
        return Err(LoadError::Shape("the file needs a `resources` array"));
    };

    let hash = format!("{:016x}", content_hash(bytes));
    let version = match label {
        Some(label) => format!("{label}-{hash}"),
        None => hash,
    };

    let mut snapshot = Snapshot::new();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (index, json) in list.iter().enumerate() {
        let (type_url, name, any) = resource(json).map_err(|source| LoadError::Resource {
            index,
            type_url: json
                .get("@type")
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            name: ["name", "cluster_name", "clusterName"]
                .iter()
                .find_map(|k| json.get(k)?.as_str())
                .map(str::to_owned),
            source,
        })?;
        if let Some(&first) = seen.get(&(type_url.clone(), name.clone())) {
            return Err(LoadError::Duplicate {
                type_url,
                name,
                first,
                second: index,
            });
        }
        seen.insert((type_url.clone(), name.clone()), index);
        snapshot.insert_raw(type_url, name, any);
    }
    let type_urls: Vec<String> = seen.keys().map(|(t, _)| t.clone()).collect();
    for type_url in type_urls {
        snapshot.set_version(type_url, version.clone());
    }
    Ok(Resources {
        snapshot,
        count: list.len(),
        version,
    })
}

/// One resource: its type URL, its name and its protobuf encoding.
fn resource(json: &serde_json::Value) -> Result<(String, String, Any), ResourceError> {
    let serde_json::Value::Object(object) = json else {
        return Err(ResourceError::NotAnObject);
    };
    let Some(serde_json::Value::String(type_url)) = object.get("@type") else {
        return Err(ResourceError::MissingType);
    };
    // As protobuf's JSON mapping resolves an Any: by the message name after the last '/'.
    let message_name = type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = descriptors()
        .get_message_by_name(message_name)
        .ok_or_else(|| ResourceError::UnknownType(type_url.clone()))?;
    let name_field = if descriptor.full_name() == "envoy.config.endpoint.v3.ClusterLoadAssignment" {
        "cluster_name"
    } else {
        "name"
    };
    let Some(field) = descriptor.get_field_by_name(name_field) else {
        return Err(ResourceError::NotAResource(
            descriptor.full_name().to_owned(),
        ));
    };
    let mut body = object.clone();
    body.remove("@type");
    let body = serde_json::Value::Object(body);
    let mut track = serde_path_to_error::Track::new();
    let message = DynamicMessage::deserialize_with_options(
        descriptor.clone(),
        serde_path_to_error::Deserializer::new(&body, &mut track),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|source| ResourceError::Invalid {
        path: track.path().to_string(),
        source,
    })?;
    let name = match message.get_field(&field).as_ref() {
        Value::String(name) if !name.is_empty() => name.clone(),
        _ => return Err(ResourceError::NoName(name_field)),
    };
    // Clients subscribe under the canonical prefix, whatever prefix the file used.
    let type_url = format!("{TYPE_URL_PREFIX}{}", descriptor.full_name());
    let any = Any {
        type_url: type_url.clone(),
        value: message.encode_to_vec(),
    };
    Ok((type_url, name, any))
}

/// Notices changes of a resource file by polling: its size and modification time on every
/// [`poll`](Self::poll), and its content whenever those change and on every
/// [`RECHECK_EVERY`](Self::RECHECK_EVERY)th poll regardless (a file system with coarse
/// timestamps can hide a same-size rewrite within one tick). A file is parsed only when
/// its content differs from the last content seen, good or bad, so a bad file is reported
/// once, not on every poll.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    stamp: Option<(u64, Option<SystemTime>)>,
    content: Option<u64>,
    last_read_error: Option<String>,
    polls: u64,
}

impl FileWatch {
    /// Every this many polls the content is hashed even if size and time look unchanged.
    pub const RECHECK_EVERY: u64 = 4;

    /// Watches `path`, whose current content is `bytes` (already loaded).
    pub fn new(path: PathBuf, bytes: &[u8]) -> Self {
        let stamp = stamp(&path);
        Self {
            path,
            stamp,
            content: Some(content_hash(bytes)),
            last_read_error: None,
            polls: 0,
        }
    }

    /// Checks the file once: `None` when it did not change (or the same error as last time
    /// repeats), else the new content parsed, or why it could not be read or parsed.
    pub fn poll(&mut self) -> Option<Result<Resources, LoadError>> {
        self.polls = self.polls.wrapping_add(1);
        let stamp = stamp(&self.path);
        if stamp == self.stamp && !self.polls.is_multiple_of(Self::RECHECK_EVERY) {
            return None;
        }
        self.stamp = stamp;
        let bytes = match read_file(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // An editor's save (rename over, truncate then write) can briefly leave no
                // file: say so once, and read whatever comes next.
                self.content = None;
                let text = meshwork_xds::ErrorChain(&e).to_string();
                if self.last_read_error.as_ref() == Some(&text) {
                    return None;
                }
                self.last_read_error = Some(text);
                return Some(Err(e));
            }
        };
        self.last_read_error = None;
        let hash = content_hash(&bytes);
        if self.content == Some(hash) {
            return None;
        }
        self.content = Some(hash);
        Some(parse(&bytes))
    }
}

fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// XXH64, whose output is fixed by its specification: the same file gets the same version
/// after a restart and across builds, so clients that reconnect see nothing new.
fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

#[cfg(test)]
mod tests;
