//! Forgetting ended sessions. A session's tombstone (what makes a late
//! redelivery on it a harmless duplicate) is deleted once the session has
//! been over for [`NodeConfig::session_retention`], together with any of
//! our messages on it the peer never acknowledged. Why no redelivery can
//! start the session again after that: see that setting, and the age check
//! on initiations in `receive.rs`.
//!
//! The sweep runs inside an ordinary group commit, at most every
//! [`SWEEP_EVERY_MAX`] (or a sixteenth of the retention if that is
//! shorter), and deletes at most [`SWEEP_LIMIT`] tombstones per commit so a
//! backlog never makes one commit large.
//!
//! [`NodeConfig::session_retention`]: super::NodeConfig::session_retention

use super::NodeError;
use super::batch::Batch;
use super::core::{NodeCore, store_err};
use super::records::*;
use crate::Timestamp;
use crate::store::Table;

/// Tombstones deleted per commit at most.
pub(super) const SWEEP_LIMIT: usize = 1024;

/// The longest time between two sweeps, in milliseconds.
pub(super) const SWEEP_EVERY_MAX: u64 = 60_000;

impl NodeCore {
    /// The retention in milliseconds.
    fn retention_ms(&self) -> u64 {
        u64::try_from(self.config.session_retention.as_millis()).unwrap_or(u64::MAX)
    }

    /// Deletes the tombstones (and unacknowledged messages) of sessions
    /// that ended more than the retention ago, when a sweep is due.
    pub(super) fn expire_tombstones(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        if self.now < self.next_tombstone_sweep {
            return Ok(());
        }
        let retention = self.retention_ms();
        self.next_tombstone_sweep = Timestamp(
            self.now
                .0
                .saturating_add((retention / 16).clamp(1, SWEEP_EVERY_MAX)),
        );
        if !self.tombstones_dated {
            self.date_undated_tombstones(b)?;
        }
        // A tombstone expires when `ended_at + retention <= now`.
        let Some(cutoff) = self.now.0.checked_sub(retention) else {
            return Ok(());
        };
        let upper = cutoff.saturating_add(1).to_be_bytes();
        let rows = self
            .store
            .range(&Table::TOMBSTONE_EXPIRY, &[], Some(&upper), SWEEP_LIMIT)
            .map_err(store_err)?;
        for (k, _) in &rows {
            b.delete(Table::TOMBSTONE_EXPIRY, k.clone());
            let Some((_, session)) = parse_tombstone_expiry_key(k) else {
                tracing::error!(key = ?k, "a tombstone expiry row with a key this node never writes: deleted");
                continue;
            };
            b.delete(Table::TOMBSTONES, session.bytes());
            for key in b
                .keys_with_prefix(&*self.store, &Table::OUTBOX, &session.bytes())
                .map_err(store_err)?
            {
                b.delete(Table::OUTBOX, key);
            }
        }
        if !rows.is_empty() {
            tracing::debug!(
                expired = rows.len(),
                "ended sessions past the session retention forgotten"
            );
        }
        if rows.len() == SWEEP_LIMIT {
            // More are due: the next commit goes on.
            self.next_tombstone_sweep = self.now;
        }
        Ok(())
    }

    /// Tombstones written before they expired are empty: each is dated now
    /// (its session ended at the latest now) and indexed, once. Safe for
    /// the same reason as any expiry: the only `Init`s those sessions had
    /// carry no creation time, and this node refuses those.
    fn date_undated_tombstones(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        let rows = self
            .store
            .range(&Table::TOMBSTONES, &[], None, usize::MAX)
            .map_err(store_err)?;
        let mut dated = 0usize;
        for (k, v) in rows {
            if !v.is_empty() {
                continue;
            }
            let Some(session) = parse_session_key(&k) else {
                tracing::error!(key = ?k, "a tombstone with a key this node never writes: deleted");
                b.delete(Table::TOMBSTONES, k);
                continue;
            };
            b.put(Table::TOMBSTONES, k, tombstone_value(self.now));
            b.put(
                Table::TOMBSTONE_EXPIRY,
                tombstone_expiry_key(self.now, session),
                Vec::new(),
            );
            dated += 1;
        }
        if dated > 0 {
            tracing::info!(
                dated,
                "tombstones of sessions ended before this version dated: they expire after the session retention from now"
            );
        }
        b.put(Table::META, META_TOMBSTONES_DATED.to_vec(), vec![1]);
        self.tombstones_dated = true;
        Ok(())
    }
}
