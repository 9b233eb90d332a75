//! The supervisor in virtual time, on the fake runtime: back-off, probes, pulls, hand-offs,
//! adoption and the first pass. No sleeps, no tokio: a test is a few simulated minutes in a few
//! milliseconds. After every event the testbed also checks that each node's published records
//! are what its supervisor would publish (no state change went unnoticed).

use std::time::Duration;

use shoal_gossip::Instant;

use super::*;
use crate::manifest::ProbeKind;
use crate::manifest::{ContainerState as KState, PodPhase};
use crate::runtime::fake::{EXIT_CODE_ENV, ProbeAnswer};
use crate::workload::plan::plan;
use crate::workload::stored::PodRecord;
use crate::workload::testbed::{DEFAULT_LATENCY, Happened, NodeRig, Testbed, at, node_id};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A bare pod with one container `app`; `container` is more YAML for the container (indented
/// by 4), `spec` more for the pod spec (indented by 2).
fn pod(name: &str, spec: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 2\n{spec}  containers:\n  - name: app\n    image: demo:1\n    command: [/bin/app]\n{container}"
    )
}

fn exits_with(code: i32) -> String {
    format!("    env: [{{name: {EXIT_CODE_ENV}, value: \"{code}\"}}]\n")
}

fn probe(kind: &str, fields: &str) -> String {
    format!("    {kind}:\n      httpGet: {{path: /ready, port: 8080}}\n{fields}")
}

fn record<'a>(bed: &'a Testbed, name: &str) -> &'a PodRecord {
    bed.rigs[0]
        .record(name)
        .unwrap_or_else(|| panic!("no record of {name}: {:#?}", bed.pods()))
}

fn status(record: &PodRecord) -> &crate::manifest::ContainerStatus {
    &record.status.container_statuses[0]
}

/// When each restart of a container was asked for.
fn restart_times(rig: &NodeRig) -> Vec<Instant> {
    rig.history
        .iter()
        .filter_map(|h| match h {
            Happened::Issued(t, Action::RestartContainer { .. }) => Some(*t),
            _ => None,
        })
        .collect()
}

fn issued<'a>(rig: &'a NodeRig, what: impl Fn(&Action) -> bool + 'a) -> Vec<Instant> {
    rig.history
        .iter()
        .filter_map(|h| match h {
            Happened::Issued(t, a) if what(a) => Some(*t),
            _ => None,
        })
        .collect()
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times
        .windows(2)
        .map(|w| w[1].saturating_since(w[0]))
        .collect()
}

/// `actual` is `expected` plus at most a few action latencies.
fn assert_close(actual: &[Duration], expected: &[u64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?} s");
    for (a, e) in actual.iter().zip(expected) {
        let e = secs(*e);
        assert!(
            *a >= e && *a <= e + DEFAULT_LATENCY * 5,
            "{actual:?} vs {expected:?} s"
        );
    }
}

/// Runs until `n` more results of `kind` probes were delivered on node 0; returns the results.
fn run_probes(bed: &mut Testbed, kind: ProbeKind, n: usize) -> Vec<bool> {
    let before = bed.rigs[0].probe_results.len();
    let count = |bed: &Testbed| {
        bed.rigs[0].probe_results[before..]
            .iter()
            .filter(|r| r.2 == kind)
            .count()
    };
    bed.run_until(secs(120), "probe results", |bed| count(bed) >= n);
    bed.rigs[0].probe_results[before..]
        .iter()
        .filter(|r| r.2 == kind)
        .map(|r| r.3)
        .collect()
}

#[test]
fn back_off_is_immediate_then_doubles_from_ten_seconds_to_five_minutes() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("crasher", "", &exits_with(1)));
    bed.run_for(secs(1000), |_| {});
    let times = restart_times(&bed.rigs[0]);
    assert!(times.len() >= 8, "{times:?}");
    // The first exit restarts at once (right after the start).
    assert!(times[0] <= Instant(0) + DEFAULT_LATENCY * 5, "{times:?}");
    assert_close(&gaps(&times[..8]), &[10, 20, 40, 80, 160, 300, 300]);
    let r = record(&bed, "crasher");
    assert_eq!(status(r).restart_count as usize, times.len());
}

#[test]
fn back_off_starts_over_after_ten_minutes_of_running() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("app", "", ""));
    bed.run_for(secs(2), |_| {});
    let uid = bed.rigs[0].uid_of("app");
    let crash = |bed: &mut Testbed| {
        bed.rigs[0].rt.set_now_ms(bed.now.wall_ms);
        bed.rigs[0].rt.crash(&uid, "app", 1);
        bed.now.mono
    };
    // First crash: at once. Second: after 10 s.
    let first = crash(&mut bed);
    bed.run_for(secs(3), |_| {});
    let second = crash(&mut bed);
    bed.run_for(secs(15), |_| {});
    let times = restart_times(&bed.rigs[0]);
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(times[0].saturating_since(first) <= LIST_INTERVAL + DEFAULT_LATENCY * 5);
    let waited = times[1].saturating_since(second);
    assert!(waited >= secs(10) && waited <= secs(12), "{waited:?}");
    // Ten minutes of running: the next crash restarts at once again.
    bed.run_for(secs(601), |_| {});
    let third = crash(&mut bed);
    bed.run_for(secs(3), |_| {});
    let times = restart_times(&bed.rigs[0]);
    assert_eq!(times.len(), 3, "{times:?}");
    assert!(times[2].saturating_since(third) <= LIST_INTERVAL + DEFAULT_LATENCY * 5);
}

