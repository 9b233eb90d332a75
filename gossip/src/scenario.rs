//! Scenarios written as data, run on the [`Sim`]: add nodes, crash, partition, heal, wait,
//! expect. A failing expectation reports the step and the seed; set `SHOAL_SIM_SEED` to replay
//! a scenario with another seed (see [`seed`]).

use std::fmt;
use std::time::Duration;

use crate::clock::{ClockRefusal, ClockVerdict};
use crate::member::MemberState;
use crate::sim::{Sim, SimConfig};
use crate::store::{Key, ObjectKey};

/// One step of a scenario.
#[derive(Clone, Debug)]
pub enum Op {
    /// Adds fresh nodes, each joining through a random node that is up.
    AddNodes(usize),
    /// Crashes a node (kill -9).
    Crash(usize),
    /// Restarts a crashed node, with the state it had persisted when `keep_state`, and has it
    /// join through a random node that is up.
    Restart {
        /// The node.
        node: usize,
        /// Whether it comes back with its state (as from disk) or empty.
        keep_state: bool,
    },
    /// Pauses a node (SIGSTOP).
    Pause(usize),
    /// Resumes a paused node (SIGCONT).
    Resume(usize),
    /// Makes a node slow.
    Slow(usize),
    /// Sets message loss (0.0 to 1.0).
    Loss(f64),
    /// Splits the network into groups; nodes in no group form their own extra group.
    Partition(Vec<Vec<usize>>),
    /// Heals the partition.
    Heal,
    /// Gracefully stops a node.
    Leave(usize),
    /// Has a node write object `sim/default/NAME` with a value of `len` bytes.
    Write {
        /// The writer.
        node: usize,
        /// Object name.
        name: String,
        /// Value size in bytes.
        len: usize,
    },
    /// Has a node delete object `sim/default/NAME`.
    Delete {
        /// The writer.
        node: usize,
        /// Object name.
        name: String,
    },
    /// Sets a node's wall clock this many milliseconds off true time.
    Clock {
        /// The node.
        node: usize,
        /// Its clock's offset from true time.
        offset_ms: i64,
    },
    /// Expects a node to refuse to write object `sim/default/NAME` because its clock is off.
    WriteRefused {
        /// The writer.
        node: usize,
        /// Object name.
        name: String,
    },
    /// Lets virtual time pass.
    Wait(Duration),
    /// Runs until the condition holds, failing if it does not within the given virtual time.
    Expect(Cond, Duration),
    /// Runs for the given virtual time, failing if the condition ever stops holding
    /// (checked every 100 ms).
    Hold(Cond, Duration),
}

/// A condition on the simulated cluster.
#[derive(Clone, Debug)]
pub enum Cond {
    /// Every up node sees every up node alive and every crashed node dead or left.
    Converged,
    /// Every up node other than the target sees the target in this state.
    SeenAs(usize, MemberState),
    /// No up node sees the target in this state.
    NotSeenAs(usize, MemberState),
    /// Every listed observer that is up sees the target in this state.
    SeenAsBy(Vec<usize>, usize, MemberState),
    /// At least one up node sees the target in this state.
    SomeoneSeesAs(usize, MemberState),
    /// Every up node holds object `sim/default/NAME` with a value (not deleted).
    HasObject(String),
    /// Every up node holds object `sim/default/NAME` deleted, or not at all.
    NoObject(String),
    /// Every up node's store has the same fingerprint.
    StoresEqual,
}

/// A scripted run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The simulated network and initial cluster.
    pub config: SimConfig,
    /// The steps.
    pub ops: Vec<Op>,
}

/// Why a scenario failed.
#[derive(Debug)]
pub struct Failure {
    /// The seed of the run.
    pub seed: u64,
    /// Index of the failing step.
    pub step: usize,
    /// The failing step.
    pub op: String,
    /// What was wrong.
    pub reason: String,
    /// Virtual time of the failure.
    pub at_ms: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario failed at step {} ({}) at t={} ms: {}; replay with SHOAL_SIM_SEED={}",
            self.step, self.op, self.at_ms, self.reason, self.seed
        )
    }
}

