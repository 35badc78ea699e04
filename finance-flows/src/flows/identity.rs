//! The node's ledger identity: a [`Party`] with the node's network name and
//! a key held by the finance key manager. Cash and paper name it as their
//! issuer; transactions name a notary's ledger identity as their notary.
//! Created on first use and kept in the node's database.

use super::ledger_db;
use crate::crypto::KeyPair;
use crate::keys;
use crate::ledger_db::{LedgerDb, LedgerDbError, LedgerTable, decode, encode};
use crate::trust;
use flow_runtime::prelude::*;

const IDENTITY_KEY: &[u8] = b"ledger-identity";

/// The ledger identity of the node `ctx` runs on, creating it on first use.
pub fn ledger_identity_of(ctx: &mut FlowContext) -> Result<Party, FlowError> {
    let name = ctx.our_identity().name().to_owned();
    let store = ledger_db(ctx)?;
    get_or_create(store, &name).map_err(|e| FlowError::internal(e.to_string()))
}

fn get_or_create(store: &mut dyn LedgerDb, name: &str) -> Result<Party, LedgerDbError> {
    if let Some(bytes) = store.get(LedgerTable::Config, IDENTITY_KEY)? {
        return decode(LedgerTable::Config, &bytes);
    }
    let pair = KeyPair::generate();
    keys::import(store, &pair)?;
    let party = Party::new(name, pair.public());
    store.put(LedgerTable::Config, IDENTITY_KEY, &encode(&party)?)?;
    // A node's own cash is what it pays with.
    trust::trust_issuer(store, &party)?;
    Ok(party)
}

/// Returns the node's ledger identity (creating it on first use), for the
/// operator or a test to hand to other nodes, e.g. as a notary's identity.
#[flow]
pub async fn ledger_identity(ctx: &mut FlowContext) -> Result<Party, FlowError> {
    ledger_identity_of(ctx)
}

/// Adds `issuers` to the cash issuers this node accepts (see
/// [`crate::trust`]): by key, per node, kept in the node's database. The
/// operator runs it once when setting a node up (the demo makes its seller
/// trust the buyer's bank this way); running it again changes nothing.
/// Returns every issuer now trusted.
#[flow]
pub async fn trust_issuers(
    ctx: &mut FlowContext,
    issuers: Vec<Party>,
) -> Result<Vec<Party>, FlowError> {
    let db = ledger_db(ctx)?;
    for issuer in &issuers {
        trust::trust_issuer(db, issuer).map_err(|e| FlowError::internal(e.to_string()))?;
    }
    trust::trusted_issuers(db).map_err(|e| FlowError::internal(e.to_string()))
}
