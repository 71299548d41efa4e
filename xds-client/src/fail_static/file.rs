//! The fail-static snapshot file: its format, the checks a file must pass before it is
//! used, and the atomic write (`docs/fail-static.md`).
//!
//! Format v1, every integer little-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | magic `MWXS` |
//! | 2 | format version, `1` |
//! | n | the header: a length-delimited protobuf `Header` (node id, server URIs, written-at time, record count), at most [`MAX_HEADER_BYTES`] |
//! | m | the records, each a length-delimited protobuf `Record` (type URL, name, version, the resource `Any`) |
//! | 8 | the length of the whole file |
//! | 32 | SHA-256 of every byte before it |
//!
//! The trailer comes last so a file cut short by a crash or a full disk fails the length
//! check before anything is parsed. Parsing never allocates from a length it has not
//! checked against the bytes that remain, and the file itself is bounded by `max_bytes`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost::encoding;

use super::trust;
use crate::resource::ResourceError;

/// The first four bytes of every snapshot file.
const MAGIC: [u8; 4] = *b"MWXS";
/// The format this code writes and the only one it reads.
const FORMAT_VERSION: u16 = 1;
/// Magic and version.
const PREAMBLE_LEN: usize = 6;
/// The SHA-256 output length.
const HASH_LEN: usize = 32;
/// Total length and hash.
const TRAILER_LEN: usize = 8 + HASH_LEN;
/// What a file holds besides its header and records.
const OVERHEAD: usize = PREAMBLE_LEN + TRAILER_LEN;
/// The largest header. It bounds the repeated `servers` field, whose empty entries cost two
/// bytes on disk but a `String` in memory each. A bootstrap with a megabyte of node id and
/// server URIs is not one anybody writes.
pub(crate) const MAX_HEADER_BYTES: usize = 1 << 20;

/// One cached resource as persisted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapshotRecord {
    /// The xDS type URL the resource was cached under.
    pub type_url: String,
    /// The resource name.
    pub name: String,
    /// The version it was ACKed with.
    pub version: String,
    /// The resource as the control plane sent it.
    pub resource: Any,
}

/// A whole snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapshotFile {
    /// The node id of the client that wrote it.
    pub node_id: String,
    /// The server URIs it was configured with, in order.
    pub servers: Vec<String>,
    /// When it was written.
    pub written_at: SystemTime,
    /// The resources.
    pub records: Vec<SnapshotRecord>,
}

/// What a file must match to be used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    /// This client's node id.
    pub node_id: &'a str,
    /// This client's server URIs, in order.
    pub servers: &'a [String],
    /// The oldest snapshot used.
    pub max_age: Duration,
    /// The time ages are measured at.
    pub now: SystemTime,
    /// The largest file read.
    pub max_bytes: usize,
}

