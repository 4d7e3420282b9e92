//! The response decoder on bad input: malformed bodies and HTTP errors become typed errors, end to end through
//! the client and directly, and thousands of random byte strings never make it panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use clb_operator::clb::wire::{
    self, BackendsResponse, LoadBalancersResponse, SubmitResponse, TaskResultResponse,
};
use clb_operator::clb::{Action, ClbClient, ClbError, ClientConfig, Credentials, RetryConfig, TaskState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

const HTML: &str =
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";

fn decode_backends(status: u16, body: &str) -> Result<BackendsResponse, ClbError> {
    wire::decode(Action::DescribeLoadBalancerBackends, status, body.as_bytes())
}

fn assert_decode_error<T: std::fmt::Debug>(result: Result<T, ClbError>, what: &str) {
    match result {
        Err(e @ ClbError::Decode { .. }) => {
            assert_eq!(e.kind(), "decode", "{what}");
            assert!(!e.is_retryable(), "{what}");
        }
        other => panic!("{what}: expected a decode error, got {other:?}"),
    }
}

/// Truncated JSON, wrong types, an HTML page, an empty body and a body without `code` are decode errors.
#[test]
fn malformed_bodies_are_decode_errors() {
    let cases = [
        ("truncated", r#"{"code":0,"totalCount":1,"backendSet":[{"unInstanceId":"ins-1","wei"#),
        ("backendSet not a list", r#"{"code":0,"backendSet":"none"}"#),
        ("weight not a number", r#"{"code":0,"backendSet":[{"unInstanceId":"ins-1","weight":"heavy"}]}"#),
        ("weight fractional", r#"{"code":0,"backendSet":[{"unInstanceId":"ins-1","weight":1.5}]}"#),
        ("code is a boolean", r#"{"code":true}"#),
        ("no code", r#"{"backendSet":[]}"#),
        ("missing backendSet", r#"{"code":0}"#),
        ("json array", "[1,2,3]"),
        ("html page", HTML),
        ("empty", ""),
        ("whitespace", " \n\t "),
    ];
    for (what, body) in cases {
        assert_decode_error(decode_backends(200, body), what);
    }
    assert_decode_error(
        wire::decode::<SubmitResponse>(
            Action::RegisterInstancesWithLoadBalancer,
            200,
            br#"{"code":0,"requestId":null}"#,
        ),
        "null requestId",
    );
    assert_decode_error(
        wire::decode::<SubmitResponse>(
            Action::RegisterInstancesWithLoadBalancer,
            200,
            br#"{"code":0,"requestId":-5}"#,
        ),
        "negative requestId",
    );
    let err = decode_backends(200, HTML).unwrap_err();
    assert!(err.to_string().contains("502 Bad Gateway"), "the snippet helps diagnose: {err}");
}

/// A non-2xx status is an HTTP error (5xx retryable, 4xx not), whatever the body.
#[test]
fn http_errors_are_typed_by_status() {
    let err = decode_backends(500, "Internal Server Error").unwrap_err();
    assert!(matches!(err, ClbError::Http { status: 500, .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "server");
    let err = decode_backends(403, HTML).unwrap_err();
    assert!(matches!(err, ClbError::Http { status: 403, .. }) && !err.is_retryable());
}

/// Unknown fields are ignored and numbers may be strings.
#[test]
fn lenient_where_the_api_is_inconsistent() {
    let body = r#"{"code":"0","message":"","codeDesc":"Success","totalCount":"1","extra":{"x":[1]},
        "backendSet":[{"instanceId":"qcvm1","unInstanceId":"ins-1","weight":"10","instanceStatus":2,"new":true}]}"#;
    let r = decode_backends(200, body).unwrap();
    assert_eq!(r.backend_set.len(), 1);
    let r: TaskResultResponse =
        wire::decode(Action::DescribeLoadBalancersTaskResult, 200, br#"{"code":0,"data":{"status":"0"}}"#)
            .unwrap();
    assert_eq!(r.state(), Ok(TaskState::Succeeded));
}

/// Decodes `body` as every response type; only checks that nothing panics and errors carry a known kind.
fn decode_all(status: u16, body: &[u8]) {
    const KINDS: [&str; 4] = ["decode", "http", "server", "throttled"];
    let check = |r: Result<(), ClbError>| {
        if let Err(e) = r {
            let kind = e.kind();
            assert!(KINDS.contains(&kind) || e.code().is_some(), "unexpected kind {kind}: {e}");
            let _ = e.to_string();
        }
    };
    check(wire::decode::<LoadBalancersResponse>(Action::DescribeLoadBalancers, status, body).map(|_| ()));
    check(wire::decode::<BackendsResponse>(Action::DescribeLoadBalancerBackends, status, body).map(|_| ()));
    check(
        wire::decode::<SubmitResponse>(Action::DeregisterInstancesFromLoadBalancer, status, body).map(|_| ()),
    );
    check(wire::decode::<TaskResultResponse>(Action::DescribeLoadBalancersTaskResult, status, body).map(
        |r| {
            let _ = r.state();
        },
    ));
}

/// 20 000 random inputs (seeded): raw random bytes, and valid responses that are truncated, spliced and
/// byte-flipped, all go through the decoder without a panic.
#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = StdRng::seed_from_u64(20_251_129);
    let valid: [&[u8]; 5] = [
        br#"{"code":0,"totalCount":2,"loadBalancerSet":[{"loadBalancerId":"lb-1","forward":"0","loadBalancerVips":["1.1.1.1"]}]}"#,
        br#"{"code":0,"totalCount":1,"backendSet":[{"instanceId":"q","unInstanceId":"ins-1","weight":10}]}"#,
        br#"{"code":"0","requestId":"12345"}"#,
        br#"{"code":0,"data":[{"status":2}]}"#,
        br#"{"code":4100,"message":"bad\nsig","codeDesc":"AuthFailure"}"#,
    ];
    let tokens: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"-1e999",
        b"\"\\u00",
        b"18446744073709551616",
        b"\xff",
    ];
    for round in 0..20_000u32 {
        let body: Vec<u8> = match round % 4 {
            0 => (0..rng.random_range(0..200)).map(|_| rng.random()).collect(),
            1 => {
                let v = valid[rng.random_range(0..valid.len())];
                v[..rng.random_range(0..=v.len())].to_vec()
            }
            2 => {
                let mut v = valid[rng.random_range(0..valid.len())].to_vec();
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
                v
            }
            _ => {
                let mut v = Vec::new();
                for _ in 0..rng.random_range(0..30) {
                    if rng.random_bool(0.3) {
                        let src = valid[rng.random_range(0..valid.len())];
                        let a = rng.random_range(0..src.len());
                        let b = rng.random_range(a..=src.len());
                        v.extend_from_slice(&src[a..b]);
                    } else {
                        v.extend_from_slice(tokens[rng.random_range(0..tokens.len())]);
                    }
                }
                v
            }
        };
        let status = if rng.random_bool(0.9) {
            200
        } else {
            [0, 204, 302, 404, 429, 500, 503, 999][rng.random_range(0..8)]
        };
        decode_all(status, &body);
    }
}

/// A stub endpoint that answers every request with a fixed status and body and counts the requests.
async fn stub(status: StatusCode, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { (status, body) }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v2/index.php"), hits)
}

fn stub_client(endpoint: &str) -> ClbClient {
    let config = ClientConfig {
        endpoint: endpoint.parse().unwrap(),
        retry: RetryConfig {
            max_attempts: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            jitter: false,
        },
        ..ClientConfig::default()
    };
    ClbClient::new(config, Credentials::new("id", "key", None)).unwrap()
}

/// End to end: HTTP 500 is retried and then reported with its status; an HTML page, an empty body and
/// truncated JSON (HTTP 200) are reported at once as decode errors.
#[tokio::test]
async fn client_reports_bad_responses_as_typed_errors() {
    let (endpoint, hits) = stub(StatusCode::INTERNAL_SERVER_ERROR, "oops").await;
    let err = stub_client(&endpoint).describe_backends("lb-1").await.unwrap_err();
    assert!(
        matches!(err, ClbError::Http { status: 500, action: Action::DescribeLoadBalancerBackends, .. }),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3, "retried up to max_attempts");

    for body in [HTML, "", r#"{"code":0,"requestId":"#] {
        let (endpoint, hits) = stub(StatusCode::OK, body).await;
        let outcomes = stub_client(&endpoint).deregister("lb-1", &["ins-1".to_owned()]).await;
        let err = outcomes.into_iter().next().unwrap().result.unwrap_err();
        assert!(matches!(err, ClbError::Decode { .. }), "{body:?}: {err}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{body:?}: decode errors are not retried");
    }

    // Well-formed JSON whose content is unusable (a backend with no ID) is a decode error too.
    let (endpoint, _) = stub(StatusCode::OK, r#"{"code":0,"backendSet":[{"weight":10}]}"#).await;
    let err = stub_client(&endpoint).describe_backends("lb-1").await.unwrap_err();
    assert!(matches!(&err, ClbError::Decode { reason, .. } if reason.contains("unInstanceId")), "{err}");
}
