//! Seeded simulation of the re-sending policy: the `MockNetwork` models
//! links as TCP behaves (dialled on first use, broken while frames are
//! queued on them, refusing frames when their queue is full, coming back)
//! and feeds every node's delivery the link events a transport would. The
//! nodes run the same delivery the tokio node runs, so these schedules test
//! the production policy.
//!
//! Two kinds of check:
//! * correctness under every mix of link faults, dropped, duplicated and
//!   reordered frames and crashes: every flow finishes with the right
//!   result, each exactly once;
//! * cost: a first connection re-sends nothing, a reconnection re-sends
//!   only what the broken link may have carried, and a refusing peer is
//!   tried once per redelivery round, not once per message.
//!
//! `FLOW_LINK_SIM_SCHEDULES=N` runs N random schedules instead of 100.

use flow_runtime::Flow;
use flow_runtime::testing::ping_pong::{expected_total, ping, pong};
use flow_runtime::testing::{Faults, LinkFaults, MockNetwork, NetworkStats, NodeId};
use flow_runtime::{IdSource, SeededIds};

fn three_nodes(net: &mut MockNetwork) -> [NodeId; 3] {
    let nodes = [
        net.create_node("A"),
        net.create_node("B"),
        net.create_node("C"),
    ];
    for n in nodes {
        net.register_responder::<ping::Flow, _>(n, pong);
    }
    nodes
}

fn schedule(seed: u64) -> NetworkStats {
    let mut rng = SeededIds::new(seed);
    let mut pick = |n: u64| rng.next_id() % n;
    let mut net = MockNetwork::new(seed);
    let nodes = three_nodes(&mut net);
    net.set_link_faults(LinkFaults {
        break_link: pick(15) as f64 / 100.0,
        refuse: pick(20) as f64 / 100.0,
        queue_limit: pick(4) as usize,
        dial: true,
    });
    net.set_faults(Faults {
        drop: pick(10) as f64 / 100.0,
        duplicate: pick(10) as f64 / 100.0,
        reorder: pick(50) as f64 / 100.0,
        restart: pick(3) as f64 / 100.0,
    });
    let mut expected = Vec::new();
    for _ in 0..(2 + pick(4)) {
        let from = nodes[pick(3) as usize];
        let to = nodes[pick(3) as usize];
        let rounds = pick(8) as u32;
        let h = net.start_flow(from, ping(net.party(to), rounds));
        expected.push((h, expected_total(rounds)));
    }
    let mut steps = 0u64;
    while net.step() {
        steps += 1;
        assert!(steps < 200_000, "seed {seed}: no convergence");
    }
    for (i, (h, total)) in expected.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(*total)), "seed {seed}, flow {i}");
    }
    let responders = nodes
        .iter()
        .flat_map(|n| net.finished(*n))
        .filter(|f| f.flow == <pong::Flow as Flow>::NAME)
        .count();
    assert_eq!(
        responders,
        expected.len(),
        "seed {seed}: one responder per ping"
    );
    for n in nodes {
        assert_eq!(net.flows_in_flight(n), 0, "seed {seed}: leftover flows");
    }
    net.stats()
}

