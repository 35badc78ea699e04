//! The in-memory transport on its own: what it refuses, the link events it
//! gives a node, and restarts (joining again with the same key).

use flow_runtime::transport::{MemoryNetwork, SendError, Transport, TransportEvent};
use flow_runtime::{Party, PublicKey};

fn party(name: &str, byte: u8) -> Party {
    Party::new(name, PublicKey([byte; 32]))
}

#[tokio::test]
async fn frames_arrive_in_order_with_their_sender() {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (alice, _alice_in) = net.join(&a);
    let (_bob, mut bob_in) = net.join(&b);
    for i in 0..10u8 {
        alice.try_send(b.key(), vec![i]).unwrap();
    }
    for i in 0..10u8 {
        assert_eq!(bob_in.recv().await, Some((*a.key(), vec![i])));
    }
    assert_eq!(alice.peer_name(b.key()), "Bob");
    assert_eq!(alice.peer_name(&PublicKey([9; 32])), hex(&[9; 32]));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn refusals_say_why() {
    let net = MemoryNetwork::with_queue_len(2);
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (alice, _alice_in) = net.join(&a);
    let stranger = PublicKey([7; 32]);
    assert_eq!(
        alice.try_send(&stranger, vec![1]),
        Err(SendError::UnknownPeer(stranger))
    );
    assert_eq!(alice.try_send(a.key(), vec![1]), Err(SendError::ToSelf));
    let (bob, _bob_in) = net.join(&b);
    alice.try_send(b.key(), vec![1]).unwrap();
    alice.try_send(b.key(), vec![2]).unwrap();
    assert_eq!(
        alice.try_send(b.key(), vec![3]),
        Err(SendError::QueueFull("Bob".into()))
    );
    bob.shutdown().await;
    assert_eq!(
        alice.try_send(b.key(), vec![4]),
        Err(SendError::Unreachable("Bob".into()))
    );
    alice.shutdown().await;
    assert_eq!(alice.try_send(b.key(), vec![5]), Err(SendError::ShutDown));
}

#[tokio::test]
async fn peers_hear_when_a_node_leaves_and_joins_again() {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (alice, _alice_in) = net.join(&a);
    let mut events = alice.link_events();
    let (bob, _bob_in) = net.join(&b);
    assert_eq!(
        events.recv().await.unwrap(),
        TransportEvent::Connected { peer: *b.key() }
    );
    bob.shutdown().await;
    assert_eq!(
        events.recv().await.unwrap(),
        TransportEvent::Disconnected {
            peer: *b.key(),
            error: None
        }
    );
    assert!(!net.is_online(b.key()));
    let (_bob2, mut bob2_in) = net.join(&b);
    assert_eq!(
        events.recv().await.unwrap(),
        TransportEvent::Connected { peer: *b.key() }
    );
    alice.try_send(b.key(), vec![1]).unwrap();
    assert_eq!(bob2_in.recv().await, Some((*a.key(), vec![1])));
}

#[tokio::test]
async fn a_stale_link_shutting_down_leaves_the_new_one_online() {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (alice, _alice_in) = net.join(&a);
    let (old_bob, _old_in) = net.join(&b);
    let (_new_bob, mut new_in) = net.join(&b);
    old_bob.shutdown().await;
    assert!(net.is_online(b.key()));
    alice.try_send(b.key(), vec![1]).unwrap();
    assert_eq!(new_in.recv().await, Some((*a.key(), vec![1])));
}

#[tokio::test]
async fn disconnect_makes_the_peer_see_its_link_drop_and_return() {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (alice, _alice_in) = net.join(&a);
    let (bob, _bob_in) = net.join(&b);
    let mut bob_events = bob.link_events();
    alice.disconnect(b.key(), "sent garbage");
    assert_eq!(
        bob_events.recv().await.unwrap(),
        TransportEvent::Disconnected {
            peer: *a.key(),
            error: Some("sent garbage".into())
        }
    );
    // Bob's node reacts to this by redelivering to Alice.
    assert_eq!(
        bob_events.recv().await.unwrap(),
        TransportEvent::Connected { peer: *a.key() }
    );
}
