use std::collections::HashMap;
use std::time::Duration;

use meshwork_xds::resource::{Endpoint, HealthStatus, Locality, LocalityEndpoints};

use super::*;

pub(crate) fn endpoint(i: u32, weight: u32, health: HealthStatus) -> Endpoint {
    Endpoint {
        address: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 8080)),
        additional_addresses: Vec::new(),
        health,
        weight,
        hostname: None,
        hash_key: None,
    }
}

pub(crate) fn locality(
    zone: &str,
    weight: u32,
    priority: u32,
    endpoints: Vec<Endpoint>,
) -> LocalityEndpoints {
    LocalityEndpoints {
        locality: Locality {
            region: "r".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        },
        weight,
        priority,
        endpoints,
    }
}

pub(crate) fn cla(localities: Vec<LocalityEndpoints>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "c".into(),
        localities,
        drop_overloads: Vec::new(),
        unsupported_fields: Vec::new(),
    }
}

fn build(cla: &ClusterLoadAssignment, policy: BalancePolicy) -> Table<()> {
    Table::build(cla, &policy, |_| Arc::new(super::Endpoint::new(None))).unwrap()
}

fn counts(t: &Table<()>, picks: usize, seed: u64) -> HashMap<SocketAddr, usize> {
    let rng = SharedRng::new(seed);
    let mut out = HashMap::new();
    for _ in 0..picks {
        let input = PickInput {
            hash: None,
            rng: &rng,
        };
        let i = t.pick(&input, |s| s.healthy).expect("a pick");
        *out.entry(t.slots[i].address).or_default() += 1;
    }
    out
}

fn share(c: &HashMap<SocketAddr, usize>, i: u32, total: usize) -> f64 {
    let a = endpoint(i, 1, HealthStatus::Healthy).address;
    c.get(&a).copied().unwrap_or(0) as f64 * 100.0 / total as f64
}

#[test]
fn priority_loads_follow_envoy() {
    assert_eq!(priority_loads(&[100, 100]), vec![100, 0]);
    // Half of P0 healthy: 1.4 × 50 = 70 % stays, 30 % spills.
    assert_eq!(priority_loads(&[70, 100]), vec![70, 30]);
    assert_eq!(priority_loads(&[0, 100]), vec![0, 100]);
    // Total health under 100 is normalised: a lone half-healthy priority takes everything.
    assert_eq!(priority_loads(&[70]), vec![100]);
    assert_eq!(priority_loads(&[35, 35]), vec![50, 50]);
    // Nothing healthy anywhere: all to P0.
    assert_eq!(priority_loads(&[0, 0]), vec![100, 0]);
    assert_eq!(priority_loads(&[]), Vec::<u32>::new());
}

#[test]
fn failover_to_the_next_priority_and_back() {
    let healthy = |i| endpoint(i, 1, HealthStatus::Healthy);
    let down = |i| endpoint(i, 1, HealthStatus::Unhealthy);
    // P0: 1 of 4 healthy → health 35; P1 all healthy.
    let c = cla(vec![
        locality("a", 1, 0, vec![healthy(0), down(1), down(2), down(3)]),
        locality("b", 1, 1, vec![healthy(4), healthy(5)]),
    ]);
    let t = build(&c, BalancePolicy::RoundRobin);
    assert_eq!(t.loads(), &[35, 65]);
    let n = 100_000;
    let got = counts(&t, n, 1);
    assert!((share(&got, 0, n) - 35.0).abs() < 2.0, "{got:?}");
    assert_eq!(
        share(&got, 1, n),
        0.0,
        "unhealthy endpoints never get picked"
    );
    // Recovery: all of P0 healthy again takes everything back.
    let c = cla(vec![
        locality("a", 1, 0, (0..4).map(healthy).collect()),
        locality("b", 1, 1, vec![healthy(4), healthy(5)]),
    ]);
    let t = build(&c, BalancePolicy::RoundRobin);
    assert_eq!(t.loads(), &[100, 0]);
    let got = counts(&t, 1000, 1);
    assert_eq!(share(&got, 4, 1000) + share(&got, 5, 1000), 0.0);
}

