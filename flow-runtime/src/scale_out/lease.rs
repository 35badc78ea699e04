//! Leases: which worker may commit a partition's steps, for how long.
//!
//! A lease is a row of `flow_leases`: the holder's name, an expiry in the
//! server's clock, and a **fencing token** that grows at every claim. A
//! worker claims a partition whose lease has expired (or was released),
//! renews it well before it expires, and opens the partition's store fenced
//! by the token: every commit re-checks, inside its own transaction, that
//! the lease row still carries that token and has not expired. So a worker
//! that stalls past its lease (paused, partitioned from the database, stuck
//! in a step) cannot commit anything once another worker may have taken the
//! partition over: its commits fail, nothing of its batches happens, and
//! nothing it would have sent is released. Only the server's clock is
//! used: workers' clocks may drift freely.

use super::control::pg_err;
use crate::store::StoreError;
use postgres::Client;
use std::time::Duration;

/// A partition this worker holds, with the token its commits are fenced by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// The fencing token of this claim.
    pub token: i64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Records that worker `name` is alive for `ttl`; returns how many workers
/// are alive (itself included), for the fair share.
pub(crate) fn heartbeat(client: &mut Client, name: &str, ttl: Duration) -> Result<u32, StoreError> {
    client
        .execute(
            "INSERT INTO flow_workers (name, expires_at) VALUES ($1, now() + $2 * interval '1 second') \
             ON CONFLICT (name) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            &[&name, &secs(ttl)],
        )
        .map_err(|e| pg_err("cannot record the worker's heartbeat", &e))?;
    let alive: i64 = client
        .query_one(
            "SELECT count(*) FROM flow_workers WHERE expires_at > now()",
            &[],
        )
        .map_err(|e| pg_err("cannot count the workers", &e))?
        .get(0);
    Ok(u32::try_from(alive).unwrap_or(u32::MAX).max(1))
}

/// Removes worker `name`'s heartbeat (a clean stop).
pub(crate) fn leave(client: &mut Client, name: &str) -> Result<(), StoreError> {
    client
        .execute("DELETE FROM flow_workers WHERE name = $1", &[&name])
        .map_err(|e| pg_err("cannot remove the worker's heartbeat", &e))?;
    Ok(())
}

/// Claims one partition whose lease has expired or was released, for `ttl`:
/// the lowest such partition no other claimant is taking right now.
pub(crate) fn claim(
    client: &mut Client,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE flow_leases l SET holder = $1, token = l.token + 1, \
                 expires_at = now() + $2 * interval '1 second' \
             WHERE l.partition = (SELECT partition FROM flow_leases WHERE expires_at <= now() \
                                  ORDER BY partition LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING l.partition, l.token",
            &[&holder, &secs(ttl)],
        )
        .map_err(|e| pg_err("cannot claim a partition", &e))?;
    Ok(row.map(|r| Lease {
        partition: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
        token: r.get(1),
    }))
}

/// Extends `held` by `ttl`; returns those still held (a lease that expired,
/// or was taken over, cannot be renewed: the worker must drop it).
pub(crate) fn renew(
    client: &mut Client,
    held: &[Lease],
    ttl: Duration,
) -> Result<Vec<Lease>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = held.iter().map(|l| l.partition as i32).collect();
    let tokens: Vec<i64> = held.iter().map(|l| l.token).collect();
    let rows = client
        .query(
            "UPDATE flow_leases l SET expires_at = now() + $3 * interval '1 second' \
             FROM unnest($1::integer[], $2::bigint[]) AS h(p, t) \
             WHERE l.partition = h.p AND l.token = h.t AND l.expires_at > now() \
             RETURNING l.partition, l.token",
            &[&partitions, &tokens, &secs(ttl)],
        )
        .map_err(|e| pg_err("cannot renew the leases", &e))?;
    let mut kept: Vec<Lease> = rows
        .iter()
        .map(|r| Lease {
            partition: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
            token: r.get(1),
        })
        .collect();
    kept.sort();
    Ok(kept)
}

/// Gives `lease` up at once (its partition's node has stopped), so another
/// worker need not wait for it to expire.
pub(crate) fn release(client: &mut Client, lease: Lease) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE flow_leases SET holder = NULL, expires_at = '-infinity' \
             WHERE partition = $1 AND token = $2",
            &[&(lease.partition as i32), &lease.token],
        )
        .map_err(|e| pg_err("cannot release a lease", &e))?;
    Ok(())
}

/// One partition's lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The partition.
    pub partition: u32,
    /// The worker that claimed it last (`None`: never claimed, or released).
    pub holder: Option<String>,
    /// The fencing token of the last claim.
    pub token: i64,
    /// Whether the lease has not expired: its holder may commit.
    pub current: bool,
}

/// Every partition's lease (for operators and tests).
pub(crate) fn leases(client: &mut Client) -> Result<Vec<LeaseState>, StoreError> {
    let rows = client
        .query(
            "SELECT partition, holder, token, expires_at > now() FROM flow_leases ORDER BY partition",
            &[],
        )
        .map_err(|e| pg_err("cannot read the leases", &e))?;
    Ok(rows
        .iter()
        .map(|r| LeaseState {
            partition: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
            holder: r.get(1),
            token: r.get(2),
            current: r.get(3),
        })
        .collect())
}
