//! Leases and fencing on a real PostgreSQL server (skipped, saying so,
//! where its binaries are missing).

use super::control::Control;
use super::lease::{self, Lease};
use crate::store::{Fence, PostgresOptions, PostgresStore, Store, Table, WriteBatch};
use crate::testing::TestPostgres;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(60);

fn server() -> Option<&'static TestPostgres> {
    let server = TestPostgres::shared();
    if server.is_none() {
        eprintln!("SKIPPED on PostgreSQL: no PostgreSQL binaries on this machine");
    }
    server
}

fn fenced_store(control: &Control, lease: Lease) -> PostgresStore {
    PostgresStore::open_with(
        control.partition_config(lease.partition),
        PostgresOptions::default(),
        Some(Fence {
            control_schema: control.schema.clone(),
            partition: lease.partition as i32,
            token: lease.token,
        }),
    )
    .unwrap()
}

fn put(store: &PostgresStore, key: &[u8]) -> Result<(), crate::store::StoreError> {
    let mut b = WriteBatch::default();
    b.put(Table::META, key.to_vec(), b"v".to_vec());
    store.commit(b)
}

/// Makes partition `p`'s lease expire now, as if its holder had stalled
/// for longer than the lease.
fn expire(control: &mut Control, p: u32) {
    control
        .client
        .execute(
            "UPDATE flow_leases SET expires_at = now() - interval '1 second' WHERE partition = $1",
            &[&(p as i32)],
        )
        .unwrap();
}

#[test]
fn each_partition_is_claimed_once_and_tokens_grow() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let mut a = Control::connect(&conn, 3).unwrap();
    let mut b = Control::connect(&conn, 3).unwrap();
    let a1 = lease::claim(&mut a.client, "a", TTL).unwrap().unwrap();
    let b1 = lease::claim(&mut b.client, "b", TTL).unwrap().unwrap();
    let a2 = lease::claim(&mut a.client, "a", TTL).unwrap().unwrap();
    assert_eq!(
        lease::claim(&mut b.client, "b", TTL).unwrap(),
        None,
        "all 3 are held"
    );
    let mut parts = vec![a1.partition, b1.partition, a2.partition];
    parts.sort();
    assert_eq!(parts, vec![0, 1, 2]);
    // An expired lease is claimed again with a higher token.
    expire(&mut a, b1.partition);
    assert_eq!(
        lease::renew(&mut b.client, &[b1], TTL).unwrap(),
        vec![],
        "expired: not renewable"
    );
    let taken = lease::claim(&mut a.client, "a", TTL).unwrap().unwrap();
    assert_eq!(taken.partition, b1.partition);
    assert!(taken.token > b1.token);
    // Released: claimable at once.
    lease::release(&mut a.client, a1).unwrap();
    let again = lease::claim(&mut b.client, "b", TTL).unwrap().unwrap();
    assert_eq!(again.partition, a1.partition);
    assert!(again.token > a1.token);
    // A different partition count is refused.
    let refused = Control::connect(&conn, 4).unwrap_err();
    assert!(
        refused.0.contains("set up with 3 partitions"),
        "{}",
        refused.0
    );
}

#[test]
fn a_worker_whose_lease_expired_or_was_taken_over_cannot_commit() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let mut control = Control::connect(&conn, 1).unwrap();
    let first = lease::claim(&mut control.client, "old", TTL)
        .unwrap()
        .unwrap();
    let old = fenced_store(&control, first);
    put(&old, b"while-held").unwrap();

    // Expired but not yet taken over: refused already.
    expire(&mut control, 0);
    let e = put(&old, b"after-expiry").unwrap_err();
    assert!(e.0.contains("no longer holds the lease"), "{}", e.0);

    // Taken over: the new holder commits, the old one still cannot.
    let second = lease::claim(&mut control.client, "new", TTL)
        .unwrap()
        .unwrap();
    assert!(second.token > first.token);
    let new = fenced_store(&control, second);
    put(&new, b"by-new").unwrap();
    let e = put(&old, b"by-old").unwrap_err();
    assert!(e.0.contains("no longer holds the lease"), "{}", e.0);

    // Nothing of the refused commits happened.
    for (key, present) in [
        (&b"while-held"[..], true),
        (b"after-expiry", false),
        (b"by-new", true),
        (b"by-old", false),
    ] {
        assert_eq!(
            new.get(&Table::META, key).unwrap().is_some(),
            present,
            "{key:?}"
        );
    }
    // Two fenced stores share a partition's schema (no advisory lock);
    // only the lease decides who commits.
    drop(old);
    let renewed = lease::renew(&mut control.client, &[second], TTL).unwrap();
    assert_eq!(renewed, vec![second]);
}

#[test]
fn fencing_covers_every_kind_of_write() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let mut control = Control::connect(&conn, 1).unwrap();
    let l = lease::claim(&mut control.client, "w", TTL)
        .unwrap()
        .unwrap();
    let store = fenced_store(&control, l);
    put(&store, b"k").unwrap();
    expire(&mut control, 0);
    // A delete alone, and a range removal alone, are refused too.
    let mut b = WriteBatch::default();
    b.delete(Table::META, b"k".to_vec());
    assert!(store.commit(b).is_err());
    let mut b = WriteBatch::default();
    b.remove_range(Table::META, Vec::new(), vec![0xff]);
    assert!(store.commit(b).is_err());
    assert!(store.get(&Table::META, b"k").unwrap().is_some());
}
