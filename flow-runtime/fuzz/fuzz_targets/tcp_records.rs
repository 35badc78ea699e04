//! Feeds arbitrary bytes to the receive path of an established connection:
//! the length-delimited record decoder, then frame decryption. Nothing may
//! panic, allocate beyond the limits, or decrypt (the fuzzer cannot forge a
//! Poly1305 tag; a decrypted frame would be a finding).
#![no_main]

use bytes::BytesMut;
use flow_runtime::tcp::codec;
use flow_runtime::tcp::records::{NOISE_MAX_MESSAGE, in_memory_transport_pair, open_frame, sealed_len};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok((_, mut receiver)) = in_memory_transport_pair() else {
        return;
    };
    // The handshake-phase codec, then the established-phase one.
    let mut handshake_codec = codec(NOISE_MAX_MESSAGE);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_record)) = handshake_codec.decode(&mut buf) {}

    let mut frame_codec = codec(sealed_len(MAX_FRAME));
    let mut buf = BytesMut::from(data);
    while let Ok(Some(record)) = frame_codec.decode(&mut buf) {
        if open_frame(&mut receiver, &record, MAX_FRAME).is_ok() {
            panic!("forged record decrypted");
        }
    }
});
