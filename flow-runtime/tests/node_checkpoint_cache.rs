//! The node's cache of recently committed checkpoints
//! (`NodeConfig::checkpoint_cache_bytes`): it must never let a step see a
//! state other than the committed one: not after a failed commit, not
//! after an eviction, and not differently from a node without the cache.

use flow_runtime::__private as rt;
use flow_runtime::engine::OsIds;
use flow_runtime::engine::{NewFlow, Registry};
use flow_runtime::prelude::*;
use flow_runtime::storage::StoreError;
use flow_runtime::testing::HookedStore;
use flow_runtime::{Event, NodeConfig, NodeCore, RunId, Step, Timestamp};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use store_backends::{Backend, on_each_backend};

mod store_backends;

/// Wakes every millisecond and records when; finishes with the record
/// after `until` wakes. A step that ran but never committed must not
/// appear in the record.
#[derive(Debug, Serialize, Deserialize)]
struct Diary {
    woke_at: Vec<u64>,
    until: usize,
}

impl Flow for Diary {
    type Output = Vec<u64>;
    const NAME: &'static str = "cache_test::diary";
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 1;
    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<Vec<u64>> {
        if !matches!(event, Event::Start) {
            self.woke_at.push(ctx.now().0);
        }
        if self.woke_at.len() >= self.until {
            return Step::Done(Ok(self.woke_at.clone()));
        }
        rt::start_sleep(ctx.sleep(Duration::from_millis(1)), ctx);
        Step::Suspended
    }
    fn state_name(&self) -> &'static str {
        "Sleeping"
    }
}

/// Makes the next commits of a [`flaky`] store fail, as a full disk would.
#[derive(Clone, Default)]
struct FailNext(Arc<AtomicU32>);

impl FailNext {
    /// The next `n` commits fail.
    fn set(&self, n: u32) {
        self.0.store(n, Ordering::SeqCst);
    }
}

/// `backend`'s store, failing commits when told to by the [`FailNext`].
fn flaky(backend: &Backend) -> (Arc<HookedStore>, FailNext) {
    let fail = FailNext::default();
    let failing = fail.0.clone();
    let store = HookedStore::new(backend.open(), move |_| {
        match failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(StoreError("injected: the disk is full".into())),
            Err(_) => Ok(()),
        }
    });
    (Arc::new(store), fail)
}

/// A node named `name` (key `[id; 32]`) on a [`flaky`] store of
/// `backend`, running what `registry` knows.
fn open_node(
    backend: &Backend,
    name: &str,
    id: u8,
    registry: Registry,
    cache_bytes: usize,
) -> (NodeCore, FailNext) {
    let (store, fail) = flaky(backend);
    let config = NodeConfig {
        checkpoint_cache_bytes: cache_bytes,
        ..NodeConfig::default()
    };
    let core = NodeCore::open(
        Party::new(name, PublicKey([id; 32])),
        store,
        registry,
        Box::new(OsIds),
        Box::new(OsIds),
        config,
        Timestamp(0),
    )
    .expect("open the node");
    (core, fail)
}

/// Alice, running the [`Diary`].
fn node(backend: &Backend, cache_bytes: usize) -> (NodeCore, FailNext) {
    let mut registry = Registry::new();
    registry.register_flow::<Diary>();
    open_node(backend, "Alice", 1, registry, cache_bytes)
}

fn diary(until: usize) -> NewFlow {
    NewFlow::new(&Diary {
        woke_at: Vec::new(),
        until,
    })
    .expect("encode")
}

/// Ticks `core` every millisecond from 1 until every run finished, making
/// the commit fail at each tick in `fail_at`; returns each run's diary in
/// start order.
fn run_to_the_end(
    core: &mut NodeCore,
    fail: &FailNext,
    fail_at: &[u64],
    runs: &[RunId],
) -> Vec<Vec<u64>> {
    let mut outcomes = std::collections::HashMap::new();
    for now in 1..10_000 {
        if fail_at.contains(&now) {
            fail.set(1);
        }
        match core.tick(Timestamp(now)) {
            Ok(out) => {
                assert!(!fail_at.contains(&now), "the commit at {now} did not fail");
                for (run, _, outcome) in out.finished {
                    let bytes = outcome.expect("the diary finishes");
                    let diary: Vec<u64> = rmp_serde::from_slice(&bytes).expect("decode the diary");
                    outcomes.insert(run, diary);
                }
            }
            // The node says "nothing of this happened"; it tries again at
            // the next tick.
            Err(e) => assert!(fail_at.contains(&now), "unexpected failure at {now}: {e}"),
        }
        if outcomes.len() == runs.len() {
            return runs.iter().map(|r| outcomes[r].clone()).collect();
        }
    }
    panic!("only {} of {} flows finished", outcomes.len(), runs.len());
}

#[test]
fn a_step_whose_commit_failed_is_not_seen_by_the_next_step() {
    on_each_backend(|backend| {
        let (mut core, fail) = node(backend, NodeConfig::default().checkpoint_cache_bytes);
        let (run, _) = core.start(Timestamp(0), diary(4), None).expect("start");
        core.tick(Timestamp(0)).expect("first step: sleeps");
        let diaries = run_to_the_end(&mut core, &fail, &[2], &[run]);
        // The wake at 1 is committed (and cached); the wake at 2 ran but its
        // commit failed, so the wake at 3 is the second one, not the third (a
        // stale cache would give [1, 2, 3, 4]).
        assert_eq!(diaries, vec![vec![1, 3, 4, 5]]);
    });
}