#[test]
fn crash_loop_back_off_shows_in_the_record_while_the_restart_waits() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("crasher", "", &exits_with(3)));
    // Restarted once at once; the second exit waits 10 s.
    bed.run_for(secs(5), |_| {});
    let r = record(&bed, "crasher");
    let s = status(r);
    assert_eq!(s.restart_count, 1);
    match &s.state {
        KState::Waiting { reason, message } => {
            assert_eq!(reason.as_deref(), Some("CrashLoopBackOff"));
            assert!(
                message.as_deref().unwrap().contains("crasher"),
                "{message:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.last_state,
        Some(KState::Terminated { exit_code: 3, .. })
    ));
    assert!(!s.ready);
    assert_eq!(r.status.phase, PodPhase::Running);
    assert!(!r.is_ready());
    assert!(
        r.events.iter().any(|e| e.reason == "BackOff"
            && e.message == "Back-off 10s restarting failed container app"),
        "{:#?}",
        r.events
    );
    // After the back-off: restarted, and (exiting again) waiting 20 s now.
    bed.run_for(secs(7), |_| {});
    let s = status(record(&bed, "crasher"));
    assert_eq!(s.restart_count, 2);
    assert!(
        record(&bed, "crasher")
            .events
            .iter()
            .any(|e| e.message == "Back-off 20s restarting failed container app")
    );
}

#[test]
fn on_failure_restarts_only_failures_and_never_restarts_nothing() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("done", "  restartPolicy: OnFailure\n", &exits_with(0)));
    bed.apply(&pod(
        "failing",
        "  restartPolicy: OnFailure\n",
        &exits_with(1),
    ));
    bed.apply(&pod("once", "  restartPolicy: Never\n", &exits_with(1)));
    bed.run_for(secs(30), |_| {});
    let done = record(&bed, "done");
    assert_eq!(status(done).restart_count, 0);
    assert_eq!(done.status.phase, PodPhase::Succeeded);
    assert!(matches!(
        &status(done).state,
        KState::Terminated { exit_code: 0, reason: Some(r), .. } if r == "Completed"
    ));
    assert!(status(record(&bed, "failing")).restart_count >= 2);
    let once = record(&bed, "once");
    assert_eq!(status(once).restart_count, 0);
    assert_eq!(once.status.phase, PodPhase::Failed);
    assert!(matches!(
        &status(once).state,
        KState::Terminated { exit_code: 1, .. }
    ));
}

#[test]
fn readiness_needs_success_threshold_passes_and_failure_threshold_failures() {
    let mut bed = Testbed::new(1);
    bed.rigs[0].rt.set_probe(
        "web",
        "app",
        ProbeKind::Readiness,
        ProbeAnswer::Fail("HTTP probe failed with statuscode: 503".into()),
    );
    bed.apply(&pod(
        "web",
        "",
        &probe(
            "readinessProbe",
            "      periodSeconds: 1\n      successThreshold: 2\n      failureThreshold: 3\n",
        ),
    ));
    assert_eq!(run_probes(&mut bed, ProbeKind::Readiness, 3), [false; 3]);
    assert!(!record(&bed, "web").is_ready());
    assert!(
        record(&bed, "web")
            .events
            .iter()
            .any(|e| e.reason == "Unhealthy" && e.count == 3),
        "failures are folded into one event"
    );
    bed.rigs[0]
        .rt
        .set_probe("web", "app", ProbeKind::Readiness, ProbeAnswer::Pass);
    assert_eq!(run_probes(&mut bed, ProbeKind::Readiness, 1), [true]);
    assert!(!record(&bed, "web").is_ready(), "one success of two");
    assert_eq!(run_probes(&mut bed, ProbeKind::Readiness, 1), [true]);
    let ready_at = bed.now.wall_ms;
    let r = record(&bed, "web");
    assert!(r.is_ready());
    assert_eq!(r.ready_since_ms, Some(ready_at));
    bed.rigs[0].rt.set_probe(
        "web",
        "app",
        ProbeKind::Readiness,
        ProbeAnswer::Fail("down".into()),
    );
    assert_eq!(run_probes(&mut bed, ProbeKind::Readiness, 2), [false; 2]);
    assert!(record(&bed, "web").is_ready(), "two failures of three");
    assert_eq!(run_probes(&mut bed, ProbeKind::Readiness, 1), [false]);
    let r = record(&bed, "web");
    assert!(!r.is_ready());
    assert_eq!(r.ready_since_ms, None);
    // A failing readiness probe never restarts anything.
    assert!(restart_times(&bed.rigs[0]).is_empty());
}

