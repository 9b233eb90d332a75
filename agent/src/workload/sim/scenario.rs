//! Whole-cluster scenarios written as data: apply manifests, kill and restart nodes, split and
//! heal the network, scale, roll out, wait, and expect or hold conditions on what runs. A
//! failing step reports itself and the seed; `SHOAL_SIM_SEED` replays a scenario with another
//! seed ([`shoal_gossip::scenario::seed`]).

#[cfg(test)]
use std::fmt;
#[cfg(test)]
use std::time::Duration;

#[cfg(test)]
use super::ClusterConfig;
use super::ClusterSim;
#[cfg(test)]
use crate::manifest::EnvVar;

/// One step of a scenario.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// A node applies manifests (YAML).
    Apply { node: usize, yaml: String },
    /// A node's machine dies.
    Kill(usize),
    /// A killed node's machine comes back (empty), with its persisted gossip state.
    Restart(usize),
    /// Splits the network into groups; nodes in no group form one more.
    Partition(Vec<Vec<usize>>),
    /// Heals the network.
    Heal,
    /// A node sets a Deployment's replicas (`default` namespace).
    Scale {
        node: usize,
        deployment: String,
        replicas: u32,
    },
    /// A node gives a Deployment a new template: its first container's env `REVISION` is set
    /// to `revision`.
    Rollout {
        node: usize,
        deployment: String,
        revision: String,
    },
    /// Lets virtual time pass.
    Wait(Duration),
    /// Runs until the condition holds; fails if it does not within the time.
    Expect(Cond, Duration),
    /// Runs for the time; fails as soon as the condition does not hold (checked after every
    /// event).
    Hold(Cond, Duration),
}

/// A condition on what runs, as the observer sees it (records of nodes that are up).
#[derive(Clone, Debug)]
pub(crate) enum Cond {
    /// Every node that is up holds the objects as last written and every pod record, and
    /// every Deployment has exactly its replicas: one serving pod of the current template per ordinal, nothing else running.
    Settled,
    /// At least this many pods of the Deployment (`default` namespace) serve.
    #[cfg_attr(not(test), allow(dead_code))]
    Serving(String, u64),
}

/// Why a scenario failed.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) seed: u64,
    pub(crate) step: usize,
    pub(crate) op: String,
    pub(crate) reason: String,
    pub(crate) at_ms: u64,
}

#[cfg(test)]
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario failed at step {} ({}) at t={} ms: {}; replay with SHOAL_SIM_SEED={}",
            self.step, self.op, self.at_ms, self.reason, self.seed
        )
    }
}

#[cfg(test)]
impl std::error::Error for Failure {}

impl Cond {
    /// Whether the condition holds now; otherwise why not.
    pub(crate) fn check(&self, sim: &ClusterSim) -> Result<(), String> {
        match self {
            Cond::Settled => settled(sim),
            Cond::Serving(name, at_least) => {
                let deployment = format!("default/{name}");
                let serving = sim
                    .truth()
                    .pods()
                    .filter(|(_, p)| p.deployment.as_deref() == Some(&deployment) && p.serving())
                    .count() as u64;
                if serving >= *at_least {
                    Ok(())
                } else {
                    Err(format!(
                        "{serving} pods of {deployment} serve, fewer than {at_least}"
                    ))
                }
            }
        }
    }
}

fn settled(sim: &ClusterSim) -> Result<(), String> {
    if let Some(i) = (0..sim.len()).find(|&i| sim.is_up(i) && !sim.holds_written(i)) {
        return Err(format!(
            "n{i} does not hold the objects as last written yet"
        ));
    }
    if !sim.records_delivered() {
        return Err("pod records are still on their way".into());
    }
    let deployments = sim.deployments_written();
    let mut expected = std::collections::BTreeMap::new();
    for (name, replicas, hash) in &deployments {
        expected.insert(name.clone(), (*replicas, hash.clone(), Vec::new()));
    }
    for (node, pod) in sim.truth().pods() {
        let Some((_, hash, ordinals)) = pod.deployment.as_ref().and_then(|d| expected.get_mut(d))
        else {
            return Err(format!("n{node} runs {} of no deployment", pod.name));
        };
        if !pod.serving() {
            return Err(format!("n{node}: {} does not serve", pod.name));
        }
        if pod.template_hash.as_ref() != Some(hash) {
            return Err(format!("n{node} runs {} of an old template", pod.name));
        }
        ordinals.push(pod.replica.ordinal);
    }
    for (name, (replicas, _, mut ordinals)) in expected {
        ordinals.sort_unstable();
        if !ordinals.iter().copied().eq(0..replicas) {
            return Err(format!(
                "{name} runs replicas {ordinals:?}, not exactly 0..{replicas}"
            ));
        }
    }
    Ok(())
}

/// A scripted run.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) config: ClusterConfig,
    pub(crate) ops: Vec<Op>,
}

#[cfg(test)]
impl Scenario {
    /// A scenario on a LAN of `nodes` nodes with this seed (overridden by `SHOAL_SIM_SEED`).
    pub(crate) fn lan(nodes: usize, default_seed: u64, ops: Vec<Op>) -> Scenario {
        Scenario {
            config: ClusterConfig::lan(nodes, shoal_gossip::scenario::seed(default_seed)),
            ops,
        }
    }

    /// Runs the scenario; returns the simulation at its end, or the first failure.
    pub(crate) fn run(&self) -> Result<ClusterSim, Failure> {
        let mut sim = ClusterSim::new(self.config.clone());
        for (step, op) in self.ops.iter().enumerate() {
            let fail = |sim: &ClusterSim, reason: String| Failure {
                seed: self.config.network.seed,
                step,
                op: format!("{op:?}"),
                reason,
                at_ms: sim.now().as_micros() / 1000,
            };
            let result = match op {
                Op::Apply { node, yaml } => sim.apply(*node, yaml),
                Op::Kill(node) => {
                    sim.kill(*node);
                    Ok(())
                }
                Op::Restart(node) => sim.restart(*node),
                Op::Partition(groups) => {
                    sim.partition(groups);
                    Ok(())
                }
                Op::Heal => {
                    sim.heal();
                    Ok(())
                }
                Op::Scale {
                    node,
                    deployment,
                    replicas,
                } => sim.change_deployment(*node, "default", deployment, |d| {
                    d.spec.replicas = *replicas
                }),
                Op::Rollout {
                    node,
                    deployment,
                    revision,
                } => sim.change_deployment(*node, "default", deployment, |d| {
                    if let Some(c) = d.spec.template.spec.containers.first_mut() {
                        c.env.retain(|e| e.name != "REVISION");
                        c.env.push(EnvVar {
                            name: "REVISION".into(),
                            value: revision.clone(),
                            value_from: None,
                        });
                    }
                }),
                Op::Wait(d) => {
                    sim.run_for(*d);
                    Ok(())
                }
                Op::Expect(cond, within) => {
                    let deadline = sim.now() + *within;
                    loop {
                        match cond.check(&sim) {
                            Ok(()) => break Ok(()),
                            Err(reason) if sim.now() >= deadline => break Err(reason),
                            Err(_) => sim.run_for(Duration::from_millis(50)),
                        }
                    }
                }
                Op::Hold(cond, during) => {
                    let until = sim.now() + *during;
                    sim.run_until(until, &mut |s| cond.check(s))
                }
            };
            if let Err(reason) = result {
                return Err(fail(&sim, reason));
            }
        }
        Ok(sim)
    }
}
