//! Shared pieces of meshwork's fuzz targets: a byte reader that turns fuzz input into
//! structured operations, and the matching writer the seed generator uses, so every seed in
//! `corpus/` decodes to the operations it was written from.
//!
//! The format is deliberately simple (a byte, a little-endian `u16` length, then bytes), so
//! libFuzzer's byte mutations mostly produce other valid operation streams.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Reads operations from fuzz input; every read past the end yields zero/empty values, so
/// any input is a valid (possibly short) program.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 at the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// A bool from one byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A `u16`-length-prefixed byte string (shorter if the input ends).
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.data.len());
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        head
    }

    /// A length-prefixed string, invalid UTF-8 replaced.
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// One of `choices`, by a byte (the first one for an empty slice is a caller bug).
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.u8()) % choices.len()]
    }
}

/// Writes what [`Reader`] reads, for seeds.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// One byte.
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.out.push(b);
        self
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-prefixed byte string.
    ///
    /// # Panics
    /// If `bytes` is longer than `u16::MAX` (seeds are small).
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u16(u16::try_from(bytes.len()).expect("seed field under 64 KiB"));
        self.out.extend_from_slice(bytes);
        self
    }

    /// Raw bytes with no length (for a trailing `rest`).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// The program.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// The fixtures directory (a fixed SPIFFE CA, leaves and a rogue CA made with openssl).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The trust domain of the fixed test CA in `fixtures/`.
pub const TRUST_DOMAIN: &str = "fuzz.example";

/// The fixed root of `fixtures/root.pem`, compiled in so the identity target needs no files
/// at run time.
pub const ROOT_PEM: &str = include_str!("../fixtures/root.pem");

/// A time inside every fixture certificate's validity (2027-06-01T00:00:00Z), so verdicts
/// do not depend on the day the fuzzer runs.
pub const VERIFY_AT_UNIX: u64 = 1_811_808_000;
