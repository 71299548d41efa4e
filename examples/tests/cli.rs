//! The binaries' command lines are a contract (scripts and interop tests outside this
//! repository call them): `--help` lists every flag with a description and shows the
//! defaults and the environment, `--version` answers, and a bad flag or value exits 2 with
//! clap's error naming the flag, before anything else happens.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

/// Each binary, and the flags external callers use, as they spell them.
const BINARIES: &[(&str, &str, &[&str])] = &[
    ("demo", env!("CARGO_BIN_EXE_demo"), &[]),
    (
        "greeter-client",
        env!("CARGO_BIN_EXE_greeter-client"),
        &[
            "--target",
            "--calls",
            "--header",
            "--wait-secs",
            "--json",
            "--name",
            "--csds-port",
        ],
    ),
    (
        "greeter-server",
        env!("CARGO_BIN_EXE_greeter-server"),
        &[
            "--port",
            "--id",
            "--host",
            "--mtls",
            "--cert-provider",
            "--allow",
        ],
    ),
    (
        "http-client",
        env!("CARGO_BIN_EXE_http-client"),
        &["--target", "--calls", "--header", "--wait-secs", "--json"],
    ),
    (
        "xds-dump",
        env!("CARGO_BIN_EXE_xds-dump"),
        &["--target", "--seconds"],
    ),
    (
        "xds-serve",
        env!("CARGO_BIN_EXE_xds-serve"),
        &["--port", "--address", "--resources"],
    ),
];

/// (binary, flag, text its description must hold): the defaults callers rely on.
const DEFAULTS: &[(&str, &str, &str)] = &[
    ("greeter-client", "--calls", "[default: 10]"),
    ("greeter-client", "--wait-secs", "[default: 10]"),
    ("greeter-client", "--name", "[default: meshwork]"),
    ("http-client", "--calls", "[default: 10]"),
    ("http-client", "--wait-secs", "[default: 10]"),
    ("greeter-server", "--port", "[default: 50051]"),
    ("greeter-server", "--id", "[default: greeter-PORT]"),
    ("greeter-server", "--host", "[default: 127.0.0.1]"),
    ("xds-dump", "--seconds", "[default: 10]"),
    ("xds-serve", "--address", "[default: 127.0.0.1]"),
];

/// (binary, the environment variables its `--help` must name).
const ENVIRONMENT: &[(&str, &[&str])] = &[
    ("demo", &["OTEL_EXPORTER_OTLP_ENDPOINT"]),
    (
        "greeter-client",
        &["GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"],
    ),
    (
        "greeter-server",
        &["SPIFFE_ENDPOINT_SOCKET", "GRPC_XDS_BOOTSTRAP"],
    ),
    (
        "http-client",
        &["GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"],
    ),
    (
        "xds-dump",
        &["GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"],
    ),
];

fn exe(name: &str) -> &'static str {
    BINARIES
        .iter()
        .find(|b| b.0 == name)
        .map(|b| b.1)
        .expect("a binary of this package")
}

