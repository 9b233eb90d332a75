//! The process runtime: each container is a child process of the agent.
//!
//! For machines without Docker and for fast tests. Linux only (it reads `/proc`).
//!
//! **State.** Each pod has a directory `<data_dir>/pods/<uid>/` holding `pod.json` (the spec,
//! the pod's IP, and per container the pid, the process's start time in clock ticks since boot
//! from `/proc/<pid>/stat`, which tells a reused pid apart, and the exit once known), one log
//! `<container>.log` per container and a working directory `containers/<container>/`.
//! `pod.json` is replaced atomically (written to `pod.json.tmp`, fsynced, renamed over it) and
//! only under one lock, so the waiters that record exits and the calls that start and stop
//! never lose each other's changes, and a crash (even of the machine) leaves the old record or
//! the new one, never a torn one. The files are the durable copy: they are read once, when the
//! runtime is created, and the records are kept in memory from then on (every change is
//! written to the file first), so that listing pods, which the reconciler does every second,
//! reads no file. Only processes that are not the agent's children (it restarted since they
//! started) are looked up in `/proc` when listing.
//!
//! **Crash safety: a container's program runs only once `pod.json` names its pid.** A pid is
//! known only once the process exists, so a process cannot be recorded before it is made;
//! instead it is made *held*: `/bin/sh` waits at a start gate, reading a line from a pipe the
//! agent holds, and only then `exec`s the program (with stdin from `/dev/null`), in the same
//! process, so the pid recorded is the program's (runc's exec fifo does the same between
//! `create` and `start`). A start spawns every container held, writes `pod.json` with their
//! pids, and then opens the gates; a restart of a container does the same for its one
//! process. If the agent dies before opening a gate, the kernel closes its end of the pipe,
//! the shell reads end of file and exits without running anything. So after a crash at any
//! point a pod directory holds either a whole record (its containers running, or ended and
//! seen as ended), which the next agent adopts, or no record, and then nothing of it runs:
//! such a directory (an interrupted start, or a removal, which deletes `pod.json` first) is
//! *incomplete*. [`Runtime::recover`] removes incomplete pods when the runtime is made again,
//! and `start_pod` of a uid whose directory is incomplete removes it before starting afresh:
//! both first kill any process still tied to the directory (its working directory or an open
//! file under it, looked up in `/proc`, process group and all), which covers what agents
//! before the start gate left (a started child not recorded yet), whatever group or session
//! it put itself in. The shell is the only difference a container can see: with bash as
//! `/bin/sh`, it may add `SHLVL` and `_` to the environment (dash adds nothing; `PWD` is
//! removed, or kept as the spec sets it).
//!
//! **Processes.** `command ++ args` runs with a clean environment (the spec's env plus
//! `POD_IP`, `POD_NAME`, `POD_NAMESPACE`, `HOSTNAME=<pod name>`, the agent's `PATH` and `HOME`
//! = the container's working directory, `SHOAL_VOLUME_<NAME>` per mounted volume, and the
//! pod's IP under each name of `pod_ip_env`; nothing else of the agent's, so no cluster key
//! leaks),
//! stdin from `/dev/null`, stdout and stderr appended to its log, in its own process group
//! (`process_group(0)`). Stop sends SIGTERM to the group, waits for the main process up to the
//! grace period, then SIGKILLs the group. When the main process ends by itself, what it left in
//! its group is SIGKILLed too, as when a container's PID 1 ends.
//!
//! **Agent restarts.** The children write straight into their log files (no pipe to the
//! agent), so they survive the agent, even `kill -9` of it: they keep running in their own
//! process groups. A new runtime finds them from the pod directories: a recorded pid that is
//! alive with the recorded start time is `Running`. A process that ended while the agent was
//! down, or after a restart (the agent is then no longer its parent, so the kernel gives its
//! exit status to init), is reported `Exited` with `exit_code: None` and reason `Unknown`: the
//! code is lost. A wrapper process that writes the code to a file would keep it, but it would
//! sit between the agent and the container (signals to forward, one more process per
//! container, a helper binary to ship) for a number the reconciler only uses to pick a reason;
//! we chose not to.
//!
//! **Pod IPs.** Each pod gets an address of 127.64.0.0/10 (on Linux all of 127.0.0.0/8 reaches
//! the loopback interface, without privileges): derived from the uid (FNV-1a), skipping
//! addresses ending in .0 or .255, those of this runtime's other pods and those any socket on
//! the machine is bound to (from `/proc/net/{tcp,udp}`, so two agents on one machine rarely
//! collide), and persisted in `pod.json`. Replicas that bind `$POD_IP` never collide on ports.
//!
//! **Modes.** The pods' directory and each pod's directory are 0700, its log files and
//! `pod.json` 0600: logs and environments are the agent user's only. Files and directories an
//! older agent left with wider modes are narrowed when next used.
//!
//! **Volumes.** A process cannot mount anything at a `mount_path` without privileges, so it is
//! told where its volumes are instead: for each mount, `SHOAL_VOLUME_<NAME>` ([`volume_env_name`]:
//! the volume's name upper-cased, `-` and `.` as `_`) is the volume's directory on the host,
//! joined with the mount's `sub_path` when it has one (through the volume's links, so that
//! one follows updates too; a volume mounted twice with different sub paths gets its root).
//! `mount_path` and `read_only` mean nothing here. A volume without secrets lives in
//! `<data_dir>/pods/<uid>/volumes/<name>/`; a sensitive one in RAM-backed storage only
//! (`<tmpfs>/shoal-<id>/pods/<uid>/volumes/<name>/`, see [`super::volume`]), and
//! [`PodInfo::volume_dirs`] tells both. They are written before any process starts and
//! rewritten atomically by [`Runtime::update_volume`], which a running process sees at once;
//! `pod.json` keeps the volumes' names, never their files.
//!
//! **Scratch and host path volumes** ([`PodSpec::scratch`], [`PodSpec::host_paths`]) are told
//! the same way. A scratch volume is `<data_dir>/pods/<uid>/scratch/<name>/` (a `memory` one
//! `<tmpfs>/shoal-<id>/pods/<uid>/scratch/<name>/`, or the pod does not start), made empty
//! and 0777 by `start_pod`, kept across container and agent restarts, removed with the pod;
//! a `sub_path` in it is made when missing. A host path is checked (or made) by `start_pod`
//! as its [`super::HostPathCheck`] says (a failure is [`RuntimeError::HostPath`] and nothing
//! starts); `SHOAL_VOLUME_<NAME>` is the host path joined with the `sub_path` (made when
//! missing). Both are in [`PodInfo::volume_dirs`], and the usage of a scratch volume with a
//! size limit in [`PodInfo::scratch_bytes`] (counted at each listing, see there for the
//! bound); nothing enforces the limit here.
//!
//! **Secrets in the environment.** The values of the variables named in `sensitive_env` are
//! never written to `pod.json` (it keeps the names with empty values, and of each name only
//! the entry that wins, so that a shadowed value is not kept either) nor anywhere else on
//! disk: they go to the pod's RAM-backed directory (`env.json`, 0600), from which a restarted
//! agent takes them to restart a container. When it is gone (the machine rebooted, which
//! ended the processes too), restarting a container fails with [`RuntimeError::Secret`]; so
//! does starting a pod with secret data on a node without RAM-backed storage. The RAM-backed
//! directories go with their pods (`remove_pod`, the removal of incomplete pods), and at
//! [`Runtime::recover`] those of pods that no longer exist are removed.
//!
//! **Logs** are capped: a background task copies a log of the pods it knows over
//! [`RuntimeConfig::log_max_bytes`] to `<container>.log.1` and truncates it (copy-truncate, as
//! logrotate does, because the child holds the file open; a few bytes written during the copy
//! can be lost, and a log can exceed the cap by what is written in the 2 s between checks).
//!
//! **Not enforced**: CPU and memory limits (no cgroups without privileges: recorded, ignored),
//! filesystem isolation (volumes are not mounted, and not read-only), the image, ports
//! (informational).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::Ipv4Net;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::clock::wall_ms;

use super::volume::VolumeStore;
use super::{
    ContainerInfo, ContainerState, EXEC_OUTPUT_LIMIT, ExecResult, LogStream, PodInfo, PodSpec,
    Recovery, Runtime, RuntimeConfig, RuntimeError, RuntimeKind, VolumeSpec, validate_spec,
};

