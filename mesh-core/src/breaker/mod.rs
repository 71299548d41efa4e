//! Circuit breaking.
