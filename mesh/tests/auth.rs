//! Who may use a mesh, and what a member may ask of it: non-members are refused (with a
//! libp2p certificate or any other), destinations are checked, garbage is dropped and counted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::rustls;
use shoal_mesh::{CLOSE_NOT_MEMBER, Keypair, MeshError, PeerId, RESET_BAD_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A quinn client config with a valid libp2p certificate for `keypair`, dialing `server`.
fn libp2p_client(keypair: &Keypair, server: PeerId, alpn: Option<&[u8]>) -> quinn::ClientConfig {
    let mut tls = libp2p_tls::make_client_config(keypair, Some(server)).unwrap();
    if let Some(alpn) = alpn {
        tls.alpn_protocols = vec![alpn.to_vec()];
    }
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A quinn client config that verifies the server as libp2p does but presents a random
/// self-signed certificate without the libp2p extension.
fn self_signed_client(server: PeerId) -> quinn::ClientConfig {
    let mut tls =
        libp2p_tls::make_client_config(&Keypair::generate_ed25519(), Some(server)).unwrap();
    tls.alpn_protocols = vec![shoal_mesh::ALPN.to_vec()];
    let generated = rcgen::generate_simple_self_signed(vec!["intruder".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    let signing_key = tls
        .crypto_provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    let certified =
        rustls::sign::CertifiedKey::new(vec![generated.cert.der().clone()], signing_key);
    tls.client_auth_cert_resolver = Arc::new(FixedCert(Arc::new(certified)));
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_mesh_is_refused_and_counted() {
    let nodes = cluster(1).await;
    let c = &nodes[0];
    let echo = echo_server().await;
    c.allow(echo);
    // X knows C, C does not know X.
    // No dial back-off, so that every request reaches C and is refused there.
    let x = Node::start(shoal_mesh::Tuning {
        dial_backoff: Duration::ZERO,
        ..test_tuning()
    })
    .await;
    x.set_members(&[c.member_entry(), x.member_entry()].into_iter().collect());

    let error = x
        .mesh
        .open(&service("s"), &c.endpoint(echo))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, MeshError::RefusedByPeer { peer, .. } if peer == c.peer()),
        "{error}"
    );
    assert!(
        error.to_string().contains("not a cluster member"),
        "{error}"
    );
    assert_eq!(c.mesh.metrics().refused_non_members, 1);
    assert!(c.mesh.metrics().inbound.is_empty(), "no stream was served");

    // Through proxy: the client is reset and the failure counted.
    let (addr, mut results) = proxy_listener(&x.mesh, service("s"), vec![c.endpoint(echo)]).await;
    expect_refused(addr).await;
    let error = results.recv().await.unwrap().unwrap_err();
    assert!(error.contains("refused"), "{error}");
    assert!(c.mesh.metrics().refused_non_members >= 2);
    assert_eq!(x.mesh.metrics().outbound["s"].failed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_certificate_of_a_non_member_is_closed_before_any_stream() {
    let nodes = cluster(1).await;
    let c = &nodes[0];
    let echo = echo_server().await;
    c.allow(echo);
    let stranger = Keypair::generate_ed25519();
    let endpoint = client_endpoint();
    let connecting = endpoint
        .connect_with(
            libp2p_client(&stranger, c.peer(), Some(shoal_mesh::ALPN)),
            c.mesh.local_addr(),
            "x",
        )
        .unwrap();
    let reason = match connecting.await {
        Err(e) => e,
        Ok(conn) => {
            // Whatever it sends is never served.
            if let Ok((mut send, mut recv)) = conn.open_bi().await {
                let header = shoal_mesh::wire::Header {
                    dest: echo,
                    service: "s".into(),
                };
                let _ = send.write_all(&header.encode().unwrap()).await;
                let mut status = [0u8; 1];
                assert!(recv.read_exact(&mut status).await.is_err());
            }
            tokio::time::timeout(Duration::from_secs(2), conn.closed())
                .await
                .unwrap()
        }
    };
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_NOT_MEMBER);
            assert_eq!(&close.reason[..], b"not a cluster member");
        }
        other => panic!("expected an application close, got {other}"),
    }
    assert_eq!(c.mesh.metrics().refused_non_members, 1);
    assert!(c.mesh.metrics().inbound.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_fails_the_handshake() {
    let nodes = cluster(1).await;
    let c = &nodes[0];
    let endpoint = client_endpoint();
    let result = endpoint
        .connect_with(self_signed_client(c.peer()), c.mesh.local_addr(), "x")
        .unwrap()
        .await;
    // In TLS 1.3 the client finishes its side of the handshake before the server has checked
    // its certificate: the rejection then arrives as the connection's close.
    let reason = match result {
        Err(e) => e,
        Ok(conn) => tokio::time::timeout(Duration::from_secs(2), conn.closed())
            .await
            .unwrap(),
    };
    assert!(
        matches!(
            reason,
            quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::TransportError(_)
        ),
        "{reason}"
    );
    assert!(
        eventually(Duration::from_secs(2), || c
            .mesh
            .metrics()
            .handshake_failures
            == 1)
        .await
    );
    assert_eq!(c.mesh.metrics().refused_non_members, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_alpn_and_wrong_server_identity_fail_the_handshake() {
    let nodes = cluster(1).await;
    let c = &nodes[0];
    let member = Keypair::generate_ed25519();
    c.members_tx.send_modify(|m| {
        let mut next = (**m).clone();
        next.insert(member.public().to_peer_id(), "127.0.0.1:9".parse().unwrap());
        *m = Arc::new(next);
    });
    let endpoint = client_endpoint();
    // A libp2p client (ALPN "libp2p") cannot talk to the mesh, even with a member's key.
    let result = endpoint
        .connect_with(
            libp2p_client(&member, c.peer(), None),
            c.mesh.local_addr(),
            "x",
        )
        .unwrap()
        .await;
    assert!(result.is_err());
    // A dialer expecting another peer id rejects C's certificate.
    let other = Keypair::generate_ed25519().public().to_peer_id();
    let result = endpoint
        .connect_with(
            libp2p_client(&member, other, Some(shoal_mesh::ALPN)),
            c.mesh.local_addr(),
            "x",
        )
        .unwrap()
        .await;
    assert!(result.is_err());
    assert!(
        eventually(Duration::from_secs(2), || c
            .mesh
            .metrics()
            .handshake_failures
            == 2)
        .await
    );
}

/// A raw QUIC connection to `c` with the identity of a member.
async fn member_connection(c: &Node) -> quinn::Connection {
    let member = Keypair::generate_ed25519();
    c.members_tx.send_modify(|m| {
        let mut next = (**m).clone();
        next.insert(member.public().to_peer_id(), "127.0.0.1:9".parse().unwrap());
        *m = Arc::new(next);
    });
    let endpoint = client_endpoint();
    endpoint
        .connect_with(
            libp2p_client(&member, c.peer(), Some(shoal_mesh::ALPN)),
            c.mesh.local_addr(),
            "x",
        )
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_not_allowed_is_refused_and_counted() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    // C serves nothing: the echo server runs on C's host but is not one of its endpoints.
    let error = a
        .mesh
        .open(&service("s"), &c.endpoint(echo))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, MeshError::NotAllowed(ref e) if **e == c.endpoint(echo)),
        "{error}"
    );
    let m = c.mesh.metrics();
    assert_eq!(m.not_allowed, 1);
    assert_eq!(m.inbound["s"].failed, 1);
    assert_eq!(m.inbound["s"].opened, 0);
    assert_eq!(a.mesh.metrics().outbound["s"].failed, 1);

    // Once allowed, the same request works.
    c.allow(echo);
    let mut s = a.mesh.open(&service("s"), &c.endpoint(echo)).await.unwrap();
    s.write_all(b"ok").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_headers_reset_the_stream_are_counted_and_do_not_disturb_service() {
    let nodes = cluster(1).await;
    let c = &nodes[0];
    let echo = echo_server().await;
    c.allow(echo);
    let conn = member_connection(c).await;

    // Wrong magic.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    match recv.read(&mut buf).await {
        Err(quinn::ReadError::Reset(code)) => assert_eq!(code, RESET_BAD_HEADER),
        other => panic!("expected a reset, got {other:?}"),
    }
    // Unknown version: answered, not reset.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[shoal_mesh::wire::MAGIC, 9, 0, 0])
        .await
        .unwrap();
    let status = recv.read_to_end(16).await.unwrap();
    assert_eq!(
        status,
        [shoal_mesh::wire::Status::UnsupportedVersion.to_byte()]
    );
    // Valid prefix, body announcing more than the limit.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[shoal_mesh::wire::MAGIC, 1, 0xff, 0xff])
        .await
        .unwrap();
    assert!(
        matches!(recv.read(&mut buf).await, Err(quinn::ReadError::Reset(code)) if code == RESET_BAD_HEADER)
    );
    // Bad address family, truncated body (the stream finishes early).
    for body in [&[0u8, 3, 9, 9, 9][..], &[0, 1, 4][..]] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[shoal_mesh::wire::MAGIC, 1]).await.unwrap();
        send.write_all(body).await.unwrap();
        send.finish().unwrap();
        assert!(
            matches!(recv.read(&mut buf).await, Err(quinn::ReadError::Reset(code)) if code == RESET_BAD_HEADER)
        );
    }
    // Many random garbage streams at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let conn = conn.clone();
        tasks.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let garbage: Vec<u8> = (0..(i * 7 % 300))
                .map(|j| (j * 31 + i) as u8 ^ 0x5a)
                .collect();
            let _ = send.write_all(&garbage).await;
            let _ = send.finish();
            let mut buf = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(3), recv.read(&mut buf)).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let m = c.mesh.metrics();
    assert!(m.bad_headers >= 4, "{m:?}");
    assert_eq!(m.unsupported_versions, 1);

    // A proper request on the same connection is still served.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let header = shoal_mesh::wire::Header {
        dest: echo,
        service: "s".into(),
    };
    send.write_all(&header.encode().unwrap()).await.unwrap();
    send.write_all(b"payload").await.unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(1024).await.unwrap();
    assert_eq!(reply[0], shoal_mesh::wire::Status::Ok.to_byte());
    assert_eq!(&reply[1..], b"payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_is_reset_after_the_header_timeout() {
    let nodes = cluster(1).await;
    let c = &nodes[0];
    let conn = member_connection(c).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Half a prefix, then nothing.
    send.write_all(&[shoal_mesh::wire::MAGIC, 1]).await.unwrap();
    let mut buf = [0u8; 1];
    let outcome = tokio::time::timeout(Duration::from_secs(3), recv.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(outcome, Err(quinn::ReadError::Reset(code)) if code == RESET_BAD_HEADER));
    assert_eq!(c.mesh.metrics().bad_headers, 1);
}
