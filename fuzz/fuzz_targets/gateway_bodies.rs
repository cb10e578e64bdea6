//! The gateway's request bodies on arbitrary bytes, through the whole HTTP edge; the check
//! is shared with the regression test in `crates/wxpay-gateway/tests/it/fuzz_bodies.rs`.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/wxpay-gateway/tests/it/fuzz_bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bodies::BodyFuzzer::get().check(data);
});
