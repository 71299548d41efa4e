//! Table-driven checks of A36's staged matching, each case a Listener, a connection and the
//! chain grpc-go (and Envoy, where they agree) would pick.

use std::net::SocketAddr;

use meshwork_xds::resource::{
    CidrRange, FilterChain, FilterChainMatch, RouteSource, ServerListener, SourceType,
};

use super::{ChainSelector, Selected};

/// A chain named `name` matching on destination prefixes, source type, source prefixes and
/// source ports (CIDRs written `addr/len`).
fn chain(
    name: &str,
    dst: &[&str],
    source_type: SourceType,
    src: &[&str],
    ports: &[u16],
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_match: FilterChainMatch {
            prefix_ranges: dst.iter().map(|c| cidr(c)).collect(),
            source_type,
            source_prefix_ranges: src.iter().map(|c| cidr(c)).collect(),
            source_ports: ports.to_vec(),
        },
        tls: None,
        route: RouteSource::Rds {
            route_config_name: "r".into(),
        },
        http_filters: vec![],
        max_stream_duration: None,
    }
}

/// As the decoder stores it: IPv4-mapped prefixes as IPv4.
fn cidr(s: &str) -> CidrRange {
    let (addr, len) = s.split_once('/').unwrap();
    let addr: std::net::IpAddr = addr.parse().unwrap();
    CidrRange::new(addr.to_canonical(), len.parse().unwrap()).unwrap()
}

fn listener(chains: Vec<FilterChain>, default: bool) -> ServerListener {
    ServerListener {
        name: "l".into(),
        address: "0.0.0.0:7070".parse().unwrap(),
        default_filter_chain: default.then(|| chain("default", &[], SourceType::Any, &[], &[])),
        filter_chains: chains,
        unsupported_fields: vec![],
    }
}

use SourceType::{Any, External, SameIpOrLoopback as Local};

/// One connection and the chain (by name, `"default"` or `"none"`) it must get.
struct Case {
    what: &'static str,
    local: &'static str,
    remote: &'static str,
    want: &'static str,
}

fn check(l: &ServerListener, cases: &[Case]) {
    let selector = ChainSelector::new(l);
    for c in cases {
        let local: SocketAddr = c.local.parse().unwrap();
        let remote: SocketAddr = c.remote.parse().unwrap();
        let got = match selector.select(local, remote) {
            Selected::Chain(i) => l.filter_chains[i].name.as_str(),
            Selected::Default => "default",
            Selected::NoMatch => "none",
        };
        assert_eq!(got, c.want, "{}: {} -> {}", c.what, c.remote, c.local);
    }
}

macro_rules! cases {
    ($($what:literal: $remote:literal -> $local:literal => $want:literal;)*) => {
        &[$(Case { what: $what, local: $local, remote: $remote, want: $want }),*]
    };
}

#[test]
fn istio_mtls_and_plaintext_chains_by_source_type() {
    let l = listener(
        vec![
            chain("inbound-mtls", &[], External, &[], &[]),
            chain("inbound-plaintext", &[], Local, &[], &[]),
        ],
        false,
    );
    check(
        &l,
        cases![
            "external peer": "10.0.0.9:5000" -> "10.0.0.1:7070" => "inbound-mtls";
            "loopback peer": "127.0.0.1:5000" -> "127.0.0.1:7070" => "inbound-plaintext";
            "other loopback address": "127.0.0.2:5000" -> "10.0.0.1:7070" => "inbound-plaintext";
            "peer on our own address": "10.0.0.1:5000" -> "10.0.0.1:7070" => "inbound-plaintext";
            "IPv6 loopback": "[::1]:5000" -> "[::1]:7070" => "inbound-plaintext";
            "IPv6 external": "[2001:db8::9]:5000" -> "[2001:db8::1]:7070" => "inbound-mtls";
            "IPv4-mapped loopback": "[::ffff:127.0.0.1]:5000" -> "[::ffff:10.0.0.1]:7070" => "inbound-plaintext";
            "IPv4-mapped same IP": "[::ffff:10.0.0.1]:5000" -> "10.0.0.1:7070" => "inbound-plaintext";
            "IPv4-mapped external": "[::ffff:10.0.0.9]:5000" -> "[::ffff:10.0.0.1]:7070" => "inbound-mtls";
        ],
    );
}

