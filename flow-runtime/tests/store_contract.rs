//! The `Store` contract, on every store (redb, and PostgreSQL where it is
//! installed): point and range reads in byte order, counts, all-or-nothing
//! batches with their documented order (ranges removed first, then the ops,
//! a later op on a key winning), and commits that survive a restart. Then
//! what only the PostgreSQL store has to show: one node per schema, refused
//! commits that change nothing, and commits across a broken connection
//! (including one whose answer was lost: committed, but the store could not
//! see it).

mod store_backends;

use flow_runtime::storage::{PostgresOptions, PostgresStore, Store, Table, WriteBatch};
use flow_runtime::testing::TestPostgres;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use store_backends::{Backend, on_each_backend};

fn put(store: &dyn Store, table: Table, key: &[u8], value: &[u8]) {
    let mut b = WriteBatch::default();
    b.put(table, key.to_vec(), value.to_vec());
    store.commit(b).expect("commit");
}

fn keys(
    store: &dyn Store,
    table: &Table,
    from: &[u8],
    to: Option<&[u8]>,
    limit: usize,
) -> Vec<Vec<u8>> {
    store
        .range(table, from, to, limit)
        .expect("range")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn point_reads_writes_deletes_and_counts() {
    on_each_backend(|backend| {
        let store = backend.open();
        let t = Table::CHECKPOINTS;
        assert_eq!(store.get(&t, b"a").expect("get"), None);
        assert_eq!(store.len(&t).expect("len"), 0);
        put(&*store, t.clone(), b"a", b"1");
        put(&*store, t.clone(), b"b", b"2");
        put(&*store, t.clone(), b"a", b"3");
        assert_eq!(store.get(&t, b"a").expect("get"), Some(b"3".to_vec()));
        assert_eq!(store.len(&t).expect("len"), 2);
        let mut b = WriteBatch::default();
        b.delete(t.clone(), b"b".to_vec());
        b.delete(t.clone(), b"never there".to_vec());
        store.commit(b).expect("commit");
        assert_eq!(store.get(&t, b"b").expect("get"), None);
        assert_eq!(store.len(&t).expect("len"), 1);
        // Tables are separate namespaces, services' too; an unknown
        // service table reads as empty.
        assert_eq!(store.get(&Table::OUTBOX, b"a").expect("get"), None);
        let vault = Table::service("vault");
        assert_eq!(store.get(&vault, b"a").expect("get"), None);
        assert_eq!(store.len(&Table::service("never")).expect("len"), 0);
        put(&*store, vault.clone(), b"a", b"v");
        assert_eq!(store.get(&vault, b"a").expect("get"), Some(b"v".to_vec()));
        assert_eq!(store.get(&t, b"a").expect("get"), Some(b"3".to_vec()));
        // Empty values and large ones are kept as they are.
        put(&*store, t.clone(), b"empty", b"");
        assert_eq!(store.get(&t, b"empty").expect("get"), Some(Vec::new()));
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        put(&*store, t.clone(), b"big", &big);
        assert_eq!(store.get(&t, b"big").expect("get"), Some(big));
        // An empty batch is fine and changes nothing.
        store.commit(WriteBatch::default()).expect("empty commit");
        assert_eq!(store.len(&t).expect("len"), 3);
    });
}

#[test]
fn ranges_are_in_byte_order_with_an_exclusive_end_and_a_limit() {
    on_each_backend(|backend| {
        let store = backend.open();
        let t = Table::TIMERS;
        let all: [&[u8]; 7] = [
            b"",
            b"\x00",
            b"\x01",
            b"\x01\x00",
            b"\x7f",
            b"\x80",
            b"\xff\xff",
        ];
        let mut b = WriteBatch::default();
        for k in all.iter().rev() {
            b.put(t.clone(), k.to_vec(), vec![k.len() as u8]);
        }
        store.commit(b).expect("commit");
        let expected: Vec<Vec<u8>> = all.iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys(&*store, &t, b"", None, usize::MAX), expected);
        assert_eq!(
            keys(&*store, &t, b"\x01", Some(b"\x80"), usize::MAX),
            expected[2..5]
        );
        assert_eq!(keys(&*store, &t, b"\x01", Some(b"\x80"), 2), expected[2..4]);
        assert_eq!(keys(&*store, &t, b"\x01\x00\x00", None, 1), expected[4..5]);
        assert!(keys(&*store, &t, b"\x80", Some(b"\x80"), 9).is_empty());
        assert!(keys(&*store, &t, b"\x00", None, 0).is_empty());
        let (k, v) = &store.range(&t, b"\x7f", None, 1).expect("range")[0];
        assert_eq!((k.as_slice(), v.as_slice()), (&b"\x7f"[..], &[1u8][..]));
    });
}

