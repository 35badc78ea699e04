//! Seeded simulation: hundreds of random schedules of several ping flows
//! between three nodes, with dropped, duplicated and reordered frames and
//! node crashes at random points. Every flow must finish with the right
//! result, and no message may be processed twice (pong would echo twice and
//! ping would see a wrong echo; the count of finished responders must equal
//! the count of pings).
//!
//! `FLOW_SIM_SCHEDULES=N` runs N schedules instead of the default 200.

mod mock_support;

use flow_runtime::Flow;
use flow_runtime::testing::{Faults, MockNetwork};
use flow_runtime::{IdSource, SeededIds};
use mock_support::{Ping, Pong, ping, pong};

fn schedule(seed: u64) {
    let mut rng = SeededIds::new(seed);
    let mut pick = |n: u64| rng.next_id() % n;
    let mut net = MockNetwork::new(seed);
    let nodes = [
        net.create_node("A"),
        net.create_node("B"),
        net.create_node("C"),
    ];
    for n in nodes {
        net.register_responder::<Ping, _>(n, pong);
    }
    net.set_faults(Faults {
        drop: pick(20) as f64 / 100.0,
        duplicate: pick(20) as f64 / 100.0,
        reorder: pick(50) as f64 / 100.0,
        restart: pick(5) as f64 / 100.0,
    });
    let mut expected = Vec::new();
    for _ in 0..(2 + pick(4)) {
        let from = nodes[pick(3) as usize];
        let to = nodes[pick(3) as usize];
        let rounds = pick(8) as u32;
        let h = net.start_flow(from, ping(net.party(to), rounds));
        expected.push((
            h,
            u64::from(rounds) * u64::from(rounds.saturating_sub(1)) / 2,
        ));
    }
    let mut steps = 0u64;
    while net.step() {
        steps += 1;
        if pick(200) == 0 {
            let n = nodes[pick(3) as usize];
            net.restart_node(n);
        }
        assert!(steps < 200_000, "seed {seed}: no convergence");
    }
    for (i, (h, total)) in expected.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(*total)), "seed {seed}, flow {i}");
    }
    let responders = nodes
        .iter()
        .flat_map(|n| net.finished(*n))
        .filter(|f| f.flow == <Pong as Flow>::NAME)
        .count();
    assert_eq!(
        responders,
        expected.len(),
        "seed {seed}: one responder per ping"
    );
    for n in nodes {
        assert_eq!(net.flows_in_flight(n), 0, "seed {seed}: leftover flows");
    }
}

#[test]
fn hundreds_of_random_schedules_with_faults_and_restarts_all_finish_correctly() {
    let count: u64 = std::env::var("FLOW_SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for seed in 0..count {
        schedule(seed);
    }
}