#[test]
fn startup_probe_holds_the_others_until_it_passes() {
    let mut bed = Testbed::new(1);
    bed.rigs[0].rt.set_probe(
        "slow",
        "app",
        ProbeKind::Startup,
        ProbeAnswer::PassAfter(secs(5)),
    );
    let probes = [
        probe(
            "startupProbe",
            "      periodSeconds: 1\n      failureThreshold: 30\n",
        ),
        probe("livenessProbe", "      periodSeconds: 1\n"),
        probe("readinessProbe", "      periodSeconds: 1\n"),
    ]
    .concat();
    bed.apply(&pod("slow", "", &probes));
    bed.run_for(secs(3), |_| {});
    let r = record(&bed, "slow");
    assert_eq!(status(r).started, Some(false));
    assert!(!r.is_ready());
    let kinds = |bed: &Testbed, kind: ProbeKind| {
        bed.rigs[0]
            .probe_results
            .iter()
            .filter(|p| p.2 == kind)
            .map(|p| (p.0, p.3))
            .collect::<Vec<_>>()
    };
    assert!(kinds(&bed, ProbeKind::Liveness).is_empty());
    assert!(kinds(&bed, ProbeKind::Readiness).is_empty());
    bed.run_for(secs(5), |_| {});
    let startup = kinds(&bed, ProbeKind::Startup);
    let passed_at = startup
        .iter()
        .find(|(_, ok)| *ok)
        .expect("startup passed")
        .0;
    assert!(
        kinds(&bed, ProbeKind::Liveness)
            .iter()
            .chain(&kinds(&bed, ProbeKind::Readiness))
            .all(|(t, _)| *t > passed_at)
    );
    assert!(!kinds(&bed, ProbeKind::Readiness).is_empty());
    // The startup probe stops once it passed.
    assert_eq!(startup.iter().filter(|(_, ok)| *ok).count(), 1);
    let r = record(&bed, "slow");
    assert_eq!(status(r).started, Some(true));
    assert!(r.is_ready());
    assert!(restart_times(&bed.rigs[0]).is_empty());
}

#[test]
fn a_startup_probe_that_never_passes_restarts_the_container() {
    let mut bed = Testbed::new(1);
    bed.rigs[0].rt.set_probe(
        "stuck",
        "app",
        ProbeKind::Startup,
        ProbeAnswer::Fail("connection refused".into()),
    );
    bed.apply(&pod(
        "stuck",
        "",
        &probe(
            "startupProbe",
            "      periodSeconds: 2\n      failureThreshold: 3\n",
        ),
    ));
    assert_eq!(run_probes(&mut bed, ProbeKind::Startup, 2), [false; 2]);
    assert!(restart_times(&bed.rigs[0]).is_empty());
    run_probes(&mut bed, ProbeKind::Startup, 1);
    bed.run_for(Duration::from_millis(100), |_| {});
    assert_eq!(restart_times(&bed.rigs[0]).len(), 1);
    assert_eq!(status(record(&bed, "stuck")).restart_count, 1);
}

#[test]
fn liveness_restarts_after_failure_threshold_failures_in_a_row() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod(
        "live",
        "",
        &probe(
            "livenessProbe",
            "      periodSeconds: 1\n      failureThreshold: 3\n",
        ),
    ));
    assert_eq!(run_probes(&mut bed, ProbeKind::Liveness, 2), [true; 2]);
    let sick = ProbeAnswer::Fail("HTTP probe failed with statuscode: 500".into());
    bed.rigs[0]
        .rt
        .set_probe("live", "app", ProbeKind::Liveness, sick.clone());
    assert_eq!(run_probes(&mut bed, ProbeKind::Liveness, 2), [false; 2]);
    // A pass in between starts the count over.
    bed.rigs[0]
        .rt
        .set_probe("live", "app", ProbeKind::Liveness, ProbeAnswer::Pass);
    run_probes(&mut bed, ProbeKind::Liveness, 1);
    bed.rigs[0]
        .rt
        .set_probe("live", "app", ProbeKind::Liveness, sick);
    assert_eq!(run_probes(&mut bed, ProbeKind::Liveness, 2), [false; 2]);
    assert!(restart_times(&bed.rigs[0]).is_empty());
    assert_eq!(run_probes(&mut bed, ProbeKind::Liveness, 1), [false]);
    bed.run_for(Duration::from_millis(100), |_| {});
    assert_eq!(restart_times(&bed.rigs[0]).len(), 1);
    let r = record(&bed, "live");
    assert!(status(r).restart_count >= 1);
    // Failures in a row fold into one event (the pass in between makes none): 2 + 3.
    let reasons: Vec<(&str, u32)> = r
        .events
        .iter()
        .map(|e| (e.reason.as_str(), e.count))
        .collect();
    let killing = reasons
        .iter()
        .position(|e| e.0 == "Killing")
        .expect("killed");
    assert_eq!(reasons[killing - 1], ("Unhealthy", 5), "{reasons:?}");
    assert_eq!(r.events[killing + 1].message, "Restarted container app");
}

