//! `shoal up`: a local cluster in one command, for trying shoal out.
//!
//! Starts N ordinary `shoal agent` processes on this machine (the same binary, with the
//! process runtime: no privileges, no Docker), each with its own data dir under one directory
//! and ports that are free, joins them, applies the sample application
//! (`demo/manifests/hello.yaml`, built into the binary: a Deployment of `shoal demo-http` and a
//! NodePort Service), waits until its pods are ready, and prints what to try next. Ctrl-C stops the
//! whole cluster cleanly (each agent leaves and stops its pods); a second Ctrl-C kills it.
//!
//! The agents log to `<dir>/<name>/agent.log`. Run again, it restarts the same nodes (same
//! identities and state). An agent that dies while the cluster runs (the tour kills one) is
//! reported with the command that starts it again.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::signal::unix::Signal;

use crate::cli::{ApiArgs, Client, items};
use crate::net::ClusterKey;

/// The sample application `shoal up` applies.
pub(crate) const SAMPLE_APP: &str = include_str!("../../demo/manifests/hello.yaml");

/// `shoal up` options.
#[derive(clap::Args, Debug)]
pub(crate) struct UpArgs {
    /// How many agents to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    nodes: u16,
    /// Where the agents keep their data dirs and the cluster key (default:
    /// ~/.local/share/shoal-up, or /var/lib/shoal-up for root).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Start the cluster without the sample application.
    #[arg(long)]
    no_app: bool,
}

