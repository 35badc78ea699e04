//! The bytes on the wire, below the connection logic: Noise parameters,
//! the identity proof carried in the handshake, and how one application
//! frame is encrypted into one length-delimited record.
//!
//! A connection is a sequence of records, each a 4-byte big-endian length
//! followed by that many bytes (tokio-util's `LengthDelimitedCodec`).
//!
//! * Records 1-3 are the Noise XX handshake messages. Messages 2 and 3
//!   carry, encrypted, an [`IdentityProof`]: the sender's ed25519 identity
//!   key and its signature over the sender's Noise static key.
//! * Every later record carries one or more application frames. Its
//!   plaintext is the frames one after the other, each preceded by its
//!   length (4 bytes, big-endian); the plaintext is cut into chunks of at
//!   most [`MAX_CHUNK_PLAINTEXT`] bytes, each encrypted as one Noise
//!   transport message (ChaChaPoly, 16-byte tag). All chunks but the last
//!   are exactly 65,535 bytes on the wire, so the record length alone says
//!   where each chunk ends.
//!
//! Why several frames per record: a sender with more than one frame queued
//! for a peer packs them into records of up to [`PACK_LIMIT`] bytes (one
//! Noise message), so a burst of small frames (a thousand flows stepping
//! in one group commit) costs one encryption, one decryption and one
//! record per 64 KiB instead of one per frame, and the records of a burst
//! leave in one write. A frame larger than that travels alone in its own
//! record. Version 1 of this format (one frame per record, no length
//! prefix) is refused at the handshake: the version is in the
//! [`PROLOGUE`].
//!
//! Noise transport messages use an implicit nonce that increases by one per
//! message, so a record that is replayed, dropped or reordered within a
//! connection fails to decrypt, and a record from an earlier connection
//! fails under the new connection's keys.
//!
//! Everything here is pure (no I/O) so the fuzz target and property tests
//! can drive the decoders directly.

use crate::PublicKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The Noise protocol: XX (both static keys transmitted, encrypted),
/// X25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Mixed into the Noise handshake hash: two nodes speaking different
/// versions of this wire format fail the handshake instead of
/// misinterpreting each other. Version 2 packs several frames per record.
pub const PROLOGUE: &[u8] = b"flow-runtime/tcp/2";

/// Prefix of the message an identity key signs to vouch for a Noise static
/// key, so the signature cannot be mistaken for one made for any other
/// purpose (ledger transactions are signed with the same key kind).
pub const PROOF_DOMAIN: &[u8] = b"flow-runtime/tcp/1 noise static key:";

/// The largest Noise message (the Noise specification's limit).
pub const NOISE_MAX_MESSAGE: usize = 65_535;

/// The ChaCha20-Poly1305 authentication tag added to every Noise message.
pub const TAG_LEN: usize = 16;

/// The largest plaintext chunk of a frame: one Noise message minus its tag.
pub const MAX_CHUNK_PLAINTEXT: usize = NOISE_MAX_MESSAGE - TAG_LEN;

/// The length prefix of each frame inside a record's plaintext.
pub const FRAME_PREFIX: usize = 4;

/// Frames queued together are packed into one record while its plaintext
/// stays within this many bytes: one Noise message.
pub const PACK_LIMIT: usize = MAX_CHUNK_PLAINTEXT;

/// The largest record plaintext a peer may send when no frame is longer
/// than `max_frame`: one frame of that size with its prefix, or a pack.
pub fn max_record_plain(max_frame: usize) -> usize {
    max_frame.saturating_add(FRAME_PREFIX).max(PACK_LIMIT)
}

/// The largest handshake record accepted or sent. Handshake messages are
/// small (an ephemeral key, a static key, an identity proof), so a stranger
/// who has not yet authenticated can make the node hold at most this much
/// per connection; a record announcing more closes the connection before
/// a byte of it is buffered.
pub const MAX_HANDSHAKE_RECORD: usize = 2048;

/// The largest identity proof accepted in a handshake: what fits in a
/// handshake record beside the ephemeral key (32 bytes), the encrypted
/// static key (48) and the payload's tag (16). Names in the network map
/// are limited so that every member's proof fits.
pub const MAX_PROOF_LEN: usize = MAX_HANDSHAKE_RECORD - 32 - 48 - TAG_LEN;

/// The longest legal name a party may have: its identity proof (name,
/// 32-byte key, 64-byte signature, MessagePack overhead) must fit in
/// [`MAX_PROOF_LEN`].
pub const MAX_NAME_LEN: usize = 1024;

