//! `shoal-demo-http`: see the library ([`shoal_demo::run`]).

fn main() {
    shoal_demo::run(std::env::args().skip(1).collect())
}
