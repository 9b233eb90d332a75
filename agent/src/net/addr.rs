//! Identities and addresses: `NodeId` <-> `PeerId`, `host:port` <-> multiaddrs.

use std::net::{IpAddr, SocketAddr};

use libp2p::identity::{PublicKey, ed25519};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use shoal_gossip::NodeId;

/// Multihash code of the identity hash, which libp2p uses for keys of at most 42 bytes
/// (Ed25519 included): such a peer id contains the public key itself.
const IDENTITY_MULTIHASH: u64 = 0;

/// The node id of an Ed25519 peer; `None` for other key types.
pub(crate) fn node_id_of(peer: &PeerId) -> Option<NodeId> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != IDENTITY_MULTIHASH {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    Some(NodeId(key.try_into_ed25519().ok()?.to_bytes()))
}

/// The peer id of a node; `None` if the bytes are not a valid Ed25519 public key.
pub(crate) fn peer_id_of(id: NodeId) -> Option<PeerId> {
    let key = ed25519::PublicKey::try_from_bytes(id.as_bytes()).ok()?;
    Some(PublicKey::from(key).to_peer_id())
}

/// Why an address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address `{addr}`: {reason}")]
pub(crate) struct AddrError {
    /// The address as given.
    pub(crate) addr: String,
    /// What is wrong with it.
    pub(crate) reason: &'static str,
}

/// The QUIC and TCP multiaddrs of a `host:port` address, in that order. The host is an IPv4
/// address, a bracketed IPv6 address (`[::1]:7946`) or a DNS name (dialed through `/dns/`).
pub(crate) fn addr_to_multiaddrs(addr: &str) -> Result<[Multiaddr; 2], AddrError> {
    let err = |reason| AddrError {
        addr: addr.to_owned(),
        reason,
    };
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(socket_multiaddrs(sa));
    }
    let (host, port) = addr.rsplit_once(':').ok_or(err("expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| err("port is not a number from 0 to 65535"))?;
    if host.is_empty() {
        return Err(err("empty host"));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(err("an IPv6 address needs brackets: [addr]:port"));
    }
    if host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(err("host is neither an IP address nor a DNS name"));
    }
    let dns = Multiaddr::empty().with(Protocol::Dns(host.to_owned().into()));
    Ok([
        dns.clone().with(Protocol::Udp(port)).with(Protocol::QuicV1),
        dns.with(Protocol::Tcp(port)),
    ])
}

/// The QUIC and TCP multiaddrs of a socket address.
pub(crate) fn socket_multiaddrs(sa: SocketAddr) -> [Multiaddr; 2] {
    let ip = Multiaddr::empty().with(match sa.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    [
        ip.clone()
            .with(Protocol::Udp(sa.port()))
            .with(Protocol::QuicV1),
        ip.with(Protocol::Tcp(sa.port())),
    ]
}

/// Where and how to dial a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DialTarget {
    /// The peer, when the address names one (`/p2p/...`).
    pub(crate) peer: Option<PeerId>,
    /// Addresses to try in order, each only after the previous failed.
    pub(crate) addrs: Vec<Multiaddr>,
}

/// Parses what users and gossip give as an address: `host:port`, or a multiaddr such as
/// `/ip4/1.2.3.4/udp/7946/quic-v1` or `/dns/node-1/tcp/7946/p2p/12D3Koo...`. The result lists
/// the given transport first and the other one (same host and port) as its fallback; a
/// `host:port` tries QUIC first.
pub(crate) fn parse_dial_addr(addr: &str) -> Result<DialTarget, AddrError> {
    let addr = addr.trim();
    if !addr.starts_with('/') {
        return Ok(DialTarget {
            peer: None,
            addrs: addr_to_multiaddrs(addr)?.into(),
        });
    }
    let err = |reason| AddrError {
        addr: addr.to_owned(),
        reason,
    };
    let ma: Multiaddr = addr.parse().map_err(|_| err("not a valid multiaddr"))?;
    let protocols: Vec<Protocol<'_>> = ma.iter().collect();
    let host = match protocols.first() {
        Some(
            p @ (Protocol::Ip4(_)
            | Protocol::Ip6(_)
            | Protocol::Dns(_)
            | Protocol::Dns4(_)
            | Protocol::Dns6(_)),
        ) => Multiaddr::empty().with(p.clone()),
        _ => {
            return Err(err(
                "a multiaddr starts with /ip4, /ip6, /dns, /dns4 or /dns6",
            ));
        }
    };
    let (first_is_quic, port, rest) = match &protocols[1..] {
        [Protocol::Udp(port), Protocol::QuicV1, rest @ ..] => (true, *port, rest),
        [Protocol::Tcp(port), rest @ ..] => (false, *port, rest),
        _ => return Err(err("expected /udp/<port>/quic-v1 or /tcp/<port>")),
    };
    let peer = match rest {
        [] => None,
        [Protocol::P2p(id)] => Some(*id),
        _ => return Err(err("only /p2p/<peer id> may follow the transport")),
    };
    let quic = host
        .clone()
        .with(Protocol::Udp(port))
        .with(Protocol::QuicV1);
    let tcp = host.with(Protocol::Tcp(port));
    let addrs = if first_is_quic {
        vec![quic, tcp]
    } else {
        vec![tcp, quic]
    };
    Ok(DialTarget { peer, addrs })
}

/// The host part of a multiaddr, as it would appear in `host:port` (IPv6 in brackets).
pub(crate) fn host_of(ma: &Multiaddr) -> Option<String> {
    match ma.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.to_string()),
        Protocol::Ip6(ip) => Some(format!("[{ip}]")),
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => Some(h.into_owned()),
        _ => None,
    }
}