#[test]
fn random_schedules_with_broken_links_refusals_and_reconnects_all_finish_correctly() {
    let count: u64 = std::env::var("FLOW_LINK_SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut totals = NetworkStats::default();
    for seed in 0..count {
        let s = schedule(seed);
        totals.links_broken += s.links_broken;
        totals.refused += s.refused;
        totals.resent += s.resent;
        totals.restarts += s.restarts;
    }
    // The schedules did exercise what they are for.
    if count >= 20 {
        assert!(totals.links_broken > 0 && totals.refused > 0, "{totals:?}");
        assert!(totals.resent > 0 && totals.restarts > 0, "{totals:?}");
    }
}

/// Links dialled on first use, nothing lost: a link coming up for the
/// first time must not make anyone re-send (the frames sent before it came
/// up waited in its queue), so no frame arrives twice. (No reordering: a
/// link delivers in order, and a message overtaking its session's `Init`
/// is dropped and re-sent by design.)
#[test]
fn a_first_connection_resends_nothing() {
    for seed in 0..20 {
        let mut net = MockNetwork::new(seed);
        let nodes = three_nodes(&mut net);
        net.set_link_faults(LinkFaults {
            dial: true,
            ..LinkFaults::default()
        });
        let mut handles = Vec::new();
        for (i, from) in nodes.iter().enumerate() {
            let to = nodes[(i + 1) % 3];
            handles.push(net.start_flow(*from, ping(net.party(to), 5)));
        }
        net.run_network();
        for h in &handles {
            assert_eq!(net.result(h), Some(Ok(expected_total(5))), "seed {seed}");
        }
        let stats = net.stats();
        assert_eq!(stats.resent, 0, "seed {seed}: {stats:?}");
        assert_eq!(stats.redundant, 0, "seed {seed}: {stats:?}");
    }
}

/// A link breaks while frames are on it; a flow started while it is down
/// queues its frames on it. When it comes back, each end re-sends only its
/// messages that were unacknowledged when the link broke — not what was
/// queued while it was down, which the link still carries.
#[test]
fn a_reconnection_resends_only_what_the_broken_link_may_have_carried() {
    let mut net = MockNetwork::new(7);
    let [a, b, _] = three_nodes(&mut net);
    net.set_link_faults(LinkFaults {
        dial: true,
        ..LinkFaults::default()
    });
    let first = net.start_flow(a, ping(net.party(b), 4));
    // Connect, then run until frames are in flight both ways.
    for _ in 0..4 {
        assert!(net.step());
    }
    let unacked = |net: &mut MockNetwork, node: NodeId, peer: NodeId| {
        let key = *net.party(peer).key();
        net.node_core(node)
            .unacked_frames()
            .unwrap()
            .iter()
            .filter(|m| m.to == key)
            .count() as u64
    };
    let at_break = unacked(&mut net, a, b) + unacked(&mut net, b, a);
    assert!(at_break > 0, "the scenario needs messages on the link");
    net.disconnect(a, b);
    let second = net.start_flow(a, ping(net.party(b), 4));
    // Its start commits; its first step sends the session's Init, which
    // waits in the broken link's queue.
    while net.node_core(a).has_ready() || unacked(&mut net, a, b) == 0 {
        assert!(net.step());
    }
    assert!(unacked(&mut net, a, b) > 0);
    let resent_before = net.stats().resent;
    net.connect(a, b);
    assert_eq!(
        net.stats().resent - resent_before,
        at_break,
        "re-sent at once: exactly the messages unacknowledged when the link broke"
    );
    net.run_network();
    assert_eq!(net.result(&first), Some(Ok(expected_total(4))));
    assert_eq!(net.result(&second), Some(Ok(expected_total(4))));
}

/// A peer that refuses every frame: each new frame is tried once when its
/// batch commits, and at each redelivery round only the first overdue
/// message is tried — the rest would only be refused too.
#[test]
fn a_refusing_peer_is_tried_once_per_redelivery_round() {
    let mut net = MockNetwork::new(11);
    let [a, b, _] = three_nodes(&mut net);
    net.set_link_faults(LinkFaults {
        refuse: 1.0,
        ..LinkFaults::default()
    });
    let flows: Vec<_> = (0..5)
        .map(|_| net.start_flow(a, ping(net.party(b), 2)))
        .collect();
    // The flows' first steps send an Init and a ping each, all refused;
    // then the network has nothing but redelivery left. The first round is
    // the nodes' first tick, at which all ten are due.
    while net.stats().redeliveries == 0 {
        assert!(net.step());
    }
    let refused_fresh = net.stats().refused;
    assert_eq!(
        refused_fresh, 11,
        "each new frame tried once, then one of the ten due at the first round"
    );
    let rounds_before = net.stats().redeliveries;
    for _ in 0..6 {
        assert!(net.step(), "unacknowledged messages keep the network busy");
    }
    let rounds = net.stats().redeliveries - rounds_before;
    assert_eq!(rounds, 6, "every step was a redelivery round");
    let refused_resends = net.stats().refused - refused_fresh;
    assert!(
        refused_resends <= rounds,
        "{refused_resends} re-sends refused in {rounds} rounds: one per round at most"
    );
    assert!(refused_resends > 0, "overdue messages were tried");
    // The peer takes frames again: everything finishes.
    net.set_link_faults(LinkFaults::default());
    net.run_network();
    for f in &flows {
        assert_eq!(net.result(f), Some(Ok(expected_total(2))));
    }
}
