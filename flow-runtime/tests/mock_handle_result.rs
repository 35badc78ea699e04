//! `FlowHandle::result().await` on a `MockNetwork` handle: the network only
//! moves when the test steps it, so the handle never waits — it gives the
//! outcome if the flow has finished, else an error pointing to
//! `net.result`.

use flow_runtime::prelude::*;
use flow_runtime::testing::MockNetwork;
use flow_runtime::testing::ping_pong::{ping, pong};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls `f` once: a mock handle's `result()` must be ready at once (a
/// synchronous `#[test]` has no runtime to wait in).
fn poll_once<T>(f: impl Future<Output = T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a MockNetwork handle's result() must not wait"),
    }
}

#[test]
fn a_mock_handle_reports_unfinished_then_the_result() {
    let mut net = MockNetwork::new(7);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), 10));

    let err = poll_once(handle.result()).unwrap_err();
    assert_eq!(err.kind(), FlowErrorKind::Internal);
    assert!(err.to_string().contains("net.result"), "{err}");

    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(45)));
    assert_eq!(poll_once(handle.result()), Ok(45));
    // Readable again, through a clone, and after the node restarts.
    net.restart_node(alice);
    assert_eq!(poll_once(handle.clone().result()), Ok(45));
}

#[test]
fn a_mock_handle_forgets_a_removed_result() {
    let mut net = MockNetwork::new(8);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), 3));
    net.run_network();
    assert_eq!(poll_once(handle.result()), Ok(3));
    assert!(net.remove_result(&handle));
    assert!(poll_once(handle.result()).is_err());
    assert_eq!(net.result(&handle), None);
}

#[test]
fn a_reattached_mock_handle_reads_the_result() {
    let mut net = MockNetwork::new(9);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, pong);
    net.register_flow::<ping::Flow>(alice);
    let _ = net.start_flow_with_client_id(alice, "c-1", ping(net.party(bob), 4));
    net.run_network();
    net.restart_node(alice);
    let again = net.reattach::<ping::Flow>(alice, "c-1").unwrap();
    assert_eq!(poll_once(again.result()), Ok(6));
}
