//! Helpers shared by the mesh integration tests: meshes on loopback with their own membership
//! and allow-list, TCP servers with chosen behaviour, and a proxy listener.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_mesh::{
    Endpoint, Keypair, Members, Mesh, MeshConfig, PeerId, ProxyStats, ServiceKey, Tuning,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Timeouts short enough for tests, long enough for a loaded CI machine.
pub(crate) fn test_tuning() -> Tuning {
    Tuning {
        handshake_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_millis(500),
        status_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(1),
        establish_timeout: Duration::from_secs(4),
        ..Tuning::default()
    }
}

/// One agent's mesh with its own view of the members and of the endpoints it serves.
pub(crate) struct Node {
    pub(crate) mesh: Mesh,
    pub(crate) keypair: Keypair,
    pub(crate) members_tx: watch::Sender<Arc<Members>>,
    pub(crate) allowed_tx: watch::Sender<HashSet<SocketAddr>>,
}

impl Node {
    pub(crate) async fn start(tuning: Tuning) -> Node {
        Node::start_with(Keypair::generate_ed25519(), tuning).await
    }

    pub(crate) async fn start_with(keypair: Keypair, tuning: Tuning) -> Node {
        let (members_tx, members_rx) = watch::channel(Arc::new(Members::new()));
        let (allowed_tx, allowed_rx) = watch::channel(HashSet::new());
        let config = MeshConfig {
            keypair: keypair.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tuning,
        };
        let mesh = Mesh::start(config, members_rx, move |dest| {
            allowed_rx.borrow().contains(&dest)
        })
        .await
        .expect("mesh starts");
        Node {
            mesh,
            keypair,
            members_tx,
            allowed_tx,
        }
    }

    pub(crate) fn peer(&self) -> PeerId {
        self.mesh.local_peer_id()
    }

    pub(crate) fn member_entry(&self) -> (PeerId, SocketAddr) {
        (self.peer(), self.mesh.local_addr())
    }

    /// Serves `addr` to other members.
    pub(crate) fn allow(&self, addr: SocketAddr) {
        self.allowed_tx.send_modify(|set| {
            set.insert(addr);
        });
    }

    pub(crate) fn set_members(&self, members: &Members) {
        self.members_tx.send_replace(Arc::new(members.clone()));
    }

    pub(crate) fn remove_member(&self, peer: &PeerId) {
        self.members_tx.send_modify(|m| {
            let mut next = (**m).clone();
            next.remove(peer);
            *m = Arc::new(next);
        });
    }

    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        Endpoint {
            node: self.peer(),
            addr,
        }
    }
}

/// Starts `n` nodes that all count each other as members.
pub(crate) async fn cluster(n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(test_tuning()).await);
    }
    let members: Members = nodes.iter().map(Node::member_entry).collect();
    for node in &nodes {
        node.set_members(&members);
    }
    nodes
}

pub(crate) fn service(name: &str) -> ServiceKey {
    ServiceKey::new(name).unwrap()
}

/// An echo server: writes back what it reads, shuts down its write side at EOF.
pub(crate) async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// What a server saw of one connection.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) bytes: usize,
    pub(crate) error: Option<std::io::ErrorKind>,
}

/// A server that reads until EOF or error and reports what it saw on the channel.
pub(crate) async fn recording_server() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut bytes = 0;
                let error = loop {
                    match socket.read(&mut buf).await {
                        Ok(0) => break None,
                        Ok(n) => bytes += n,
                        Err(e) => break Some(e.kind()),
                    }
                };
                let _ = tx.send(Seen { bytes, error });
            });
        }
    });
    (addr, rx)
}

/// A server that reads `n` bytes and then closes with a reset.
pub(crate) async fn resetting_server(n: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; n];
                if socket.read_exact(&mut buf).await.is_ok() {
                    let _ = socket.set_zero_linger();
                    drop(socket);
                }
            });
        }
    });
    addr
}

/// A TCP listener on `node` that proxies every connection to `candidates`; the outcome of each
/// proxied connection comes out of the returned channel.
pub(crate) async fn proxy_listener(
    mesh: &Mesh,
    service: ServiceKey,
    candidates: Vec<Endpoint>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<ProxyStats, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mesh = mesh.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (mesh, service, candidates, tx) = (
                mesh.clone(),
                service.clone(),
                candidates.clone(),
                tx.clone(),
            );
            tokio::spawn(async move {
                let result = mesh.proxy(client, &service, &candidates).await;
                let _ = tx.send(result.map_err(|e| e.to_string()));
            });
        }
    });
    (addr, rx)
}

/// Sends `payload`, half-closes, and reads everything back.
pub(crate) async fn echo_round_trip(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = client.split();
    let write = async {
        w.write_all(payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(write, read);
    back
}

/// A UDP address where nothing answers (bound, never read): dials to it time out.
pub(crate) fn black_hole() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A TCP port with nothing listening.
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub(crate) async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects to a proxy listener whose proxying fails: the client sees its connection reset
/// (at connect, when the reset is that quick, or at the first read).
pub(crate) async fn expect_refused(addr: SocketAddr) {
    let Ok(mut client) = TcpStream::connect(addr).await else {
        return;
    };
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
        .await
        .expect("the client is not left hanging");
    assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
}

/// A UDP relay in front of `target`: datagrams pass both ways until `cut` is set, then vanish
/// (a peer that died without a word, or a network partition).
pub(crate) async fn udp_relay(
    target: SocketAddr,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (front, back, cut, client) = (front.clone(), back.clone(), cut.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if !cut.load(Ordering::Relaxed) {
                    let _ = back.send_to(&buf[..n], target).await;
                }
            }
        });
    }
    {
        let cut = cut.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let to = *client.lock().unwrap();
                if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    (addr, cut)
}
