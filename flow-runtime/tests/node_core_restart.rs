//! `NodeCore` across crashes, driven directly (no `MockNetwork`, which keeps
//! its own copy of operator settings): what a node remembers by itself.

use flow_runtime::engine::OsIds;
use flow_runtime::engine::{Body, WireMessage};
use flow_runtime::engine::{NewFlow, Registry};
use flow_runtime::engine::{NodeError, STORE_FORMAT};
use flow_runtime::storage::{Table, WriteBatch};
use flow_runtime::testing::HandwrittenPing;
use flow_runtime::{FlowErrorKind, NodeConfig, NodeCore, Party, PublicKey, RunId, Timestamp};
use store_backends::{Backend, on_each_backend};

mod store_backends;

fn bob() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

/// Opens Alice's node on `backend`: after a drop (no close, no sync), this
/// is a restart from exactly what was committed.
fn open(backend: &Backend) -> NodeCore {
    let store = backend.open();
    let mut registry = Registry::new();
    registry.register_flow::<HandwrittenPing>();
    registry.register_responder::<HandwrittenPing, _>(|_session| HandwrittenPing::new(bob(), 1));
    NodeCore::open(
        Party::new("Alice", PublicKey([1; 32])),
        store,
        registry,
        Box::new(OsIds),
        Box::new(OsIds),
        NodeConfig::default(),
        Timestamp(0),
    )
    .expect("open the node")
}

fn start(core: &mut NodeCore) -> RunId {
    let flow = NewFlow::new(&HandwrittenPing::new(bob(), 3)).expect("encode the flow");
    core.start(Timestamp(1), flow, None).expect("start").0
}

/// Bob opens a session to Alice; returns what Alice answered.
fn init_from_bob(core: &mut NodeCore, session: u64) -> Vec<WireMessage> {
    let init = WireMessage::Session {
        session,
        from_initiator: true,
        seq: 0,
        body: Body::Init {
            flow: <HandwrittenPing as flow_runtime::Flow>::NAME.into(),
            version: 1,
            initiator: bob(),
            created_at: Some(1),
        },
    };
    let frame = init.encode().expect("encode the init");
    core.deliver(Timestamp(2), vec![(*bob().key(), frame)])
        .expect("deliver")
        .frames
        .iter()
        .map(|(_, bytes)| WireMessage::decode(bytes).expect("our own frame decodes"))
        .collect()
}

fn refused(answers: &[WireMessage]) -> bool {
    answers.iter().any(|m| {
        matches!(
            m,
            WireMessage::Session { body: Body::End(Some(e)), .. } if e.kind() == FlowErrorKind::Refused
        )
    })
}

#[test]
fn draining_survives_a_crash_and_undraining_is_remembered_too() {
    on_each_backend(|backend| {
        let mut core = open(backend);
        let before = start(&mut core);
        core.tick(Timestamp(1)).expect("first step");
        core.try_set_draining(true).expect("drain");
        drop(core); // crash: nothing is closed or flushed beyond the commits

        let mut core = open(backend);
        assert!(core.is_draining(), "still draining after the restart");
        let new = start(&mut core);
        let outcome = core.result(new).expect("read the result");
        match outcome {
            Some(Err(e)) => assert_eq!(e.kind(), FlowErrorKind::Refused, "{e}"),
            other => panic!("a new flow on a draining node must be refused, got {other:?}"),
        }
        assert!(
            refused(&init_from_bob(&mut core, 77)),
            "a new session is refused"
        );
        assert_eq!(
            core.flows_in_flight().expect("count"),
            1,
            "only the flow started before draining is in flight"
        );
        assert_ne!(before, new);

        core.try_set_draining(false).expect("undrain");
        drop(core);
        let mut core = open(backend);
        assert!(!core.is_draining(), "undraining survives the restart too");
        let accepted = start(&mut core);
        core.tick(Timestamp(2)).expect("its first step");
        assert_eq!(core.result(accepted).expect("read"), None, "it runs");
        assert!(
            !refused(&init_from_bob(&mut core, 78)),
            "sessions are taken again"
        );
        assert_eq!(core.flows_in_flight().expect("count"), 3);
    });
}

