//! The Noise XX handshake with identity binding, and the checks against the
//! network map that decide whether a connection is accepted.
//!
//! ```text
//! initiator (dialer)                         responder (listener)
//!   -> e
//!                                <- e, ee, s, es   + IdentityProof(responder)
//!   -> s, se  + IdentityProof(initiator)
//! ```
//!
//! Each side then checks, in this order: the proof decodes; its signature
//! covers the Noise static key the handshake authenticated; the identity
//! key is in the network map; the name it claims is the name the map gives
//! that key; and (dialer only) it is the party we meant to reach.

use super::network_map::{NetworkMap, PeerEntry};
use super::records::{
    IdentityProof, MAX_HANDSHAKE_RECORD, NOISE_PARAMS, PROLOGUE, RecordCodec, RecordTooLarge,
    WireError,
};
use crate::PublicKey;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

/// This node's side of every handshake: its Noise static key pair
/// (generated fresh when the transport starts) and the proof, signed once,
/// that the Noise key speaks for the node's ed25519 identity.
pub(crate) struct LocalIdentity {
    name: String,
    key: PublicKey,
    noise_private: Vec<u8>,
    proof: Vec<u8>,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// Generates a Noise static key and signs it with `identity`.
    pub fn new(name: &str, identity: &SigningKey) -> Result<Self, snow::Error> {
        let keypair = snow::Builder::new(noise_params()?).generate_keypair()?;
        let proof = IdentityProof::sign(name, identity, &keypair.public).encode();
        Ok(LocalIdentity {
            name: name.to_owned(),
            key: PublicKey(identity.verifying_key().to_bytes()),
            noise_private: keypair.private,
            proof,
        })
    }

    /// The node's legal name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's identity key.
    pub fn key(&self) -> PublicKey {
        self.key
    }
}

impl Drop for LocalIdentity {
    fn drop(&mut self) {
        // Best effort: do not leave the Noise private key in freed memory.
        self.noise_private.iter_mut().for_each(|b| *b = 0);
    }
}

/// Why a handshake failed. Every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Socket error.
    #[error("I/O error during the handshake: {0}")]
    Io(std::io::Error),
    /// The peer hung up before the handshake finished.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// A handshake record longer than any handshake message of this
    /// protocol.
    #[error(
        "handshake record longer than {MAX_HANDSHAKE_RECORD} bytes (garbage or not a flow-runtime node)"
    )]
    RecordTooLarge,
    /// Noise refused a handshake message. A peer speaking another version
    /// of the wire format fails here too: the version is in the prologue
    /// both sides mix into the handshake.
    #[error(
        "handshake message rejected by Noise (garbage, a peer speaking another version of the wire format than this node's flow-runtime/tcp/2, or tampering): {0}"
    )]
    Noise(snow::Error),
    /// The identity proof did not decode or verify.
    #[error("{0}")]
    Proof(WireError),
    /// The identity key is not in the network map.
    #[error("the peer presented identity key {} (claiming the name `{name}`), which is not in the network map", hex::encode(.key.0))]
    UnknownIdentity {
        /// The key it presented.
        key: PublicKey,
        /// The name it claimed.
        name: String,
    },
    /// The identity key belongs to another name than the one claimed.
    #[error("the peer claims to be `{claimed}` but presented the identity key of `{owner}`")]
    NameMismatch {
        /// The claimed name.
        claimed: String,
        /// Whose key it actually is, per the network map.
        owner: String,
    },
    /// We dialled one party and another answered.
    #[error(
        "dialled `{expected}` but the node at that address is `{actual}`: check the network map's addresses"
    )]
    UnexpectedPeer {
        /// Whom we dialled.
        expected: String,
        /// Who answered (authenticated).
        actual: String,
    },
    /// The handshake took longer than the configured timeout.
    #[error("the handshake did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

fn noise_params() -> Result<snow::params::NoiseParams, snow::Error> {
    NOISE_PARAMS.parse()
}

/// Classifies a codec read error: oversized records are reported as such.
pub(crate) fn is_oversized(error: &std::io::Error) -> bool {
    RecordTooLarge::is_cause_of(error)
}

async fn read_record<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RecordCodec>,
) -> Result<bytes::BytesMut, HandshakeError> {
    match framed.next().await {
        None => Err(HandshakeError::Closed),
        Some(Ok(record)) => Ok(record),
        Some(Err(e)) if is_oversized(&e) => Err(HandshakeError::RecordTooLarge),
        Some(Err(e)) => Err(HandshakeError::Io(e)),
    }
}