#[test]
fn an_exec_liveness_probe_runs_in_the_container() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod(
        "exec",
        "",
        "    livenessProbe:\n      exec: {command: [/bin/check, --deep]}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    ));
    assert_eq!(run_probes(&mut bed, ProbeKind::Liveness, 2), [true; 2]);
    bed.rigs[0]
        .rt
        .set_exec_answer(&["/bin/check", "--deep"], 1, "disk full\n");
    assert_eq!(run_probes(&mut bed, ProbeKind::Liveness, 1), [false]);
    // The restart is asked for with the failure; the restarted container is healthy.
    bed.rigs[0]
        .rt
        .set_exec_answer(&["/bin/check", "--deep"], 0, "");
    bed.run_for(secs(3), |_| {});
    let r = record(&bed, "exec");
    assert_eq!(status(r).restart_count, 1);
    assert!(
        r.events
            .iter()
            .any(|e| e.message == "liveness probe failed: command exited with 1: disk full"),
        "{:#?}",
        r.events
    );
}

#[test]
fn the_first_probe_waits_for_the_initial_delay() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod(
        "late",
        "",
        &probe(
            "readinessProbe",
            "      periodSeconds: 3\n      initialDelaySeconds: 5\n",
        ),
    ));
    bed.run_for(secs(12), |_| {});
    let started = issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. }))[0];
    let probes = issued(&bed.rigs[0], |a| matches!(a, Action::RunProbe { .. }));
    assert!(probes.len() >= 2, "{probes:?}");
    let first = probes[0].saturating_since(started);
    assert!(
        first >= secs(5) && first <= secs(5) + DEFAULT_LATENCY * 5,
        "{first:?}"
    );
    assert_close(&gaps(&probes[..2]), &[3]);
}

#[test]
fn a_failed_pull_shows_image_pull_back_off_and_retries_with_back_off() {
    let mut bed = Testbed::new_with(1, 1, true);
    bed.rigs[0].rt.set_image_missing("demo:1");
    bed.rigs[0]
        .rt
        .set_unpullable("demo:1", Some("dial tcp: lookup registry: no such host"));
    bed.apply(&pod("pull", "", ""));
    bed.run_for(secs(1), |_| {});
    let r = record(&bed, "pull");
    match &status(r).state {
        KState::Waiting { reason, message } => {
            assert_eq!(reason.as_deref(), Some("ImagePullBackOff"));
            assert!(message.as_deref().unwrap().contains("no such host"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.status.phase, PodPhase::Pending);
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == "Failed" && e.kind == "Warning")
    );
    bed.run_for(secs(75), |_| {});
    let pulls = issued(&bed.rigs[0], |a| matches!(a, Action::PullImages { .. }));
    assert_close(&gaps(&pulls), &[10, 20, 40]);
    // The registry answers again: the next retry pulls and starts.
    bed.rigs[0].rt.set_unpullable("demo:1", None);
    bed.run_until(secs(90), "the pod runs", |bed| {
        bed.rigs[0]
            .record("pull")
            .is_some_and(|r| matches!(status(r).state, KState::Running { .. }))
    });
    let r = record(&bed, "pull");
    assert!(r.is_ready());
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == "Pulling" && e.message == "pulling image demo:1")
    );
}

#[test]
fn a_failed_start_is_create_container_error_then_retried() {
    let mut bed = Testbed::new(1);
    bed.rigs[0].rt.fail_next_start("broken", "no such file");
    bed.apply(&pod("broken", "", ""));
    bed.run_for(secs(1), |_| {});
    match &status(record(&bed, "broken")).state {
        KState::Waiting { reason, message } => {
            assert_eq!(reason.as_deref(), Some("CreateContainerError"));
            assert_eq!(message.as_deref(), Some("invalid pod spec: no such file"));
        }
        other => panic!("{other:?}"),
    }
    let took = bed.run_until(secs(20), "retried", |bed| {
        bed.rigs[0]
            .record("broken")
            .is_some_and(PodRecord::is_ready)
    });
    assert!(took >= secs(9), "{took:?}");
    let starts = issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. }));
    assert_close(&gaps(&starts), &[10]);
}

#[test]
fn a_pod_that_vanished_from_the_runtime_is_created_again_with_an_event() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("lost", "", ""));
    bed.run_for(secs(2), |_| {});
    let uid = bed.rigs[0].uid_of("lost");
    bed.rigs[0].rt.lose(&uid);
    bed.run_for(secs(2), |_| {});
    assert_eq!(
        issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).len(),
        2
    );
    assert_eq!(bed.rigs[0].rt.pod_uids(), [uid]);
    let r = record(&bed, "lost");
    assert!(r.is_ready());
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == "Missing" && e.kind == "Warning"),
        "{:#?}",
        r.events
    );
}

#[test]
fn records_are_published_only_when_they_change() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod(
        "quiet",
        "",
        &probe("readinessProbe", "      periodSeconds: 1\n"),
    ));
    bed.run_for(secs(5), |_| {});
    assert!(record(&bed, "quiet").is_ready());
    let writes = bed.rigs[0].record_writes;
    let probes = bed.rigs[0].probe_results.len();
    bed.run_for(secs(60), |_| {});
    assert!(bed.rigs[0].probe_results.len() >= probes + 55);
    assert_eq!(bed.rigs[0].record_writes, writes);
    // About one listing a second, not one per probe.
    let lists = issued(&bed.rigs[0], |a| matches!(a, Action::ListPods)).len();
    assert!(lists <= 70, "{lists} listings in 65 s");
}

