//! A shim for test files written against the old `tests/support` (`mod support; use
//! support::within;`): what they used now lives in `meshwork-test-support`. New test files
//! import from that crate directly; this module goes once none uses it.
#![allow(unused_imports, unreachable_pub)]

pub use meshwork_test_support::within;