/// Why a snapshot was not used or not written.
///
/// [`kind`](Self::kind) is a short stable label for metrics; `Display` says what happened
/// and what to do, and `source()` leads to the underlying I/O, protobuf or resource error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// There is no snapshot file (yet): one is written after the first accepted configuration.
    #[error(
        "no xDS snapshot at {}: nothing to serve until a control plane answers (one is written after the first accepted configuration)",
        path.display()
    )]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// Reading or writing the file or its directory failed.
    #[error(
        "xDS snapshot I/O failed on {}: check that the directory exists and is writable by this process",
        path.display()
    )]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is shorter or longer than its trailer says: a write cut short, or the end
    /// of the file overwritten.
    #[error(
        "xDS snapshot{} is truncated: {len} bytes, {}; ignored, it is rewritten after the next accepted configuration",
        PathSuffix(path.as_deref()),
        TrailerSays(*expected)
    )]
    Truncated {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Its length.
        len: u64,
        /// The length its trailer gives, when it is long enough to have a trailer.
        expected: Option<u64>,
    },
    /// The file or its directory could have been written by someone else: a symbolic link,
    /// another owner, or writable by group or others (a snapshot is served as
    /// configuration, and its checksum is no signature).
    #[error(
        "xDS snapshot {} is not trusted: {reason}; give the snapshot a directory of its own, e.g. a subdirectory that meshwork creates (mode 0700), owned by this user and not writable by others",
        path.display()
    )]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A write did not finish in time (a hung disk or network mount); it may still finish.
    #[error("the xDS snapshot write did not finish within {after:?} (a hung disk or mount?)")]
    TimedOut {
        /// How long was waited.
        after: Duration,
    },
    /// The contents do not match their checksum, or do not decode.
    #[error(
        "xDS snapshot is corrupt: {reason}; ignored, it is rewritten after the next accepted configuration"
    )]
    Corrupt {
        /// What is wrong.
        #[source]
        reason: CorruptReason,
    },
    /// Not a snapshot of a format this version reads: another file, or one written by a
    /// newer meshwork.
    #[error(
        "not an xDS snapshot this version reads (magic \"{}\" version {version}; this version reads \"MWXS\" version {FORMAT_VERSION}): ignored, and replaced on the next write",
        magic.escape_ascii()
    )]
    UnknownFormat {
        /// The first four bytes.
        magic: [u8; 4],
        /// The format version found.
        version: u16,
    },
    /// The snapshot was written for another node or another list of control planes.
    #[error(
        "xDS snapshot belongs to node {node_id:?} with servers {servers:?}, not to this client: ignored (the node id or xds_servers of the bootstrap changed)"
    )]
    Foreign {
        /// The node id in the file.
        node_id: String,
        /// The server URIs in the file.
        servers: Vec<String>,
    },
    /// The snapshot is older than the configured maximum age, or dated further in the future
    /// than that (a clock that jumped).
    #[error(
        "xDS snapshot is {}",
        Age { age: *age, max_age: *max_age, future: *future }
    )]
    Stale {
        /// How old it is (or how far in the future, with `future`).
        age: Duration,
        /// The maximum age.
        max_age: Duration,
        /// Whether it is dated in the future.
        future: bool,
    },
    /// The snapshot is larger than the configured maximum size: not written (the previous
    /// file is kept), or not read. Also refused: a header (node id and server URIs) over
    /// 1 MiB, and so many records that they would take more memory than the maximum size
    /// (then `bytes` is that memory).
    #[error(
        "xDS snapshot of {bytes} bytes exceeds the maximum size of {max_bytes} bytes: raise the maximum to keep snapshots of this configuration"
    )]
    TooLarge {
        /// Its size (for a write, what the file would have been).
        bytes: u64,
        /// The maximum.
        max_bytes: usize,
    },
    /// A resource of the snapshot no longer validates (the whole snapshot is refused, since
    /// half a configuration could route wrongly).
    #[error(
        "xDS snapshot resource {name:?} of type {type_url} no longer validates: snapshot ignored"
    )]
    Invalid {
        /// The resource's type URL.
        type_url: String,
        /// The resource's name.
        name: String,
        /// Why it was rejected (boxed: the error is large and this variant rare).
        #[source]
        source: Box<ResourceError>,
    },
}

impl SnapshotError {
    /// A short stable label for metrics: `"missing"`, `"io"`, `"untrusted"`, `"truncated"`, `"corrupt"`,
    /// `"unknown_format"`, `"foreign"`, `"stale"`, `"too_large"` or `"invalid"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::Io { .. } => "io",
            Self::Untrusted { .. } => "untrusted",
            Self::TimedOut { .. } => "timeout",
            Self::Truncated { .. } => "truncated",
            Self::Corrupt { .. } => "corrupt",
            Self::UnknownFormat { .. } => "unknown_format",
            Self::Foreign { .. } => "foreign",
            Self::Stale { .. } => "stale",
            Self::TooLarge { .. } => "too_large",
            Self::Invalid { .. } => "invalid",
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn malformed(what: &'static str) -> Self {
        Self::Corrupt {
            reason: CorruptReason::Malformed { what },
        }
    }
}

