//! The Kubernetes API requests this process makes, counted and timed by verb and resource
//! (`clb_operator_kube_requests`, `clb_operator_kube_request_duration_seconds`), so that what the operator costs
//! the API server, and what each status write costs the operator, can be read from its own metrics.

use std::{
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

/// Labels of one counted request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// The resource's plural, with `/<subresource>` where there is one (`clbbackendbindings/status`).
    pub resource: String,
}

/// The process's requests, shared by every client built with [`CountRequests`] (there is one per process).
pub static KUBE_REQUESTS: LazyLock<Family<KubeRequestLabels, Counter>> = LazyLock::new(Family::default);

/// How long each request took until its response's headers arrived (for a watch: until it was established).
pub static KUBE_REQUEST_DURATION: LazyLock<Family<KubeRequestLabels, Histogram>> =
    LazyLock::new(|| Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)));

/// Bucket bounds in seconds: fine from 1 ms to 100 ms, where a write to the API server lands, so that its p50 and
/// p99 can be read off; coarse above.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

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

/// A tower layer for kube's `ClientBuilder` that counts each request in [`KUBE_REQUESTS`] and times it in
/// [`KUBE_REQUEST_DURATION`]. Written here because the request's labels must reach the response: tower's
/// map layers see one or the other, and the maintained HTTP metrics layers feed other metrics libraries.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountRequests;

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner)
    }
}

/// The service [`CountRequests`] wraps around kube's HTTP stack.
#[derive(Clone, Debug)]
pub struct Counted<S>(S);

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let labels = classify(req.method().as_str(), req.uri().path(), req.uri().query());
        KUBE_REQUESTS.get_or_create(&labels).inc();
        let (start, response) = (Instant::now(), self.0.call(req));
        Box::pin(async move {
            let response = response.await;
            KUBE_REQUEST_DURATION.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str, query: Option<&str>) -> (&'static str, String) {
        let l = classify(method, path, query);
        (l.verb, l.resource)
    }

    #[tokio::test]
    async fn each_request_is_counted_and_timed_when_its_response_arrives() {
        use tower::{Layer as _, ServiceExt as _};
        let labels = classify("PATCH", "/apis/g/v1/namespaces/n/things-under-test/x/status", None);
        // The seconds summed for these labels, as /metrics shows them.
        let timed = || {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register("d", "d", KUBE_REQUEST_DURATION.clone());
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            (text.lines())
                .find(|l| l.starts_with("d_sum{") && l.contains("things-under-test/status"))
                .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let req =
            http::Request::patch("/apis/g/v1/namespaces/n/things-under-test/x/status").body(()).unwrap();
        assert_eq!(timed(), 0.0, "nothing timed before the request");
        CountRequests.layer(inner).oneshot(req).await.unwrap();
        assert_eq!(KUBE_REQUESTS.get_or_create(&labels).get(), 1, "counted once");
        assert!(timed() >= 0.02, "timed until the response came, 20 ms after the call: {}", timed());
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
