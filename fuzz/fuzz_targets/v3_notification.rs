//! The APIv3 notification envelope, its resource readers and the verifier on arbitrary
//! bytes; the checks are shared with the regression test in
//! `crates/wxpay-protocol/tests/it/fuzz_checks.rs`.
#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
#[path = "../../crates/wxpay-protocol/tests/it/fuzz_checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_v3_notification(data));
