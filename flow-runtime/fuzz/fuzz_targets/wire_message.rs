//! Feeds arbitrary bytes to the node's session-message decoder: what a
//! frame becomes after it decrypted. Nothing may panic; whatever decodes
//! must re-encode and decode to the same message.
#![no_main]

use flow_runtime::engine::WireMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = WireMessage::decode(data) {
        let bytes = message.encode().expect("a decoded message re-encodes");
        assert_eq!(WireMessage::decode(&bytes).ok(), Some(message));
    }
});
