//! The CRD: the committed YAML equals what the code generates, and the real API server serves it with field
//! documentation and useful printer columns.

mod common;

use clb_operator::api::ClbBackendBinding;
use common::{TestNs, kubectl};
use kube::api::PostParams;

/// `crds/` holds exactly what `clb-operator crd` prints (regenerate with
/// `cargo run -- crd > crds/clbbackendbindings.yaml`).
#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = clb_operator::crd::yaml().unwrap();
    let committed = std::fs::read_to_string(common::repo().join("crds/clbbackendbindings.yaml")).unwrap();
    assert!(
        generated == committed,
        "crds/clbbackendbindings.yaml is stale: run `cargo run -- crd > crds/clbbackendbindings.yaml`"
    );
}

/// `kubectl explain` shows the field documentation, and `kubectl get cbb` the printer columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explains_fields_and_prints_columns() {
    let t = TestNs::new("kubectl").await;
    let spec = kubectl(&["explain", "cbb.spec"]).await;
    for needle in ["loadBalancerId", "Immutable", "credentialsSecretRef", "deletionPolicy", "weight"] {
        assert!(spec.contains(needle), "explain cbb.spec lacks {needle}:\n{spec}");
    }
    let drain = kubectl(&["explain", "cbb.spec.drain.onCordon"]).await;
    assert!(drain.contains("cordoned"), "{drain}");
    let status = kubectl(&["explain", "clbbackendbinding.status.backends.state"]).await;
    assert!(status.contains("Registering, Registered or Deregistering"), "{status}");

    let b: ClbBackendBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "clb.tke.dev/v1alpha1", "kind": "ClbBackendBinding", "metadata": {"name": "web"},
        "spec": {"loadBalancerId": "lb-abcd1234", "region": "gz", "targets": {"nodeSelector": {}}},
    }))
    .unwrap();
    t.api::<ClbBackendBinding>().create(&PostParams::default(), &b).await.unwrap();
    let table = kubectl(&["get", "cbb", "-n", &t.ns]).await;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "LB", "REGION", "DESIRED", "REGISTERED", "TASKS", "READY", "AGE"]);
    assert!(table.contains("lb-abcd1234"), "{table}");
    let by_category = kubectl(&["get", "clb", "-n", &t.ns, "-o", "name"]).await;
    assert_eq!(by_category.trim(), "clbbackendbinding.clb.tke.dev/web");
}
