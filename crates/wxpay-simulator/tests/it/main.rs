//! The simulator driven only through `wxpay-protocol`'s client side and plain HTTP, as a
//! merchant's code would drive WeChat Pay.

mod api;
mod bill;
mod faults;
mod notifications;
mod refunds;
mod sns;
mod support;
mod tls;
mod v3;
