//! Every attention method, one folder per family, and the registry that lists them.
//!
//! Adding a method: a folder with `README.md`, `mod.rs` (descriptors), `reference.rs` and one file
//! per fast strategy, then one line per implementation in [`registry`] (priority order: the first
//! implementation that accepts a problem runs it). Tests, benches and the CLI iterate the registry.

pub mod sdpa;

use crate::dispatch::{Method, Registry};

static METHODS: &[&dyn Method] = &[
    &sdpa::decode::Decode, // short S_q over long S_kv: split the keys across threads
    &sdpa::flash::Flash,   // everything else exact
    &sdpa::reference::Reference,
];

/// The registered implementations, in priority order.
pub fn registry() -> Registry {
    Registry::new(METHODS)
}