#[test]
fn an_agent_restart_adopts_its_pods_with_their_restart_counts() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("keeper", "", ""));
    bed.run_for(secs(2), |_| {});
    let uid = bed.rigs[0].uid_of("keeper");
    for _ in 0..2 {
        bed.rigs[0].rt.set_now_ms(bed.now.wall_ms);
        bed.rigs[0].rt.crash(&uid, "app", 1);
        bed.run_for(secs(15), |_| {});
    }
    let before = record(&bed, "keeper").clone();
    assert_eq!(status(&before).restart_count, 2);
    assert!(before.is_ready());
    let calls_before = bed.rigs[0].rt.calls().len();
    bed.stop_agent(0);
    bed.run_for(secs(5), |_| {});
    bed.start_agent(0);
    bed.run_for(secs(3), |_| {});
    assert!(bed.rigs[0].sup.is_running());
    let after = record(&bed, "keeper");
    assert_eq!(status(after).restart_count, 2);
    assert!(after.is_ready());
    assert_eq!(after.status.start_time, before.status.start_time);
    assert_eq!(after.ready_since_ms, before.ready_since_ms);
    assert!(after.events.starts_with(&before.events));
    assert_eq!(
        bed.rigs[0].rt.calls()[calls_before..],
        [],
        "the adopted pod was left alone"
    );
}

#[test]
fn a_pod_whose_start_the_agents_death_cut_short_runs_after_the_restart() {
    // kill -9 of the agent in the middle of a start: the runtime holds part of the pod (its
    // container created, never started) and the agent never hears how the start ended.
    let mut bed = Testbed::new(1);
    bed.rigs[0]
        .rt
        .crash_at(crate::runtime::CrashPoint::StartAfterCreate(0));
    bed.apply(&pod("solo", "", ""));
    bed.run_until(secs(5), "the start", |b| {
        !issued(&b.rigs[0], |a| matches!(a, Action::StartPod { .. })).is_empty()
    });
    bed.stop_agent(0);
    let uid = bed.rigs[0].rt.pod_uids().pop().expect("part of the pod");
    // The agent comes back: the runtime, made again, removes what the start left, and the
    // same pod (same uid) starts and gets ready.
    bed.start_agent(0);
    bed.run_for(secs(5), |_| {});
    let record = record(&bed, "solo");
    assert!(record.is_ready(), "{record:#?}");
    assert_eq!(record.pod.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(bed.rigs[0].rt.pod_uids(), [uid]);
}

#[test]
fn the_first_pass_stops_what_the_node_no_longer_owns_before_it_starts_anything() {
    let mut bed = Testbed::new(1);
    let web = |replicas: u32| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - {{name: app, image: demo:1, command: [/bin/app]}}\n"
        )
    };
    bed.apply(&web(3));
    bed.apply(&pod("solo", "", ""));
    bed.run_for(secs(3), |_| {});
    assert_eq!(bed.pods().len(), 4);
    // While the agent is down: web shrinks to 1, solo goes, fresh comes.
    bed.stop_agent(0);
    bed.apply(&web(1));
    bed.delete("pod", "solo");
    bed.apply(&pod("fresh", "", ""));
    let from = bed.rigs[0].history.len();
    bed.rigs[0].latency = Duration::from_millis(500);
    bed.start_agent(0);
    bed.run_for(secs(5), |_| {});
    let history = &bed.rigs[0].history[from..];
    let stops = history
        .iter()
        .filter(|h| matches!(h, Happened::Issued(_, Action::StopPod { .. })))
        .count();
    assert_eq!(stops, 3, "{history:#?}");
    let last_stop = history
        .iter()
        .rposition(|h| matches!(h, Happened::StopDelivered(..)))
        .expect("stops delivered");
    let first_start = history
        .iter()
        .position(|h| {
            matches!(
                h,
                Happened::Issued(_, Action::StartPod { .. } | Action::RestartContainer { .. })
            )
        })
        .expect("fresh started");
    assert!(last_stop < first_start, "{history:#?}");
    let names: Vec<String> = bed.pods().into_iter().map(|p| p.1).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"fresh".to_owned()));
    assert!(names.iter().any(|n| n.starts_with("web-")));
}

