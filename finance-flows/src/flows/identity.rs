//! The node's ledger identity: a [`Party`] with the node's network name and
//! a key held by the finance key manager. Cash and paper name it as their
//! issuer; transactions name a notary's ledger identity as their notary.
//! Created on first use and kept in the node's database.

use super::store;
use crate::crypto::KeyPair;
use crate::keys;
use crate::store::{Store, StoreError, Table, decode, encode};
use flow_runtime::prelude::*;

const IDENTITY_KEY: &[u8] = b"ledger-identity";

/// The ledger identity of the node `ctx` runs on, creating it on first use.
pub fn ledger_identity_of(ctx: &mut FlowContext) -> Result<Party, FlowError> {
    let name = ctx.our_identity().name().to_owned();
    let store = store(ctx)?;
    get_or_create(store, &name).map_err(|e| FlowError::internal(e.to_string()))
}

fn get_or_create(store: &mut dyn Store, name: &str) -> Result<Party, StoreError> {
    if let Some(bytes) = store.get(Table::Config, IDENTITY_KEY)? {
        return decode(Table::Config, &bytes);
    }
    let pair = KeyPair::generate();
    keys::import(store, &pair)?;
    let party = Party::new(name, pair.public());
    store.put(Table::Config, IDENTITY_KEY, &encode(&party)?)?;
    Ok(party)
}

/// Returns the node's ledger identity (creating it on first use), for the
/// operator or a test to hand to other nodes, e.g. as a notary's identity.
#[flow]
pub async fn ledger_identity(ctx: &mut FlowContext) -> Result<Party, FlowError> {
    ledger_identity_of(ctx)
}
