use std::error::Error as _;

use proptest::prelude::*;

use super::fuzzing::record;
use super::*;

const MAX: usize = 1 << 20;
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn servers() -> Vec<String> {
    vec![
        "xds.example:443".to_owned(),
        "xds-backup.example:443".to_owned(),
    ]
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn snapshot(version: &str) -> SnapshotFile {
    SnapshotFile {
        node_id: "node-1".to_owned(),
        servers: servers(),
        written_at: at(1_800_000_000) + Duration::from_nanos(123_456_789),
        records: vec![
            record(LISTENER, "greeter:50051", version, b"\x0a\x0dgreeter:50051"),
            record(CLUSTER, "greeter", version, b"\x0a\x07greeter"),
            record(CLUSTER, "empty", "", b""),
        ],
    }
}

/// What `snapshot()` must match, an hour after it was written.
fn expected(servers: &[String]) -> Expected<'_> {
    Expected {
        node_id: "node-1",
        servers,
        max_age: Duration::from_secs(24 * 3600),
        now: at(1_800_003_600),
        max_bytes: MAX,
    }
}

/// Replaces the preamble and recomputes the trailer, as a writer of another format would.
fn reframe(bytes: &[u8], magic: [u8; 4], version: u16) -> Vec<u8> {
    let mut buf = magic.to_vec();
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&bytes[PREAMBLE_LEN..bytes.len() - TRAILER_LEN]);
    seal_into(sha256().unwrap(), &mut buf);
    buf
}

/// The entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn sha256_is_the_providers_and_is_sha256() {
    let digest = sha256().unwrap().hash(b"abc");
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn file_name_depends_on_node_and_servers_only() {
    let name = file_name("node-1", &servers());
    assert!(
        name.starts_with("xds-") && name.ends_with(".mwxs"),
        "{name}"
    );
    assert_eq!(name.len(), "xds-".len() + 16 + ".mwxs".len());
    assert_eq!(name, file_name("node-1", &servers()));
    assert_ne!(name, file_name("node-2", &servers()));
    let mut reversed = servers();
    reversed.reverse();
    assert_ne!(name, file_name("node-1", &reversed));
    // Length prefixes: moving a byte from the node id into the first server changes it.
    assert_ne!(
        file_name("ab", &["c".to_owned()]),
        file_name("a", &["bc".to_owned()])
    );
}

#[test]
fn round_trip_through_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snapshots").join("nested");
    let file = snapshot("v1");
    let written = write(&dir, &file, MAX).unwrap();
    let path = dir.join(file_name("node-1", &servers()));
    assert_eq!(written, fs::metadata(&path).unwrap().len());
    assert_eq!(entries(&dir), [file_name("node-1", &servers())]);
    let servers = servers();
    assert_eq!(read(&dir, &expected(&servers)).unwrap(), file);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
}

#[test]
fn encoding_is_deterministic_and_starts_with_the_magic() {
    let a = encode(&snapshot("v1"), MAX).unwrap();
    assert_eq!(a, encode(&snapshot("v1"), MAX).unwrap());
    assert_eq!(&a[..6], b"MWXS\x01\x00");
    let len = a.len();
    assert_eq!(a[len - 40..len - 32], (len as u64).to_le_bytes());
}

#[test]
fn write_replaces_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &snapshot("v1"), MAX).unwrap();
    let mut newer = snapshot("v2");
    newer.records.truncate(1);
    write(tmp.path(), &newer, MAX).unwrap();
    let servers = servers();
    assert_eq!(read(tmp.path(), &expected(&servers)).unwrap(), newer);
    assert_eq!(entries(tmp.path()).len(), 1, "no tmp file left");
}

#[test]
fn missing_file_is_missing_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = servers();
    let err = read(tmp.path(), &expected(&servers)).unwrap_err();
    let SnapshotError::Missing { path } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*path, tmp.path().join(file_name("node-1", &servers)));
    assert_eq!(err.kind(), "missing");
    // A directory that does not exist either.
    let err = read(&tmp.path().join("absent"), &expected(&servers)).unwrap_err();
    assert!(matches!(err, SnapshotError::Missing { .. }), "{err:?}");
}

