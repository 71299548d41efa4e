//! A very small command-line parser: `--flag value`, `--flag=value` and `--switch`.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// The arguments left to read.
#[derive(Debug)]
pub struct Args {
    program: String,
    rest: VecDeque<String>,
}

/// A bad command line: the message names the flag.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Args {
    /// The process's arguments.
    pub fn from_env() -> Self {
        Self::new(std::env::args())
    }

    /// Arguments from a list (the first is the program name).
    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        let mut rest: VecDeque<String> = args.into_iter().collect();
        let program = rest.pop_front().unwrap_or_default();
        // Split `--flag=value` into two.
        let rest = rest
            .into_iter()
            .flat_map(|a| match a.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    vec![flag.to_owned(), value.to_owned()]
                }
                _ => vec![a],
            })
            .collect();
        Self { program, rest }
    }

    /// The program name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Whether `--name` is present (removes it).
    pub fn switch(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// Every value of `--name value` (removes them).
    pub fn values(&mut self, name: &str) -> Result<Vec<String>, UsageError> {
        let mut values = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(a) = self.rest.pop_front() {
            if a == name {
                match self.rest.pop_front() {
                    Some(v) => values.push(v),
                    None => return Err(UsageError(format!("{name} needs a value"))),
                }
            } else {
                kept.push_back(a);
            }
        }
        self.rest = kept;
        Ok(values)
    }

    /// The value of `--name value`, parsed; `None` when absent.
    pub fn value<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, UsageError>
    where
        T::Err: fmt::Display,
    {
        match self.values(name)?.pop() {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| UsageError(format!("{name} {v:?}: {e}"))),
        }
    }

    /// Fails when arguments are left that nobody read.
    pub fn finish(self) -> Result<(), UsageError> {
        match self.rest.front() {
            None => Ok(()),
            Some(a) => Err(UsageError(format!("unexpected argument {a:?}"))),
        }
    }
}

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

/// What the example clients share: `--target T --calls N [--header k:v]... [--wait-secs S]
/// [--json]`.
#[derive(Debug, Clone)]
pub struct CallArgs {
    /// `--target` (required).
    pub target: String,
    /// `--calls` (default 10).
    pub calls: u64,
    /// `--wait-secs`: how long to wait for the first xDS config (default 10 s).
    pub wait: std::time::Duration,
    /// `--json`: print one line of JSON.
    pub json: bool,
    /// `--header k:v`, trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl CallArgs {
    /// Reads the flags from `args`; `target_usage` is shown when `--target` is missing.
    pub fn parse(args: &mut Args, target_usage: &str) -> Result<Self, UsageError> {
        let target = args
            .value("--target")?
            .ok_or_else(|| UsageError(format!("--target {target_usage} is required")))?;
        let calls = args.value("--calls")?.unwrap_or(10);
        let wait: f64 = args.value("--wait-secs")?.unwrap_or(10.0);
        let json = args.switch("--json");
        let mut headers = Vec::new();
        for h in args.values("--header")? {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| UsageError(format!("--header {h:?}: expected key:value")))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Self {
            target,
            calls,
            wait: std::time::Duration::try_from_secs_f64(wait)
                .map_err(|e| UsageError(format!("--wait-secs {wait}: {e}")))?,
            json,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::new(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_values_and_leftovers() {
        let mut a = args("prog --calls=10 --header a:b --json --header c:d");
        assert_eq!(a.value::<u32>("--calls").unwrap(), Some(10));
        assert_eq!(a.values("--header").unwrap(), ["a:b", "c:d"]);
        assert!(a.switch("--json"));
        assert!(!a.switch("--json"));
        a.finish().unwrap();

        let mut a = args("prog --calls x");
        assert!(a.value::<u32>("--calls").is_err());
        let mut a = args("prog --calls");
        assert!(a.value::<u32>("--calls").is_err());
        assert!(args("prog stray").finish().is_err());
    }
}
