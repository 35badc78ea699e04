//! The receiving side of the session protocol on a [`NodeCore`]: frames
//! from peers are checked against the session they name, deduplicated by
//! sequence number (what was already consumed or buffered is only acked
//! again), buffered in order, and acknowledged in the same group commit.
//! Acks from peers delete the acknowledged message from the durable outbox.
//! Sending and re-sending are the delivery module's (`delivery.rs`).

use super::batch::Batch;
use super::core::{NodeCore, store_err};
use super::records::*;
use super::{NodeError, Output};
use crate::protocol::{Body, WireMessage};
use crate::registry::{ResponderLookup, describe_versions};
use crate::store::Table;
use crate::{FlowError, FlowErrorKind, FlowSession, Party, PublicKey, SessionId, Timestamp};

/// What an `Init` asks for.
pub(super) struct Initiation<'a> {
    pub flow: &'a str,
    pub version: u32,
    pub initiator: Party,
    pub created_at: Option<u64>,
}

impl NodeCore {
    /// Processes frames received from peers (authenticated by the transport
    /// as coming from `from`), as one group commit. A frame that does not
    /// decode as a [`WireMessage`] is logged and dropped: a peer's bytes are
    /// untrusted.
    pub fn deliver(
        &mut self,
        now: Timestamp,
        frames: Vec<(PublicKey, Vec<u8>)>,
    ) -> Result<Output, NodeError> {
        let messages = frames
            .into_iter()
            .filter_map(|(from, frame)| match WireMessage::decode(&frame) {
                Ok(message) => Some((from, message)),
                Err(e) => {
                    tracing::warn!(peer = ?from, "dropped a frame: {e}");
                    None
                }
            })
            .collect();
        self.deliver_messages(now, messages)
    }

