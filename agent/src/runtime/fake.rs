//! An in-memory [`Runtime`] for tests: pods are entries in a map, containers are states, and
//! nothing sleeps or touches the machine, so it runs in virtual time.
//!
//! It follows the trait's contract like the real runtimes do (the conformance suite checks
//! it), and lets a test script what real containers would do:
//!
//! - a container whose env has `FAKE_EXIT_CODE=N` exits with `N` as soon as it (re)starts, and
//!   one with `FAKE_LOG=text` writes `text` and a newline to its log at each (re)start;
//! - [`FakeRuntime::crash`] ends a running container, [`FakeRuntime::lose`] makes a pod vanish;
//! - [`FakeRuntime::fail_next_start`] makes the next start of a pod fail,
//!   [`FakeRuntime::set_image_missing`] and [`FakeRuntime::set_unpullable`] script images;
//! - [`FakeRuntime::set_probe`] scripts what a probe of a container answers
//!   ([`FakeRuntime::probe`]), and exec answers are scripted by command;
//! - timestamps come from [`FakeRuntime::set_now_ms`], the caller's virtual wall clock;
//! - [`FakeRuntime::calls`] records every call that changes something, in order, volume
//!   updates included ([`FakeRuntime::volume`] shows a pod's volume as last written);
//! - [`FakeRuntime::crash_at`] makes the next start or removal stop short, leaving a pod with
//!   some containers created (and not started) or removed, as an agent killed in the middle
//!   would: [`Runtime::recover`] removes such incomplete pods, and `start_pod` replaces one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use super::{
    ContainerInfo, ContainerState, ExecResult, LogStream, PodInfo, PodSpec, Recovery, Runtime,
    RuntimeError, RuntimeKind, VolumeSpec, validate_spec,
};
use crate::manifest::ProbeKind;

/// Env: the container exits with this code as soon as it starts.
pub(crate) const EXIT_CODE_ENV: &str = "FAKE_EXIT_CODE";
/// Env: the container writes this line to its log when it starts.
pub(crate) const LOG_ENV: &str = "FAKE_LOG";

/// A call that changed (or tried to change) the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Pull(String),
    Start(String),
    Restart(String, String),
    Stop(String),
    Remove(String),
    /// A volume update: the pod's uid and the volume's name.
    UpdateVolume(String, String),
}

/// What a scripted probe answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProbeAnswer {
    Pass,
    Fail(String),
    /// Fails until the container has run this long, then passes.
    PassAfter(Duration),
}

#[derive(Debug)]
struct FakeContainer {
    name: String,
    image: String,
    runtime_id: String,
    state: ContainerState,
    env: Vec<(String, String)>,
    log: Vec<u8>,
}

#[derive(Debug)]
struct FakePod {
    spec: PodSpec,
    ip: IpAddr,
    containers: Vec<FakeContainer>,
    /// What tests set with [`FakeRuntime::set_scratch_bytes`].
    scratch_bytes: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    now_ms: u64,
    pods: BTreeMap<String, FakePod>,
    missing_images: BTreeSet<String>,
    unpullable: BTreeMap<String, String>,
    start_failures: BTreeMap<String, VecDeque<String>>,
    probes: BTreeMap<(String, String, ProbeKind), ProbeAnswer>,
    default_probes: BTreeMap<ProbeKind, ProbeAnswer>,
    exec_answers: BTreeMap<Vec<String>, (i32, Vec<u8>)>,
    calls: Vec<Call>,
    next_id: u64,
}

/// The fake runtime. Cheap to create; all state behind one lock.
#[derive(Debug, Default)]
pub(crate) struct FakeRuntime {
    state: Mutex<State>,
    #[cfg(test)]
    crash: super::CrashSwitch,
}

impl FakeContainer {
    fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A (re)start: running, then what its env scripts.
    fn run(&mut self, id: u64, now_ms: u64) {
        self.runtime_id = format!("fake-{id}");
        self.state = ContainerState::Running {
            started_at_ms: Some(now_ms),
        };
        if let Some(line) = self.env(LOG_ENV).map(str::to_owned) {
            self.log.extend_from_slice(line.as_bytes());
            self.log.push(b'\n');
        }
        if let Some(code) = self.env(EXIT_CODE_ENV).and_then(|c| c.parse().ok()) {
            self.state = ContainerState::exited(Some(code), Some(now_ms), None);
        }
    }

