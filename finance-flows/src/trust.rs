//! Which cash issuers this node accepts: a per-node setting, by key.
//!
//! Cash is a claim on its issuer, so cash is worth what its issuer is: a
//! node accepts payment only in cash of an issuer it trusts, and pays only
//! with such cash. Anyone can issue cash under any name with its own key
//! (the contracts allow it: an issuance needs only the issuer's signature),
//! so trust is by key, never by name.
//!
//! A node trusts its own ledger identity (its own cash is what it pays
//! with) and the issuers its operator adds with [`trust_issuer`] (the
//! [`trust_issuers`](fn@crate::flows::identity::trust_issuers) flow). The
//! setting lives in the node's database ([`LedgerTable::Config`]), so it survives
//! restarts and commits with the step that changes it.

use crate::ledger_db::{LedgerDb, LedgerDbError, LedgerTable, decode, encode, prefix_range};
use flow_runtime::{Party, PublicKey};

/// The [`LedgerTable::Config`] key prefix of the trusted issuers; the issuer's
/// key follows.
const PREFIX: &[u8] = b"trusted-issuer/";

fn config_key(key: &PublicKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + 32);
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(&key.0);
    k
}

/// Trusts cash issued by `issuer` (by its key; the name is kept as a label
/// for reports). Trusting an issuer again replaces its label.
pub fn trust_issuer(store: &mut dyn LedgerDb, issuer: &Party) -> Result<(), LedgerDbError> {
    store.put(
        LedgerTable::Config,
        &config_key(issuer.key()),
        &encode(issuer)?,
    )
}

/// Whether cash issued by `key` is acceptable to this node: one point read.
pub fn is_trusted(store: &dyn LedgerDb, key: &PublicKey) -> Result<bool, LedgerDbError> {
    Ok(store.get(LedgerTable::Config, &config_key(key))?.is_some())
}

/// Every issuer this node trusts, its own ledger identity included once it
/// exists.
pub fn trusted_issuers(store: &dyn LedgerDb) -> Result<Vec<Party>, LedgerDbError> {
    prefix_range(store, LedgerTable::Config, PREFIX, usize::MAX)?
        .iter()
        .map(|(_, v)| decode(LedgerTable::Config, v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger_db::MemLedgerDb;

    #[test]
    fn trust_is_by_key_not_by_name() {
        let mut store = MemLedgerDb::default();
        let bank = Party::new("Bank", PublicKey([7; 32]));
        let impostor = Party::new("Bank", PublicKey([8; 32]));
        assert!(!is_trusted(&store, bank.key()).unwrap());
        trust_issuer(&mut store, &bank).unwrap();
        assert!(is_trusted(&store, bank.key()).unwrap());
        assert!(!is_trusted(&store, impostor.key()).unwrap());
        assert_eq!(trusted_issuers(&store).unwrap(), vec![bank]);
    }
}
