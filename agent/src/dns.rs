//! The cluster DNS: service names answered by every agent from the replicated state.
//!
//! Names, as in Kubernetes: `NAME.NAMESPACE.svc.cluster.local` and its short form
//! `NAME.NAMESPACE.svc`; pods get the search list `NAMESPACE.svc.cluster.local
//! svc.cluster.local cluster.local`, so `NAME` and `NAME.NAMESPACE` resolve too. A service with
//! a cluster IP answers that address; a headless one answers its ready pods' IPs. Answers are
//! authoritative with a 5 s TTL (endpoints move). Only `A` records exist: other types of a
//! known name get an empty answer, unknown names in the cluster's zones `NXDOMAIN`. Names
//! outside them are forwarded to the machine's resolvers (from `/etc/resolv.conf`), so pods
//! still resolve the outside world.
//!
//! [`answer`] is pure: bytes in, bytes out, against a [`Zone`]. Malformed queries are dropped
//! (counted by the server), never answered with a panic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, rdata::A};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The cluster domain.
pub(crate) const CLUSTER_DOMAIN: &str = "cluster.local";
/// TTL of the cluster's answers, in seconds.
const TTL: u32 = 5;
/// Largest UDP answer without EDNS (RFC 1035).
const UDP_LIMIT: usize = 512;
/// How long a forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The names the cluster answers: `(namespace, service) -> addresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Zone {
    pub(crate) services: BTreeMap<(String, String), Vec<Ipv4Addr>>,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a cluster name: ask the upstream resolvers (the query as received).
    Forward,
    /// Not a query at all: drop it.
    Drop,
}

/// Where a name points inside the cluster's zones.
enum Lookup<'a> {
    /// A service's addresses.
    Found(&'a [Ipv4Addr]),
    /// Inside a cluster zone but no such service.
    Missing,
    /// Outside the cluster's zones.
    Outside,
}

fn lookup<'a>(zone: &'a Zone, name: &Name) -> Lookup<'a> {
    let text = name.to_lowercase().to_ascii();
    let text = text.trim_end_matches('.');
    let rest = text
        .strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))
        .or_else(|| text.strip_suffix(".svc"));
    let Some(rest) = rest else {
        return if text == CLUSTER_DOMAIN
            || text.ends_with(&format!(".{CLUSTER_DOMAIN}"))
            || text == "svc"
        {
            Lookup::Missing
        } else {
            Lookup::Outside
        };
    };
    let Some((service, namespace)) = rest.split_once('.') else {
        return Lookup::Missing;
    };
    match zone
        .services
        .get(&(namespace.to_owned(), service.to_owned()))
    {
        Some(ips) if !namespace.contains('.') => Lookup::Found(ips),
        _ => Lookup::Missing,
    }
}

/// The answer to the query in `bytes`.
pub(crate) fn answer(zone: &Zone, bytes: &[u8]) -> Answer {
    let Ok(query) = Message::from_vec(bytes) else {
        return Answer::Drop;
    };
    if query.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let [question] = query.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return encode(reply);
    };
    reply.add_query(question.clone());
    if query.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return encode(reply);
    }
    match lookup(zone, question.name()) {
        Lookup::Outside => Answer::Forward,
        Lookup::Missing => {
            reply.metadata.authoritative = true;
            reply.metadata.response_code = ResponseCode::NXDomain;
            encode(reply)
        }
        Lookup::Found(ips) => {
            reply.metadata.authoritative = true;
            let wants_a = matches!(question.query_type(), RecordType::A | RecordType::ANY)
                && matches!(question.query_class(), DNSClass::IN | DNSClass::ANY);
            if wants_a {
                for ip in ips {
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        TTL,
                        RData::A(A(*ip)),
                    ));
                }
            }
            encode(reply)
        }
    }
}

fn encode(mut reply: Message) -> Answer {
    let Ok(bytes) = reply.to_vec() else {
        return Answer::Drop;
    };
    if bytes.len() <= UDP_LIMIT {
        return Answer::Reply(bytes);
    }
    // Too many addresses for plain UDP: say so, and the client retries over TCP... which this
    // server does not offer, so it gets what fits instead.
    let keep = reply.answers.len().min((UDP_LIMIT - 100) / 16);
    reply.answers.truncate(keep);
    reply.metadata.truncation = true;
    reply.to_vec().map_or(Answer::Drop, Answer::Reply)
}

/// Counters of the DNS server.
#[derive(Debug, Default)]
pub(crate) struct DnsCounters {
    /// Queries answered from the cluster's names (including NXDOMAIN).
    pub(crate) answered: AtomicU64,
    /// Queries for other names, forwarded upstream.
    pub(crate) forwarded: AtomicU64,
    /// Datagrams that were not a query (malformed, or a response).
    pub(crate) dropped: AtomicU64,
    /// Forwarded queries no upstream answered (the client got SERVFAIL).
    pub(crate) forward_failed: AtomicU64,
}