#[test]
fn a_batch_removes_its_ranges_first_then_applies_its_ops_in_order() {
    on_each_backend(|backend| {
        let store = backend.open();
        let t = Table::TIMERS;
        let mut b = WriteBatch::default();
        for i in 0..10u8 {
            b.put(t.clone(), vec![i], vec![i]);
        }
        store.commit(b).expect("commit");
        let mut b = WriteBatch::default();
        b.put(t.clone(), vec![3], b"kept".to_vec()); // inside the removed range: stays
        b.delete(t.clone(), vec![4]);
        b.put(t.clone(), vec![4], b"back".to_vec()); // a later op on a key wins
        b.put(t.clone(), vec![8], b"gone".to_vec());
        b.delete(t.clone(), vec![8]);
        b.delete(t.clone(), vec![5]); // inside the range, deleted anyway
        b.remove_range(t.clone(), vec![2], vec![7]);
        b.put(Table::OUTBOX, vec![2], b"other table".to_vec());
        store.commit(b).expect("commit");
        let got = store.range(&t, &[], None, usize::MAX).expect("range");
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (vec![0], vec![0]),
            (vec![1], vec![1]),
            (vec![3], b"kept".to_vec()),
            (vec![4], b"back".to_vec()),
            (vec![7], vec![7]),
            (vec![9], vec![9]),
        ];
        assert_eq!(got, want);
        assert_eq!(
            store.get(&Table::OUTBOX, &[2]).expect("get"),
            Some(b"other table".to_vec())
        );
    });
}

#[test]
fn commits_survive_a_restart() {
    on_each_backend(|backend| {
        let store = backend.open();
        let mut b = WriteBatch::default();
        for i in 0..500u32 {
            b.put(Table::SESSIONS, i.to_be_bytes().to_vec(), vec![7; 100]);
        }
        store.commit(b).expect("commit");
        put(&*store, Table::META, b"format", &[0, 0, 0, 1]);
        drop(store);
        let store = backend.open();
        assert_eq!(store.len(&Table::SESSIONS).expect("len"), 500);
        assert_eq!(
            store.get(&Table::META, b"format").expect("get"),
            Some(vec![0, 0, 0, 1])
        );
    });
}

#[test]
fn postgres_a_second_store_on_one_schema_is_refused_until_the_first_closes() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres { connection, .. } = &backend else {
        unreachable!()
    };
    let first = backend.open();
    let quick = PostgresOptions {
        lock_wait: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let e = PostgresStore::open(connection, quick).expect_err("a second node on the same schema");
    assert!(e.0.contains("another node is using schema"), "{e}");
    drop(first);
    PostgresStore::open(connection, quick).expect("free once the first is closed");
}

#[test]
fn postgres_a_commit_the_server_refuses_changes_nothing() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let store = backend.open();
    put(&*store, Table::META, b"before", b"1");
    let mut b = WriteBatch::default();
    b.put(Table::META, b"a".to_vec(), b"1".to_vec());
    b.delete(Table::META, b"before".to_vec());
    b.remove_range(Table::META, b"0".to_vec(), b"z".to_vec());
    // PostgreSQL text cannot hold a NUL: the whole statement is refused.
    b.put(Table::service("bad\0name"), b"k".to_vec(), b"v".to_vec());
    let e = store.commit(b).expect_err("the server refuses the batch");
    assert!(e.0.contains("refused"), "{e}");
    assert_eq!(store.get(&Table::META, b"a").expect("get"), None);
    assert_eq!(
        store.get(&Table::META, b"before").expect("get"),
        Some(b"1".to_vec())
    );
    put(&*store, Table::META, b"after", b"2");
    assert_eq!(store.len(&Table::META).expect("len"), 2);
}

#[test]
fn postgres_reads_and_commits_go_on_after_the_server_ends_the_connection() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres { connection, server } = &backend else {
        unreachable!()
    };
    let schema = schema_of(connection);
    let store = backend.open();
    put(&*store, Table::META, b"k", b"1");
    assert_eq!(server.terminate_connections(&schema).expect("terminate"), 1);
    assert_eq!(
        store
            .get(&Table::META, b"k")
            .expect("read after a broken connection"),
        Some(b"1".to_vec())
    );
    assert_eq!(server.terminate_connections(&schema).expect("terminate"), 1);
    // The commit meets the broken connection, learns it did not commit,
    // and commits on a new one.
    put(&*store, Table::META, b"k", b"2");
    assert_eq!(
        store.get(&Table::META, b"k").expect("get"),
        Some(b"2".to_vec())
    );
}