#[test]
fn weighted_split_by_locality_and_endpoint_weights() {
    // Locality a (weight 1): endpoints weighted 1 and 3; locality b (weight 3): one endpoint.
    // Expected: a0 = 1/4 × 1/4 = 6.25 %, a1 = 18.75 %, b = 75 %.
    let c = cla(vec![
        locality(
            "a",
            1,
            0,
            vec![
                endpoint(0, 1, HealthStatus::Healthy),
                endpoint(1, 3, HealthStatus::Unknown),
            ],
        ),
        locality("b", 3, 0, vec![endpoint(2, 1, HealthStatus::Healthy)]),
    ]);
    for policy in [
        BalancePolicy::RoundRobin,
        BalancePolicy::P2cPeakEwma,
        BalancePolicy::LeastRequest { choice_count: 2 },
    ] {
        let t = build(&c, policy.clone());
        let n = 100_000;
        let got = counts(&t, n, 42);
        let b = share(&got, 2, n);
        assert!((b - 75.0).abs() < 2.0, "{policy:?}: {got:?}");
        if policy == BalancePolicy::RoundRobin {
            assert!((share(&got, 0, n) - 6.25).abs() < 2.0, "{got:?}");
            assert!((share(&got, 1, n) - 18.75).abs() < 2.0, "{got:?}");
        }
    }
}

#[test]
fn round_robin_equal_weights_cycles_and_skips_unusable() {
    let c = cla(vec![locality(
        "a",
        1,
        0,
        (0..3)
            .map(|i| endpoint(i, 1, HealthStatus::Healthy))
            .collect(),
    )]);
    let t = build(&c, BalancePolicy::RoundRobin);
    let rng = SharedRng::new(0);
    let input = PickInput {
        hash: None,
        rng: &rng,
    };
    let seq: Vec<_> = (0..6).map(|_| t.pick(&input, |_| true).unwrap()).collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    let seq: Vec<_> = (0..4)
        .map(|_| t.pick(&input, |s| s.address != t_addr(1)).unwrap())
        .collect();
    assert_eq!(seq, vec![0, 2, 0, 2]);
    assert_eq!(t.pick(&input, |_| false), None);
}

fn t_addr(i: u32) -> SocketAddr {
    endpoint(i, 1, HealthStatus::Healthy).address
}