#[test]
fn the_longest_destination_prefix_wins_and_no_prefix_is_least_specific() {
    let l = listener(
        vec![
            chain("none", &[], Any, &[], &[]),
            chain("v4-any", &["0.0.0.0/0"], Any, &[], &[]),
            chain("v6-any", &["::/0"], Any, &[], &[]),
            chain("ten", &["10.0.0.0/8"], Any, &[], &[]),
            chain("ten-one", &["10.1.0.0/16", "192.168.0.0/24"], Any, &[], &[]),
            chain("host", &["10.1.2.3/32"], Any, &[], &[]),
            chain("v6-doc", &["2001:db8::/32"], Any, &[], &[]),
            chain("v4-mapped", &["::ffff:172.16.0.0/12"], Any, &[], &[]),
        ],
        true,
    );
    check(
        &l,
        cases![
            "an explicit /0 beats no prefix (v4)": "1.1.1.1:1" -> "8.8.8.8:7070" => "v4-any";
            "an explicit /0 beats no prefix (v6)": "[::2]:1" -> "[fe80::1]:7070" => "v6-any";
            "/8 beats /0": "1.1.1.1:1" -> "10.9.9.9:7070" => "ten";
            "/16 beats /8": "1.1.1.1:1" -> "10.1.9.9:7070" => "ten-one";
            "/32 beats /16": "1.1.1.1:1" -> "10.1.2.3:7070" => "host";
            "a chain's second prefix": "1.1.1.1:1" -> "192.168.0.77:7070" => "ten-one";
            "outside the /24": "1.1.1.1:1" -> "192.168.1.77:7070" => "v4-any";
            "IPv6 prefix": "[::2]:1" -> "[2001:db8:1::1]:7070" => "v6-doc";
            "an IPv4-mapped prefix matches IPv4": "1.1.1.1:1" -> "172.16.3.4:7070" => "v4-mapped";
            "and IPv4-mapped addresses": "1.1.1.1:1" -> "[::ffff:172.16.3.4]:7070" => "v4-mapped";
            "an IPv4-mapped local address is IPv4": "1.1.1.1:1" -> "[::ffff:10.1.2.3]:7070" => "host";
        ],
    );

    // Without explicit /0 chains, the chain without prefixes takes both families.
    let l = listener(
        vec![
            chain("none", &[], Any, &[], &[]),
            chain("ten", &["10.0.0.0/8"], Any, &[], &[]),
        ],
        false,
    );
    check(
        &l,
        cases![
            "v4 outside": "1.1.1.1:1" -> "11.0.0.1:7070" => "none";
            "v6": "[::2]:1" -> "[2001:db8::1]:7070" => "none";
            "v4 inside": "1.1.1.1:1" -> "10.0.0.1:7070" => "ten";
        ],
    );
}

#[test]
fn an_unmatched_destination_goes_to_the_default_chain_or_nowhere() {
    let chains = || {
        vec![
            chain("ten", &["10.0.0.0/8"], Any, &[], &[]),
            chain("v4-any", &["0.0.0.0/0"], External, &[], &[]),
        ]
    };
    let cases = |fallback| {
        [
            Case {
                what: "an IPv4 /0 does not hold IPv6",
                local: "[2001:db8::1]:7070",
                remote: "[2001:db8::2]:1",
                want: fallback,
            },
            Case {
                what: "matched",
                local: "10.0.0.1:7070",
                remote: "10.0.0.2:1",
                want: "ten",
            },
        ]
    };
    check(&listener(chains(), true), &cases("default"));
    check(&listener(chains(), false), &cases("none"));
    check(&listener(vec![], true), &cases("default")[..1]);
}

#[test]
fn a_specific_source_type_beats_any_without_backtracking() {
    let l = listener(
        vec![
            chain("any", &["10.0.0.0/8"], Any, &[], &[]),
            chain(
                "external",
                &["10.0.0.0/8"],
                External,
                &["192.168.0.0/16"],
                &[],
            ),
            chain("wide-local", &[], Local, &[], &[]),
        ],
        true,
    );
    check(
        &l,
        cases![
            "loopback: no Local chain on 10/8, so Any": "127.0.0.1:1" -> "10.0.0.1:7070" => "any";
            "external in 192.168/16": "192.168.1.1:1" -> "10.0.0.1:7070" => "external";
            // The External chain is the most specific type on 10/8; its source prefix
            // fails, and matching does not fall back to the Any chain.
            "external outside 192.168/16": "172.16.0.1:1" -> "10.0.0.1:7070" => "default";
            // 10/8 is the most specific destination; the wider Local chain is not looked at.
            "same IP on 10/8": "10.0.0.1:1" -> "10.0.0.1:7070" => "any";
            "loopback elsewhere": "127.0.0.1:1" -> "127.0.0.1:7070" => "wide-local";
            "external elsewhere": "1.1.1.1:1" -> "11.0.0.1:7070" => "default";
        ],
    );
}

