//! The `ClbBackendBinding` resource and the names the operator shares with the cluster; types only, no I/O.

mod v1alpha1;

pub use v1alpha1::*;

/// API group of every resource this operator defines.
pub const GROUP: &str = "clb.tke.dev";
/// Name of the operator as field manager, event reporter and chart.
pub const MANAGER: &str = "clb-operator";
/// Finalizer that keeps a binding until its owned backends are deregistered (or retained).
pub const FINALIZER: &str = "clb.tke.dev/deregister";
/// Node annotation naming the node's CVM instance; it wins over the label and the provider ID.
pub const INSTANCE_ID_ANNOTATION: &str = "clb.tke.dev/instance-id";
/// Node label TKE sets to the node's CVM instance ID.
pub const TKE_INSTANCE_ID_LABEL: &str = "cloud.tencent.com/node-instance-id";
/// Node annotation the operator sets (to the time, RFC 3339) once the node's CVM has been deregistered from every
/// binding that owned it, and removes when a binding takes the node back; `clb-operator wait-drained` waits for it.
pub const DEREGISTERED_AT_ANNOTATION: &str = "clb.tke.dev/deregistered-at";
/// Binding annotation asking for a binding with a problem to be retried at once: any new value (e.g. the time)
/// skips the rest of the backoff, for fixes the operator cannot see (a load balancer created meanwhile).
pub const RETRY_ANNOTATION: &str = "clb.tke.dev/retry";
/// Binding annotation that releases a deleting binding without touching the CLB.
pub const FORCE_FINALIZE_ANNOTATION: &str = "clb.tke.dev/force-finalize";
/// Node label that excludes a node from external load balancers (as in the upstream service controller).
pub const EXCLUSION_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Taint cluster-autoscaler puts on a node it is about to delete.
pub const CLUSTER_AUTOSCALER_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// Taint Karpenter puts on a node it is disrupting.
pub const KARPENTER_DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";
