//! `NodeCore` across crashes, driven directly (no `MockNetwork`, which keeps
//! its own copy of operator settings): what a node remembers by itself.

use flow_runtime::node::OsIds;
use flow_runtime::registry::{NewFlow, Registry};
use flow_runtime::store::{RedbOptions, RedbStore, SharedMemory, Store};
use flow_runtime::testing::HandwrittenPing;
use flow_runtime::wire::{Body, WireMessage};
use flow_runtime::{FlowErrorKind, NodeConfig, NodeCore, Party, PublicKey, RunId, Timestamp};
use std::sync::Arc;

fn bob() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

/// Opens Alice's node on `memory`: after a drop (no close, no sync), this
/// is a restart from exactly what was committed.
fn open(memory: &SharedMemory) -> NodeCore {
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open_in_memory(memory, RedbOptions::default()).expect("open the store"),
    );
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
    let memory = SharedMemory::new();
    let mut core = open(&memory);
    let before = start(&mut core);
    core.tick(Timestamp(1)).expect("first step");
    core.try_set_draining(true).expect("drain");
    drop(core); // crash: nothing is closed or flushed beyond the commits

    let mut core = open(&memory);
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
    let mut core = open(&memory);
    assert!(!core.is_draining(), "undraining survives the restart too");
    let accepted = start(&mut core);
    core.tick(Timestamp(2)).expect("its first step");
    assert_eq!(core.result(accepted).expect("read"), None, "it runs");
    assert!(
        !refused(&init_from_bob(&mut core, 78)),
        "sessions are taken again"
    );
    assert_eq!(core.flows_in_flight().expect("count"), 3);
}

#[test]
fn setting_draining_to_its_current_value_writes_nothing() {
    let memory = SharedMemory::new();
    let mut core = open(&memory);
    let commits = core.commits();
    core.try_set_draining(false).expect("no-op");
    assert_eq!(core.commits(), commits);
    core.set_draining(true);
    assert_eq!(core.commits(), commits + 1);
    core.set_draining(true);
    assert_eq!(core.commits(), commits + 1, "already draining: no write");
}
