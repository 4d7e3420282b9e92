//! clb-operator: keeps Tencent Cloud CLB backends in step with a cluster's pods and nodes, and makes node drains
//! safe by deregistering a CVM before its node goes away.

pub mod api;
pub mod clb;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod emulator;
pub mod kube_requests;
pub mod metrics;
pub mod telemetry;
