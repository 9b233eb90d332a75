//! Replica limits: what one `apply` may ask of the cluster.
//!
//! Every member plans every workload, so a workload of a million replicas would make every
//! agent allocate for a million replicas. Two limits bound that:
//! - **per workload** (`--max-replicas-per-workload`, default [`Limits::DEFAULT_PER_WORKLOAD`]):
//!   a Deployment asking for more is refused at `apply` and `scale`, naming the limit;
//! - **per cluster** (`--max-replicas`, default [`Limits::DEFAULT_CLUSTER`]): the replicas all
//!   workloads ask for together. `apply` refuses what would go over it.
//!
//! Writes can race (two agents accept applies at once, or a partition heals), so the planner
//! enforces the limits too, identically on every member: workloads are taken in creation
//! order, and one that would go over a limit is set aside (not planned) with the reason on the
//! object, until others shrink or go. Members plan with the lowest limits any live member
//! announces in its node info, so that agents started with different flags still agree.

use serde::{Deserialize, Serialize};

/// The replica limits an agent plans with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Limits {
    /// Most replicas one workload may have.
    pub(crate) per_workload: u32,
    /// Most replicas all workloads of the cluster may have together.
    pub(crate) cluster: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_workload: Self::DEFAULT_PER_WORKLOAD,
            cluster: Self::DEFAULT_CLUSTER,
        }
    }
}

impl Limits {
    /// Default per-workload limit: well above what a small cluster runs, far below what would
    /// exhaust an agent's memory (about 1 KB of planner state per replica on every member).
    pub(crate) const DEFAULT_PER_WORKLOAD: u32 = 10_000;
    /// Default cluster limit (Kubernetes is tested at 150,000 pods on 5,000 nodes; shoal's
    /// clusters are smaller).
    pub(crate) const DEFAULT_CLUSTER: u32 = 100_000;

    /// The stricter of two limits (each field's minimum).
    pub(crate) fn min(self, other: Limits) -> Limits {
        Limits {
            per_workload: self.per_workload.min(other.per_workload),
            cluster: self.cluster.min(other.cluster),
        }
    }

    /// Why `replicas` more for one workload, with `others` already asked by the rest of the
    /// cluster, is refused; `None` when it fits.
    pub(crate) fn refusal(&self, replicas: u32, others: u64) -> Option<String> {
        if replicas > self.per_workload {
            return Some(format!(
                "{replicas} replicas is over the limit of {} replicas per workload \
                 (--max-replicas-per-workload)",
                self.per_workload
            ));
        }
        let total = others + u64::from(replicas);
        if total > u64::from(self.cluster) {
            return Some(format!(
                "the cluster would have {total} replicas, over its limit of {} \
                 (--max-replicas); {others} are asked by other workloads",
                self.cluster
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_the_limit_that_was_crossed() {
        let limits = Limits {
            per_workload: 10,
            cluster: 25,
        };
        assert_eq!(limits.refusal(10, 15), None);
        let one = limits.refusal(11, 0).expect("over the per-workload limit");
        assert!(one.contains("limit of 10 replicas per workload"), "{one}");
        let all = limits.refusal(10, 16).expect("over the cluster limit");
        assert!(all.contains("26 replicas, over its limit of 25"), "{all}");
    }

    #[test]
    fn min_takes_each_field_apart() {
        let a = Limits {
            per_workload: 5,
            cluster: 100,
        };
        let b = Limits {
            per_workload: 50,
            cluster: 10,
        };
        assert_eq!(
            a.min(b),
            Limits {
                per_workload: 5,
                cluster: 10
            }
        );
    }
}
