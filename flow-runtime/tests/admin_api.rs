//! The admin/client API against a real node over loopback: authentication
//! (no token, a wrong token), the roles (read, start with its allow list,
//! operate), every operation (start by name with a client id, result, wait,
//! progress, list with filters, show, kill, retry of a hospitalised flow,
//! drain on/off, node status, dump, metrics, health), streamed progress
//! (the node's event stream, one flow followed to its end) and the batch
//! result wait, and bad input, which gets a clear 4xx and changes nothing.

use flow_runtime::NodeConfig;
use flow_runtime::prelude::*;
use flow_runtime::runner::admin::auth::digest;
use flow_runtime::runner::admin::client::{AdminClient, ClientError, ServerEvent};
use flow_runtime::runner::admin::{AdminSettings, Role, UserSection};
use flow_runtime::runner::{Node, NodeBuilder, keys};
use flow_runtime::storage::RedbOptions;
use flow_runtime::tcp::{NetworkMap, PeerEntry, SigningKey, TcpConfig};
use flow_runtime::testing::ping_pong::{ping, pong};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Whether `flaky` may succeed; it fails transiently until then.
static FLAKY_MAY_SUCCEED: AtomicBool = AtomicBool::new(false);

#[flow]
pub async fn flaky(_ctx: &mut FlowContext, label: String) -> Result<String, FlowError> {
    if FLAKY_MAY_SUCCEED.load(Ordering::SeqCst) {
        Ok(format!("{label} done"))
    } else {
        Err(FlowError::transient("not yet"))
    }
}

#[flow]
pub async fn sleeper(ctx: &mut FlowContext, note: String) -> Result<(), FlowError> {
    ctx.sleep(Duration::from_secs(3600)).await;
    let _ = note;
    Ok(())
}

/// Two progress steps, each committed (a short sleep after each), then done.
#[flow]
pub async fn stepper(ctx: &mut FlowContext, note: String) -> Result<String, FlowError> {
    ctx.set_progress("Preparing");
    ctx.sleep(Duration::from_millis(5)).await;
    ctx.set_progress("Finishing");
    ctx.sleep(Duration::from_millis(5)).await;
    Ok(note)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PingArgs {
    peer: String,
    rounds: u32,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteArgs {
    note: String,
}

const READ_TOKEN: &str = "read-token-0123456789abcdef";
const START_TOKEN: &str = "start-token-0123456789abcdef";

struct Setup {
    _dir: tempfile::TempDir,
    alice: Node,
    bob: Node,
    url: String,
    admin_token: String,
}

fn user(name: &str, role: Role, token: &str, start: &[&str]) -> UserSection {
    UserSection {
        name: name.into(),
        role,
        token_sha256: hex_digest(token),
        start: start.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn hex_digest(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut parts = Vec::new();
    for name in ["Alice", "Bob"] {
        let key = keys::generate_identity().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        entries.push(PeerEntry {
            name: name.into(),
            address: addr.clone(),
            key: keys::public_key(&key),
        });
        parts.push((key, listener, addr, dir.path().join(format!("{name}.redb"))));
    }
    let map = NetworkMap::new(entries).unwrap();
    let mut nodes = Vec::new();
    for (i, (key, listener, addr, db)) in parts.into_iter().enumerate() {
        let key = SigningKey::from_bytes(&key.to_bytes());
        let mut b = NodeBuilder::new(key, &addr, &db, map.clone());
        b.listener(listener);
        b.tcp_config(TcpConfig {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..TcpConfig::default()
        });
        b.store_options(RedbOptions {
            quick_repair: false,
            ..RedbOptions::default()
        });
        b.node_config(NodeConfig {
            max_transient_retries: 0,
            ..NodeConfig::default()
        });
        b.flow::<ping::Flow>();
        b.responder::<ping::Flow>(pong);
        if i == 0 {
            let peers = map.clone();
            b.startable(move |a: PingArgs| {
                let peer = peers
                    .by_name(&a.peer)
                    .ok_or_else(|| format!("no party `{}`", a.peer))?;
                Ok(ping(peer.party(), a.rounds))
            });
            b.startable(|a: NoteArgs| Ok(sleeper(a.note)));
            b.startable(|a: NoteArgs| Ok(flaky(a.note)));
            b.startable(|a: NoteArgs| Ok(stepper(a.note)));
            let mut settings = AdminSettings::from_section(&Default::default(), &db);
            settings.users = vec![
                user("viewer", Role::Read, READ_TOKEN, &[]),
                user("pinger", Role::Start, START_TOKEN, &[ping::Flow::NAME]),
            ];
            b.admin(settings);
        }
        nodes.push(b.start().await.unwrap());
    }
    let bob = nodes.pop().unwrap();
    let alice = nodes.pop().unwrap();
    let url = alice.admin_server().unwrap().url();
    let token_file = dir.path().join("Alice.redb.admin-token");
    let admin_token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token file must be private");
    }
    // The URL file names the same server.
    let written = std::fs::read_to_string(dir.path().join("Alice.redb.admin-url")).unwrap();
    assert_eq!(written.trim(), url);
    Setup {
        _dir: dir,
        alice,
        bob,
        url,
        admin_token,
    }
}

/// Runs a blocking client call off the runtime's workers.
async fn call<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn client(url: &str, token: &str) -> AdminClient {
    AdminClient::new(url, token, Duration::from_secs(30))
}

fn status_of(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Status { status, message }) => (status, message),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// A raw request: status and body text.
fn raw(method: &str, url: &str, auth: Option<&str>, body: Option<Vec<u8>>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let answer = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(url).content_type("application/json");
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or_default().as_slice())
        }
    };
    let mut answer = answer.unwrap();
    let status = answer.status().as_u16();
    (
        status,
        answer.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// A POST announcing a `len`-byte body, which the node must refuse from
/// its headers alone (the body is never sent, so the answer does not race
/// the upload).
fn oversized(url: &str, auth: &str, len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /api/v1/flows HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body.to_owned());
            }
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the node closed the connection without an answer: {text}"
        );
        answer.extend_from_slice(&buf[..n]);
    }
}