/// Runs `bin` with `args` and nothing from the environment that would make it do more;
/// one that runs on (a server that took bad arguments) is killed and fails the test.
async fn run(bin: &str, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(exe(bin))
        .args(args)
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .unwrap_or_else(|_| panic!("{bin} {args:?} still runs after 60 s"))
        .unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

/// The long flags `--help` lists under "Options:", each with its description: the text
/// after the flag's spelling on its line and on the more indented lines below it.
fn options(help: &str) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    let mut current: Option<String> = None;
    let lines = help
        .lines()
        .skip_while(|l| *l != "Options:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '));
    for line in lines {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if text.starts_with('-') && indent <= 6 {
            let (spelling, description) = text.split_once("  ").unwrap_or((text, ""));
            let flag = spelling
                .split([',', ' ', '='])
                .find(|t| t.starts_with("--"))
                .unwrap_or_else(|| panic!("no long flag in {line:?}"))
                .to_owned();
            options.insert(flag.clone(), description.trim().to_owned());
            current = Some(flag);
        } else if let Some(flag) = current.as_ref().filter(|_| !text.is_empty()) {
            let description = options.get_mut(flag).expect("inserted above");
            if !description.is_empty() {
                description.push(' ');
            }
            description.push_str(text);
        }
    }
    options
}

/// A description without the `[default: ...]` clap adds.
fn without_default(description: &str) -> String {
    match description.split_once("[default: ") {
        Some((before, after)) => {
            let after = after.split_once(']').map_or("", |(_, rest)| rest);
            before.to_owned() + after
        }
        None => description.to_owned(),
    }
}

#[tokio::test]
async fn help_lists_every_flag_with_a_description_and_its_default() {
    let mut helps = BTreeMap::new();
    for (bin, _, flags) in BINARIES {
        let out = run(bin, &["--help"]).await;
        assert_eq!(out.status.code(), Some(0), "{bin} --help: {out:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let options = options(&help);
        for flag in flags.iter().chain(&["--help", "--version"]) {
            assert!(
                options.contains_key(*flag),
                "{bin} --help does not list {flag}:\n{help}"
            );
        }
        // A flag added without a doc comment has no description, at most clap's default.
        for (flag, description) in &options {
            assert!(
                without_default(description)
                    .chars()
                    .any(char::is_alphabetic),
                "{bin} --help: {flag} has no description:\n{help}"
            );
        }
        helps.insert(*bin, help);
    }
    for (bin, flag, default) in DEFAULTS {
        let description = &options(&helps[bin])[*flag];
        assert!(
            description.contains(default),
            "{bin} {flag}: {default:?} missing from {description:?}"
        );
    }
    for (bin, variables) in ENVIRONMENT {
        let environment = helps[bin]
            .split_once("\nEnvironment")
            .unwrap_or_else(|| panic!("{bin} --help has no Environment section"))
            .1;
        for variable in *variables {
            assert!(
                environment.contains(variable),
                "{bin} --help does not name {variable}:\n{}",
                helps[bin]
            );
        }
    }
}

#[test]
fn options_reads_clap_help_in_both_layouts() {
    let short = "Usage: x\n\nOptions:\n      --calls <N>  How many [default: 10]\n      --bare\n  -h, --help   Print help\n";
    let long = "Options:\n      --calls <N>\n          How many\n\n          [default: 10]\n\n      --bare\n\n  -h, --help\n          Print help\n\nEnvironment:\n  X  y\n";
    for help in [short, long] {
        let options = options(help);
        assert_eq!(options.len(), 3, "{options:?}");
        assert!(options["--calls"].contains("How many"), "{options:?}");
        assert!(options["--calls"].contains("[default: 10]"), "{options:?}");
        assert!(options["--bare"].is_empty(), "{options:?}");
        assert_eq!(without_default(&options["--calls"]).trim(), "How many");
        assert!(options["--help"].contains("Print help"), "{options:?}");
    }
}

#[tokio::test]
async fn version_prints_the_name_and_version() {
    for (bin, _, _) in BINARIES {
        let out = run(bin, &["--version"]).await;
        assert_eq!(out.status.code(), Some(0), "{bin} --version: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{bin} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Exit code 2, nothing on stdout, and `named` in the error.
async fn assert_usage_error(bin: &str, args: &[&str], named: &str) {
    let out = run(bin, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{bin} {args:?}: {out:?}");
    assert!(
        stderr.contains(named),
        "{bin} {args:?}: {named:?} missing from {stderr}"
    );
}

#[tokio::test]
async fn an_unknown_flag_exits_2_naming_it() {
    for (bin, _, _) in BINARIES {
        assert_usage_error(bin, &["--no-such-flag"], "'--no-such-flag'").await;
        assert_usage_error(bin, &["stray"], "'stray'").await;
    }
}

#[tokio::test]
async fn a_bad_or_missing_value_exits_2_naming_the_flag() {
    let t = "--target";
    for (bin, args, named) in [
        ("greeter-client", &["--calls", "1"][..], "--target"),
        (
            "greeter-client",
            &[t, "xds:///g", "--calls", "many"],
            "--calls",
        ),
        (
            "greeter-client",
            &[t, "xds:///g", "--calls", "-1"],
            "--calls",
        ),
        ("greeter-client", &[t, "xds:///g", "--calls"], "--calls"),
        (
            "greeter-client",
            &[t, "xds:///g", "--header", "k=v"],
            "--header",
        ),
        (
            "greeter-client",
            &[t, "xds:///g", "--header", "a b:v"],
            "--header",
        ),
        // A valid HTTP header, but binary gRPC metadata, which the client sends as text.
        (
            "greeter-client",
            &[t, "xds:///g", "--header", "k-bin:v"],
            "--header",
        ),
        (
            "greeter-client",
            &[t, "xds:///g", "--wait-secs", "-1"],
            "--wait-secs",
        ),
        ("http-client", &["--calls", "1"], "--target"),
        ("http-client", &[t, "http://a b/"], "--target"),
        (
            "http-client",
            &[t, "http://g/", "--header", "k:\u{7f}"],
            "--header",
        ),
        (
            "http-client",
            &[t, "http://g/", "--wait-secs", "nan"],
            "--wait-secs",
        ),
        // With --mtls and no identity in the environment, a server that wrongly accepted
        // its arguments would exit 1 at once instead of serving.
        ("greeter-server", &["--mtls", "--port", "65536"], "--port"),
        ("greeter-server", &["--mtls", "--port", "-1"], "--port"),
        (
            "greeter-server",
            &["--mtls", "--allow", "not-a-spiffe-id"],
            "--allow",
        ),
        (
            "greeter-server",
            &["--mtls", "--allow", "spiffe://"],
            "--allow",
        ),
        ("xds-dump", &["--seconds", "1"], "--target"),
        ("xds-dump", &[t, "g", "--seconds", "ten"], "--seconds"),
        // Each of these panicked in Duration::from_secs_f64 before.
        ("xds-dump", &[t, "g", "--seconds", "-1"], "--seconds"),
        ("xds-dump", &[t, "g", "--seconds", "nan"], "--seconds"),
        ("xds-dump", &[t, "g", "--seconds", "1e300"], "--seconds"),
        ("xds-serve", &["--port", "0"], "--resources"),
        ("xds-serve", &["--resources", "f.json"], "--port"),
        (
            "xds-serve",
            &["--port", "65536", "--resources", "f.json"],
            "--port",
        ),
        (
            "xds-serve",
            &[
                "--port",
                "0",
                "--resources",
                "f.json",
                "--address",
                "localhost",
            ],
            "--address",
        ),
    ] {
        assert_usage_error(bin, args, named).await;
    }
}
