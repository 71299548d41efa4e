//! Counting which backend answered: each reply starts with the backend's ID and a colon.

use std::collections::BTreeMap;

/// Per-backend reply counts and the number of failed calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Replies per backend ID.
    pub counts: BTreeMap<String, u64>,
    /// Calls that failed.
    pub errors: u64,
    /// The first few distinct error messages, for people.
    pub error_samples: Vec<String>,
}

impl Tally {
    /// Counts a reply `"<ID>: …"` (a reply without a colon counts under its whole text).
    pub fn reply(&mut self, message: &str) {
        let id = message.split_once(':').map_or(message, |(id, _)| id);
        *self.counts.entry(id.to_owned()).or_default() += 1;
    }

    /// Counts a failed call.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        let message = message.into();
        if self.error_samples.len() < 5 && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    /// `{"counts": {"A": 50, "B": 50}, "errors": 0}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "counts": self.counts, "errors": self.errors }).to_string()
    }

    /// One line per backend with its share, then the errors.
    pub fn to_text(&self) -> String {
        let total: u64 = self.counts.values().sum::<u64>() + self.errors;
        let mut out = String::new();
        for (id, n) in &self.counts {
            let pct = 100.0 * *n as f64 / total.max(1) as f64;
            out.push_str(&format!("{id:>12}: {n:>6} ({pct:5.1}%)\n"));
        }
        out.push_str(&format!("{:>12}: {:>6}\n", "errors", self.errors));
        for e in &self.error_samples {
            out.push_str(&format!("{:>12}  {e}\n", ""));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_the_id_before_the_colon() {
        let mut t = Tally::default();
        t.reply("A: hello x");
        t.reply("A: hello y");
        t.reply("B: hello x");
        t.error("unavailable");
        assert_eq!(t.to_json(), r#"{"counts":{"A":2,"B":1},"errors":1}"#);
        assert!(
            t.to_text().contains("A:      2 ( 50.0%)"),
            "{}",
            t.to_text()
        );
    }
}
