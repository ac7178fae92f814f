//! The `ingot` umbrella package: end-to-end tests (`tests/`), benchmarks (`benches/`) and the
//! generator of the example corpus that the README's quickstart and the tests run on.
//!
//! The corpus is made by our own code, deterministically from a seed, so the repository carries
//! no third-party text and every machine gets the same bytes.

pub mod corpus;