#[test]
fn setting_draining_to_its_current_value_writes_nothing() {
    on_each_backend(|backend| {
        let mut core = open(backend);
        let commits = core.commits();
        core.try_set_draining(false).expect("no-op");
        assert_eq!(core.commits(), commits);
        core.set_draining(true);
        assert_eq!(core.commits(), commits + 1);
        core.set_draining(true);
        assert_eq!(core.commits(), commits + 1, "already draining: no write");
    });
}

fn ping_flow() -> NewFlow {
    NewFlow::new(&HandwrittenPing::new(bob(), 3)).expect("encode the flow")
}

/// `start_many`: N flows cost one commit, and a crash right after it loses
/// none of them — the restarted node runs every one's first step.
#[test]
fn start_many_is_one_commit_and_a_restart_runs_every_flow() {
    on_each_backend(|backend| {
        let mut core = open(backend);
        let commits = core.commits();
        let flows = (0..50)
            .map(|i| (ping_flow(), Some(format!("order-{i}"))))
            .collect();
        let (runs, _) = core.start_many(Timestamp(1), flows).expect("start many");
        assert_eq!(core.commits(), commits + 1, "50 starts, one commit");
        assert_eq!(runs.len(), 50);
        let distinct: std::collections::HashSet<_> = runs.iter().collect();
        assert_eq!(distinct.len(), 50, "every flow has its own run");
        drop(core); // crash before any first step ran

        let mut core = open(backend);
        assert_eq!(core.flows_in_flight().expect("count"), 50);
        for (i, run) in runs.iter().enumerate() {
            assert_eq!(
                core.run_for_client_id(&format!("order-{i}")).expect("read"),
                Some(*run),
                "client ids survive the crash"
            );
        }
        let out = core.tick(Timestamp(2)).expect("first steps");
        let inits = out
            .frames
            .iter()
            .filter(|(to, bytes)| {
                to == bob().key()
                    && matches!(
                        WireMessage::decode(bytes),
                        Ok(WireMessage::Session {
                            body: Body::Init { .. },
                            ..
                        })
                    )
            })
            .count();
        assert_eq!(inits, 50, "each started flow opened its session to Bob");
    });
}

/// A client id used before, or earlier in the same call, gives the existing
/// run and starts nothing; an empty or all-known call commits nothing.
#[test]
fn start_many_dedups_client_ids_within_and_across_calls() {
    on_each_backend(|backend| {
        let mut core = open(backend);
        let (first, _) = core
            .start(Timestamp(1), ping_flow(), Some("a".into()))
            .expect("start a");
        let commits = core.commits();
        let (runs, _) = core
            .start_many(
                Timestamp(1),
                vec![
                    (ping_flow(), Some("a".into())), // used by `start` before
                    (ping_flow(), Some("b".into())),
                    (ping_flow(), Some("b".into())), // repeated in this call
                    (ping_flow(), None),
                    (ping_flow(), None),
                ],
            )
            .expect("start many");
        assert_eq!(core.commits(), commits + 1);
        assert_eq!(runs[0], first);
        assert_eq!(runs[1], runs[2], "a repeated id is one flow");
        assert_ne!(runs[1], first);
        assert_ne!(runs[3], runs[4], "flows without an id are all new");
        assert_eq!(
            core.flows_in_flight().expect("count"),
            4,
            "a, b and the two without an id"
        );

        let commits = core.commits();
        let (again, _) = core
            .start_many(
                Timestamp(2),
                vec![
                    (ping_flow(), Some("b".into())),
                    (ping_flow(), Some("a".into())),
                ],
            )
            .expect("start known ids");
        assert_eq!(again, vec![runs[1], first], "across calls too");
        let (none, _) = core.start_many(Timestamp(2), Vec::new()).expect("empty");
        assert!(none.is_empty());
        assert_eq!(core.commits(), commits, "nothing new: nothing written");
        assert_eq!(core.flows_in_flight().expect("count"), 4);
        // `start` sees the ids `start_many` claimed.
        let (b, _) = core
            .start(Timestamp(3), ping_flow(), Some("b".into()))
            .expect("start b");
        assert_eq!(b, runs[1]);
    });
}