/// Why a snapshot is [`SnapshotError::Corrupt`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The SHA-256 in the trailer does not match the contents.
    #[error("its SHA-256 does not match its contents")]
    Checksum,
    /// The header or a record is not valid protobuf.
    #[error("its contents do not decode")]
    Decode(#[source] prost::DecodeError),
    /// The contents decode but do not make a snapshot.
    #[error("{what}")]
    Malformed {
        /// What is wrong.
        what: &'static str,
    },
}

struct PathSuffix<'a>(Option<&'a Path>);

impl fmt::Display for PathSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, " {}", path.display()),
            None => Ok(()),
        }
    }
}

struct TrailerSays(Option<u64>);

impl fmt::Display for TrailerSays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(expected) => write!(f, "its trailer says {expected}"),
            None => write!(f, "shorter than any snapshot ({OVERHEAD} bytes)"),
        }
    }
}

struct Age {
    age: Duration,
    max_age: Duration,
    future: bool,
}

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            age,
            max_age,
            future,
        } = self;
        if *future {
            write!(
                f,
                "dated {age:?} in the future, more than the maximum age {max_age:?}: ignored (check this host's clock)"
            )
        } else {
            write!(
                f,
                "{age:?} old, more than the maximum age {max_age:?}: ignored (raise the maximum age to use older snapshots)"
            )
        }
    }
}

/// The header, as encoded.
#[derive(Clone, PartialEq, Message)]
struct Header {
    #[prost(string, tag = "1")]
    node_id: String,
    #[prost(string, repeated, tag = "2")]
    servers: Vec<String>,
    /// Seconds since the Unix epoch (negative before it), as `google.protobuf.Timestamp`.
    #[prost(int64, tag = "3")]
    written_at_seconds: i64,
    #[prost(uint32, tag = "4")]
    written_at_nanos: u32,
    #[prost(uint64, tag = "5")]
    record_count: u64,
}

/// A record, as decoded. Encoding goes field by field from the borrowed [`SnapshotRecord`]
/// (see [`encode_record`]) so a write never copies the cache; its tags are these.
#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    version: String,
    #[prost(message, optional, tag = "4")]
    resource: Option<Any>,
}

fn record_fields_len(r: &SnapshotRecord) -> usize {
    encoding::string::encoded_len(1, &r.type_url)
        + encoding::string::encoded_len(2, &r.name)
        + encoding::string::encoded_len(3, &r.version)
        + encoding::message::encoded_len(4, &r.resource)
}

fn encode_record(r: &SnapshotRecord, fields_len: usize, buf: &mut Vec<u8>) {
    encoding::encode_varint(fields_len as u64, buf);
    encoding::string::encode(1, &r.type_url, buf);
    encoding::string::encode(2, &r.name, buf);
    encoding::string::encode(3, &r.version, buf);
    encoding::message::encode(4, &r.resource, buf);
}

/// The most records a file of `max_bytes` may hold: their structs alone then take no more
/// memory than the file's bytes, whatever the records contain.
fn max_records(max_bytes: usize) -> usize {
    max_bytes / std::mem::size_of::<SnapshotRecord>()
}

