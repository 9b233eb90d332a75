//! A whole node receiving arbitrary messages (split from the input on 0xFF 0xFE markers) never
//! panics, whatever they are: garbage, valid envelopes with hostile contents, fragments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use shoal_gossip::{Config, Identity, Instant, Node, NodeId, Now};

fuzz_target!(|data: &[u8]| {
    let me = Identity {
        id: NodeId([7; 32]),
        name: "fuzz".into(),
        addr: "127.0.0.1:7946".into(),
    };
    let now = |ms: u64| Now::new(Instant(ms * 1000), 1_767_225_600_000 + ms);
    let mut node = Node::new(Config::default(), me, ChaCha8Rng::seed_from_u64(1), now(0));
    let mut t = 0;
    for message in data.split(|&b| b == 0xFE) {
        t += 37;
        node.handle_message("10.0.0.1:7946", message, now(t));
        node.handle_timeout(now(t));
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
    }
});