/// A draining node refuses every flow of a batch, each with `Refused`, and
/// keeps their client ids (a retry gets the same refusal, not a new flow).
#[test]
fn start_many_on_a_draining_node_refuses_each_flow() {
    on_each_backend(|backend| {
        let mut core = open(backend);
        core.try_set_draining(true).expect("drain");
        let (runs, _) = core
            .start_many(
                Timestamp(1),
                vec![
                    (ping_flow(), Some("x".into())),
                    (ping_flow(), Some("y".into())),
                    (ping_flow(), None),
                ],
            )
            .expect("start many");
        assert_eq!(runs.len(), 3);
        for run in &runs {
            match core.result(*run).expect("read the result") {
                Some(Err(e)) => assert_eq!(e.kind(), FlowErrorKind::Refused, "{e}"),
                other => panic!("a flow started while draining must be refused, got {other:?}"),
            }
        }
        assert_eq!(core.flows_in_flight().expect("count"), 0);
        let (again, _) = core
            .start_many(Timestamp(2), vec![(ping_flow(), Some("y".into()))])
            .expect("retry");
        assert_eq!(again, vec![runs[1]]);
    });
}

/// The `meta` table's storage-format row, straight from the store.
fn format_row(backend: &Backend) -> Option<Vec<u8>> {
    let store = backend.open();
    store
        .get(&Table::META, b"format")
        .expect("read the format row")
}

/// Writes `rows` into the `meta` table of `backend`'s database.
fn write_meta(backend: &Backend, rows: &[(&[u8], &[u8])]) {
    let store = backend.open();
    let mut w = WriteBatch::default();
    for (key, value) in rows {
        w.put(Table::META, key.to_vec(), value.to_vec());
    }
    store.commit(w).expect("write the rows");
}

fn open_err(backend: &Backend) -> NodeError {
    let store = backend.open();
    match NodeCore::open(
        Party::new("Alice", PublicKey([1; 32])),
        store,
        Registry::new(),
        Box::new(OsIds),
        Box::new(OsIds),
        NodeConfig::default(),
        Timestamp(0),
    ) {
        Ok(_) => panic!("the node opened a database it must refuse"),
        Err(e) => e,
    }
}

#[test]
fn the_first_commit_records_the_storage_format_and_opening_writes_nothing() {
    on_each_backend(|backend| {
        let core = open(backend);
        drop(core);
        assert_eq!(format_row(backend), None, "opening commits nothing");
        let mut core = open(backend);
        start(&mut core);
        drop(core);
        assert_eq!(
            format_row(backend),
            Some(STORE_FORMAT.to_be_bytes().to_vec())
        );
        // A node of this build reopens it and keeps running its flows.
        let mut core = open(backend);
        core.tick(Timestamp(2)).expect("the flow's first step");
        assert_eq!(core.flows_in_flight().expect("count"), 1);
    });
}

#[test]
fn a_database_of_another_storage_format_is_refused_and_left_as_it_was() {
    for (found, says) in [
        (STORE_FORMAT + 1, "a newer node wrote it"),
        (0, "no migration"),
    ] {
        on_each_backend(|backend| {
            let marker = found.to_be_bytes();
            write_meta(backend, &[(b"format", &marker), (b"draining", &[1])]);
            let e = open_err(backend);
            let text = e.to_string();
            assert!(matches!(e, NodeError::IncompatibleStore(_)), "{e:?}");
            assert!(
                text.contains(&format!("storage format {found}"))
                    && text.contains(&format!("reads format {STORE_FORMAT}"))
                    && text.contains(says)
                    && text.contains("Nothing in it was changed"),
                "{text}"
            );
            assert_eq!(format_row(backend), Some(marker.to_vec()), "left as it was");
        });
    }
}

#[test]
fn a_damaged_storage_format_row_is_refused_with_its_length() {
    on_each_backend(|backend| {
        write_meta(backend, &[(b"format", &[0, 1, 2])]);
        let text = open_err(backend).to_string();
        assert!(text.contains("3 bytes, not 4"), "{text}");
    });
}
