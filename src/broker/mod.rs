//! Topics and broadcast: topic name rules, the per-worker topic index, and the cross-worker mesh.
//!
//! One broadcast, end to end: a worker publishes into its [`index::TopicIndex`], which frames the message once
//! into the topic's coalescing buffer; at the end of the turn the buffer becomes one immutable `Bytes` that
//! every local subscriber's outbox references, and that the [`mesh`] hands to each other worker with
//! subscribers of the topic, which does the same for its own. Publish sources outside the workers use
//! [`mesh::ExternalPublisher`], which enters through the same path. [`rate`] paces how fast one connection may add
//! topics to its worker.

pub mod index;
pub mod mesh;
pub mod rate;
pub mod topic;