/// Where pods get their IPs: 127.64.0.0/10 (a service range must stay out of it).
pub(crate) const POD_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 64, 0, 0), 10);
const POD_FILE: &str = "pod.json";
/// The pods' directories live here, in the agent's data dir.
const PODS_DIR: &str = "pods";
const FORMAT: u32 = 1;
/// The values of a pod's sensitive variables, in its RAM-backed directory.
const SECRET_ENV_FILE: &str = "env.json";
/// The prefix of the variables that tell a container where its volumes are.
pub const VOLUME_ENV_PREFIX: &str = "SHOAL_VOLUME_";
/// The shell that holds a container's process at its start gate.
const GATE_SHELL: &str = "/bin/sh";
/// `$0` of the gate's shell (as `ps` shows it until the program runs).
const GATE_NAME: &str = "shoal-gate";
/// The start gate: a line on stdin lets the program run, end of file (the agent died before
/// it recorded the pid) ends the shell without running it. `PWD`, which the shell exports,
/// is taken out again.
const GATE: &str = "IFS= read -r _ || exit 125; unset PWD; exec \"$@\" </dev/null";
/// The start gate for a spec that sets `PWD` itself: its value comes as the first argument.
const GATE_WITH_PWD: &str =
    "IFS= read -r _ || exit 125; PWD=$1; export PWD; shift; exec \"$@\" </dev/null";
/// Rounds of looking for (and killing) processes tied to an incomplete pod's directory: a
/// process may fork between a look and the kill, and its child is found in the next round.
const ORPHAN_ROUNDS: usize = 10;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const POLL: Duration = Duration::from_millis(20);
const LOG_CHUNK: usize = 64 * 1024;
const ROTATE_EVERY: Duration = Duration::from_secs(2);
const UNKNOWN_EXIT: &str = "the process ended while the agent was not its parent (the agent restarted since it started), so its exit code is unknown";

/// `pod.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PodRecord {
    format: u32,
    cluster_id: String,
    node_id: String,
    spec: PodSpec,
    ip: Ipv4Addr,
    created_at_ms: u64,
    containers: Vec<ContainerRecord>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ContainerRecord {
    name: String,
    /// The main process, once started.
    pid: Option<u32>,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    start_ticks: Option<u64>,
    started_at_ms: Option<u64>,
    /// Set once the process is known to have ended.
    exit: Option<ExitRecord>,
    restarts: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ExitRecord {
    code: Option<i32>,
    finished_at_ms: u64,
    message: Option<String>,
}

/// What `/proc/<pid>/stat` tells.
struct ProcStat {
    state: u8,
    start_ticks: u64,
}

/// A command for `program` as a container with environment `env` runs it: a bare name is
/// looked up in the environment's PATH here, so that the child is made by posix_spawn (std
/// falls back to fork when the child's PATH is its own, and a fork copies the page tables of
/// the whole agent: with thousands of pods, most of its time). `argv[0]` stays the name given.
fn command(program: &str, env: &[(String, String)]) -> std::io::Result<tokio::process::Command> {
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let executable = resolve_program(program, path).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{program:?} not found in PATH {path:?}"),
        )
    })?;
    let mut command = tokio::process::Command::new(executable);
    command.arg0(program);
    Ok(command)
}

/// The file a command names: itself when it holds a `/`, else the first executable file of
/// that name in `path` (a `:`-separated list of directories), as a shell would find it.
fn resolve_program(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    if program.is_empty() {
        return None;
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The command that runs a container's `program` with `args` behind the start gate
/// ([`GATE`]), for a container with environment `env` and working directory `workdir`. The
/// program is looked up here first (in the environment's PATH, or from `workdir` when it holds
/// a `/`), so that a missing one fails the start at once, as it would without the gate; the
/// shell then finds the same file, and the program keeps its name as `argv[0]`.
fn gated_command(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    workdir: &Path,
) -> std::io::Result<tokio::process::Command> {
    let var = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let path = var("PATH").unwrap_or(DEFAULT_PATH);
    let found = if program.contains('/') {
        is_executable(&workdir.join(program))
    } else {
        resolve_program(program, path).is_some()
    };
    if !found {
        let message = if program.contains('/') {
            format!("{program:?} is not an executable file")
        } else {
            format!("{program:?} not found in PATH {path:?}")
        };
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, message));
    }
    let mut command = tokio::process::Command::new(GATE_SHELL);
    match var("PWD") {
        Some(pwd) => command.args(["-c", GATE_WITH_PWD, GATE_NAME, pwd]),
        None => command.args(["-c", GATE, GATE_NAME]),
    };
    command.arg(program).args(args);
    Ok(command)
}

/// The processes (not this one) tied to one of `dirs`: their working directory or a file they
/// hold open is under it. Processes of other users, whose links cannot be read, are not seen.
fn tied_processes(dirs: &[PathBuf]) -> BTreeSet<u32> {
    let own = std::process::id();
    let mut tied = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return tied;
    };
    let under = |path: &Path| dirs.iter().any(|dir| path.starts_with(dir));
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let proc_dir = entry.path();
        let cwd_tied = std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| under(&cwd));
        let fd_tied = || {
            std::fs::read_dir(proc_dir.join("fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| under(&target)))
            })
        };
        if cwd_tied || fd_tied() {
            tied.insert(pid);
        }
    }
    tied
}