/// The file's name in the directory for this node and server list: a hash of both, e.g.
/// `"xds-<16 hex>.mwxs"`.
pub(crate) fn file_name(node_id: &str, servers: &[String]) -> String {
    // FNV-1a over length-prefixed fields: stable across builds and platforms. A collision
    // only makes two clients share a name; the node id and server check still refuses the
    // other's file.
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut eat = |bytes: &[u8]| {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(node_id.as_bytes());
    for server in servers {
        eat(server.as_bytes());
    }
    format!("xds-{hash:016x}.mwxs")
}

/// SHA-256 from the workspace's rustls crypto provider (ring, aws-lc-rs or FIPS alike),
/// found through a TLS 1.3 suite that hashes with it.
fn sha256() -> Result<&'static dyn rustls::crypto::hash::Hash, SnapshotError> {
    crate::crypto::provider()
        .cipher_suites
        .iter()
        .find_map(|suite| match suite {
            rustls::SupportedCipherSuite::Tls13(s)
                if s.common.hash_provider.algorithm()
                    == rustls::crypto::hash::HashAlgorithm::SHA256 =>
            {
                Some(s.common.hash_provider)
            }
            _ => None,
        })
        // Every provider meshwork builds offers TLS13_AES_128_GCM_SHA256.
        .ok_or_else(|| {
            SnapshotError::io(
                Path::new(""),
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the TLS crypto provider offers no SHA-256",
                ),
            )
        })
}

/// Serialise; `Err(TooLarge)` when the result would exceed `max_bytes`.
pub(crate) fn encode(file: &SnapshotFile, max_bytes: usize) -> Result<Vec<u8>, SnapshotError> {
    let (seconds, nanos) = match file.written_at.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos()),
        // Before the epoch: Timestamp's convention, whole seconds down, nanos up.
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).ok().map(|s| -s);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs.and_then(|s| s.checked_sub(1)), 1_000_000_000 - n),
            }
        }
    };
    let header = Header {
        node_id: file.node_id.clone(),
        servers: file.servers.clone(),
        // A time beyond ±292 billion years is not a clock reading; the epoch is as wrong.
        written_at_seconds: seconds.unwrap_or_default(),
        written_at_nanos: nanos,
        record_count: file.records.len() as u64,
    };
    let header_len = header.encoded_len();
    let fields_lens: Vec<usize> = file.records.iter().map(record_fields_len).collect();
    let total = fields_lens.iter().fold(
        (OVERHEAD + encoding::encoded_len_varint(header_len as u64)) as u64 + header_len as u64,
        |sum, &len| sum.saturating_add((encoding::encoded_len_varint(len as u64) + len) as u64),
    );
    let too_large = |bytes: u64, max_bytes| Err(SnapshotError::TooLarge { bytes, max_bytes });
    if total > max_bytes as u64 {
        return too_large(total, max_bytes);
    }
    if header_len > MAX_HEADER_BYTES {
        return too_large(header_len as u64, MAX_HEADER_BYTES);
    }
    if file.records.len() > max_records(max_bytes) {
        let in_memory = file.records.len() * std::mem::size_of::<SnapshotRecord>();
        return too_large(in_memory as u64, max_bytes);
    }
    let hash = sha256()?;
    // `total` is at most `max_bytes`, so it fits.
    let mut buf = Vec::with_capacity(total as usize);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
        .encode_length_delimited(&mut buf)
        .map_err(|_| SnapshotError::TooLarge {
            bytes: total,
            max_bytes,
        })?;
    for (record, &len) in file.records.iter().zip(&fields_lens) {
        encode_record(record, len, &mut buf);
    }
    seal_into(hash, &mut buf);
    debug_assert_eq!(buf.len() as u64, total);
    Ok(buf)
}

/// Appends the trailer.
fn seal_into(hash: &dyn rustls::crypto::hash::Hash, buf: &mut Vec<u8>) {
    let total = (buf.len() + TRAILER_LEN) as u64;
    buf.extend_from_slice(&total.to_le_bytes());
    let digest = hash.hash(buf);
    buf.extend_from_slice(digest.as_ref());
}

