//! The contract every [`Runtime`] keeps, as one suite of generic checks run against each
//! runtime: the fake and the process runtime always, Docker when an engine answers (skipped
//! with the reason printed otherwise, failed under `SHOAL_REQUIRE_DOCKER=1`).
//!
//! A runtime takes part through a [`Fixture`]: the runtime itself and three containers it can
//! run (one that runs until stopped, one that exits by itself with a known code, one that logs
//! a known line), since what a container is differs (a program, an image). For the crash
//! cases it also says where its operations can be stopped short ([`CrashPoint`]), makes the
//! runtime again over the same state (an agent restarted after kill -9), and tells what of a
//! pod runs that no listing shows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;

/// A runtime under test and containers it can run.
pub(super) trait Fixture {
    type R: Runtime;
    fn runtime(&self) -> &Self::R;
    /// A container that runs until it is stopped (`index`: its position, for one that must
    /// not collide with its siblings).
    fn long_running(&self, name: &str, index: u16) -> ContainerSpec;
    /// A container that exits by itself, and its exit code (not 0).
    fn exiting(&self, name: &str) -> (ContainerSpec, i32);
    /// A container that writes a line containing the returned text to its log, then runs on.
    fn logging(&self, name: &str) -> (ContainerSpec, String);
    /// The points where this runtime's starts and removals can be stopped short.
    fn crash_points(&self) -> Vec<CrashPoint>;
    /// Makes the runtime's next operation stop short at `point`, as if the agent were killed
    /// there.
    fn crash_at(&self, point: CrashPoint);
    /// The agent starts again after a crash: a new runtime over the same state (data dir,
    /// engine, cluster and node), recovered ([`Runtime::recover`]) as the agent does it.
    fn restart(&mut self) -> impl Future<Output = ()>;
    /// What of pod `uid` runs, or is held, that no listing shows (processes, containers).
    fn leftovers(&self, uid: &str) -> impl Future<Output = Vec<String>>;
}

fn pod(uid: &str, name: &str, containers: Vec<ContainerSpec>) -> PodSpec {
    PodSpec {
        uid: uid.to_string(),
        namespace: "conformance".to_string(),
        name: name.to_string(),
        spec_hash: format!("hash-{name}"),
        containers,
        labels: BTreeMap::from([
            ("app".to_string(), name.to_string()),
            ("tier".to_string(), "test".to_string()),
        ]),
        dns: None,
        volumes: Vec::new(),
        scratch: Vec::new(),
        host_paths: Vec::new(),
    }
}

/// Polls `list_pods` until `check` holds (at once for the fake; real containers take time).
async fn wait_for<R: Runtime>(
    rt: &R,
    what: &str,
    mut check: impl FnMut(&[PodInfo]) -> bool,
) -> Vec<PodInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pods = rt.list_pods().await.expect("listing pods");
        if check(&pods) {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {pods:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(pods: &'a [PodInfo], uid: &str) -> Option<&'a PodInfo> {
    pods.iter().find(|p| p.uid == uid)
}

async fn read_all(mut stream: LogStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("a log chunk"));
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Start reports the pod as listed later; a second start of the uid fails; stop keeps the
/// exited containers listed; stop and remove are idempotent.
pub(super) async fn start_list_stop_remove<F: Fixture>(f: &F) {
    let rt = f.runtime();
    let spec = pod(
        "conf-life",
        "life",
        vec![f.long_running("one", 0), f.long_running("two", 1)],
    );
    let info = rt.start_pod(&spec).await.expect("starting the pod");
    assert!(info.all_running(), "{info:#?}");
    let pods = wait_for(rt, "the pod running", |pods| {
        find(pods, "conf-life").is_some_and(PodInfo::all_running)
    })
    .await;
    let listed = find(&pods, "conf-life").unwrap();
    assert_eq!(
        (
            listed.uid.as_str(),
            listed.namespace.as_str(),
            listed.name.as_str(),
            listed.spec_hash.as_str()
        ),
        ("conf-life", "conformance", "life", "hash-life")
    );
    assert_eq!(listed.labels, spec.labels);
    let names: Vec<&str> = listed.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["one", "two"], "containers in the spec's order");
    assert!(listed.containers.iter().all(|c| !c.runtime_id.is_empty()));
    assert!(matches!(
        rt.start_pod(&spec).await,
        Err(RuntimeError::PodExists { .. })
    ));

    rt.stop_pod("conf-life", Duration::from_secs(1))
        .await
        .expect("stopping");
    let pods = rt.list_pods().await.unwrap();
    let stopped = find(&pods, "conf-life").expect("a stopped pod stays until removed");
    assert!(
        stopped
            .containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Exited { .. })),
        "{stopped:#?}"
    );
    rt.stop_pod("conf-life", Duration::ZERO)
        .await
        .expect("stopping again");
    rt.remove_pod("conf-life").await.expect("removing");
    assert!(find(&rt.list_pods().await.unwrap(), "conf-life").is_none());
    rt.remove_pod("conf-life").await.expect("removing again");
}