#[test]
fn plans_forfeit_the_nodes_pods_until_the_first_pass_is_done() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("solo", "", ""));
    bed.run_for(secs(2), |_| {});
    bed.stop_agent(0);
    bed.delete("pod", "solo");
    bed.rigs[0].latency = secs(2);
    bed.start_agent(0);
    let now = bed.now;
    assert_eq!(bed.rigs[0].sup.plan_forfeit(true, now), Some(true));
    // Unsynced: it waits for the cluster, at most SYNC_WAIT.
    let fresh = Supervisor::new(bed.rigs[0].config.clone(), now);
    assert_eq!(fresh.plan_forfeit(false, now), None);
    assert_eq!(
        fresh.plan_forfeit(false, at(now.mono + SYNC_WAIT)),
        Some(true)
    );
    bed.run_for(secs(3), |_| {});
    // The stop of solo is in flight: still forfeiting.
    assert_eq!(bed.rigs[0].sup.plan_forfeit(true, bed.now), Some(true));
    bed.run_for(secs(3), |_| {});
    assert_eq!(bed.rigs[0].sup.plan_forfeit(true, bed.now), Some(false));
    assert!(bed.pods().is_empty());
}

/// One node running one replica of `web` (its readiness probe answering `readiness`), and the
/// snapshot of that.
fn handoff_rig(
    readiness: ProbeAnswer,
) -> (
    NodeRig,
    shoal_gossip::Now,
    crate::workload::snapshot::Snapshot,
) {
    let mut bed = Testbed::new(1);
    bed.rigs[0]
        .rt
        .set_default_probe(ProbeKind::Readiness, readiness);
    bed.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: app\n        image: demo:1\n        command: [/bin/app]\n        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}\n",
    );
    bed.run_for(secs(3), |_| {});
    assert_eq!(bed.pods().len(), 1);
    let snapshot = bed.snapshot();
    let now = bed.now;
    (bed.rigs.remove(0), now, snapshot)
}

/// The plan with `web`'s replica moved to node 1 (`placement`), or placed nowhere.
fn moved(
    rig: &NodeRig,
    snapshot: &crate::workload::snapshot::Snapshot,
    placement: Option<Placement>,
) -> NodePlan {
    let mut plan = NodePlan::new(
        &std::sync::Arc::new(snapshot.clone()),
        &plan(snapshot, None, 0),
        &rig.id,
        rig.config.service_range,
        None,
    );
    let (_, pod) = std::sync::Arc::make_mut(&mut plan.pods)
        .pop_first()
        .expect("web runs here");
    if let Some(placement) = placement {
        plan.elsewhere.insert(pod.replica, placement);
    }
    plan
}

#[test]
fn a_moved_replica_keeps_running_until_its_new_copy_is_ready() {
    let (mut rig, now, snapshot) = handoff_rig(ProbeAnswer::Pass);
    assert!(rig.published.values().next().unwrap().is_ready());
    let stops = |rig: &NodeRig| issued(rig, |a| matches!(a, Action::StopPod { .. })).len();
    let target = |live, ready| Placement {
        node: node_id(1),
        live,
        ready,
    };
    rig.sup
        .handle_plan(moved(&rig, &snapshot, Some(target(true, false))), now);
    rig.drain(now);
    let now = rig.run_to(now, now.mono + secs(30));
    assert_eq!(stops(&rig), 0, "kept while the new copy is not ready");
    let r = rig.published.values().next().unwrap();
    assert!(r.is_ready() && r.pod.metadata.deletion_timestamp.is_none());
    rig.sup
        .handle_plan(moved(&rig, &snapshot, Some(target(true, true))), now);
    rig.drain(now);
    assert_eq!(stops(&rig), 1, "stopped once the new copy is ready");
    let r = rig.published.values().next().unwrap();
    assert!(
        r.pod.metadata.deletion_timestamp.is_some(),
        "shown as terminating"
    );
    let now = rig.run_to(now, now.mono + secs(1));
    assert!(rig.published.is_empty(), "its record is removed");
    assert!(rig.rt.pod_uids().is_empty());
    let _ = now;
}

#[test]
fn a_moved_replica_stops_at_once_when_the_target_is_not_live_or_it_is_placed_nowhere() {
    for placement in [
        Some(Placement {
            node: node_id(1),
            live: false,
            ready: false,
        }),
        None,
    ] {
        let (mut rig, now, snapshot) = handoff_rig(ProbeAnswer::Pass);
        rig.sup
            .handle_plan(moved(&rig, &snapshot, placement.clone()), now);
        rig.drain(now);
        assert_eq!(
            issued(&rig, |a| matches!(a, Action::StopPod { .. })).len(),
            1,
            "{placement:?}"
        );
    }
}

#[test]
fn a_moved_replica_that_is_not_ready_is_not_kept() {
    let (mut rig, now, snapshot) = handoff_rig(ProbeAnswer::Fail("503".into()));
    assert!(!rig.published.values().next().unwrap().is_ready());
    let target = Placement {
        node: node_id(1),
        live: true,
        ready: false,
    };
    rig.sup
        .handle_plan(moved(&rig, &snapshot, Some(target)), now);
    rig.drain(now);
    assert_eq!(
        issued(&rig, |a| matches!(a, Action::StopPod { .. })).len(),
        1
    );
}

