//! Bad input on the TCP transport: each kind gets a clear WARN log line and
//! a closed connection, and the node keeps serving its other peers.
//!
//! Layout of every test: Alice (index 0) runs a real transport; Bob
//! (index 1) runs a real transport and talks to Alice before and after the
//! attack; the attacker is a hand-driven [`RawPeer`]. Carol (index 2) is in
//! the network map but has no running node, so the attacker can play her.

mod tcp_common;

use flow_runtime::PublicKey;
use flow_runtime::tcp::TcpTransport;
use flow_runtime::tcp::records::IdentityProof;
use std::time::Duration;
use tcp_common::*;

struct Setup {
    net: Net,
    _alice: TcpTransport,
    alice_in: flow_runtime::tcp::Incoming,
    bob: TcpTransport,
    _bob_in: flow_runtime::tcp::Incoming,
    sent_by_bob: u8,
}

impl Setup {
    async fn new() -> Setup {
        let mut net = Net::new(3).await;
        let (alice, alice_in) = net.start(0);
        let (bob, bob_in) = net.start(1);
        let mut s = Setup {
            net,
            _alice: alice,
            alice_in,
            bob,
            _bob_in: bob_in,
            sent_by_bob: 0,
        };
        s.bob_reaches_alice().await;
        s
    }

    fn alice_addr(&self) -> std::net::SocketAddr {
        self.net.addrs[0]
    }

    /// Bob's frames still reach Alice, from Bob's authenticated key.
    async fn bob_reaches_alice(&mut self) {
        self.sent_by_bob += 1;
        let frame = vec![self.sent_by_bob; 3];
        self.bob
            .send(&self.net.key(0), frame.clone())
            .await
            .unwrap();
        assert_eq!(recv(&mut self.alice_in).await, (self.net.key(1), frame));
    }

