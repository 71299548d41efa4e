//! Envoy as a test peer: a process started from a bootstrap the test writes, killed when
//! its handle drops, with the few admin-endpoint reads a test needs (the port a listener
//! bound, counters).
//!
//! The bootstrap is JSON (Envoy reads it as YAML, of which JSON is a subset); its admin
//! address and listeners may use port 0, since the handle reads back what was bound.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long Envoy may take to start and to answer an admin request.
const STARTUP_SECS: u64 = 60;
/// The bound on one admin request.
const ADMIN_SECS: u64 = 10;
/// An admin answer larger than this is not one a test asked for.
const ADMIN_MAX_BYTES: usize = 4 << 20;

/// A running Envoy, killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Envoy {
    /// Starts `binary` ([`crate::peers::envoy`]) with `bootstrap` written to `dir`, its log
    /// in `dir/envoy.log`, and waits (bounded) until its admin endpoint says it is `LIVE`:
    /// its static listeners are bound and its static clusters initialised.
    ///
    /// # Panics
    /// When Envoy exits, or is not live within a minute.
    pub async fn start(binary: &Path, dir: &Path, bootstrap: &Value) -> Self {
        let config = dir.join("envoy.json");
        std::fs::write(&config, bootstrap.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let admin_path = dir.join("envoy-admin.addr");
        let log = dir.join("envoy.log");
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = Command::new(binary)
            .arg("--config-path")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // One worker: the machine's cores are shared, and one is all a test needs.
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args([
                "--log-level",
                "warning",
                "--component-log-level",
                "connection:debug",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut envoy = Envoy {
            child,
            admin: String::new(),
            log,
        };
        // Envoy is another process: its readiness can only be polled, so poll, bounded.
        let live = async {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                if let Some(status) = envoy.child.try_wait().unwrap() {
                    panic!("envoy exited at startup ({status}): {}", envoy.log_text());
                }
                if envoy.admin.is_empty() {
                    match std::fs::read_to_string(&admin_path) {
                        Ok(a) if !a.trim().is_empty() => envoy.admin = a.trim().to_owned(),
                        _ => continue,
                    }
                }
                if let Ok(body) = envoy.try_admin_get("/ready").await
                    && body.trim() == "LIVE"
                {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(STARTUP_SECS), live)
            .await
            .is_err()
        {
            panic!(
                "envoy was not live within {STARTUP_SECS}s: {}",
                envoy.log_text()
            );
        }
        envoy
    }

    /// The port Envoy bound for its listener `name`.
    ///
    /// # Panics
    /// When Envoy has no such listener.
    pub async fn listener_port(&self, name: &str) -> u16 {
        let body = self.admin_get("/listeners?format=json").await;
        let listeners: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("envoy's /listeners is not JSON ({e}): {body}"));
        listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("envoy has no listener {name}: {body}"))
    }

    /// Envoy's counters and gauges whose names start with `prefix`, by name.
    pub async fn stats(&self, prefix: &str) -> BTreeMap<String, u64> {
        let body = self.admin_get("/stats").await;
        body.lines()
            .filter_map(|line| line.split_once(": "))
            .filter(|(name, _)| name.starts_with(prefix))
            .filter_map(|(name, value)| Some((name.to_owned(), value.trim().parse().ok()?)))
            .collect()
    }

    /// What Envoy has logged so far (`--log-level info`), for a failure message.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("{} says:\n{text}", self.log.display())
    }

    async fn admin_get(&self, path: &str) -> String {
        self.try_admin_get(path)
            .await
            .unwrap_or_else(|e| panic!("envoy admin {}{path}: {e}", self.admin))
    }

    /// GET `path` from the admin endpoint over HTTP/1.1, bounded in time and size.
    async fn try_admin_get(&self, path: &str) -> std::io::Result<String> {
        let get = async {
            let mut tcp = TcpStream::connect(&self.admin).await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            tcp.take(ADMIN_MAX_BYTES as u64)
                .read_to_end(&mut raw)
                .await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).into_owned())
        };
        let raw = tokio::time::timeout(Duration::from_secs(ADMIN_SECS), get)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw}")))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(head.to_owned()));
        }
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok(if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        })
    }
}

/// The data of a chunked body: `<hex length>\r\n<data>\r\n`..., ending at a zero length
/// or at anything malformed.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n || !tail.is_char_boundary(n) {
            break;
        }
        body.push_str(&tail[..n]);
        rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_is_joined_and_stops_at_the_last_chunk() {
        assert_eq!(
            dechunk("5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"),
            "hello, world"
        );
        assert_eq!(dechunk("3\r\nab"), "");
        assert_eq!(dechunk("zz\r\nab\r\n"), "");
        assert_eq!(dechunk(""), "");
    }
}
