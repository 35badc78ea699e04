//! Making the responder bound visible: initiations deferred because their
//! peer already has [`NodeConfig::max_responders_per_peer`] responder flows
//! running are counted (`flow_deferred_initiations_total`) and reported by
//! one WARN per peer per [`DEFERRAL_WARNING_EVERY`].
//!
//! Why a warning at all: a deferred initiation is not an error (the
//! initiator's redelivery brings it back), so a deployment that runs more
//! flows at once with one peer than the bound sees its flows run in waves a
//! redelivery interval apart, slower, and nothing fails. Without a line an
//! operator reads by default, nobody learns which setting to raise. Why
//! rate-limited: past the bound every redelivery of every waiting
//! initiation is deferred again, hundreds a second for a busy peer; one
//! line per peer per minute, with how many deferrals it stands for, says
//! the same without flooding the log.
//!
//! [`NodeConfig::max_responders_per_peer`]: super::NodeConfig::max_responders_per_peer

use crate::{PublicKey, Timestamp};
use std::collections::HashMap;
use std::time::Duration;

/// At most one WARN per peer this often (on the node's clock).
pub const DEFERRAL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Per peer: when the last WARN about its deferrals was written, and how
/// many deferrals happened since (not yet reported).
#[derive(Debug, Clone, Default)]
pub(crate) struct DeferralWarnings {
    peers: HashMap<PublicKey, Warned>,
}

#[derive(Debug, Clone, Copy)]
struct Warned {
    at: Timestamp,
    unreported: u64,
}

impl DeferralWarnings {
    /// Records one deferred initiation from `peer` at `now`. Returns the
    /// number of deferrals a WARN written now should report (this one and
    /// those since the peer's last WARN), or `None` while the peer's last
    /// WARN is younger than [`DEFERRAL_WARNING_EVERY`].
    pub(crate) fn record(&mut self, peer: &PublicKey, now: Timestamp) -> Option<u64> {
        let every = u64::try_from(DEFERRAL_WARNING_EVERY.as_millis()).unwrap_or(u64::MAX);
        if let Some(w) = self.peers.get_mut(peer) {
            if now.0.saturating_sub(w.at.0) < every {
                w.unreported += 1;
                return None;
            }
            let report = w.unreported + 1;
            *w = Warned {
                at: now,
                unreported: 0,
            };
            return Some(report);
        }
        // A peer seen for the first time (or again after a quiet while):
        // forget the peers whose last WARN is older than the interval, so
        // the map holds only peers deferred recently. Their unreported
        // deferrals are not lost from view: the counter has them.
        self.peers
            .retain(|_, w| now.0.saturating_sub(w.at.0) < every);
        self.peers.insert(
            *peer,
            Warned {
                at: now,
                unreported: 0,
            },
        );
        Some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn one_report_per_peer_per_interval_counting_what_it_stands_for() {
        let mut w = DeferralWarnings::default();
        let a = PublicKey([1; 32]);
        let b = PublicKey([2; 32]);
        assert_eq!(w.record(&a, Timestamp(1_000)), Some(1));
        assert_eq!(w.record(&a, Timestamp(1_001)), None);
        assert_eq!(w.record(&a, Timestamp(1_000 + MIN - 1)), None);
        // Another peer has its own interval.
        assert_eq!(w.record(&b, Timestamp(2_000)), Some(1));
        // The next report stands for the two suppressed deferrals too.
        assert_eq!(w.record(&a, Timestamp(1_000 + MIN)), Some(3));
        assert_eq!(w.record(&a, Timestamp(1_000 + MIN + 1)), None);
    }

    #[test]
    fn peers_quiet_for_an_interval_are_forgotten() {
        let mut w = DeferralWarnings::default();
        for i in 0..100u8 {
            w.record(&PublicKey([i; 32]), Timestamp(0));
        }
        assert_eq!(w.peers.len(), 100);
        w.record(&PublicKey([200; 32]), Timestamp(MIN));
        assert_eq!(w.peers.len(), 1);
    }
}
