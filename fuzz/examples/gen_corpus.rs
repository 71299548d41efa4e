//! Writes the seed corpora under `corpus/<target>/` from the test fixtures: protos built
//! with `meshwork_xds::server::build` (what the tests send), the bootstrap JSONs of
//! `xds-client/tests/data/bootstrap`, the PEMs in `fixtures/`, and small operation programs
//! for the stateful targets. Run from `fuzz/`: `cargo run --example gen_corpus`. Seeds are
//! named by content, so running it again changes nothing.
#![forbid(unsafe_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::service::discovery::v3::Resource as Wrapper;
use envoy_types::pb::google::protobuf::Any;
use meshwork_fuzz::{Writer, fixtures_dir};
use meshwork_xds::resource::{RESOURCE_WRAPPER_TYPE_URL, UpstreamProtocol};
use meshwork_xds::server::build;
use prost::Message;

fn corpus(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    dir
}

/// Writes `bytes` as `seed-<hash>` so identical seeds collapse.
fn seed(dir: &Path, bytes: &[u8]) {
    // FNV-1a: stable across runs and platforms, enough to name a few dozen files.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    fs::write(dir.join(format!("seed-{hash:016x}")), bytes).expect("write seed");
}

fn fixture(name: &str) -> Vec<u8> {
    fs::read(fixtures_dir().join(name)).expect("read fixture")
}

fn pem_to_der(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .map(|c| c.expect("fixture PEM").to_vec())
        .collect()
}

fn xds_resource() {
    let dir = corpus("xds_resource");
    let addr: SocketAddr = ([127, 0, 0, 1], 50051).into();
    let addr6: SocketAddr = "[::1]:8080".parse().expect("addr");
    let mut anys: Vec<(u8, Any)> = vec![
        (
            0,
            build::pack(&build::api_listener("greeter:50051", "route-1")),
        ),
        (
            0,
            build::pack(&build::api_listener_inline(
                "greeter:50051",
                build::route_config(
                    "inline",
                    vec![build::virtual_host(
                        "vh",
                        ["*"],
                        vec![build::route_to("/", "cluster-a")],
                    )],
                ),
            )),
        ),
        (
            1,
            build::pack(&build::route_config(
                "route-1",
                vec![
                    build::virtual_host(
                        "greeter",
                        ["greeter", "greeter:50051"],
                        vec![
                            build::route_on_header("x-canary", "1", "cluster-b"),
                            build::route_weighted(
                                "/helloworld.Greeter/",
                                &[("cluster-a", 80), ("cluster-b", 20)],
                            ),
                            build::route_to("/", "cluster-a"),
                        ],
                    ),
                    build::virtual_host("fallback", ["*"], vec![build::route_to("", "c")]),
                ],
            )),
        ),
        (2, build::pack(&build::eds_cluster("cluster-a"))),
        (
            2,
            build::pack(&build::with_upstream_tls(
                build::eds_cluster("cluster-b"),
                "default",
                &["spiffe://example.org/ns/default/sa/greeter"],
            )),
        ),
        (
            2,
            build::pack(&build::with_http_protocol(
                build::eds_cluster("cluster-c"),
                UpstreamProtocol::Http1,
            )),
        ),
        (
            2,
            build::pack(&build::with_http_protocol(
                build::eds_cluster("cluster-d"),
                UpstreamProtocol::Auto,
            )),
        ),
        (
            3,
            build::pack(&build::endpoints("cluster-a", &[addr, addr6])),
        ),
        (
            3,
            build::pack(
                &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                    cluster_name: "cluster-b".into(),
                    endpoints: vec![
                        build::locality_endpoints(
                            Locality {
                                region: "r1".into(),
                                zone: "z1".into(),
                                ..Default::default()
                            },
                            3,
                            0,
                            &[addr],
                        ),
                        build::locality_endpoints(Locality::default(), 1, 1, &[addr6]),
                    ],
                    ..Default::default()
                },
            ),
        ),
    ];
    anys.extend(server_side_seeds());
    for (ty, any) in &anys {
        seed(&dir, &[&[*ty][..], &any.value].concat());
        let wrapper = Wrapper {
            name: String::new(),
            resource: Some(any.clone()),
            ..Default::default()
        };
        seed(&dir, &[&[*ty | 4][..], &wrapper.encode_to_vec()].concat());
    }
    assert_eq!(
        RESOURCE_WRAPPER_TYPE_URL,
        "type.googleapis.com/envoy.service.discovery.v3.Resource"
    );
}