/// Parse and check, in this order: length/trailer (Truncated), checksum (Corrupt), magic and
/// format version (UnknownFormat), protobuf decode (Corrupt), node id + servers (Foreign),
/// age (Stale; a written_at later than now + max_age is Stale too, a little in the future is
/// age 0). A buffer over `max_bytes` is TooLarge before anything else.
pub(crate) fn decode(bytes: &[u8], expected: &Expected<'_>) -> Result<SnapshotFile, SnapshotError> {
    let len = bytes.len();
    if len > expected.max_bytes {
        return Err(SnapshotError::TooLarge {
            bytes: len as u64,
            max_bytes: expected.max_bytes,
        });
    }
    let Some(hashed_len) = len.checked_sub(HASH_LEN).filter(|_| len >= OVERHEAD) else {
        return Err(SnapshotError::Truncated {
            path: None,
            len: len as u64,
            expected: None,
        });
    };
    let (hashed, digest) = bytes.split_at(hashed_len);
    let (before_len, len_field) = hashed.split_at(hashed_len - 8);
    let declared = u64::from_le_bytes(len_field.try_into().unwrap_or_default());
    if declared != len as u64 {
        return Err(SnapshotError::Truncated {
            path: None,
            len: len as u64,
            expected: Some(declared),
        });
    }
    if sha256()?.hash(hashed).as_ref() != digest {
        return Err(SnapshotError::Corrupt {
            reason: CorruptReason::Checksum,
        });
    }
    let (preamble, body) = before_len.split_at(PREAMBLE_LEN);
    let magic: [u8; 4] = preamble[..4].try_into().unwrap_or_default();
    let version = u16::from_le_bytes(preamble[4..].try_into().unwrap_or_default());
    if magic != MAGIC || version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownFormat { magic, version });
    }
    let file = decode_body(body, expected.max_bytes)?;
    if file.node_id != expected.node_id || file.servers != expected.servers {
        return Err(SnapshotError::Foreign {
            node_id: file.node_id,
            servers: file.servers,
        });
    }
    match expected.now.duration_since(file.written_at) {
        Ok(age) if age > expected.max_age => Err(SnapshotError::Stale {
            age,
            max_age: expected.max_age,
            future: false,
        }),
        Err(e) if e.duration() > expected.max_age => Err(SnapshotError::Stale {
            age: e.duration(),
            max_age: expected.max_age,
            future: true,
        }),
        _ => Ok(file),
    }
}

/// Reads one length-delimited message of at most `limit` bytes.
fn message<M: Message + Default>(
    body: &mut &[u8],
    limit: usize,
    too_long: &'static str,
) -> Result<M, SnapshotError> {
    let corrupt = |e| SnapshotError::Corrupt {
        reason: CorruptReason::Decode(e),
    };
    let len = encoding::decode_varint(body).map_err(corrupt)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= body.len())
        .ok_or_else(|| SnapshotError::malformed("a message runs past the end of the file"))?;
    if len > limit {
        return Err(SnapshotError::malformed(too_long));
    }
    let (msg, rest) = body.split_at(len);
    *body = rest;
    M::decode(msg).map_err(corrupt)
}

fn decode_body(mut body: &[u8], max_bytes: usize) -> Result<SnapshotFile, SnapshotError> {
    let header: Header = message(
        &mut body,
        MAX_HEADER_BYTES,
        "the header is larger than 1 MiB",
    )?;
    let written_at = (header.written_at_nanos < 1_000_000_000)
        .then(|| {
            let nanos = Duration::from_nanos(header.written_at_nanos.into());
            let secs = Duration::from_secs(header.written_at_seconds.unsigned_abs());
            if header.written_at_seconds >= 0 {
                UNIX_EPOCH.checked_add(secs)?.checked_add(nanos)
            } else {
                UNIX_EPOCH.checked_sub(secs)?.checked_add(nanos)
            }
        })
        .flatten()
        .ok_or_else(|| SnapshotError::malformed("the written-at time is out of range"))?;
    // Every record takes at least its one-byte length, so the count is bounded by the bytes
    // left before anything is allocated for it.
    let count = usize::try_from(header.record_count)
        .ok()
        .filter(|&c| c <= body.len() && c <= max_records(max_bytes))
        .ok_or_else(|| SnapshotError::malformed("the record count is larger than the file"))?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let record: Record = message(&mut body, usize::MAX, "")?;
        let resource = record
            .resource
            .ok_or_else(|| SnapshotError::malformed("a record has no resource"))?;
        records.push(SnapshotRecord {
            type_url: record.type_url,
            name: record.name,
            version: record.version,
            resource,
        });
    }
    if !body.is_empty() {
        return Err(SnapshotError::malformed(
            "there are bytes after the last record",
        ));
    }
    Ok(SnapshotFile {
        node_id: header.node_id,
        servers: header.servers,
        written_at,
        records,
    })
}