impl DnsCounters {
    /// The counters as JSON (for `GET /api/v1/stats`).
    pub(crate) fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "answered": get(&self.answered),
            "forwarded": get(&self.forwarded),
            "dropped": get(&self.dropped),
            "forwardFailed": get(&self.forward_failed),
        })
    }
}

/// The machine's resolvers, from `/etc/resolv.conf`, without `skip` (this server's own
/// addresses) and Docker's embedded resolver.
pub(crate) fn upstreams(skip: &[SocketAddr]) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| {
            !skip.contains(a) && a.ip() != std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))
        })
        .collect()
}

/// A UDP socket on `addr` shared with the other agents of this machine (`SO_REUSEPORT`: they
/// answer alike).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Serves DNS on `socket` from the zones `zone` publishes, forwarding other names to
/// `upstreams`.
pub(crate) async fn serve(
    socket: UdpSocket,
    zone: watch::Receiver<Arc<Zone>>,
    upstreams: Vec<SocketAddr>,
    counters: Arc<DnsCounters>,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "receiving a DNS query failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = &buf[..len];
        let decision = answer(&zone.borrow(), query);
        match decision {
            Answer::Reply(bytes) => {
                counters.answered.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&bytes, from).await;
            }
            Answer::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Answer::Forward => {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let query = query.to_vec();
                let socket = Arc::clone(&socket);
                let upstreams = upstreams.clone();
                let counters = Arc::clone(&counters);
                tokio::spawn(async move {
                    match forward(&query, &upstreams).await {
                        Some(bytes) => {
                            let _ = socket.send_to(&bytes, from).await;
                        }
                        None => {
                            counters.forward_failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(q) = Message::from_vec(&query) {
                                let mut reply =
                                    Message::response(q.metadata.id, q.metadata.op_code);
                                reply.metadata.response_code = ResponseCode::ServFail;
                                reply.queries = q.queries;
                                if let Ok(bytes) = reply.to_vec() {
                                    let _ = socket.send_to(&bytes, from).await;
                                }
                            }
                        }
                    }
                });
            }
        }
    }
}

/// Asks each upstream in turn; the first answer wins.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(FORWARD_TIMEOUT, socket.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) if from == *upstream => {
                buf.truncate(len);
                return Some(buf);
            }
            other => debug!(%upstream, ?other, "upstream resolver did not answer"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        let mut zone = Zone::default();
        zone.services.insert(
            ("default".into(), "web".into()),
            vec![Ipv4Addr::new(127, 200, 0, 7)],
        );
        zone.services.insert(
            ("shop".into(), "db".into()),
            vec![Ipv4Addr::new(127, 64, 1, 1), Ipv4Addr::new(127, 64, 1, 2)],
        );
        zone
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn reply(answer: Answer) -> Message {
        let Answer::Reply(bytes) = answer else {
            panic!("expected a reply, got {answer:?}");
        };
        Message::from_vec(&bytes).unwrap()
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn service_names_resolve_in_every_form() {
        let zone = zone();
        for name in [
            "web.default.svc.cluster.local.",
            "web.default.svc.",
            "WEB.Default.SVC.Cluster.Local.",
        ] {
            let m = reply(answer(&zone, &query(name, RecordType::A)));
            assert_eq!(m.metadata.id, 0x1234);
            assert!(m.metadata.authoritative);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(addresses(&m), [Ipv4Addr::new(127, 200, 0, 7)], "{name}");
        }
        let m = reply(answer(
            &zone,
            &query("db.shop.svc.cluster.local.", RecordType::A),
        ));
        assert_eq!(addresses(&m).len(), 2);
    }

    #[test]
    fn unknown_cluster_names_are_nxdomain_and_other_types_empty() {
        let zone = zone();
        for name in [
            "nope.default.svc.cluster.local.",
            "web.other.svc.cluster.local.",
            "default.svc.cluster.local.",
            "web.default.svc.cluster.local.cluster.local.",
        ] {
            let m = reply(answer(&zone, &query(name, RecordType::A)));
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        }
        let m = reply(answer(
            &zone,
            &query("web.default.svc.cluster.local.", RecordType::AAAA),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn outside_names_are_forwarded_and_garbage_dropped() {
        let zone = zone();
        assert_eq!(
            answer(&zone, &query("example.com.", RecordType::A)),
            Answer::Forward
        );
        assert_eq!(answer(&zone, b""), Answer::Drop);
        assert_eq!(answer(&zone, &[0xff; 40]), Answer::Drop);
        // A response is not a query.
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("web.default.svc.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(answer(&zone, &m.to_vec().unwrap()), Answer::Drop);
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_it_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = answer(&zone(), &bytes);
        }
    }
}
