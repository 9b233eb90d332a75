//! A minimal stub resolver for the client, standard library only: a statically linked binary
//! in an empty image has no working `getaddrinfo` (glibc's needs its NSS libraries).
//!
//! It reads `/etc/resolv.conf` (`nameserver`, `search`, `options ndots:N`) as libc does, tries
//! the name with the search domains appended when it has fewer than `ndots` dots (and as given
//! last, or first otherwise), and asks each name server for an `A` record over UDP. Answers
//! are checked (id, question, response code) and parsed defensively: anything malformed is
//! "no answer".

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The resolver configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResolvConf {
    pub(crate) servers: Vec<IpAddr>,
    pub(crate) search: Vec<String>,
    pub(crate) ndots: usize,
}

/// Parses `resolv.conf` text.
pub(crate) fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf {
        ndots: 1,
        ..ResolvConf::default()
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    conf.servers.push(ip);
                }
            }
            Some("search") | Some("domain") => {
                conf.search = words.map(|w| w.trim_end_matches('.').to_owned()).collect();
            }
            Some("options") => {
                for option in words {
                    if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        conf.ndots = n;
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

/// The names to try for `host`, in order.
pub(crate) fn candidates(host: &str, conf: &ResolvConf) -> Vec<String> {
    let host = host.trim_end_matches('.');
    let searched = conf.search.iter().map(|d| format!("{host}.{d}"));
    if host.matches('.').count() >= conf.ndots {
        std::iter::once(host.to_owned()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(host.to_owned())).collect()
    }
}

/// Resolves `host` to an IPv4 address with the system's `resolv.conf`.
pub(crate) fn resolve(host: &str) -> Result<IpAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
    let conf = parse_resolv_conf(&text);
    if conf.servers.is_empty() {
        return Err("no nameserver in /etc/resolv.conf".into());
    }
    for name in candidates(host, &conf) {
        for server in &conf.servers {
            if let Some(ip) = ask(&name, SocketAddr::new(*server, 53)) {
                return Ok(IpAddr::V4(ip));
            }
        }
    }
    Err(format!("cannot resolve {host:?}"))
}

fn ask(name: &str, server: SocketAddr) -> Option<Ipv4Addr> {
    let id = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .subsec_nanos()
        & 0xffff) as u16;
    let query = encode_query(id, name)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(&query, server).ok()?;
    let mut buf = [0u8; 1500];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    parse_answer(&buf[..len], id)
}

/// A recursive query for the `A` record of `name`.
pub(crate) fn encode_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Some(out)
}

/// The first `A` record of an answer to query `id`.
pub(crate) fn parse_answer(msg: &[u8], id: u16) -> Option<Ipv4Addr> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return None;
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 == 0 || flags & 0x000f != 0 {
        return None; // not a response, or an error (NXDOMAIN ...)
    }
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let header = msg.get(at..at + 10)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let class = u16::from_be_bytes([header[2], header[3]]);
        let len = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let data = msg.get(at + 10..at + 10 + len)?;
        if kind == 1 && class == 1 && len == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    None
}

/// The offset after the name at `at` (labels, or a compression pointer).
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                msg.get(at + 1)?;
                return Some(at + 2);
            }
            l if l < 64 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_search_order_follow_libc() {
        let conf = parse_resolv_conf(
            "# comment\nnameserver 10.201.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1\n",
        );
        assert_eq!(conf.servers, ["10.201.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(conf.ndots, 5);
        assert_eq!(
            candidates("web", &conf),
            [
                "web.default.svc.cluster.local",
                "web.svc.cluster.local",
                "web.cluster.local",
                "web"
            ]
        );
        let plain = parse_resolv_conf("nameserver 1.1.1.1\n");
        assert_eq!(candidates("example.com", &plain), ["example.com"]);
    }

    #[test]
    fn answers_are_parsed_and_bad_ones_refused() {
        let query = encode_query(7, "web.default.svc.cluster.local").unwrap();
        // A response: the query with QR set, one answer pointing at the question's name.
        let mut answer = query.clone();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 201, 3, 4]);
        assert_eq!(parse_answer(&answer, 7), Some(Ipv4Addr::new(10, 201, 3, 4)));
        assert_eq!(parse_answer(&answer, 8), None, "another id");
        let mut nxdomain = answer.clone();
        nxdomain[3] = 0x83;
        assert_eq!(parse_answer(&nxdomain, 7), None);
        for cut in 0..answer.len() {
            let _ = parse_answer(&answer[..cut], 7);
        }
        assert_eq!(parse_answer(&query, 7), None, "a query is not an answer");
    }
}
