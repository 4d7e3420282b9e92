//! Signed calls logged at TRACE level never reveal the SecretKey or the token.
//!
//! NB: alone in its own test binary on purpose. `tracing` caches per-callsite interest globally; a test on
//! another thread that reaches a log statement first while this test's scoped subscriber is installed caches
//! "never" for it, and the event would silently go missing here.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clb_operator::clb::{ClbClient, ClientConfig, Credentials, PollBackoff, RetryConfig, Submitted};
use clb_operator::emulator::EmulatorConfig;
use common::fixtures::{emulator_config, seed, spawn_emulator};

mod common;

const LB: &str = "lb-trace001";
const KEY: &str = "SuperSecretKeyValue0123456789abcd";
const TOKEN: &str = "SessionTokenValue9876543210zyxw";

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// At TRACE level, the logs of signed calls (client and in-process emulator, success, retry and failure, and
/// the error and client as a caller would log them) contain neither the SecretKey nor the token.
#[tokio::test]
async fn trace_logs_never_contain_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // `#[tokio::test]` runs everything on this thread, so the emulator's handlers log here too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut config = EmulatorConfig {
        credentials: Credentials::new("AKIDtrace", KEY, None),
        ..emulator_config(Duration::from_millis(20), vec![seed(LB, vec![])])
    };
    config.faults.error_rate = 0.3;
    let emu = spawn_emulator(config).await;
    let retry = RetryConfig {
        max_attempts: 10,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        jitter: true,
    };
    let config = ClientConfig { endpoint: emu.endpoint(), retry, ..ClientConfig::default() };
    let client = ClbClient::new(config, Credentials::new("AKIDtrace", KEY, Some(TOKEN.into()))).unwrap();
    for outcome in client.register(LB, &[("ins-trace".to_owned(), 10)]).await {
        let Ok(Submitted::Task { request_id }) = outcome.result else { panic!("{:?}", outcome.result) };
        client.wait_task(request_id, &PollBackoff::default(), Duration::from_secs(10)).await.unwrap();
    }
    client.describe_backends(LB).await.unwrap();
    let wrong = client.with_credentials(Credentials::new("AKIDtrace", "wrong", Some(TOKEN.into())));
    let err = wrong.describe_backends(LB).await.unwrap_err();
    tracing::info!(error = %err, debug = ?err, client = ?client, "Error as a caller would log it");
    emu.shutdown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in
        ["Sending CLB request", "CLB request parameters", "ins-trace", "CLB emulator answered", "AKIDtrace"]
    {
        assert!(logs.contains(expected), "{expected:?} missing from the logs:\n{logs}");
    }
    assert!(!logs.contains(KEY), "secret key leaked:\n{logs}");
    assert!(!logs.contains(TOKEN), "token leaked:\n{logs}");
}
