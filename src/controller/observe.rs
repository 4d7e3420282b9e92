//! Reads only: what a reconcile knows before it decides - the binding's status as last written, its
//! membership from the caches, its credentials, the load balancer's backends, the clocks of recent changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{
    Api, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::{
    Context,
    error::{Error, Result},
    index::Interest,
    membership::{self, InvalidSelector, Membership},
    memory::Key,
    slim::SlimPod,
    status::{Problem, reasons},
    watch::SecretMeta,
};
use crate::{
    api::{ClbBackendBinding, ClbBackendBindingStatus, DEREGISTERED_AT_ANNOTATION, RETRY_ANNOTATION},
    clb::{
        Credentials,
        cloud::{Cloud, CloudError, LoadBalancerView, Target},
    },
};

/// How long a reconcile waits for the pod cache to list a namespace new to it before it gives up and retries.
const POD_LIST_WAIT: Duration = Duration::from_secs(30);

/// What one reconcile starts from.
pub struct Observed {
    /// The binding as cached.
    pub binding: Arc<ClbBackendBinding>,
    /// Its key.
    pub key: Key,
    /// Its namespace.
    pub namespace: String,
    /// Its status as the operator knows it (its own last write wins over a stale cache, and a failed write of
    /// requestIds over both).
    pub status: ClbBackendBindingStatus,
    /// Its status as the API server holds it, as far as the operator knows.
    pub stored: ClbBackendBindingStatus,
    /// The time the status records for this reconcile.
    pub now: Timestamp,
    /// Which instances should serve, or why that cannot be said.
    pub membership: std::result::Result<Membership, InvalidSelector>,
    /// Every node the binding looks at (selected, hosting a selected pod, or owning a backend).
    pub looked_at: BTreeSet<String>,
    /// Nodes of owned backends that still exist in the cache.
    pub existing: BTreeSet<String>,
    /// The CLB API for the binding's region and credentials, or why there is none.
    pub clb: std::result::Result<Box<dyn Cloud>, Problem>,
    /// The credentials Secret's resourceVersion, when one is used and known.
    pub secret_version: Option<String>,
}

impl Observed {
    /// What the binding depends on, for the event index.
    pub fn interest(&self) -> Interest {
        Interest::of(&self.binding.spec, &self.namespace, self.looked_at.clone())
    }

    /// Whether the binding targets pods.
    pub fn pod_targeted(&self) -> bool {
        self.binding.spec.targets.pod_selector.is_some()
    }

    /// The value of the retry annotation: setting a new one retries a binding with a problem at once.
    pub fn retry_requested(&self) -> Option<&str> {
        self.binding.annotations().get(RETRY_ANNOTATION).map(String::as_str)
    }
}

/// Observes a live binding: status, membership, credentials.
pub async fn binding(ctx: &Context, binding: Arc<ClbBackendBinding>) -> Result<Observed> {
    let namespace = binding.namespace().unwrap_or_default();
    let pods = match binding.spec.targets.pod_selector.is_some() {
        true => pods(ctx, &namespace).await?,
        false => no_pods(ctx, &namespace),
    };
    let mut seen = deleting(ctx, binding).await?;
    let nodes = ctx.caches.nodes.state();
    let (spec, now) = (&seen.binding.spec, seen.now);
    seen.membership = membership::compute(
        spec,
        &namespace,
        nodes.iter().map(|n| n.as_ref()),
        pods.iter().map(|p| p.as_ref()),
        now,
    );
    let owned_nodes: BTreeSet<String> = seen.status.backends.iter().filter_map(|b| b.node.clone()).collect();
    seen.existing = owned_nodes.iter().filter(|n| exists(&ctx.caches.nodes, n)).cloned().collect();
    seen.looked_at = seen.membership.as_ref().map(|m| m.nodes.clone()).unwrap_or_default();
    seen.looked_at.extend(owned_nodes);
    Ok(seen)
}

/// Observes a deleting binding: its status and its CLB client (its membership is empty: nothing should serve).
pub async fn deleting(ctx: &Context, binding: Arc<ClbBackendBinding>) -> Result<Observed> {
    let key = ObjectRef::from_obj(&*binding);
    let namespace = binding.namespace().unwrap_or_default();
    let (status, stored) = ctx.memory.statuses(&binding);
    let (credentials, secret_version) = credentials(ctx, &key, &binding).await?;
    let clb = credentials.map(|c| ctx.clb.for_binding(c, &binding.spec.region));
    Ok(Observed {
        binding,
        key,
        namespace,
        status,
        stored,
        now: Timestamp::now(),
        membership: Ok(Membership::default()),
        looked_at: BTreeSet::new(),
        existing: BTreeSet::new(),
        clb,
        secret_version,
    })
}

fn exists(nodes: &Store<super::slim::SlimNode>, name: &str) -> bool {
    nodes.get(&ObjectRef::new(name)).is_some()
}

