//! Parsing the gRPC xDS bootstrap (`Bootstrap::from_json_str`), what `GRPC_XDS_BOOTSTRAP`
//! points at, and the lookups that use it afterwards.
//!
//! Input: the JSON text, then optionally a NUL byte and a channel target (an `xds:` URI) and
//! a resource name, separated by another NUL.
//!
//! Invariants: no panic; parsing the same text as a `serde_json::Value` first gives the same
//! verdict; the listener-name, server-listener-name and authority lookups of a parsed
//! bootstrap answer (`Ok` or a typed error) for any target.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use meshwork_xds::bootstrap::Bootstrap;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let Ok(json) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let target = String::from_utf8_lossy(parts.next().unwrap_or(b"xds:///greeter:50051"));
    let name = String::from_utf8_lossy(parts.next().unwrap_or(b"xdstp://authority/x/y"));

    let parsed = Bootstrap::from_json_str(json);
    if let Ok(value) = serde_json_value(json) {
        let again = Bootstrap::from_json_value(&value);
        assert_eq!(parsed.is_ok(), again.is_ok(), "{parsed:?} vs {again:?}");
        if let (Ok(a), Ok(b)) = (&parsed, &again) {
            assert_eq!(a, b);
        }
    }
    let bootstrap = match parsed {
        Ok(b) => b,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = bootstrap.unknown_fields();
    let _ = bootstrap.node();
    let _ = bootstrap.listener_resource_name(&target);
    let _ = bootstrap.servers_for_resource_name(&name);
    let _ = bootstrap.servers_for_authority(Some(&name));
    for addr in [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7070)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, 443)),
    ] {
        let _ = bootstrap.server_listener_resource_name(addr);
    }
    if let Ok(server_name) = bootstrap.listener_resource_name(&target) {
        // A name we would subscribe to must have servers to ask (or a typed error).
        let _ = bootstrap.servers_for_resource_name(&server_name);
    }
});

fn serde_json_value(json: &str) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_str(json)
}
