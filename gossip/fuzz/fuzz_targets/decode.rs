//! The wire decoder never panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_gossip::message::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode(data) {
        // postcard is canonical for what it decodes, except that varints may be over-long;
        // decoding our own encoding must give the same message back.
        let bytes = encode(&envelope);
        assert_eq!(decode(&bytes).as_ref(), Ok(&envelope));
    }
});
