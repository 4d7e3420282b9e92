//! Test harness: one real control plane per test run, a namespace of its own for every test, fixtures for the
//! objects the tests create, the CLB emulator, and the operator in process or as a separate process.
//!
//! Shared by every integration test binary and by the benchmark (`tests/bench/operator.rs`, through `#[path]`).
//! Each of them uses a different part, so dead-code warnings are allowed per module below, not for the whole
//! harness; the module names say what each part is for.

#[allow(dead_code)] // each binary builds only the objects it needs
pub mod fixtures;
#[allow(dead_code)] // the emulator-only binaries use none of it
mod harness;
#[allow(dead_code)] // only the tests that run the built binary use it
mod process;
#[allow(dead_code)] // only the operator scenarios use it
pub mod scenario;

#[allow(unused_imports)] // not every binary uses the control plane or the operator process
pub use harness::*;
#[allow(unused_imports)]
pub use process::*;
