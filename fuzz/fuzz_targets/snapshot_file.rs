//! The fail-static snapshot file (`meshwork_xds::fail_static`): the checks and the parser a
//! file read at start goes through, reached through the hidden `fail_static::fuzzing`
//! entry points (the file layer itself is crate-private).
//!
//! Input: a mode byte, then bytes. Mode bit 0 clear: the bytes are a whole file. Set: they
//! are a body (header and records) that the harness frames with the magic, the version and
//! a valid trailer, so the protobuf parser and the checks after the checksum are reached
//! (random bytes almost never pass a SHA-256).
//!
//! Invariants:
//! - no panic, bounded memory (libFuzzer's RSS limit) and time;
//! - a framed input is never refused as truncated, of unknown format or with a bad checksum;
//! - a file that decodes encodes to bytes that decode and encode to the same bytes (the
//!   format round-trips whatever a hostile writer put in it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork_xds::fail_static::{CorruptReason, SnapshotError, fuzzing};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let framed = mode & 1 == 1;
    let input = if framed {
        fuzzing::seal(rest)
    } else {
        rest.to_vec()
    };
    match fuzzing::decode_and_encode(&input) {
        Ok(encoded) => {
            let again = fuzzing::decode_and_encode(&encoded)
                .unwrap_or_else(|e| panic!("a re-encoded snapshot is refused: {e}"));
            assert_eq!(again, encoded, "encoding a decoded snapshot is not stable");
        }
        Err(e) => {
            if framed {
                assert!(
                    !matches!(
                        e,
                        SnapshotError::Truncated { .. }
                            | SnapshotError::UnknownFormat { .. }
                            | SnapshotError::Corrupt {
                                reason: CorruptReason::Checksum
                            }
                    ),
                    "a framed body refused by its frame: {e:?}"
                );
            }
            assert!(!e.to_string().is_empty());
        }
    }
});
