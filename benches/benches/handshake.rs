//! A full mTLS handshake (TLS 1.3, ECDSA P-256, no resumption) with meshwork's SPIFFE
//! verifier and SVID resolvers, against the same handshake with plain rustls and webpki
//! verification (root store, host name check). In memory, so only the TLS work is timed.
//! Prints the ratio meshwork / plain at the end; the target is at most 1.1.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use meshwork_core::identity::testing::{Flaw, TestCa};
use meshwork_core::identity::{Authorizer, MtlsConfig, StaticSource};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use rustls_pki_types::ServerName;

struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn meshwork_configs(ca: &TestCa) -> Configs {
    let server = Arc::new(StaticSource::new(
        Some(ca.svid("/ns/default/sa/server")),
        ca.bundles(),
    ));
    let client = Arc::new(StaticSource::new(
        Some(ca.svid("/ns/default/sa/client")),
        ca.bundles(),
    ));
    Configs {
        client: Arc::new(
            MtlsConfig::new(client)
                .authorizer(Authorizer::Exact(
                    "spiffe://example.org/ns/default/sa/server".parse().unwrap(),
                ))
                .client_config()
                .unwrap(),
        ),
        server: Arc::new(
            MtlsConfig::new(server)
                .authorizer(Authorizer::Exact(
                    "spiffe://example.org/ns/default/sa/client".parse().unwrap(),
                ))
                .server_config()
                .unwrap(),
        ),
    }
}

fn plain_configs(ca: &TestCa) -> Configs {
    let provider = meshwork_core::crypto::provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.root()).unwrap();
    let roots = Arc::new(roots);
    let server_svid = ca.mint_with_dns_names("/ns/default/sa/server", Flaw::None, &["server.mesh"]);
    let client_svid = ca.mint("/ns/default/sa/client", Flaw::None);
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_svid.chain(), server_svid.key())
        .unwrap();
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(client_svid.chain(), client_svid.key())
        .unwrap();
    client.resumption = rustls::client::Resumption::disabled();
    Configs {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

fn transfer(from: &mut Connection, to: &mut Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    to.process_new_packets().unwrap();
}

fn handshake(c: &Configs) {
    let name = ServerName::try_from("server.mesh").unwrap();
    let mut client = Connection::Client(ClientConnection::new(c.client.clone(), name).unwrap());
    let mut server = Connection::Server(ServerConnection::new(c.server.clone()).unwrap());
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
    black_box((&client, &server));
}

fn bench(c: &mut Criterion) {
    let ca = TestCa::new("example.org");
    let mesh = meshwork_configs(&ca);
    let plain = plain_configs(&ca);
    let mut g = c.benchmark_group("mtls_handshake");
    g.bench_function("meshwork_spiffe", |b| b.iter(|| handshake(&mesh)));
    g.bench_function("rustls_webpki", |b| b.iter(|| handshake(&plain)));
    g.finish();
}

/// Interleaved timing of both, to print one ratio that does not depend on reading reports.
fn ratio() {
    let ca = TestCa::new("example.org");
    let mesh = meshwork_configs(&ca);
    let plain = plain_configs(&ca);
    let (mut t_mesh, mut t_plain) = (0u128, 0u128);
    for _ in 0..20 {
        handshake(&mesh);
        handshake(&plain);
    }
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..50 {
            handshake(&mesh);
        }
        t_mesh += t.elapsed().as_nanos();
        let t = Instant::now();
        for _ in 0..50 {
            handshake(&plain);
        }
        t_plain += t.elapsed().as_nanos();
    }
    let r = t_mesh as f64 / t_plain as f64;
    println!(
        "mtls_handshake ratio meshwork/plain = {r:.3} (meshwork {:.1} us, plain {:.1} us per handshake; target <= 1.1)",
        t_mesh as f64 / 500_000.0,
        t_plain as f64 / 500_000.0
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    ratio();
    Criterion::default().configure_from_args().final_summary();
}
