//! What really runs, as an observer outside the cluster sees it: every pod record each node
//! that is up has published, the pod starts the runtimes were asked for, and what each killed
//! node took with it. The report and the scenario conditions read it; no node does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shoal_gossip::Instant;

use crate::workload::stored::{PodRecord, ReplicaRef};

/// What the observer keeps of one published record.
#[derive(Clone, Debug)]
pub(super) struct PodFacts {
    pub(super) name: String,
    pub(super) replica: ReplicaRef,
    /// `namespace/name` of its Deployment.
    pub(super) deployment: Option<String>,
    pub(super) template_hash: Option<String>,
    pub(super) ready: bool,
    pub(super) terminating: bool,
}

impl PodFacts {
    fn of(record: &PodRecord) -> PodFacts {
        let namespace = record
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        PodFacts {
            name: record.pod.metadata.name.clone(),
            replica: record.replica.clone(),
            deployment: record
                .deployment
                .as_ref()
                .map(|d| format!("{namespace}/{d}")),
            template_hash: record.template_hash.clone(),
            ready: record.is_ready(),
            terminating: record.pod.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Ready and not on its way out: what serves.
    pub(super) fn serving(&self) -> bool {
        self.ready && !self.terminating
    }
}

/// One killed node and the replicas it ran.
#[derive(Clone, Debug)]
pub(super) struct Kill {
    pub(super) at: Instant,
    /// Replicas it ran that have no serving copy elsewhere yet.
    pub(super) waiting: BTreeSet<ReplicaRef>,
    /// How many replicas it ran.
    pub(super) lost: usize,
    /// When the last of them served again elsewhere.
    pub(super) done: Option<Instant>,
}

/// The observer's account.
#[derive(Default)]
pub(super) struct Truth {
    /// Published records of nodes that are up, by (node, record name).
    pods: BTreeMap<(usize, String), PodFacts>,
    /// Serving copies of each replica.
    serving: BTreeMap<ReplicaRef, u32>,
    /// Serving pods, all nodes that are up.
    pub(super) serving_pods: u64,
    /// Pods whose records nodes that are up publish.
    pub(super) pods_total: u64,
    /// Pod starts the runtimes were asked for.
    pub(super) starts: u64,
    /// Replicas ever started (once each).
    started: BTreeSet<ReplicaRef>,
    /// Every start: when, on which node, which replica.
    pub(super) start_log: Vec<(Instant, usize, ReplicaRef)>,
    pub(super) kills: Vec<Kill>,
    /// From the initial convergence on: the fewest and most serving pods at once.
    pub(super) tracking: bool,
    pub(super) serving_min: Option<u64>,
    pub(super) serving_max: Option<u64>,
}

impl Truth {
    /// A node published (or removed) a record.
    pub(super) fn publish(
        &mut self,
        node: usize,
        name: String,
        record: Option<&Arc<PodRecord>>,
        now: Instant,
    ) {
        let key = (node, name);
        if let Some(old) = self.pods.remove(&key) {
            self.forget(&old);
        }
        if let Some(record) = record {
            let facts = PodFacts::of(record);
            self.pods_total += 1;
            if facts.serving() {
                self.serving_pods += 1;
                *self.serving.entry(facts.replica.clone()).or_default() += 1;
                for kill in &mut self.kills {
                    if kill.waiting.remove(&facts.replica) && kill.waiting.is_empty() {
                        kill.done = Some(now);
                    }
                }
            }
            self.pods.insert(key, facts);
        }
        self.track_now();
    }

    fn forget(&mut self, old: &PodFacts) {
        self.pods_total -= 1;
        if old.serving() {
            self.serving_pods -= 1;
            if let Some(n) = self.serving.get_mut(&old.replica) {
                *n -= 1;
                if *n == 0 {
                    self.serving.remove(&old.replica);
                }
            }
        }
    }

    pub(super) fn track_now(&mut self) {
        if self.tracking {
            let n = self.serving_pods;
            self.serving_min = Some(self.serving_min.map_or(n, |m| m.min(n)));
            self.serving_max = Some(self.serving_max.map_or(n, |m| m.max(n)));
        }
    }

    /// A runtime was asked to start a pod of `replica`.
    pub(super) fn started(&mut self, node: usize, replica: &ReplicaRef, now: Instant) {
        self.starts += 1;
        self.start_log.push((now, node, replica.clone()));
        if !self.started.contains(replica) {
            self.started.insert(replica.clone());
        }
    }

    /// Node `node` dies with the pods of these replicas (those it was told to run).
    pub(super) fn kill(&mut self, node: usize, replicas: BTreeSet<ReplicaRef>, now: Instant) {
        let mine: Vec<(usize, String)> = self
            .pods
            .range((node, String::new())..)
            .take_while(|((n, _), _)| *n == node)
            .map(|(k, _)| k.clone())
            .collect();
        for key in mine {
            if let Some(old) = self.pods.remove(&key) {
                self.forget(&old);
            }
        }
        let lost = replicas.len();
        let waiting: BTreeSet<ReplicaRef> = replicas
            .into_iter()
            .filter(|r| !self.serving.contains_key(r))
            .collect();
        self.kills.push(Kill {
            at: now,
            done: waiting.is_empty().then_some(now),
            waiting,
            lost,
        });
        self.track_now();
    }

    /// Starts the minimum needs: each replica once, and once more for each replica a killed
    /// node took with it.
    pub(super) fn minimum_starts(&self) -> u64 {
        self.started.len() as u64 + self.kills.iter().map(|k| k.lost as u64).sum::<u64>()
    }

    /// Every published record of nodes that are up.
    pub(super) fn pods(&self) -> impl Iterator<Item = (usize, &PodFacts)> {
        self.pods.iter().map(|((n, _), f)| (*n, f))
    }
}
