//! The web dashboard against a real node over loopback.
//!
//! * Over HTTP: login (a wrong token, then a right one; the cookie is
//!   `HttpOnly` and `SameSite=Strict` and is not the token), the redirect to
//!   the login without a session, hostile stored fields and error texts
//!   shown escaped, CSRF (no token, a wrong token, another origin: refused,
//!   nothing changes), the `read` role (no buttons; its retry refused),
//!   logout, and the session cookie opening nothing in the JSON API.
//! * In headless Chromium (skipped, saying so, when Debian's `chromium` is
//!   not installed): log in through the form, see the flows and their live
//!   counts after the script refreshed them, one flow with its current state
//!   drawn out on its state graph, a hostile field shown as text and never
//!   run, and a click on Retry in the hospital that makes the flow finish.
//!   With `DASHBOARD_SCREENSHOTS=DIR` (relative to the workspace root) it
//!   saves `dashboard-flows.png`, `dashboard-flow.png` and
//!   `dashboard-hospital.png` there for the book (`docs/images`).

#![cfg(unix)]

mod dashboard_support;

use dashboard_support::{Dashboard, READ_TOKEN, cdp, flaky, let_succeed, sleeper};
use flow_runtime::testing::ping_pong::ping;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Hostile text a flow can store: would run if it reached the page as HTML.
const HOSTILE: &str = r#"<script>window.pwned=1</script><img src=x onerror="window.pwned=2">"#;

/// An HTTP client that keeps the dashboard's cookie by hand and never
/// follows redirects, so each answer can be checked.
struct Http {
    agent: ureq::Agent,
    base: String,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build()
            .into();
        Http {
            agent,
            base: base.to_owned(),
            cookie: None,
        }
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut r = r.unwrap();
        let headers = r
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        Answer {
            status: r.status().as_u16(),
            headers,
            body: r.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&self, path: &str) -> Answer {
        let mut r = self.agent.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", c);
        }
        Self::answer(r.call())
    }

    /// A form POST; `origin` is sent as the `Origin` header when given.
    fn post(&self, path: &str, origin: Option<&str>, form: &[(&str, &str)]) -> Answer {
        let mut r = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", c);
        }
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        Self::answer(r.send_form(form.iter().copied()))
    }

    /// Logs in with `token`; keeps the cookie. The answer to the login.
    fn login(&mut self, token: &str) -> Answer {
        let a = self.post("/ui/login", Some(&self.base.clone()), &[("token", token)]);
        if let Some(set) = a.header("set-cookie") {
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        a
    }
}

