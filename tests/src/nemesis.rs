//! The nemesis: faults injected into a cluster of real agents, and a checker that says whether
//! the cluster came back whole after each, in Jepsen's and etcd's robustness tests' words.
//!
//! # The test bed
//!
//! Every agent runs in a network namespace of its own, with one veth into a hub namespace
//! that bridges them all (`10.77.0.{i+1}/24`; the hub, where the CLI runs, is `10.77.0.254`).
//! Everything is made by the test and goes with it; nothing touches the machine's own
//! network. Pods run with the process runtime (inside their agent's namespace).
//!
//! # Faults
//!
//! [`Fault`]: kill -9 (one, a minority, all) and restart; pause (SIGSTOP longer than the
//! suspicion timeout); partitions made with iptables in the agents' namespaces (one node
//! alone, majority against minority, a ring of overlapping majorities); packet loss and
//! duplication (iptables `statistic` and `TEE`; delay needs netem, which this kernel may lack:
//! then it is skipped and said so); a clock bump or drift (the agent restarted with a
//! test-only clock offset, or drift); a full disk (the data dir on a small tmpfs); a truncated or bit-flipped state file
//! (the agent must refuse to start with a clear message, or recover; the operator's fix is to
//! move the data dir aside); kill -9 while the agent starts and stops pods.
//!
//! # The checker
//!
//! A writer makes unique writes (Deployments of no replica) through random live agents
//! while faults come and go, and records each answer: acknowledged, refused (an answer from
//! the agent that it did not write), or unknown (no answer). Two Deployments run real pods
//! (`sleep`). After each fault heals, within 10 s: every acknowledged write is on every
//! live agent and no refused one is on any; every live agent's state digest is the same;
//! every Deployment runs exactly its replica count, as every agent sees it and as the
//! machine's processes say (nothing runs twice); and, for loss alone, no agent declared any
//! other dead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::{Agent, Scratch, Tmpfs};

/// Replica counts of the Deployments that run pods.
pub const WORKLOADS: [(&str, usize); 2] = [("rep-a", 3), ("rep-b", 5)];

/// How long the checker waits for the cluster to come back whole after a fault heals.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

