//! The TCP transport's normal behaviour: delivery with authenticated
//! senders, ordering, large frames, reconnect after a peer restarts, and
//! clean shutdown.

mod tcp_common;

use flow_runtime::PublicKey;
use flow_runtime::tcp::{Direction, LinkEvent, SendError, TcpTransport};
use std::time::Duration;
use tcp_common::*;

#[tokio::test]
async fn frames_arrive_in_order_with_the_authenticated_sender() {
    let mut net = Net::new(3).await;
    let (alice, mut alice_in) = net.start(0);
    let (bob, mut bob_in) = net.start(1);
    let (carol, _carol_in) = net.start(2);

    for i in 0u32..1000 {
        alice
            .send(&net.key(1), i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    carol
        .send(&net.key(1), b"from carol".to_vec())
        .await
        .unwrap();
    bob.send(&net.key(0), b"hello alice".to_vec())
        .await
        .unwrap();

    let mut next_from_alice = 0u32;
    let mut from_carol = 0;
    while next_from_alice < 1000 || from_carol == 0 {
        let (from, frame) = recv(&mut bob_in).await;
        if from == net.key(0) {
            assert_eq!(frame, next_from_alice.to_be_bytes(), "out of order");
            next_from_alice += 1;
        } else {
            assert_eq!(from, net.key(2));
            assert_eq!(frame, b"from carol");
            from_carol += 1;
        }
    }
    assert_eq!(
        recv(&mut alice_in).await,
        (net.key(1), b"hello alice".to_vec())
    );
    for t in [alice, bob, carol] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn multi_megabyte_frames_cross_and_oversized_ones_are_refused_at_send() {
    let mut net = Net::new(2).await;
    let (alice, _a) = net.start(0);
    let (_bob, mut bob_in) = net.start(1);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    alice.send(&net.key(1), big.clone()).await.unwrap();
    alice.send(&net.key(1), Vec::new()).await.unwrap();
    assert_eq!(recv(&mut bob_in).await.1, big);
    assert_eq!(recv(&mut bob_in).await.1, Vec::<u8>::new());

    let max = test_config().max_frame_len;
    assert_eq!(
        alice.send(&net.key(1), vec![0; max + 1]).await,
        Err(SendError::TooLarge { len: max + 1, max })
    );
}

#[tokio::test]
async fn unknown_and_self_destinations_are_refused() {
    let mut net = Net::new(2).await;
    let (alice, _a) = net.start(0);
    let stranger = PublicKey([0xee; 32]);
    assert_eq!(
        alice.send(&stranger, vec![1]).await,
        Err(SendError::UnknownPeer(stranger))
    );
    assert_eq!(alice.try_send(&net.key(0), vec![1]), Err(SendError::ToSelf));
}

#[tokio::test]
async fn queued_frames_reach_a_peer_that_restarts() {
    let mut net = Net::new(2).await;
    let bob_addr = net.addrs[1];
    let (alice, _a) = net.start(0);
    let (bob, mut bob_in) = net.start(1);
    let mut events = alice.events();

    alice.send(&net.key(1), b"before".to_vec()).await.unwrap();
    assert_eq!(recv(&mut bob_in).await.1, b"before");

    // Bob goes away; Alice notices the connection is lost and keeps the
    // next frames queued while she retries with backoff.
    bob.shutdown().await;
    drop(bob_in);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(
            event,
            LinkEvent::Closed {
                direction: Direction::Outbound,
                ..
            }
        ) {
            break;
        }
    }
    for i in 0u8..10 {
        alice.send(&net.key(1), vec![i]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Bob restarts on the same address with the same identity.
    let listener = tokio::net::TcpListener::bind(bob_addr).await.unwrap();
    let (_bob, mut bob_in) =
        TcpTransport::from_listener(identity(1), listener, net.map.clone(), test_config()).unwrap();
    for i in 0u8..10 {
        assert_eq!(recv(&mut bob_in).await, (net.key(0), vec![i]));
    }
}

#[tokio::test]
async fn shutdown_ends_the_incoming_stream_and_refuses_sends() {
    let mut net = Net::new(2).await;
    let (alice, mut alice_in) = net.start(0);
    alice.shutdown().await;
    assert_eq!(
        alice.send(&net.key(1), vec![1]).await,
        Err(SendError::ShutDown)
    );
    // The stream ends once the last clone of the transport is gone.
    drop(alice);
    let end = tokio::time::timeout(Duration::from_secs(5), alice_in.recv()).await;
    assert_eq!(end.unwrap(), None);
}

/// What a node sees through the `Transport` trait: only the link it sends
/// on (outbound), as `Connected` when it is up and `Disconnected` when it
/// drops — the cue to redeliver.
#[tokio::test]
async fn the_trait_reports_the_sending_link_coming_and_going() {
    use flow_runtime::transport::{Transport, TransportEvent};
    let mut net = Net::new(2).await;
    let (alice, _a) = net.start(0);
    let (bob, mut bob_in) = net.start(1);
    let mut events = Transport::link_events(&alice);
    let mut bob_events = Transport::link_events(&bob);
    assert_eq!(
        Transport::endpoint(&alice),
        format!("tcp://{}", net.addrs[0])
    );
    Transport::try_send(&alice, &net.key(1), b"hi".to_vec()).unwrap();
    assert_eq!(recv(&mut bob_in).await.1, b"hi");
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event, TransportEvent::Connected { peer: net.key(1) });
    // Bob only received on an inbound connection: nothing for his node.
    assert!(bob_events.try_recv().is_err());
    Transport::shutdown(&bob).await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, TransportEvent::Disconnected { peer, error: Some(_) } if peer == net.key(1)),
        "{event:?}"
    );
    assert_eq!(Transport::peer_name(&alice, &net.key(1)), "Bob");
}

/// One group commit can release a frame for each of a thousand flows, and
/// their acks, to one peer at once. The default per-peer queue takes such a
/// burst whole: the frames are queued without yielding (this test's runtime
/// has one thread, so the writer drains none of them meanwhile), and none
/// is refused to wait for the next redelivery tick.
#[tokio::test(flavor = "current_thread")]
async fn a_group_commits_burst_to_one_peer_fits_the_default_queue() {
    const BURST: u32 = 4_000;
    let mut net = Net::new(2).await;
    let (alice, _a) = net.start(0);
    let (_bob, mut bob_in) = net.start(1);
    for i in 0..BURST {
        if let Err(e) = alice.try_send(&net.key(1), i.to_be_bytes().to_vec()) {
            panic!("frame {i} of the burst refused: {e}");
        }
    }
    for i in 0..BURST {
        assert_eq!(
            recv(&mut bob_in).await,
            (net.key(0), i.to_be_bytes().to_vec())
        );
    }
}