    fn started_at_ms(&self) -> Option<u64> {
        match self.state {
            ContainerState::Running { started_at_ms } => started_at_ms,
            _ => None,
        }
    }
}

impl FakePod {
    /// Every container of the spec is there and was started.
    fn is_whole(&self) -> bool {
        self.containers.len() == self.spec.containers.len()
            && self
                .containers
                .iter()
                .all(|c| !matches!(c.state, ContainerState::Created))
    }

    fn info(&self) -> PodInfo {
        PodInfo {
            uid: self.spec.uid.clone(),
            namespace: self.spec.namespace.clone(),
            name: self.spec.name.clone(),
            spec_hash: self.spec.spec_hash.clone(),
            labels: self.spec.labels.clone(),
            ip: Some(self.ip),
            volume_dirs: self
                .spec
                .volumes
                .iter()
                .map(|v| v.name.clone())
                .chain(self.spec.scratch.iter().map(|s| s.name.clone()))
                .map(|name| {
                    let dir = format!("fake:{}/{name}", self.spec.uid);
                    (name, dir)
                })
                .chain(
                    self.spec
                        .host_paths
                        .iter()
                        .map(|h| (h.name.clone(), h.path.clone())),
                )
                .collect(),
            // As the real runtimes: the limited scratch volumes only (0 until a test sets it).
            scratch_bytes: self
                .spec
                .scratch
                .iter()
                .filter(|s| s.size_limit.is_some())
                .map(|s| {
                    let bytes = self.scratch_bytes.get(&s.name).copied().unwrap_or(0);
                    (s.name.clone(), bytes)
                })
                .collect(),
            containers: self
                .containers
                .iter()
                .map(|c| ContainerInfo {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    runtime_id: c.runtime_id.clone(),
                    state: c.state.clone(),
                })
                .collect(),
        }
    }

    fn container_mut(&mut self, name: &str) -> Result<&mut FakeContainer, RuntimeError> {
        let uid = self.spec.uid.clone();
        self.containers
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or(RuntimeError::ContainerNotFound {
                pod_uid: uid,
                container: name.to_owned(),
            })
    }
}

