//! A binding with a problem backs off instead of calling the CLB about once a second, and a fix is acted on at
//! once, without waiting out the backoff: against the real test control plane and the emulator.

mod common;

use std::time::{Duration, Instant};

use clb_operator::{api::ClbBackendBinding, emulator::EmulatorHandle};
use common::{TestNs, eventually, scenario::*};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// How long the calls are counted, and the most that may be made in that time: 2 s doubling gives 4 or 5.
const WINDOW: Duration = Duration::from_secs(20);
const MOST_CALLS: usize = 6;
/// How soon after the fix the binding must be Ready.
const FIXED_WITHIN: Duration = Duration::from_secs(5);

async fn degraded_with(t: &TestNs, name: &str, reason: &str) {
    eventually(WAIT, &format!("{name} Degraded {reason} ({})", t.logs_hint()), || async {
        let s = status(t, name).await;
        (condition(&s, "Degraded") == Some(("True".into(), reason.into()))).then_some(())
    })
    .await;
}

/// Counts the emulator's calls over [`WINDOW`] while the binding stays Degraded with `reason`.
async fn calls_while_degraded(t: &TestNs, emu: &EmulatorHandle, name: &str, reason: &str) -> usize {
    let before = emu.state().calls.len();
    tokio::time::sleep(WINDOW).await;
    let s = status(t, name).await;
    assert_eq!(condition(&s, "Degraded"), Some(("True".into(), reason.into())), "still Degraded");
    emu.state().calls.len() - before
}

async fn ready_within(t: &TestNs, name: &str, fixed: Instant) {
    eventually(FIXED_WITHIN, &format!("{name} Ready after the fix ({})", t.logs_hint()), || async {
        is_ready(&status(t, name).await).then_some(())
    })
    .await;
    println!("{name}: Ready {:?} after the fix", fixed.elapsed());
}

/// A load balancer that does not exist: at most 6 calls in 20 s while `Degraded=True LoadBalancerNotFound`;
/// once it exists and a retry is asked for (the operator cannot see a load balancer being created), Ready
/// within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_load_balancer_backs_off() {
    let (t, emu) = setup("backoff-lb").await;
    let _nodes = nodes(&t, &token_suffix(), 1).await;
    let _op = start_operator(&t, &emu);
    binding(&t, "lost", "lb-doesnotexist", false, json!({})).await;
    degraded_with(&t, "lost", "LoadBalancerNotFound").await;
    let calls = calls_while_degraded(&t, &emu, "lost", "LoadBalancerNotFound").await;
    println!("LoadBalancerNotFound: {calls} CLB calls in {WINDOW:?}");
    assert!(calls <= MOST_CALLS, "{calls} CLB calls in {WINDOW:?}: the backoff does not grow");
    assert!(calls >= 1, "the binding was not retried at all");

    assert!(emu.add_load_balancer("lb-doesnotexist"));
    let fixed = Instant::now();
    let retry = json!({"metadata": {"annotations": {"clb.tke.dev/retry": "1"}}});
    t.api::<ClbBackendBinding>().patch("lost", &PatchParams::default(), &Patch::Merge(&retry)).await.unwrap();
    ready_within(&t, "lost", fixed).await;
}

/// Credentials the CLB refuses: at most 6 calls in 20 s while `Degraded=True AuthFailed`; correcting the Secret
/// makes the binding Ready within 5 s (the Secret's change wakes it, and a new Secret version retries at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_back_off_until_the_secret_is_fixed() {
    let (t, emu) = setup("backoff-auth").await;
    let c = emu.credentials();
    t.credentials_secret("wrong-credentials", c.secret_id(), "not-the-key").await;
    let _nodes = nodes(&t, &token_suffix(), 1).await;
    let _op = start_operator(&t, &emu);
    binding(&t, "refused", LB, false, json!({"credentialsSecretRef": {"name": "wrong-credentials"}})).await;
    degraded_with(&t, "refused", "AuthFailed").await;
    let calls = calls_while_degraded(&t, &emu, "refused", "AuthFailed").await;
    println!("AuthFailed: {calls} CLB calls in {WINDOW:?}");
    assert!(calls <= MOST_CALLS, "{calls} CLB calls in {WINDOW:?}: the backoff does not grow");

    let fix = json!({"stringData": {"secretKey": c.secret_key()}});
    let fixed = Instant::now();
    t.api::<Secret>().patch("wrong-credentials", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    ready_within(&t, "refused", fixed).await;
}

/// An invalid spec is not looked at again and again: fixing it (a new generation) is acted on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_spec_is_acted_on_at_once() {
    let (t, emu) = setup("backoff-spec").await;
    let nodes = nodes(&t, &token_suffix(), 2).await;
    let _op = start_operator(&t, &emu);
    let bad = json!({"targets": {"nodeSelector": {"matchExpressions": [
        {"key": "clb-test", "operator": "Sometimes"}]}}});
    binding(&t, "spec", LB, false, bad).await;
    degraded_with(&t, "spec", "InvalidSpec").await;
    // Let the backoff grow past what the fix may take.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let good = json!({"spec": {"targets": {"nodeSelector": {"matchExpressions": null, "matchLabels": {"clb-test": t.ns}}}}});
    let fixed = Instant::now();
    t.api::<ClbBackendBinding>().patch("spec", &PatchParams::default(), &Patch::Merge(&good)).await.unwrap();
    ready_within(&t, "spec", fixed).await;
    assert_eq!(registered(&status(&t, "spec").await), ids(&nodes));
}
