//! The bootstrap files real control planes and peers hand us must load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::google::protobuf::value::Kind;
use meshwork_xds::bootstrap::{
    Bootstrap, BootstrapError, CertificateProviderConfig, ChannelCredentials, Locality,
    ServerAddress,
};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bootstrap")
        .join(name)
}

#[test]
fn istio_agent_bootstrap() {
    let b = Bootstrap::from_file(fixture("istio-agent.json")).unwrap();

    let [server] = b.xds_servers() else {
        panic!("want one server, got {:?}", b.xds_servers());
    };
    assert_eq!(server.uri(), "unix:///etc/istio/proxy/XDS");
    assert_eq!(
        server.address(),
        &ServerAddress::Unix {
            path: "/etc/istio/proxy/XDS".into()
        }
    );
    assert_eq!(server.channel_credentials(), &ChannelCredentials::Insecure);
    assert!(server.xds_v3());
    assert!(!server.ignore_resource_deletion());

    let node = b.node();
    assert_eq!(
        node.id,
        "sidecar~10.0.0.1~echo-1.default~default.svc.cluster.local"
    );
    assert_eq!(node.cluster, "");
    assert_eq!(node.locality, Some(Locality::default()));
    assert_eq!(node.metadata["GENERATOR"], json!("grpc"));
    assert_eq!(node.metadata["LABELS"]["app"], json!("echo"));
    assert_eq!(
        node.metadata["PROXY_CONFIG"]["proxyMetadata"]["ISTIO_META_DNS_CAPTURE"],
        json!(null)
    );
    assert_eq!(node.metadata["PLATFORM_METADATA"], json!({}));
    // Istio marshals the Go Node struct, which adds a null `UserAgentVersionType`.
    assert!(
        b.unknown_fields()
            .contains(&"node.UserAgentVersionType".to_owned()),
        "{:?}",
        b.unknown_fields()
    );

    let proto = node.to_proto();
    assert_eq!(proto.id, node.id);
    assert!(proto.locality.is_none(), "an empty locality is not sent");
    assert_eq!(proto.user_agent_name, "meshwork");
    let md = proto.metadata.expect("metadata is sent");
    assert_eq!(
        md.fields["GENERATOR"].kind,
        Some(Kind::StringValue("grpc".into()))
    );
    assert_eq!(
        md.fields["ENVOY_STATUS_PORT"].kind,
        Some(Kind::NumberValue(15021.0))
    );
    let Some(Kind::StructValue(proxy_config)) = &md.fields["PROXY_CONFIG"].kind else {
        panic!("PROXY_CONFIG is not a struct");
    };
    let Some(Kind::StructValue(proxy_metadata)) = &proxy_config.fields["proxyMetadata"].kind else {
        panic!("proxyMetadata is not a struct");
    };
    assert_eq!(
        proxy_metadata.fields["ISTIO_META_DNS_CAPTURE"].kind,
        Some(Kind::NullValue(0))
    );

    let provider = b.certificate_provider("default").expect("default provider");
    assert_eq!(provider.plugin_name(), "file_watcher");
    let CertificateProviderConfig::FileWatcher(files) = provider else {
        panic!("not a file watcher: {provider:?}");
    };
    assert_eq!(
        files.certificate_file(),
        Some(Path::new("/var/lib/istio/data/cert-chain.pem"))
    );
    assert_eq!(
        files.private_key_file(),
        Some(Path::new("/var/lib/istio/data/key.pem"))
    );
    assert_eq!(
        files.ca_certificate_file(),
        Some(Path::new("/var/lib/istio/data/root-cert.pem"))
    );
    assert_eq!(files.refresh_interval(), Duration::from_secs(900));

    assert_eq!(
        b.server_listener_resource_name("0.0.0.0:7070".parse().unwrap())
            .unwrap(),
        "xds.istio.io/grpc/lds/inbound/0.0.0.0:7070"
    );
    assert_eq!(
        b.listener_resource_name("xds:///echo.default.svc.cluster.local:7070")
            .unwrap(),
        "echo.default.svc.cluster.local:7070"
    );
    assert_eq!(b.servers_for_authority(None), b.xds_servers());
}

#[test]
fn pyxds_peer_bootstraps() {
    for (file, port) in [
        ("pyxds-bootstrap.json", 18000),
        ("pyxds-bootstrap-gocp.json", 18001),
        ("pyxds-bootstrap-rcp.json", 18004),
        ("pyxds-bootstrap-mtls.json", 18000),
    ] {
        let b = Bootstrap::from_file(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            b.xds_servers()[0].address(),
            &ServerAddress::Tcp {
                host: "127.0.0.1".into(),
                port
            },
            "{file}"
        );
        assert_eq!(b.node().id, "test-id", "{file}");
        assert_eq!(
            b.node().locality.as_ref().map(|l| l.zone.as_str()),
            Some("a"),
            "{file}"
        );
        assert!(
            b.unknown_fields().is_empty(),
            "{file}: {:?}",
            b.unknown_fields()
        );
    }

    let mtls = Bootstrap::from_file(fixture("pyxds-bootstrap-mtls.json")).unwrap();
    let files = mtls
        .certificate_provider("spiffe")
        .and_then(CertificateProviderConfig::as_file_watcher)
        .expect("spiffe file watcher");
    assert_eq!(files.refresh_interval(), Duration::from_secs(60));
    assert_eq!(
        files.certificate_file(),
        Some(Path::new("@PEERS@/pki/client.crt"))
    );
}

#[test]
fn env_lookup_reads_the_named_file() {
    let path = fixture("istio-agent.json");
    let b = Bootstrap::from_env_with(|name| {
        (name == "GRPC_XDS_BOOTSTRAP").then(|| path.clone().into_os_string())
    })
    .unwrap();
    assert_eq!(b, Bootstrap::from_file(&path).unwrap());
}

#[test]
fn missing_file_is_a_typed_error() {
    let path = fixture("does-not-exist.json");
    match Bootstrap::from_file(&path) {
        Err(BootstrapError::Read { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("unexpected {other:?}"),
    }
}
