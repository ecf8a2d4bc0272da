//! Every attention method, one folder per family, and the registry that lists them.
//!
//! Adding a method: a folder with `README.md`, `mod.rs` (descriptors), `reference.rs` and one file
//! per fast strategy, then one line per implementation in [`registry`] (priority order: the first
//! implementation that accepts a problem runs it). Tests, benches and the CLI iterate the registry.

pub mod a_shape;
pub mod block_sparse;
pub mod gated_deltanet;
pub mod hyper;
pub mod kda;
pub mod linear;
pub mod nalaformer;
pub mod pattern;
pub mod performer;
pub mod reformer;
pub mod routing;
pub mod scatterbrain;
pub mod sdpa;
pub mod sea;
pub mod streaming;
pub mod titans_memory;
pub mod transnormer;
pub mod vertical_slash;

use crate::dispatch::{Method, Registry};
use pattern::{Fast, Reference};

static METHODS: &[&dyn Method] = &[
    &sdpa::decode::Decode, // short S_q over long S_kv: split the keys across threads
    &sdpa::flash::Flash,   // everything else exact
    &sdpa::reference::Reference,
    // Approximate: run only when named (`name:key=value,...` changes the defaults).
    &Fast(streaming::Streaming::DEFAULT),
    &Reference(streaming::Streaming::DEFAULT),
    &Fast(a_shape::AShape::DEFAULT),
    &Reference(a_shape::AShape::DEFAULT),
    &Fast(vertical_slash::VerticalSlash::DEFAULT),
    &Reference(vertical_slash::VerticalSlash::DEFAULT),
    &Fast(block_sparse::BlockSparse::DEFAULT),
    &Reference(block_sparse::BlockSparse::DEFAULT),
    &Fast(performer::Favor::DEFAULT),
    &Reference(performer::Favor::DEFAULT),
    &Fast(hyper::Hyper::DEFAULT),
    &Reference(hyper::Hyper::DEFAULT),
    &Fast(reformer::Reformer::DEFAULT),
    &Reference(reformer::Reformer::DEFAULT),
    &Fast(routing::Routing::DEFAULT),
    &Reference(routing::Routing::DEFAULT),
    &Fast(scatterbrain::Scatterbrain::DEFAULT),
    &Reference(scatterbrain::Scatterbrain::DEFAULT),
    &Fast(sea::Sea::DEFAULT),
    &Reference(sea::Sea::DEFAULT),
    // Not softmax attention (linear / recurrent): run only when named, held to their own reference.
    &linear::Linear::new(linear::Form::Chunked),
    &linear::Linear::new(linear::Form::Recurrent),
    &linear::Linear::new(linear::Form::Reference),
    &gated_deltanet::GatedDeltaNet::new(linear::Form::Chunked),
    &gated_deltanet::GatedDeltaNet::new(linear::Form::Recurrent),
    &gated_deltanet::GatedDeltaNet::new(linear::Form::Reference),
    &kda::Kda::new(linear::Form::Chunked),
    &kda::Kda::new(linear::Form::Recurrent),
    &kda::Kda::new(linear::Form::Reference),
    &transnormer::Transnormer::new(linear::Form::Chunked),
    &transnormer::Transnormer::new(linear::Form::Recurrent),
    &transnormer::Transnormer::new(linear::Form::Reference),
    &nalaformer::Nalaformer::new(linear::Form::Chunked),
    &nalaformer::Nalaformer::new(linear::Form::Recurrent),
    &nalaformer::Nalaformer::new(linear::Form::Reference),
    &titans_memory::TitansMemory::new(linear::Form::Chunked),
    &titans_memory::TitansMemory::new(linear::Form::Recurrent),
    &titans_memory::TitansMemory::new(linear::Form::Reference),
];

/// The implementation named by `spec` (`name` or `name:key=value,...`) from [`registry`].
///
/// # Errors
/// As [`Registry::build`].
pub fn build(spec: &str) -> crate::Result<crate::MethodRef> {
    registry().build(spec)
}

/// The registered implementations, in priority order.
pub fn registry() -> Registry {
    Registry::new(METHODS)
}