    /// [`deliver`](Self::deliver) for frames the driver already decoded
    /// (the tokio node decodes each frame once, to police its peers and to
    /// tell acks from real work), as one group commit.
    pub fn deliver_messages(
        &mut self,
        now: Timestamp,
        messages: Vec<(PublicKey, WireMessage)>,
    ) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            for (from, message) in messages {
                core.on_message(b, &from, message)?;
            }
            Ok(())
        })
    }

    pub(super) fn on_message(
        &mut self,
        b: &mut Batch,
        from: &PublicKey,
        msg: WireMessage,
    ) -> Result<(), NodeError> {
        match msg {
            WireMessage::Ack {
                session,
                from_initiator,
                seq,
                responder_version,
            } => {
                if let (true, 0, Some(version)) = (from_initiator, seq, responder_version) {
                    self.learn_responder_version(b, from, SessionId(session), version)?;
                }
                let side = if from_initiator {
                    Side::Initiator
                } else {
                    Side::Responder
                };
                let ours = SessionKey {
                    id: SessionId(session),
                    side,
                };
                let key = outbox_key(ours, seq);
                // Every message on a live session went to its counterparty:
                // an ack from it deletes the entry without reading it (the
                // session is usually in the batch or the cache already).
                if b.session_ref(&*self.store, ours)
                    .map_err(store_err)?
                    .is_some_and(|s| s.counterparty.key() == from)
                {
                    b.delete(Table::OUTBOX, key);
                } else if let Some(v) = b
                    .get(&*self.store, &Table::OUTBOX, &key)
                    .map_err(store_err)?
                {
                    match rmp_serde::from_slice::<OutboxRecord>(&v) {
                        Ok(r) if r.to != *from => {
                            tracing::warn!(peer = ?from, "ignored an ack for a message sent to another peer")
                        }
                        _ => b.delete(Table::OUTBOX, key),
                    }
                }
                Ok(())
            }
            WireMessage::Session {
                session,
                from_initiator,
                seq,
                body,
            } => {
                let key = SessionKey {
                    id: SessionId(session),
                    side: if from_initiator {
                        Side::Responder
                    } else {
                        Side::Initiator
                    },
                };
                let ack = WireMessage::Ack {
                    session,
                    from_initiator,
                    seq,
                    responder_version: None,
                };
                match body {
                    Body::Init {
                        flow,
                        version,
                        initiator,
                        created_at,
                    } => self.on_init(
                        b,
                        from,
                        key,
                        seq,
                        Initiation {
                            flow: &flow,
                            version,
                            initiator,
                            created_at,
                        },
                    ),
                    Body::Data(payload) => {
                        self.on_sequenced(b, from, key, seq, Inbound::Data(payload), ack)
                    }
                    Body::End(error) => {
                        self.on_sequenced(b, from, key, seq, Inbound::End(error), ack)
                    }
                }
            }
        }
    }

    pub(super) fn emit(&self, b: &mut Batch, to: &PublicKey, msg: &WireMessage) {
        match msg.encode() {
            Ok(frame) => b.emit.push((*to, frame)),
            Err(e) => tracing::error!("{e}"),
        }
    }

    pub(super) fn tombstoned(&self, b: &Batch, key: SessionKey) -> Result<bool, NodeError> {
        Ok(b.get(&*self.store, &Table::TOMBSTONES, &key.bytes())
            .map_err(store_err)?
            .is_some())
    }

    /// Keeps the VERSION a responder reported in its ack of our `Init`, for
    /// `session.counterparty_version()` on the initiator's side.
    fn learn_responder_version(
        &mut self,
        b: &mut Batch,
        from: &PublicKey,
        id: SessionId,
        version: u32,
    ) -> Result<(), NodeError> {
        let key = SessionKey {
            id,
            side: Side::Initiator,
        };
        if let Some(mut rec) = b.session(&*self.store, key).map_err(store_err)?
            && rec.counterparty.key() == from
            && rec.counterparty_version != Some(version)
        {
            rec.counterparty_version = Some(version);
            b.put_session(key, rec);
        }
        Ok(())
    }

    /// The ack of an `Init`: with the VERSION of the responder it started.
    fn init_ack(key: SessionKey, responder_version: Option<u32>) -> WireMessage {
        WireMessage::Ack {
            session: key.id.0,
            from_initiator: true,
            seq: 0,
            responder_version,
        }
    }

    pub(super) fn on_init(
        &mut self,
        b: &mut Batch,
        from: &PublicKey,
        key: SessionKey,
        seq: u64,
        init: Initiation<'_>,
    ) -> Result<(), NodeError> {
        let Initiation {
            flow,
            version,
            initiator,
            created_at,
        } = init;
        if key.side != Side::Responder || seq != 0 || initiator.key() != from {
            tracing::warn!(peer = ?from, session = %key.id, "dropped a malformed session init");
            return Ok(());
        }
        let collision = match b.session(&*self.store, key).map_err(store_err)? {
            Some(existing) if existing.counterparty.key() == from => {
                // Duplicate: already processed.
                let ack = Self::init_ack(key, existing.own_version);
                self.emit(b, from, &ack);
                return Ok(());
            }
            Some(_) => true,
            None => false,
        };
        if self.tombstoned(b, key)? {
            self.emit(b, from, &Self::init_ack(key, None));
            return Ok(());
        }
        let refuse = |core: &Self, b: &mut Batch, error: FlowError| {
            tracing::info!(peer = ?from, flow, "refused a session: {}", error.message());
            let end = WireMessage::Session {
                session: key.id.0,
                from_initiator: false,
                seq: 0,
                body: Body::End(Some(error)),
            };
            core.emit(b, from, &end);
        };
        if collision {
            refuse(
                self,
                b,
                FlowError::with_kind(
                    FlowErrorKind::Refused,
                    format!(
                        "{} already has a session {} with another peer: `{flow}` was not started; start the flow again (it will pick a new session id)",
                        self.identity, key.id
                    ),
                ),
            );
            return Ok(());
        }
        // What lets ended sessions be forgotten: an initiation is served
        // only while it is younger than half the retention (and not dated
        // far ahead), so by the time a tombstone expires, any redelivery of
        // the `Init` it guards is refused here instead of starting a second
        // responder. See `NodeConfig::session_retention`.
        if let Some(reason) = self.initiation_too_old(created_at) {
            refuse(
                self,
                b,
                FlowError::with_kind(
                    FlowErrorKind::Refused,
                    format!(
                        "{} refuses the initiation of `{flow}` in session {}: {reason}; start the flow again",
                        self.identity, key.id
                    ),
                ),
            );
            return Ok(());
        }
        if self.draining {
            refuse(
                self,
                b,
                FlowError::with_kind(
                    FlowErrorKind::Refused,
                    format!(
                        "{} is draining and takes no new sessions: `{flow}` was not started; try again after its upgrade",
                        self.identity
                    ),
                ),
            );
            return Ok(());
        }
        // The counterparty is whoever the transport authenticated, under
        // the name the directory lists for that key: never the name the
        // frame claims.
        let initiator = match &self.peer_names {
            None => initiator,
            Some(names) => match names(from) {
                Some(name) => Party::new(name, *from),
                None => {
                    tracing::warn!(peer = ?from, session = %key.id, flow, "refused a session from a key that is not in the network map");
                    return Ok(());
                }
            },
        };
        let new_flow = match self
            .registry
            .responder(flow, version, FlowSession::from_id(key.id))
        {
            ResponderLookup::UnknownFlow => {
                refuse(
                    self,
                    b,
                    FlowError::with_kind(
                        FlowErrorKind::UnknownFlow,
                        format!(
                            "{} has no responder registered for flow `{flow}` (version {version}): register one on that node with `responder::<{flow}::Flow>(..)`",
                            self.identity
                        ),
                    ),
                );
                return Ok(());
            }
            ResponderLookup::VersionNotSpoken(spoken) => {
                refuse(
                    self,
                    b,
                    FlowError::with_kind(
                        FlowErrorKind::Refused,
                        format!(
                            "{} does not answer version {version} of flow `{flow}`: its responder speaks initiator {}; run a version of `{flow}` it speaks, or register a responder for version {version} there (`responder_for_versions`)",
                            self.identity,
                            describe_versions(&spoken)
                        ),
                    ),
                );
                return Ok(());
            }
            ResponderLookup::Found(Err(e)) => {
                refuse(self, b, e);
                return Ok(());
            }
            ResponderLookup::Found(Ok(f)) => f,
        };
        // A peer's live responders are bounded: past the bound the
        // initiation is dropped unacknowledged, so the initiator's outbox
        // keeps it and redelivers it until a slot is free.
        let count_key = peer_responders_key(from);
        let running = decode_count(
            b.get(&*self.store, &Table::META, &count_key)
                .map_err(store_err)?
                .as_deref(),
        );
        if running >= self.config.max_responders_per_peer {
            self.defer_initiation(&initiator, key, flow, running);
            return Ok(());
        }
        b.put(Table::META, count_key, (running + 1).to_be_bytes().to_vec());
        let own_version = new_flow.flow_type.version();
        let run = self.fresh_run_id()?;
        b.put_session(
            key,
            SessionRecord {
                run,
                counterparty: initiator,
                initiating_flow: flow.to_owned(),
                next_send: 0,
                next_consume: 1,
                inbox: Default::default(),
                ended: None,
                counterparty_version: Some(version),
                own_version: Some(own_version),
            },
        );
        self.create_run(b, run, new_flow, vec![key], false, None);
        self.emit(b, from, &Self::init_ack(key, Some(own_version)));
        Ok(())
    }

    /// Reports an initiation deferred by the responder bound: counted,
    /// logged at DEBUG each time, and at WARN at most once per peer per
    /// [`DEFERRAL_WARNING_EVERY`](super::DEFERRAL_WARNING_EVERY) (see
    /// `deferrals.rs` for why).
    fn defer_initiation(&mut self, peer: &Party, key: SessionKey, flow: &str, running: u32) {
        self.metrics.deferred_initiations.increment(1);
        tracing::debug!(peer = %peer, session = %key.id, flow, running,
            "initiation deferred: the peer has its bound of responder flows running (max_responders_per_peer); its redelivery brings it back");
        if let Some(deferred) = self.metrics.deferral_warnings.record(peer.key(), self.now) {
            tracing::warn!(peer = %peer, bound = self.config.max_responders_per_peer, deferred,
                every_s = super::DEFERRAL_WARNING_EVERY.as_secs(),
                "initiations deferred: the peer has as many responder flows running on this node as it may (`[node] max_responders_per_peer`); the flows past the bound wait for their redelivery and run in waves, slower, though none fails. If this peer is meant to run that many flows with this node at once, raise `[node] max_responders_per_peer` (NodeConfig::max_responders_per_peer) to at least that number");
        }
    }

    /// Why an initiation created at `created_at` (the initiator's clock) is
    /// too old, or too far ahead, to be served; `None` if it may be.
    fn initiation_too_old(&self, created_at: Option<u64>) -> Option<String> {
        let Some(created_at) = created_at else {
            return Some(format!(
                "it carries no creation time (it comes from a node of wire version 1, which this node, of version {}, does not serve initiations from); upgrade the initiating node",
                crate::protocol::WIRE_VERSION
            ));
        };
        let retention =
            u64::try_from(self.config.session_retention.as_millis()).unwrap_or(u64::MAX);
        let max_age = retention / 2;
        let max_ahead = retention / 4;
        let now = self.now.0;
        if now.saturating_sub(created_at) > max_age {
            Some(format!(
                "it was created {} s ago, and initiations older than {} s (half the session retention) are not served",
                (now - created_at) / 1000,
                max_age / 1000
            ))
        } else if created_at.saturating_sub(now) > max_ahead {
            Some(format!(
                "it is dated {} s ahead of this node's clock (more than {} s): check both nodes' clocks",
                (created_at - now) / 1000,
                max_ahead / 1000
            ))
        } else {
            None
        }
    }

    pub(super) fn on_sequenced(
        &mut self,
        b: &mut Batch,
        from: &PublicKey,
        key: SessionKey,
        seq: u64,
        item: Inbound,
        ack: WireMessage,
    ) -> Result<(), NodeError> {
        let Some(rec) = b.session_ref(&*self.store, key).map_err(store_err)? else {
            if self.tombstoned(b, key)? {
                // Our end is gone: acknowledge so the sender stops resending.
                self.emit(b, from, &ack);
            } else if key.side == Side::Initiator {
                // An initiating end is recorded before its `Init` leaves, so
                // a message for one we do not hold is for a session that
                // ended longer ago than the session retention (or one we
                // never had): acknowledged so the sender stops, never applied.
                tracing::info!(peer = ?from, session = %key.id, seq,
                    "message for a session this node does not hold (ended before the session retention, or never its own) acknowledged and dropped");
                self.emit(b, from, &ack);
            } else {
                // Probably ahead of its session's init: the sender redelivers.
                tracing::debug!(peer = ?from, session = %key.id, seq, "message for an unknown session dropped");
            }
            return Ok(());
        };
        if rec.counterparty.key() != from {
            tracing::warn!(peer = ?from, session = %key.id, "dropped a message from a peer that is not the session's counterparty");
            return Ok(());
        }
        if seq < rec.next_consume || rec.inbox.contains_key(&seq) || rec.ended.is_some() {
            self.emit(b, from, &ack); // duplicate
            return Ok(());
        }
        let run = rec.run;
        // What a peer can make a session hold is bounded: a message too far
        // ahead, or one that would take the session past its byte bound, is
        // refused (neither buffered nor acknowledged); the sender's
        // redelivery brings it back once the flow has consumed what is
        // before it. The very next message the flow will consume is always
        // taken, so a session never stalls on its own bounds.
        if seq >= rec.next_consume.saturating_add(self.config.receive_window) {
            tracing::debug!(peer = ?from, session = %key.id, seq, next = rec.next_consume,
                "message beyond the receive window refused (the sender redelivers it)");
            return Ok(());
        }
        if seq != rec.next_consume {
            let held: usize = rec.inbox.values().map(Inbound::size).sum();
            if held.saturating_add(item.size()) > self.config.max_buffered_bytes_per_session {
                tracing::debug!(peer = ?from, session = %key.id, seq, held,
                    "message refused: the session already holds its bound of unconsumed bytes (the sender redelivers it)");
                return Ok(());
            }
        }
        if matches!(item, Inbound::End(_)) {
            // The peer will read nothing more: stop redelivering to it.
            let our_side = SessionKey {
                id: key.id,
                side: key.side,
            };
            for k in b
                .keys_with_prefix(&*self.store, &Table::OUTBOX, &our_side.bytes())
                .map_err(store_err)?
            {
                b.delete(Table::OUTBOX, k);
            }
        }
        if let Some(rec) = b.session_mut(&*self.store, key).map_err(store_err)? {
            rec.inbox.insert(seq, item);
        }
        self.wake(b, run);
        self.emit(b, from, &ack);
        Ok(())
    }
}