/// Runs a command given as words (no shell); its error output when it fails.
fn sh(command: &str) -> Result<(), String> {
    let mut words = command.split_whitespace();
    let program = words.next().ok_or("an empty command")?;
    let out = Command::new(program)
        .args(words)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links of one test bed; deleted when dropped.
pub struct Net {
    tag: String,
    nodes: usize,
}

impl Net {
    /// Makes the hub and `nodes` agent namespaces (needs root).
    pub fn create(nodes: usize) -> Result<Net, String> {
        let tag = format!("shn{}", std::process::id() % 100_000);
        let net = Net { tag, nodes };
        let hub = net.hub();
        let _ = sh(&format!("ip netns del {hub}"));
        sh(&format!("ip netns add {hub}"))?;
        let in_hub = |command: &str| sh(&format!("ip netns exec {hub} ip {command}"));
        in_hub("link set lo up")?;
        in_hub("link add br0 type bridge")?;
        in_hub("addr add 10.77.0.254/24 dev br0")?;
        in_hub("link set br0 up")?;
        for i in 0..nodes {
            let ns = net.ns(i);
            let _ = sh(&format!("ip netns del {ns}"));
            sh(&format!("ip netns add {ns}"))?;
            in_hub(&format!(
                "link add h{i} type veth peer name eth0 netns {ns}"
            ))?;
            in_hub(&format!("link set h{i} master br0"))?;
            in_hub(&format!("link set h{i} up"))?;
            let in_node = |command: &str| sh(&format!("ip netns exec {ns} ip {command}"));
            in_node("link set lo up")?;
            in_node(&format!("addr add {}/24 dev eth0", net.addr(i)))?;
            in_node("link set eth0 up")?;
        }
        Ok(net)
    }

    /// The hub's namespace (where the CLI runs).
    pub fn hub(&self) -> String {
        format!("{}-hub", self.tag)
    }

    /// Agent `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.tag)
    }

    /// Agent `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// Runs `command` (words) in agent `i`'s namespace.
    fn in_node(&self, i: usize, command: &str) -> Result<(), String> {
        sh(&format!("ip netns exec {} {command}", self.ns(i)))
    }

    /// The other agents than `i`, with their addresses.
    fn peers(&self, i: usize) -> impl Iterator<Item = (usize, String)> + '_ {
        (0..self.nodes)
            .filter(move |&j| j != i)
            .map(|j| (j, self.addr(j)))
    }

    /// Cuts the agents into `groups`: an agent hears only the agents of its own groups (groups
    /// may overlap, as in a ring). The hub still reaches everyone.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), String> {
        for i in 0..self.nodes {
            let reach: BTreeSet<usize> = groups
                .iter()
                .filter(|g| g.contains(&i))
                .flatten()
                .copied()
                .collect();
            for (_, peer) in self.peers(i).filter(|(j, _)| !reach.contains(j)) {
                self.in_node(i, &format!("iptables -w -A INPUT -s {peer} -j DROP"))?;
                self.in_node(i, &format!("iptables -w -A OUTPUT -d {peer} -j DROP"))?;
            }
        }
        Ok(())
    }

    /// Drops `percent` of the packets each agent receives from the others.
    pub fn loss(&self, percent: u32) -> Result<(), String> {
        let p = f64::from(percent) / 100.0;
        for i in 0..self.nodes {
            for (_, peer) in self.peers(i) {
                self.in_node(
                    i,
                    &format!(
                        "iptables -w -A INPUT -s {peer} -m statistic --mode random \
                         --probability {p:.2} -j DROP"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// Sends every UDP packet between agents twice (iptables `TEE`).
    pub fn duplicate(&self) -> Result<(), String> {
        for i in 0..self.nodes {
            for (_, peer) in self.peers(i) {
                self.in_node(
                    i,
                    &format!(
                        "iptables -w -t mangle -A POSTROUTING -d {peer} -p udp -j TEE \
                         --gateway {peer}"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// Whether the kernel can delay packets (tc netem).
    pub fn can_delay(&self) -> bool {
        let added = self
            .in_node(0, "tc qdisc add dev eth0 root netem delay 1ms")
            .is_ok();
        if added {
            let _ = self.in_node(0, "tc qdisc del dev eth0 root");
        }
        added
    }

    /// Delays every packet an agent sends by `ms`, give or take 10 ms (netem).
    pub fn delay(&self, ms: u32) -> Result<(), String> {
        for i in 0..self.nodes {
            self.in_node(
                i,
                &format!("tc qdisc add dev eth0 root netem delay {ms}ms 10ms"),
            )?;
        }
        Ok(())
    }

    /// Removes every partition, loss, duplication and delay.
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.nodes {
            self.in_node(i, "iptables -w -F")?;
            self.in_node(i, "iptables -w -t mangle -F")?;
            let _ = self.in_node(i, "tc qdisc del dev eth0 root");
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = sh(&format!("ip netns del {}", self.ns(i)));
        }
        let _ = sh(&format!("ip netns del {}", self.hub()));
    }
}

/// A fault, held for a while, then healed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of these agents (their pods live on), restarted at the heal.
    Kill(Vec<usize>),
    /// SIGSTOP of an agent, SIGCONT at the heal.
    Pause(usize),
    /// The agents cut into groups (which may overlap).
    Partition(Vec<Vec<usize>>),
    /// This share of packets between agents dropped.
    Loss(u32),
    /// Every packet between agents sent twice.
    Duplicate,
    /// Every packet delayed by this many ms (netem).
    Delay(u32),
    /// The agent restarted with its clock this many ms off, and back at the heal.
    ClockBump(usize, i64),
    /// The agent restarted with its clock drifting by this many parts per million (it
    /// starts on time and drifts off), and back at the heal.
    ClockDrift(usize, i64),
    /// The agent's data dir's disk filled up.
    DiskFull(usize),
    /// The agent killed, its state file cut to this share of its length (percent), and
    /// restarted.
    TruncateState(usize, u32),
    /// The agent killed, a byte of its state file flipped, and restarted.
    FlipState(usize),
    /// The agent killed -9 right after a scale up and down made it start and stop pods, and
    /// restarted.
    KillDuringRuntimeOps(usize),
}

impl Fault {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Fault::Kill(nodes) if nodes.len() == 1 => format!("kill -9 node-{}", nodes[0]),
            Fault::Kill(nodes) => format!("kill -9 of {} agents {nodes:?}", nodes.len()),
            Fault::Pause(i) => format!("SIGSTOP node-{i}"),
            Fault::Partition(groups) => format!("partition {groups:?}"),
            Fault::Loss(p) => format!("{p}% packet loss"),
            Fault::Duplicate => "every packet twice".into(),
            Fault::Delay(ms) => format!("{ms} ms delay"),
            Fault::ClockBump(i, ms) => format!("clock of node-{i} {ms:+} ms"),
            Fault::ClockDrift(i, ppm) => {
                format!("clock of node-{i} drifting {:+} ms/s", ppm / 1000)
            }
            Fault::DiskFull(i) => format!("disk of node-{i} full"),
            Fault::TruncateState(i, p) => format!("state of node-{i} truncated to {p}%"),
            Fault::FlipState(i) => format!("a byte of node-{i}'s state flipped"),
            Fault::KillDuringRuntimeOps(i) => format!("kill -9 node-{i} amid pod starts"),
        }
    }
}

/// The answers the writer got.
#[derive(Default)]
pub struct Ledger {
    /// Writes answered as made.
    pub acked: BTreeSet<String>,
    /// Writes answered as not made.
    pub refused: BTreeSet<String>,
    /// Writes with no answer (the agent died, or the connection broke).
    pub unknown: BTreeSet<String>,
}

/// A cluster of agents in network namespaces, with the writer and the checker.
pub struct Bed {
    pub net: Net,
    pub agents: Vec<Agent>,
    /// The data dirs' filesystems (for disk-full faults).
    pub disks: Vec<Tmpfs>,
    pub ledger: Arc<Mutex<Ledger>>,
    /// Marks the pods' processes as this test bed's.
    pub marker: String,
    /// The agents' arguments beyond their addresses.
    args: Vec<String>,
    scratch: Scratch,
    writer: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    /// Which agents are meant to run (a fault's victims are not, until the heal).
    pub up: Arc<Mutex<Vec<bool>>>,
}

/// Extra arguments of every agent: the process runtime, and a small disk reserve (the data
/// dirs are 32 MiB filesystems).
const AGENT_ARGS: &[&str] = &["--runtime", "process", "--disk-reserve-mb", "4"];

impl Bed {
    /// Starts `n` agents in namespaces, joined, with the two workloads running.
    pub fn start(test: &str, n: usize) -> Bed {
        let net = Net::create(n).expect("making the network namespaces");
        let scratch = Scratch::new(test);
        let key_file = crate::new_key_file(scratch.path());
        let marker = format!("86400.{}", std::process::id());
        // The APIs listen on the namespaces' addresses, beyond loopback: they need a token.
        let token = format!("nemesis-token-{:016x}", std::process::id());
        let token_file = scratch.path().join("api.token");
        std::fs::write(&token_file, &token).expect("writing the API token");
        set_private(&token_file);
        let token_arg = token_file.to_str().expect("UTF-8 path").to_owned();
        let mut agents = Vec::new();
        let mut disks = Vec::new();
        for i in 0..n {
            let name = format!("node-{i}");
            let mut agent = Agent::new(scratch.path(), &name, &key_file);
            let disk = Tmpfs::mount(&scratch.path().join(format!("{name}-disk")), 32 << 20)
                .expect("mounting a data dir");
            agent.dir = disk.path().join("data");
            agent.netns = Some(net.ns(i));
            agent.client_netns = Some(net.hub());
            agent.gossip = Some(format!("{}:7946", net.addr(i)));
            agent.api = Some(format!("{}:7947", net.addr(i)));
            agent.api_token = Some(token.clone());
            let join: Vec<String> = (i > 0)
                .then(|| format!("{}:7946", net.addr(0)))
                .into_iter()
                .collect();
            let mut args = AGENT_ARGS.to_vec();
            args.extend_from_slice(&["--api-token-file", &token_arg]);
            agent.start_with(&join, &args);
            agents.push(agent);
            disks.push(disk);
        }
        let bed = Bed {
            net,
            agents,
            disks,
            ledger: Arc::default(),
            marker,
            args: AGENT_ARGS
                .iter()
                .map(|a| (*a).to_owned())
                .chain(["--api-token-file".to_owned(), token_arg])
                .collect(),
            scratch,
            writer: None,
            up: Arc::new(Mutex::new(vec![true; n])),
        };
        bed.wait("the cluster to form", Duration::from_secs(30), |b| {
            b.members_alive_everywhere()
        });
        for (name, replicas) in WORKLOADS {
            let manifest = bed.workload(name, replicas);
            bed.apply(0, name, &manifest).expect("applying a workload");
        }
        bed.wait("the workloads to run", Duration::from_secs(60), |b| {
            b.replicas_exact()
        });
        bed
    }

    /// A Deployment of `replicas` pods that sleep, marked as this bed's.
    fn workload(&self, name: &str, replicas: usize) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
             replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}}}}}\n    spec:\n      \
             terminationGracePeriodSeconds: 1\n      containers:\n      - {{name: s, image: \
             process, command: [sleep, \"{}\"]}}\n",
            self.marker
        )
    }

    /// `shoal apply -f` of `yaml` through agent `via`.
    pub fn apply(&self, via: usize, name: &str, yaml: &str) -> Result<String, String> {
        crate::apply_manifest(&self.agents[via], self.scratch.path(), name, yaml)
    }

    /// Polls `check` until it holds or `timeout` passes; panics then, with the agents' logs.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Bed) -> Result<(), String>,
    ) -> Duration {
        crate::wait_until(what, timeout, &self.agents, || check(self))
    }

    /// The agents meant to run.
    pub fn live(&self) -> Vec<usize> {
        let up = self.up.lock().unwrap();
        (0..self.agents.len()).filter(|&i| up[i]).collect()
    }

    /// Every live agent sees every live agent alive.
    pub fn members_alive_everywhere(&self) -> Result<(), String> {
        let live = self.live();
        for &i in &live {
            let nodes = self.agents[i].nodes()?;
            for &j in &live {
                // By name: a node started anew from an empty data dir is a new member under
                // its old name, beside its old identity, dead.
                let name = &self.agents[j].name;
                let states: Vec<&str> = nodes
                    .iter()
                    .filter(|(n, _, _)| n == name)
                    .map(|(_, state, _)| state.as_str())
                    .collect();
                if !states.contains(&"alive") {
                    return Err(format!("node-{i} sees {name} as {states:?}"));
                }
            }
        }
        Ok(())
    }

    /// Starts the writer: a unique write every `every` through a random live agent.
    pub fn start_writer(&mut self, every: Duration, seed: u64) {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<Agent> = self.agents.iter().map(Agent::client_of).collect();
        let ledger = self.ledger.clone();
        let up = self.up.clone();
        let dir = self.scratch.path().to_owned();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut n = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let live: Vec<usize> = {
                    let up = up.lock().unwrap();
                    (0..clients.len()).filter(|&i| up[i]).collect()
                };
                if let Some(&via) = live.get(rng.below(live.len().max(1))) {
                    n += 1;
                    let name = format!("w-{n}");
                    let yaml = format!(
                        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\n\
                         spec:\n  replicas: 0\n  selector: {{matchLabels: {{app: {name}}}}}\n  \
                         template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      \
                         containers:\n      - {{name: a, image: x, command: [/bin/true]}}\n"
                    );
                    let answer = crate::apply_manifest(&clients[via], &dir, &name, &yaml);
                    let mut ledger = ledger.lock().unwrap();
                    match answer {
                        Ok(_) => ledger.acked.insert(name),
                        // The agent answered, and said it did not write.
                        Err(e) if e.contains("the agent refused") => ledger.refused.insert(name),
                        Err(_) => ledger.unknown.insert(name),
                    };
                }
                std::thread::sleep(every);
            }
        });
        self.writer = Some((stop, thread));
    }

    /// Stops the writer.
    pub fn stop_writer(&mut self) {
        if let Some((stop, thread)) = self.writer.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }

    /// Every acknowledged write on every live agent, and no refused one on any.
    pub fn writes_everywhere(&self) -> Result<(), String> {
        let (acked, refused) = {
            let ledger = self.ledger.lock().unwrap();
            (ledger.acked.clone(), ledger.refused.clone())
        };
        for i in self.live() {
            let listed = self.agents[i].cli(&["get", "deploy", "-o", "name"])?;
            let have: BTreeSet<&str> = listed
                .lines()
                .filter_map(|l| l.trim().rsplit('/').next())
                .collect();
            if let Some(missing) = acked.iter().find(|w| !have.contains(w.as_str())) {
                return Err(format!("node-{i} lacks acknowledged {missing}"));
            }
            if let Some(extra) = refused.iter().find(|w| have.contains(w.as_str())) {
                return Err(format!("node-{i} holds refused {extra}"));
            }
        }
        Ok(())
    }

    /// Every live agent's state digest is the same.
    pub fn digests_equal(&self) -> Result<(), String> {
        let mut digests = BTreeMap::new();
        for i in self.live() {
            let stats = self.stats(i)?;
            let digest = stats["state_digest"].as_str().unwrap_or("").to_owned();
            digests.insert(format!("node-{i}"), digest);
        }
        let distinct: BTreeSet<&String> = digests.values().collect();
        match distinct.len() {
            1 => Ok(()),
            _ => Err(format!("state digests differ: {digests:?}")),
        }
    }

    /// `GET /api/v1/stats` of agent `i`.
    pub fn stats(&self, i: usize) -> Result<Value, String> {
        let (code, body) = self.agents[i].http("GET", "/api/v1/stats", None);
        if code != 200 {
            return Err(format!("node-{i} stats: {code} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("node-{i} stats: {e}"))
    }

    /// Deaths each live agent declared so far.
    pub fn deaths(&self) -> Result<BTreeMap<usize, u64>, String> {
        self.live()
            .into_iter()
            .map(|i| {
                let stats = self.stats(i)?;
                Ok((i, stats["gossip"]["deaths_declared"].as_u64().unwrap_or(0)))
            })
            .collect()
    }

    /// Every workload runs exactly its replicas: every live agent lists that many ready pods
    /// of it, and the machine runs that many of its processes in all.
    pub fn replicas_exact(&self) -> Result<(), String> {
        for i in self.live() {
            let text = self.agents[i].cli(&["get", "pods", "-o", "json"])?;
            let list: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            for (name, replicas) in WORKLOADS {
                let ready = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        p["metadata"]["labels"]["app"] == name
                            && p["status"]["phase"] == "Running"
                            && p["metadata"]["deletionTimestamp"].is_null()
                            && p["status"]["conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                    .count();
                if ready != replicas {
                    return Err(format!(
                        "node-{i} lists {ready} ready {name}, not {replicas}"
                    ));
                }
            }
        }
        let running = processes_with(&self.marker);
        let wanted: usize = WORKLOADS.iter().map(|(_, r)| r).sum();
        if running != wanted {
            return Err(format!("{running} pod processes run, not {wanted}"));
        }
        Ok(())
    }

    /// Whether the cluster is whole: the checks above, all at once.
    pub fn whole(&self) -> Result<(), String> {
        self.members_alive_everywhere()?;
        self.writes_everywhere()?;
        self.digests_equal()?;
        self.replicas_exact()
    }

    /// Starts agent `i` again (after a kill), with `extra` arguments.
    pub fn restart(&mut self, i: usize, extra: &[&str]) {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        self.agents[i].start_with(&[], &args);
        self.up.lock().unwrap()[i] = true;
    }

    /// Kills agent `i` with SIGKILL (its pods live on) and marks it down.
    pub fn kill(&mut self, i: usize) {
        self.up.lock().unwrap()[i] = false;
        self.agents[i].kill9();
    }

    /// Injects `fault`; returns what heals it.
    pub fn inject(&mut self, fault: &Fault) -> Result<Heal, String> {
        match fault {
            Fault::Kill(nodes) => {
                for &i in nodes {
                    self.kill(i);
                }
                Ok(Heal::Restart(nodes.clone(), Vec::new()))
            }
            Fault::Pause(i) => {
                self.up.lock().unwrap()[*i] = false;
                self.agents[*i].signal("STOP");
                Ok(Heal::Continue(*i))
            }
            Fault::Partition(groups) => self.net.partition(groups).map(|()| Heal::Network),
            Fault::Loss(p) => self.net.loss(*p).map(|()| Heal::Network),
            Fault::Duplicate => self.net.duplicate().map(|()| Heal::Network),
            Fault::Delay(ms) => self.net.delay(*ms).map(|()| Heal::Network),
            Fault::ClockBump(i, ms) => {
                self.kill(*i);
                self.restart(*i, &["--clock-offset-ms", &ms.to_string()]);
                Ok(Heal::Restart(vec![*i], vec!["kill".into()]))
            }
            Fault::ClockDrift(i, ppm) => {
                self.kill(*i);
                self.restart(*i, &["--clock-drift-ppm", &ppm.to_string()]);
                Ok(Heal::Restart(vec![*i], vec!["kill".into()]))
            }
            Fault::DiskFull(i) => {
                self.disks[*i].fill(1 << 20);
                Ok(Heal::FreeDisk(*i))
            }
            Fault::TruncateState(i, percent) => {
                self.kill(*i);
                let path = self.agents[*i].dir.join("state.redb");
                let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| e.to_string())?;
                file.set_len(len * u64::from(*percent) / 100)
                    .map_err(|e| e.to_string())?;
                Ok(Heal::StartDamaged(*i))
            }
            Fault::FlipState(i) => {
                self.kill(*i);
                let path = self.agents[*i].dir.join("state.redb");
                let mut bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                // A byte inside the data, past redb's header and its two commit slots.
                let at = (bytes.len() / 2).max(4096).min(bytes.len() - 1);
                bytes[at] ^= 0x5a;
                std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
                Ok(Heal::StartDamaged(*i))
            }
            Fault::KillDuringRuntimeOps(i) => {
                // Every pod of rep-a moves: scale to 0 and back makes every agent stop and
                // start pods; kill -9 lands amid it.
                let (name, replicas) = WORKLOADS[0];
                let via = self.live().into_iter().find(|&j| j != *i).unwrap_or(0);
                let scale = |n: usize| {
                    self.agents[via].cli(&[
                        "scale",
                        "deployment",
                        name,
                        "--replicas",
                        &n.to_string(),
                    ])
                };
                scale(0)?;
                std::thread::sleep(Duration::from_millis(300));
                scale(replicas)?;
                std::thread::sleep(Duration::from_millis(150));
                self.kill(*i);
                Ok(Heal::Restart(vec![*i], Vec::new()))
            }
        }
    }

    /// Heals a fault; returns what the agent said when it refused a damaged state file, if it
    /// did.
    pub fn heal(&mut self, heal: Heal) -> Result<Option<String>, String> {
        match heal {
            Heal::Restart(nodes, how) => {
                for i in nodes {
                    if how.iter().any(|h| h == "kill") {
                        self.kill(i);
                    }
                    self.restart(i, &[]);
                }
                Ok(None)
            }
            Heal::Continue(i) => {
                self.agents[i].signal("CONT");
                self.up.lock().unwrap()[i] = true;
                Ok(None)
            }
            Heal::Network => self.net.heal().map(|()| None),
            Heal::FreeDisk(i) => {
                self.disks[i].free();
                Ok(None)
            }
            Heal::StartDamaged(i) => {
                // The agent must refuse the damaged file, saying so, or recover from it.
                let refused = self.start_or_refusal(i)?;
                if refused.is_some() {
                    // The operator's fix: move the data dir aside; the node comes back as a
                    // new member (the old identity stays dead) and resyncs from its peers. The
                    // pods the old one ran go with it, as when a machine is wiped.
                    for pid in self.agents[i].pod_pids() {
                        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                    }
                    let dir = self.agents[i].dir.clone();
                    let _ = std::fs::remove_dir_all(&dir);
                    let join = format!("{}:7946", self.net.addr((i + 1) % self.agents.len()));
                    let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
                    args.extend_from_slice(&["--join", &join]);
                    self.agents[i].start_with(&[], &args);
                    self.up.lock().unwrap()[i] = true;
                }
                Ok(refused)
            }
        }
    }

    /// Starts agent `i`; if it exits at start, returns what it said.
    fn start_or_refusal(&mut self, i: usize) -> Result<Option<String>, String> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        match self.agents[i].try_start_with(&[], &args) {
            Ok(()) => {
                self.up.lock().unwrap()[i] = true;
                Ok(None)
            }
            Err(said) => Ok(Some(said)),
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop_writer();
        for agent in &mut self.agents {
            agent.kill9();
        }
        kill_processes_with(&self.marker);
    }
}

/// What heals an injected fault.
#[derive(Debug)]
pub enum Heal {
    /// Start these agents again (after killing them, if the list says `kill`).
    Restart(Vec<usize>, Vec<String>),
    /// SIGCONT.
    Continue(usize),
    /// Flush the namespaces' iptables rules and qdiscs.
    Network,
    /// Remove the filler from the agent's data dir.
    FreeDisk(usize),
    /// Start the agent with its damaged state file.
    StartDamaged(usize),
}

/// Mode 0600 (the agent warns about secrets others can read).
fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    pids_with(marker).len()
}

fn pids_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let text = String::from_utf8_lossy(&c);
                // `sleep <marker>` itself, not a shell or grep naming it.
                text.starts_with("sleep\0") && text.contains(marker)
            })
        })
        .collect()
}

