//! The TCP transport: flows between separate processes and machines. It
//! implements [`Transport`](crate::transport::Transport) and is the
//! default transport of the node runner.
//!
//! * **Framing**: length-delimited records (tokio-util), with a maximum
//!   size checked before a record is read; frames queued together for a
//!   peer are packed into one record (one encryption, one write), see
//!   [`records`].
//! * **Security**: the Noise protocol (`Noise_XX_25519_ChaChaPoly_BLAKE2s`,
//!   via the `snow` crate) encrypts and authenticates every connection. Each
//!   node signs its Noise static key with its ed25519 identity key; the
//!   other side accepts the connection only if the signature verifies and
//!   the identity (with the name it claims) is in the [`NetworkMap`]. No
//!   cryptography is home-made: Noise does the channel, ed25519 the binding
//!   (the same construction libp2p uses).
//! * **Reliability**: one sending connection per peer, dialled on demand,
//!   re-dialled with exponential backoff; frames queued for a peer survive
//!   reconnects. Exactly-once processing is the node's job (sequence
//!   numbers, acks, a durable outbox re-sent after reconnect or restart);
//!   the transport only promises in-order delivery per connection and the
//!   authenticated sender of every frame.
//! * **Bad input** (garbage, oversized or undecryptable records, unknown or
//!   impostor peers, replays) closes that one connection with a `WARN` log
//!   line; every other connection carries on.
//!
//! Why Noise rather than TLS: identities here are bare ed25519 keys listed
//! in a network map, not certificates; Noise XX authenticates raw keys
//! directly, while rustls would need self-signed certificates and a custom
//! verifier to get the same effect.
//!
//! See `docs/operations.md` for configuring and running nodes.

mod handshake;
mod links;
mod network_map;
pub mod records;

pub use ed25519_dalek::SigningKey;
pub use handshake::{HandshakeError, codec};
pub use links::{Direction, LinkEvent, TcpConfig, TcpTransport, TransportError};
pub use network_map::{NetworkMap, NetworkMapError, PeerEntry, parse_public_key};
// Defined with the transport trait (every transport shares them); re-exported
// here where they were first introduced.
pub use crate::transport::{Incoming, SendError};
