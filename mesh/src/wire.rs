//! The mesh stream header and status byte (the whole wire protocol above QUIC).
//!
//! Every proxied TCP connection is one bidirectional QUIC stream. The requester writes a header
//! first; the serving agent answers exactly one status byte before any payload flows.
//!
//! ```text
//! header  = magic 0xD5 | version u8 (= 1) | body_len u16 BE (<= MAX_BODY) | body
//! body v1 = family u8 (4 | 6) | ip [4 | 16] | port u16 BE | service_len u8 | service utf-8
//! status  = one byte, see [`Status`]
//! ```
//!
//! The magic and version bytes keep their place in every future version, so an agent that does
//! not know a version can still tell one from garbage and answer
//! [`Status::UnsupportedVersion`]. Decoding never panics: every input is either a [`Header`]
//! or a [`WireError`] (proptests below feed arbitrary bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First byte of every mesh stream.
pub const MAGIC: u8 = 0xD5;
/// The header version this crate writes and serves.
pub const VERSION: u8 = 1;
/// Length of the fixed prefix: magic, version and the body length.
pub const PREFIX_LEN: usize = 4;
/// Longest header body accepted (a v1 body is at most 1 + 16 + 2 + 1 + 255 = 275 bytes).
pub const MAX_BODY: usize = 512;
/// Longest service id, in bytes.
pub const MAX_SERVICE_LEN: usize = 255;

/// What a requester asks for: where to connect on the serving node, and for which service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Destination socket address on the serving node (a pod's ip:port).
    pub dest: SocketAddr,
    /// Service id, for the serving agent's metrics.
    pub service: String,
}

/// Why a header was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first byte is not [`MAGIC`]: not a mesh stream.
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    /// A version this agent does not speak; answered with [`Status::UnsupportedVersion`].
    #[error("unsupported header version {0}")]
    UnsupportedVersion(u8),
    /// The announced body length exceeds [`MAX_BODY`].
    #[error("header body of {0} bytes exceeds the limit")]
    TooLong(usize),
    /// The body ended before a field was complete.
    #[error("header body truncated")]
    Truncated,
    /// The address family byte is neither 4 nor 6.
    #[error("bad address family {0}")]
    BadFamily(u8),
    /// The service id is not UTF-8.
    #[error("service id is not utf-8")]
    BadService,
    /// Bytes after the last field.
    #[error("{0} trailing bytes after the header body")]
    Trailing(usize),
    /// A service id longer than [`MAX_SERVICE_LEN`] cannot be encoded.
    #[error("service id of {0} bytes is too long")]
    ServiceTooLong(usize),
}

impl Header {
    /// Encodes the header (prefix and body).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let service = self.service.as_bytes();
        if service.len() > MAX_SERVICE_LEN {
            return Err(WireError::ServiceTooLong(service.len()));
        }
        let mut body = Vec::with_capacity(1 + 16 + 2 + 1 + service.len());
        match self.dest.ip() {
            IpAddr::V4(ip) => {
                body.push(4);
                body.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                body.push(6);
                body.extend_from_slice(&ip.octets());
            }
        }
        body.extend_from_slice(&self.dest.port().to_be_bytes());
        // Checked against MAX_SERVICE_LEN (255) above.
        body.push(service.len() as u8);
        body.extend_from_slice(service);
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
        out.push(MAGIC);
        out.push(VERSION);
        // A v1 body is at most 275 bytes.
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Checks the fixed prefix and returns the body length to read next.
    pub fn decode_prefix(prefix: [u8; PREFIX_LEN]) -> Result<usize, WireError> {
        if prefix[0] != MAGIC {
            return Err(WireError::BadMagic(prefix[0]));
        }
        if prefix[1] != VERSION {
            return Err(WireError::UnsupportedVersion(prefix[1]));
        }
        let len = usize::from(u16::from_be_bytes([prefix[2], prefix[3]]));
        if len > MAX_BODY {
            return Err(WireError::TooLong(len));
        }
        Ok(len)
    }