/// Server-side LDS and RDS (gRFC A36, A41): Istio's inbound listener shape, with an mTLS
/// chain and a plaintext one, RBAC filters and the router; and a route configuration with
/// RBACPerRoute overrides, bare and in a `FilterConfig`.
fn server_side_seeds() -> Vec<(u8, Any)> {
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
    use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
    use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
    use envoy_types::pb::envoy::config::route::v3 as route_pb;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
    use envoy_types::pb::google::protobuf::BoolValue;

    let principal = rbac_pb::Principal {
        identifier: Some(rbac_pb::principal::Identifier::Authenticated(
            rbac_pb::principal::Authenticated {
                principal_name: Some(matcher_pb::StringMatcher {
                    match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                        "spiffe://cluster.local/ns/default/sa/client".into(),
                    )),
                    ignore_case: false,
                }),
            },
        )),
    };
    let rbac = |action: rbac_pb::rbac::Action| filter_pb::Rbac {
        rules: Some(rbac_pb::Rbac {
            action: action as i32,
            policies: [(
                "ns[default]-policy[allow-client]-rule[0]".to_owned(),
                rbac_pb::Policy {
                    permissions: vec![rbac_pb::Permission {
                        rule: Some(rbac_pb::permission::Rule::Any(true)),
                    }],
                    principals: vec![principal.clone()],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let filter = |name: &str, config: Any| hcm_pb::HttpFilter {
        name: name.into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    let routes = build::route_config(
        "inbound|7070||",
        vec![build::virtual_host(
            "inbound|http|7070",
            ["*"],
            vec![route_pb::Route {
                r#match: Some(route_pb::RouteMatch {
                    path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route_pb::route::Action::NonForwardingAction(
                    route_pb::NonForwardingAction {},
                )),
                typed_per_filter_config: [
                    (
                        "envoy.filters.http.rbac.ALLOW".to_owned(),
                        build::pack(&filter_pb::RbacPerRoute {
                            rbac: Some(rbac(rbac_pb::rbac::Action::Allow)),
                        }),
                    ),
                    (
                        "envoy.filters.http.rbac.DENY".to_owned(),
                        build::pack(&route_pb::FilterConfig {
                            config: Some(build::pack(&filter_pb::RbacPerRoute::default())),
                            is_optional: true,
                            disabled: false,
                        }),
                    ),
                ]
                .into(),
                ..Default::default()
            }],
        )],
    );
    let hcm = hcm_pb::HttpConnectionManager {
        route_specifier: Some(
            hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(routes.clone()),
        ),
        http_filters: vec![
            filter(
                "envoy.filters.http.rbac.DENY",
                build::pack(&rbac(rbac_pb::rbac::Action::Deny)),
            ),
            filter(
                "envoy.filters.http.rbac.ALLOW",
                build::pack(&rbac(rbac_pb::rbac::Action::Allow)),
            ),
            filter(
                "envoy.filters.http.router",
                Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        .into(),
                    value: vec![],
                },
            ),
        ],
        ..Default::default()
    };
    let provider = |cert: &str| {
        Some(tls_pb::CertificateProviderPluginInstance {
            instance_name: "default".into(),
            certificate_name: cert.into(),
        })
    };
    let tls = tls_pb::DownstreamTlsContext {
        common_tls_context: Some(tls_pb::CommonTlsContext {
            tls_certificate_provider_instance: provider("default"),
            validation_context_type: Some(
                tls_pb::common_tls_context::ValidationContextType::ValidationContext(
                    tls_pb::CertificateValidationContext {
                        ca_certificate_provider_instance: provider("ROOTCA"),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    let chain = |name: &str, source_type: listener_pb::filter_chain_match::ConnectionSourceType| {
        listener_pb::FilterChain {
            name: name.into(),
            filter_chain_match: Some(listener_pb::FilterChainMatch {
                source_type: source_type as i32,
                ..Default::default()
            }),
            filters: vec![listener_pb::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener_pb::filter::ConfigType::TypedConfig(build::pack(
                    &hcm,
                ))),
            }],
            ..Default::default()
        }
    };
    use listener_pb::filter_chain_match::ConnectionSourceType;
    let mut mtls = chain("inbound-mtls", ConnectionSourceType::External);
    mtls.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(build::pack(&tls))),
    });
    let listener = listener_pb::Listener {
        name: "xds.istio.io/grpc/lds/inbound/0.0.0.0:7070".into(),
        address: Some(build::socket_address(([0, 0, 0, 0], 7070).into())),
        filter_chains: vec![
            mtls,
            chain("inbound-plaintext", ConnectionSourceType::SameIpOrLoopback),
        ],
        ..Default::default()
    };
    let mut with_default = listener.clone();
    with_default.filter_chains.truncate(1);
    with_default.default_filter_chain = Some(chain("default", ConnectionSourceType::Any));
    vec![
        (0, build::pack(&listener)),
        (0, build::pack(&with_default)),
        (1, build::pack(&routes)),
    ]
}

fn bootstrap() {
    let dir = corpus("bootstrap");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xds-client/tests/data/bootstrap");
    for entry in fs::read_dir(data).expect("bootstrap fixtures") {
        let json = fs::read(entry.expect("entry").path()).expect("read");
        seed(&dir, &json);
        seed(
            &dir,
            &[
                &json[..],
                b"\0xds://auth.example/greeter\0xdstp://auth.example/x/y",
            ]
            .concat(),
        );
    }
    let authorities = br#"{
  "xds_servers": [{"server_uri": "localhost:15010", "channel_creds": [{"type": "insecure"}],
                   "server_features": ["xds_v3", "ignore_resource_deletion"]}],
  "node": {"id": "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", "locality": {"zone": "z"}},
  "authorities": {
    "auth.example": {
      "client_listener_resource_name_template": "xdstp://auth.example/envoy.config.listener.v3.Listener/%s",
      "xds_servers": [{"server_uri": "dns:///cp:443", "channel_creds": [{"type": "tls", "config": {}}]}]
    },
    "": {}
  },
  "client_default_listener_resource_name_template": "xdstp://auth.example/envoy.config.listener.v3.Listener/%s",
  "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
  "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
    "certificate_file": "/c.pem", "private_key_file": "/k.pem", "ca_certificate_file": "/ca.pem",
    "spiffe_trust_bundle_map_file": "/b.json", "refresh_interval": "600s"}}}
}"#;
    seed(&dir, authorities);
    seed(
        &dir,
        &[&authorities[..], b"\0xds:///a%2Fb?x\0xdstp:///"].concat(),
    );
}

fn ads_state() {
    let dir = corpus("ads_state");
    const LDS: u8 = 0;
    const RDS: u8 = 1 << 4;
    const CDS: u8 = 2 << 4;
    const EDS: u8 = 3 << 4;
    // Names: 0 "a", 1 "b", 2 "c", 3 "*".
    let subscribe = |w: &mut Writer, ty: u8, name: u8| {
        w.u8(ty).u8(name);
    };
    // A response of one valid built resource (kind 3) named `name` pointing at `other`.
    let response = |w: &mut Writer, ty: u8, version: &[u8], nonce: u16, name: u8, other: u8| {
        w.u8(ty | 5).u8(0).u8(0).bytes(version).u16(nonce).u8(1);
        w.u8(3).u8(name).u8(other).u16(50051);
        w.u8(0);
    };
    let time = |w: &mut Writer, step: u16| {
        w.u8(7).u16(step);
    };

    // The happy path LDS -> RDS -> CDS -> EDS, then a restart of the stream.
    let mut w = Writer::new();
    w.u8(0).u8(14);
    subscribe(&mut w, LDS, 0);
    w.u8(3);
    response(&mut w, LDS, b"1", 1, 0, 1);
    subscribe(&mut w, RDS, 1);
    response(&mut w, RDS, b"1", 2, 1, 2);
    subscribe(&mut w, CDS, 2);
    response(&mut w, CDS, b"1", 3, 2, 2);
    subscribe(&mut w, EDS, 2);
    response(&mut w, EDS, b"1", 4, 2, 2);
    time(&mut w, 2000);
    w.u8(4).u8(3);
    response(&mut w, LDS, b"2", 5, 0, 1);
    seed(&dir, &w.finish());

    // Nothing answers: the does-not-exist timer fires; then a NACK of raw bytes.
    let mut w = Writer::new();
    w.u8(2).u8(1);
    subscribe(&mut w, CDS, 0);
    subscribe(&mut w, CDS, 1);
    w.u8(3);
    time(&mut w, 4000);
    w.u8(CDS | 5).u8(0).u8(0).bytes(b"v9").u16(7).u8(2);
    w.u8(0).u8(0).u8(0).u16(0).bytes(b"\x0a\x01a\xff\xff");
    w.u8(7).u8(1).u8(1).u16(1).bytes(b"\x00\x10\x08");
    w.u8(2).u8(1).u8(0x05);
    seed(&dir, &w.finish());

    // Wildcards, a wrapper, an unknown type and a response from an old stream.
    let mut w = Writer::new();
    w.u8(1).u8(31);
    w.u8(LDS | 2);
    subscribe(&mut w, CDS, 3);
    w.u8(3);
    response(&mut w, LDS, b"a", 1, 4, 1);
    w.u8(LDS | 5)
        .u8(0)
        .u8(0xFF)
        .bytes(b"type.googleapis.com/x.Y")
        .bytes(b"")
        .u16(2)
        .u8(0)
        .u8(0);
    w.u8(CDS | 5)
        .u8(0)
        .u8(0)
        .bytes(b"b")
        .u16(3)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(0)
        .u16(0)
        .bytes(b"");
    w.u8(3);
    w.u8(CDS | 5).u8(0xFF).u8(0).bytes(b"c").u16(4).u8(0).u8(0);
    subscribe(&mut w, LDS, 3);
    w.u8(LDS | 1).u8(3);
    seed(&dir, &w.finish());
}

fn identity() {
    let dir = corpus("identity");
    let leaf = fixture("leaf.pem");
    let key = fixture("leaf.key");
    let root = fixture("root.pem");
    let mut w = Writer::new();
    seed(&dir, &w.u8(0).bytes(&leaf).raw(&key).finish());
    let chain_pem = [fixture("leaf2.pem"), fixture("inter.pem")].concat();
    seed(
        &dir,
        &w.u8(0)
            .bytes(&chain_pem)
            .raw(&fixture("leaf2.key"))
            .finish(),
    );
    seed(&dir, &w.u8(1).raw(&root).finish());
    seed(
        &dir,
        &w.u8(1)
            .raw(&[root.clone(), fixture("inter.pem")].concat())
            .finish(),
    );
    // The bundle map's x5c is the DER in base64, which is the PEM body.
    let b64: String = String::from_utf8(root.clone())
        .expect("PEM is text")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let map = format!(
        r#"{{"trust_domains": {{"fuzz.example": {{"spiffe_sequence": 1, "keys": [
            {{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["{b64}"]}},
            {{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256", "x": "AA", "y": "AA"}}]}},
           "other.example": {{"keys": []}}}}}}"#
    );
    seed(&dir, &w.u8(2).raw(map.as_bytes()).finish());
    let der = |name: &str| pem_to_der(&fixture(name)).remove(0);
    let chains: [&[&str]; 6] = [
        &["leaf.pem"],
        &["leaf2.pem", "inter.pem"],
        &["leaf.pem", "inter.pem", "root.pem"],
        &["rogueleaf.pem"],
        &["rogueleaf.pem", "rogue.pem"],
        &["inter.pem"],
    ];
    for chain in chains {
        for as_server in [0u8, 1] {
            w.u8(3).u8(as_server);
            for name in chain {
                w.bytes(&der(name));
            }
            seed(&dir, &w.finish());
        }
    }
}

