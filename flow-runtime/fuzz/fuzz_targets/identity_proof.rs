//! Feeds arbitrary bytes to the handshake payload decoder and verifier.
#![no_main]

use flow_runtime::tcp::records::IdentityProof;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = IdentityProof::decode(data) {
        // The fuzzer cannot forge an ed25519 signature over this key.
        assert!(proof.verify(&[7u8; 32]).is_err(), "forged proof verified");
        // Whatever decodes re-encodes to something that decodes the same.
        let again = IdentityProof::decode(&proof.encode());
        assert_eq!(again.ok(), Some(proof));
    }
});
