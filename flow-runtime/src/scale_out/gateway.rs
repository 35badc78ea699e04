//! [`Gateway`]: the one process of a scale-out node that holds the node's
//! identity key and its peer links. It authenticates peers (the TCP
//! transport, unchanged), checks that each frame is a session message,
//! routes it to its session's partition (`routing.rs`) through `flow_inbox`,
//! and sends what the partitions queued in `flow_emitted`. It keeps no
//! state that must survive: killed and started again, it loses at most
//! frames in flight, which the session protocol redelivers.

use super::control::{Control, pg_err};
use super::relay::{channel, wait_for_notification};
use super::routing::partition_of;
use crate::PublicKey;
use crate::protocol::WireMessage;
use crate::store::StoreError;
use crate::tcp::TcpTransport;
use crate::transport::{Incoming, Transport};
use postgres::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Frames moved per statement.
const BATCH: usize = 2_000;

/// A scale-out node's gateway: holds the node's key and peer links, routes
/// each frame from a peer to its session's partition through `flow_inbox`,
/// and sends what the partitions queued in `flow_emitted`. It keeps no
/// state that must survive a crash (see the [scale-out docs](super)).
pub struct Gateway {
    control: Control,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("schema", &self.control.schema)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Connects to the node's control schema (setting it up if new) and
    /// takes the node's gateway lock: a second gateway of the same node
    /// waits up to 5 s (a crashed predecessor's connection may not be
    /// closed yet), then is refused. Call from a thread that is not a
    /// tokio runtime's.
    pub fn connect(connection: &str, partitions: u32) -> Result<Self, StoreError> {
        let mut control = Control::connect(connection, partitions)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let locked: bool = control
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('flow-runtime gateway ' || $1))",
                    &[&control.schema],
                )
                .map_err(|e| pg_err("cannot take the gateway's lock", &e))?
                .get(0);
            if locked {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError(format!(
                    "another gateway is running for the node in schema `{}`; a node has one gateway",
                    control.schema
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { control })
    }

    /// Relays between `transport` (the node's TCP links; `incoming` its
    /// received frames) and the partitions until `stop` is set or the
    /// transport stops. Blocks: call from a thread that is not a tokio
    /// runtime's; the relay runs on `runtime`, the database work on
    /// threads of its own (the blocking PostgreSQL client must not run on
    /// a runtime's threads).
    pub fn run(
        self,
        runtime: &tokio::runtime::Handle,
        transport: TcpTransport,
        incoming: Incoming,
        stop: Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        let transport = Arc::new(transport);
        let partitions = self.control.partitions;
        let me = transport.identity();
        // Peer frames -> inbox writer thread.
        let (to_inbox, inbox_rx) =
            std::sync::mpsc::sync_channel::<Vec<(u32, PublicKey, Vec<u8>)>>(64);
        let mut inbox_client = self.control.reconnect()?;
        let inbox_channel = channel(&self.control.schema, "inbox");
        let config = self.control.config.clone();
        let inbox_writer = std::thread::Builder::new()
            .name("gateway-inbox".into())
            .spawn(move || {
                while let Ok(batch) = inbox_rx.recv() {
                    if let Err(e) = push_inbox(&mut inbox_client, &inbox_channel, &batch) {
                        tracing::warn!(error = %e.0, frames = batch.len(),
                            "frames from peers not queued for the workers; their senders redeliver them");
                        if inbox_client.is_closed()
                            && let Ok(c) = super::control::connect_patiently(&config)
                        {
                            inbox_client = c;
                        }
                    }
                }
            })
            .map_err(|e| StoreError(format!("cannot start the gateway's inbox writer: {e}")))?;
        // Emitted reader thread -> frames for peers.
        let (to_peers, peers_rx) = mpsc::channel::<Vec<(PublicKey, Vec<u8>)>>(64);
        let mut emitted_client = self.control.reconnect()?;
        let emitted_channel = channel(&self.control.schema, "emitted");
        let config = self.control.config.clone();
        let reading = stop.clone();
        let emitted_reader = std::thread::Builder::new()
            .name("gateway-emitted".into())
            .spawn(move || {
                let mut listening = false;
                while !reading.load(Ordering::Relaxed) {
                    if !listening {
                        listening = emitted_client
                            .batch_execute(&format!(
                                "LISTEN {}",
                                crate::store::quote_ident(&emitted_channel)
                            ))
                            .is_ok();
                    }
                    wait_for_notification(&mut emitted_client);
                    loop {
                        match take_emitted(&mut emitted_client) {
                            Ok(frames) if frames.is_empty() => break,
                            Ok(frames) => {
                                let more = frames.len() == BATCH;
                                if to_peers.blocking_send(frames).is_err() {
                                    return;
                                }
                                if !more {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e.0, "cannot read frames for peers; retrying");
                                if emitted_client.is_closed() {
                                    listening = false;
                                    if let Ok(c) = super::control::connect_patiently(&config) {
                                        emitted_client = c;
                                    }
                                }
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError(format!("cannot start the gateway's emitted reader: {e}")))?;
        tracing::info!(schema = %self.control.schema, partitions, endpoint = %transport.endpoint(), "gateway started");
        runtime.block_on(relay(
            transport, me, partitions, incoming, peers_rx, to_inbox, stop,
        ));
        let _ = inbox_writer.join();
        let _ = emitted_reader.join();
        drop(self.control);
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The gateway's async side: frames from peers to the inbox writer, frames
/// from the emitted reader to peers.
async fn relay(
    transport: Arc<TcpTransport>,
    me: PublicKey,
    partitions: u32,
    mut incoming: Incoming,
    mut peers_rx: mpsc::Receiver<Vec<(PublicKey, Vec<u8>)>>,
    to_inbox: std::sync::mpsc::SyncSender<Vec<(u32, PublicKey, Vec<u8>)>>,
    stop: Arc<AtomicBool>,
) {
    {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                frame = incoming.recv() => {
                    let Some(first) = frame else { break };
                    let mut batch = Vec::new();
                    route(&transport, me, partitions, first, &mut batch);
                    while batch.len() < BATCH {
                        match incoming.try_recv() {
                            Ok(f) => route(&transport, me, partitions, f, &mut batch),
                            Err(_) => break,
                        }
                    }
                    if !batch.is_empty() && to_inbox.try_send(batch).is_err() {
                        tracing::debug!("the inbox writer is behind; frames dropped for redelivery");
                    }
                }
                frames = peers_rx.recv() => {
                    let Some(frames) = frames else { break };
                    for (to, frame) in frames {
                        if let Err(e) = transport.try_send(&to, frame) {
                            tracing::debug!(error = %e, "a frame for a peer was not queued; its partition re-sends it");
                        }
                    }
                }
                _ = tick.tick() => if stop.load(Ordering::Relaxed) { break },
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(to_inbox);
        drop(peers_rx);
        transport.shutdown().await;
    }
}

/// Checks one frame from `peer` and adds it to `batch` with its partition;
/// a frame that is not a session message means a broken or hostile peer:
/// it is dropped and the peer's link closed.
fn route(
    transport: &TcpTransport,
    me: PublicKey,
    partitions: u32,
    (peer, frame): (PublicKey, Vec<u8>),
    batch: &mut Vec<(u32, PublicKey, Vec<u8>)>,
) {
    match WireMessage::decode(&frame) {
        Ok(message) => batch.push((partition_of(&peer, &message, partitions), peer, frame)),
        Err(e) => {
            tracing::warn!(peer = %transport.peer_name(&peer), error = %e,
                "dropped a frame that does not decode as a session message");
            if peer != me {
                transport.disconnect(&peer, &e);
            }
        }
    }
}

/// Queues frames for their partitions and wakes the workers: one statement.
fn push_inbox(
    client: &mut Client,
    channel: &str,
    frames: &[(u32, PublicKey, Vec<u8>)],
) -> Result<(), StoreError> {
    let partitions: Vec<i32> = frames.iter().map(|(p, _, _)| *p as i32).collect();
    let peers: Vec<&[u8]> = frames.iter().map(|(_, p, _)| &p.0[..]).collect();
    let bodies: Vec<&[u8]> = frames.iter().map(|(_, _, f)| &f[..]).collect();
    client
        .execute(
            "WITH queued AS (INSERT INTO flow_inbox (partition, peer, frame) \
                 SELECT * FROM unnest($1::integer[], $2::bytea[], $3::bytea[]) RETURNING 1) \
             SELECT pg_notify($4, '') FROM (SELECT count(*) FROM queued) AS n",
            &[&partitions, &peers, &bodies, &channel],
        )
        .map_err(|e| pg_err("cannot queue frames for the workers", &e))?;
    Ok(())
}

/// Takes up to [`BATCH`] frames the partitions queued for peers, in order.
fn take_emitted(client: &mut Client) -> Result<Vec<(PublicKey, Vec<u8>)>, StoreError> {
    let rows = client
        .query(
            "WITH taken AS (DELETE FROM flow_emitted WHERE id IN \
                 (SELECT id FROM flow_emitted ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, peer, frame) \
             SELECT peer, frame FROM taken ORDER BY id",
            &[&(BATCH as i64)],
        )
        .map_err(|e| pg_err("cannot take frames for peers", &e))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let peer: Vec<u8> = r.get(0);
            <[u8; 32]>::try_from(peer.as_slice())
                .ok()
                .map(|k| (PublicKey(k), r.get::<_, Vec<u8>>(1)))
        })
        .collect())
}