#[test]
fn flipped_bytes_are_corrupt_or_truncated() {
    let bytes = encode(&snapshot("v1"), MAX).unwrap();
    let servers = servers();
    let len = bytes.len();
    for i in 0..len {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x40;
        let err = decode(&flipped, &expected(&servers)).unwrap_err();
        if (len - 40..len - 32).contains(&i) {
            // The length field.
            assert!(
                matches!(
                    err,
                    SnapshotError::Truncated {
                        expected: Some(_),
                        ..
                    }
                ),
                "{i}: {err:?}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    SnapshotError::Corrupt {
                        reason: CorruptReason::Checksum
                    }
                ),
                "{i}: {err:?}"
            );
            assert_eq!(err.kind(), "corrupt");
        }
    }
}

#[test]
fn a_cut_file_is_truncated_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = servers();
    let len = write(tmp.path(), &snapshot("v1"), MAX).unwrap() as usize;
    let path = tmp.path().join(file_name("node-1", &servers));
    let whole = fs::read(&path).unwrap();
    for cut in [0, 1, 6, OVERHEAD - 1, OVERHEAD, len / 2, len - 1] {
        fs::write(&path, &whole[..cut]).unwrap();
        let err = read(tmp.path(), &expected(&servers)).unwrap_err();
        let SnapshotError::Truncated {
            path: Some(p),
            len: got,
            expected,
        } = &err
        else {
            panic!("{cut}: {err:?}")
        };
        assert_eq!((p, *got), (&path, cut as u64));
        assert_eq!(expected.is_none(), cut < OVERHEAD, "{cut}: {err:?}");
        assert_eq!(err.kind(), "truncated");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    // Bytes appended after a good file.
    let mut longer = whole.clone();
    longer.push(0);
    assert!(matches!(
        decode(&longer, &expected(&servers)),
        Err(SnapshotError::Truncated { .. })
    ));
}

#[test]
fn other_magic_or_version_is_unknown_format() {
    let bytes = encode(&snapshot("v1"), MAX).unwrap();
    let servers = servers();
    assert_eq!(
        decode(&reframe(&bytes, MAGIC, FORMAT_VERSION), &expected(&servers)).unwrap(),
        snapshot("v1")
    );
    for (magic, version) in [(*b"MWXS", 2), (*b"MWXS", 0), (*b"ELF\x7f", 1)] {
        let err = decode(&reframe(&bytes, magic, version), &expected(&servers)).unwrap_err();
        let SnapshotError::UnknownFormat {
            magic: m,
            version: v,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!((m, v), (magic, version));
    }
}

#[test]
fn another_node_or_server_list_is_foreign() {
    let bytes = encode(&snapshot("v1"), MAX).unwrap();
    let servers = servers();
    let other_node = Expected {
        node_id: "node-2",
        ..expected(&servers)
    };
    let mut reversed = servers.clone();
    reversed.reverse();
    let one = vec![servers[0].clone()];
    for exp in [
        other_node,
        expected(&reversed),
        expected(&one),
        expected(&[]),
    ] {
        let err = decode(&bytes, &exp).unwrap_err();
        let SnapshotError::Foreign {
            node_id,
            servers: found,
        } = &err
        else {
            panic!("{err:?}")
        };
        // What the file says, not what was expected.
        assert_eq!((node_id.as_str(), found), ("node-1", &servers));
        assert_eq!(err.kind(), "foreign");
    }
}

#[test]
fn age_is_checked_both_ways() {
    let bytes = encode(&snapshot("v1"), MAX).unwrap();
    let servers = servers();
    let written = snapshot("v1").written_at;
    let day = Duration::from_secs(24 * 3600);
    let at_now = |now| Expected {
        now,
        ..expected(&servers)
    };
    // Exactly the maximum age, and a little in the future (a clock set back): used.
    assert!(decode(&bytes, &at_now(written + day)).is_ok());
    assert!(decode(&bytes, &at_now(written - Duration::from_secs(5))).is_ok());
    assert!(decode(&bytes, &at_now(written - day)).is_ok());
    let err = decode(&bytes, &at_now(written + day + Duration::from_nanos(1))).unwrap_err();
    let SnapshotError::Stale {
        age,
        max_age,
        future,
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (age, max_age, future),
        (day + Duration::from_nanos(1), day, false)
    );
    let err = decode(&bytes, &at_now(written - day - Duration::from_secs(1))).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Stale { future: true, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), "stale");
}