#[tokio::test(start_paused = true)]
async fn p2c_sends_less_traffic_to_a_slower_endpoint() {
    let c = cla(vec![locality(
        "a",
        1,
        0,
        (0..4)
            .map(|i| endpoint(i, 1, HealthStatus::Healthy))
            .collect(),
    )]);
    let t = build(&c, BalancePolicy::P2cPeakEwma);
    let rng = SharedRng::new(9);
    let mut got = [0usize; 4];
    let n = 20_000;
    for _ in 0..n {
        let input = PickInput {
            hash: None,
            rng: &rng,
        };
        let i = t.pick(&input, |_| true).unwrap();
        got[i] += 1;
        // Endpoint 3 takes 50 ms, the others 5 ms.
        let rtt = if i == 3 { 50 } else { 5 };
        t.slots[i].endpoint.load.observe(Duration::from_millis(rtt));
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let slow = got[3] as f64 / n as f64;
    assert!(
        slow < 0.10,
        "the slow endpoint got {slow} of the traffic: {got:?}"
    );
    assert!(got[3] > 0, "but it is still probed");
}

#[test]
fn p2c_prefers_fewer_in_flight_at_equal_latency() {
    let c = cla(vec![locality(
        "a",
        1,
        0,
        (0..2)
            .map(|i| endpoint(i, 1, HealthStatus::Healthy))
            .collect(),
    )]);
    let t = build(&c, BalancePolicy::P2cPeakEwma);
    for _ in 0..5 {
        t.slots[0].endpoint.load.start();
    }
    let got = counts(&t, 100, 3);
    assert_eq!(share(&got, 1, 100), 100.0);
}

#[test]
fn least_request_picks_the_least_loaded_of_its_choices() {
    let c = cla(vec![locality(
        "a",
        1,
        0,
        (0..10)
            .map(|i| endpoint(i, 1, HealthStatus::Healthy))
            .collect(),
    )]);
    let t = build(&c, BalancePolicy::LeastRequest { choice_count: 10 });
    for i in 0..9 {
        t.slots[i].endpoint.load.start();
    }
    let n = 10_000;
    let got = counts(&t, n, 5);
    // With 10 samples of 10, the idle endpoint is among them ~65 % of the time.
    let idle = share(&got, 9, n);
    assert!((idle - 65.1).abs() < 2.0, "{idle}");
}

#[test]
fn ring_hash_is_sticky_and_uses_the_request_hash() {
    let c = cla(vec![locality(
        "a",
        1,
        0,
        (0..10)
            .map(|i| endpoint(i, 1, HealthStatus::Healthy))
            .collect(),
    )]);
    let t = build(
        &c,
        BalancePolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 4096,
        },
    );
    let rng = SharedRng::new(1);
    let mut first = Vec::new();
    for h in 0..100u64 {
        let input = PickInput {
            hash: Some(h.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            rng: &rng,
        };
        first.push(t.pick(&input, |_| true).unwrap());
    }
    for (h, &f) in (0..100u64).zip(&first) {
        let input = PickInput {
            hash: Some(h.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            rng: &rng,
        };
        assert_eq!(t.pick(&input, |_| true), Some(f));
    }
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert!(distinct.len() >= 8, "keys spread over the ring");
}

#[test]
fn zero_weights_are_rejected_with_the_field() {
    let e = Table::<()>::build(
        &cla(vec![locality(
            "a",
            0,
            0,
            vec![endpoint(0, 1, HealthStatus::Healthy)],
        )]),
        &BalancePolicy::RoundRobin,
        |_| unreachable!("nothing built"),
    )
    .err()
    .expect("rejected");
    assert_eq!(e.to_string(), "localities[0].weight: must not be zero");
    let e = Table::build(
        &cla(vec![
            locality("a", 1, 0, vec![endpoint(0, 1, HealthStatus::Healthy)]),
            locality(
                "b",
                1,
                0,
                vec![
                    endpoint(1, 1, HealthStatus::Healthy),
                    endpoint(2, 0, HealthStatus::Healthy),
                ],
            ),
        ]),
        &BalancePolicy::RoundRobin,
        |_| Arc::new(super::Endpoint::<()>::new(None)),
    )
    .err()
    .expect("rejected");
    assert_eq!(
        e.to_string(),
        "localities[1].endpoints[1].weight: must not be zero"
    );
}

#[test]
fn empty_table_picks_nothing() {
    let t = build(&cla(vec![]), BalancePolicy::P2cPeakEwma);
    let rng = SharedRng::new(0);
    let input = PickInput {
        hash: None,
        rng: &rng,
    };
    assert_eq!(t.pick(&input, |_| true), None);
}

#[test]
fn ring_hash_makes_only_the_rings_in_use_and_keeps_them_through_health_changes() {
    let policy = BalancePolicy::RingHash {
        min_ring_size: 1024,
        max_ring_size: 4096,
    };
    let set = |first: HealthStatus, weight: u32| {
        cla(vec![
            locality(
                "a",
                1,
                0,
                vec![
                    endpoint(0, 1, first),
                    endpoint(1, weight, HealthStatus::Healthy),
                    endpoint(2, 1, HealthStatus::Healthy),
                    endpoint(3, 1, HealthStatus::Healthy),
                ],
            ),
            locality("b", 1, 1, vec![endpoint(4, 1, HealthStatus::Healthy)]),
        ])
    };
    let new = |_| Arc::new(super::Endpoint::<()>::new(None));
    let t = build(&set(HealthStatus::Healthy, 1), policy.clone());
    let ring = |t: &Table<()>, p: usize| t.levels[p].ring.clone().unwrap();
    // Priority 1 takes no traffic: its ring is not made.
    assert_eq!(ring(&t, 0).built_len(), 1024);
    assert_eq!(ring(&t, 1).built_len(), 0);

    // Endpoint 0 turns unhealthy (priority 0 keeps all the traffic: 1.4 × 3/4 > 1): the same
    // ring; its keys move on, no other key moves.
    let t2 = Table::build_after(Some(&t), &set(HealthStatus::Unhealthy, 1), &policy, new).unwrap();
    assert!(Arc::ptr_eq(&ring(&t, 0), &ring(&t2, 0)));
    assert!(Arc::ptr_eq(&ring(&t, 1), &ring(&t2, 1)));
    let rng = SharedRng::new(1);
    let (mut moved, mut kept) = (0, 0);
    for h in 0..1000u64 {
        let input = PickInput {
            hash: Some(h.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            rng: &rng,
        };
        let before = t.pick(&input, |s| s.healthy).unwrap();
        let after = t2.pick(&input, |s| s.healthy).unwrap();
        if before == 0 {
            assert_ne!(after, 0);
            moved += 1;
        } else {
            assert_eq!(before, after);
            kept += 1;
        }
    }
    assert!(moved > 150 && kept > 600, "{moved} moved, {kept} kept");

    // A weight change makes a new ring for its priority only.
    let t3 = Table::build_after(Some(&t2), &set(HealthStatus::Unhealthy, 2), &policy, new).unwrap();
    assert!(!Arc::ptr_eq(&ring(&t2, 0), &ring(&t3, 0)));
    assert!(Arc::ptr_eq(&ring(&t2, 1), &ring(&t3, 1)));
}
