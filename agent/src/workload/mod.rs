//! Workloads: what runs where, and the reconciler that makes this node run its share.
//!
//! See [`plan`] for how every node computes the same placement of every pod from the replicated
//! state, [`reconciler`] for how a node brings its runtime to that plan, and [`stored`] for how
//! objects and pod reports are kept in the replicated state.

pub(crate) mod plan;
pub(crate) mod probe;
pub(crate) mod reconciler;
pub(crate) mod stored;
pub(crate) mod view;