#[test]
fn the_longest_source_prefix_wins_then_exact_ports() {
    let l = listener(
        vec![
            chain("no-src", &[], Any, &[], &[]),
            chain("src-any-v4", &[], Any, &["0.0.0.0/0"], &[]),
            chain("src-16", &[], Any, &["172.16.0.0/16"], &[]),
            chain("src-16-ports", &[], Any, &["172.16.0.0/16"], &[80, 443]),
            chain(
                "src-24-ports",
                &[],
                Any,
                &["172.16.5.0/24", "2001:db8::/48"],
                &[8080],
            ),
            chain("src-v6-host", &[], Any, &["2001:db8::7/128"], &[]),
        ],
        true,
    );
    check(
        &l,
        cases![
            "an explicit /0 beats no source prefix": "8.8.8.8:1" -> "10.0.0.1:7070" => "src-any-v4";
            "IPv6 outside every source prefix": "[2001:db9::1]:1" -> "[::1]:7070" => "no-src";
            "/16, port not listed": "172.16.1.1:1" -> "10.0.0.1:7070" => "src-16";
            "/16, a listed port beats no list": "172.16.1.1:443" -> "10.0.0.1:7070" => "src-16-ports";
            "/16, the other listed port": "172.16.1.1:80" -> "10.0.0.1:7070" => "src-16-ports";
            "/24 listed port": "172.16.5.1:8080" -> "10.0.0.1:7070" => "src-24-ports";
            // The /24 is the most specific source prefix; its only chain lists ports,
            // and the /16 chains are not looked at.
            "/24, port not listed": "172.16.5.1:443" -> "10.0.0.1:7070" => "default";
            "IPv6 /48 listed port": "[2001:db8::9]:8080" -> "[::1]:7070" => "src-24-ports";
            "IPv6 /128 beats /48": "[2001:db8::7]:8080" -> "[::1]:7070" => "src-v6-host";
            "IPv4-mapped source": "[::ffff:172.16.1.1]:443" -> "10.0.0.1:7070" => "src-16-ports";
        ],
    );
}

#[test]
fn stages_compose_per_destination() {
    // Two destinations, each with its own source-type, source-prefix and port layout.
    let l = listener(
        vec![
            chain("a-local", &["10.0.0.0/24"], Local, &[], &[]),
            chain("a-ext-port", &["10.0.0.0/24"], External, &[], &[9000]),
            chain("a-ext", &["10.0.0.0/24"], External, &[], &[]),
            chain("b-any-src", &["10.0.1.0/24"], Any, &["10.0.0.0/8"], &[]),
            chain("b-any", &["10.0.1.0/24"], Any, &[], &[]),
        ],
        false,
    );
    check(
        &l,
        cases![
            "a: loopback": "127.0.0.1:9000" -> "10.0.0.1:7070" => "a-local";
            "a: external listed port": "1.2.3.4:9000" -> "10.0.0.1:7070" => "a-ext-port";
            "a: external other port": "1.2.3.4:9001" -> "10.0.0.1:7070" => "a-ext";
            "b: source in 10/8": "10.9.9.9:1" -> "10.0.1.1:7070" => "b-any-src";
            "b: loopback has no source prefix chain": "127.0.0.1:1" -> "10.0.1.1:7070" => "b-any";
            "neither": "10.9.9.9:1" -> "10.0.2.1:7070" => "none";
        ],
    );
}

#[test]
fn duplicate_criteria_in_a_hand_built_listener_pick_the_earlier_chain() {
    let l = listener(
        vec![
            chain("first", &["10.0.0.0/8"], Any, &[], &[1, 2]),
            chain("second", &["10.0.0.0/8"], Any, &[], &[2, 3]),
            chain("third", &["10.0.0.0/8"], Any, &[], &[]),
            chain("fourth", &["10.0.0.0/8"], Any, &[], &[]),
        ],
        false,
    );
    check(
        &l,
        cases![
            "port 2": "1.1.1.1:2" -> "10.0.0.1:7070" => "first";
            "port 3": "1.1.1.1:3" -> "10.0.0.1:7070" => "second";
            "no port": "1.1.1.1:4" -> "10.0.0.1:7070" => "third";
        ],
    );
}