/// The cached pods, once the cache holds a complete list of the namespace: a binding in a namespace new to the
/// pod cache widens its scope and waits for the new list (acting on a partial one would deregister healthy
/// pods).
async fn pods(ctx: &Context, ns: &str) -> Result<Vec<Arc<SlimPod>>> {
    let scope = &ctx.caches.pod_scope;
    let this = BTreeSet::from([ns.to_owned()]);
    let give_up = tokio::time::Instant::now() + POD_LIST_WAIT;
    loop {
        // Checked on every round: a binding in another namespace going away may compute the scope from the
        // bindings a moment before this one was there.
        if !scope.wants(ns) {
            scope.want(|| {
                let mut wanted = ctx.pod_namespaces(None);
                wanted.insert(ns.to_owned());
                wanted
            });
        }
        if scope.covered(&this, Duration::from_secs(1)).await {
            return Ok(ctx.caches.pods.state());
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(Error::PodCacheListing { namespace: ns.to_owned() });
        }
    }
}

/// For a binding that targets nodes: no pods, and if it was the last to target pods in its namespace (it was
/// changed to nodes), the pod cache lets that namespace go.
fn no_pods(ctx: &Context, ns: &str) -> Vec<Arc<SlimPod>> {
    if ctx.caches.pod_scope.wants(ns) {
        ctx.caches.pod_scope.want(|| ctx.pod_namespaces(None));
    }
    Vec::new()
}

/// The binding's credentials (or the problem that prevents them) and the Secret's version. With a Secret
/// watch, the Secret is read only when its version changed.
async fn credentials(
    ctx: &Context,
    key: &Key,
    binding: &ClbBackendBinding,
) -> Result<(std::result::Result<Credentials, Problem>, Option<String>)> {
    let ns = binding.namespace().unwrap_or_default();
    let Some(secret_ref) = &binding.spec.credentials_secret_ref else {
        let own = ctx.default_credentials.clone().ok_or_else(|| Problem {
            reason: reasons::CREDENTIALS_NOT_FOUND,
            message: "no credentialsSecretRef, and the operator has no credentials of its own \
                      (TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY)"
                .to_owned(),
        });
        return Ok((own, None));
    };
    let name = &secret_ref.name;
    let watched = ctx.caches.secrets.as_ref().and_then(|s| secret_version(s, &ns, name));
    if let Some(version) = &watched
        && let Some(known) = ctx.memory.credentials(key, name, version)
    {
        ctx.memory.read_credentials(key, name, version.clone(), known.clone());
        return Ok((Ok(known), watched));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = match secrets.get_opt(name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            let message = format!("the operator may not read Secret {ns}/{name}");
            return Ok((Err(Problem { reason: reasons::CREDENTIALS_NOT_FOUND, message }), None));
        }
        Err(e) => return Err(Error::kube("reading the credentials Secret")(e)),
    };
    let version = secret.as_ref().and_then(|s| s.resource_version());
    let credentials = credentials_from_secret(secret.as_ref(), &ns, name);
    if let (Ok(c), Some(v)) = (&credentials, &version) {
        ctx.memory.read_credentials(key, name, v.clone(), c.clone());
    }
    Ok((credentials, version))
}

fn secret_version(secrets: &Store<SecretMeta>, ns: &str, name: &str) -> Option<String> {
    secrets.get(&ObjectRef::new(name).within(ns))?.resource_version()
}

/// Reads `secretId`, `secretKey` and optional `token` from a credentials Secret; never echoes their values.
pub fn credentials_from_secret(
    secret: Option<&Secret>,
    ns: &str,
    name: &str,
) -> std::result::Result<Credentials, Problem> {
    let missing = |what: String| Problem { reason: reasons::CREDENTIALS_NOT_FOUND, message: what };
    let secret = secret.ok_or_else(|| missing(format!("Secret {ns}/{name} not found")))?;
    let value = |key: &str| -> Option<String> {
        let from_data =
            secret.data.as_ref().and_then(|d| d.get(key)).and_then(|v| String::from_utf8(v.0.clone()).ok());
        let from_string = || secret.string_data.as_ref().and_then(|d| d.get(key)).cloned();
        from_data.or_else(from_string).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    };
    let id = value("secretId").ok_or_else(|| missing(format!("Secret {ns}/{name} has no key secretId")))?;
    let key =
        value("secretKey").ok_or_else(|| missing(format!("Secret {ns}/{name} has no key secretKey")))?;
    Ok(Credentials::new(id, key, value("token")))
}

/// The targets the load balancer holds now on the listeners the binding names or owns targets on (or, with
/// none, its instances).
pub async fn load_balancer(
    cloud: &dyn Cloud,
    binding: &ClbBackendBinding,
    status: &ClbBackendBindingStatus,
) -> std::result::Result<BTreeSet<Target>, CloudError> {
    let named = binding.spec.listeners.iter().map(|l| l.listener_id.clone());
    let owned = status.backends.iter().filter_map(|b| b.listener_id.clone());
    let recorded = (status.intents.iter().flat_map(|i| &i.targets))
        .chain(status.tasks.iter().flat_map(|t| &t.targets))
        .map(|t| t.listener_id.clone());
    let listeners: BTreeSet<String> = named.chain(owned).chain(recorded).collect();
    let listeners: Vec<String> = listeners.into_iter().collect();
    cloud.targets(&binding.spec.load_balancer_id, &listeners).await
}