async fn in_flight(api: &AdminClient) -> u64 {
    let api = api.clone();
    call(move || {
        api.get("/api/v1/node").unwrap()["flows_in_flight"]
            .as_u64()
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_authenticated_and_roles_are_enforced() {
    let s = setup().await;
    let url = s.url.clone();
    // No token, a malformed header, a wrong token: 401 with a clear body,
    // on every route, health and metrics included.
    let u = url.clone();
    let (no_token, wrong, basic, metrics, health, unknown) = call(move || {
        (
            raw("GET", &format!("{u}/api/v1/node"), None, None),
            raw(
                "GET",
                &format!("{u}/api/v1/flows"),
                Some("Bearer wrong-token"),
                None,
            ),
            raw(
                "GET",
                &format!("{u}/api/v1/node"),
                Some("Basic YWRtaW46eA=="),
                None,
            ),
            raw("GET", &format!("{u}/metrics"), None, None),
            raw("GET", &format!("{u}/health"), None, None),
            raw("GET", &format!("{u}/no/such/route"), None, None),
        )
    })
    .await;
    assert_eq!(no_token.0, 401);
    assert!(no_token.1.contains("Authorization"), "{}", no_token.1);
    assert_eq!(wrong, (401, json!({"error": "unknown token"}).to_string()));
    assert_eq!(basic.0, 401);
    assert!(basic.1.contains("Bearer"), "{}", basic.1);
    assert_eq!(metrics.0, 401);
    assert_eq!(health.0, 401);
    assert_eq!(unknown.0, 401);

    let viewer = client(&url, READ_TOKEN);
    let pinger = client(&url, START_TOKEN);
    let admin = client(&url, &s.admin_token);
    let before = in_flight(&admin).await;

    let (v, p) = (viewer.clone(), pinger.clone());
    let sleeper_args = json!({"flow": sleeper::Flow::NAME, "args": {"note": "x"}});
    let ping_args = json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob", "rounds": 10}});
    let (sa, pa) = (sleeper_args.clone(), ping_args.clone());
    let outcomes = call(move || {
        (
            v.get("/api/v1/node").is_ok() && v.get("/api/v1/flows").is_ok(),
            v.get_text("/metrics").is_ok() && v.get("/health").is_ok(),
            status_of(v.post("/api/v1/flows", &pa)),
            status_of(v.post("/api/v1/node/drain", &json!({"draining": true}))),
            status_of(v.post("/api/v1/flows/0000000000000001/kill", &json!({}))),
            status_of(p.post("/api/v1/flows", &sa)),
            status_of(p.post("/api/v1/flows/0000000000000001/retry", &json!({}))),
            p.get("/api/v1/startable").unwrap(),
            v.get("/api/v1/startable").unwrap(),
        )
    })
    .await;
    assert!(outcomes.0 && outcomes.1, "the read role reads");
    assert_eq!(outcomes.2.0, 403, "{}", outcomes.2.1);
    assert!(
        outcomes.2.1.contains("`viewer` has the `read` role"),
        "{}",
        outcomes.2.1
    );
    assert_eq!(outcomes.3.0, 403);
    assert_eq!(outcomes.4.0, 403);
    assert_eq!(outcomes.5.0, 403, "not on pinger's allow list");
    assert!(outcomes.5.1.contains("may not start"), "{}", outcomes.5.1);
    assert_eq!(outcomes.6.0, 403);
    assert_eq!(outcomes.7, json!({"startable": [ping::Flow::NAME]}));
    assert_eq!(outcomes.8, json!({"startable": []}));
    // Nothing refused changed anything.
    assert_eq!(in_flight(&admin).await, before);
    let a = admin.clone();
    assert_eq!(
        call(move || a.get("/api/v1/node").unwrap()["draining"].clone()).await,
        json!(false)
    );

    // The start role starts what its allow list names, and reads results.
    let p = pinger.clone();
    let result = call(move || {
        let started = p.post("/api/v1/flows", &ping_args).unwrap();
        let run = started["run_id"].as_str().unwrap().to_owned();
        p.get(&format!("/api/v1/flows/{run}/result?wait_s=30"))
            .unwrap()
    })
    .await;
    assert_eq!(result["outcome"], "ok");
    assert_eq!(result["output"], json!(45));
    s.alice.shutdown().await.unwrap();
    s.bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_by_name_show_list_kill_retry_drain_and_metrics() {
    let s = setup().await;
    let admin = client(&s.url, &s.admin_token);

    // Start by name with a client id: at most once per id.
    let a = admin.clone();
    let (first, second, by_id, result, progress) = call(move || {
        let body = json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob", "rounds": 10}, "client_id": "order-1"});
        let first = a.post("/api/v1/flows", &body).unwrap();
        let second = a.post("/api/v1/flows", &body).unwrap();
        let by_id = a.get("/api/v1/client-ids/order-1").unwrap();
        let run = first["run_id"].as_str().unwrap().to_owned();
        let result = a.get(&format!("/api/v1/flows/{run}/result?wait_s=30")).unwrap();
        let progress = a.get(&format!("/api/v1/flows/{run}/progress")).unwrap();
        (first, second, by_id, result, progress)
    })
    .await;
    assert_eq!(first["run_id"], second["run_id"]);
    assert_eq!(by_id["run_id"], first["run_id"]);
    assert_eq!(result["finished"], true);
    assert_eq!(result["output"], json!(45));
    assert_eq!(progress["finished"], true);

    // A waiting flow: shown with its state, stored fields, what it waits
    // on; listed with filters; then killed.
    let a = admin.clone();
    let (shown, listed, filtered_out, long_waiting, not_yet) = call(move || {
        let started = a
            .post(
                "/api/v1/flows",
                &json!({"flow": sleeper::Flow::NAME, "args": {"note": "keep me"}}),
            )
            .unwrap();
        let run = started["run_id"].as_str().unwrap().to_owned();
        // Its first step runs right after the start commits.
        let mut shown = a.get(&format!("/api/v1/flows/{run}")).unwrap();
        for _ in 0..200 {
            if shown["waiting_on"].as_str().unwrap_or("").contains("timer") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            shown = a.get(&format!("/api/v1/flows/{run}")).unwrap();
        }
        let listed = a
            .get(&format!("/api/v1/flows?flow={}", sleeper::Flow::NAME))
            .unwrap();
        let filtered_out = a.get("/api/v1/flows?hospital=true").unwrap();
        let long_waiting = a.get("/api/v1/flows?waiting_longer_than_s=600").unwrap();
        let not_yet = a.get(&format!("/api/v1/flows/{run}/result")).unwrap();
        (shown, listed, filtered_out, long_waiting, not_yet)
    })
    .await;
    let run = shown["run_id"].as_str().unwrap().to_owned();
    assert_eq!(shown["flow"], sleeper::Flow::NAME);
    assert_eq!(shown["finished"], false);
    assert!(
        shown["waiting_on"].as_str().unwrap().contains("timer"),
        "{shown}"
    );
    assert!(
        shown["fields"].to_string().contains("keep me"),
        "stored fields as JSON: {shown}"
    );
    assert!(shown["waiting_since_ms"].as_u64().unwrap() > 0);
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["flows"][0]["run_id"], run.as_str());
    assert_eq!(filtered_out["total"], 0);
    assert_eq!(long_waiting["total"], 0);
    assert_eq!(not_yet["finished"], false);
    let a = admin.clone();
    let r = run.clone();
    let (killed, after) = call(move || {
        let killed = a
            .post(&format!("/api/v1/flows/{r}/kill"), &json!({}))
            .unwrap();
        (killed, a.get(&format!("/api/v1/flows/{r}")).unwrap())
    })
    .await;
    assert_eq!(killed["killed"], true);
    assert_eq!(after["finished"], true);
    assert_eq!(after["outcome"], "error");
    assert!(
        after["error"]
            .as_str()
            .unwrap()
            .contains("killed by an operator")
    );

    // A flow failing transiently goes to the hospital (no automatic
    // retries here); a retry while it still fails keeps it there; once it
    // can succeed, a retry finishes it.
    FLAKY_MAY_SUCCEED.store(false, Ordering::SeqCst);
    let a = admin.clone();
    let (run, hospital) = call(move || {
        let started = a
            .post(
                "/api/v1/flows",
                &json!({"flow": flaky::Flow::NAME, "args": {"note": "f"}}),
            )
            .unwrap();
        let run = started["run_id"].as_str().unwrap().to_owned();
        let mut hospital = json!(null);
        for _ in 0..500 {
            hospital = a.get("/api/v1/flows?hospital=true").unwrap();
            if hospital["total"] == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (run, hospital)
    })
    .await;
    assert_eq!(hospital["total"], 1, "{hospital}");
    assert_eq!(hospital["flows"][0]["run_id"], run.as_str());
    assert!(
        hospital["flows"][0]["hospital"]["error"]
            .as_str()
            .unwrap()
            .contains("not yet")
    );
    FLAKY_MAY_SUCCEED.store(true, Ordering::SeqCst);
    let a = admin.clone();
    let r = run.clone();
    let done = call(move || {
        a.post(&format!("/api/v1/flows/{r}/retry"), &json!({}))
            .unwrap();
        a.get(&format!("/api/v1/flows/{r}/result?wait_s=30"))
            .unwrap()
    })
    .await;
    assert_eq!(done["outcome"], "ok");
    assert_eq!(done["output"], "f done", "typed output: {done}");

    // Drain on: new flows are refused (409) and nothing starts; off again:
    // they start.
    let a = admin.clone();
    let (drained, refused, status, undrained, started) = call(move || {
        let drained = a
            .post("/api/v1/node/drain", &json!({"draining": true}))
            .unwrap();
        let refused = status_of(a.post(
            "/api/v1/flows",
            &json!({"flow": sleeper::Flow::NAME, "args": {"note": "no"}}),
        ));
        let status = a.get("/api/v1/node").unwrap();
        let undrained = a
            .post("/api/v1/node/drain", &json!({"draining": false}))
            .unwrap();
        let started = a.post(
            "/api/v1/flows",
            &json!({"flow": sleeper::Flow::NAME, "args": {"note": "yes"}}),
        );
        (drained, refused, status, undrained, started)
    })
    .await;
    assert_eq!(drained["draining"], true);
    assert_eq!(refused.0, 409, "{}", refused.1);
    assert_eq!(status["draining"], true);
    assert_eq!(status["name"], "Alice");
    assert_eq!(status["peers"][0]["name"], "Bob");
    assert_eq!(status["peers"][0]["link"], "up");
    assert_eq!(status["flows_in_flight"], 0);
    // Durable transactions, and the batches they held (several per
    // transaction with the commit pipeline).
    let commits = status["commits"].as_u64().expect("commits");
    let batches = status["batches"].as_u64().expect("batches");
    assert!(0 < commits && commits <= batches, "{status}");
    assert_eq!(undrained["draining"], false);
    assert!(started.is_ok());

    // Metrics in the Prometheus text format, health, dump.
    let a = admin.clone();
    let (metrics, health, dump) = call(move || {
        (
            a.get_text("/metrics").unwrap(),
            a.get("/health").unwrap(),
            a.get("/api/v1/dump").unwrap(),
        )
    })
    .await;
    for needle in [
        "# TYPE flow_steps_total counter",
        "flow_batches_total ",
        "flow_commits_total ",
        "flow_commit_seconds_bucket{le=\"0.001\"}",
        "flow_finished_total{outcome=\"ok\"} ",
        "flow_finished_total{outcome=\"error\"} ",
        "flow_in_flight 1",
        "flow_hospital_size 0",
        "flow_draining 0",
        "flow_outbox_size ",
        "flow_peer_link_up{peer=\"Bob\"} 1",
        "flow_redelivered_frames_total ",
        "flow_deferred_initiations_total 0",
        "flow_flows{flow=",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    assert_eq!(health["status"], "ok");
    assert_eq!(dump.as_array().unwrap().len(), 1);
    s.alice.shutdown().await.unwrap();
    s.bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let s = setup().await;
    let admin = client(&s.url, &s.admin_token);
    let auth = format!("Bearer {}", s.admin_token);
    let before = in_flight(&admin).await;
    let url = s.url.clone();
    let a = admin.clone();
    let answers = call(move || {
        let start = |body: Value| status_of(a.post("/api/v1/flows", &body));
        vec![
            ("unknown flow", start(json!({"flow": "no::such", "args": {}})), 404, "no flow `no::such` is startable"),
            ("wrong type", start(json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob", "rounds": "ten"}})), 400, "invalid type"),
            ("unknown field", start(json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob", "rounds": 1, "x": 1}})), 400, "unknown field"),
            ("missing field", start(json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob"}})), 400, "missing field"),
            ("refused by the flow", start(json!({"flow": ping::Flow::NAME, "args": {"peer": "Mallory", "rounds": 1}})), 400, "no party `Mallory`"),
            ("unknown request field", start(json!({"flow": ping::Flow::NAME, "argz": {}})), 400, "unknown field"),
            ("empty client id", start(json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob", "rounds": 1}, "client_id": ""})), 400, "client_id"),
            ("malformed JSON", raw("POST", &format!("{url}/api/v1/flows"), Some(&auth), Some(b"{\"flow\": ".to_vec())), 400, "not the expected JSON"),
            ("huge body", oversized(&url, &auth, 2 * 1024 * 1024), 413, "length limit"),
            ("bad run id", status_of(a.get("/api/v1/flows/not-hex")), 400, "not a run id"),
            ("too long run id", status_of(a.get("/api/v1/flows/00000000000000000001")), 400, "not a run id"),
            ("unknown run", status_of(a.get("/api/v1/flows/00000000000000ff")), 404, "no flow"),
            ("kill unknown run", status_of(a.post("/api/v1/flows/00000000000000ff/kill", &json!({}))), 404, "no flow"),
            ("retry unknown run", status_of(a.post("/api/v1/flows/00000000000000ff/retry", &json!({}))), 404, "no flow"),
            ("bad wait", status_of(a.get("/api/v1/flows/00000000000000ff/result?wait_s=-1")), 400, "wait_s"),
            ("bad filter", status_of(a.get("/api/v1/flows?hospital=maybe")), 400, "bad query"),
            ("unknown filter", status_of(a.get("/api/v1/flows?colour=red")), 400, "bad query"),
            ("zero limit", status_of(a.get("/api/v1/flows?limit=0")), 400, "limit"),
            ("bad drain", status_of(a.post("/api/v1/node/drain", &json!({"draining": "yes"}))), 400, "invalid type"),
            ("unknown client id", status_of(a.get("/api/v1/client-ids/nope")), 404, "no flow was started"),
            ("unknown route", status_of(a.get("/api/v2/flows")), 404, "no route"),
        ]
    })
    .await;
    for (what, (status, message), want, needle) in answers {
        assert_eq!(status, want, "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: `{needle}` not in `{message}`"
        );
    }
    // Retrying a flow that is not in the hospital is a conflict.
    let a = admin.clone();
    let conflict = call(move || {
        let started = a
            .post(
                "/api/v1/flows",
                &json!({"flow": sleeper::Flow::NAME, "args": {"note": "n"}}),
            )
            .unwrap();
        let run = started["run_id"].as_str().unwrap().to_owned();
        status_of(a.post(&format!("/api/v1/flows/{run}/retry"), &json!({})))
    })
    .await;
    assert_eq!(conflict.0, 409, "{}", conflict.1);
    assert_eq!(
        in_flight(&admin).await,
        before + 1,
        "only the good start started a flow"
    );
    let a = admin.clone();
    assert_eq!(
        call(move || a.get("/api/v1/node").unwrap()["draining"].clone()).await,
        json!(false)
    );
    s.alice.shutdown().await.unwrap();
    s.bob.shutdown().await.unwrap();
}

#[test]
fn token_digests_are_hex_sha256() {
    // `printf %s test | sha256sum`
    assert_eq!(
        hex_digest("test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let _ = Path::new(".");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_start_is_checked_whole_then_committed_at_once() {
    let s = setup().await;
    let admin = client(&s.url, &s.admin_token);
    let pinger = client(&s.url, START_TOKEN);
    let before = in_flight(&admin).await;
    let ping_req = |id: &str| json!({"flow": ping::Flow::NAME, "args": {"peer": "Bob", "rounds": 10}, "client_id": id});
    let good = json!({"flows": [ping_req("b-1"), ping_req("b-2"), ping_req("b-1")]});
    let one_bad =
        json!({"flows": [ping_req("c-1"), {"flow": ping::Flow::NAME, "args": {"peer": "Bob"}}]});
    let not_allowed =
        json!({"flows": [ping_req("d-1"), {"flow": sleeper::Flow::NAME, "args": {"note": "x"}}]});
    let (a, p) = (admin.clone(), pinger.clone());
    let (bad, forbidden, empty, refused_ids) = call(move || {
        (
            status_of(a.post("/api/v1/flows/batch", &one_bad)),
            status_of(p.post("/api/v1/flows/batch", &not_allowed)),
            status_of(a.post("/api/v1/flows/batch", &json!({"flows": []}))),
            (
                status_of(a.get("/api/v1/client-ids/c-1")).0,
                status_of(a.get("/api/v1/client-ids/d-1")).0,
            ),
        )
    })
    .await;
    assert_eq!(bad.0, 400);
    assert!(bad.1.starts_with("flows[1]: "), "{}", bad.1);
    assert_eq!(forbidden.0, 403, "{}", forbidden.1);
    assert_eq!(empty.0, 400);
    assert_eq!(refused_ids, (404, 404), "a refused batch started nothing");
    assert_eq!(in_flight(&admin).await, before);

    let a = admin.clone();
    let (runs, results) = call(move || {
        let answer = a.post("/api/v1/flows/batch", &good).unwrap();
        let runs: Vec<String> = answer["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect();
        let results: Vec<Value> = runs
            .iter()
            .map(|r| {
                a.get(&format!("/api/v1/flows/{r}/result?wait_s=30"))
                    .unwrap()
            })
            .collect();
        (runs, results)
    })
    .await;
    assert_eq!(runs.len(), 3);
    assert_eq!(
        runs[0], runs[2],
        "a client id repeated in a batch starts once"
    );
    assert_ne!(runs[0], runs[1]);
    for r in results {
        assert_eq!(r["output"], json!(45));
    }
    let a = admin.clone();
    let drained = call(move || {
        a.post("/api/v1/node/drain", &json!({"draining": true}))
            .unwrap();
        status_of(a.post("/api/v1/flows/batch", &json!({"flows": [ping_req("e-1")]})))
    })
    .await;
    assert_eq!(drained.0, 409, "{}", drained.1);
    s.alice.shutdown().await.unwrap();
    s.bob.shutdown().await.unwrap();
}

fn start(api: &AdminClient, flow: &str, args: Value) -> String {
    api.post("/api/v1/flows", &json!({ "flow": flow, "args": args }))
        .unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_streamed_as_flows_move_and_a_followed_flow_ends_its_stream() {
    let s = setup().await;
    let admin = client(&s.url, &s.admin_token);
    let viewer = client(&s.url, READ_TOKEN);

    // The node's event stream (a read user may open it), opened before the
    // flow starts: every committed step of it arrives, in order, then its end.
    let (a, v) = (admin.clone(), viewer.clone());
    let (run, seen) = call(move || {
        let mut events = v.events("/api/v1/events").unwrap();
        let run = start(&a, stepper::Flow::NAME, json!({"note": "n-1"}));
        let mut seen: Vec<ServerEvent> = Vec::new();
        for event in events.by_ref() {
            let event = event.unwrap();
            if event.data["run_id"] != json!(run) {
                continue;
            }
            let end = event.event == "finished";
            seen.push(event);
            if end {
                break;
            }
        }
        (run, seen)
    })
    .await;
    let kinds: Vec<(String, Value)> = seen
        .iter()
        .map(|e| {
            let detail = if e.event == "progress" {
                e.data["progress"].clone()
            } else {
                e.data["outcome"].clone()
            };
            (e.event.clone(), detail)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("progress".into(), json!(["Preparing"])),
            ("progress".into(), json!(["Finishing"])),
            ("progress".into(), json!(["Done"])),
            ("finished".into(), json!("ok")),
        ],
        "{seen:?}"
    );
    assert_eq!(seen[3].data["flow"], json!(stepper::Flow::NAME));

    // One flow followed: its progress now, then (killed) its outcome, and
    // the stream ends by itself.
    let (a, v) = (admin.clone(), viewer.clone());
    let followed = call(move || {
        let sleeping = start(&a, sleeper::Flow::NAME, json!({"note": "f-1"}));
        let mut events = v
            .events(&format!("/api/v1/flows/{sleeping}/progress?follow=true"))
            .unwrap();
        let first = events.next().unwrap().unwrap();
        a.post(&format!("/api/v1/flows/{sleeping}/kill"), &json!({}))
            .unwrap();
        let rest: Vec<ServerEvent> = events.map(Result::unwrap).collect();
        (sleeping, first, rest)
    })
    .await;
    let (sleeping, first, rest) = followed;
    assert_eq!(first.event, "progress");
    assert_eq!(first.data["run_id"], json!(sleeping));
    let last = rest.last().expect("the outcome");
    assert_eq!(last.event, "finished", "{rest:?}");
    assert_eq!(last.data["outcome"], "error");
    assert!(
        last.data["error"].as_str().unwrap().contains("killed"),
        "{last:?}"
    );

    // A finished flow: its outcome at once, typed. An unknown run, or a
    // bad flag: a 4xx before any stream.
    let v = viewer.clone();
    let (done, unknown, bad) = call(move || {
        let done: Vec<ServerEvent> = v
            .events(&format!("/api/v1/flows/{run}/progress?follow=true"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let unknown = match v.events("/api/v1/flows/00000000000000ff/progress?follow=true") {
            Err(ClientError::Status { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        let bad = match v.events(&format!("/api/v1/flows/{run}/progress?follow=maybe")) {
            Err(ClientError::Status { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        (done, unknown, bad)
    })
    .await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].event, "finished");
    assert_eq!(done[0].data["output"], json!("n-1"));
    assert_eq!((unknown, bad), (404, 400));

    // A stream still open when the node stops ends cleanly (it does not
    // hold up the shutdown until the server gives up on it).
    let v = viewer.clone();
    let open = call(move || v.events("/api/v1/events").unwrap()).await;
    s.alice.shutdown().await.unwrap();
    let after: Vec<Result<ServerEvent, ClientError>> = call(move || open.collect()).await;
    assert!(
        after.iter().all(Result::is_ok),
        "the stream was cut instead of ended: {after:?}"
    );
    s.bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_results_are_collected_with_one_request() {
    let s = setup().await;
    let admin = client(&s.url, &s.admin_token);
    let viewer = client(&s.url, READ_TOKEN);
    let a = admin.clone();
    let runs: Vec<String> = call(move || {
        let flows: Vec<Value> = (0..3)
            .map(|i| json!({"flow": stepper::Flow::NAME, "args": {"note": format!("r-{i}")}}))
            .collect();
        a.post("/api/v1/flows/batch", &json!({ "flows": flows }))
            .unwrap()["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect()
    })
    .await;

    // Waits for all of them; the unknown run stays pending; results come
    // in the order asked, typed, once each.
    let unknown = "00000000000000ff".to_owned();
    let mut asked = vec![
        runs[2].clone(),
        unknown.clone(),
        runs[0].clone(),
        runs[1].clone(),
    ];
    asked.push(runs[0].clone());
    let v = viewer.clone();
    let body = json!({ "run_ids": asked, "wait_s": 0.5 });
    let answer = call(move || v.post("/api/v1/flows/results", &body).unwrap()).await;
    let results = answer["results"].as_array().unwrap();
    let order: Vec<&str> = results
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![&runs[2], &runs[0], &runs[1]], "{answer}");
    for (r, note) in results.iter().zip(["r-2", "r-0", "r-1"]) {
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["output"], json!(note));
    }
    assert_eq!(answer["pending"], json!([unknown]));

    // Without outputs; a bad id or a bad wait: 400.
    let v = viewer.clone();
    let r0 = runs[0].clone();
    let (bare, bad_id, bad_wait) = call(move || {
        (
            v.post(
                "/api/v1/flows/results",
                &json!({ "run_ids": [r0], "output": false }),
            )
            .unwrap(),
            status_of(v.post("/api/v1/flows/results", &json!({ "run_ids": ["not-hex"] }))),
            status_of(v.post(
                "/api/v1/flows/results",
                &json!({ "run_ids": [], "wait_s": -1 }),
            )),
        )
    })
    .await;
    assert_eq!(bare["results"][0]["outcome"], "ok");
    assert!(bare["results"][0].get("output").is_none(), "{bare}");
    assert_eq!(bad_id.0, 400, "{}", bad_id.1);
    assert_eq!(bad_wait.0, 400, "{}", bad_wait.1);

    // A flow that has not finished: pending after the wait, then found once
    // it ends (here: killed).
    let a = admin.clone();
    let (pending, later) = call(move || {
        let sleeping = start(&a, sleeper::Flow::NAME, json!({"note": "p-1"}));
        let pending = a
            .post(
                "/api/v1/flows/results",
                &json!({ "run_ids": [sleeping], "wait_s": 0.05 }),
            )
            .unwrap();
        a.post(&format!("/api/v1/flows/{sleeping}/kill"), &json!({}))
            .unwrap();
        let later = a
            .post(
                "/api/v1/flows/results",
                &json!({ "run_ids": [sleeping], "wait_s": 30 }),
            )
            .unwrap();
        (pending, later)
    })
    .await;
    assert_eq!(pending["results"], json!([]));
    assert_eq!(pending["pending"].as_array().unwrap().len(), 1);
    assert_eq!(later["results"][0]["outcome"], "error", "{later}");
    assert_eq!(later["pending"], json!([]));
    s.alice.shutdown().await.unwrap();
    s.bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_types_state_graph_is_drawn_in_every_format() {
    let s = setup().await;
    let url = s.url.clone();
    let auth = format!("Bearer {}", s.admin_token);
    let read = client(&s.url, READ_TOKEN);
    let answers = call(move || {
        let graph = |name: &str, query: &str| {
            raw(
                "GET",
                &format!("{url}/api/v1/flow-types/{name}/graph{query}"),
                Some(&auth),
                None,
            )
        };
        let types = read.get("/api/v1/flow-types").unwrap();
        let mermaid = graph(ping::Flow::NAME, "");
        let dot = graph(ping::Flow::NAME, "?format=dot&highlight=AwaitEcho");
        let svg = graph(ping::Flow::NAME, "?format=svg&highlight=AwaitEcho");
        let data = graph(sleeper::Flow::NAME, "?format=json");
        let unknown_state = graph(ping::Flow::NAME, "?format=svg&highlight=Nowhere");
        let refused = vec![
            (
                "unknown flow",
                graph("no::such", ""),
                404,
                "no flow type `no::such`",
            ),
            (
                "unknown format",
                graph(ping::Flow::NAME, "?format=png"),
                400,
                "unknown graph format",
            ),
            (
                "unknown parameter",
                graph(ping::Flow::NAME, "?colour=red"),
                400,
                "bad query",
            ),
            (
                "huge state name",
                graph(ping::Flow::NAME, &format!("?highlight={}", "A".repeat(300))),
                400,
                "at most 256 bytes",
            ),
            (
                "no token",
                raw(
                    "GET",
                    &format!("{url}/api/v1/flow-types/x/graph"),
                    None,
                    None,
                ),
                401,
                "",
            ),
        ];
        (types, mermaid, dot, svg, data, unknown_state, refused)
    })
    .await;
    let (types, mermaid, dot, svg, data, unknown_state, refused) = answers;

    // The read role lists the registered types with their state counts.
    let listed = types["flow_types"].as_array().unwrap();
    let ping_type = listed
        .iter()
        .find(|t| t["name"] == ping::Flow::NAME)
        .unwrap_or_else(|| panic!("ping is not listed: {types}"));
    assert_eq!(ping_type["states"], 3, "Start, AwaitEcho, Done: {types}");
    assert_eq!(ping_type["version"], 1);

    assert_eq!(mermaid.0, 200, "{}", mermaid.1);
    assert!(mermaid.1.starts_with("stateDiagram-v2\n"), "{}", mermaid.1);
    assert!(
        mermaid
            .1
            .contains("    AwaitEcho --> Done : end of while i #60; rounds\n"),
        "{}",
        mermaid.1
    );
    assert_eq!(dot.0, 200, "{}", dot.1);
    assert!(
        dot.1.contains("\"AwaitEcho\" [label=\"AwaitEcho\\n"),
        "{}",
        dot.1
    );
    assert_eq!(dot.1.matches("penwidth=3").count(), 1, "{}", dot.1);
    assert_eq!(svg.0, 200, "{}", svg.1);
    assert!(
        svg.1
            .contains("class=\"flow-state current\" data-state=\"AwaitEcho\""),
        "{}",
        svg.1
    );
    assert_eq!(unknown_state.0, 200, "an unknown state highlights nothing");
    assert!(!unknown_state.1.contains("current"), "{}", unknown_state.1);

    // The graph as data: the sleeper's one suspension point and its operation.
    assert_eq!(data.0, 200, "{}", data.1);
    let data: Value = serde_json::from_str(&data.1).unwrap();
    assert_eq!(data["title"], "sleeper");
    let states: Vec<&str> = data["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Start", "Sleep", "Done"]);
    assert_eq!(data["states"][1]["awaits"]["kind"], "sleep");
    assert_eq!(
        data["states"][0]["fields"][0],
        json!({"name": "note", "ty": "String"})
    );

    for (what, (status, body), want, needle) in refused {
        assert_eq!(status, want, "{what}: {body}");
        assert!(body.contains(needle), "{what}: `{needle}` not in `{body}`");
    }
    s.alice.shutdown().await.unwrap();
    s.bob.shutdown().await.unwrap();
}
