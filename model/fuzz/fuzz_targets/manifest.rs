//! The manifest parser never panics on any input, and whatever it accepts survives the stored
//! form: `from_stored(to_stored(r)) == r`, and applying it again over its stored bytes is
//! `unchanged`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_model::{Outcome, Resource, apply_outcome, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(resources) = parse("fuzz.yaml", data) else {
        return;
    };
    for r in resources {
        let stored = r.to_stored();
        let back = Resource::from_stored(&stored).expect("a parsed object's stored form decodes");
        assert_eq!(back, r);
        assert_eq!(apply_outcome(Some(&stored), &r), Outcome::Unchanged);
        // The stored JSON is a manifest too, and means the same.
        assert_eq!(
            parse("stored.json", &stored).expect("stored form parses"),
            [r]
        );
    }
});
