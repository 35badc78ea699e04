//! Shared helpers for the TCP transport tests: deterministic identities, a
//! small network of transports on 127.0.0.1, a log capture (also used by
//! `memory_node.rs`), and a "raw" peer that speaks the wire protocol by
//! hand so tests can misbehave; the files node processes start from, and
//! a node process's handle ([`NodeProcess`]).
#![allow(dead_code)] // each test file uses a different subset

pub mod mid_run;
mod node_files;
pub mod node_process;
#[allow(unused_imports)] // each test file uses a different subset
pub use node_files::{NodeFiles, write_nodes};
#[allow(unused_imports)] // each test file uses a different subset
pub use node_process::NodeProcess;

use bytes::Bytes;
use flow_runtime::PublicKey;
use flow_runtime::tcp::records::RecordCodec;
use flow_runtime::tcp::records::{self, IdentityProof};
use flow_runtime::tcp::{
    Incoming, NetworkMap, PeerEntry, SigningKey, TcpConfig, TcpTransport, codec,
};
use futures_util::{SinkExt, StreamExt};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

pub const NAMES: [&str; 4] = ["Alice", "Bob", "Carol", "Dave"];

/// A deterministic identity per index (tests only: real keys come from the
/// system RNG via `flow-keygen`).
pub fn identity(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[u8::try_from(i).unwrap() + 1; 32])
}

pub fn public(key: &SigningKey) -> PublicKey {
    PublicKey(key.verifying_key().to_bytes())
}

pub fn test_config() -> TcpConfig {
    TcpConfig {
        max_frame_len: 4 * 1024 * 1024,
        handshake_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TcpConfig::default()
    }
}

/// `n` parties with listeners bound on 127.0.0.1 (port 0), and the network
/// map listing them all. Transports are started separately so tests can
/// leave some parties to raw clients.
pub struct Net {
    pub map: NetworkMap,
    pub listeners: Vec<Option<TcpListener>>,
    pub addrs: Vec<SocketAddr>,
}

impl Net {
    pub async fn new(n: usize) -> Net {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        let mut entries = Vec::new();
        for (i, name) in NAMES.iter().enumerate().take(n) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            entries.push(PeerEntry {
                name: (*name).to_owned(),
                address: addr.to_string(),
                key: public(&identity(i)),
            });
            listeners.push(Some(l));
            addrs.push(addr);
        }
        Net {
            map: NetworkMap::new(entries).unwrap(),
            listeners,
            addrs,
        }
    }

    pub fn start(&mut self, i: usize) -> (TcpTransport, Incoming) {
        self.start_with(i, test_config())
    }

    pub fn start_with(&mut self, i: usize, config: TcpConfig) -> (TcpTransport, Incoming) {
        let listener = self.listeners[i].take().expect("party already started");
        TcpTransport::from_listener(identity(i), listener, self.map.clone(), config).unwrap()
    }

    pub fn key(&self, i: usize) -> PublicKey {
        public(&identity(i))
    }
}

/// Receives one frame or fails the test after 5 s.
pub async fn recv(incoming: &mut Incoming) -> (PublicKey, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .expect("no frame within 5 s")
        .expect("incoming stream ended")
}

// ------------------------------------------------------------ log capture

/// Everything logged on this thread while the guard lives. Tests run on a
/// current-thread runtime, so the transport's tasks log here too.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until a WARN line contains every one of `needles`; returns it.
    pub async fn wait_for_warning(&self, needles: &[&str]) -> String {
        // Generous: on a loaded 2-core machine a periodic check's thread
        // can wait seconds for its turn; the loop ends at the first match.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(line) = self
                .text()
                .lines()
                .find(|l| l.contains("WARN") && needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no WARN line containing {needles:?}; logs:\n{}",
            self.text()
        );
    }
}

// --------------------------------------------------------------- raw peer

/// A peer that speaks the wire protocol by hand: it can complete a real
/// handshake with any proof, then send arbitrary records. It remembers every
/// record it sent so tests can replay them.
pub struct RawPeer {
    pub framed: Framed<TcpStream, RecordCodec>,
    pub noise: Option<snow::TransportState>,
    pub sent: Vec<Vec<u8>>,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).await.unwrap();
        RawPeer {
            framed: Framed::new(stream, codec(usize::MAX >> 1)),
            noise: None,
            sent: Vec::new(),
        }
    }

    /// Runs the Noise XX handshake as initiator, presenting the proof that
    /// `make_proof` builds from this connection's Noise static key. Returns
    /// the responder's proof, or the handshake's I/O error if the node hung
    /// up.
    pub async fn handshake(
        &mut self,
        make_proof: impl FnOnce(&[u8]) -> IdentityProof,
    ) -> Result<IdentityProof, String> {
        let params: snow::params::NoiseParams = records::NOISE_PARAMS.parse().unwrap();
        let kp = snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap();
        let mut hs = snow::Builder::new(params)
            .prologue(records::PROLOGUE)
            .unwrap()
            .local_private_key(&kp.private)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = vec![0u8; 65535];
        let mut payload = vec![0u8; 65535];
        let n = hs.write_message(&[], &mut buf).unwrap();
        self.send_record(buf[..n].to_vec()).await;
        let msg2 = match self.framed.next().await {
            Some(Ok(m)) => m,
            other => return Err(format!("no handshake reply: {other:?}")),
        };
        let p = hs
            .read_message(&msg2, &mut payload)
            .map_err(|e| e.to_string())?;
        let theirs = IdentityProof::decode(&payload[..p]).map_err(|e| e.to_string())?;
        let proof = make_proof(&kp.public).encode();
        let n = hs.write_message(&proof, &mut buf).unwrap();
        self.send_record(buf[..n].to_vec()).await;
        self.noise = Some(hs.into_transport_mode().unwrap());
        Ok(theirs)
    }

    /// Handshake as party `i` of [`identity`], honestly.
    pub async fn handshake_as(&mut self, i: usize) -> Result<IdentityProof, String> {
        let key = identity(i);
        self.handshake(|noise| IdentityProof::sign(NAMES[i], &key, noise))
            .await
    }

    /// Sends one record body as is.
    pub async fn send_record(&mut self, record: Vec<u8>) {
        self.sent.push(record.clone());
        // The node may already have hung up; tests check that separately.
        let _ = self.framed.send(Bytes::from(record)).await;
    }

    /// Encrypts and sends one application frame.
    pub async fn send_frame(&mut self, frame: &[u8]) {
        let noise = self.noise.as_mut().expect("handshake first");
        let record = records::seal_frame(noise, frame).unwrap();
        self.send_record(record).await;
    }

    /// Writes raw bytes, bypassing the record framing.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.framed.get_mut().write_all(bytes).await;
        let _ = self.framed.get_mut().flush().await;
    }

    /// Asserts the node closes the connection within 5 s.
    pub async fn expect_closed(mut self) {
        let stream = self.framed.get_mut();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the node did not close the connection");
    }
}