/// The value of the first `name="csrf"` field in `html`.
fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in:\n{html}"));
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Polls `f` every 50 ms until it is true (failing after 30 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_dashboard_over_http_escapes_hostile_text_and_guards_every_action() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d: Dashboard = rt.block_on(dashboard_support::start());
    let sick = rt
        .block_on(d.node.start_flow(flaky(HOSTILE.to_owned())))
        .unwrap()
        .run_id();
    let sleeping = rt
        .block_on(d.node.start_flow(sleeper(HOSTILE.to_owned())))
        .unwrap()
        .run_id();
    let mut http = Http::new(&d.url);

    // No session: pages go to the login, fragments and actions get 401.
    let a = http.get("/");
    assert_eq!((a.status, a.header("location")), (303, Some("/ui/")));
    let a = http.get("/ui/");
    assert_eq!((a.status, a.header("location")), (303, Some("/ui/login")));
    assert_eq!(http.get("/ui/live/flows").status, 401);
    assert_eq!(
        http.post(&format!("/ui/flows/{sick}/retry"), None, &[])
            .status,
        401
    );
    let login = http.get("/ui/login");
    assert_eq!(login.status, 200);
    let csp = login.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(http.get("/ui/assets/dashboard.js").status, 200);

    // A wrong token is refused; the right one gives a session cookie that
    // scripts cannot read, other sites cannot use, and is not the token.
    let a = http.login("not-a-token-at-all-0123456789");
    assert_eq!(a.status, 401);
    assert!(http.cookie.is_none());
    let a = http.login(&d.admin_token);
    assert_eq!((a.status, a.header("location")), (303, Some("/ui/")));
    let set = a.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(&d.admin_token));
    // A login posted from another site is refused.
    let a = http.post(
        "/ui/login",
        Some("http://evil.example"),
        &[("token", &d.admin_token)],
    );
    assert_eq!(a.status, 403);
    // Refused before its body was read: the connection is not reused.
    assert_eq!(a.header("connection"), Some("close"));

    // Hostile text is shown as text: in a stored field, an error text (a
    // table cell and a title attribute), never as markup.
    eventually("the flaky flow in the hospital", || {
        http.get("/ui/hospital").body.contains(&sick.to_string())
    });
    for page in [
        format!("/ui/flows/{sleeping}"),
        format!("/ui/flows/{sick}"),
        "/ui/hospital".to_owned(),
        "/ui/".to_owned(),
        "/ui/live/flows".to_owned(),
    ] {
        let a = http.get(&page);
        assert_eq!(a.status, 200, "{page}: {}", a.body);
        assert!(
            !a.body.contains("<script>window"),
            "{page} runs the hostile script:\n{}",
            a.body
        );
        assert!(
            !a.body.contains("<img src=x"),
            "{page} holds the hostile img:\n{}",
            a.body
        );
    }
    let shown = http.get(&format!("/ui/flows/{sleeping}")).body;
    assert!(
        shown.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;"),
        "the stored field is not shown escaped:\n{shown}"
    );
    let hospital = http.get("/ui/hospital").body;
    assert!(
        hospital.contains("&lt;img src=x onerror=&quot;window.pwned=2&quot;&gt;: not yet"),
        "{hospital}"
    );

    // CSRF: a retry without the session's token, with a wrong one, or from
    // another origin is refused, and the flow stays in the hospital.
    let csrf = csrf_of(&hospital);
    let retry = format!("/ui/flows/{sick}/retry");
    let base = d.url.clone();
    assert_eq!(
        http.post(&retry, Some(&base), &[("back", "hospital")])
            .status,
        400
    );
    assert_eq!(
        http.post(&retry, Some(&base), &[("csrf", "0badc0de")])
            .status,
        403
    );
    assert_eq!(
        http.post(&retry, Some("http://evil.example"), &[("csrf", &csrf)])
            .status,
        403
    );
    assert!(http.get("/ui/hospital").body.contains(&sick.to_string()));

    // The read role sees no buttons, and its retry is refused.
    let mut viewer = Http::new(&d.url);
    assert_eq!(viewer.login(READ_TOKEN).status, 303);
    let seen = viewer.get("/ui/hospital").body;
    assert!(
        seen.contains(&sick.to_string()) && !seen.contains("Retry") && !seen.contains("Kill"),
        "{seen}"
    );
    let viewer_csrf = csrf_of(&seen); // the logout form's
    let a = viewer.post(&retry, Some(&base), &[("csrf", &viewer_csrf)]);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("operate"), "{}", a.body);
    let a = viewer.post(
        "/ui/node/drain",
        Some(&base),
        &[("csrf", &viewer_csrf), ("draining", "on")],
    );
    assert_eq!(a.status, 403);

    // The operator's retry, with everything right, goes through.
    let_succeed(HOSTILE);
    let a = http.post(
        &retry,
        Some(&base),
        &[("csrf", &csrf), ("back", "hospital")],
    );
    assert_eq!(
        (a.status, a.header("location")),
        (303, Some("/ui/hospital")),
        "{}",
        a.body
    );
    eventually("the retried flow to finish", || {
        http.get(&format!("/ui/live/flows/{sick}"))
            .body
            .contains("finished")
    });

    // The cookie opens nothing in the JSON API (it wants a bearer token).
    assert_eq!(http.get("/api/v1/flows").status, 401);

    // Logout ends the session on the node.
    let old = http.cookie.clone();
    let a = http.post("/ui/logout", Some(&base), &[("csrf", &csrf)]);
    assert_eq!((a.status, a.header("location")), (303, Some("/ui/login")));
    assert!(a.header("set-cookie").unwrap().contains("Max-Age=0"));
    http.cookie = old;
    assert_eq!(
        http.get("/ui/").status,
        303,
        "the ended session still works"
    );
    rt.block_on(d.node.shutdown()).unwrap();
}