/// The length-delimited record codec: a 4-byte big-endian length, then
/// that many bytes.
///
/// tokio-util's `LengthDelimitedCodec` reserves the whole announced length
/// as soon as it reads a header, so a peer announcing a 16 MiB record and
/// sending nothing more makes the node reserve 16 MiB. This codec checks
/// the length against the maximum and then lets the read buffer grow only
/// as bytes actually arrive: what a peer can make the node hold is what it
/// has sent, never what it has announced.
#[derive(Debug, Clone)]
pub struct RecordCodec {
    max: usize,
}

/// A record announced longer than the codec's maximum. It arrives inside
/// the `std::io::Error` the codec returns (see [`RecordTooLarge::is_cause_of`]).
#[derive(Debug, thiserror::Error)]
#[error("record of {len} bytes announced, more than the maximum of {max}")]
pub struct RecordTooLarge {
    /// The announced length.
    pub len: usize,
    /// The codec's maximum.
    pub max: usize,
}

impl RecordTooLarge {
    /// Whether `error` (from [`RecordCodec`]) is an oversized record.
    pub fn is_cause_of(error: &std::io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.is::<RecordTooLarge>())
    }
}

impl RecordCodec {
    /// A codec for records of at most `max` bytes (both directions).
    pub fn new(max: usize) -> Self {
        RecordCodec { max }
    }

    /// The largest record accepted or sent.
    pub fn max_record(&self) -> usize {
        self.max
    }

    /// Changes the maximum (after the handshake, to the frame limit).
    pub fn set_max_record(&mut self, max: usize) {
        self.max = max;
    }

    fn too_large(&self, len: usize) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            RecordTooLarge { len, max: self.max },
        )
    }
}

const LENGTH_PREFIX: usize = 4;

impl tokio_util::codec::Decoder for RecordCodec {
    type Item = bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        let Some(head) = src.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(head);
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        if len > self.max {
            return Err(self.too_large(len));
        }
        if src.len() - LENGTH_PREFIX < len {
            // Deliberately no `reserve(len)`: the buffer grows with what
            // arrives (Framed reads into whatever spare room it has).
            return Ok(None);
        }
        let _ = src.split_to(LENGTH_PREFIX);
        Ok(Some(src.split_to(len)))
    }
}

impl tokio_util::codec::Encoder<bytes::Bytes> for RecordCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut bytes::BytesMut) -> Result<(), Self::Error> {
        let len = item.len();
        let prefix = u32::try_from(len)
            .ok()
            .filter(|_| len <= self.max)
            .ok_or_else(|| self.too_large(len))?;
        dst.reserve(LENGTH_PREFIX + len);
        dst.extend_from_slice(&prefix.to_be_bytes());
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Why a record or a proof was refused. Each variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A record with no bytes, or no frame: never produced by a
    /// well-behaved peer.
    #[error("empty record")]
    EmptyRecord,
    /// The frames in a record's plaintext do not add up: a length prefix
    /// cut short or reaching past the record's end.
    #[error("malformed record: {0}")]
    MalformedRecord(&'static str),
    /// The decrypted frame would exceed the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The frame's size.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A chunk failed authentication: corrupted, forged, replayed or
    /// reordered (the Noise nonce did not match).
    #[error("record failed to decrypt (corrupted, forged, replayed or out of order): {0}")]
    Decrypt(snow::Error),
    /// Encryption failed (only if the Noise nonce space is exhausted).
    #[error("cannot encrypt: {0}")]
    Encrypt(snow::Error),
    /// The handshake payload is not a well-formed identity proof.
    #[error("malformed identity proof: {0}")]
    MalformedProof(String),
    /// The identity key in the proof is not a valid ed25519 point.
    #[error("identity key {} is not a valid ed25519 public key", hex::encode(.0.0))]
    BadIdentityKey(PublicKey),
    /// The signature does not cover this connection's Noise static key.
    #[error(
        "the signature by identity key {} does not cover the Noise static key of this connection: the peer does not hold that identity's private key",
        hex::encode(.0.0)
    )]
    BadSignature(PublicKey),
}

/// How many bytes a record plaintext of `plain_len` bytes takes on the
/// wire (without the 4-byte length prefix of the record).
pub fn sealed_len(plain_len: usize) -> usize {
    let chunks = plain_len.div_ceil(MAX_CHUNK_PLAINTEXT).max(1);
    plain_len + chunks * TAG_LEN
}