#[test]
fn a_node_with_a_tiny_cache_or_none_computes_exactly_what_the_default_does() {
    on_each_backend(|backend| {
        let outcomes: Vec<Vec<Vec<u64>>> = [0, 2_000, NodeConfig::default().checkpoint_cache_bytes]
            .into_iter()
            .map(|cache_bytes| {
                let (mut core, fail) = node(&backend.fresh(), cache_bytes);
                // Flows of different lengths, so some finish (and leave the
                // cache) while others keep running through two failed commits.
                let flows = (1..=40).map(|i| (diary(i % 7 + 1), None)).collect();
                let (runs, _) = core.start_many(Timestamp(0), flows).expect("start");
                core.tick(Timestamp(0)).expect("first steps");
                let mut diaries = run_to_the_end(&mut core, &fail, &[4, 5], &runs);
                // Run ids are random: compare the diaries as a multiset.
                diaries.sort();
                diaries
            })
            .collect();
        assert_eq!(outcomes[0], outcomes[1], "a tiny cache changed the outcome");
        assert_eq!(
            outcomes[0], outcomes[2],
            "the default cache changed the outcome"
        );
        assert!(
            outcomes[0]
                .iter()
                .all(|d| !d.contains(&4) && !d.contains(&5)),
            "a wake from a failed commit (at 4 or 5) was kept: {:?}",
            outcomes[0]
        );
    });
}

/// A node named `name` (key `[id; 32]`) that runs `ping` and answers it
/// with `pong`.
fn ping_node(backend: &Backend, name: &str, id: u8, cache_bytes: usize) -> (NodeCore, FailNext) {
    use flow_runtime::testing::ping_pong::{ping, pong};
    let mut registry = Registry::new();
    registry.register_flow::<ping::Flow>();
    registry.register_responder::<ping::Flow, _>(pong);
    open_node(backend, name, id, registry, cache_bytes)
}

/// The session records are cached like checkpoints (and acks of live
/// sessions are applied from them): a batch whose commit failed must not
/// be seen by the next one on either side. Alice pings Bob; every third
/// commit on each node fails, so messages, acks and steps are lost and
/// redelivered. A stale session record would drop a redelivered message
/// as a duplicate (the ping then never ends) or take it twice (a wrong
/// sum).
#[test]
fn a_session_whose_commit_failed_is_not_seen_by_the_next_batch() {
    use flow_runtime::testing::ping_pong::{expected_total, ping};
    on_each_backend(|backend| {
        for cache_bytes in [0, NodeConfig::default().checkpoint_cache_bytes] {
            let (mut alice, alice_fail) = ping_node(&backend.fresh(), "Alice", 1, cache_bytes);
            let (mut bob, bob_fail) = ping_node(&backend.fresh(), "Bob", 2, cache_bytes);
            let bob_party = bob.identity().clone();
            let flow = NewFlow::new(&ping(bob_party.clone(), 6)).expect("encode");
            let (run, _) = alice.start(Timestamp(0), flow, None).expect("start");
            let mut to_bob = Vec::new();
            let mut to_alice = Vec::new();
            let mut result = None;
            let mut commits = 0u32;
            for now in 1..2_000u64 {
                // Every third commit of each node fails.
                commits += 1;
                if commits.is_multiple_of(3) {
                    alice_fail.set(1);
                    bob_fail.set(1);
                }
                let from_bob = std::mem::take(&mut to_alice);
                if let Ok(out) = alice.deliver(Timestamp(now), from_bob) {
                    for (r, _, outcome) in out.finished {
                        if r == run {
                            result = Some(outcome);
                        }
                    }
                    to_bob.extend(
                        out.frames
                            .into_iter()
                            .map(|(_, f)| (*alice.identity().key(), f)),
                    );
                }
                if result.is_some() {
                    break;
                }
                let from_alice = std::mem::take(&mut to_bob);
                if let Ok(out) = bob.deliver(Timestamp(now), from_alice) {
                    to_alice.extend(out.frames.into_iter().map(|(_, f)| (*bob_party.key(), f)));
                }
                alice_fail.set(0);
                bob_fail.set(0);
                // What a failed batch lost comes again: the redelivery.
                if now.is_multiple_of(4) {
                    for m in alice.unacked_frames().expect("outbox") {
                        to_bob.push((*alice.identity().key(), m.frame));
                    }
                    for m in bob.unacked_frames().expect("outbox") {
                        to_alice.push((*bob_party.key(), m.frame));
                    }
                }
            }
            let bytes = result
                .expect("the ping finished")
                .expect("the ping succeeded");
            let total: u64 = rmp_serde::from_slice(&bytes).expect("decode the total");
            assert_eq!(
                total,
                expected_total(6),
                "cache {cache_bytes}: a round ran twice or not at all"
            );
        }
    });
}