#[test]
fn oversize_write_is_refused_and_the_old_file_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = servers();
    let old = snapshot("v1");
    let len = write(tmp.path(), &old, MAX).unwrap();
    let mut big = snapshot("v2");
    big.records.push(record(CLUSTER, "big", "v2", &[7; 4096]));
    let err = write(tmp.path(), &big, 4096).unwrap_err();
    let SnapshotError::TooLarge { bytes, max_bytes } = err else {
        panic!("{err:?}")
    };
    assert!(bytes > 4096, "{bytes}");
    assert_eq!(max_bytes, 4096);
    assert_eq!(encode(&big, MAX).unwrap().len() as u64, bytes);
    assert_eq!(read(tmp.path(), &expected(&servers)).unwrap(), old);
    assert_eq!(entries(tmp.path()).len(), 1, "no tmp file left");
    // A file at exactly the limit is written and read.
    assert!(write(tmp.path(), &old, len as usize).is_ok());
    assert!(
        read(
            tmp.path(),
            &Expected {
                max_bytes: len as usize,
                ..expected(&servers)
            }
        )
        .is_ok()
    );
}

#[test]
fn oversize_file_is_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = servers();
    let len = write(tmp.path(), &snapshot("v1"), MAX).unwrap();
    let small = Expected {
        max_bytes: len as usize - 1,
        ..expected(&servers)
    };
    let err = read(tmp.path(), &small).unwrap_err();
    assert!(
        matches!(err, SnapshotError::TooLarge { bytes, max_bytes } if bytes == len && max_bytes == len as usize - 1),
        "{err:?}"
    );
    let bytes = encode(&snapshot("v1"), MAX).unwrap();
    assert!(matches!(
        decode(&bytes, &small),
        Err(SnapshotError::TooLarge { .. })
    ));
    assert_eq!(err.kind(), "too_large");
}

#[test]
fn too_many_records_for_the_limit_are_refused() {
    let mut file = snapshot("v1");
    let limit = 64 * std::mem::size_of::<SnapshotRecord>();
    file.records = vec![record("", "", "", b""); 65];
    let err = encode(&file, limit).unwrap_err();
    assert!(
        matches!(err, SnapshotError::TooLarge { bytes, max_bytes } if bytes > limit as u64 && max_bytes == limit),
        "{err:?}"
    );
    file.records.truncate(64);
    assert!(encode(&file, limit).is_ok());
}

#[test]
fn a_tmp_left_by_a_crash_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = servers();
    let name = file_name("node-1", &servers);
    // A crash after the tmp was written, before the rename: a whole newer file, and one cut
    // short.
    let newer = encode(&snapshot("v2"), MAX).unwrap();
    fs::write(tmp.path().join(format!(".{name}.1-0.tmp")), &newer).unwrap();
    fs::write(tmp.path().join(format!(".{name}.1-1.tmp")), &newer[..10]).unwrap();
    assert!(matches!(
        read(tmp.path(), &expected(&servers)),
        Err(SnapshotError::Missing { .. })
    ));
    write(tmp.path(), &snapshot("v1"), MAX).unwrap();
    assert_eq!(
        read(tmp.path(), &expected(&servers)).unwrap(),
        snapshot("v1")
    );
    // Our own pid and counter values: `create_new` moves on to a free name.
    let pid = std::process::id();
    for n in 0..4 {
        fs::write(tmp.path().join(format!(".{name}.{pid}-{n}.tmp")), b"junk").unwrap();
    }
    write(tmp.path(), &snapshot("v3"), MAX).unwrap();
    assert_eq!(
        read(tmp.path(), &expected(&servers)).unwrap(),
        snapshot("v3")
    );
    assert_eq!(
        fs::read(tmp.path().join(format!(".{name}.1-0.tmp"))).unwrap(),
        newer,
        "fresh leftovers are not touched: another process may be writing them"
    );
}