/// How many plaintext bytes a record body of `record_len` bytes holds: the
/// inverse of [`sealed_len`] (0 for a body too short to be valid, which
/// then fails to decrypt).
pub fn plain_len(record_len: usize) -> usize {
    let chunks = record_len.div_ceil(NOISE_MAX_MESSAGE);
    record_len.saturating_sub(chunks * TAG_LEN)
}

/// Encrypts a record's plaintext (`plain`: frames with their length
/// prefixes, see [`push_frame`]) and appends the record body, exactly
/// [`sealed_len`]`(plain.len())` bytes, to `out`.
pub fn seal_into(
    transport: &mut snow::TransportState,
    plain: &[u8],
    out: &mut bytes::BytesMut,
) -> Result<(), WireError> {
    let start = out.len();
    let len = sealed_len(plain.len());
    out.resize(start + len, 0);
    let body = &mut out[start..];
    let mut written = 0;
    let mut rest = plain;
    loop {
        let take = rest.len().min(MAX_CHUNK_PLAINTEXT);
        let (chunk, tail) = rest.split_at(take);
        match transport.write_message(chunk, &mut body[written..]) {
            Ok(n) => written += n,
            Err(e) => {
                out.truncate(start);
                return Err(WireError::Encrypt(e));
            }
        }
        rest = tail;
        if rest.is_empty() {
            break;
        }
    }
    debug_assert_eq!(written, len);
    Ok(())
}

/// Appends `frame` with its length prefix to a record's plaintext.
/// Frames longer than `u32::MAX` bytes do not exist here (the codec's
/// limit is far below), so the prefix saturates rather than panics.
pub fn push_frame(plain: &mut Vec<u8>, frame: &[u8]) {
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    plain.extend_from_slice(&len.to_be_bytes());
    plain.extend_from_slice(frame);
}

/// Encrypts one application frame into one record body, alone.
pub fn seal_frame(
    transport: &mut snow::TransportState,
    frame: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut plain = Vec::with_capacity(FRAME_PREFIX + frame.len());
    push_frame(&mut plain, frame);
    let mut out = bytes::BytesMut::with_capacity(sealed_len(plain.len()));
    seal_into(transport, &plain, &mut out)?;
    Ok(out.to_vec())
}

/// Decrypts one record body into `plain` (its previous contents are
/// replaced), refusing a plaintext over `max_plain` bytes before
/// decrypting anything. Read the frames with [`frames`].
pub fn open_record(
    transport: &mut snow::TransportState,
    record: &[u8],
    max_plain: usize,
    plain: &mut Vec<u8>,
) -> Result<(), WireError> {
    if record.is_empty() {
        return Err(WireError::EmptyRecord);
    }
    let len = plain_len(record.len());
    if len > max_plain {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_plain,
        });
    }
    plain.clear();
    plain.resize(len, 0);
    let mut read = 0;
    for chunk in record.chunks(NOISE_MAX_MESSAGE) {
        // A last chunk shorter than a tag makes `plain` too short only by
        // construction of `len`; snow reports it as a decrypt error.
        let n = transport
            .read_message(chunk, &mut plain[read..])
            .map_err(WireError::Decrypt)?;
        read += n;
    }
    plain.truncate(read);
    Ok(())
}

/// The frames of a decrypted record, in order, each checked against
/// `max_frame`: a record with no frame, a frame over the maximum, or a
/// prefix reaching past the end is an error (and ends the connection).
pub fn frames(plain: &[u8], max_frame: usize) -> Frames<'_> {
    Frames {
        rest: plain,
        max_frame,
        first: true,
    }
}

/// The iterator of [`frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    rest: &'a [u8],
    max_frame: usize,
    first: bool,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            let first = std::mem::replace(&mut self.first, false);
            return first.then_some(Err(WireError::EmptyRecord));
        }
        self.first = false;
        let Some((prefix, rest)) = self.rest.split_first_chunk::<FRAME_PREFIX>() else {
            self.rest = &[];
            return Some(Err(WireError::MalformedRecord(
                "a frame's length prefix is cut short",
            )));
        };
        let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
        if len > self.max_frame {
            self.rest = &[];
            return Some(Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame,
            }));
        }
        if len > rest.len() {
            self.rest = &[];
            return Some(Err(WireError::MalformedRecord(
                "a frame reaches past the record's end",
            )));
        }
        let (frame, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Ok(frame))
    }
}

