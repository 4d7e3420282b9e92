//! The Kubernetes API requests this process makes, counted by verb and resource (`clb_operator_kube_requests`),
//! so that what the operator costs the API server can be read from its own metrics.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// Labels of one counted request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// The resource's plural, with `/<subresource>` where there is one (`clbbackendbindings/status`).
    pub resource: String,
}

/// The process's requests, shared by every client built with [`count_requests`] (there is one per process).
pub static KUBE_REQUESTS: LazyLock<Family<KubeRequestLabels, Counter>> = LazyLock::new(Family::default);

/// What a request is, in the API server's own terms, from its method, path and query.
pub fn classify(method: &str, path: &str, query: Option<&str>) -> KubeRequestLabels {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.first() {
        Some(&"api") if segments.len() > 2 => &segments[2..],
        Some(&"apis") if segments.len() > 3 => &segments[3..],
        _ => &[][..],
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, name, sub) = (rest.first(), rest.get(1), rest.get(2));
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method, name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "other",
    };
    let resource = match (resource, sub) {
        (Some(r), Some(s)) => format!("{r}/{s}"),
        (Some(r), None) => (*r).to_owned(),
        (None, _) => "other".to_owned(),
    };
    KubeRequestLabels { verb, resource }
}

/// A tower layer for kube's `ClientBuilder` that counts each request in [`KUBE_REQUESTS`].
pub fn count_requests<B>()
-> tower::util::MapRequestLayer<impl Fn(http::Request<B>) -> http::Request<B> + Clone> {
    tower::util::MapRequestLayer::new(|req: http::Request<B>| {
        let labels = classify(req.method().as_str(), req.uri().path(), req.uri().query());
        KUBE_REQUESTS.get_or_create(&labels).inc();
        req
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str, query: Option<&str>) -> (&'static str, String) {
        let l = classify(method, path, query);
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_named_as_the_api_server_names_them() {
        assert_eq!(c("GET", "/api/v1/nodes", Some("limit=500")), ("list", "nodes".into()));
        assert_eq!(
            c("GET", "/api/v1/nodes", Some("watch=true&resourceVersion=5")),
            ("watch", "nodes".into())
        );
        assert_eq!(c("GET", "/api/v1/namespaces/shop/pods", Some("watch=true")), ("watch", "pods".into()));
        assert_eq!(c("GET", "/api/v1/namespaces/shop/secrets/creds", None), ("get", "secrets".into()));
        assert_eq!(c("GET", "/api/v1/namespaces/shop", None), ("get", "namespaces".into()));
        assert_eq!(
            c("PATCH", "/apis/clb.tke.dev/v1alpha1/namespaces/shop/clbbackendbindings/web/status", None),
            ("patch", "clbbackendbindings/status".into())
        );
        assert_eq!(
            c("GET", "/apis/clb.tke.dev/v1alpha1/clbbackendbindings", None),
            ("list", "clbbackendbindings".into())
        );
        assert_eq!(
            c("PUT", "/apis/coordination.k8s.io/v1/namespaces/x/leases/clb-operator", None),
            ("update", "leases".into())
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/x/events", None),
            ("create", "events".into())
        );
        assert_eq!(c("PATCH", "/api/v1/nodes/n1", None), ("patch", "nodes".into()));
        assert_eq!(c("GET", "/version", None), ("list", "other".into()));
    }
}
