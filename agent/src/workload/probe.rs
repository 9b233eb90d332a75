//! Container probes: httpGet (a 2xx or 3xx answer), tcpSocket (a connection) and exec (exit code
//! 0), each bounded by the probe's `timeoutSeconds`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::manifest::{Container, PortRef, Probe, ProbeHandler, Scheme};
use crate::runtime::Runtime;

/// A named port's number, from the container's ports.
fn port_number(container: &Container, port: &PortRef) -> Result<u16, String> {
    match port {
        PortRef::Number(n) => Ok(*n),
        PortRef::Name(name) => container
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// Runs one probe. `Err` carries what failed, for the pod's events.
pub(crate) async fn run<R: Runtime>(
    runtime: &R,
    uid: &str,
    container: &Container,
    probe: &Probe,
    ip: Option<IpAddr>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1).into());
    match &probe.handler {
        ProbeHandler::Exec(exec) => {
            let result = runtime
                .exec(uid, &container.name, &exec.command, timeout)
                .await
                .map_err(|e| e.to_string())?;
            if result.exit_code == 0 {
                Ok(())
            } else {
                let output = String::from_utf8_lossy(&result.output);
                Err(format!(
                    "command exited with {}: {}",
                    result.exit_code,
                    output.trim().chars().take(200).collect::<String>()
                ))
            }
        }
        ProbeHandler::TcpSocket(tcp) => {
            let host = ip.ok_or("the pod has no IP yet")?;
            let port = port_number(container, &tcp.port)?;
            let addr = SocketAddr::new(host, port);
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: timed out after {timeout:?}")),
            }
        }
        ProbeHandler::HttpGet(http) => {
            if http.scheme == Scheme::Https {
                return Err("HTTPS probes are not supported yet (use tcpSocket or exec)".into());
            }
            let host = ip.ok_or("the pod has no IP yet")?;
            let port = port_number(container, &http.port)?;
            let addr = SocketAddr::new(host, port);
            let path = if http.path.is_empty() {
                "/"
            } else {
                http.path.as_str()
            };
            let request = async {
                let mut stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
                let mut head = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: shoal-probe/1\r\nConnection: close\r\n"
                );
                for h in &http.http_headers {
                    head.push_str(&format!("{}: {}\r\n", h.name, h.value));
                }
                head.push_str("\r\n");
                stream
                    .write_all(head.as_bytes())
                    .await
                    .map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
                let mut buf = vec![0u8; 256];
                let mut read = 0;
                while read < 12 {
                    let n = stream
                        .read(&mut buf[read..])
                        .await
                        .map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    read += n;
                }
                let line = String::from_utf8_lossy(&buf[..read]);
                let code: u16 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("Get http://{addr}{path}: not an HTTP answer"))?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            };
            match tokio::time::timeout(timeout, request).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "Get http://{addr}{path}: timed out after {timeout:?}"
                )),
            }
        }
    }
}
