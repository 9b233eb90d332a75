//! `shoal agent`: the daemon every machine of a cluster runs.
//!
//! Start-up: open the data dir (identity, state), settle the cluster key, start the network
//! layer, restore the state into the gossip core, start the driver and the HTTP API, and join
//! (the `--join` peers, or after a restart the members it knew). SIGTERM, SIGINT or
//! `shoal leave` make it leave the cluster (others see `left` within a second), flush its state
//! and exit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shoal_gossip::{Config, Identity, Key, NodeId};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::wall_ms;
use crate::driver::{self, DriverSetup, Subscriber};
use crate::net::{self, ClusterKey, NetConfig};
use crate::node_info::{NODE_INFO, NodeInfo};
use crate::persist::Db;
use crate::runtime::{AnyRuntime, RuntimeConfig, RuntimeKind};
use crate::workload::limits::Limits;
use crate::workload::plan::Plan;
use crate::workload::projector::{self, ProjectorCounters};
use crate::workload::reconciler::ReconcilerConfig;
use crate::workload::service::{DEFAULT_SERVICE_RANGE, DOCKER_SERVICE_RANGE, ServiceRange};

/// Options of `shoal agent`.
#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// Node name shown by `shoal get nodes` (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where the agent keeps its identity, cluster key and state.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Gossip listen address (QUIC on UDP, and TCP as a fallback, on the same port).
    #[arg(long, default_value = "0.0.0.0:7946")]
    listen: SocketAddr,
    /// Address other nodes reach this one at (default: the listen address, or this machine's
    /// primary IP when listening on all interfaces).
    #[arg(long)]
    advertise: Option<String>,
    /// HTTP API address. Binding beyond loopback requires --api-token-file.
    #[arg(long, default_value = "127.0.0.1:7947")]
    api: SocketAddr,
    /// File holding the token API clients must present (Authorization: Bearer ...).
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// A member to join through: host:port or a libp2p multiaddr. Repeatable; any one live
    /// member is enough. Retried with back-off while none answers.
    #[arg(long)]
    join: Vec<String>,
    /// File holding the cluster key (`shoal keygen` prints one). Also SHOAL_CLUSTER_KEY. The first
    /// node of a cluster creates one when none is given.
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Discover and join peers with the same cluster key on the local network (mDNS).
    #[arg(long)]
    mdns: bool,
    /// Use TCP only (for networks that block UDP); the default is QUIC with TCP as a fallback.
    #[arg(long)]
    tcp_only: bool,
    /// How pods run: `docker` containers, or plain `process`es (default: docker when an engine
    /// answers, else process).
    #[arg(long, value_enum)]
    runtime: Option<RuntimeKind>,
    /// A node label for `nodeSelector`, KEY=VALUE. Repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// CPU offered to pods, in millicores (default: all of this machine's CPUs).
    #[arg(long)]
    cpu_millis: Option<u64>,
    /// Memory offered to pods, in bytes (default: this machine's memory).
    #[arg(long)]
    memory_bytes: Option<u64>,
    /// Service mesh listen address (QUIC on UDP) (default: the gossip listen address with the
    /// port after the API's, 7948 by default; an ephemeral port when the gossip port is 0).
    #[arg(long)]
    mesh_listen: Option<SocketAddr>,
    /// The cluster's service range: cluster IPs come from it, and the cluster DNS answers on
    /// its first address. Give every agent of a cluster the same one. Default: 10.200.0.0/16
    /// with the Docker runtime (Docker pods reach it through their bridge; the agent routes
    /// it to this host, which needs CAP_NET_ADMIN), 127.200.0.0/16 with the process runtime
    /// (loopback: no privileges, but Docker pods cannot reach it).
    #[arg(long)]
    service_range: Option<crate::workload::service::ServiceRange>,
    /// Most replicas one workload may ask for; `apply` and `scale` refuse more. Give every
    /// agent the same value (the cluster plans with the lowest any member announces).
    #[arg(long, default_value_t = Limits::DEFAULT_PER_WORKLOAD, value_parser = clap::value_parser!(u32).range(1..))]
    max_replicas_per_workload: u32,
    /// Most replicas all workloads of the cluster may ask for together.
    #[arg(long, default_value_t = Limits::DEFAULT_CLUSTER, value_parser = clap::value_parser!(u32).range(1..))]
    max_replicas: u32,
    /// Largest request body the API takes, in bytes: the objects of one `apply`, written at
    /// once and held in memory whole (`shoal apply` sends larger sets in parts). One object
    /// may take at most 1 MiB, and less when this is under 1 MiB + 4 KiB. At least 65536.
    #[arg(long, default_value_t = crate::api::limits::DEFAULT_MAX_REQUEST as u64,
          value_parser = clap::value_parser!(u64).range(crate::api::limits::MIN_MAX_REQUEST as u64..))]
    max_request_bytes: u64,
    /// How far this node's clock may be from most members' (in milliseconds) before it
    /// refuses writes: a write stamped by a clock that is ahead could undo later writes made
    /// elsewhere. Keep clocks in sync with NTP; give every agent the same value.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    max_clock_offset_ms: u64,
    /// Free space (MiB) the node keeps on its data dir's disk: below it, the node refuses
    /// object writes (507) until space is freed, while what it writes about itself and
    /// receives from its peers still goes in. 0 refuses only once a write fails.
    #[arg(long, default_value_t = crate::disk::DEFAULT_RESERVE_MB)]
    disk_reserve_mb: u64,
    /// Moves the wall clock the gossip core reads by this many milliseconds. For fault tests
    /// of the clock rule; never needed otherwise.
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    clock_offset_ms: i64,
    /// Makes the wall clock the gossip core reads drift by this many parts per million from
    /// the start (100000: 100 ms a second). For fault tests of the clock rule.
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    clock_drift_ppm: i64,
}