impl std::error::Error for Failure {}

/// The seed to use: `SHOAL_SIM_SEED` from the environment when set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("SHOAL_SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

fn object(name: &str) -> Key {
    Key::Object(ObjectKey {
        kind: "sim".into(),
        namespace: "default".into(),
        name: name.into(),
    })
}

impl Cond {
    /// Whether the condition holds now; otherwise why not.
    pub fn check(&self, sim: &Sim) -> Result<(), String> {
        let up = sim.up_nodes();
        match self {
            Cond::Converged => {
                if sim.membership_converged() {
                    Ok(())
                } else {
                    Err(describe_membership(sim))
                }
            }
            Cond::SeenAs(target, state) => {
                for &o in up.iter().filter(|&&o| o != *target) {
                    let seen = sim.view(o, *target);
                    if seen != Some(*state) {
                        return Err(format!("n{o} sees n{target} as {seen:?}, not {state:?}"));
                    }
                }
                Ok(())
            }
            Cond::NotSeenAs(target, state) => {
                for &o in up.iter().filter(|&&o| o != *target) {
                    if sim.view(o, *target) == Some(*state) {
                        return Err(format!("n{o} sees n{target} as {state:?}"));
                    }
                }
                Ok(())
            }
            Cond::SeenAsBy(observers, target, state) => {
                for &o in observers.iter().filter(|&&o| sim.is_up(o)) {
                    let seen = sim.view(o, *target);
                    if seen != Some(*state) {
                        return Err(format!("n{o} sees n{target} as {seen:?}, not {state:?}"));
                    }
                }
                Ok(())
            }
            Cond::SomeoneSeesAs(target, state) => {
                if up.iter().any(|&o| sim.view(o, *target) == Some(*state)) {
                    Ok(())
                } else {
                    Err(format!("no node sees n{target} as {state:?}"))
                }
            }
            Cond::HasObject(name) => {
                let key = object(name);
                for &o in &up {
                    let node = sim.node(o).expect("up");
                    if node
                        .store()
                        .get(&key)
                        .and_then(|e| e.value.as_ref())
                        .is_none()
                    {
                        return Err(format!("n{o} does not hold {name}"));
                    }
                }
                Ok(())
            }
            Cond::NoObject(name) => {
                let key = object(name);
                for &o in &up {
                    let node = sim.node(o).expect("up");
                    if node
                        .store()
                        .get(&key)
                        .and_then(|e| e.value.as_ref())
                        .is_some()
                    {
                        return Err(format!("n{o} still holds {name}"));
                    }
                }
                Ok(())
            }
            Cond::StoresEqual => {
                let mut first = None;
                for &o in &up {
                    let fp = sim.node(o).expect("up").store().fingerprint();
                    match first {
                        None => first = Some((o, fp)),
                        Some((f, ffp)) if ffp != fp => {
                            return Err(format!("n{o} and n{f} hold different states"));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }
}

fn describe_membership(sim: &Sim) -> String {
    let mut wrong = Vec::new();
    for o in sim.up_nodes() {
        for t in 0..sim.len() {
            let seen = sim.view(o, t);
            let ok = if sim.is_up(t) {
                seen == Some(MemberState::Alive)
            } else {
                true
            };
            if !ok && wrong.len() < 5 {
                wrong.push(format!("n{o} sees n{t} as {seen:?}"));
            }
        }
    }
    format!("membership not converged: {}", wrong.join(", "))
}

impl Scenario {
    /// A scenario on a LAN of `nodes` nodes with the given seed (overridable by
    /// `SHOAL_SIM_SEED`).
    pub fn lan(nodes: usize, default_seed: u64, ops: Vec<Op>) -> Self {
        Scenario {
            config: SimConfig::lan(nodes, seed(default_seed)),
            ops,
        }
    }

    /// Runs the scenario; returns the simulation at its end, or the first failure.
    pub fn run(&self) -> Result<Sim, Failure> {
        let mut sim = Sim::new(self.config.clone());
        for (step, op) in self.ops.iter().enumerate() {
            let fail = |sim: &Sim, reason: String| Failure {
                seed: self.config.seed,
                step,
                op: format!("{op:?}"),
                reason,
                at_ms: sim.now().as_micros() / 1000,
            };
            match op {
                Op::AddNodes(count) => {
                    for _ in 0..*count {
                        let up = sim.up_nodes();
                        if up.is_empty() {
                            return Err(fail(&sim, "no node is up to join through".into()));
                        }
                        let seed = up[sim.random_index(up.len())];
                        sim.add_node(seed);
                    }
                }
                Op::Crash(n) => sim.crash(*n),
                Op::Restart { node, keep_state } => {
                    let persisted = if *keep_state {
                        sim.last_snapshot(*node)
                    } else {
                        None
                    };
                    let up: Vec<usize> = sim.up_nodes().into_iter().filter(|u| u != node).collect();
                    if up.is_empty() {
                        return Err(fail(&sim, "no node is up to join through".into()));
                    }
                    let seed = up[sim.random_index(up.len())];
                    sim.restart(*node, persisted, seed);
                }
                Op::Pause(n) => sim.pause(*n),
                Op::Resume(n) => sim.resume(*n),
                Op::Slow(n) => sim.set_slow(*n, true),
                Op::Loss(p) => sim.set_loss(*p),
                Op::Partition(groups) => {
                    let mut assignment = vec![groups.len() as u32; sim.len()];
                    for (g, members) in groups.iter().enumerate() {
                        for &m in members {
                            assignment[m] = g as u32;
                        }
                    }
                    sim.partition(assignment);
                }
                Op::Heal => sim.heal(),
                Op::Leave(n) => sim.leave(*n),
                Op::Write { node, name, len } => {
                    if let Err(refused) = write(&mut sim, *node, name, Some(vec![0x5a; *len])) {
                        return Err(fail(&sim, format!("n{node} refused the write: {refused}")));
                    }
                }
                Op::Delete { node, name } => {
                    if let Err(refused) = write(&mut sim, *node, name, None) {
                        return Err(fail(&sim, format!("n{node} refused the write: {refused}")));
                    }
                }
                Op::Clock { node, offset_ms } => sim.set_clock_offset(*node, *offset_ms),
                Op::WriteRefused { node, name } => {
                    match write(&mut sim, *node, name, Some(vec![0x5a; 10])) {
                        Err(ClockRefusal(status))
                            if matches!(status.verdict, ClockVerdict::Off { .. }) => {}
                        Err(refused) => {
                            return Err(fail(
                                &sim,
                                format!("n{node} refused otherwise: {refused}"),
                            ));
                        }
                        Ok(()) => return Err(fail(&sim, format!("n{node} wrote {name}"))),
                    }
                }
                Op::Wait(d) => sim.run_for(*d),
                Op::Expect(cond, within) => {
                    let deadline = sim.now() + *within;
                    loop {
                        match cond.check(&sim) {
                            Ok(()) => break,
                            Err(reason) if sim.now() >= deadline => {
                                return Err(fail(&sim, reason));
                            }
                            Err(_) => sim.run_for(Duration::from_millis(50)),
                        }
                    }
                }
                Op::Hold(cond, during) => {
                    let deadline = sim.now() + *during;
                    while sim.now() < deadline {
                        if let Err(reason) = cond.check(&sim) {
                            return Err(fail(&sim, reason));
                        }
                        sim.run_for(Duration::from_millis(100));
                    }
                }
            }
        }
        Ok(sim)
    }
}

/// A client's write through node `node`: like the CLI, it retries for up to 5 s while the
/// node has not compared its clock with its peers yet (a probe round after it starts).
fn write(
    sim: &mut Sim,
    node: usize,
    name: &str,
    value: Option<Vec<u8>>,
) -> Result<(), ClockRefusal> {
    let deadline = sim.now() + Duration::from_secs(5);
    loop {
        match sim.write_named(node, name, value.clone()) {
            Err(ClockRefusal(status))
                if status.verdict == ClockVerdict::NotCompared && sim.now() < deadline =>
            {
                sim.run_for(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}