/// Decrypts a record that carries exactly one frame and returns it: for
/// tests and tools that speak the protocol one frame at a time.
pub fn open_frame(
    transport: &mut snow::TransportState,
    record: &[u8],
    max_frame: usize,
) -> Result<Vec<u8>, WireError> {
    let mut plain = Vec::new();
    open_record(transport, record, max_record_plain(max_frame), &mut plain)?;
    let mut all = frames(&plain, max_frame);
    let frame = all.next().unwrap_or(Err(WireError::EmptyRecord))?.to_vec();
    match all.next() {
        None => Ok(frame),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err(WireError::MalformedRecord("more than one frame")),
    }
}

/// What a node proves about itself inside the Noise handshake: "the Noise
/// static key of this connection belongs to identity `identity`, known on
/// the network as `name`". The signature is ed25519 over
/// [`PROOF_DOMAIN`] followed by the Noise static public key.
///
/// This is the construction libp2p's Noise handshake uses; it binds the
/// encrypted channel to the long-lived identity without inventing any
/// cryptography.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityProof {
    /// The name the sender claims (checked against the network map).
    pub name: String,
    /// The sender's ed25519 identity key.
    pub identity: PublicKey,
    /// ed25519 signature, 64 bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl IdentityProof {
    /// Signs `noise_static_public` with `identity`.
    pub fn sign(name: &str, identity: &SigningKey, noise_static_public: &[u8]) -> Self {
        let signature = identity.sign(&proof_message(noise_static_public));
        IdentityProof {
            name: name.to_owned(),
            identity: PublicKey(identity.verifying_key().to_bytes()),
            signature: signature.to_bytes().to_vec(),
        }
    }

    /// MessagePack bytes for the handshake payload.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of a string, a byte string and a byte string always
        // serializes; fall back to an empty payload (which the peer
        // refuses) rather than panic if that ever changes.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Parses a handshake payload; never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_PROOF_LEN {
            return Err(WireError::MalformedProof(format!(
                "{} bytes, more than the {MAX_PROOF_LEN} allowed",
                bytes.len()
            )));
        }
        rmp_serde::from_slice(bytes).map_err(|e| WireError::MalformedProof(e.to_string()))
    }

    /// Checks the signature against the Noise static key the handshake
    /// actually authenticated. Says nothing yet about whether the identity
    /// is welcome: that is the network map's job.
    pub fn verify(&self, noise_static_public: &[u8]) -> Result<(), WireError> {
        let key = VerifyingKey::from_bytes(&self.identity.0)
            .map_err(|_| WireError::BadIdentityKey(self.identity))?;
        let signature = Signature::from_slice(&self.signature)
            .map_err(|_| WireError::BadSignature(self.identity))?;
        key.verify_strict(&proof_message(noise_static_public), &signature)
            .map_err(|_| WireError::BadSignature(self.identity))
    }
}

fn proof_message(noise_static_public: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(PROOF_DOMAIN.len() + noise_static_public.len());
    msg.extend_from_slice(PROOF_DOMAIN);
    msg.extend_from_slice(noise_static_public);
    msg
}