/// The mesh's default address: the gossip listen IP, port 7948 (gossip 7946 + 2), or an
/// ephemeral port when gossip listens on one.
fn default_mesh_listen(listen: SocketAddr) -> SocketAddr {
    let port = match listen.port() {
        0 => 0,
        p => p.saturating_add(2),
    };
    SocketAddr::new(listen.ip(), port)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: a label is KEY=VALUE"))?;
    if k.is_empty() || k.len() > 253 || v.len() > 63 {
        return Err(format!(
            "{text:?}: keys are 1-253 characters, values at most 63"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// This machine's CPUs in millicores and memory in bytes (Linux /proc; fallbacks elsewhere).
fn machine_capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30);
    (cpus * 1000, memory)
}

pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("HOME").filter(|_| !is_root()) {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&home).join(".local/share"));
        return base.join("shoal");
    }
    PathBuf::from("/var/lib/shoal")
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shoal-node".to_owned())
}

/// This machine's primary IP: the source address of a route to a public address (no packet is
/// sent), or loopback when there is no route.
fn primary_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn format_addr(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Loads the cluster key: from --cluster-key-file or SHOAL_CLUSTER_KEY (then saved in the data
/// dir for restarts), else the one in the data dir, else a new one when this node starts a
/// cluster. Returns the key and whether it was created now.
/// Largest gossip message before fragmenting. The agent's transport carries messages on QUIC
/// or TCP streams in frames of up to 64 KiB, so it need not keep to one datagram (the gossip
/// core's default, 1,200 bytes): at 16 KiB a burst of object writes (an apply of a thousand
/// config maps) leaves in tens of messages rather than thousands, and the largest object
/// (1 MiB and its encoding) in about a hundred fragments, within a peer's send queue.
const GOSSIP_MESSAGE_SIZE: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(16 * 1024).expect("non-zero");

fn cluster_key(args: &AgentArgs, data_dir: &Path) -> anyhow::Result<(ClusterKey, bool)> {
    let stored = data_dir.join("cluster.key");
    let given = match (&args.cluster_key_file, std::env::var("SHOAL_CLUSTER_KEY")) {
        (Some(path), _) => Some(
            ClusterKey::load(path)
                .with_context(|| format!("--cluster-key-file {}", path.display()))?,
        ),
        (None, Ok(text)) if !text.trim().is_empty() => {
            Some(ClusterKey::parse(text.trim()).context("SHOAL_CLUSTER_KEY")?)
        }
        _ => None,
    };
    if let Some(key) = given {
        save_key(&key, &stored)
            .with_context(|| format!("saving the cluster key in {}", stored.display()))?;
        return Ok((key, false));
    }
    if stored.exists() {
        let key = ClusterKey::load(&stored)
            .with_context(|| format!("reading the cluster key {}", stored.display()))?;
        return Ok((key, false));
    }
    if !args.join.is_empty() {
        bail!(
            "joining a cluster needs its key: pass --cluster-key-file FILE or set SHOAL_CLUSTER_KEY \
             (the cluster's first node printed it, and keeps it in its data dir as cluster.key)"
        );
    }
    let (key, created) = ClusterKey::load_or_create(&stored)
        .with_context(|| format!("creating a cluster key in {}", stored.display()))?;
    Ok((key, created))
}

/// Makes a write at start unless the disk is full: `Ok(true)` if it went through, `Ok(false)`
/// (with a warning) if the disk is full or was found full by an earlier write, the error
/// otherwise. After a full disk the database is reopened (redb fails every call after an I/O
/// error until then).
fn written_unless_disk_full(
    db: &mut Db,
    disk_full: &mut bool,
    what: &str,
    write: impl FnOnce(&mut Db) -> Result<(), crate::persist::PersistError>,
) -> anyhow::Result<bool> {
    if *disk_full {
        warn!("disk full at start: not saving {what} now");
        return Ok(false);
    }
    match write(db) {
        Ok(()) => Ok(true),
        Err(e) if e.io_error().is_some_and(crate::disk::is_no_space) => {
            warn!(error = %e, "disk full at start: not saving {what} now");
            *disk_full = true;
            db.reopen()?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the key where the agent finds it after a restart (mode 0600).
fn save_key(key: &ClusterKey, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    // Already there: nothing to write (a start on a full disk must not fail here).
    if std::fs::read_to_string(path).is_ok_and(|saved| saved.trim() == key.to_string()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("key.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(format!("{key}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token from {}", path.display()))?
        .trim()
        .to_owned();
    crate::secret_file::warn_if_readable_by_others(path, "API token file");
    if token.len() < 16 {
        bail!(
            "the API token in {} is too short: use at least 16 characters",
            path.display()
        );
    }
    Ok(token)
}

/// Meta key of the number of starts of this agent.
const META_RUNS: &str = "runs";

/// Runs the agent until it leaves.
pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    if let Some(name) = &args.name {
        if name.is_empty() || name.len() > 253 {
            bail!("--name must be 1-253 characters");
        }
    }
    let token = match &args.api_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    if crate::api::needs_token(&args.api) && token.is_none() {
        bail!(
            "--api {} listens beyond loopback: give --api-token-file so that only holders of the \
             token can use it",
            args.api
        );
    }
    let api_listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("binding the API to {}", args.api))?;
    let api_addr = api_listener.local_addr()?;

    let mut db = Db::open(&data_dir)
        .with_context(|| format!("opening the data dir {}", data_dir.display()))?;
    // The name: --name, else the one this node was first started with, else the host name.
    let name = match &args.name {
        Some(name) => {
            let first = db.first_name(name)?;
            if first != *name {
                warn!(old = %first, new = %name, "node renamed");
                db.set_name(name)?;
            }
            name.clone()
        }
        None => db.first_name(&hostname())?,
    };
    let keypair = db.identity().clone();
    let keypair_for_mesh = keypair.clone();
    let (key, created_key) = cluster_key(&args, &data_dir)?;
    let secret_box = crate::secret_box::SecretBox::new(&key);
    let mut net_config = NetConfig::new(args.listen, keypair, key.clone());
    net_config.mdns = args.mdns;
    net_config.quic = !args.tcp_only;
    // Membership (the network layer and the gossip driver) runs on a runtime of its own, on its
    // own thread: the failure detector's probes are answered however busy planning, the API or
    // the runtimes keep the main runtime's threads.
    let membership = OwnRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-membership")
            .enable_all()
            .build()
            .context("starting the membership runtime")?,
    ));
    let (net, net_events) = membership
        .spawn(net::start(net_config))
        .await
        .context("starting the network layer")?
        .with_context(|| format!("starting the network layer on {}", args.listen))?;
    let id: NodeId = net.local_node_id();
    let bound = net.local_addr();
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => format_addr(primary_ip(), bound.port()),
        None => bound.to_string(),
    };

    // State, with the stale-node rule: a node out of contact for longer than the tombstone grace
    // period may hold deletions the cluster has forgotten; it starts over from the cluster's state.
    let mut config = Config::lan(16);
    config.max_clock_offset = Duration::from_millis(args.max_clock_offset_ms);
    config.max_message_size = GOSSIP_MESSAGE_SIZE;
    let (mut restored, report) = db.load().context("loading the saved state")?;
    if report.skipped > 0 {
        warn!(skipped = report.skipped, "skipped unreadable saved entries");
    }
    let mut synced = db.synced()?;
    let last_contact = db.last_contact_wall_ms()?;
    let grace = config.tombstone_grace.as_millis() as u64;
    if let Some(last) = last_contact {
        if synced && wall_ms().saturating_sub(last) > grace {
            warn!(
                away_hours = (wall_ms() - last) / 3_600_000,
                "out of contact for longer than the tombstone grace period: discarding the \
                 replicated state and resynchronising from the cluster"
            );
            db.wipe_replicated_state(id)?;
            restored = db.load()?.0;
            synced = false;
        }
    }
    if db.created_now() {
        db.set_meta("created_ms", &wall_ms().to_le_bytes())?;
    }
    let created_ms = db
        .get_meta("created_ms")?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or_else(wall_ms);
    // This start's number: what its node info and pod records carry, so that readers tell
    // the records of an earlier run (pods it may no longer run) apart.
    let run = db
        .get_meta(META_RUNS)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
        + 1;
    // On a full disk the agent still starts (it serves reads and membership, and refuses
    // writes until space returns): this start's number then waits in the persistence thread's
    // queue, and what only saves work (remembered peers) is skipped.
    let mut deferred_meta = Vec::new();
    let mut disk_full = false;
    if !written_unless_disk_full(&mut db, &mut disk_full, "this start's number", |db| {
        db.set_meta(META_RUNS, &run.to_le_bytes())
    })? {
        deferred_meta.push((META_RUNS, run.to_le_bytes().to_vec()));
    }

    // Whom to join: --join, else the members this node knew (a restart needs no --join).
    let mut seeds = args.join.clone();
    written_unless_disk_full(&mut db, &mut disk_full, "the --join peers", |db| {
        db.remember_peers(args.join.iter().map(|peer| (peer.as_str(), wall_ms())))
    })?;
    // Addresses unheard of for longer than the grace period are not worth retrying.
    written_unless_disk_full(&mut db, &mut disk_full, "forgetting old peers", |db| {
        db.forget_peers_before(wall_ms().saturating_sub(grace))
            .map(|_| ())
    })?;
    if seeds.is_empty() {
        let mut known: Vec<String> = restored
            .iter()
            .filter_map(|(k, e)| match k {
                Key::Member(m) if *m != id => e
                    .value
                    .as_deref()
                    .and_then(shoal_gossip::MemberRecord::decode)
                    .map(|r| r.addr),
                _ => None,
            })
            .collect();
        known.extend(db.peers()?.into_iter().map(|(addr, _)| addr));
        known.retain(|a| *a != advertise);
        known.sort();
        known.dedup();
        seeds = known;
    }
    info!(
        node = %name,
        id = %id,
        peer_id = %net.local_peer_id(),
        listen_addrs = ?net.listen_addrs(),
        listen = %bound,
        advertise = %advertise,
        api = %api_addr,
        data_dir = %data_dir.display(),
        restored = restored.len(),
        seeds = seeds.len(),
        cluster_key = %key.fingerprint(),
        "shoal agent starting"
    );
    if created_key {
        eprintln!(
            "shoal: created a new cluster key in {}.\n\
             To add a machine to this cluster, run on it:\n\n    \
             SHOAL_CLUSTER_KEY={} shoal agent --join {}\n",
            data_dir.join("cluster.key").display(),
            key,
            advertise
        );
    }

    let runtime_kind = match args.runtime {
        Some(kind) => kind,
        None => AnyRuntime::default_kind().await,
    };
    // Before the runtime sets anything up: an agent that refuses to start leaves nothing behind.
    let service_range = service_range_for(args.service_range, runtime_kind)?;
    let runtime = AnyRuntime::new(
        runtime_kind,
        RuntimeConfig::new(key.fingerprint(), id.to_hex(), data_dir.clone()),
    )
    .await
    .with_context(|| format!("starting the {runtime_kind} runtime"))?;
    let (cpu_all, memory_all) = machine_capacity();
    let mut labels: std::collections::BTreeMap<String, String> =
        args.labels.iter().cloned().collect();
    labels.extend(crate::node_info::well_known_labels(&name));
    info!(runtime = %runtime_kind, ?labels, "pods run with the {runtime_kind} runtime");

    // The service mesh: other members reach the pods this node runs through it.
    let (members_tx, members_rx) = watch::channel(Arc::new(shoal_mesh::Members::new()));
    let (local_pods_tx, local_pods_rx) = watch::channel(Arc::new(std::collections::BTreeSet::<
        std::net::IpAddr,
    >::new()));
    let mesh_listen = args
        .mesh_listen
        .unwrap_or_else(|| default_mesh_listen(args.listen));
    let mesh = shoal_mesh::Mesh::start(
        shoal_mesh::MeshConfig::new(keypair_for_mesh, mesh_listen),
        members_rx,
        move |dest| local_pods_rx.borrow().contains(&dest.ip()),
    )
    .await
    .with_context(|| {
        format!(
            "starting the service mesh on UDP {mesh_listen} (the gossip port + 2 unless \
             --mesh-listen says otherwise; another agent's gossip may hold it)"
        )
    })?;
    let advertise_host = advertise
        .rsplit_once(':')
        .map_or(advertise.as_str(), |(host, _)| host);
    let mesh_addr = format!("{advertise_host}:{}", mesh.local_addr().port());
    info!(mesh = %mesh_addr, "service mesh listening");

    let advertise_for_pods = advertise.clone();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The projector decodes workload state on the main runtime (it must not share a thread
    // with the driver), fed by the driver.
    let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let projector_counters = Arc::new(ProjectorCounters::default());
    let (snapshots, projector_task) = projector::start(changes_rx, projector_counters.clone());
    // The projector (and what follows its snapshots: the reconciler, the proxy) runs until the
    // agent stops it, not until the driver's end drops the driver's sender.
    let projector_feed = changes_tx.clone();
    let info = NodeInfo {
        format: crate::workload::stored::FORMAT,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        os: crate::node_info::kubernetes_os(),
        arch: crate::node_info::kubernetes_arch(),
        created_ms,
        started_ms: wall_ms(),
        run,
        cpu_millis: args.cpu_millis.unwrap_or(cpu_all),
        memory_bytes: args.memory_bytes.unwrap_or(memory_all),
        labels,
        runtime: runtime_kind.to_string(),
        mesh: Some(mesh_addr),
        service_range: Some(service_range.to_string()),
        limits: Some(Limits {
            per_workload: args.max_replicas_per_workload,
            cluster: args.max_replicas,
        }),
        disk_pressure: None,
        events: Vec::new(),
    };
    let membership_guard = membership.enter();
    let (handle, driver_task) = driver::start(
        DriverSetup {
            config,
            identity: Identity {
                id,
                name: name.clone(),
                addr: advertise.clone(),
            },
            net: net.clone(),
            net_events,
            db,
            restored,
            synced,
            seeds,
            own_entries: vec![(NODE_INFO.to_owned(), info.encode())],
            clock_offset_ms: args.clock_offset_ms,
            clock_drift_ppm: args.clock_drift_ppm,
            deferred_meta,
            disk_reserve: args.disk_reserve_mb.saturating_mul(1 << 20),
        },
        Subscriber {
            wants: projector_wants,
            changes_tx,
        },
        shutdown_rx,
    );
    drop(membership_guard);
    // The node says on itself (node info: a condition and an event) when its disk refuses
    // writes, and when it takes them again.
    tokio::spawn(crate::node_info::report_disk(handle.clone(), info));
    let (plan_tx, plan_rx) = watch::channel(Arc::new(Plan::default()));
    let runtime = Arc::new(runtime);
    let runtime_for_shutdown = runtime.clone();
    let reconciler = crate::workload::reconciler::start(
        ReconcilerConfig {
            me: id,
            host_ip: advertise_for_pods,
            service_range,
            run,
            secret_box: secret_box.clone(),
        },
        runtime.clone(),
        handle.clone(),
        snapshots.clone(),
        plan_tx,
    );

    // The cluster DNS, on the range's first address.
    let (zone_tx, zone_rx) = watch::channel(Arc::new(crate::dns::Zone::default()));
    let dns_addr = SocketAddr::new(service_range.dns_address().into(), 53);
    let dns_counters = Arc::new(crate::dns::DnsCounters::default());
    let dns = match crate::dns::bind(dns_addr) {
        Ok(socket) => {
            info!(addr = %dns_addr, "cluster DNS listening");
            let upstreams = crate::dns::upstreams(&[dns_addr]);
            Some(tokio::spawn(crate::dns::serve(
                socket,
                zone_rx,
                upstreams,
                dns_counters.clone(),
            )))
        }
        Err(e) => {
            warn!(addr = %dns_addr, error = %e,
                "cannot serve the cluster DNS (port 53 needs root or CAP_NET_BIND_SERVICE); \
                 pods still get the services' addresses as environment variables");
            None
        }
    };

    // Every service address of the cluster, served on this node through the mesh.
    let proxy = crate::proxy::start(
        mesh.clone(),
        snapshots.clone(),
        service_range,
        id,
        members_tx,
        local_pods_tx,
        zone_tx,
    );

    // Other nodes ask this one for the logs of the pods it runs.
    let remote = net.requests().map(|requests| {
        crate::api::logs_remote::serve(requests, snapshots.clone(), runtime.clone(), id)
    });

    // Memory freed when workloads go is given back to the system.
    let held = snapshots.clone();
    tokio::spawn(crate::memory::give_back_when_shrunk(move || {
        let snapshot = held.borrow();
        snapshot.objects().count() + snapshot.record_count()
    }));

    // Signals: the first SIGTERM/SIGINT leaves gracefully.
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received; leaving the cluster");
        let _ = shutdown_tx.send(true);
    });

    let (api_done_tx, api_done_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(
        api_listener,
        crate::api::router(crate::api::Api {
            driver: handle,
            snapshots,
            projector: projector_counters,
            token: token.map(Arc::from),
            plans: plan_rx,
            runtime,
            net: net.clone(),
            mesh: mesh.clone(),
            service_range,
            dns: dns_counters,
            secret_box,
            limits: crate::api::limits::BodyLimits::new(
                usize::try_from(args.max_request_bytes).unwrap_or(usize::MAX),
            ),
        }),
        async move {
            let _ = api_done_rx.await;
        },
    ));
    let _ = driver_task.await;
    reconciler.abort();
    proxy.abort();
    if let Some(dns) = dns {
        dns.abort();
    }
    if let Some(remote) = remote {
        remote.abort();
    }
    // The node left the cluster: its replicas are placed elsewhere now, so its pods stop (as a
    // drained Kubernetes node's are evicted) instead of running on as orphans.
    crate::workload::reconciler::stop_all(
        runtime_for_shutdown.as_ref(),
        crate::workload::reconciler::SHUTDOWN_GRACE,
    )
    .await;
    let _ = api_done_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    mesh.shutdown().await;
    net.shutdown().await;
    projector_task.abort();
    drop(projector_feed);
    drop(membership);
    info!("shoal agent stopped");
    Ok(())
}

/// Which changes of the replicated state the projector hears of: workload objects, pod
/// records and node info.
fn projector_wants(key: &Key) -> bool {
    match key {
        Key::Owned { name, .. } => projector::wants_owned(name),
        Key::Object(object) => projector::wants_object(&object.kind),
        Key::Member(_) => false,
    }
}

/// A runtime started from async code, shut down in the background when dropped (dropping a
/// runtime blocks, which async code must not do), whichever way the agent stops.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The service range this agent serves: `--service-range`, else the default that the pods of
/// its runtime can reach. A range outside loopback reaches this host only through a route
/// (Docker pods send to it through their bridge), which the agent adds; it refuses to start
/// when it cannot, with the ways out, rather than run a node whose pods cannot reach services.
fn service_range_for(
    given: Option<ServiceRange>,
    runtime: RuntimeKind,
) -> anyhow::Result<ServiceRange> {
    let range = match (given, runtime) {
        (Some(range), _) => range,
        (None, RuntimeKind::Docker) => DOCKER_SERVICE_RANGE,
        (None, _) => DEFAULT_SERVICE_RANGE,
    };
    if range.is_loopback() {
        if runtime == RuntimeKind::Docker {
            warn!(%range,
                "Docker pods cannot reach a loopback service range: they reach services only \
                 through node ports (not by name, cluster IP or NAME_SERVICE_HOST). Give every \
                 agent a range outside loopback, e.g. --service-range {DOCKER_SERVICE_RANGE}");
        }
        return Ok(range);
    }
    route_to_host(range).map_err(|why| {
        anyhow::anyhow!(
            "cannot route the service range {range} to this host: {why}. Pods reach services \
             (by name, cluster IP and NAME_SERVICE_HOST) through `ip route add local {range} dev \
             lo`, which needs CAP_NET_ADMIN, as kube-proxy does. Either run the agent as root \
             (or grant it: sudo setcap cap_net_admin,cap_net_bind_service+ep $(command -v \
             shoal)), or add the route once yourself (sudo ip route add local {range} dev lo), \
             or start every agent of the cluster with --service-range {DEFAULT_SERVICE_RANGE} \
             (loopback, no privileges; Docker pods then reach services only through node \
             ports), or run pods with --runtime process{}",
            if given.is_none() {
                " (its default range is loopback)"
            } else {
                ""
            }
        )
    })?;
    Ok(range)
}

/// Makes every address of `range` local to this host (`ip route add local RANGE dev lo`),
/// unless it already is. Returns why not, when it cannot.
fn route_to_host(range: ServiceRange) -> Result<(), String> {
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run `ip` ({e})"))
    };
    let cidr = range.to_string();
    // Routed already (by an earlier agent, or by hand): nothing to do, and no privilege needed.
    let shown = ip(&["-4", "route", "show", "table", "local", &cidr])?;
    if String::from_utf8_lossy(&shown.stdout).contains(&format!("local {cidr}")) {
        return Ok(());
    }
    let added = ip(&["-4", "route", "add", "local", &cidr, "dev", "lo"])?;
    let stderr = String::from_utf8_lossy(&added.stderr);
    if added.status.success() {
        info!(%range, "routed the service range to this host");
        Ok(())
    } else if stderr.contains("File exists") {
        Ok(())
    } else {
        Err(format!("`ip route add` says: {}", stderr.trim()))
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `shoal keygen`: prints a new cluster key.
pub(crate) fn keygen() -> anyhow::Result<()> {
    let key = ClusterKey::generate().context("generating a cluster key")?;
    println!("{key}");
    Ok(())
}