#[test]
fn a_write_removes_old_tmps_of_its_file_only() {
    let tmp = tempfile::tempdir().unwrap();
    let name = file_name("node-1", &servers());
    let other = file_name("node-2", &servers());
    let long_ago = SystemTime::now() - STALE_TMP_AGE - Duration::from_secs(60);
    let recently = SystemTime::now() - STALE_TMP_AGE + Duration::from_secs(60);
    let put = |file: String, modified: SystemTime| {
        let path = tmp.path().join(file);
        fs::write(&path, b"partial").unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    };
    put(format!(".{name}.7-0.tmp"), long_ago);
    put(format!(".{name}.7-1.tmp"), recently);
    put(format!(".{other}.7-0.tmp"), long_ago);
    put(format!("{name}.bak"), long_ago);
    write(tmp.path(), &snapshot("v1"), MAX).unwrap();
    let mut kept = vec![
        format!(".{name}.7-1.tmp"),
        format!(".{other}.7-0.tmp"),
        name.clone(),
        format!("{name}.bak"),
    ];
    kept.sort();
    assert_eq!(entries(tmp.path()), kept);
}

#[test]
fn unwritable_directory_is_io_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where the directory should be (root ignores permission bits, so this
    // is the failure every user gets).
    let not_dir = tmp.path().join("file");
    fs::write(&not_dir, b"x").unwrap();
    for dir in [not_dir.clone(), not_dir.join("sub")] {
        let err = write(&dir, &snapshot("v1"), MAX).unwrap_err();
        let SnapshotError::Io { path, source } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*path, dir);
        assert!(err.source().is_some());
        assert!(!source.to_string().is_empty());
        assert_eq!(err.kind(), "io");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(fs::read(&not_dir).unwrap(), b"x");
}

#[test]
fn failed_rename_keeps_the_directory_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = servers();
    let name = file_name("node-1", &servers);
    // A non-empty directory squatting on the name: the rename fails.
    fs::create_dir(tmp.path().join(&name)).unwrap();
    fs::write(tmp.path().join(&name).join("keep"), b"x").unwrap();
    let err = write(tmp.path(), &snapshot("v1"), MAX).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Io { path, .. } if *path == tmp.path().join(&name)),
        "{err:?}"
    );
    assert_eq!(entries(tmp.path()), [name], "the tmp is removed");
    // And reading it is an Io error, not an attempt to read a directory.
    let err = read(tmp.path(), &expected(&servers)).unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }), "{err:?}");
}