/// A pod that is not there is already stopped and removed; other calls on it say not found.
pub(super) async fn missing_pods<F: Fixture>(f: &F) {
    let rt = f.runtime();
    rt.stop_pod("conf-nope", Duration::ZERO).await.unwrap();
    rt.remove_pod("conf-nope").await.unwrap();
    assert!(
        rt.restart_container("conf-nope", "c", Duration::ZERO)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        rt.logs("conf-nope", "c", false, None)
            .await
            .err()
            .expect("no logs of a missing pod")
            .is_not_found()
    );
    assert!(
        rt.exec("conf-nope", "c", &["true".into()], Duration::from_secs(1))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

/// A container restarts: a new run, the others untouched; an unknown container is not found.
pub(super) async fn restart_container<F: Fixture>(f: &F) {
    let rt = f.runtime();
    rt.start_pod(&pod(
        "conf-restart",
        "restart",
        vec![f.long_running("main", 0)],
    ))
    .await
    .expect("starting");
    let pods = wait_for(rt, "the pod running", |pods| {
        find(pods, "conf-restart").is_some_and(PodInfo::all_running)
    })
    .await;
    let before = find(&pods, "conf-restart").unwrap().containers[0].clone();
    // Docker's start times have a resolution of a millisecond at best.
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.restart_container("conf-restart", "main", Duration::from_secs(1))
        .await
        .expect("restarting");
    let pods = wait_for(rt, "the restarted container running", |pods| {
        find(pods, "conf-restart").is_some_and(PodInfo::all_running)
    })
    .await;
    let after = &find(&pods, "conf-restart").unwrap().containers[0];
    assert!(
        after.runtime_id != before.runtime_id || after.state != before.state,
        "a new run: {before:?} then {after:?}"
    );
    assert!(matches!(
        rt.restart_container("conf-restart", "nope", Duration::ZERO)
            .await,
        Err(RuntimeError::ContainerNotFound { .. })
    ));
    rt.remove_pod("conf-restart").await.unwrap();
}

/// A container that exits is reported exited with its code, the others running.
pub(super) async fn exited_container_has_its_exit_code<F: Fixture>(f: &F) {
    let rt = f.runtime();
    let (exiting, code) = f.exiting("quitter");
    rt.start_pod(&pod(
        "conf-exit",
        "exit",
        vec![f.long_running("stayer", 0), exiting],
    ))
    .await
    .expect("starting");
    let pods = wait_for(rt, "the exit", |pods| {
        find(pods, "conf-exit")
            .is_some_and(|p| matches!(p.containers[1].state, ContainerState::Exited { .. }))
    })
    .await;
    let p = find(&pods, "conf-exit").unwrap();
    match &p.containers[1].state {
        ContainerState::Exited {
            exit_code,
            finished_at_ms,
            reason,
            ..
        } => {
            assert_eq!(*exit_code, Some(code));
            assert_eq!(reason, "Error");
            assert!(finished_at_ms.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.containers[0].state,
        ContainerState::Running { .. }
    ));
    rt.remove_pod("conf-exit").await.unwrap();
}

/// A container's log holds what it wrote; `tail` keeps the last lines.
pub(super) async fn logs_of_a_container<F: Fixture>(f: &F) {
    let rt = f.runtime();
    let (logging, text) = f.logging("talker");
    rt.start_pod(&pod("conf-logs", "logs", vec![logging]))
        .await
        .expect("starting");
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = read_all(rt.logs("conf-logs", "talker", false, None).await.unwrap()).await;
        if logs.contains(&text) {
            break logs;
        }
        assert!(Instant::now() < deadline, "{text:?} never logged: {logs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = logs.lines().last().unwrap().to_owned();
    let tail = read_all(
        rt.logs("conf-logs", "talker", false, Some(1))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tail.trim_end(), last);
    assert!(
        rt.logs("conf-logs", "nope", false, None)
            .await
            .err()
            .expect("no such container")
            .is_not_found()
    );
    rt.remove_pod("conf-logs").await.unwrap();
}

/// After a restart, pod `uid` is either gone or whole (every container of `spec`, none never
/// started), and nothing of it runs that the listing does not show; returns whether it is
/// there.
async fn gone_or_whole<F: Fixture>(f: &F, spec: &PodSpec, when: &str) -> bool {
    let pods = f.runtime().list_pods().await.expect("listing pods");
    let found = find(&pods, &spec.uid).cloned();
    if let Some(p) = &found {
        let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
        let want: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, want, "{when}: an incomplete pod is listed: {p:#?}");
        assert!(
            p.containers
                .iter()
                .all(|c| !matches!(c.state, ContainerState::Created)),
            "{when}: a container that never started is listed: {p:#?}"
        );
    }
    let leftovers = f.leftovers(&spec.uid).await;
    assert!(
        leftovers.is_empty(),
        "{when}: runs outside what is listed: {leftovers:?}"
    );
    found.is_some()
}

/// Creates the pod again (after removing the whole one a crash left), and removes it.
async fn create_again<F: Fixture>(f: &F, spec: &PodSpec, whole: bool, when: &str) {
    let rt = f.runtime();
    if whole {
        rt.stop_pod(&spec.uid, Duration::from_secs(1))
            .await
            .expect("stopping the whole pod");
        rt.remove_pod(&spec.uid)
            .await
            .expect("removing the whole pod");
    }
    let info = rt
        .start_pod(spec)
        .await
        .unwrap_or_else(|e| panic!("{when}: creating the pod again failed: {e}"));
    assert!(info.all_running(), "{when}: {info:#?}");
    wait_for(rt, "the pod created again running", |pods| {
        find(pods, &spec.uid).is_some_and(PodInfo::all_running)
    })
    .await;
    rt.remove_pod(&spec.uid).await.expect("removing");
    assert!(find(&rt.list_pods().await.unwrap(), &spec.uid).is_none());
}

/// A start stopped short at any point (the agent killed there) leaves, once the agent starts
/// again, either nothing of the pod or the whole pod, nothing running outside the listing,
/// and a pod that can be created again.
pub(super) async fn an_interrupted_start_is_recovered<F: Fixture>(f: &mut F) {
    let points: Vec<CrashPoint> = f
        .crash_points()
        .into_iter()
        .filter(|p| !matches!(p, CrashPoint::RemoveMidway))
        .collect();
    assert!(!points.is_empty());
    for (i, point) in points.into_iter().enumerate() {
        let when = format!("a start stopped at {point:?}");
        let spec = pod(
            &format!("conf-crash-{i}"),
            "crash",
            vec![f.long_running("one", 0), f.long_running("two", 1)],
        );
        f.crash_at(point);
        let started = f.runtime().start_pod(&spec).await;
        assert!(started.is_err(), "{when}: the start went on: {started:?}");
        f.restart().await;
        let whole = gone_or_whole(f, &spec, &when).await;
        create_again(f, &spec, whole, &when).await;
    }
}

/// `start_pod` of a uid whose start was stopped short replaces what it left, even before any
/// recovery.
pub(super) async fn a_start_replaces_an_interrupted_one<F: Fixture>(f: &F) {
    let spec = pod(
        "conf-again",
        "again",
        vec![f.long_running("one", 0), f.long_running("two", 1)],
    );
    f.crash_at(CrashPoint::StartAfterCreate(1));
    assert!(f.runtime().start_pod(&spec).await.is_err());
    let info = f
        .runtime()
        .start_pod(&spec)
        .await
        .expect("a start of the same pod replaces the interrupted one");
    assert!(info.all_running(), "{info:#?}");
    let pods = wait_for(f.runtime(), "the pod running", |pods| {
        find(pods, "conf-again").is_some_and(PodInfo::all_running)
    })
    .await;
    assert_eq!(find(&pods, "conf-again").unwrap().containers.len(), 2);
    assert!(
        f.leftovers("conf-again").await.is_empty(),
        "{:?}",
        f.leftovers("conf-again").await
    );
    assert!(matches!(
        f.runtime().start_pod(&spec).await,
        Err(RuntimeError::PodExists { .. })
    ));
    f.runtime().remove_pod("conf-again").await.unwrap();
}

/// A removal stopped short leaves, once the agent starts again, nothing or the whole pod,
/// which can be removed, and the pod can be created again.
pub(super) async fn an_interrupted_removal_is_recovered<F: Fixture>(f: &mut F) {
    let spec = pod(
        "conf-removal",
        "removal",
        vec![f.long_running("one", 0), f.long_running("two", 1)],
    );
    f.runtime().start_pod(&spec).await.expect("starting");
    f.runtime()
        .stop_pod("conf-removal", Duration::from_secs(1))
        .await
        .expect("stopping");
    f.crash_at(CrashPoint::RemoveMidway);
    assert!(f.runtime().remove_pod("conf-removal").await.is_err());
    f.restart().await;
    let when = "a removal stopped midway";
    let whole = gone_or_whole(f, &spec, when).await;
    create_again(f, &spec, whole, when).await;
}

/// The suite, as one test per check, for a fixture made by `$setup` (`None`: skipped).
macro_rules! suite {
    ($runtime:ident, $setup:expr) => {
        mod $runtime {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn start_list_stop_and_remove_are_idempotent() {
                if let Some(f) = $setup("life").await {
                    start_list_stop_remove(&f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_missing_pod_is_already_stopped_and_removed() {
                if let Some(f) = $setup("missing").await {
                    missing_pods(&f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_container_restarts() {
                if let Some(f) = $setup("restart").await {
                    restart_container(&f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_exited_container_reports_its_exit_code() {
                if let Some(f) = $setup("exit").await {
                    exited_container_has_its_exit_code(&f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_container_has_its_logs() {
                if let Some(f) = $setup("logs").await {
                    logs_of_a_container(&f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_start_interrupted_anywhere_is_recovered_and_created_again() {
                if let Some(mut f) = $setup("crash-start").await {
                    an_interrupted_start_is_recovered(&mut f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_start_replaces_what_an_interrupted_one_left() {
                if let Some(f) = $setup("crash-again").await {
                    a_start_replaces_an_interrupted_one(&f).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_removal_interrupted_midway_is_recovered() {
                if let Some(mut f) = $setup("crash-removal").await {
                    an_interrupted_removal_is_recovered(&mut f).await;
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The fake runtime.

struct FakeFixture(super::fake::FakeRuntime);

impl Fixture for FakeFixture {
    type R = super::fake::FakeRuntime;

    fn runtime(&self) -> &Self::R {
        &self.0
    }

    fn long_running(&self, name: &str, _index: u16) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "fake".into(),
            ..Default::default()
        }
    }

    fn exiting(&self, name: &str) -> (ContainerSpec, i32) {
        let mut c = self.long_running(name, 0);
        c.env = vec![(super::fake::EXIT_CODE_ENV.into(), "3".into())];
        (c, 3)
    }

    fn logging(&self, name: &str) -> (ContainerSpec, String) {
        let mut c = self.long_running(name, 0);
        c.env = vec![(super::fake::LOG_ENV.into(), "conformance says hello".into())];
        (c, "conformance says hello".into())
    }

    fn crash_points(&self) -> Vec<CrashPoint> {
        vec![
            CrashPoint::StartAfterCreate(0),
            CrashPoint::StartAfterStart(0),
            CrashPoint::StartAfterCreate(1),
            CrashPoint::StartAfterStart(1),
            CrashPoint::RemoveMidway,
        ]
    }

    fn crash_at(&self, point: CrashPoint) {
        self.0.crash_at(point);
    }

    async fn restart(&mut self) {
        // The fake is the engine: its pods outlive the agent.
        self.0.recover().await.expect("recovering");
    }

    async fn leftovers(&self, _uid: &str) -> Vec<String> {
        // Whatever it holds, it lists.
        Vec::new()
    }
}

async fn fake_fixture(_test: &str) -> Option<FakeFixture> {
    Some(FakeFixture(super::fake::FakeRuntime::new()))
}

suite!(fake, fake_fixture);

// ---------------------------------------------------------------------------------------------
// The process runtime.

struct ProcessFixture {
    runtime: ProcessRuntime,
    scratch: super::process_tests::Scratch,
}

impl Fixture for ProcessFixture {
    type R = ProcessRuntime;

    fn runtime(&self) -> &Self::R {
        &self.runtime
    }

    fn long_running(&self, name: &str, _index: u16) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "unused".into(),
            command: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        }
    }

    fn exiting(&self, name: &str) -> (ContainerSpec, i32) {
        let mut c = self.long_running(name, 0);
        c.command = vec!["sh".into(), "-c".into(), "exit 3".into()];
        (c, 3)
    }

    fn logging(&self, name: &str) -> (ContainerSpec, String) {
        let mut c = self.long_running(name, 0);
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "echo conformance says hello; exec sleep 1000".into(),
        ];
        (c, "conformance says hello".into())
    }

    fn crash_points(&self) -> Vec<CrashPoint> {
        vec![
            CrashPoint::StartAfterCreate(0),
            CrashPoint::StartAfterCreate(1),
            CrashPoint::StartAfterRecord,
            CrashPoint::RemoveMidway,
        ]
    }

    fn crash_at(&self, point: CrashPoint) {
        self.runtime.crash_at(point);
    }

    async fn restart(&mut self) {
        // The old agent is gone: its runtime (and its watch of the children) first.
        let fresh = ProcessRuntime::new(self.scratch.config()).expect("the process runtime");
        drop(std::mem::replace(&mut self.runtime, fresh));
        self.runtime.recover().await.expect("recovering");
    }

    async fn leftovers(&self, uid: &str) -> Vec<String> {
        let pods = self.runtime.list_pods().await.expect("listing");
        let listed: Vec<u32> = find(&pods, uid)
            .map(|p| {
                p.containers
                    .iter()
                    .filter(|c| matches!(c.state, ContainerState::Running { .. }))
                    .filter_map(|c| c.runtime_id.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut left: Vec<String> = self
            .runtime
            .processes_tied_to(uid)
            .into_iter()
            .filter(|pid| !listed.contains(pid))
            .map(|pid| format!("process {pid}"))
            .collect();
        if find(&pods, uid).is_none() && self.runtime.pod_dir(uid).exists() {
            left.push(format!("{}", self.runtime.pod_dir(uid).display()));
        }
        left
    }
}

async fn process_fixture(test: &str) -> Option<ProcessFixture> {
    let scratch = super::process_tests::Scratch::new(&format!("conformance-{test}"));
    let runtime = ProcessRuntime::new(scratch.config()).expect("the process runtime");
    Some(ProcessFixture { runtime, scratch })
}

suite!(process, process_fixture);

// ---------------------------------------------------------------------------------------------
// Docker, with the locally built demo image.

struct DockerFixture {
    runtime: DockerRuntime,
    cluster: String,
    _cleanup: super::testing::DockerCleanup,
}

impl Fixture for DockerFixture {
    type R = DockerRuntime;

    fn runtime(&self) -> &Self::R {
        &self.runtime
    }

    fn long_running(&self, name: &str, index: u16) -> ContainerSpec {
        // The demo server; containers of a pod share a network namespace, so each its port.
        ContainerSpec {
            name: name.into(),
            image: super::testing::DEMO_IMAGE.into(),
            env: vec![("PORT".into(), (8080 + index).to_string())],
            ..Default::default()
        }
    }

    fn exiting(&self, name: &str) -> (ContainerSpec, i32) {
        let mut c = self.long_running(name, 9);
        // The demo refuses an unknown argument with code 2.
        c.command = vec!["/shoal-demo-http".into(), "--bogus".into()];
        (c, 2)
    }

    fn logging(&self, name: &str) -> (ContainerSpec, String) {
        (self.long_running(name, 0), "listening on".into())
    }

    fn crash_points(&self) -> Vec<CrashPoint> {
        vec![
            CrashPoint::StartAfterCreate(0),
            CrashPoint::StartAfterStart(0),
            CrashPoint::StartAfterCreate(1),
            CrashPoint::StartAfterStart(1),
            CrashPoint::RemoveMidway,
        ]
    }

    fn crash_at(&self, point: CrashPoint) {
        self.runtime.crash_at(point);
    }

    async fn restart(&mut self) {
        self.runtime =
            DockerRuntime::new(RuntimeConfig::new(&self.cluster, "node-1", "/nonexistent"))
                .await
                .expect("connecting to Docker");
        self.runtime.recover().await.expect("recovering");
    }

    async fn leftovers(&self, uid: &str) -> Vec<String> {
        // Every container with the pod's labels is listed; one never started is a leftover.
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_POD_UID}={uid}")],
        )]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .runtime
            .client()
            .list_containers(Some(options))
            .await
            .expect("listing containers");
        containers
            .into_iter()
            .filter(|c| {
                matches!(
                    c.state,
                    Some(
                        bollard::models::ContainerSummaryStateEnum::CREATED
                            | bollard::models::ContainerSummaryStateEnum::DEAD
                    )
                )
            })
            .map(|c| format!("container {:?} in state {:?}", c.names, c.state))
            .collect()
    }
}

async fn docker_fixture(test: &str) -> Option<DockerFixture> {
    let test = format!("conformance_{test}");
    if !super::testing::docker_or_skip(&test).await {
        return None;
    }
    tokio::task::spawn_blocking(super::testing::build_demo_image)
        .await
        .unwrap()
        .expect("building the demo image");
    let cluster = super::testing::unique_cluster_id(&test);
    let runtime = DockerRuntime::new(RuntimeConfig::new(&cluster, "node-1", "/nonexistent"))
        .await
        .expect("connecting to Docker");
    let cleanup = super::testing::DockerCleanup::new(&runtime, &cluster);
    Some(DockerFixture {
        runtime,
        cluster,
        _cleanup: cleanup,
    })
}

suite!(docker, docker_fixture);
