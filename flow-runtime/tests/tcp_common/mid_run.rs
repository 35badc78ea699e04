//! A ping that is known to be in flight, for the tests that restart a node
//! mid-run (over TCP and over the in-memory transport), and the check that
//! an initiator restarted under it finds its flow again by client id.

use flow_runtime::FlowHandle;
use flow_runtime::runner::Node;
use flow_runtime::testing::ping_pong::{expected_total, ping};
use flow_runtime::transport::Transport;
use flow_runtime::{Party, RunId};
use std::future::Future;
use std::time::Duration;

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}

/// How many ping rounds take about one second here and now: commit
/// latency (an fsync) varies a hundredfold between an idle machine and a
/// busy one.
async fn rounds_for_one_second<T: Transport>(alice: &Node<T>, bob: &Party) -> u32 {
    let t = std::time::Instant::now();
    let h = alice.start_flow(ping(bob.clone(), 10)).await.unwrap();
    within("warm-up", alice.result(&h)).await.unwrap();
    let per_round = t.elapsed() / 10;
    let rounds = Duration::from_secs(1).as_micros() / per_round.as_micros().max(1);
    u32::try_from(rounds).unwrap_or(u32::MAX).clamp(30, 5000)
}

/// Waits until `node` has made a few commits since `base` (one per round
/// on either side of a ping).
async fn some_rounds_done<T: Transport>(node: &Node<T>, base: u64) {
    within("a few rounds", async {
        while node.commits().await.unwrap() < base + 5 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// A ping to `bob` that `start(rounds, attempt)` started, a few rounds in
/// (counted by `watched`'s commits) and still running, with its rounds and
/// attempt number: the restart that follows lands mid-run however fast or
/// slow the machine is right now.
///
/// Rounds are sized to last about a second, but a load spike during the
/// warm-up makes them too few and the run may end before it is seen; such
/// a run is checked and followed by one with four times the rounds. A test
/// that needs a run in flight establishes it instead of hoping for it.
pub async fn ping_in_flight<T, F, Fut>(
    alice: &Node<T>,
    watched: &Node<T>,
    bob: &Party,
    mut start: F,
) -> (FlowHandle<ping::Flow>, u32, u32)
where
    T: Transport,
    F: FnMut(u32, u32) -> Fut,
    Fut: Future<Output = FlowHandle<ping::Flow>>,
{
    let mut rounds = rounds_for_one_second(alice, bob).await;
    for attempt in 0..6 {
        let base = watched.commits().await.unwrap();
        let h = start(rounds, attempt).await;
        some_rounds_done(watched, base).await;
        match alice.try_result(&h).await.unwrap() {
            None => return (h, rounds, attempt),
            Some(done) => {
                assert_eq!(done, Ok(expected_total(rounds)));
                rounds = rounds.saturating_mul(4);
            }
        }
    }
    panic!("every ping ended before it was seen in flight (last: {rounds} rounds)");
}

/// The client id of attempt `attempt` of [`ping_in_flight_by_client_id`].
fn client_id(attempt: u32) -> String {
    format!("trade-{attempt}")
}

/// A ping from `alice` to `bob` in flight (as [`ping_in_flight`] makes
/// one), started under a client id; its handle, rounds and client id.
pub async fn ping_in_flight_by_client_id<T: Transport>(
    alice: &Node<T>,
    bob: &Party,
) -> (FlowHandle<ping::Flow>, u32, String) {
    let (h, rounds, attempt) = ping_in_flight(alice, alice, bob, |rounds, attempt| {
        let flow = ping(bob.clone(), rounds);
        async move {
            alice
                .start_flow_with_client_id(&client_id(attempt), flow)
                .await
                .unwrap()
        }
    })
    .await;
    (h, rounds, client_id(attempt))
}

/// On a restarted `alice`, the ping started as `client_id` (run `run`, of
/// `rounds` rounds) is found again by its client id, as the same run, and
/// its new handle gives the ping's result.
pub async fn reattached_ping_finishes<T: Transport>(
    alice: &Node<T>,
    client_id: &str,
    run: RunId,
    rounds: u32,
) {
    let again = alice
        .reattach::<ping::Flow>(client_id)
        .await
        .unwrap()
        .expect("the flow survives the restart");
    assert_eq!(again.run_id(), run);
    // Generous: the rest of a ping sized for a second, on a loaded machine.
    let result = tokio::time::timeout(Duration::from_secs(60), again.result())
        .await
        .expect("the reattached ping did not finish within 60 s");
    assert_eq!(result, Ok(expected_total(rounds)));
}