    /// Decodes a v1 body (everything after the prefix).
    pub fn decode_body(body: &[u8]) -> Result<Header, WireError> {
        let mut rest = body;
        let family = take(&mut rest, 1)?[0];
        let ip = match family {
            4 => {
                let b: [u8; 4] = take(&mut rest, 4)?
                    .try_into()
                    .map_err(|_| WireError::Truncated)?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = take(&mut rest, 16)?
                    .try_into()
                    .map_err(|_| WireError::Truncated)?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            other => return Err(WireError::BadFamily(other)),
        };
        let port = take(&mut rest, 2)?;
        let port = u16::from_be_bytes([port[0], port[1]]);
        let service_len = usize::from(take(&mut rest, 1)?[0]);
        let service = std::str::from_utf8(take(&mut rest, service_len)?)
            .map_err(|_| WireError::BadService)?
            .to_owned();
        if !rest.is_empty() {
            return Err(WireError::Trailing(rest.len()));
        }
        Ok(Header {
            dest: SocketAddr::new(ip, port),
            service,
        })
    }

    /// Decodes a whole header (prefix and body) from one buffer; used by tests and fuzzing.
    pub fn decode(bytes: &[u8]) -> Result<Header, WireError> {
        let prefix: [u8; PREFIX_LEN] = bytes
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let len = Header::decode_prefix(prefix)?;
        let body = &bytes[PREFIX_LEN..];
        match body.len().cmp(&len) {
            std::cmp::Ordering::Less => Err(WireError::Truncated),
            std::cmp::Ordering::Greater => Err(WireError::Trailing(body.len() - len)),
            std::cmp::Ordering::Equal => Header::decode_body(body),
        }
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if rest.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// The serving agent's one-byte answer to a header, sent before any payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum Status {
    /// Connected to the destination; payload follows in both directions.
    Ok = 0,
    /// The destination actively refused the TCP connection (nothing listens there).
    Refused = 1,
    /// Connecting to the destination failed otherwise (timeout, unreachable).
    ConnectFailed = 2,
    /// The destination is not an endpoint this node serves.
    NotAllowed = 3,
    /// The header's version is not spoken by this agent.
    UnsupportedVersion = 4,
}

impl Status {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses a status byte; `None` for unknown values.
    pub fn from_byte(byte: u8) -> Option<Status> {
        Some(match byte {
            0 => Status::Ok,
            1 => Status::Refused,
            2 => Status::ConnectFailed,
            3 => Status::NotAllowed,
            4 => Status::UnsupportedVersion,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header(dest: &str, service: &str) -> Header {
        Header {
            dest: dest.parse().unwrap(),
            service: service.to_owned(),
        }
    }

    #[test]
    fn v4_and_v6_round_trip() {
        for h in [
            header("10.1.2.3:8080", "default/web"),
            header("[fd00::1:2]:443", ""),
        ] {
            let bytes = h.encode().unwrap();
            assert_eq!(bytes[0], MAGIC);
            assert_eq!(bytes[1], VERSION);
            assert_eq!(Header::decode(&bytes).unwrap(), h);
        }
    }

    #[test]
    fn bad_magic_version_and_length_are_told_apart() {
        let mut bytes = header("127.0.0.1:1", "s").encode().unwrap();
        bytes[0] = b'G';
        assert_eq!(Header::decode(&bytes), Err(WireError::BadMagic(b'G')));
        bytes[0] = MAGIC;
        bytes[1] = 2;
        assert_eq!(
            Header::decode(&bytes),
            Err(WireError::UnsupportedVersion(2))
        );
        assert_eq!(
            Header::decode_prefix([MAGIC, VERSION, 0xff, 0xff]),
            Err(WireError::TooLong(0xffff))
        );
    }

    #[test]
    fn truncated_and_trailing_bodies_are_errors() {
        let bytes = header("127.0.0.1:1", "svc").encode().unwrap();
        assert_eq!(
            Header::decode(&bytes[..bytes.len() - 1]),
            Err(WireError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Header::decode(&longer), Err(WireError::Trailing(1)));
        // The body itself claims fewer bytes than it holds.
        let mut body = bytes[PREFIX_LEN..].to_vec();
        body.push(7);
        assert_eq!(Header::decode_body(&body), Err(WireError::Trailing(1)));
    }

    #[test]
    fn overlong_service_id_is_refused_on_encode() {
        let h = header("127.0.0.1:1", &"x".repeat(256));
        assert_eq!(h.encode(), Err(WireError::ServiceTooLong(256)));
        let h = header("127.0.0.1:1", &"x".repeat(255));
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn status_bytes_round_trip_and_unknown_is_none() {
        for s in [
            Status::Ok,
            Status::Refused,
            Status::ConnectFailed,
            Status::NotAllowed,
            Status::UnsupportedVersion,
        ] {
            assert_eq!(Status::from_byte(s.to_byte()), Some(s));
        }
        assert_eq!(Status::from_byte(5), None);
        assert_eq!(Status::from_byte(0xff), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Header::decode(&bytes);
            let _ = Header::decode_body(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(
            ip in any::<[u8; 16]>(),
            v4 in any::<bool>(),
            port in any::<u16>(),
            service in "\\PC{0,60}",
        ) {
            let ip = if v4 {
                IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(ip))
            };
            let h = Header { dest: SocketAddr::new(ip, port), service };
            let bytes = h.encode().unwrap();
            prop_assert!(bytes.len() <= PREFIX_LEN + MAX_BODY);
            prop_assert_eq!(Header::decode(&bytes).unwrap(), h);
        }

        #[test]
        fn corrupted_headers_never_panic(
            service in "[a-z/]{0,40}",
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = header("10.0.0.1:80", &service).encode().unwrap();
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            let _ = Header::decode(&bytes);
        }
    }
}