    /// Nothing but Bob's frames ever reached Alice's node.
    fn nothing_else_delivered(&mut self) {
        assert!(
            self.alice_in.try_recv().is_err(),
            "an attacker frame was delivered"
        );
    }
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await;
    let line = logs
        .wait_for_warning(&["rejected inbound connection", "handshake"])
        .await;
    assert!(line.contains("longer than 2048 bytes"), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();

    // Garbage within a well-formed record: Noise refuses it.
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.send_record(vec![0xab; 7]).await;
    logs.wait_for_warning(&["rejected inbound connection", "rejected by Noise"])
        .await;
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_before_it_is_read() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.handshake_as(2).await.unwrap();
    raw.send_frame(b"a fine first frame").await;
    assert_eq!(
        recv(&mut s.alice_in).await,
        (s.net.key(2), b"a fine first frame".to_vec())
    );
    // Announce a 1 GiB record; send only its length.
    raw.send_raw(&(1u32 << 30).to_be_bytes()).await;
    let line = logs
        .wait_for_warning(&["larger than the maximum", "Carol"])
        .await;
    assert!(line.contains("closing the connection"), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn frame_that_does_not_decrypt_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.handshake_as(2).await.unwrap();
    raw.send_record(vec![0x5a; 100]).await;
    let line = logs
        .wait_for_warning(&["failed authentication", "Carol"])
        .await;
    assert!(line.contains("closing the connection"), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn peer_key_not_in_the_network_map_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let stranger = identity(9);
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    // The handshake completes from the stranger's point of view (it sends
    // the last message); Alice checks the proof and hangs up.
    raw.handshake(|noise| IdentityProof::sign("Mallory", &stranger, noise))
        .await
        .unwrap();
    raw.send_frame(b"let me in").await;
    let line = logs
        .wait_for_warning(&["rejected inbound connection", "not in the network map"])
        .await;
    assert!(line.contains("Mallory"), "{line}");
    assert!(line.contains(&hex(&public(&stranger))), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn peer_claiming_another_partys_name_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    // Carol's real key, but she claims to be Bob.
    let carol = identity(2);
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.handshake(|noise| IdentityProof::sign("Bob", &carol, noise))
        .await
        .unwrap();
    raw.send_frame(b"I am Bob").await;
    let line = logs
        .wait_for_warning(&["rejected inbound connection", "claims to be `Bob`"])
        .await;
    assert!(line.contains("identity key of `Carol`"), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn peer_presenting_another_partys_key_without_its_private_key_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    // Mallory presents Bob's public key and name, but can only sign with
    // her own key: the signature does not verify under Bob's key.
    let mallory = identity(9);
    let bob_key = s.net.key(1);
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.handshake(|noise| {
        let mut proof = IdentityProof::sign("Bob", &mallory, noise);
        proof.identity = bob_key;
        proof
    })
    .await
    .unwrap();
    raw.send_frame(b"I am Bob, honest").await;
    let line = logs
        .wait_for_warning(&[
            "rejected inbound connection",
            "does not cover the Noise static key",
            &hex(&bob_key),
        ])
        .await;
    assert!(
        line.contains("does not hold that identity's private key"),
        "{line}"
    );
    raw.expect_closed().await;

    // Replaying a genuine proof captured from another connection (here
    // Alice's own, which a spy receives in any handshake with her) fails
    // the same way: it is signed for that connection's Noise key.
    let mut spy = RawPeer::connect(s.alice_addr()).await;
    let captured = spy.handshake_as(2).await.unwrap();
    assert_eq!(captured.identity, s.net.key(0));
    drop(spy);
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.handshake(|_noise| captured.clone()).await.unwrap();
    let alice_hex = hex(&s.net.key(0));
    logs.wait_for_warning(&["rejected inbound connection", "does not cover", &alice_hex])
        .await;
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn replayed_frame_within_a_connection_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let mut raw = RawPeer::connect(s.alice_addr()).await;
    raw.handshake_as(2).await.unwrap();
    raw.send_frame(b"pay 10").await;
    assert_eq!(
        recv(&mut s.alice_in).await,
        (s.net.key(2), b"pay 10".to_vec())
    );
    let captured = raw.sent.last().unwrap().clone();
    raw.send_record(captured).await;
    let line = logs
        .wait_for_warning(&["failed authentication", "replayed", "Carol"])
        .await;
    assert!(line.contains("closing the connection"), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn replayed_frame_on_a_new_connection_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let mut first = RawPeer::connect(s.alice_addr()).await;
    first.handshake_as(2).await.unwrap();
    first.send_frame(b"pay 10").await;
    assert_eq!(recv(&mut s.alice_in).await.1, b"pay 10");
    let recorded = first.sent.clone();
    drop(first);

    // 1. The whole recorded conversation, replayed verbatim on a new
    // connection: Alice's fresh ephemeral key makes the old third
    // handshake message undecryptable.
    let mut replay = RawPeer::connect(s.alice_addr()).await;
    for record in recorded.clone() {
        replay.send_record(record).await;
    }
    logs.wait_for_warning(&["rejected inbound connection", "rejected by Noise"])
        .await;
    replay.expect_closed().await;

    // 2. An honest new handshake followed by the old frame: the new
    // session keys do not decrypt it.
    let mut honest = RawPeer::connect(s.alice_addr()).await;
    honest.handshake_as(2).await.unwrap();
    honest.send_record(recorded.last().unwrap().clone()).await;
    logs.wait_for_warning(&["failed authentication", "Carol"])
        .await;
    honest.expect_closed().await;

    s.bob_reaches_alice().await;
    s.nothing_else_delivered();
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let (logs, _guard) = Logs::capture();
    let mut s = Setup::new().await;
    let raw = RawPeer::connect(s.alice_addr()).await;
    let line = logs
        .wait_for_warning(&["rejected inbound connection", "did not finish within"])
        .await;
    assert!(line.contains("500ms"), "{line}");
    raw.expect_closed().await;
    s.bob_reaches_alice().await;
}

#[tokio::test]
async fn dialled_address_answered_by_another_party_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut net = Net::new(3).await;
    // Carol's node listens where the map says Bob is.
    let bob_listener = net.listeners[1].take().unwrap();
    let (_impostor, mut impostor_in) =
        TcpTransport::from_listener(identity(2), bob_listener, net.map.clone(), test_config())
            .unwrap();
    let (alice, _alice_in) = net.start(0);
    alice
        .send(&net.key(1), b"for Bob only".to_vec())
        .await
        .unwrap();
    let line = logs
        .wait_for_warning(&["cannot connect to peer", "dialled `Bob`"])
        .await;
    assert!(line.contains("is `Carol`"), "{line}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        impostor_in.try_recv().is_err(),
        "the frame went to the impostor"
    );
}

fn hex(key: &PublicKey) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}
