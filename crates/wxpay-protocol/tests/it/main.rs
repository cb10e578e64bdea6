//! Integration tests of wxpay-protocol: known-answer vectors, hostile XML, properties, and
//! every typed call and notification end to end through its wire form.

mod calls;
mod constant_time;
mod fuzz_checks;
mod golden;
mod golden_index;
mod hostile_xml;
mod notifications;
mod properties;
mod support;
mod v3;
mod vectors;