#[test]
fn body_errors_are_corrupt_with_their_cause() {
    let servers = servers();
    let seal = |body: &[u8]| fuzzing::seal(body);
    let header = |count: u64, nanos: u32| {
        Header {
            node_id: "node-1".to_owned(),
            servers: servers.clone(),
            written_at_seconds: 1_800_000_000,
            written_at_nanos: nanos,
            record_count: count,
        }
        .encode_length_delimited_to_vec()
    };
    let reason = |bytes: &[u8]| match decode(bytes, &expected(&servers)) {
        Err(SnapshotError::Corrupt { reason }) => reason,
        other => panic!("{other:?}"),
    };
    // Not protobuf: a field with wire type 7.
    let r = reason(&seal(&[0x02, 0x0f, 0x00]));
    assert!(matches!(r, CorruptReason::Decode(_)), "{r:?}");
    let err = SnapshotError::Corrupt { reason: r };
    assert!(
        err.source()
            .and_then(|r| r.source())
            .is_some_and(|e| e.is::<prost::DecodeError>()),
        "the chain reaches the protobuf error"
    );
    // A header length past the end; a record count the bytes cannot hold.
    assert!(matches!(
        reason(&seal(&[0x7f, 0x00])),
        CorruptReason::Malformed { .. }
    ));
    let mut body = header(u64::MAX, 0);
    body.push(0);
    assert!(matches!(
        reason(&seal(&body)),
        CorruptReason::Malformed { .. }
    ));
    // Nanoseconds out of range.
    assert!(matches!(
        reason(&seal(&header(0, 1_000_000_000))),
        CorruptReason::Malformed { .. }
    ));
    // A record without its resource.
    let mut body = header(1, 0);
    body.extend(
        Record {
            type_url: CLUSTER.to_owned(),
            name: "c".to_owned(),
            version: "1".to_owned(),
            resource: None,
        }
        .encode_length_delimited_to_vec(),
    );
    assert!(matches!(
        reason(&seal(&body)),
        CorruptReason::Malformed { .. }
    ));
    // Bytes after the last record.
    let mut body = header(0, 0);
    body.push(0);
    assert!(matches!(
        reason(&seal(&body)),
        CorruptReason::Malformed { .. }
    ));
    // The empty header: a valid, empty snapshot of nobody's, refused as foreign.
    assert!(matches!(
        decode(&seal(&[0x00]), &expected(&servers)),
        Err(SnapshotError::Foreign { .. })
    ));
}