/// Where to save screenshots, if asked to.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("DASHBOARD_SCREENSHOTS")?);
    let dir = if dir.is_absolute() {
        dir
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir)
    };
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let Some(chromium) = cdp::find_chromium() else {
        println!(
            "SKIPPED: the dashboard's browser test needs Chromium (Debian's `chromium` package; .ci/run installs it)"
        );
        return;
    };
    let shots = screenshot_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d: Dashboard = rt.block_on(dashboard_support::start());
    let mut pings = Vec::new();
    for rounds in [3, 5, 8] {
        let h = rt
            .block_on(d.node.start_flow(ping(d.bob.clone(), rounds)))
            .unwrap();
        pings.push(h.run_id().to_string());
    }
    let sick = rt
        .block_on(d.node.start_flow(flaky("invoice-17".to_owned())))
        .unwrap()
        .run_id()
        .to_string();
    let mut b = cdp::Browser::launch(&chromium, 1280, 860);

    // The login form, as a person fills it in.
    b.navigate(&format!("{}/ui/", d.url));
    b.wait_for("location.pathname === '/ui/login'", "the login page");
    b.eval(&format!(
        "document.querySelector('#token').value = {}; document.querySelector('main form').submit(); true",
        serde_json::to_string(&d.admin_token).unwrap()
    ));

    // The flows, with the counts, after the script refreshed them.
    b.wait_for(
        "location.pathname === '/ui/' && document.body.dataset.script === 'ready' \
         && Number(document.querySelector('#flows-live').dataset.refreshed) >= 1 \
         && document.querySelector('#count-hospital').textContent === '1'",
        "the flows page, refreshed by its script, with the flaky flow in the hospital",
    );
    assert_eq!(
        b.eval("document.querySelector('#count-in-flight').textContent"),
        "4"
    );
    for run in pings.iter().chain([&sick]) {
        assert_eq!(
            b.eval(&format!(
                "document.querySelectorAll('table.flows tr[data-run=\"{run}\"]').length"
            )),
            1,
            "flow {run} is not listed"
        );
    }
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("dashboard-flows.png"));
    }

    // One ping: its state, its session and counterparty.
    let run = &pings[2];
    b.navigate(&format!("{}/ui/flows/{run}", d.url));
    b.wait_for(
        "document.querySelector('#current-state') !== null",
        "the flow's page",
    );
    let state = b.eval("document.querySelector('#current-state').textContent");
    let state = state.as_str().unwrap().to_owned();
    assert!(!state.is_empty());
    // The state machine is drawn with exactly the current state
    // highlighted, among the flow's other states.
    b.wait_for(
        "document.querySelectorAll('#state-graph svg g.flow-state.current').length === 1",
        "the state graph with its current state",
    );
    assert_eq!(
        b.eval("document.querySelector('#state-graph svg g.flow-state.current').dataset.state"),
        state.as_str(),
        "the highlighted state is not the flow's current state"
    );
    let boxes = b.eval("document.querySelectorAll('#state-graph svg g.flow-state').length");
    assert!(
        boxes.as_u64().unwrap_or(0) >= 3,
        "only {boxes} states drawn"
    );
    assert!(
        b.eval("document.querySelector('section.counterparties').textContent.includes('Bob')")
            == true,
        "Bob is not shown as the counterparty"
    );
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("dashboard-flow.png"));
    }

    // A hostile stored field: shown as text, never run.
    let hostile = rt
        .block_on(d.node.start_flow(sleeper(HOSTILE.to_owned())))
        .unwrap()
        .run_id();
    b.navigate(&format!("{}/ui/flows/{hostile}", d.url));
    b.wait_for(
        &format!(
            "document.querySelector('#stored-fields') !== null && document.querySelector('#stored-fields').textContent.includes({})",
            serde_json::to_string("<script>window.pwned=1</script>").unwrap()
        ),
        "the hostile note shown as text",
    );
    assert_eq!(
        b.eval("typeof window.pwned"),
        "undefined",
        "the hostile field ran"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('main script, main img').length"),
        0
    );
    rt.block_on(d.node.kill_flow(hostile)).unwrap();

    // The hospital: click Retry on the flaky flow (now allowed to
    // succeed); it leaves the hospital and its page shows it finished.
    b.navigate(&format!("{}/ui/hospital", d.url));
    let button = format!("tr[data-run=\"{sick}\"] button.retry");
    b.wait_for(
        &format!("document.querySelector('{button}') !== null"),
        "the Retry button",
    );
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("dashboard-hospital.png"));
    }
    let_succeed("invoice-17");
    b.eval(&format!("document.querySelector('{button}').click(); true"));
    b.wait_for(
        &format!(
            "location.pathname === '/ui/hospital' && document.readyState === 'complete' \
             && document.querySelector('tr[data-run=\"{sick}\"]') === null"
        ),
        "the retried flow to leave the hospital",
    );
    b.navigate(&format!("{}/ui/flows/{sick}", d.url));
    b.wait_for(
        "document.querySelector('#flow-status') !== null \
         && document.querySelector('#flow-status').textContent.includes('finished') \
         && document.querySelector('#flow-result').textContent.includes('invoice-17 done')",
        "the retried flow finished, with its result",
    );
    drop(b);
    rt.block_on(d.node.shutdown()).unwrap();
}