/// Decodes and verifies the peer's proof, then looks the identity up.
fn check_peer(
    payload: &[u8],
    remote_static: Option<&[u8]>,
    map: &NetworkMap,
) -> Result<PeerEntry, HandshakeError> {
    let proof = IdentityProof::decode(payload).map_err(HandshakeError::Proof)?;
    // XX always transmits the static key before the proof's message ends;
    // a missing one can only mean a broken peer, so treat it as a bad proof.
    let remote_static = remote_static.ok_or(HandshakeError::Proof(WireError::BadSignature(
        proof.identity,
    )))?;
    proof.verify(remote_static).map_err(HandshakeError::Proof)?;
    match map.by_key(&proof.identity) {
        Some(entry) if entry.name == proof.name => Ok(entry.clone()),
        Some(entry) => Err(HandshakeError::NameMismatch {
            claimed: proof.name,
            owner: entry.name.clone(),
        }),
        None => Err(HandshakeError::UnknownIdentity {
            key: proof.identity,
            name: proof.name,
        }),
    }
}

/// Runs the dialer's side. On success the connection is encrypted and the
/// peer is `expected`, authenticated.
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RecordCodec>,
    local: &LocalIdentity,
    map: &NetworkMap,
    expected: &PeerEntry,
) -> Result<snow::TransportState, HandshakeError> {
    let mut noise = snow::Builder::new(noise_params().map_err(HandshakeError::Noise)?)
        .prologue(PROLOGUE)
        .and_then(|b| b.local_private_key(&local.noise_private))
        .and_then(|b| b.build_initiator())
        .map_err(HandshakeError::Noise)?;
    // Small buffers: nothing large is allocated for a peer that has not
    // authenticated yet.
    let mut buf = vec![0u8; MAX_HANDSHAKE_RECORD];
    let mut payload = vec![0u8; MAX_HANDSHAKE_RECORD];

    let n = noise
        .write_message(&[], &mut buf)
        .map_err(HandshakeError::Noise)?;
    send(framed, &buf[..n]).await?;

    let msg2 = read_record(framed).await?;
    let p = noise
        .read_message(&msg2, &mut payload)
        .map_err(HandshakeError::Noise)?;
    let peer = check_peer(&payload[..p], noise.get_remote_static(), map)?;
    if peer.key != expected.key {
        return Err(HandshakeError::UnexpectedPeer {
            expected: expected.name.clone(),
            actual: peer.name,
        });
    }

    let n = noise
        .write_message(&local.proof, &mut buf)
        .map_err(HandshakeError::Noise)?;
    send(framed, &buf[..n]).await?;
    noise.into_transport_mode().map_err(HandshakeError::Noise)
}

/// Runs the listener's side. On success the connection is encrypted and
/// the returned entry is the authenticated peer.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RecordCodec>,
    local: &LocalIdentity,
    map: &NetworkMap,
) -> Result<(snow::TransportState, PeerEntry), HandshakeError> {
    let mut noise = snow::Builder::new(noise_params().map_err(HandshakeError::Noise)?)
        .prologue(PROLOGUE)
        .and_then(|b| b.local_private_key(&local.noise_private))
        .and_then(|b| b.build_responder())
        .map_err(HandshakeError::Noise)?;
    // Small buffers: nothing large is allocated for a peer that has not
    // authenticated yet.
    let mut buf = vec![0u8; MAX_HANDSHAKE_RECORD];
    let mut payload = vec![0u8; MAX_HANDSHAKE_RECORD];

    let msg1 = read_record(framed).await?;
    noise
        .read_message(&msg1, &mut payload)
        .map_err(HandshakeError::Noise)?;

    let n = noise
        .write_message(&local.proof, &mut buf)
        .map_err(HandshakeError::Noise)?;
    send(framed, &buf[..n]).await?;

    let msg3 = read_record(framed).await?;
    let p = noise
        .read_message(&msg3, &mut payload)
        .map_err(HandshakeError::Noise)?;
    let peer = check_peer(&payload[..p], noise.get_remote_static(), map)?;
    let transport = noise.into_transport_mode().map_err(HandshakeError::Noise)?;
    Ok((transport, peer))
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RecordCodec>,
    bytes: &[u8],
) -> Result<(), HandshakeError> {
    framed
        .send(Bytes::copy_from_slice(bytes))
        .await
        .map_err(HandshakeError::Io)
}

/// The record codec: 4-byte big-endian length, at most `max_record` bytes,
/// buffering only what has arrived (see [`RecordCodec`]).
pub fn codec(max_record: usize) -> RecordCodec {
    RecordCodec::new(max_record)
}