#[test]
fn oversize_header_is_refused_both_ways() {
    let mut file = snapshot("v1");
    file.node_id = "n".repeat(MAX_HEADER_BYTES);
    let err = encode(&file, 4 * MAX_HEADER_BYTES).unwrap_err();
    assert!(
        matches!(err, SnapshotError::TooLarge { bytes, max_bytes: MAX_HEADER_BYTES } if bytes > MAX_HEADER_BYTES as u64),
        "{err:?}"
    );
    let header = Header {
        node_id: file.node_id.clone(),
        ..Header::default()
    };
    let body = header.encode_length_delimited_to_vec();
    let servers = servers();
    let err = decode(
        &fuzzing::seal(&body),
        &Expected {
            max_bytes: 4 * MAX_HEADER_BYTES,
            ..expected(&servers)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Corrupt {
                reason: CorruptReason::Malformed { .. }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn times_before_the_epoch_round_trip() {
    let servers = servers();
    for written_at in [
        UNIX_EPOCH - Duration::from_nanos(1),
        UNIX_EPOCH - Duration::from_secs(3),
        UNIX_EPOCH - Duration::new(3, 500),
        UNIX_EPOCH,
    ] {
        let file = SnapshotFile {
            written_at,
            ..snapshot("v1")
        };
        let exp = Expected {
            now: written_at,
            ..expected(&servers)
        };
        assert_eq!(decode(&encode(&file, MAX).unwrap(), &exp).unwrap(), file);
    }
}

#[test]
fn every_kind_has_its_label_and_a_message() {
    let errors = [
        SnapshotError::Missing {
            path: PathBuf::from("/x"),
        },
        SnapshotError::io(Path::new("/x"), io::Error::other("boom")),
        SnapshotError::Truncated {
            path: None,
            len: 1,
            expected: None,
        },
        SnapshotError::malformed("what"),
        SnapshotError::UnknownFormat {
            magic: *b"ABCD",
            version: 9,
        },
        SnapshotError::Foreign {
            node_id: "n".to_owned(),
            servers: vec![],
        },
        SnapshotError::Stale {
            age: Duration::from_secs(1),
            max_age: Duration::ZERO,
            future: false,
        },
        SnapshotError::TooLarge {
            bytes: 2,
            max_bytes: 1,
        },
        SnapshotError::Invalid {
            type_url: CLUSTER.to_owned(),
            name: "c".to_owned(),
            source: Box::new(ResourceError::new(
                None,
                crate::resource::ResourceErrorKind::invalid("lb_policy", "unsupported"),
            )),
        },
    ];
    let labels: Vec<&str> = errors.iter().map(SnapshotError::kind).collect();
    assert_eq!(
        labels,
        [
            "missing",
            "io",
            "truncated",
            "corrupt",
            "unknown_format",
            "foreign",
            "stale",
            "too_large",
            "invalid"
        ]
    );
    for e in &errors {
        assert!(e.to_string().len() > 20, "{e}");
    }
    assert!(
        errors[8]
            .source()
            .is_some_and(|e| e.to_string() == "lb_policy: unsupported"),
        "{:?}",
        errors[8].source().map(ToString::to_string)
    );
}

#[test]
fn fuzzing_entry_points_agree_with_the_format() {
    let sample = fuzzing::sample(&[(LISTENER, "l", "1", b"\x0a\x01l")]);
    let again = fuzzing::decode_and_encode(&sample).unwrap();
    assert_eq!(again, sample);
    let body = &sample[PREAMBLE_LEN..sample.len() - TRAILER_LEN];
    assert_eq!(fuzzing::seal(body), sample);
    assert!(fuzzing::decode_and_encode(&sample[..sample.len() - 1]).is_err());
}

fn arb_record() -> impl Strategy<Value = SnapshotRecord> {
    (
        ".{0,40}",
        ".{0,40}",
        ".{0,10}",
        ".{0,40}",
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(type_url, name, version, any_type, value)| SnapshotRecord {
                type_url,
                name,
                version,
                resource: Any {
                    type_url: any_type,
                    value,
                },
            },
        )
}

fn arb_file() -> impl Strategy<Value = SnapshotFile> {
    (
        ".{0,30}",
        prop::collection::vec(".{0,30}", 0..4),
        any::<i64>(),
        0..1_000_000_000_u32,
        prop::collection::vec(arb_record(), 0..8),
    )
        .prop_filter_map(
            "a time SystemTime holds",
            |(node_id, servers, secs, nanos, records)| {
                let base = if secs >= 0 {
                    UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
                } else {
                    UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
                };
                let written_at = base?.checked_add(Duration::from_nanos(nanos.into()))?;
                Some(SnapshotFile {
                    node_id,
                    servers,
                    written_at,
                    records,
                })
            },
        )
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(file in arb_file()) {
        let bytes = encode(&file, MAX).unwrap();
        let exp = Expected {
            node_id: &file.node_id,
            servers: &file.servers,
            max_age: Duration::ZERO,
            now: file.written_at,
            max_bytes: MAX,
        };
        prop_assert_eq!(decode(&bytes, &exp).unwrap(), file);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let servers = servers();
        // Raw, and framed with a valid trailer so the body parser sees them too.
        let raw = decode(&bytes, &expected(&servers));
        prop_assert!(raw.is_err());
        match decode(&fuzzing::seal(&bytes), &expected(&servers)) {
            Ok(file) => prop_assert_eq!(file.node_id, "node-1"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn arbitrary_edits_of_a_valid_file_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        reseal in any::<bool>(),
    ) {
        let servers = servers();
        let mut bytes = encode(&snapshot("v1"), MAX).unwrap();
        let body_len = bytes.len() - OVERHEAD;
        for (i, b) in edits {
            let i = PREAMBLE_LEN + i.index(body_len);
            bytes[i] = b;
        }
        let bytes = if reseal {
            fuzzing::seal(&bytes[PREAMBLE_LEN..bytes.len() - TRAILER_LEN])
        } else {
            bytes
        };
        if let Ok(file) = decode(&bytes, &expected(&servers)) {
            // Whatever decodes, encodes to something that decodes to the same.
            let again = encode(&file, MAX).unwrap();
            prop_assert_eq!(decode(&again, &expected(&servers)).unwrap(), file);
        }
    }
}