/// A connected pair of Noise transport states (initiator, responder) from
/// a handshake run in memory: for tests, benchmarks and the fuzz target,
/// which need real session keys without sockets.
pub fn in_memory_transport_pair()
-> Result<(snow::TransportState, snow::TransportState), snow::Error> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse()?;
    let ik = snow::Builder::new(params.clone()).generate_keypair()?;
    let rk = snow::Builder::new(params.clone()).generate_keypair()?;
    let mut init = snow::Builder::new(params.clone())
        .prologue(PROLOGUE)?
        .local_private_key(&ik.private)?
        .build_initiator()?;
    let mut resp = snow::Builder::new(params)
        .prologue(PROLOGUE)?
        .local_private_key(&rk.private)?
        .build_responder()?;
    let mut buf = vec![0u8; NOISE_MAX_MESSAGE];
    let mut payload = vec![0u8; NOISE_MAX_MESSAGE];
    let n = init.write_message(&[], &mut buf)?;
    resp.read_message(&buf[..n], &mut payload)?;
    let n = resp.write_message(&[], &mut buf)?;
    init.read_message(&buf[..n], &mut payload)?;
    let n = init.write_message(&[], &mut buf)?;
    resp.read_message(&buf[..n], &mut payload)?;
    Ok((init.into_transport_mode()?, resp.into_transport_mode()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn frames_of_every_chunk_boundary_round_trip() {
        let (mut a, mut b) = in_memory_transport_pair().unwrap();
        for len in [
            0,
            1,
            MAX_CHUNK_PLAINTEXT - 1,
            MAX_CHUNK_PLAINTEXT,
            MAX_CHUNK_PLAINTEXT + 1,
            3 * MAX_CHUNK_PLAINTEXT,
            3_000_000,
        ] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let record = seal_frame(&mut a, &frame).unwrap();
            assert_eq!(record.len(), sealed_len(FRAME_PREFIX + len));
            assert_eq!(open_frame(&mut b, &record, 4_000_000).unwrap(), frame);
        }
    }

    #[test]
    fn replayed_and_reordered_records_fail() {
        let (mut a, mut b) = in_memory_transport_pair().unwrap();
        let r1 = seal_frame(&mut a, b"one").unwrap();
        let r2 = seal_frame(&mut a, b"two").unwrap();
        // A record from another connection does not decrypt.
        let (_, mut other) = in_memory_transport_pair().unwrap();
        assert!(matches!(
            open_frame(&mut other, &r1, 100),
            Err(WireError::Decrypt(_))
        ));
        // Reordered: the second record arrives first.
        assert!(matches!(
            open_frame(&mut b, &r2, 100),
            Err(WireError::Decrypt(_))
        ));
        assert_eq!(open_frame(&mut b, &r1, 100).unwrap(), b"one");
        // Replayed: the first record again.
        assert!(matches!(
            open_frame(&mut b, &r1, 100),
            Err(WireError::Decrypt(_))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_decrypting() {
        let (mut a, mut b) = in_memory_transport_pair().unwrap();
        let record = seal_frame(&mut a, &[7u8; 100_000]).unwrap();
        assert!(matches!(
            open_frame(&mut b, &record, 99_999),
            Err(WireError::FrameTooLarge {
                len: 100_004,
                max: 100_003
            })
        ));
        // Within a record the size of a pack, each frame is checked.
        let (mut a2, mut b2) = in_memory_transport_pair().unwrap();
        let record = seal_frame(&mut a2, &[7u8; 1000]).unwrap();
        assert!(matches!(
            open_frame(&mut b2, &record, 999),
            Err(WireError::FrameTooLarge {
                len: 1000,
                max: 999
            })
        ));
        assert!(matches!(
            open_frame(&mut b, &[], 10),
            Err(WireError::EmptyRecord)
        ));
    }

    #[test]
    fn several_frames_travel_in_one_record_and_bad_packs_are_refused() {
        let (mut a, mut b) = in_memory_transport_pair().unwrap();
        let mut plain = Vec::new();
        for frame in [&b"one"[..], b"", b"three"] {
            push_frame(&mut plain, frame);
        }
        let mut wire = bytes::BytesMut::new();
        seal_into(&mut a, &plain, &mut wire).unwrap();
        let mut opened = Vec::new();
        open_record(&mut b, &wire, PACK_LIMIT, &mut opened).unwrap();
        let got: Vec<&[u8]> = frames(&opened, 10).map(|f| f.unwrap()).collect();
        assert_eq!(got, [&b"one"[..], b"", b"three"]);

        let errors = |plain: &[u8], max: usize| frames(plain, max).filter(Result::is_err).count();
        assert_eq!(errors(&[], 10), 1, "a record with no frame");
        assert_eq!(errors(&[0, 0], 10), 1, "a prefix cut short");
        assert_eq!(errors(&[0, 0, 0, 5, 1, 2], 10), 1, "a frame past the end");
        assert_eq!(errors(&[0, 0, 0, 11], 10), 1, "a frame over the maximum");
        // After an error the iterator ends.
        assert_eq!(frames(&[0, 0, 0, 9, 1], 10).count(), 1);
    }

    #[test]
    fn proofs_bind_the_noise_key_to_the_identity() {
        let noise_key = [9u8; 32];
        let proof = IdentityProof::sign("Alice", &key(1), &noise_key);
        let decoded = IdentityProof::decode(&proof.encode()).unwrap();
        assert_eq!(decoded, proof);
        decoded.verify(&noise_key).unwrap();
        // The same proof presented with another Noise key fails.
        assert!(matches!(
            decoded.verify(&[8u8; 32]),
            Err(WireError::BadSignature(_))
        ));
        // A proof claiming another identity with a valid-looking signature fails.
        let mut forged = proof.clone();
        forged.identity = PublicKey(key(2).verifying_key().to_bytes());
        assert!(matches!(
            forged.verify(&noise_key),
            Err(WireError::BadSignature(_))
        ));
        assert!(IdentityProof::decode(b"\xc1garbage").is_err());
    }
}
