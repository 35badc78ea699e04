//! Property tests for the TCP decoders: random bytes never panic them, and
//! sealed frames of any size round-trip. (The cargo-fuzz targets in
//! `flow-runtime/fuzz` explore the same decoders coverage-guided.)

use bytes::BytesMut;
use flow_runtime::engine::WireMessage;
use flow_runtime::tcp::codec;
use flow_runtime::tcp::records::{
    FRAME_PREFIX, IdentityProof, NOISE_MAX_MESSAGE, PACK_LIMIT, frames, in_memory_transport_pair,
    open_frame, open_record, push_frame, seal_frame, seal_into, sealed_len,
};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_records_never_panic_and_never_decrypt(
        head in proptest::collection::vec(any::<u8>(), 0..300),
        filler in any::<u8>(),
        extra in 0usize..200_000,
    ) {
        // Small arbitrary records, and long ones spanning several Noise
        // messages (an arbitrary head padded with one repeated byte).
        let (_, mut receiver) = in_memory_transport_pair().unwrap();
        prop_assert!(open_frame(&mut receiver, &head, 1 << 20).is_err());
        let mut long = head.clone();
        long.resize(head.len() + extra, filler);
        prop_assert!(open_frame(&mut receiver, &long, 1 << 20).is_err());
    }

    #[test]
    fn random_streams_never_panic_the_record_codec(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_, mut receiver) = in_memory_transport_pair().unwrap();
        for max in [NOISE_MAX_MESSAGE, sealed_len(1 << 20)] {
            let mut codec = codec(max);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(record)) = codec.decode(&mut buf) {
                prop_assert!(record.len() <= max);
                prop_assert!(open_frame(&mut receiver, &record, 1 << 20).is_err());
            }
        }
    }

    #[test]
    fn random_handshake_payloads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(proof) = IdentityProof::decode(&data) {
            prop_assert!(proof.verify(&[7u8; 32]).is_err());
        }
    }

    #[test]
    fn random_session_messages_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = WireMessage::decode(&data) {
            let again = WireMessage::decode(&message.encode().unwrap()).unwrap();
            prop_assert_eq!(again, message);
        }
    }

    #[test]
    fn frames_round_trip_whatever_their_size(len in 0usize..300_000, byte in any::<u8>()) {
        let (mut sender, mut receiver) = in_memory_transport_pair().unwrap();
        let frame = vec![byte; len];
        let record = seal_frame(&mut sender, &frame).unwrap();
        prop_assert_eq!(record.len(), sealed_len(FRAME_PREFIX + len));
        prop_assert_eq!(open_frame(&mut receiver, &record, len).unwrap(), frame);
    }

    #[test]
    fn packed_frames_round_trip_in_order(lens in proptest::collection::vec(0usize..3000, 1..40)) {
        let (mut sender, mut receiver) = in_memory_transport_pair().unwrap();
        let sent: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, len)| vec![i as u8; *len]).collect();
        let mut plain = Vec::new();
        for frame in &sent {
            push_frame(&mut plain, frame);
        }
        let mut wire = BytesMut::new();
        seal_into(&mut sender, &plain, &mut wire).unwrap();
        prop_assert_eq!(wire.len(), sealed_len(plain.len()));
        let mut opened = Vec::new();
        open_record(&mut receiver, &wire, PACK_LIMIT.max(plain.len()), &mut opened).unwrap();
        let got: Vec<Vec<u8>> = frames(&opened, 3000).map(|f| f.unwrap().to_vec()).collect();
        prop_assert_eq!(got, sent);
    }

    #[test]
    fn flipping_any_bit_of_a_record_is_detected(len in 0usize..2000, bit in any::<usize>()) {
        let (mut sender, mut receiver) = in_memory_transport_pair().unwrap();
        let mut record = seal_frame(&mut sender, &vec![0x42; len]).unwrap();
        let bit = bit % (record.len() * 8);
        record[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(open_frame(&mut receiver, &record, 1 << 20).is_err());
    }
}