/// The process group of `pid`, from `/proc/<pid>/stat`.
fn process_group(pid: u32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..."
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// SIGKILLs `pid` and, unless it is this process's own, its process group.
fn kill_with_group(pid: u32) {
    let own_group = nix::unistd::getpgrp().as_raw();
    if let Some(group) = process_group(pid).filter(|g| *g > 1 && *g != own_group) {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Kills whatever pods the process runtime of an agent with data dir `data_dir` left running
/// (an agent killed with SIGKILL leaves its pods, which a restarted agent would adopt): every
/// process tied to its pods' directories, with their process groups. For when that agent will
/// not come back (`shoal up` stopping a cluster one of whose agents was killed), and removes
/// its RAM-backed directories (secret data) from the default places. Returns how many
/// processes were killed.
pub(crate) async fn kill_pods_left_in(data_dir: &Path) -> usize {
    let killed = kill_tied(&[data_dir.join(PODS_DIR)]).await;
    super::volume::remove_ram_dirs_of(data_dir);
    killed
}

/// Kills every process tied to one of `dirs` ([`tied_processes`]), with their process groups,
/// round after round until none is left (a process may fork between a look and the kill);
/// returns how many were killed.
async fn kill_tied(dirs: &[PathBuf]) -> usize {
    // Compared as the kernel shows them: resolved, without symbolic links.
    let dirs: Vec<PathBuf> = dirs
        .iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let mut killed = BTreeSet::new();
    for _ in 0..ORPHAN_ROUNDS {
        let tied = tied_processes(&dirs);
        if tied.is_empty() {
            break;
        }
        for pid in &tied {
            warn!(
                pid,
                "killing a process left by an interrupted pod operation"
            );
            kill_with_group(*pid);
        }
        killed.extend(tied);
        // The kernel closes a killed process's files as it exits.
        tokio::time::sleep(POLL).await;
    }
    killed.len()
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        // Field 22 overall; `after` starts at field 3.
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` is alive (not a zombie) and, when known, started at `start_ticks`.
fn is_running(pid: u32, start_ticks: Option<u64>) -> bool {
    proc_stat(pid).is_some_and(|s| {
        s.state != b'Z' && s.state != b'X' && start_ticks.is_none_or(|t| t == s.start_ticks)
    })
}

/// Signals the process group led (once) by `pid`, unless `pid` now names another process: then
/// our group is empty (Linux gives no process a pid still used as a group id), and the group
/// of that id is someone else's.
fn signal_group(pid: u32, start_ticks: Option<u64>, signal: Signal) {
    if let (Some(stat), Some(ticks)) = (proc_stat(pid), start_ticks) {
        if stat.state != b'Z' && stat.start_ticks != ticks {
            return;
        }
    }
    let Ok(pgid) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(pid, ?signal, error = %e, "signalling a process group failed"),
    }
}

/// IPv4 addresses some socket on this machine is bound to.
fn host_bound_ips() -> HashSet<Ipv4Addr> {
    let mut ips = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/udp"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let Some(local) = line.split_whitespace().nth(1) else {
                continue;
            };
            let Some((hex_ip, _port)) = local.split_once(':') else {
                continue;
            };
            if let Ok(raw) = u32::from_str_radix(hex_ip, 16) {
                // The kernel prints the network-order address as a host-order integer.
                ips.insert(Ipv4Addr::from(raw.to_ne_bytes()));
            }
        }
    }
    ips
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The pod's address: derived from the uid, the first free one from there on.
fn allocate_ip(uid: &str, taken: impl Fn(&Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let size = 1u32 << (32 - u32::from(POD_RANGE.prefix_len()));
    let base = POD_RANGE.network().to_bits();
    let h = fnv1a(uid.as_bytes());
    let start = ((h ^ (h >> 32)) as u32) % size;
    (0..size)
        .map(|probe| Ipv4Addr::from_bits(base + (start + probe) % size))
        .find(|ip| {
            let last = ip.octets()[3];
            last != 0 && last != 255 && !taken(ip)
        })
}

/// The variable that tells a process where volume `volume` is: `SHOAL_VOLUME_<NAME>`, the name
/// upper-cased with `-` and `.` as `_` (`app-config` -> `SHOAL_VOLUME_APP_CONFIG`).
pub fn volume_env_name(volume: &str) -> String {
    let name: String = volume
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("{VOLUME_ENV_PREFIX}{name}")
}

/// The values of a pod's sensitive variables: container -> its `(name, value)` entries of
/// `env` named in `sensitive_env`, in order.
type SecretEnv = BTreeMap<String, Vec<(String, String)>>;

/// The variables a process gets of `env`: the last entry of each name (a later one wins), in
/// the order of those entries. What an entry shadows is never used, so it is not kept either.
fn effective_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        out.retain(|(ek, _)| ek != k);
        out.push((k.clone(), v.clone()));
    }
    out
}

/// The pod's sensitive variables, taken out of its spec.
fn secret_env(pod: &PodSpec) -> SecretEnv {
    pod.containers
        .iter()
        .filter(|c| !c.sensitive_env.is_empty())
        .map(|c| {
            let entries = effective_env(&c.env)
                .into_iter()
                .filter(|(k, _)| c.sensitive_env.contains(k))
                .collect();
            (c.name.clone(), entries)
        })
        .collect()
}

/// The spec as `pod.json` keeps it: no file data of volumes (they live in the volumes'
/// directories), no value of a sensitive variable (kept in RAM-backed storage only), and no
/// variable a later one of the same name shadows (a secret's value shadowed by a plain one
/// is still a secret).
fn recorded_spec(pod: &PodSpec) -> PodSpec {
    let mut spec = pod.clone();
    for v in &mut spec.volumes {
        v.files.clear();
    }
    for c in &mut spec.containers {
        c.env = effective_env(&c.env);
        for (k, v) in &mut c.env {
            if c.sensitive_env.contains(k) {
                v.clear();
            }
        }
    }
    spec
}

/// Mode of the pods' directories: the agent's user only.
const PRIVATE_DIR: u32 = 0o700;
/// Mode of the pods' files (logs, `pod.json`): the agent's user only.
const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode [`PRIVATE_DIR`], and narrows it to that mode
/// if it existed.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
}

/// Writes `bytes` to a new (or truncated) file of mode [`PRIVATE_FILE`] and flushes them to
/// the disk.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Copy-truncate rotation of each of these logs that is over `max` bytes.
fn rotate_logs(logs: &[PathBuf], max: u64) {
    for path in logs {
        if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) <= max {
            continue;
        }
        let rotated = path.with_extension("log.1");
        let result = std::fs::copy(path, &rotated).and_then(|_| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(0)
        });
        match result {
            Ok(()) => debug!(log = %path.display(), "rotated"),
            Err(e) => warn!(log = %path.display(), error = %e, "rotating a log failed"),
        }
    }
}

/// Reads `reader` to its end, keeping at most `limit` bytes; returns (kept, truncated).
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let Some(mut reader) = reader else {
        return (kept, truncated);
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit - kept.len();
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// The byte offset, in the concatenation of `files` (path, length), where the last `lines`
/// lines start. A final newline does not start a line.
fn tail_offset(files: &[(PathBuf, u64)], lines: usize) -> std::io::Result<u64> {
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    if lines == 0 {
        return Ok(total);
    }
    let mut count = 0;
    let mut end = total;
    while end > 0 {
        let start = end.saturating_sub(LOG_CHUNK as u64);
        let block = read_span(files, start, end)?;
        for (i, &b) in block.iter().enumerate().rev() {
            let at = start + i as u64;
            if b == b'\n' && at + 1 != total {
                count += 1;
                if count == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Bytes `start..end` of the concatenation of `files`.
fn read_span(files: &[(PathBuf, u64)], start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut base = 0;
    for (path, len) in files {
        let (from, to) = (start.max(base), end.min(base + len));
        if from < to {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(from - base))?;
            let mut part = Vec::new();
            file.take(to - from).read_to_end(&mut part)?;
            // A file that shrank meanwhile (rotation) reads short: pad so offsets stay right.
            part.resize((to - from) as usize, 0);
            out.extend_from_slice(&part);
        }
        base += len;
    }
    Ok(out)
}

/// A container's process held at its start gate ([`GATE`]): opening it lets the program run;
/// dropping it unopened (or the agent's death, which closes the pipe) ends the process without
/// running the program.
struct Gate {
    pid: u32,
    release: tokio::process::ChildStdin,
}

impl Gate {
    /// Lets the program run: call once the pid is durably recorded.
    async fn open(mut self) {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = self.release.write_all(b"\n").await {
            // The shell is gone already: its waiter records the exit.
            warn!(pid = self.pid, error = %e, "opening a start gate failed");
        }
    }
}

struct Inner {
    config: RuntimeConfig,
    pods_dir: PathBuf,
    /// Where the pods' volumes and their RAM-backed directories are.
    volumes: VolumeStore,
    /// The values of the pods' sensitive variables, read from their RAM-backed directories
    /// (once after an agent restart).
    secrets: std::sync::Mutex<HashMap<String, Arc<SecretEnv>>>,
    /// Serialises the updates of volumes.
    volume_lock: tokio::sync::Mutex<()>,
    /// Serialises every read-modify-write of a pod's record and IP allocation.
    lock: tokio::sync::Mutex<()>,
    /// This agent's pods, by uid: what their `pod.json` files hold (read once at start, then
    /// kept in step: every change is written to the file, then here), so that listing reads no
    /// file.
    known: std::sync::Mutex<BTreeMap<String, PodRecord>>,
    /// Children this instance spawned whose exit its waiter has not recorded yet.
    owned: std::sync::Mutex<HashMap<u32, tokio::task::AbortHandle>>,
    /// The machine's bound addresses as last read, and when: a burst of starts reads the
    /// socket tables once, not once per pod (they grow with the pods).
    host_bound: std::sync::Mutex<Option<(std::time::Instant, Arc<HashSet<Ipv4Addr>>)>>,
    /// Where the next operation stops short, as if the agent were killed there (tests).
    #[cfg(test)]
    crash: super::CrashSwitch,
}

/// The process runtime. Dropping it stops its background tasks (as the agent going away
/// would) but not the containers' processes.
pub struct ProcessRuntime {
    inner: Arc<Inner>,
    rotator: tokio::task::AbortHandle,
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        self.rotator.abort();
        let owned =
            std::mem::take(&mut *self.inner.owned.lock().unwrap_or_else(|e| e.into_inner()));
        for waiter in owned.into_values() {
            waiter.abort();
        }
    }
}

impl ProcessRuntime {
    /// Sets up `<data_dir>/pods/` and starts the log rotation task. Must be called within a
    /// tokio runtime.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let pods_dir = config.data_dir.join(PODS_DIR);
        create_private_dir(&pods_dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", pods_dir.display()), e))?;
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            RuntimeError::io(
                "the process runtime needs a tokio runtime",
                std::io::Error::other(e),
            )
        })?;
        let volumes = VolumeStore::new(&config, RuntimeKind::Process, pods_dir.clone());
        let mut inner = Inner {
            config,
            pods_dir,
            volumes,
            secrets: std::sync::Mutex::new(HashMap::new()),
            volume_lock: tokio::sync::Mutex::new(()),
            lock: tokio::sync::Mutex::new(()),
            known: std::sync::Mutex::new(BTreeMap::new()),
            owned: std::sync::Mutex::new(HashMap::new()),
            host_bound: std::sync::Mutex::new(None),
            #[cfg(test)]
            crash: super::CrashSwitch::default(),
        };
        let known: BTreeMap<String, PodRecord> = inner
            .read_all()
            .into_iter()
            .map(|r| (r.spec.uid.clone(), r))
            .collect();
        info!(pods_dir = %inner.pods_dir.display(), pods = known.len(), "process runtime ready");
        inner.known = std::sync::Mutex::new(known);
        let inner = Arc::new(inner);
        let rotator = {
            let (weak, max) = (Arc::downgrade(&inner), inner.config.log_max_bytes.max(1024));
            handle.spawn(async move {
                let mut tick = tokio::time::interval(ROTATE_EVERY);
                loop {
                    tick.tick().await;
                    // The logs of the pods it knows: no directory is listed.
                    let Some(inner) = weak.upgrade() else { return };
                    let logs: Vec<PathBuf> = inner
                        .known()
                        .values()
                        .flat_map(|r| {
                            let dir = inner.pod_dir(&r.spec.uid);
                            r.containers
                                .iter()
                                .map(move |c| dir.join(format!("{}.log", c.name)))
                        })
                        .collect();
                    drop(inner);
                    let _ = tokio::task::spawn_blocking(move || rotate_logs(&logs, max)).await;
                }
            })
        };
        Ok(ProcessRuntime {
            inner,
            rotator: rotator.abort_handle(),
        })
    }

    /// `<data_dir>/pods/<uid>/`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.inner.pod_dir(pod_uid)
    }

    /// The container's log file.
    pub fn log_path(&self, pod_uid: &str, container: &str) -> PathBuf {
        self.inner.pod_dir(pod_uid).join(format!("{container}.log"))
    }

    /// The pod's RAM-backed directory (sensitive volumes, the values of sensitive variables),
    /// when this node has RAM-backed storage; it exists only for pods with secret data.
    pub fn ram_pod_dir(&self, pod_uid: &str) -> Option<PathBuf> {
        self.inner.volumes.ram_pod_dir(pod_uid)
    }

    /// Makes the next operation stop short at `point`, as if the agent were killed there.
    #[cfg(test)]
    pub(crate) fn crash_at(&self, point: super::CrashPoint) {
        self.inner.crash.arm(point);
    }

    /// The processes tied to the pod's directory (their working directory or an open file is
    /// under it), whatever the records say.
    #[cfg(test)]
    pub(crate) fn processes_tied_to(&self, pod_uid: &str) -> BTreeSet<u32> {
        let dir = self.pod_dir(pod_uid);
        tied_processes(&[std::fs::canonicalize(&dir).unwrap_or(dir)])
    }
}

/// How long a read of the machine's socket tables serves pod starts.
const HOST_BOUND_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Inner {
    /// The machine's bound IPv4 addresses, read at most every [`HOST_BOUND_TTL`].
    fn host_bound_ips(&self) -> Arc<HashSet<Ipv4Addr>> {
        let mut cache = self.host_bound.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((at, ips)) if at.elapsed() < HOST_BOUND_TTL => ips.clone(),
            _ => {
                let ips = Arc::new(host_bound_ips());
                *cache = Some((std::time::Instant::now(), ips.clone()));
                ips
            }
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    fn owns(&self, pid: u32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&pid)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodRecord>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod's record, if it is one of this agent's.
    fn load(&self, uid: &str) -> Result<Option<PodRecord>, RuntimeError> {
        Ok(self.known().get(uid).cloned())
    }

    /// Reads a pod's `pod.json` (`None` when it is missing or another agent's).
    fn read(&self, uid: &str) -> Result<Option<PodRecord>, RuntimeError> {
        if !super::is_safe_name(uid, 128) {
            return Ok(None);
        }
        let path = self.pod_dir(uid).join(POD_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RuntimeError::io(format!("reading {}", path.display()), e)),
        };
        let record: PodRecord = serde_json::from_slice(&text).map_err(|e| {
            RuntimeError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        if record.cluster_id != self.config.cluster_id || record.node_id != self.config.node_id {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Writes the pod's `pod.json` (the durable copy), then keeps the record.
    fn save(&self, record: &PodRecord) -> Result<(), RuntimeError> {
        let dir = self.pod_dir(&record.spec.uid);
        let tmp = dir.join(format!("{POD_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| RuntimeError::io("encoding pod.json", std::io::Error::other(e)))?;
        // Durable before the rename, so that a record is always whole. The rename itself is
        // not fsynced: lost with the machine, it leaves the previous record, and the
        // processes it names died with the machine too.
        write_private(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, dir.join(POD_FILE)))
            .map_err(|e| {
                RuntimeError::io(format!("writing {}", dir.join(POD_FILE).display()), e)
            })?;
        self.known().insert(record.spec.uid.clone(), record.clone());
        Ok(())
    }

    /// Forgets a pod whose directory is gone.
    fn forget(&self, uid: &str) {
        self.known().remove(uid);
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// The values of the pod's sensitive variables: kept since the start, or read from its
    /// RAM-backed directory after an agent restart.
    fn secret_env(&self, uid: &str) -> Result<Arc<SecretEnv>, RuntimeError> {
        if let Some(kept) = self
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
        {
            return Ok(kept.clone());
        }
        let path = self
            .volumes
            .ram_pod_dir(uid)
            .map(|dir| dir.join(SECRET_ENV_FILE));
        let lost = |why: String| {
            RuntimeError::Secret(format!(
                "the values of the sensitive variables of pod {uid} are gone from RAM-backed storage ({why}): the machine restarted or they were removed; the pod must be created again"
            ))
        };
        let Some(path) = path else {
            return Err(lost("this node has no RAM-backed storage now".to_string()));
        };
        let bytes = std::fs::read(&path).map_err(|e| lost(format!("{}: {e}", path.display())))?;
        let env: SecretEnv =
            serde_json::from_slice(&bytes).map_err(|e| lost(format!("{}: {e}", path.display())))?;
        let env = Arc::new(env);
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), env.clone());
        Ok(env)
    }

    /// Writes the volumes of a pod being started, and the values of its sensitive variables
    /// to its RAM-backed directory (kept in memory too); checks its mounts' sub paths.
    fn write_pod_data(&self, pod: &PodSpec) -> Result<(), RuntimeError> {
        for h in &pod.host_paths {
            super::volume::check_host_path(h)?;
        }
        self.volumes.write_pod(pod)?;
        self.volumes.make_scratch(pod)?;
        for c in &pod.containers {
            for m in &c.mounts {
                if let Some(sub) = &m.sub_path {
                    let dir = self.volume_dir(pod, &m.volume);
                    let scratch = pod.scratch.iter().any(|s| s.name == m.volume);
                    if scratch || pod.host_paths.iter().any(|h| h.name == m.volume) {
                        let mode = super::volume::sub_path_mode(scratch);
                        super::volume::dir_sub_path(&dir, &m.volume, sub, mode)?;
                    } else {
                        super::volume::resolve_sub_path(&dir, sub)?;
                    }
                }
            }
        }
        let secrets = secret_env(pod);
        if secrets.is_empty() {
            return Ok(());
        }
        let dir = self
            .volumes
            .make_ram_pod_dir(pod, "sensitive environment variables")?;
        let path = dir.join(SECRET_ENV_FILE);
        let json = serde_json::to_vec(&secrets).map_err(|e| {
            RuntimeError::io("encoding the secret environment", std::io::Error::other(e))
        })?;
        write_private(&path, &json)
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))?;
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.uid.clone(), Arc::new(secrets));
        Ok(())
    }

    /// Where the pod's volume `name` is (its RAM-backed directory, for a sensitive one, is
    /// there: the pod could not have started without it); a scratch volume's directory, or a
    /// host path.
    fn volume_dir(&self, pod: &PodSpec, name: &str) -> PathBuf {
        if let Some(h) = pod.host_paths.iter().find(|h| h.name == name) {
            return PathBuf::from(&h.path);
        }
        if let Some(s) = pod.scratch.iter().find(|s| s.name == name) {
            return self
                .volumes
                .scratch_dir(&pod.uid, name, s.memory)
                .unwrap_or_else(|| self.pod_dir(&pod.uid).join("scratch").join(name));
        }
        let sensitive = pod.volumes.iter().any(|v| v.name == name && v.sensitive);
        self.volumes
            .volume_dir(&pod.uid, name, sensitive)
            .unwrap_or_else(|| self.pod_dir(&pod.uid).join("volumes").join(name))
    }

    /// Removes the pod's RAM-backed directory, if any.
    fn remove_ram(&self, uid: &str) {
        if let Err(e) = self.volumes.remove_ram(uid) {
            warn!(pod = %uid, error = %e, "removing the pod's RAM-backed directory failed");
        }
    }

    /// Every pod of this agent from the pod directories; unreadable ones are logged and
    /// skipped.
    fn read_all(&self) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(&self.pods_dir) else {
            return Vec::new();
        };
        let mut records: Vec<PodRecord> = entries
            .flatten()
            .filter_map(|entry| {
                let uid = entry.file_name().to_string_lossy().into_owned();
                match self.read(&uid) {
                    Ok(record) => record,
                    Err(e) => {
                        warn!(pod = %uid, error = %e, "skipping an unreadable pod directory");
                        None
                    }
                }
            })
            .collect();
        records.sort_by(|a, b| a.spec.uid.cmp(&b.spec.uid));
        records
    }

    /// Whether a process of the pod ended without a waiter of ours to record it (it was not
    /// our child).
    fn has_unrecorded_end(&self, record: &PodRecord) -> bool {
        record.containers.iter().any(|c| self.ended_unrecorded(c))
    }

    fn ended_unrecorded(&self, c: &ContainerRecord) -> bool {
        // Our own children's exits are their waiters' to record: no /proc read for them.
        c.pid.is_some_and(|pid| {
            c.exit.is_none() && !self.owns(pid) && !is_running(pid, c.start_ticks)
        })
    }

    /// Records the end of processes that died without a waiter of ours to see it (they were
    /// not our children); returns whether anything changed.
    fn observe(&self, record: &mut PodRecord) -> bool {
        let mut changed = false;
        for c in &mut record.containers {
            if !self.ended_unrecorded(c) {
                continue;
            }
            let pid = c.pid.unwrap_or_default();
            signal_group(pid, c.start_ticks, Signal::SIGKILL);
            info!(pod = %record.spec.uid, container = %c.name, pid, "container ended (exit code unknown)");
            c.exit = Some(ExitRecord {
                code: None,
                finished_at_ms: wall_ms(),
                message: Some(UNKNOWN_EXIT.to_string()),
            });
            changed = true;
        }
        changed
    }

    fn info(&self, record: &PodRecord) -> PodInfo {
        PodInfo {
            uid: record.spec.uid.clone(),
            namespace: record.spec.namespace.clone(),
            name: record.spec.name.clone(),
            spec_hash: record.spec.spec_hash.clone(),
            labels: record.spec.labels.clone(),
            ip: Some(IpAddr::V4(record.ip)),
            volume_dirs: {
                let mut dirs = self.volumes.volume_dirs(
                    &record.spec.uid,
                    record
                        .spec
                        .volumes
                        .iter()
                        .map(|v| (v.name.as_str(), v.sensitive)),
                );
                dirs.extend(self.volumes.other_dirs(
                    &record.spec.uid,
                    &record.spec.scratch,
                    &record.spec.host_paths,
                ));
                dirs
            },
            scratch_bytes: self
                .volumes
                .scratch_bytes(&record.spec.uid, &record.spec.scratch),
            containers: record
                .containers
                .iter()
                .zip(&record.spec.containers)
                .map(|(c, spec)| ContainerInfo {
                    name: c.name.clone(),
                    image: spec.command.first().cloned().unwrap_or_default(),
                    runtime_id: c.pid.map(|p| p.to_string()).unwrap_or_default(),
                    state: match (&c.exit, c.pid) {
                        (Some(exit), _) => ContainerState::exited(
                            exit.code,
                            Some(exit.finished_at_ms),
                            exit.message.clone(),
                        ),
                        (None, None) => ContainerState::Created,
                        (None, Some(_)) => ContainerState::Running {
                            started_at_ms: c.started_at_ms,
                        },
                    },
                })
                .collect(),
        }
    }

    /// Container `index`'s environment: shoal's variables (with `SHOAL_VOLUME_<NAME>` per
    /// mounted volume), then the spec's (sensitive values from the RAM-backed copy), then the
    /// pod IP's.
    fn env(
        &self,
        record: &PodRecord,
        index: usize,
        workdir: &Path,
    ) -> Result<Vec<(String, String)>, RuntimeError> {
        let spec = &record.spec;
        let c = &spec.containers[index];
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
        let ip = record.ip.to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), workdir.display().to_string()),
            ("POD_IP".into(), ip.clone()),
            ("POD_NAME".into(), spec.name.clone()),
            ("POD_NAMESPACE".into(), spec.namespace.clone()),
            ("HOSTNAME".into(), spec.name.clone()),
        ];
        for m in &c.mounts {
            let root = self.volume_dir(spec, &m.volume);
            let dir = match &m.sub_path {
                Some(sub) => root.join(sub),
                None => root.clone(),
            };
            let name = volume_env_name(&m.volume);
            let dir = match env.iter().find(|(k, _)| *k == name) {
                // Mounted twice with different sub paths: the volume's root holds both.
                Some((_, earlier)) if *earlier != dir.display().to_string() => root,
                _ => dir,
            };
            env.retain(|(k, _)| *k != name);
            env.push((name, dir.display().to_string()));
        }
        let secrets = if c.sensitive_env.is_empty() {
            None
        } else {
            Some(self.secret_env(&spec.uid)?)
        };
        let mut kept: Vec<&(String, String)> = secrets
            .as_deref()
            .and_then(|s| s.get(&c.name))
            .map(|entries| entries.iter().collect())
            .unwrap_or_default();
        for (k, v) in &c.env {
            let v = if c.sensitive_env.contains(k) {
                let Some(at) = kept.iter().position(|(name, _)| name == k) else {
                    return Err(RuntimeError::Secret(format!(
                        "the value of sensitive variable {k:?} of container {:?} of pod {} is not in its RAM-backed copy",
                        c.name, spec.uid
                    )));
                };
                kept.remove(at).1.clone()
            } else {
                v.clone()
            };
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v));
        }
        for name in &c.pod_ip_env {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), ip.clone()));
        }
        Ok(env)
    }

    fn workdir(&self, record: &PodRecord, index: usize) -> PathBuf {
        let spec = &record.spec.containers[index];
        let base = self
            .pod_dir(&record.spec.uid)
            .join("containers")
            .join(&spec.name);
        match &spec.working_dir {
            Some(dir) if Path::new(dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => base.join(dir),
            None => base,
        }
    }

    /// Makes container `index`'s process, held at its start gate, notes it in the record and
    /// watches it. The caller holds the lock, saves the record, then opens the gate.
    fn spawn(self: &Arc<Self>, record: &mut PodRecord, index: usize) -> Result<Gate, RuntimeError> {
        let spec = &record.spec.containers[index];
        let uid = record.spec.uid.clone();
        let Some(program) = spec.command.first() else {
            return Err(RuntimeError::MissingCommand {
                container: spec.name.clone(),
            });
        };
        let workdir = self.workdir(record, index);
        if spec
            .working_dir
            .as_deref()
            .is_some_and(|d| Path::new(d).is_absolute())
        {
            if !workdir.is_dir() {
                return Err(RuntimeError::InvalidSpec(format!(
                    "container {:?}: working directory {} does not exist on this node",
                    spec.name,
                    workdir.display()
                )));
            }
        } else {
            std::fs::create_dir_all(&workdir)
                .map_err(|e| RuntimeError::io(format!("creating {}", workdir.display()), e))?;
        }
        let log_path = self.pod_dir(&uid).join(format!("{}.log", spec.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE)
            .open(&log_path)
            .and_then(|log| {
                // One created by an older agent keeps its mode otherwise.
                log.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
                Ok(log)
            })
            .map_err(|e| RuntimeError::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| RuntimeError::io(format!("opening {}", log_path.display()), e))?;
        if spec.cpu_millis_limit.is_some() || spec.memory_limit_bytes.is_some() {
            debug!(pod = %uid, container = %spec.name,
                "cpu and memory limits are not enforced by the process runtime");
        }
        let env = self.env(record, index, &workdir)?;
        let args: Vec<String> = spec.command[1..]
            .iter()
            .chain(&spec.args)
            .cloned()
            .collect();
        let mut command = gated_command(program, &args, &env, &workdir).map_err(|source| {
            RuntimeError::Spawn {
                container: spec.name.clone(),
                program: program.clone(),
                source,
            }
        })?;
        command
            .env_clear()
            .envs(env)
            .current_dir(&workdir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| RuntimeError::Spawn {
            container: spec.name.clone(),
            program: program.clone(),
            source,
        })?;
        let (Some(pid), Some(release)) = (child.id(), child.stdin.take()) else {
            return Err(RuntimeError::Spawn {
                container: spec.name.clone(),
                program: program.clone(),
                source: std::io::Error::other("the process ended before it could be watched"),
            });
        };
        let start_ticks = proc_stat(pid).map(|s| s.start_ticks);
        let name = spec.name.clone();
        let c = &mut record.containers[index];
        c.pid = Some(pid);
        c.start_ticks = start_ticks;
        c.started_at_ms = Some(wall_ms());
        c.exit = None;
        info!(pod = %uid, container = %name, pid, ip = %record.ip, "container started");

        // The waiter: records the exit code and kills what the process left in its group.
        // Registered under the `owned` lock so it cannot finish before it is registered.
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let inner = Arc::clone(self);
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            signal_group(pid, None, Signal::SIGKILL);
            let (code, message) = match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => (Some(code), None),
                    (None, Some(sig)) => (
                        Some(128 + sig),
                        Some(format!(
                            "killed by signal {}",
                            Signal::try_from(sig)
                                .map_or_else(|_| sig.to_string(), |s| s.to_string())
                        )),
                    ),
                    (None, None) => (None, None),
                },
                Err(e) => (None, Some(format!("waiting for the process failed: {e}"))),
            };
            {
                let _guard = inner.lock.lock().await;
                match inner.load(&uid) {
                    Ok(Some(mut record)) => {
                        if let Some(c) = record
                            .containers
                            .iter_mut()
                            .find(|c| c.name == name && c.pid == Some(pid) && c.exit.is_none())
                        {
                            c.exit = Some(ExitRecord {
                                code,
                                finished_at_ms: wall_ms(),
                                message,
                            });
                            if let Err(e) = inner.save(&record) {
                                warn!(pod = %uid, container = %name, error = %e, "recording an exit failed");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(pod = %uid, container = %name, error = %e, "recording an exit failed")
                    }
                }
                inner
                    .owned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&pid);
            }
            info!(pod = %uid, container = %name, pid, exit_code = ?code, "container exited");
        });
        owned.insert(pid, waiter.abort_handle());
        Ok(Gate { pid, release })
    }

    /// Ends the watch of these processes without recording anything (as the agent's death
    /// would).
    #[cfg(test)]
    fn abandon(&self, pids: impl IntoIterator<Item = u32>) {
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        for pid in pids {
            if let Some(waiter) = owned.remove(&pid) {
                waiter.abort();
            }
        }
    }

    /// Whether a test asked the operation to stop short at `point`.
    #[cfg(test)]
    fn crash_here(&self, point: super::CrashPoint) -> bool {
        self.crash.fires(point)
    }

    /// Whether the pod directory `uid` has leftovers of an interrupted operation and no
    /// record: `Some(dir)` to clean up, `None` when there is no directory, or it holds a
    /// record (this agent's, or another's on the same data dir, which is left alone).
    fn incomplete_dir(&self, uid: &str) -> Option<PathBuf> {
        let dir = self.pod_dir(uid);
        if std::fs::symlink_metadata(&dir).is_err() {
            return None;
        }
        match self.read(uid) {
            Ok(Some(_)) => None,
            // Another agent's, or nothing there.
            Ok(None) if dir.join(POD_FILE).exists() => None,
            Ok(None) => Some(dir),
            // Torn or garbled (a record written before they were fsynced): no use to anyone.
            Err(e) => {
                warn!(pod = %uid, error = %e, "the record of an interrupted operation is unreadable");
                Some(dir)
            }
        }
    }

    /// Removes incomplete pods' directories, first killing whatever still runs tied to them
    /// (and the recorded pids, in case they hold nothing there any more); returns how many
    /// processes were killed. The caller holds the lock.
    async fn discard(&self, dirs: &[PathBuf], recorded: &[(u32, Option<u64>)]) -> usize {
        let mut killed_recorded = 0;
        for (pid, ticks) in recorded {
            if is_running(*pid, *ticks) {
                signal_group(*pid, *ticks, Signal::SIGKILL);
                killed_recorded += 1;
            }
        }
        // With their RAM-backed directories (sensitive volumes).
        let uids: Vec<String> = dirs
            .iter()
            .filter_map(|d| Some(d.file_name()?.to_str()?.to_string()))
            .collect();
        let mut tied: Vec<PathBuf> = dirs.to_vec();
        tied.extend(
            uids.iter()
                .filter_map(|uid| self.volumes.ram_pod_dir(uid))
                .filter(|d| d.exists()),
        );
        let killed = kill_tied(&tied).await;
        for uid in &uids {
            self.forget(uid);
            self.remove_ram(uid);
        }
        for dir in dirs {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => info!(dir = %dir.display(), "removed an incomplete pod"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "removing an incomplete pod failed")
                }
            }
        }
        killed + killed_recorded
    }

    /// Whether the container's process has ended and its end is (or will no more be) recorded
    /// by a waiter of ours.
    fn settled(&self, c: &ContainerRecord) -> bool {
        match c.pid {
            None => true,
            Some(pid) => !self.owns(pid) && !is_running(pid, c.start_ticks),
        }
    }

    /// SIGTERM to the containers' groups, SIGKILL after `grace`, then waits (a bounded time)
    /// until the exits are recorded.
    async fn stop_containers(&self, containers: &[ContainerRecord], grace: Duration) {
        let running: Vec<&ContainerRecord> = containers
            .iter()
            .filter(|c| c.exit.is_none() && c.pid.is_some_and(|p| is_running(p, c.start_ticks)))
            .collect();
        for c in &running {
            debug!(container = %c.name, pid = ?c.pid, "SIGTERM");
            signal_group(c.pid.unwrap_or_default(), c.start_ticks, Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && running
                .iter()
                .any(|c| c.pid.is_some_and(|p| is_running(p, c.start_ticks)))
        {
            tokio::time::sleep(POLL).await;
        }
        // The main processes are gone or out of time: kill what is left of their groups.
        for c in &running {
            signal_group(c.pid.unwrap_or_default(), c.start_ticks, Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !containers.iter().all(|c| self.settled(c)) {
            tokio::time::sleep(POLL).await;
        }
    }

    async fn record_or_not_found(&self, uid: &str) -> Result<PodRecord, RuntimeError> {
        let _guard = self.lock.lock().await;
        self.load(uid)?.ok_or_else(|| RuntimeError::PodNotFound {
            pod_uid: uid.to_string(),
        })
    }
}

fn container_index(record: &PodRecord, container: &str) -> Result<usize, RuntimeError> {
    record
        .containers
        .iter()
        .position(|c| c.name == container)
        .ok_or_else(|| RuntimeError::ContainerNotFound {
            pod_uid: record.spec.uid.clone(),
            container: container.to_string(),
        })
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn ensure_image(
        &self,
        _image: &str,
        _on_progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn recover(&self) -> Result<Recovery, RuntimeError> {
        let inner = &self.inner;
        let _guard = inner.lock.lock().await;
        let mut recovery = Recovery::default();
        let mut dirs = Vec::new();
        let mut recorded = Vec::new();
        // Records whose containers did not all get a process: written by agents before the
        // start gate, which recorded each container as it started it.
        let incomplete: Vec<PodRecord> = inner
            .known()
            .values()
            .filter(|r| {
                r.containers
                    .iter()
                    .any(|c| c.pid.is_none() && c.exit.is_none())
            })
            .cloned()
            .collect();
        for record in incomplete {
            inner.forget(&record.spec.uid);
            recorded.extend(
                record
                    .containers
                    .iter()
                    .filter_map(|c| c.pid.map(|pid| (pid, c.start_ticks))),
            );
            dirs.push(inner.pod_dir(&record.spec.uid));
            recovery.removed.push(record.spec.uid);
        }
        // Directories without a record: a start that did not get as far as writing it, or a
        // removal that got past deleting it.
        let entries = std::fs::read_dir(&inner.pods_dir)
            .map_err(|e| RuntimeError::io(format!("listing {}", inner.pods_dir.display()), e))?;
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !super::is_safe_name(&uid, 128) || inner.known().contains_key(&uid) {
                continue;
            }
            if let Some(dir) = inner.incomplete_dir(&uid) {
                if !recovery.removed.contains(&uid) {
                    dirs.push(dir);
                    recovery.removed.push(uid);
                }
            }
        }
        if !dirs.is_empty() {
            recovery.removed.sort();
            recovery.killed = inner.discard(&dirs, &recorded).await;
            info!(pods = ?recovery.removed, killed = recovery.killed,
                "removed pods an interrupted operation left incomplete");
        }
        // RAM-backed directories of pods that are gone (removed while the agent was down,
        // or a removal interrupted after `pod.json` and the pod's directory went).
        for uid in inner.volumes.ram_uids() {
            if !inner.known().contains_key(&uid) {
                info!(pod = %uid, "removing the RAM-backed directory of a pod that is gone");
                inner.remove_ram(&uid);
            }
        }
        Ok(recovery)
    }

    async fn start_pod(&self, pod: &PodSpec) -> Result<PodInfo, RuntimeError> {
        validate_spec(pod)?;
        if let Some(c) = pod.containers.iter().find(|c| c.command.is_empty()) {
            return Err(RuntimeError::MissingCommand {
                container: c.name.clone(),
            });
        }
        let inner = &self.inner;
        let _guard = inner.lock.lock().await;
        let dir = inner.pod_dir(&pod.uid);
        if inner.known().contains_key(&pod.uid) {
            return Err(RuntimeError::PodExists {
                pod_uid: pod.uid.clone(),
            });
        }
        if std::fs::symlink_metadata(&dir).is_ok() {
            // Left by an interrupted start or removal of this uid: replaced. A directory with
            // another agent's record is not ours to touch.
            let Some(leftover) = inner.incomplete_dir(&pod.uid) else {
                return Err(RuntimeError::PodExists {
                    pod_uid: pod.uid.clone(),
                });
            };
            let killed = inner.discard(&[leftover], &[]).await;
            info!(pod = %pod.uid, killed, "replaced what an interrupted operation left of the pod");
        }
        let bound = inner.host_bound_ips();
        let ours: HashSet<Ipv4Addr> = inner.known().values().map(|r| r.ip).collect();
        let ip = allocate_ip(&pod.uid, |ip| bound.contains(ip) || ours.contains(ip))
            .ok_or(RuntimeError::NoFreeIp(POD_RANGE))?;
        create_private_dir(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        // Volumes and secret values before any process: a crash from here on leaves an
        // incomplete pod, removed with its RAM-backed directory by the next recovery.
        if let Err(err) = inner.write_pod_data(pod) {
            warn!(pod = %pod.uid, error = %err, "writing the pod's volumes failed");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(pod = %pod.uid, error = %e, "removing the pod directory failed");
            }
            inner.forget(&pod.uid);
            inner.remove_ram(&pod.uid);
            return Err(err);
        }
        let mut record = PodRecord {
            format: FORMAT,
            cluster_id: inner.config.cluster_id.clone(),
            node_id: inner.config.node_id.clone(),
            spec: recorded_spec(pod),
            ip,
            created_at_ms: wall_ms(),
            containers: pod
                .containers
                .iter()
                .map(|c| ContainerRecord {
                    name: c.name.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        // Every process held at its gate, then the record naming them, then the gates open:
        // a crash anywhere leaves no program running that the record does not name.
        let mut gates = Vec::with_capacity(pod.containers.len());
        let mut made = Ok(());
        for index in 0..pod.containers.len() {
            match inner.spawn(&mut record, index) {
                Ok(gate) => gates.push(gate),
                Err(e) => {
                    made = Err(e);
                    break;
                }
            }
            #[cfg(test)]
            if inner.crash_here(super::CrashPoint::StartAfterCreate(index)) {
                inner.abandon(gates.iter().map(|g| g.pid));
                return Err(super::simulated_crash(super::CrashPoint::StartAfterCreate(
                    index,
                )));
            }
        }
        let saved = made.and_then(|()| inner.save(&record));
        if let Err(err) = saved {
            warn!(pod = %pod.uid, error = %err, "starting the pod failed; removing what was started");
            // Unopened, the gates end their shells; killing the groups makes it prompt.
            for gate in &gates {
                signal_group(gate.pid, None, Signal::SIGKILL);
            }
            drop(gates);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(pod = %pod.uid, error = %e, "removing the pod directory failed");
            }
            inner.forget(&pod.uid);
            inner.remove_ram(&pod.uid);
            return Err(err);
        }
        #[cfg(test)]
        if inner.crash_here(super::CrashPoint::StartAfterRecord) {
            inner.abandon(gates.iter().map(|g| g.pid));
            return Err(super::simulated_crash(super::CrashPoint::StartAfterRecord));
        }
        for gate in gates {
            gate.open().await;
        }
        info!(pod = %pod.uid, name = %pod.name, namespace = %pod.namespace, ip = %ip, "pod started");
        Ok(inner.info(&record))
    }

    async fn restart_container(
        &self,
        pod_uid: &str,
        container: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let record = inner.record_or_not_found(pod_uid).await?;
        let index = container_index(&record, container)?;
        inner
            .stop_containers(&record.containers[index..=index], grace)
            .await;
        let _guard = inner.lock.lock().await;
        let mut record = inner
            .load(pod_uid)?
            .ok_or_else(|| RuntimeError::PodNotFound {
                pod_uid: pod_uid.to_string(),
            })?;
        inner.observe(&mut record);
        // As a start: held, recorded, released (a crash before the record leaves the old,
        // ended process recorded and the new one ends at its gate).
        let gate = inner.spawn(&mut record, index)?;
        record.containers[index].restarts += 1;
        if let Err(e) = inner.save(&record) {
            signal_group(gate.pid, None, Signal::SIGKILL);
            return Err(e);
        }
        gate.open().await;
        info!(pod = %pod_uid, container, "container restarted");
        Ok(())
    }

    async fn stop_pod(&self, pod_uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let record = {
            let _guard = inner.lock.lock().await;
            match inner.load(pod_uid)? {
                Some(record) => record,
                None => return Ok(()),
            }
        };
        inner.stop_containers(&record.containers, grace).await;
        let _guard = inner.lock.lock().await;
        if let Some(mut record) = inner.load(pod_uid)? {
            if inner.observe(&mut record) {
                inner.save(&record)?;
            }
        }
        debug!(pod = %pod_uid, "pod stopped");
        Ok(())
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        if !super::is_safe_name(pod_uid, 128) {
            // No pod has such a uid, and it must not name a directory to remove.
            return Ok(());
        }
        let inner = &self.inner;
        let record = {
            let _guard = inner.lock.lock().await;
            match inner.load(pod_uid)? {
                Some(record) => record,
                None => {
                    // Nothing listed, but perhaps what an interrupted operation left of it.
                    if let Some(dir) = inner.incomplete_dir(pod_uid) {
                        inner.discard(&[dir], &[]).await;
                    }
                    return Ok(());
                }
            }
        };
        inner
            .stop_containers(&record.containers, Duration::ZERO)
            .await;
        let _guard = inner.lock.lock().await;
        let dir = inner.pod_dir(pod_uid);
        // The record first: from then on the pod is incomplete, and whatever of the directory
        // a crash leaves is removed by the next agent's recovery.
        let record_file = dir.join(POD_FILE);
        match std::fs::remove_file(&record_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("removing {}", record_file.display()),
                    e,
                ));
            }
        }
        inner.forget(pod_uid);
        #[cfg(test)]
        if inner.crash_here(super::CrashPoint::RemoveMidway) {
            return Err(super::simulated_crash(super::CrashPoint::RemoveMidway));
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(format!("removing {}", dir.display()), e)),
        }
        inner.volumes.remove_ram(pod_uid)?;
        info!(pod = %pod_uid, "pod removed");
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, RuntimeError> {
        let inner = &self.inner;
        let _guard = inner.lock.lock().await;
        let mut ended = Vec::new();
        let pods = inner
            .known()
            .values()
            .map(|record| {
                if !inner.has_unrecorded_end(record) {
                    return inner.info(record);
                }
                let mut record = record.clone();
                inner.observe(&mut record);
                let info = inner.info(&record);
                ended.push(record);
                info
            })
            .collect();
        for record in ended {
            inner.save(&record)?;
        }
        Ok(pods)
    }

    async fn update_volume(&self, pod_uid: &str, volume: &VolumeSpec) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let _updating = inner.volume_lock.lock().await;
        let record = inner.record_or_not_found(pod_uid).await?;
        match record.spec.volumes.iter().find(|v| v.name == volume.name) {
            Some(v) if v.sensitive == volume.sensitive => {}
            Some(v) => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "volume {:?} of pod {pod_uid} is {}sensitive: an update cannot change that",
                    v.name,
                    if v.sensitive { "" } else { "not " }
                )));
            }
            None => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "pod {pod_uid} has no volume named {:?}",
                    volume.name
                )));
            }
        }
        let (store, uid, volume) = (inner.volumes.clone(), pod_uid.to_string(), volume.clone());
        let changed = tokio::task::spawn_blocking(move || store.update(&uid, &volume))
            .await
            .map_err(|e| RuntimeError::io("updating a volume", std::io::Error::other(e)))??;
        if changed {
            info!(pod = %pod_uid, "volume updated");
        }
        Ok(())
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        let record = self.inner.record_or_not_found(pod_uid).await?;
        let index = container_index(&record, container)?;
        let c = &record.containers[index];
        let live = self.log_path(pod_uid, container);
        let rotated = live.with_extension("log.1");
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let files = vec![(rotated.clone(), len(&rotated)), (live.clone(), len(&live))];
        let start = match tail {
            Some(lines) => tail_offset(&files, lines)
                .map_err(|e| RuntimeError::io(format!("reading {}", live.display()), e))?,
            // Everything: the rotated file too.
            None => 0,
        };
        // Segments to read: (path, offset, the live one?).
        let mut segments = Vec::new();
        if start < files[0].1 {
            segments.push((rotated, start, false));
            segments.push((live, 0, true));
        } else {
            segments.push((live, start - files[0].1, true));
        }
        let watched = c
            .pid
            .filter(|_| c.exit.is_none())
            .map(|pid| (pid, c.start_ticks));
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, RuntimeError>>(8);
        tokio::spawn(async move {
            for (path, offset, is_live) in segments {
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        let _ = tx
                            .send(Err(RuntimeError::io(
                                format!("reading {}", path.display()),
                                e,
                            )))
                            .await;
                        return;
                    }
                };
                let mut pos = offset;
                if let Err(e) = file.seek(SeekFrom::Start(pos)).await {
                    let _ = tx
                        .send(Err(RuntimeError::io(
                            format!("reading {}", path.display()),
                            e,
                        )))
                        .await;
                    return;
                }
                let mut ending = false;
                loop {
                    let mut buf = vec![0u8; LOG_CHUNK];
                    match file.read(&mut buf).await {
                        Ok(0) => {}
                        Ok(n) => {
                            buf.truncate(n);
                            pos += n as u64;
                            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(RuntimeError::io(
                                    format!("reading {}", path.display()),
                                    e,
                                )))
                                .await;
                            return;
                        }
                    }
                    // At the end of the file.
                    if !is_live || !follow || ending {
                        break;
                    }
                    if tokio::fs::metadata(&path).await.map_or(0, |m| m.len()) < pos {
                        // Rotated (truncated): start over.
                        pos = 0;
                        if file.seek(SeekFrom::Start(0)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match watched {
                        Some((pid, ticks)) if is_running(pid, ticks) => {
                            if tx.is_closed() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        // The process ended: one last read, then stop.
                        _ => ending = true,
                    }
                }
            }
        });
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let inner = &self.inner;
        let record = inner.record_or_not_found(pod_uid).await?;
        let index = container_index(&record, container)?;
        let c = &record.containers[index];
        if c.exit.is_some() || !c.pid.is_some_and(|p| is_running(p, c.start_ticks)) {
            return Err(RuntimeError::ContainerNotRunning {
                pod_uid: pod_uid.to_string(),
                container: container.to_string(),
            });
        }
        let Some(program) = command.first() else {
            return Err(RuntimeError::InvalidSpec(format!(
                "exec in container {container:?}: empty command"
            )));
        };
        let workdir = inner.workdir(&record, index);
        let env = inner.env(&record, index, &workdir)?;
        let mut child = self::command(program, &env)
            .map_err(|e| RuntimeError::io(format!("exec of {program:?}"), e))?
            .args(&command[1..])
            .env_clear()
            .envs(env)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                container: container.to_string(),
                program: program.clone(),
                source,
            })?;
        let pid = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let ((mut output, cut_out), (err, cut_err)) = tokio::join!(
                read_capped(stdout, EXEC_OUTPUT_LIMIT),
                read_capped(stderr, EXEC_OUTPUT_LIMIT)
            );
            let status = child.wait().await;
            let truncated = cut_out || cut_err || output.len() + err.len() > EXEC_OUTPUT_LIMIT;
            output.extend_from_slice(&err);
            output.truncate(EXEC_OUTPUT_LIMIT);
            (status, output, truncated)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((Ok(status), output, truncated)) => Ok(ExecResult {
                exit_code: status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(-1),
                output,
                truncated,
            }),
            Ok((Err(e), _, _)) => Err(RuntimeError::io(
                format!("waiting for an exec in container {container:?}"),
                e,
            )),
            Err(_) => {
                if let Some(pid) = pid {
                    signal_group(pid, None, Signal::SIGKILL);
                }
                Err(RuntimeError::ExecTimeout {
                    container: container.to_string(),
                    timeout,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_the_containers_path_as_a_shell_would() {
        let dir = std::env::temp_dir().join(format!("shoal-resolve-{}", std::process::id()));
        let (first, second) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        let write = |path: PathBuf, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Not executable in the first directory: the executable one in the second is taken.
        write(first.join("tool"), 0o644);
        write(second.join("tool"), 0o755);
        let path = format!("{}::{}", first.display(), second.display());
        assert_eq!(resolve_program("tool", &path), Some(second.join("tool")));
        assert_eq!(resolve_program("missing", &path), None);
        assert_eq!(resolve_program("", &path), None);
        // A directory of that name is not a program.
        std::fs::create_dir_all(first.join("dir")).unwrap();
        assert_eq!(resolve_program("dir", &first.display().to_string()), None);
        // A path is taken as it is.
        assert_eq!(
            resolve_program("./bin/x", &path),
            Some(PathBuf::from("./bin/x"))
        );
        let err = command("missing", &[("PATH".into(), path.clone())]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("\"missing\" not found in PATH"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ips_are_deterministic_and_skip_taken_ones() {
        let a = allocate_ip("pod-a", |_| false).unwrap();
        assert_eq!(allocate_ip("pod-a", |_| false), Some(a));
        assert_eq!(a.octets()[0], 127);
        assert!((64..128).contains(&a.octets()[1]), "{a}");
        let b = allocate_ip("pod-a", |ip| *ip == a).unwrap();
        assert_ne!(a, b);
        assert_ne!(allocate_ip("pod-b", |_| false), Some(a));
    }

    #[test]
    fn bound_ips_are_seen() {
        let listener = std::net::TcpListener::bind("127.64.3.7:0").unwrap();
        assert!(host_bound_ips().contains(&Ipv4Addr::new(127, 64, 3, 7)));
        drop(listener);
    }

    #[test]
    fn tail_offsets() {
        let dir = std::env::temp_dir().join(format!("shoal-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, new) = (dir.join("a.log.1"), dir.join("a.log"));
        std::fs::write(&old, "1\n2\n").unwrap();
        std::fs::write(&new, "3\n4\n5\n").unwrap();
        let files = vec![(old.clone(), 4), (new.clone(), 6)];
        let text = "1\n2\n3\n4\n5\n";
        for (lines, expect) in [
            (0, ""),
            (1, "5\n"),
            (3, "3\n4\n5\n"),
            (4, "2\n3\n4\n5\n"),
            (9, text),
        ] {
            let at = tail_offset(&files, lines).unwrap() as usize;
            assert_eq!(&text[at..], expect, "tail {lines}");
        }
        // No final newline: the partial last line counts.
        std::fs::write(&new, "3\n4").unwrap();
        let files = vec![(old, 4), (new, 3)];
        let at = tail_offset(&files, 2).unwrap() as usize;
        assert_eq!(&"1\n2\n3\n4"[at..], "3\n4");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_keeps_one_old_file() {
        let dir = std::env::temp_dir().join(format!("shoal-rotate-{}", std::process::id()));
        let pod = dir.join("p1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("c.log"), vec![b'x'; 3000]).unwrap();
        rotate_logs(&[pod.join("c.log"), pod.join("missing.log")], 2048);
        assert_eq!(std::fs::metadata(pod.join("c.log")).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(pod.join("c.log.1")).unwrap().len(), 3000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