fn authz_policy() {
    let dir = corpus("authz_policy");
    // Pools (see the target): services 0 helloworld.Greeter, methods 0 SayHello; paths 0
    // /helloworld.Greeter/SayHello, 1 /admin; content types 0 application/grpc, 3
    // Application/grpc, 4 application/octet-stream, 7 none.
    let mut w = Writer::new();
    for (path, ct) in [
        (&b"/helloworld.Greeter/SayHello"[..], 0u8),
        (b"/helloworld.Greeter/SayHello", 4),
        (b"/helloworld.Greeter/SayHello", 3),
        (b"//helloworld.Greeter/SayHello", 0),
        (b"/helloworld.Greeter/./SayHello", 0),
        (b"/helloworld.Greeter/%53ayHello", 0),
        (b"http://host/helloworld.Greeter/SayHello?x=1", 0),
        (b"/admin/../admin", 7),
        (b"/%61dmin", 7),
    ] {
        // allow: one rule, any; deny: one rule, no principal, one operation.
        w.u8(1).u8(0).u8(0);
        w.u8(1).u8(0).u8(1);
        let deny_path = path.starts_with(b"/admin") || path.starts_with(b"/%61");
        if deny_path {
            w.u8(3).u8(1);
        } else {
            w.u8(1).u8(0).u8(0);
        }
        w.u8(0)
            .u8(0xC0)
            .bytes(path)
            .u8(ct)
            .bytes(b"te")
            .bytes(b"trailers");
        w.u8(1).u8(0);
        seed(&dir, &w.finish());
    }
    // Principals: allow the trust domain, deny one ID.
    w.u8(1).u8(1).u8(3).u8(0).u8(0);
    w.u8(1).u8(1).u8(2).u8(1).u8(0);
    w.u8(1).u8(0).u8(0).bytes(b"").bytes(b"").u8(1).u8(1);
    seed(&dir, &w.finish());
}

/// Seeds for `snapshot_file`: a whole file (mode 0), its body to be framed (mode 1), and the
/// file cut short.
fn snapshot_file() {
    use meshwork_xds::fail_static::fuzzing;
    let dir = corpus("snapshot_file");
    let listener = build::pack(&build::api_listener("greeter:50051", "route-1"));
    let cluster = build::pack(&build::eds_cluster("greeter"));
    let file = fuzzing::sample(&[
        (&listener.type_url, "greeter:50051", "1", &listener.value),
        (&cluster.type_url, "greeter", "1", &cluster.value),
    ]);
    let empty = fuzzing::sample(&[]);
    for file in [&file, &empty] {
        seed(&dir, &[&[0], &file[..]].concat());
        // The body alone: magic and version (6 bytes) and the trailer (40) off.
        seed(&dir, &[&[1], &file[6..file.len() - 40]].concat());
    }
    seed(&dir, &[&[0], &file[..file.len() / 2]].concat());
}

fn main() {
    xds_resource();
    bootstrap();
    ads_state();
    identity();
    authz_policy();
    snapshot_file();
}
