//! Workloads: what runs where, and the reconciler that makes this node run its share.
//!
//! See [`plan`] for how every node computes the same placement of every pod from the replicated
//! state, [`supervisor`] for how a node brings its runtime to that plan (a sans-IO state
//! machine) and [`reconciler`] for the tokio task that drives it, and [`stored`] for how
//! objects and pod reports are kept in the replicated state. [`service`] gives Services their
//! virtual IPs, node ports, endpoints and environment variables.

pub(crate) mod batch;
pub(crate) mod limits;
pub(crate) mod plan;
pub(crate) mod pod_config;
pub(crate) mod probe;
pub(crate) mod projector;
pub(crate) mod reconciler;
pub(crate) mod service;
pub(crate) mod sim;
pub(crate) mod snapshot;
pub(crate) mod stored;
pub(crate) mod supervisor;
pub(crate) mod view;

#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod pod_config_tests;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
pub(crate) mod testbed;
