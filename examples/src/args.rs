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
