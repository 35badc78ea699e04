//! Scale-out: one node's flows on several worker processes sharing one
//! PostgreSQL database, behind one gateway process that holds the node's
//! identity and peer links. The book's `docs/scale-out.md` (§6) says when
//! to use it, how to run it and what it guarantees; this is how it works.
//!
//! # Shape
//!
//! The node's state is split into a fixed number of **partitions**, each a
//! complete node store in a schema of its own (`<schema>_p0`, ...): a
//! flow, its sessions, its outbox entries and timers all live in one
//! partition. A partition is run by exactly one worker at a time as an
//! ordinary node: the same [`NodeCore`](crate::NodeCore), event loop and
//! [`Delivery`](crate::node::delivery::Delivery) as a single node, so the
//! session protocol (sequence numbers, dedup committed with the
//! checkpoint, durable outbox, redelivery) is exactly the one every other
//! node runs; nothing about exactly-once is re-implemented here.
//!
//! * **Leases** (`lease.rs`): a worker claims partitions (a fair share of
//!   them, by the workers' heartbeats) with leases that expire unless
//!   renewed; each claim bumps the partition's fencing token.
//! * **Fencing**: a partition's store checks in every commit, in the same
//!   statement, that its worker's lease still holds with the same token
//!   (`PostgresStore`'s fence). A worker that lost its lease (stalled, cut
//!   off, or just slow to notice) cannot commit a step, an ack or a send.
//! * **Routing** (`routing.rs`): the gateway computes a frame's partition
//!   from the frame alone: sessions this node initiates get ids that name
//!   their partition, sessions peers initiate are hashed.
//! * **Relay** (`relay.rs`, `gateway.rs`): two unlogged queue tables carry
//!   frames between the gateway and the workers, woken by `NOTIFY`. An
//!   inbound row is deleted by the partition commit that applied its frame
//!   (same transaction, behind the same lease check). The queues may still
//!   lose frames (a server crash empties them); the protocol redelivers.
//!
//! # Why this shape
//!
//! It is the smallest that keeps one implementation of the protocol: a
//! partition is a node, with a different store and transport. Claiming
//! single flows instead would need the node core's in-memory indexes
//! (runnable flows, decoded checkpoints) shared between processes.
//! What it does not do is in the book (§6.5): services' tables are per
//! partition, and link events do not reach the partitions.

mod control;
mod gateway;
mod lease;
mod relay;
mod routing;
mod worker;

pub use control::{CONTROL_LAYOUT, Control, StartRequest};
pub use gateway::Gateway;
pub use lease::{Lease, LeaseState};
pub use relay::RelayTransport;
pub use worker::{Configure, Worker, WorkerSettings};

use crate::FlowError;
use crate::node::records::ResultRecord;
use crate::store::{StoreError, quote_ident};
use control::pg_err;
use std::collections::BTreeMap;

/// Partitions of a node set up without saying how many.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// A finished flow's outcome as a partition recorded it.
#[derive(Debug, Clone)]
pub struct FinishedFlow {
    /// The partition.
    pub partition: u32,
    /// The client id it was started with, if any.
    pub client_id: Option<String>,
    /// `Flow::NAME`.
    pub flow: String,
    /// Its output (MessagePack) or error.
    pub outcome: Result<Vec<u8>, FlowError>,
}

/// What a scale-out node holds, read from every partition (one snapshot
/// each): for operators, and for tests that reconcile after faults.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Flows with a checkpoint (in flight, or in the hospital).
    pub in_flight: u64,
    /// Unacknowledged messages in the partitions' outboxes.
    pub outbox: u64,
    /// Start requests not yet taken by a worker.
    pub waiting_starts: u64,
    /// Frames from peers in the relay's inbox: not yet consumed by a
    /// partition's commit (each row is deleted by the commit that applied
    /// its frame).
    pub inbox: u64,
    /// Every kept result.
    pub finished: Vec<FinishedFlow>,
    /// Each partition's lease.
    pub leases: Vec<LeaseState>,
}

impl NodeStatus {
    /// Each worker holding a current (unexpired) lease, with how many
    /// partitions it holds: how the partitions are shared right now.
    pub fn partitions_by_worker(&self) -> BTreeMap<&str, usize> {
        let mut by_worker = BTreeMap::new();
        for lease in self.leases.iter().filter(|l| l.current) {
            if let Some(worker) = &lease.holder {
                *by_worker.entry(worker.as_str()).or_default() += 1;
            }
        }
        by_worker
    }
}

impl Control {
    /// How many results the partitions keep (finished flows not yet
    /// removed): one count per partition, without reading the results.
    pub fn finished_count(&mut self) -> Result<u64, StoreError> {
        let mut total = 0;
        for (_, schema) in self.partition_tables()? {
            let n: i64 = self
                .client
                .query_one(
                    &format!("SELECT count(*) FROM {schema}.flow_kv WHERE tbl = 'results'"),
                    &[],
                )
                .map_err(|e| pg_err("cannot count a partition's results", &e))?
                .get(0);
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }

    /// The partitions whose tables exist (a partition never claimed has
    /// none yet), each with its quoted schema.
    fn partition_tables(&mut self) -> Result<Vec<(u32, String)>, StoreError> {
        let mut schemas = Vec::new();
        for p in 0..self.partitions {
            let schema = quote_ident(&self.partition_schema(p));
            let exists: bool = self
                .client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!("{schema}.flow_kv")],
                )
                .map_err(|e| pg_err("cannot look for a partition's table", &e))?
                .get(0);
            if exists {
                schemas.push((p, schema));
            }
        }
        Ok(schemas)
    }

    /// Reads [`NodeStatus`].
    pub fn status(&mut self) -> Result<NodeStatus, StoreError> {
        let mut status = NodeStatus {
            leases: lease::leases(&mut self.client)?,
            ..NodeStatus::default()
        };
        let waiting: i64 = self
            .client
            .query_one("SELECT count(*) FROM flow_starts", &[])
            .map_err(|e| pg_err("cannot count start requests", &e))?
            .get(0);
        status.waiting_starts = u64::try_from(waiting).unwrap_or(0);
        let inbox: i64 = self
            .client
            .query_one("SELECT count(*) FROM flow_inbox", &[])
            .map_err(|e| pg_err("cannot count the inbox", &e))?
            .get(0);
        status.inbox = u64::try_from(inbox).unwrap_or(0);
        for (p, schema) in self.partition_tables()? {
            let counts = self
                .client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE tbl = 'checkpoints'), \
                                count(*) FILTER (WHERE tbl = 'outbox') FROM {schema}.flow_kv"
                    ),
                    &[],
                )
                .map_err(|e| pg_err("cannot count a partition's flows", &e))?;
            status.in_flight += u64::try_from(counts.get::<_, i64>(0)).unwrap_or(0);
            status.outbox += u64::try_from(counts.get::<_, i64>(1)).unwrap_or(0);
            let rows = self
                .client
                .query(
                    &format!("SELECT value FROM {schema}.flow_kv WHERE tbl = 'results'"),
                    &[],
                )
                .map_err(|e| pg_err("cannot read a partition's results", &e))?;
            for row in rows {
                let value: Vec<u8> = row.get(0);
                match rmp_serde::from_slice::<ResultRecord>(&value) {
                    Ok(r) => status.finished.push(FinishedFlow {
                        partition: p,
                        client_id: r.client_id,
                        flow: r.flow,
                        outcome: r.outcome.map(serde_bytes::ByteBuf::into_vec),
                    }),
                    Err(e) => tracing::warn!(partition = p, "a result record does not decode: {e}"),
                }
            }
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests;
