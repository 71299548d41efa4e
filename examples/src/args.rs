//! The example binaries' command lines: the flag groups several binaries share (flattened
//! into each binary's clap parser), the value syntaxes (`KEY:VALUE` headers, seconds), the
//! environment they read (shown by `--help`), and how they exit.
//!
//! The flags are a contract: scripts and interop tests outside this repository call the
//! binaries, so a flag's spelling, default and value syntax stay as they are.
//! `tests/cli.rs` holds every binary to it.

use std::num::ParseFloatError;
use std::str::FromStr;
use std::time::{Duration, TryFromFloatSecsError};

use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};

/// The error type of the example binaries.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The process exit code for `result`, printing the error as `<program>: <error>`.
pub fn exit_code(program: &str, result: Result<(), Error>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--help`'s note on the environment of the binaries that read the gRPC xDS bootstrap.
pub const XDS_ENVIRONMENT: &str = "\
Environment:
  GRPC_XDS_BOOTSTRAP         the path of the gRPC xDS bootstrap file (JSON), as for
                             proxyless gRPC
  GRPC_XDS_BOOTSTRAP_CONFIG  the bootstrap JSON itself, read when GRPC_XDS_BOOTSTRAP is
                             unset or empty";

/// The flags of the clients that make N calls and count which backend answered each
/// (`greeter-client`, `http-client`); each binary adds its own `--target`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CallArgs {
    /// How many calls to make, one after another.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        allow_negative_numbers = true
    )]
    pub calls: u64,

    /// A header (gRPC metadata) to send with every call, as KEY:VALUE, split at the first
    /// colon; spaces around the key and the value are trimmed. Repeat the flag for more.
    #[arg(long = "header", value_name = "KEY:VALUE")]
    pub headers: Vec<Header>,

    /// How long to wait for the target's first complete xDS configuration, in seconds (a
    /// fraction is allowed).
    #[arg(
        long = "wait-secs",
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_seconds,
        allow_negative_numbers = true
    )]
    pub wait: Duration,

    /// Print one line of JSON, {"counts": {"A": 50, "B": 50}, "errors": 0}, instead of a
    /// table.
    #[arg(long)]
    pub json: bool,
}

/// `--help`'s note on the environment a server with `--mtls` takes its identity from.
pub const MTLS_ENVIRONMENT: &str = "\
Environment (with --mtls):
  SPIFFE_ENDPOINT_SOCKET     the SPIFFE Workload API (SPIRE) to take our SVID from
  GRPC_XDS_BOOTSTRAP         otherwise, the gRPC xDS bootstrap file whose certificate
                             provider holds our SVID (Istio's agent writes one)";

/// A server's SPIFFE mTLS flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct MtlsArgs {
    /// Serve SPIFFE mTLS and verify the callers' SVIDs, instead of plaintext. Our SVID comes
    /// from the SPIFFE Workload API when SPIFFE_ENDPOINT_SOCKET is set, otherwise from a
    /// certificate provider of the bootstrap named by GRPC_XDS_BOOTSTRAP.
    #[arg(long)]
    pub mtls: bool,

    /// With --mtls, the bootstrap's certificate provider instance that holds our SVID
    /// [default: its only instance, else the one named "default"].
    #[arg(long, value_name = "NAME")]
    pub cert_provider: Option<String>,
}

/// A header given as `KEY:VALUE`: split at the first colon, both sides trimmed, the name
/// lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: HeaderName,
    /// The header's value.
    pub value: HeaderValue,
}

/// Why a `KEY:VALUE` is not a header.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// There is no colon.
    #[error("expected KEY:VALUE")]
    NoColon,
    /// The key is not a header name.
    #[error(transparent)]
    Name(#[from] InvalidHeaderName),
    /// The value is not a header value.
    #[error(transparent)]
    Value(#[from] InvalidHeaderValue),
}

impl FromStr for Header {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s.split_once(':').ok_or(HeaderError::NoColon)?;
        Ok(Self {
            name: HeaderName::from_bytes(name.trim().as_bytes())?,
            value: HeaderValue::from_str(value.trim())?,
        })
    }
}

/// Why a number of seconds is not a duration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecondsError {
    /// Not a number.
    #[error(transparent)]
    NotANumber(#[from] ParseFloatError),
    /// Negative, not finite, or beyond what a `Duration` holds.
    #[error(transparent)]
    OutOfRange(#[from] TryFromFloatSecsError),
}

/// Parses a number of seconds, fractions allowed (`2.5`), for flags such as `--wait-secs`.
pub fn parse_seconds(s: &str) -> Result<Duration, SecondsError> {
    let seconds: f64 = s.parse()?;
    Ok(Duration::try_from_secs_f64(seconds)?)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// A command line with the shared client flags, set up as the binaries set theirs up.
    #[derive(Debug, clap::Parser)]
    #[command(args_override_self = true)]
    struct Client {
        #[command(flatten)]
        calls: CallArgs,
    }

    fn parse(line: &str) -> Result<CallArgs, clap::Error> {
        Client::try_parse_from(line.split_whitespace()).map(|c| c.calls)
    }

    #[test]
    fn flags_values_and_leftovers() {
        let a = parse("prog --calls=10 --header a:b --json --header c:d").unwrap();
        assert_eq!(a.calls, 10);
        let headers: Vec<(&str, &[u8])> = a
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_bytes()))
            .collect();
        assert_eq!(headers, [("a", &b"b"[..]), ("c", b"d")]);
        assert!(a.json);
        // A repeated switch is still on; a repeated value flag keeps its last value.
        let a = parse("prog --json --json --calls 1 --calls 2").unwrap();
        assert!(a.json);
        assert_eq!(a.calls, 2);

        assert!(parse("prog --calls x").is_err());
        assert!(parse("prog --calls").is_err());
        assert!(parse("prog stray").is_err());
    }

    #[test]
    fn defaults() {
        let a = parse("prog").unwrap();
        assert_eq!(
            a,
            CallArgs {
                calls: 10,
                headers: vec![],
                wait: Duration::from_secs(10),
                json: false,
            }
        );
    }

    #[test]
    fn headers_are_key_colon_value_trimmed() {
        let h: Header = " X-Backend : b:c ".parse().unwrap();
        assert_eq!(h.name, "x-backend");
        assert_eq!(h.value, "b:c");
        let h: Header = "k:".parse().unwrap();
        assert_eq!(h.value, "");
        assert!(matches!("k=v".parse::<Header>(), Err(HeaderError::NoColon)));
        assert!(matches!(
            "bad key:v".parse::<Header>(),
            Err(HeaderError::Name(_))
        ));
        assert!(matches!(
            "k:a\nb".parse::<Header>(),
            Err(HeaderError::Value(_))
        ));
    }

    #[test]
    fn seconds_are_finite_and_not_negative() {
        assert_eq!(parse_seconds("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert!(matches!(
            parse_seconds("x"),
            Err(SecondsError::NotANumber(_))
        ));
        for bad in ["-1", "nan", "inf", "1e300"] {
            assert!(
                matches!(parse_seconds(bad), Err(SecondsError::OutOfRange(_))),
                "{bad}"
            );
        }
        let e = parse("prog --wait-secs -1").unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("--wait-secs"), "{e}");
    }
}