#[test]
fn postgres_a_schema_laid_out_by_another_version_is_refused_and_left_alone() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres { connection, server } = &backend else {
        unreachable!()
    };
    let schema = schema_of(connection);
    drop(backend.open());
    let next = flow_runtime::storage::SCHEMA_VERSION + 1;
    server
        .sql(&format!(
            "UPDATE {schema}.flow_store SET schema_version = {next}"
        ))
        .expect("pretend a newer node laid it out");
    let e = PostgresStore::open(connection, PostgresOptions::default()).expect_err("refused");
    assert!(
        e.0.contains(&format!("store schema version {next}")) && e.0.contains("newer"),
        "{e}"
    );
    let version = server
        .sql(&format!("SELECT schema_version FROM {schema}.flow_store"))
        .expect("read");
    assert_eq!(version, next.to_string(), "left as it was");
}

#[test]
fn postgres_a_connection_string_without_an_existing_schema_is_refused_clearly() {
    let Some(server) = flow_runtime::testing::TestPostgres::shared() else {
        return;
    };
    let e = PostgresStore::open(
        &server.connection_string("no_such_schema"),
        PostgresOptions::default(),
    )
    .expect_err("refused");
    assert!(e.0.contains("names no existing schema"), "{e}");
    let e = PostgresStore::open("host=", PostgresOptions::default()).expect_err("refused");
    assert!(e.0.contains("PostgreSQL"), "{e}");
}

/// The schema a harness connection string names.
fn schema_of(connection: &str) -> String {
    connection
        .split("application_name=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the harness names the schema")
        .to_owned()
}

/// A TCP proxy to the test server that, when told to, cuts the connection
/// it carries at the next bytes going one way: before the server sees a
/// request, or after the server answered it (the request done, the answer
/// lost). Later connections pass through.
struct CuttingProxy {
    port: u16,
    cut_requests: Arc<AtomicBool>,
    cut_answers: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(server_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut_requests = Arc::new(AtomicBool::new(false));
        let cut_answers = Arc::new(AtomicBool::new(false));
        let (requests, answers) = (cut_requests.clone(), cut_answers.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    return;
                };
                let pump = |from: &TcpStream, to: &TcpStream, cut: &Arc<AtomicBool>| {
                    let (mut from, mut to, cut) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                        cut.clone(),
                    );
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if cut.swap(false, Ordering::SeqCst) {
                                break;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                };
                pump(&client, &server, &requests);
                pump(&server, &client, &answers);
            }
        });
        CuttingProxy {
            port,
            cut_requests,
            cut_answers,
        }
    }
}

/// How many commits the store whose last token `schema` holds has made
/// (the token's last 8 bytes count them).
fn commits_made(server: &TestPostgres, schema: &str) -> u64 {
    let hex = server
        .sql(&format!(
            "SELECT encode(last_commit, 'hex') FROM {schema}.flow_store"
        ))
        .expect("read the token");
    u64::from_str_radix(&hex[hex.len() - 16..], 16).expect("a counter")
}

#[test]
fn postgres_a_commit_whose_answer_was_lost_is_known_to_have_committed() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres { connection, server } = &backend else {
        unreachable!()
    };
    let schema = schema_of(connection);
    let proxy = CuttingProxy::start(server.port());
    let via_proxy = connection.replace(
        &format!("port={}", server.port()),
        &format!("port={}", proxy.port),
    );
    let store = PostgresStore::open(&via_proxy, PostgresOptions::default()).expect("open");
    put(&store, Table::META, b"a", b"1");
    assert_eq!(commits_made(server, &schema), 1);

    // The server commits, its answer is lost: the store learns that it
    // committed, and does not commit it again.
    proxy.cut_answers.store(true, Ordering::SeqCst);
    put(&store, Table::META, b"b", b"2");
    assert!(
        !proxy.cut_answers.load(Ordering::SeqCst),
        "the cut happened"
    );
    assert_eq!(
        store.get(&Table::META, b"b").expect("get"),
        Some(b"2".to_vec())
    );
    assert_eq!(commits_made(server, &schema), 2, "learned, not repeated");

    // The request never reaches the server: the store learns that nothing
    // committed, and commits it on a new connection.
    proxy.cut_requests.store(true, Ordering::SeqCst);
    put(&store, Table::META, b"c", b"3");
    assert!(
        !proxy.cut_requests.load(Ordering::SeqCst),
        "the cut happened"
    );
    assert_eq!(
        store.get(&Table::META, b"c").expect("get"),
        Some(b"3".to_vec())
    );
    assert_eq!(
        commits_made(server, &schema),
        4,
        "the lost one, then its retry"
    );
    assert_eq!(store.len(&Table::META).expect("len"), 3);
}