/// One agent of the local cluster.
struct Node {
    name: String,
    gossip: SocketAddr,
    api: SocketAddr,
    mesh: SocketAddr,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// How long the agents get to leave and stop their pods after Ctrl-C.
const STOP_WAIT: Duration = Duration::from_secs(45);

/// Runs `shoal up` until Ctrl-C.
pub(crate) async fn up(args: UpArgs) -> anyhow::Result<()> {
    let dir = match args.dir {
        Some(dir) => dir,
        // Beside an agent's default data dir, not in it.
        None => crate::agent::default_data_dir().with_file_name("shoal-up"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_file = dir.join("cluster.key");
    ClusterKey::load_or_create(&key_file)
        .with_context(|| format!("the cluster key {}", key_file.display()))?;
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    // Taken from the start: Ctrl-C at any moment stops the agents rather than orphan them.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut nodes = plan_nodes(&dir, usize::from(args.nodes))?;
    println!(
        "shoal up: starting {} agents (data and logs in {})",
        nodes.len(),
        dir.display()
    );
    let first_gossip = nodes[0].gossip;
    for (i, node) in nodes.iter_mut().enumerate() {
        let join = (i > 0).then_some(first_gossip);
        node.child = Some(spawn(&exe, node, &key_file, join)?);
    }
    let client = Client::new(&ApiArgs::at(nodes[0].api.to_string()))?;
    let startup = async {
        wait_formed(&client, &mut nodes).await?;
        if !args.no_app {
            apply_sample_app(&nodes[0], &dir).await?;
            wait_ready(&client, &mut nodes).await?;
        }
        Ok::<(), anyhow::Error>(())
    };
    // Ctrl-C while it starts stops what was started.
    let started = tokio::select! {
        result = startup => Some(result),
        _ = interrupt.recv() => None,
        _ = term.recv() => None,
    };
    match started {
        None => {
            println!("\nshoal up: stopping the cluster (Ctrl-C again kills it)");
            stop(&mut nodes, &mut interrupt).await;
            return Ok(());
        }
        Some(Err(e)) => {
            eprintln!("shoal up: {e:#}; stopping the cluster");
            stop(&mut nodes, &mut interrupt).await;
            return Err(e);
        }
        Some(Ok(())) => {}
    }
    print_next_steps(&client, &nodes, &exe, !args.no_app);
    watch(&mut nodes, &exe, &key_file, &mut interrupt, &mut term).await;
    Ok(())
}

/// Names, data dirs and free ports for `n` agents. The first takes the default ports (7946
/// gossip, 7947 API, 7948 mesh) when they are free, so that the CLI reaches it without
/// `--api`.
fn plan_nodes(dir: &Path, n: usize) -> anyhow::Result<Vec<Node>> {
    let mut taken = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let defaults = [7946, 7947, 7948];
        let ports = if i == 0 && defaults.iter().all(|&p| port_free(p)) {
            defaults
        } else {
            [
                free_port(&mut taken)?,
                free_port(&mut taken)?,
                free_port(&mut taken)?,
            ]
        };
        taken.extend(ports);
        let at = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let name = format!("up-{}", i + 1);
        nodes.push(Node {
            data_dir: dir.join(&name),
            name,
            gossip: at(ports[0]),
            api: at(ports[1]),
            mesh: at(ports[2]),
            child: None,
        });
    }
    Ok(nodes)
}

/// Whether `port` is free on 127.0.0.1 for both TCP and UDP.
fn port_free(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port);
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// A port free for TCP and UDP on 127.0.0.1 that is not in `taken`.
fn free_port(taken: &mut Vec<u16>) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !taken.contains(&port) && port_free(port) {
            taken.push(port);
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// The command line that starts `node` (what `shoal up` runs, and prints for a restart).
fn agent_args(node: &Node, key_file: &Path, join: Option<SocketAddr>) -> Vec<String> {
    let mut args = vec![
        "agent".to_owned(),
        "--name".into(),
        node.name.clone(),
        "--data-dir".into(),
        node.data_dir.display().to_string(),
        "--listen".into(),
        node.gossip.to_string(),
        "--api".into(),
        node.api.to_string(),
        "--mesh-listen".into(),
        node.mesh.to_string(),
        "--cluster-key-file".into(),
        key_file.display().to_string(),
        "--runtime".into(),
        "process".into(),
    ];
    if let Some(peer) = join {
        args.extend(["--join".into(), peer.to_string()]);
    }
    args
}

/// Starts one agent, logging to its data dir. Its pods find `shoal` (the sample app runs
/// `shoal demo-http`) because the binary's directory comes first in their `PATH`.
fn spawn(
    exe: &Path,
    node: &Node,
    key_file: &Path,
    join: Option<SocketAddr>,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("creating {}", node.data_dir.display()))?;
    let log_path = node.data_dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .args(agent_args(node, key_file, join))
        .env("PATH", path_with(exe))
        .env_remove("SHOAL_CLUSTER_KEY")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    command
        .spawn()
        .with_context(|| format!("starting {}", node.name))
}

/// `PATH` with the directory of `exe` first.
fn path_with(exe: &Path) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = exe.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Fails if an agent exited, with the end of its log.
fn check_running(nodes: &mut [Node]) -> anyhow::Result<()> {
    for node in nodes {
        if let Some(status) = node
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            let log = std::fs::read_to_string(node.data_dir.join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            bail!("{} exited ({status}):\n{tail}", node.name);
        }
    }
    Ok(())
}

/// Polls `check` every 200 ms for up to `limit`, failing early when an agent exits.
async fn poll(
    nodes: &mut [Node],
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        check_running(nodes)?;
        match check() {
            Ok(()) => return Ok(()),
            Err(why) if start.elapsed() > limit => {
                bail!("{what} did not happen within {}s: {why}", limit.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the first agent lists every agent alive.
async fn wait_formed(client: &Client, nodes: &mut [Node]) -> anyhow::Result<()> {
    let want = nodes.len();
    let started = Instant::now();
    poll(
        nodes,
        "the cluster forming",
        Duration::from_secs(60),
        || {
            let list = client.get("/api/v1/nodes").map_err(|e| e.to_string())?;
            let alive = items(&list)
                .filter(|n| n["status"]["membership"] == "alive")
                .count();
            (alive == want)
                .then_some(())
                .ok_or_else(|| format!("{alive} of {want} alive"))
        },
    )
    .await?;
    println!(
        "shoal up: {want} agents joined in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Applies the sample application through the first agent, as `shoal apply -f` does.
async fn apply_sample_app(first: &Node, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("hello.yaml");
    std::fs::write(&path, SAMPLE_APP).with_context(|| format!("writing {}", path.display()))?;
    let api = ApiArgs::at(first.api.to_string());
    tokio::task::spawn_blocking(move || crate::cli::apply::apply(&api, &[path], None, false, false))
        .await?
}

/// Waits until the sample application's pods are ready, saying how many are.
async fn wait_ready(client: &Client, nodes: &mut [Node]) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut said = String::new();
    poll(
        nodes,
        "the sample app running",
        Duration::from_secs(90),
        || {
            let list = client
                .get("/api/v1/deployments?namespace=default")
                .map_err(|e| e.to_string())?;
            let hello = items(&list)
                .find(|d| d["metadata"]["name"] == "hello")
                .ok_or("no deployment yet")?;
            let want = hello["spec"]["replicas"].as_u64().unwrap_or(0);
            let ready = hello["status"]["readyReplicas"].as_u64().unwrap_or(0);
            let now = format!("{ready}/{want} ready");
            if now != said {
                println!("shoal up: sample app {now}");
                said = now;
            }
            (ready == want)
                .then_some(())
                .ok_or_else(|| format!("{ready}/{want} ready"))
        },
    )
    .await?;
    println!(
        "shoal up: sample app ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What to try now.
fn print_next_steps(client: &Client, nodes: &[Node], exe: &Path, app: bool) {
    let first_api = nodes[0].api.to_string();
    if first_api != "127.0.0.1:7947" {
        println!("\nThe first agent's API is not on the default port: first run");
        println!("    export SHOAL_API={first_api}");
    }
    let shoal = shoal_command(exe);
    println!("\nThe cluster:");
    println!("    {:<8} {:<8} {:<18} GOSSIP", "AGENT", "PID", "API");
    for node in nodes {
        let pid = node
            .child
            .as_ref()
            .and_then(Child::id)
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "    {:<8} {:<8} {:<18} {}",
            node.name,
            pid,
            node.api.to_string(),
            node.gossip
        );
    }
    let mut tries: Vec<(String, &str)> = vec![
        (format!("{shoal} get nodes"), ""),
        (
            format!("{shoal} get pods -o wide"),
            "which agent runs which pod",
        ),
    ];
    if app {
        let service = client.get("/api/v1/services/default/hello").ok();
        let spec = service.as_ref().map(|s| &s["object"]["spec"]);
        if let Some(ip) = spec.and_then(|s| s["clusterIP"].as_str()) {
            tries.push((format!("curl http://{ip}/"), "the service's cluster IP"));
        }
        if let Some(port) = spec.and_then(|s| s["ports"][0]["nodePort"].as_u64()) {
            tries.push((
                format!("curl http://127.0.0.1:{port}/"),
                "its node port, on every agent",
            ));
        }
        if let Some(victim) = nodes.get(1).and_then(|n| n.child.as_ref()?.id()) {
            tries.push((
                format!("kill -9 {victim}"),
                "an agent dies: watch its pods move",
            ));
            tries.push((format!("{shoal} get pods -o wide -w"), ""));
        }
        tries.push((format!("{shoal} scale deployment hello --replicas 6"), ""));
    }
    let width = tries
        .iter()
        .filter(|(_, comment)| !comment.is_empty())
        .map(|(command, _)| command.len())
        .max()
        .unwrap_or(0);
    println!("\nTry:");
    for (command, comment) in tries {
        if comment.is_empty() {
            println!("    {command}");
        } else {
            println!("    {command:<width$}   # {comment}");
        }
    }
    println!("\nCtrl-C stops the cluster.");
}

/// How to call this binary in the printed commands: `shoal` when it is the one on `PATH`.
fn shoal_command(exe: &Path) -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("shoal") == exe));
    if on_path {
        "shoal".to_owned()
    } else {
        exe.display().to_string()
    }
}

/// Runs until Ctrl-C (or SIGTERM), reporting agents that die meanwhile; then stops the rest.
async fn watch(
    nodes: &mut [Node],
    exe: &Path,
    key_file: &Path,
    interrupt: &mut Signal,
    term: &mut Signal,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => report_exits(nodes, exe, key_file),
        }
    }
    println!("\nshoal up: stopping the cluster (Ctrl-C again kills it)");
    stop(nodes, interrupt).await;
}

/// Says which agents exited since the last look, and how to start them again.
fn report_exits(nodes: &mut [Node], exe: &Path, key_file: &Path) {
    let first_gossip = nodes[0].gossip;
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(status) = node
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        else {
            continue;
        };
        node.child = None;
        // The first agent needs no peer to rejoin: it remembers its members.
        let args = agent_args(node, key_file, (i > 0).then_some(first_gossip));
        let path = exe
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        println!(
            "shoal up: {} exited ({status}); the others move its pods. Start it again (it \
             rejoins with its state) with:\n    PATH={path}:$PATH {} {}",
            node.name,
            exe.display(),
            args.join(" ")
        );
    }
}

/// Stops every agent: SIGTERM (they leave and stop their pods), then waits; a second Ctrl-C,
/// or [`STOP_WAIT`], kills what is left. The pods of agents that did not stop cleanly (killed
/// along the way, or now) are killed too, as when a machine goes down.
async fn stop(nodes: &mut [Node], interrupt: &mut Signal) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.as_ref().and_then(Child::id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let mut clean = vec![false; nodes.len()];
    let all_exit = async {
        for (node, clean) in nodes.iter_mut().zip(clean.iter_mut()) {
            if let Some(child) = node.child.as_mut() {
                *clean = child.wait().await.is_ok_and(|s| s.success());
            }
        }
    };
    tokio::select! {
        () = all_exit => println!("shoal up: stopped"),
        _ = interrupt.recv() => println!("shoal up: killing the agents"),
        () = tokio::time::sleep(STOP_WAIT) => println!(
            "shoal up: agents still running after {}s; killing them",
            STOP_WAIT.as_secs()
        ),
    }
    for (node, clean) in nodes.iter_mut().zip(clean) {
        if let Some(mut child) = node.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if !clean {
            crate::runtime::process::kill_pods_left_in(&node.data_dir).await;
        }
    }
}