/// What the load balancer is, read now. `Ok(None)`: it does not exist.
pub async fn load_balancer_view(
    cloud: &dyn Cloud,
    binding: &ClbBackendBinding,
) -> std::result::Result<Option<LoadBalancerView>, Problem> {
    cloud.describe(&binding.spec.load_balancer_id).await.map_err(|e| super::act::problem_from(&e))
}

/// The NodePorts of the Services the binding's listeners name, by (Service, port); a Service or port that is
/// missing is left out (the placement step reports it).
pub async fn node_ports(ctx: &Context, binding: &ClbBackendBinding) -> Result<BTreeMap<(String, i32), i32>> {
    let ns = binding.namespace().unwrap_or_default();
    let names: BTreeSet<&str> =
        binding.spec.listeners.iter().filter_map(|l| l.service.as_ref()).map(|s| s.name.as_str()).collect();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = BTreeMap::new();
    for name in names {
        let Some(service) =
            services.get_opt(name).await.map_err(Error::kube("reading a listener's Service"))?
        else {
            continue;
        };
        for port in service.spec.into_iter().flat_map(|s| s.ports.unwrap_or_default()) {
            if let Some(node_port) = port.node_port {
                out.insert((name.to_owned(), port.port), node_port);
            }
        }
    }
    Ok(out)
}

/// How much longer the binding holds back for changes to settle (`None`: submit now); notes in the memory since
/// when it does.
pub fn settle(ctx: &Context, key: &Key, looked_at: &BTreeSet<String>) -> Option<Duration> {
    let now = tokio::time::Instant::now();
    let policy = &ctx.config.settle;
    let signals = &ctx.caches.signals;
    let recent: Vec<_> = looked_at.iter().filter_map(|n| signals.last(n)).collect();
    let cluster = signals.cluster(policy.burst_quiet(), now);
    let wait = policy.wait(now, &recent, cluster, ctx.memory.settling_since(key));
    ctx.memory.settling(key, wait.is_some(), now);
    wait
}

/// What the drained mark decision needs to know about a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMark {
    /// The node is in the cache.
    pub exists: bool,
    /// It carries the drained mark.
    pub marked: bool,
    /// A binding other than this one owns an instance on it.
    pub owned_elsewhere: bool,
}

/// The mark state of `nodes`, as seen from the binding `key`.
pub fn marks(
    ctx: &Context,
    key: &Key,
    nodes: impl IntoIterator<Item = String>,
) -> BTreeMap<String, NodeMark> {
    let mut marks: BTreeMap<String, NodeMark> = nodes
        .into_iter()
        .map(|node| {
            let cached = ctx.caches.nodes.get(&ObjectRef::new(&node));
            let marked =
                cached.as_ref().is_some_and(|n| n.annotations().contains_key(DEREGISTERED_AT_ANNOTATION));
            (node, NodeMark { exists: cached.is_some(), marked, owned_elsewhere: false })
        })
        .collect();
    // Only a node that may get the mark needs the other bindings' statuses: most reconciles release nothing, and
    // scanning every binding on each of them would cost O(bindings) per reconcile.
    if marks.values().any(|m| m.exists && !m.marked) {
        let others: Vec<ClbBackendBindingStatus> = (ctx.caches.bindings.state().iter())
            .filter(|b| ObjectRef::from_obj(b.as_ref()) != *key)
            .map(|b| ctx.memory.current_status(b))
            .collect();
        for (node, mark) in marks.iter_mut().filter(|(_, m)| m.exists && !m.marked) {
            mark.owned_elsewhere =
                others.iter().any(|s| s.backends.iter().any(|b| b.node.as_deref() == Some(node.as_str())));
        }
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect(),
            ),
            ..Default::default()
        }
    }

    /// A Secret without a required key is a CredentialsNotFound problem that names the key, never a value.
    #[test]
    fn credentials_need_both_keys_and_never_echo_values() {
        let both = secret(&[("secretId", "AKID1"), ("secretKey", "s3cr3t")]);
        assert!(credentials_from_secret(Some(&both), "ns", "c").is_ok());
        let p = credentials_from_secret(Some(&secret(&[("secretId", "AKID1")])), "ns", "c").unwrap_err();
        assert_eq!(p.reason, reasons::CREDENTIALS_NOT_FOUND);
        assert!(p.message.contains("secretKey"));
        let p = credentials_from_secret(Some(&secret(&[("secretKey", "s3cr3t")])), "ns", "c").unwrap_err();
        assert!(!p.message.contains("s3cr3t"));
        let p = credentials_from_secret(None, "ns", "c").unwrap_err();
        assert_eq!(p.message, "Secret ns/c not found");
    }
}