impl State {
    fn pod_mut(&mut self, uid: &str) -> Result<&mut FakePod, RuntimeError> {
        self.pods.get_mut(uid).ok_or(RuntimeError::PodNotFound {
            pod_uid: uid.to_owned(),
        })
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl FakeRuntime {
    pub(crate) fn new() -> Self {
        FakeRuntime::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the wall clock that timestamps come from (ms since the Unix epoch).
    pub(crate) fn set_now_ms(&self, now_ms: u64) {
        self.state().now_ms = now_ms;
    }

    /// Ends a running container with `exit_code`, as a crash would.
    pub(crate) fn crash(&self, uid: &str, container: &str, exit_code: i32) {
        let mut state = self.state();
        let now = state.now_ms;
        let c = state
            .pod_mut(uid)
            .and_then(|p| p.container_mut(container))
            .expect("crash: no such container");
        c.state = ContainerState::exited(Some(exit_code), Some(now), None);
    }

    /// The pod vanishes, as if someone removed it behind the agent's back.
    pub(crate) fn lose(&self, uid: &str) {
        self.state().pods.remove(uid);
    }

    /// The next start of the pod named `pod_name` fails with `message`.
    pub(crate) fn fail_next_start(&self, pod_name: &str, message: &str) {
        self.state()
            .start_failures
            .entry(pod_name.to_owned())
            .or_default()
            .push_back(message.to_owned());
    }

    /// `image` is not on the node: starting a pod with it fails until it is pulled.
    pub(crate) fn set_image_missing(&self, image: &str) {
        self.state().missing_images.insert(image.to_owned());
    }

    /// Pulling `image` fails with `reason` (`None`: it succeeds again).
    pub(crate) fn set_unpullable(&self, image: &str, reason: Option<&str>) {
        let mut state = self.state();
        match reason {
            Some(reason) => state.unpullable.insert(image.to_owned(), reason.to_owned()),
            None => state.unpullable.remove(image),
        };
    }

    /// What probes of `kind` of container `container` in pods named `pod_name` answer.
    pub(crate) fn set_probe(
        &self,
        pod_name: &str,
        container: &str,
        kind: ProbeKind,
        answer: ProbeAnswer,
    ) {
        self.state()
            .probes
            .insert((pod_name.to_owned(), container.to_owned(), kind), answer);
    }

    /// What probes of `kind` answer when nothing more specific is scripted (default: pass).
    pub(crate) fn set_default_probe(&self, kind: ProbeKind, answer: ProbeAnswer) {
        self.state().default_probes.insert(kind, answer);
    }

    /// What an exec of `command` answers (default: exit code 0, no output).
    pub(crate) fn set_exec_answer(&self, command: &[&str], exit_code: i32, output: &str) {
        self.state().exec_answers.insert(
            command.iter().map(|s| s.to_string()).collect(),
            (exit_code, output.as_bytes().to_vec()),
        );
    }

    /// The scripted answer of a probe of a running container.
    pub(crate) fn probe(&self, uid: &str, container: &str, kind: ProbeKind) -> Result<(), String> {
        let state = self.state();
        let pod = state.pods.get(uid).ok_or("no such pod")?;
        let c = pod
            .containers
            .iter()
            .find(|c| c.name == container)
            .ok_or("no such container")?;
        let Some(started) = c.started_at_ms() else {
            return Err("the container is not running".into());
        };
        let answer = state
            .probes
            .get(&(pod.spec.name.clone(), container.to_owned(), kind))
            .or_else(|| state.default_probes.get(&kind))
            .unwrap_or(&ProbeAnswer::Pass);
        match answer {
            ProbeAnswer::Pass => Ok(()),
            ProbeAnswer::Fail(message) => Err(message.clone()),
            ProbeAnswer::PassAfter(after) => {
                if state.now_ms.saturating_sub(started) >= after.as_millis() as u64 {
                    Ok(())
                } else {
                    Err("not ready yet".into())
                }
            }
        }
    }

    /// Makes the next operation stop short at `point`, as if the agent were killed there.
    #[cfg(test)]
    pub(crate) fn crash_at(&self, point: super::CrashPoint) {
        self.crash.arm(point);
    }

    /// Every call that changed something, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The pod's volume `name` as last written (by its start or an update).
    pub(crate) fn volume(&self, uid: &str, name: &str) -> Option<VolumeSpec> {
        self.state()
            .pods
            .get(uid)?
            .spec
            .volumes
            .iter()
            .find(|v| v.name == name)
            .cloned()
    }

    /// The spec the pod was started with (its volumes as last written).
    pub(crate) fn pod_spec(&self, uid: &str) -> Option<PodSpec> {
        Some(self.state().pods.get(uid)?.spec.clone())
    }

    /// Makes listings report that the pod's scratch volume `name` holds `bytes`
    /// ([`PodInfo::scratch_bytes`]; only for a scratch volume with a size limit).
    pub(crate) fn set_scratch_bytes(&self, uid: &str, name: &str, bytes: u64) {
        if let Some(pod) = self.state().pods.get_mut(uid) {
            pod.scratch_bytes.insert(name.to_string(), bytes);
        }
    }

    /// The uids of the pods it holds.
    pub(crate) fn pod_uids(&self) -> Vec<String> {
        self.state().pods.keys().cloned().collect()
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        // It runs no images, as the process runtime; image scripting is for tests that pull.
        RuntimeKind::Process
    }

    async fn recover(&self) -> Result<Recovery, RuntimeError> {
        let mut state = self.state();
        let mut recovery = Recovery::default();
        state.pods.retain(|uid, pod| {
            if pod.is_whole() {
                return true;
            }
            recovery.killed += pod
                .containers
                .iter()
                .filter(|c| matches!(c.state, ContainerState::Running { .. }))
                .count();
            recovery.removed.push(uid.clone());
            false
        });
        Ok(recovery)
    }

    async fn ensure_image(
        &self,
        image: &str,
        on_progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), RuntimeError> {
        let (result, pulled) = {
            let mut state = self.state();
            state.calls.push(Call::Pull(image.to_owned()));
            if let Some(reason) = state.unpullable.get(image) {
                (
                    Err(RuntimeError::ImagePull {
                        image: image.to_owned(),
                        reason: reason.clone(),
                    }),
                    false,
                )
            } else {
                (Ok(()), state.missing_images.remove(image))
            }
        };
        if pulled {
            on_progress(format!("pulling image {image}"));
        }
        result
    }

    async fn start_pod(&self, pod: &PodSpec) -> Result<PodInfo, RuntimeError> {
        validate_spec(pod)?;
        let mut state = self.state();
        state.calls.push(Call::Start(pod.uid.clone()));
        match state.pods.get(&pod.uid) {
            Some(existing) if existing.is_whole() => {
                return Err(RuntimeError::PodExists {
                    pod_uid: pod.uid.clone(),
                });
            }
            // What an interrupted start or removal left: replaced.
            Some(_) => {
                state.pods.remove(&pod.uid);
            }
            None => {}
        }
        if let Some(c) = pod
            .containers
            .iter()
            .find(|c| state.missing_images.contains(&c.image))
        {
            return Err(RuntimeError::ImageNotPresent {
                image: c.image.clone(),
            });
        }
        if let Some(message) = state
            .start_failures
            .get_mut(&pod.name)
            .and_then(VecDeque::pop_front)
        {
            return Err(RuntimeError::InvalidSpec(message));
        }
        let id = state.next_id();
        let ip = IpAddr::V4(Ipv4Addr::from_bits(
            Ipv4Addr::new(10, 200, 0, 0).to_bits() + id as u32,
        ));
        let now = state.now_ms;
        let mut fake = FakePod {
            spec: pod.clone(),
            ip,
            containers: Vec::new(),
            scratch_bytes: BTreeMap::new(),
        };
        for index in 0..pod.containers.len() {
            let spec = &pod.containers[index];
            fake.containers.push(FakeContainer {
                name: spec.name.clone(),
                image: spec.image.clone(),
                runtime_id: String::new(),
                state: ContainerState::Created,
                env: spec.env.clone(),
                log: Vec::new(),
            });
            #[cfg(test)]
            if self.crash.fires(super::CrashPoint::StartAfterCreate(index)) {
                state.pods.insert(pod.uid.clone(), fake);
                return Err(super::simulated_crash(super::CrashPoint::StartAfterCreate(
                    index,
                )));
            }
            let id = state.next_id();
            if let Some(c) = fake.containers.last_mut() {
                c.run(id, now);
            }
            #[cfg(test)]
            if self.crash.fires(super::CrashPoint::StartAfterStart(index)) {
                state.pods.insert(pod.uid.clone(), fake);
                return Err(super::simulated_crash(super::CrashPoint::StartAfterStart(
                    index,
                )));
            }
        }
        let info = fake.info();
        state.pods.insert(pod.uid.clone(), fake);
        Ok(info)
    }

    async fn restart_container(
        &self,
        pod_uid: &str,
        container: &str,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state
            .calls
            .push(Call::Restart(pod_uid.to_owned(), container.to_owned()));
        let (id, now) = (state.next_id(), state.now_ms);
        state
            .pod_mut(pod_uid)?
            .container_mut(container)?
            .run(id, now);
        Ok(())
    }

    async fn stop_pod(&self, pod_uid: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.calls.push(Call::Stop(pod_uid.to_owned()));
        let now = state.now_ms;
        if let Some(pod) = state.pods.get_mut(pod_uid) {
            for c in &mut pod.containers {
                if matches!(c.state, ContainerState::Running { .. }) {
                    // As a process that ignores SIGTERM and is killed after the grace period.
                    c.state = ContainerState::exited(Some(137), Some(now), None);
                }
            }
        }
        Ok(())
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.calls.push(Call::Remove(pod_uid.to_owned()));
        #[cfg(test)]
        if let Some(pod) = state.pods.get_mut(pod_uid) {
            if self.crash.fires(super::CrashPoint::RemoveMidway) {
                pod.containers.pop();
                return Err(super::simulated_crash(super::CrashPoint::RemoveMidway));
            }
        }
        state.pods.remove(pod_uid);
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, RuntimeError> {
        Ok(self.state().pods.values().map(FakePod::info).collect())
    }

    async fn update_volume(&self, pod_uid: &str, volume: &VolumeSpec) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state
            .calls
            .push(Call::UpdateVolume(pod_uid.to_owned(), volume.name.clone()));
        super::volume::validate_files(&volume.name, &volume.files)?;
        let pod = state.pod_mut(pod_uid)?;
        match pod
            .spec
            .volumes
            .iter_mut()
            .find(|v| v.name == volume.name && v.sensitive == volume.sensitive)
        {
            Some(v) => {
                v.files = volume.files.clone();
                Ok(())
            }
            None => Err(RuntimeError::InvalidSpec(format!(
                "pod {pod_uid} has no {}volume named {:?}",
                if volume.sensitive { "sensitive " } else { "" },
                volume.name
            ))),
        }
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        _follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        let mut state = self.state();
        let log = state
            .pod_mut(pod_uid)?
            .container_mut(container)?
            .log
            .clone();
        let text = match tail {
            None => log,
            Some(n) => {
                let lines: Vec<&[u8]> = log.split_inclusive(|b| *b == b'\n').collect();
                lines[lines.len().saturating_sub(n)..].concat()
            }
        };
        // Virtual time: following ends at once, as if the container stopped writing.
        let chunks: Vec<Result<Bytes, RuntimeError>> = if text.is_empty() {
            Vec::new()
        } else {
            vec![Ok(Bytes::from(text))]
        };
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let mut state = self.state();
        let answer = state.exec_answers.get(command).cloned();
        let c = state.pod_mut(pod_uid)?.container_mut(container)?;
        if !matches!(c.state, ContainerState::Running { .. }) {
            return Err(RuntimeError::ContainerNotRunning {
                pod_uid: pod_uid.to_owned(),
                container: container.to_owned(),
            });
        }
        let (exit_code, output) = answer.unwrap_or((0, Vec::new()));
        Ok(ExecResult {
            exit_code,
            output,
            truncated: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::VolumeFile;
    use super::*;

    #[tokio::test]
    async fn volume_updates_are_recorded_and_kept() {
        let rt = FakeRuntime::new();
        let volume = VolumeSpec {
            name: "config".into(),
            sensitive: false,
            files: vec![VolumeFile {
                path: "a".into(),
                data: b"1".to_vec(),
                mode: 0o644,
            }],
        };
        let pod = PodSpec {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web".into(),
            spec_hash: "h".into(),
            containers: vec![super::super::ContainerSpec {
                name: "c".into(),
                ..Default::default()
            }],
            labels: BTreeMap::new(),
            dns: None,
            volumes: vec![volume.clone()],
            scratch: vec![
                super::super::ScratchVolume {
                    name: "cache".into(),
                    memory: false,
                    size_limit: Some(1000),
                },
                super::super::ScratchVolume {
                    name: "tmp".into(),
                    memory: true,
                    size_limit: None,
                },
            ],
            host_paths: vec![super::super::HostPathVolume {
                name: "logs".into(),
                path: "/var/log".into(),
                check: super::super::HostPathCheck::Directory,
            }],
        };
        let info = rt.start_pod(&pod).await.unwrap();
        assert_eq!(info.volume_dirs["config"], "fake:u1/config");
        assert_eq!(info.volume_dirs["cache"], "fake:u1/cache");
        assert_eq!(info.volume_dirs["logs"], "/var/log");
        assert_eq!(info.scratch_bytes, BTreeMap::from([("cache".into(), 0)]));
        rt.set_scratch_bytes("u1", "cache", 1001);
        let listed = rt.list_pods().await.unwrap();
        assert_eq!(listed[0].scratch_bytes["cache"], 1001);
        assert_eq!(rt.pod_spec("u1").unwrap().host_paths, pod.host_paths);
        let mut update = volume.clone();
        update.files[0].data = b"2".to_vec();
        rt.update_volume("u1", &update).await.unwrap();
        assert_eq!(rt.volume("u1", "config"), Some(update.clone()));
        assert_eq!(
            rt.calls().last(),
            Some(&Call::UpdateVolume("u1".into(), "config".into()))
        );
        update.sensitive = true;
        assert!(rt.update_volume("u1", &update).await.is_err());
        assert!(
            rt.update_volume("u2", &volume)
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
}
