//! Headless Chromium driven over the Chrome DevTools Protocol, through the
//! pipe Chromium opens with `--remote-debugging-pipe` (commands on its fd 3,
//! answers on its fd 4, each a JSON text ended by a NUL byte).
//!
//! Why not `chromiumoxide` or `headless_chrome`: each brings a generated
//! binding of the whole protocol (tens of thousands of lines) and a
//! WebSocket stack, minutes of compiling on CI's two cores for the five
//! commands this test sends. The pipe needs neither a WebSocket nor a port:
//! `sh` maps the child's stdin and stdout to fds 3 and 4, and the messages
//! are plain `serde_json`.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// The longest one command or one wait may take before the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// Where Debian's `chromium` package puts the browser.
const CANDIDATES: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];

/// The installed Chromium, if any.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists())
}

/// One headless Chromium with one page attached; killed when dropped.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: Receiver<Value>,
    next_id: u64,
    session: String,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` with a fresh profile and opens a page of
    /// `width`×`height` CSS pixels.
    pub fn launch(chromium: &Path, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromium.log");
        // The flags that keep it from reaching for the network (which the
        // machines do not have, and where it would hang) or a GPU.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let commands = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        match serde_json::from_slice::<Value>(&buf) {
                            Ok(v) => {
                                if tx.send(v).is_err() {
                                    return;
                                }
                            }
                            Err(e) => eprintln!("chromium sent something not JSON: {e}"),
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
            log,
            _profile: profile,
        };
        let target = browser.command(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.command(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call("Page.enable", json!({}));
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// What Chromium printed, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one command (to the page's session, or to the browser with
    /// `None`) and returns its result; panics on an error answer.
    fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_command(session, method, params) {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}\nchromium's log:\n{}", self.log()),
        }
    }

    fn try_command(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
            .map_err(|e| format!("cannot write to chromium: {e}"))?;
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                // Events (no id) and late answers to other commands.
                Ok(v) if v["id"].as_u64() != Some(id) => continue,
                Ok(v) => {
                    return match v.get("error") {
                        Some(e) => Err(e.to_string()),
                        None => Ok(v["result"].clone()),
                    };
                }
                Err(RecvTimeoutError::Timeout) => return Err("no answer in time".into()),
                Err(RecvTimeoutError::Disconnected) => return Err("chromium exited".into()),
            }
        }
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params)
    }

    /// Loads `url` (and waits until its document has loaded).
    pub fn navigate(&mut self, url: &str) {
        let answer = self.call("Page.navigate", json!({ "url": url }));
        if let Some(e) = answer.get("errorText") {
            panic!("cannot load {url}: {e}");
        }
        self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            &format!("{url} to load"),
        );
    }

    /// The value of the JavaScript `expression` in the page, or why it
    /// threw (a page in the middle of loading has no context to run it).
    pub fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let r = self.try_command(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.to_string()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// [`try_eval`](Self::try_eval) that must succeed.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("`{expression}` threw: {e}"))
    }

    /// Polls `expression` until it is `true`; fails the test (saying
    /// `what` it waited for, and the page's text) after [`LIMIT`].
    pub fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            if self.try_eval(expression) == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let page = self
                    .try_eval("location.href + '\\n' + document.body.innerText")
                    .unwrap_or_default();
                panic!("waited in vain for {what} (`{expression}`); the page:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the whole page (up to 2400 pixels high) written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let width = metrics["cssContentSize"]["width"]
            .as_f64()
            .unwrap_or(1280.0);
        let height = metrics["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(900.0)
            .min(2400.0);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
            }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    /// Asks Chromium to close (so its helper processes end with it), and
    /// kills it if it has not within a few seconds.
    fn drop(&mut self) {
        let _ = self.try_command(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