#[test]
fn a_joining_node_takes_a_replica_without_the_ready_count_dipping() {
    let mut bed = Testbed::new_with(2, 1, false);
    bed.rigs[1]
        .rt
        .set_default_probe(ProbeKind::Readiness, ProbeAnswer::PassAfter(secs(4)));
    bed.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: app\n        image: demo:1\n        command: [/bin/app]\n        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}\n",
    );
    bed.run_until(secs(10), "4 ready", |b| {
        b.deployment_status("web").ready_replicas == 4
    });
    bed.join(1);
    let mut lowest = u32::MAX;
    bed.run_until(secs(60), "node-1 takes replicas", |b| {
        lowest = lowest.min(b.deployment_status("web").ready_replicas);
        let pods = b.pods();
        pods.len() == 4 && pods.iter().all(|p| p.2) && pods.iter().any(|p| p.0 == 1)
    });
    assert!(lowest >= 4, "ready dipped to {lowest}");
    // The transient copies are gone: 4 pods in the runtimes, and node 0 stopped some.
    bed.run_for(secs(3), |_| {});
    let running: usize = bed.rigs.iter().map(|r| r.rt.pod_uids().len()).sum();
    assert_eq!(running, 4);
    assert!(!issued(&bed.rigs[0], |a| matches!(a, Action::StopPod { .. })).is_empty());
}

#[test]
fn records_whose_publication_failed_are_published_again() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod("again", "", ""));
    bed.run_for(secs(2), |_| {});
    let sup = &mut bed.rigs[0].sup;
    assert_eq!(sup.poll_record_update(), None, "nothing changed");
    sup.handle_publish_failed(["pod/default/again".to_owned()]);
    let update = sup.poll_record_update().expect("published again");
    assert_eq!(update.name, "pod/default/again");
    let again = PodRecord::decode(update.value.as_deref().unwrap()).unwrap();
    assert_eq!(&again, record(&bed, "again"));
}

#[test]
fn a_crashing_replica_stays_on_its_node_and_its_pod_stays_running() {
    let mut bed = Testbed::new(2);
    for i in 0..6 {
        bed.apply(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: crash{i}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: crash{i}}}}}\n  template:\n    metadata: {{labels: {{app: crash{i}}}}}\n    spec:\n      containers:\n      - name: app\n        image: demo:1\n        command: [/bin/app]\n{}",
            exits_with(3).replace("    env", "        env")
        ));
    }
    bed.run_for(secs(2), |_| {});
    let first: Vec<_> = bed.pods().into_iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(first.len(), 6, "{first:?}");
    bed.run_for(secs(120), |bed| {
        for rig in &bed.rigs {
            for r in rig.published.values() {
                assert_eq!(r.status.phase, PodPhase::Running, "{}", r.pod.metadata.name);
            }
        }
        let now: Vec<_> = bed.pods().into_iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(now, first, "a crashing replica moved");
    });
    for rig in &bed.rigs {
        assert!(issued(rig, |a| matches!(a, Action::StopPod { .. })).is_empty());
        assert!(restart_times(rig).len() >= 3 * first.iter().filter(|p| p.0 == rig.index).count());
    }
}

/// One replica of `web` (selector `zone: a`) placed on node 1, whose agent is stopped (live to
/// the others, but it reports nothing); then node 0 gets the label instead, so the replica
/// moves to node 0 while node 1 may, for all node 0 knows, be starting it.
fn moved_while_unreported() -> Testbed {
    let mut bed = Testbed::new(2);
    bed.stop_agent(1);
    bed.set_labels(1, &[("zone", "a")]);
    bed.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      nodeSelector: {zone: a}\n      containers:\n      - name: app\n        image: demo:1\n        command: [/bin/app]\n",
    );
    bed.run_for(secs(2), |_| {});
    assert!(bed.pods().is_empty(), "node 1 reports nothing");
    bed.set_labels(0, &[("zone", "a")]);
    bed.set_labels(1, &[]);
    bed
}

#[test]
fn a_replica_moved_from_a_live_node_that_does_not_report_it_waits_before_it_starts() {
    let mut bed = moved_while_unreported();
    let moved_at = bed.now.mono;
    bed.run_for(secs(3), |_| {});
    let starts = issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. }));
    assert_eq!(starts.len(), 1, "{starts:?}");
    let waited = starts[0].saturating_since(moved_at);
    assert!(
        waited >= super::input::HOLD && waited <= super::input::HOLD + DEFAULT_LATENCY * 5,
        "started {waited:?} after the move"
    );
    assert_eq!(bed.pods().len(), 1);
}

#[test]
fn a_held_replica_that_goes_back_within_the_hold_is_never_started() {
    let mut bed = moved_while_unreported();
    bed.run_for(super::input::HOLD / 2, |_| {});
    // The other node turns out to run it: placement takes it back.
    bed.set_labels(1, &[("zone", "a")]);
    bed.set_labels(0, &[]);
    bed.run_for(secs(3), |_| {});
    assert!(issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).is_empty());
}

#[test]
fn a_replica_of_a_dead_node_starts_elsewhere_at_once() {
    let mut bed = Testbed::new(2);
    bed.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: app\n        image: demo:1\n        command: [/bin/app]\n",
    );
    bed.run_for(secs(2), |_| {});
    assert_eq!(bed.pods().len(), 2);
    let before = issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).len();
    let killed_at = bed.now.mono;
    bed.kill(1);
    bed.run_for(secs(2), |_| {});
    let starts = issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. }));
    assert_eq!(starts.len(), before + 1);
    assert!(starts[before].saturating_since(killed_at) < super::input::HOLD / 2);
}