fn kill_processes_with(marker: &str) {
    for pid in pids_with(marker) {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

/// A small seeded generator (splitmix64): the long run's faults follow from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// A random fault for a cluster of `n` agents.
pub fn random_fault(rng: &mut Rng, n: usize, can_delay: bool) -> Fault {
    let node = rng.below(n);
    let minority: Vec<usize> = {
        let start = rng.below(n);
        (0..(n - 1) / 2).map(|k| (start + k) % n).collect()
    };
    match rng.below(16) {
        0 => Fault::Kill(vec![node]),
        1 => Fault::Kill(minority),
        2 => Fault::Kill((0..n).collect()),
        3 => Fault::Pause(node),
        4 => Fault::Partition(vec![vec![node], (0..n).filter(|&j| j != node).collect()]),
        5 => {
            let rest: Vec<usize> = (0..n).filter(|j| !minority.contains(j)).collect();
            Fault::Partition(vec![minority, rest])
        }
        6 => Fault::Partition(ring(n)),
        7 => Fault::Loss(20),
        8 => Fault::Duplicate,
        9 if can_delay => Fault::Delay(100),
        9 => Fault::Loss(10),
        10 => Fault::ClockBump(node, if rng.below(2) == 0 { 2_000 } else { -2_000 }),
        11 => Fault::DiskFull(node),
        12 => Fault::KillDuringRuntimeOps(node),
        13 => Fault::TruncateState(node, 50),
        14 => Fault::ClockDrift(node, if rng.below(2) == 0 { 200_000 } else { -200_000 }),
        _ => Fault::FlipState(node),
    }
}

/// Overlapping majorities in a ring: each agent hears only its two neighbours (with 5 agents,
/// each hears a majority of 3, and no two hear the same 3).
pub fn ring(n: usize) -> Vec<Vec<usize>> {
    (0..n).map(|i| vec![i, (i + 1) % n]).collect()
}
