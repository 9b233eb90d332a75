//! Writes real protocol messages (join, bulk sync, probes, gossip, anti-entropy, fragments) into
//! a directory, as a seed corpus for the fuzz targets in `gossip/fuzz`:
//!
//!     cargo run -p shoal-gossip --example fuzz_corpus -- gossip/fuzz/corpus/decode

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use shoal_gossip::{Config, Identity, Instant, Node, NodeId, Now, ObjectKey};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gossip/fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir)?;
    let now = |ms: u64| Now::new(Instant(ms * 1000), 1_767_225_600_000 + ms);
    let mut nodes: BTreeMap<String, Node<ChaCha8Rng>> = BTreeMap::new();
    for i in 0..4u8 {
        let addr = format!("10.0.0.{i}:7946");
        let me = Identity {
            id: NodeId([i + 1; 32]),
            name: format!("n{i}"),
            addr: addr.clone(),
        };
        nodes.insert(
            addr,
            Node::new(
                Config::default(),
                me,
                ChaCha8Rng::seed_from_u64(i as u64),
                now(0),
            ),
        );
    }
    for (i, node) in nodes.values_mut().enumerate().skip(1) {
        node.join(vec!["10.0.0.0:7946".into()], now(i as u64));
    }
    let mut written = 0;
    let mut t = 0;
    while t < 20_000 {
        t += 10;
        if t == 5_000 {
            let node = nodes.get_mut("10.0.0.1:7946").expect("node");
            let key = ObjectKey {
                kind: "deployment".into(),
                namespace: "default".into(),
                name: "web".into(),
            };
            node.write_object(key.clone(), Some(vec![b'x'; 3000]), now(t))
                .expect("the clocks agree");
            node.write_object(key, None, now(t + 1))
                .expect("the clocks agree");
        }
        let mut in_flight = Vec::new();
        for (addr, node) in nodes.iter_mut() {
            node.handle_timeout(now(t));
            while let Some(transmit) = node.poll_transmit() {
                in_flight.push((addr.clone(), transmit));
            }
            while node.poll_event().is_some() {}
        }
        for (from, transmit) in in_flight {
            if written < 400 && (t < 3_000 || t % 97 == 0) {
                std::fs::write(format!("{dir}/msg-{written:04}"), &transmit.bytes)?;
                written += 1;
            }
            if let Some(node) = nodes.get_mut(&transmit.addr) {
                node.handle_message(&from, &transmit.bytes, now(t));
            }
        }
    }
    println!("wrote {written} messages to {dir}");
    Ok(())
}