#[test]
fn a_pod_waits_for_its_config_map_starts_when_it_appears_and_its_files_follow_changes() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod(
        "reader",
        "  volumes:\n  - name: conf\n    configMap: {name: settings}\n",
        "    volumeMounts:\n    - {name: conf, mountPath: /etc/conf}\n",
    ));
    bed.run_for(secs(3), |_| {});
    match &status(record(&bed, "reader")).state {
        KState::Waiting { reason, message } => {
            assert_eq!(reason.as_deref(), Some("CreateContainerConfigError"));
            assert_eq!(message.as_deref(), Some("configmap \"settings\" not found"));
        }
        other => panic!("{other:?}"),
    }
    assert!(issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).is_empty());
    let config = |color: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{color: {color}}}\n"
        )
    };
    // It starts as soon as the config map appears: no back-off to wait out.
    bed.apply(&config("blue"));
    let took = bed.run_until(secs(5), "started", |bed| {
        bed.rigs[0]
            .record("reader")
            .is_some_and(PodRecord::is_ready)
    });
    assert!(took < secs(1), "{took:?}");
    let uid = bed.rigs[0].uid_of("reader");
    let content = |bed: &Testbed| {
        bed.rigs[0]
            .rt
            .volume(&uid, "conf")
            .map(|v| (v.files[0].path.clone(), v.files[0].data.clone()))
    };
    assert_eq!(content(&bed), Some(("color".into(), b"blue".to_vec())));
    // A change rewrites the volume of the running pod, without restarting it.
    bed.apply(&config("green"));
    bed.run_until(secs(2), "rewritten", |bed| {
        content(bed) == Some(("color".into(), b"green".to_vec()))
    });
    let updates =
        |bed: &Testbed| issued(&bed.rigs[0], |a| matches!(a, Action::UpdateVolume { .. })).len();
    assert_eq!(updates(&bed), 1);
    assert_eq!(
        issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).len(),
        1
    );
    // A change of another object, or the same content again, writes nothing.
    bed.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {a: b}\n");
    bed.apply(&config("green"));
    bed.run_for(secs(2), |_| {});
    assert_eq!(updates(&bed), 1);
}

#[test]
fn an_adopted_pod_s_files_catch_up_with_what_changed_while_its_agent_was_down() {
    let mut bed = Testbed::new(1);
    let config = |color: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{color: {color}}}\n"
        )
    };
    bed.apply(&config("blue"));
    bed.apply(&pod(
        "reader",
        "  volumes:\n  - name: conf\n    configMap: {name: settings}\n",
        "    volumeMounts:\n    - {name: conf, mountPath: /etc/conf}\n",
    ));
    bed.run_until(secs(5), "started", |bed| {
        bed.rigs[0]
            .record("reader")
            .is_some_and(PodRecord::is_ready)
    });
    let uid = bed.rigs[0].uid_of("reader");
    bed.stop_agent(0);
    bed.apply(&config("green"));
    bed.run_for(secs(2), |_| {});
    bed.start_agent(0);
    bed.run_until(secs(10), "caught up", |bed| {
        bed.rigs[0]
            .rt
            .volume(&uid, "conf")
            .is_some_and(|v| v.files[0].data == b"green")
    });
    // Adopted, not started again.
    assert_eq!(bed.rigs[0].rt.pod_uids(), [uid]);
    assert_eq!(
        issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).len(),
        1
    );
}

#[test]
fn a_pod_over_its_scratch_limit_is_evicted_and_starts_again_empty() {
    let mut bed = Testbed::new(1);
    bed.apply(&pod(
        "filler",
        "  volumes:\n  - name: cache\n    emptyDir: {sizeLimit: 1Mi}\n",
        "    volumeMounts:\n    - {name: cache, mountPath: /cache}\n",
    ));
    bed.run_until(secs(5), "started", |bed| {
        bed.rigs[0]
            .record("filler")
            .is_some_and(PodRecord::is_ready)
    });
    let uid = bed.rigs[0].uid_of("filler");
    // Within its limit: nothing happens.
    bed.rigs[0].rt.set_scratch_bytes(&uid, "cache", 1 << 20);
    bed.run_for(secs(3), |_| {});
    assert_eq!(
        issued(&bed.rigs[0], |a| matches!(a, Action::StopPod { .. })).len(),
        0
    );
    bed.rigs[0]
        .rt
        .set_scratch_bytes(&uid, "cache", (1 << 20) + 1);
    bed.run_until(secs(10), "evicted and started again", |bed| {
        issued(&bed.rigs[0], |a| matches!(a, Action::StartPod { .. })).len() == 2
            && bed.rigs[0]
                .record("filler")
                .is_some_and(PodRecord::is_ready)
    });
    let r = record(&bed, "filler");
    assert!(
        r.events.iter().any(|e| e.reason == "Evicted"
            && e.message == "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\"."),
        "{:#?}",
        r.events
    );
}