/// `host:port` of a QUIC or TCP multiaddr.
pub(crate) fn host_port_of(ma: &Multiaddr) -> Option<String> {
    let host = host_of(ma)?;
    let port = ma.iter().find_map(|p| match p {
        Protocol::Udp(port) | Protocol::Tcp(port) => Some(port),
        _ => None,
    })?;
    Some(format!("{host}:{port}"))
}

/// Whether a multiaddr runs over QUIC.
pub(crate) fn is_quic(ma: &Multiaddr) -> bool {
    ma.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// Whether the host of a multiaddr is a loopback address.
pub(crate) fn is_loopback(ma: &Multiaddr) -> bool {
    match ma.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn node_and_peer_ids_convert() {
        let kp = Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let id = node_id_of(&peer).unwrap();
        assert_eq!(id.0, kp.public().try_into_ed25519().unwrap().to_bytes());
        assert_eq!(peer_id_of(id), Some(peer));
        // A random (sha256-hashed) peer id is not Ed25519.
        assert_eq!(node_id_of(&PeerId::random()), None);
        // Not every 32-byte string is a point on the curve; whatever it is, no panic.
        let _ = peer_id_of(NodeId([0xff; 32]));
    }

    #[test]
    fn host_port_to_multiaddrs() {
        let ma = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert_eq!(
            addr_to_multiaddrs("127.0.0.1:7946").unwrap(),
            [
                ma("/ip4/127.0.0.1/udp/7946/quic-v1"),
                ma("/ip4/127.0.0.1/tcp/7946")
            ]
        );
        assert_eq!(
            addr_to_multiaddrs("[::1]:80").unwrap(),
            [ma("/ip6/::1/udp/80/quic-v1"), ma("/ip6/::1/tcp/80")]
        );
        assert_eq!(
            addr_to_multiaddrs("node-1.example.com:7946").unwrap(),
            [
                ma("/dns/node-1.example.com/udp/7946/quic-v1"),
                ma("/dns/node-1.example.com/tcp/7946")
            ]
        );
        for bad in [
            "",
            "host",
            ":80",
            "host:",
            "host:99999",
            "::1:80",
            "a b:1",
            "h/x:1",
        ] {
            let err = addr_to_multiaddrs(bad).unwrap_err();
            assert_eq!(err.addr, bad);
        }
        assert!(
            addr_to_multiaddrs("::1:80")
                .unwrap_err()
                .reason
                .contains("brackets")
        );
    }

    #[test]
    fn dial_targets() {
        let ma = |s: &str| s.parse::<Multiaddr>().unwrap();
        let t = parse_dial_addr("/ip4/1.2.3.4/udp/7946/quic-v1").unwrap();
        assert_eq!(t.peer, None);
        assert_eq!(
            t.addrs,
            vec![
                ma("/ip4/1.2.3.4/udp/7946/quic-v1"),
                ma("/ip4/1.2.3.4/tcp/7946")
            ]
        );
        let t = parse_dial_addr("/dns4/n1/tcp/7946").unwrap();
        assert_eq!(
            t.addrs,
            vec![ma("/dns4/n1/tcp/7946"), ma("/dns4/n1/udp/7946/quic-v1")]
        );
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let t = parse_dial_addr(&format!("/ip6/::1/tcp/1/p2p/{peer}")).unwrap();
        assert_eq!(t.peer, Some(peer));
        assert_eq!(
            t.addrs,
            vec![ma("/ip6/::1/tcp/1"), ma("/ip6/::1/udp/1/quic-v1")]
        );
        let t = parse_dial_addr(&format!("/ip4/1.1.1.1/udp/2/quic-v1/p2p/{peer}")).unwrap();
        assert_eq!(t.peer, Some(peer));
        assert_eq!(parse_dial_addr(" 10.0.0.1:7 ").unwrap().addrs.len(), 2);
        for bad in [
            "/",
            "/ip4/1.2.3.4",
            "/ip4/1.2.3.4/udp/1",
            "/ip4/1.2.3.4/udp/1/quic",
            "/ip4/1.2.3.4/tcp/1/ws",
            "/unix/x",
            "/tcp/1",
            "/ip4/999.1.1.1/tcp/1",
        ] {
            assert!(parse_dial_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn multiaddr_to_host_port() {
        let ma = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert_eq!(
            host_port_of(&ma("/ip4/10.1.2.3/udp/9/quic-v1")).as_deref(),
            Some("10.1.2.3:9")
        );
        assert_eq!(
            host_port_of(&ma("/ip6/::1/tcp/9")).as_deref(),
            Some("[::1]:9")
        );
        assert_eq!(
            host_port_of(&ma(
                "/dns/x.y/tcp/9/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
            ))
            .as_deref(),
            Some("x.y:9")
        );
        assert_eq!(host_port_of(&ma("/ip4/1.2.3.4")), None);
        for s in [
            "/ip4/10.1.2.3/udp/9/quic-v1",
            "/ip6/::1/tcp/9",
            "/dns/x.y/tcp/9",
        ] {
            // What is reported is dialable again.
            assert!(addr_to_multiaddrs(&host_port_of(&ma(s)).unwrap()).is_ok());
        }
        assert!(is_quic(&ma("/ip4/1.2.3.4/udp/1/quic-v1")));
        assert!(!is_quic(&ma("/ip4/1.2.3.4/tcp/1")));
        assert!(is_loopback(&ma("/ip6/::1/tcp/1")));
        assert!(!is_loopback(&ma("/ip4/10.0.0.1/tcp/1")));
    }
}