/// A trust check's refusal of `path` as a [`SnapshotError`].
fn refused(path: &Path, refused: trust::Refused) -> SnapshotError {
    match refused {
        trust::Refused::Io(source) => SnapshotError::io(path, source),
        trust::Refused::Untrusted(reason) => SnapshotError::Untrusted {
            path: path.to_owned(),
            reason,
        },
    }
}

/// Read `dir/file_name(..)`: Missing when absent; never reads more than max_bytes + 1 (a
/// bigger file is TooLarge without being read whole); then decode.
pub(crate) fn read(dir: &Path, expected: &Expected<'_>) -> Result<SnapshotFile, SnapshotError> {
    let path = dir.join(file_name(expected.node_id, expected.servers));
    let with_path = |e: SnapshotError| match e {
        SnapshotError::Truncated {
            path: None,
            len,
            expected,
        } => SnapshotError::Truncated {
            path: Some(path.clone()),
            len,
            expected,
        },
        e => e,
    };
    // Opened without following a link and without blocking on a FIFO, then checked through
    // the open handle, so what is checked is what is read.
    let Some(file) = trust::open(&path).map_err(|e| refused(&path, e))? else {
        return Err(SnapshotError::Missing { path });
    };
    let meta = file.metadata().map_err(|e| SnapshotError::io(&path, e))?;
    trust::check_file(&meta).map_err(|e| refused(&path, e))?;
    trust::check_dir(dir).map_err(|e| refused(dir, e))?;
    if meta.len() > expected.max_bytes as u64 {
        return Err(SnapshotError::TooLarge {
            bytes: meta.len(),
            max_bytes: expected.max_bytes,
        });
    }
    let mut bytes = Vec::new();
    // One byte over the limit tells a file that grew since the check from one at the limit.
    file.take(expected.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SnapshotError::io(&path, e))?;
    decode(&bytes, expected).map_err(with_path)
}

/// Write atomically: encode (TooLarge -> nothing touched), create `dir` if missing (0700 on
/// unix), write a uniquely named `*.tmp` in `dir` (0600), fsync it, rename over the file,
/// fsync the directory. Any failure leaves the previous file intact and removes the tmp.
/// Returns the bytes written. Blocking (the caller runs it in spawn_blocking).
pub(crate) fn write(
    dir: &Path,
    file: &SnapshotFile,
    max_bytes: usize,
) -> Result<u64, SnapshotError> {
    let bytes = encode(file, max_bytes)?;
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| SnapshotError::io(dir, e))?;
    // Refused here too, so an operator hears of a directory the next start would not
    // trust while the control plane is still up.
    trust::check_dir(dir).map_err(|e| refused(dir, e))?;
    let name = file_name(&file.node_id, &file.servers);
    let path = dir.join(&name);
    let tmp = TmpFile::write(dir, &name, &bytes)?;
    fs::rename(&tmp.0, &path).map_err(|e| SnapshotError::io(&path, e))?;
    tmp.forget();
    sync_dir(dir)?;
    remove_stale_tmps(dir, &name, SystemTime::now());
    Ok(bytes.len() as u64)
}

