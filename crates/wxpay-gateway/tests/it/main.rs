//! The gateway's integration tests: the store contract on both engines, and the gateway
//! end to end with the simulator in process, each test on its own database.

mod architecture;
mod concurrency;
mod console;
mod edge_model;
mod flow;
mod fuzz_bodies;
mod golden;
mod hardening;
mod jobs;
mod model;
mod reconcile;
mod reference;
mod refunds;
mod secret_scan;
mod store;
mod support;
mod v3;