/// How old a tmp file of ours must be before a write removes it: far longer than any write
/// takes, so a tmp being written by another process of the same node is left alone.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
/// The most directory entries one write looks at for stale tmp files.
const MAX_TMP_SCAN: usize = 4096;

/// Removes the tmp files of `name` that crashed writers left behind (each up to the size
/// limit; a crash loop would otherwise fill the disk). Best effort: a tmp is never read, so
/// one left is only wasted space.
fn remove_stale_tmps(dir: &Path, name: &str, now: SystemTime) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.take(MAX_TMP_SCAN).flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !(file_name.starts_with(&prefix) && file_name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry
            .metadata()
            .ok()
            .filter(fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes the rename durable: without it a power cut can bring back the old directory entry.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), SnapshotError> {
    // Windows has no directory handle to flush; its rename is as durable as it gets.
    Ok(())
}

/// A temporary file next to the snapshot, written, synced and closed; removed on drop
/// unless renamed.
struct TmpFile(PathBuf);

impl TmpFile {
    fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<Self, SnapshotError> {
        // Unique within the process by the counter and across processes by the pid, so two
        // clients of one node writing at once never share a tmp file; `create_new` refuses
        // anything that exists anyway (a leftover of a crashed process with a reused pid).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut attempt = 0;
        let (tmp, mut file) = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
            match options.open(&path) {
                Ok(file) => break (Self(path), file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(SnapshotError::io(&path, e)),
            }
        };
        // The file is closed when this returns: Windows cannot rename an open file.
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| SnapshotError::io(&tmp.0, e))?;
        Ok(tmp)
    }

    /// After the rename: nothing left to remove.
    fn forget(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            // Best effort: a leftover tmp is never read, only wasted space.
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// Entry points for the `snapshot_file` fuzz target (`fuzz/`), which cannot reach the
/// crate-private API. Not part of the public API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The node id of the files the fuzz target decodes.
    pub const NODE_ID: &str = "fuzz-node";
    /// The server URI of the files the fuzz target decodes.
    pub const SERVER: &str = "xds.example:443";
    /// The size limit the fuzz target decodes with.
    pub const MAX_BYTES: usize = 1 << 20;

    fn expected(servers: &[String]) -> Expected<'_> {
        Expected {
            node_id: NODE_ID,
            servers,
            max_age: Duration::from_secs(1 << 40),
            now: UNIX_EPOCH + Duration::from_secs(1 << 40),
            max_bytes: MAX_BYTES,
        }
    }

    /// Decodes `bytes` as a file of [`NODE_ID`] and [`SERVER`] and, when it is one, encodes
    /// it again.
    pub fn decode_and_encode(bytes: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        let servers = [SERVER.to_owned()];
        let file = decode(bytes, &expected(&servers))?;
        encode(&file, MAX_BYTES)
    }

    /// Frames `body` (a header and records) as a file: magic, version, body, trailer.
    pub fn seal(body: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(body.len() + OVERHEAD);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(body);
        if let Ok(hash) = sha256() {
            seal_into(hash, &mut buf);
        }
        buf
    }

    /// A valid file with `records` records `(type URL, name, version, Any value)`.
    pub fn sample(records: &[(&str, &str, &str, &[u8])]) -> Vec<u8> {
        let file = SnapshotFile {
            node_id: NODE_ID.to_owned(),
            servers: vec![SERVER.to_owned()],
            written_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            records: records
                .iter()
                .map(|&(type_url, name, version, value)| record(type_url, name, version, value))
                .collect(),
        };
        encode(&file, MAX_BYTES).unwrap_or_default()
    }

    /// A record whose resource is of its own type (as the cache holds them).
    pub(crate) fn record(
        type_url: &str,
        name: &str,
        version: &str,
        value: &[u8],
    ) -> SnapshotRecord {
        SnapshotRecord {
            type_url: type_url.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
            resource: Any {
                type_url: type_url.to_owned(),
                value: value.to_vec(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
