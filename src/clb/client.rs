//! The CLB v2 HTTP client: signs every send afresh, paces each action with its own rate limiter, retries
//! retryable failures with jittered exponential backoff, and splits Register/Deregister into batches whose
//! outcomes are reported one by one.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use tracing::{debug, trace, warn};
use url::Url;

use crate::clb::error::snippet;
use crate::clb::wire::{self, BackendsResponse, LoadBalancersResponse, SubmitResponse, TaskResultResponse};
use crate::clb::{
    Action, Backend, BatchOutcome, CODE_NOT_FOUND, ClbError, Credentials, LoadBalancer, SignMethod,
    Submitted, TaskState, sign,
};

/// The public CLB API v2 endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://lb.api.qcloud.com/v2/index.php";
/// The default region (Guangzhou, in the short form the LB v2 docs list).
pub const DEFAULT_REGION: &str = "gz";
/// The documentation says "GET normally, POST when the parameter string is too long" without a number;
/// 2000 bytes is the URL length every proxy and server in the path is known to accept.
const MAX_GET_URL_BYTES: usize = 2000;
/// Room for `&Signature=` plus a URL-encoded HMAC-SHA256 signature (44 base64 characters, each at most `%XX`).
const SIGNATURE_ALLOWANCE: usize = 11 + 44 * 3;
/// Responses larger than this are refused rather than buffered (a page of 20 LBs is a few kilobytes).
const MAX_BODY_BYTES: usize = 8 << 20;
/// How long to wait for a TCP/TLS connection before counting the attempt as a transport failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// DescribeLoadBalancers page size: the documented default `limit`, so no undocumented maximum is relied on.
const DESCRIBE_PAGE_SIZE: usize = 20;
/// Content type of a POST body, as Tencent's SDK sends it.
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The HTTP method requests are sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HttpMethod {
    /// Parameters in the query string (the documented normal case); long requests switch to POST by themselves.
    #[default]
    Get,
    /// Parameters in an `application/x-www-form-urlencoded` body.
    Post,
}

impl std::str::FromStr for HttpMethod {
    type Err = String;

    /// Parses the name as the API spells it (GET, POST).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "GET" => Ok(Self::Get),
            "POST" => Ok(Self::Post),
            other => Err(format!("`{other}` is not one of GET, POST")),
        }
    }
}

impl std::fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HttpMethod {
    /// The method as it appears in the request line and the signed source string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// How failed calls are retried; only [`ClbError::is_retryable`] errors are, each with a fresh signature.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total sends per call, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles per retry.
    pub min_delay: Duration,
    /// Upper bound of the delay between retries.
    pub max_delay: Duration,
    /// Add random jitter to each delay, so that clients throttled together do not retry together.
    pub jitter: bool,
}

impl Default for RetryConfig {
    /// 4 attempts, 200 ms doubling up to 5 s, jittered: rides out a throttled second or a brief outage in a
    /// few seconds without holding a reconcile for long.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl RetryConfig {
    /// The backoff schedule as a `backon` builder.
    fn backoff(&self) -> ExponentialBuilder {
        let retries = usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(retries);
        if self.jitter { builder.with_jitter() } else { builder }
    }
}

/// Everything about how the client talks to the endpoint (but not who it is: see [`Credentials`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// The API URL; its authority (`host[:port]`, as in the Host header) and path are signed.
    pub endpoint: Url,
    /// The `Region` parameter.
    pub region: String,
    /// The digest requests are signed with.
    pub sign_method: SignMethod,
    /// The preferred HTTP method.
    pub http_method: HttpMethod,
    /// Most instances per Register/Deregister call. 20, like API 3.0's documented cap; v2 documents none.
    pub max_batch: usize,
    /// Requests per second per action, client-side. 20, the documented per-action limit of the CLB API.
    pub rate_limit_per_second: u32,
    /// Time allowed for one send, connect to last body byte.
    pub request_timeout: Duration,
    /// Retry policy for retryable failures.
    pub retry: RetryConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            // NB: a constant that `client_config_default_is_valid` parses in a test; it cannot fail at run time.
            endpoint: Url::parse(DEFAULT_ENDPOINT).expect("DEFAULT_ENDPOINT is a valid URL"),
            region: DEFAULT_REGION.to_owned(),
            sign_method: SignMethod::HmacSha1,
            http_method: HttpMethod::Get,
            max_batch: 20,
            rate_limit_per_second: 20,
            request_timeout: Duration::from_secs(10),
            retry: RetryConfig::default(),
        }
    }
}

/// What all clones (and all credential variants) of one client share.
struct Shared {
    http: reqwest::Client,
    config: ClientConfig,
    /// The endpoint's authority, exactly as reqwest puts it in the Host header.
    host: String,
    /// One limiter per [`Action`] (indexed by [`Action::index`]).
    limiters: [DefaultDirectRateLimiter; Action::ALL.len()],
}

/// A CLB API v2 client. Cheap to clone; clones and [`ClbClient::with_credentials`] /
/// [`ClbClient::with_region`] variants share the connection pool and the per-action rate limiters.
#[derive(Clone)]
pub struct ClbClient {
    shared: Arc<Shared>,
    credentials: Arc<Credentials>,
    region: Arc<str>,
    observer: Option<Observer>,
}

/// Called after every send (retries included) with the action, its outcome and how long the request took
/// (rate-limit waits excluded); the operator feeds its metrics from it.
pub type Observer = Arc<dyn Fn(Action, Result<(), &ClbError>, Duration) + Send + Sync>;

impl fmt::Debug for ClbClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClbClient")
            .field("endpoint", &self.shared.config.endpoint.as_str())
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl ClbClient {
    /// Builds a client, checking the configuration. Empty credentials are accepted here (a shared client may
    /// only ever act through [`ClbClient::with_credentials`]), but every call made with them fails with
    /// [`ClbError::Config`] without being sent.
    pub fn new(config: ClientConfig, credentials: Credentials) -> Result<Self, ClbError> {
        let invalid = |reason: &str| Err(ClbError::Config(reason.to_owned()));
        if !matches!(config.endpoint.scheme(), "http" | "https") {
            return invalid("the endpoint must be an http or https URL");
        }
        if config.endpoint.query().is_some() || config.endpoint.fragment().is_some() {
            return invalid("the endpoint must not have a query or fragment");
        }
        let Some(host) = authority(&config.endpoint) else {
            return invalid("the endpoint has no host");
        };
        if config.max_batch == 0 {
            return invalid("max_batch must be at least 1");
        }
        let Some(rate) = NonZeroU32::new(config.rate_limit_per_second) else {
            return invalid("rate_limit_per_second must be at least 1");
        };
        if config.retry.max_attempts == 0 || config.request_timeout.is_zero() {
            return invalid("max_attempts and request_timeout must be positive");
        }
        if config.endpoint.scheme() == "http" && !is_loopback(&config.endpoint) {
            warn!(endpoint = %config.endpoint, "CLB endpoint is plain HTTP; requests travel unencrypted");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("clb-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClbError::Config(format!("cannot build the HTTP client: {e}")))?;
        // NB: a burst of 1 spaces requests evenly, so no one-second window ever holds more than `rate + 1`
        // requests; a burst of `rate` would allow twice the rate across a window boundary.
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        let limiters = std::array::from_fn(|_| RateLimiter::direct(quota));
        let region = Arc::from(config.region.as_str());
        let shared = Arc::new(Shared { http, config, host, limiters });
        Ok(Self { shared, credentials: Arc::new(credentials), region, observer: None })
    }

    /// The same client reporting every send to `observer`.
    pub fn with_observer(&self, observer: Observer) -> Self {
        Self { observer: Some(observer), ..self.clone() }
    }

    /// The same client (connection pool, rate limiters, configuration) acting with other credentials, such as
    /// those of a binding's own Secret.
    pub fn with_credentials(&self, credentials: Credentials) -> Self {
        Self { credentials: Arc::new(credentials), ..self.clone() }
    }

    /// The same client sending another `Region`, such as a binding's own.
    pub fn with_region(&self, region: impl Into<String>) -> Self {
        Self { region: Arc::from(region.into()), ..self.clone() }
    }

    /// The `Region` this client sends.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The SecretId this client signs with.
    pub fn secret_id(&self) -> &str {
        self.credentials.secret_id()
    }

    /// DescribeLoadBalancers for `ids` (pages of 20); with no ids, every load balancer of the region, page by
    /// page. Unknown ids are simply absent from the result.
    pub async fn describe_load_balancers(&self, ids: &[String]) -> Result<Vec<LoadBalancer>, ClbError> {
        let mut found = Vec::new();
        let page = |params: &mut Vec<(String, String)>, offset: usize| {
            params.push(("offset".into(), offset.to_string()));
            params.push(("limit".into(), DESCRIBE_PAGE_SIZE.to_string()));
        };
        let to_lbs = |r: LoadBalancersResponse| -> Result<(Option<u64>, Vec<LoadBalancer>), String> {
            Ok((
                r.total_count.map(|t| t.0),
                r.load_balancer_set.into_iter().map(LoadBalancer::from).collect(),
            ))
        };
        if ids.is_empty() {
            loop {
                let mut params = Vec::new();
                page(&mut params, found.len());
                let (total, lbs) = self.call(Action::DescribeLoadBalancers, &params, to_lbs).await?;
                let got = lbs.len();
                found.extend(lbs);
                if got == 0 || total.is_none_or(|t| found.len() as u64 >= t) {
                    return Ok(found);
                }
            }
        }
        for chunk in ids.chunks(DESCRIBE_PAGE_SIZE) {
            let mut params = indexed("loadBalancerIds", chunk.iter().map(String::as_str));
            page(&mut params, 0);
            let (_, lbs) = self.call(Action::DescribeLoadBalancers, &params, to_lbs).await?;
            found.extend(lbs);
        }
        Ok(found)
    }

    /// DescribeLoadBalancerBackends: the backends of classic load balancer `lb`.
    pub async fn describe_backends(&self, lb: &str) -> Result<Vec<Backend>, ClbError> {
        let params = [("loadBalancerId".to_owned(), lb.to_owned())];
        let to_backends = |r: BackendsResponse| -> Result<(Option<u64>, Vec<Backend>), String> {
            let total = r.total_count.map(|t| t.0);
            let backends = r.backend_set.into_iter().map(Backend::try_from).collect::<Result<Vec<_>, _>>()?;
            Ok((total, backends))
        };
        let (total, backends) = self.call(Action::DescribeLoadBalancerBackends, &params, to_backends).await?;
        // NB: the v2 docs list no paging for this action; if the API ever truncates, say so instead of
        // silently treating the missing backends as absent.
        if let Some(total) = total.filter(|t| *t > backends.len() as u64) {
            warn!(lb, total, returned = backends.len(), "CLB returned fewer backends than totalCount");
        }
        Ok(backends)
    }

    /// RegisterInstancesWithLoadBalancer for `(instance, weight)` pairs, in batches of `max_batch`; one outcome
    /// per batch, in order. Weights must be 0..=100.
    pub async fn register(&self, lb: &str, backends: &[(String, u32)]) -> Vec<BatchOutcome> {
        let items: Vec<(&str, Option<u32>)> =
            backends.iter().map(|(id, w)| (id.as_str(), Some(*w))).collect();
        self.submit(Action::RegisterInstancesWithLoadBalancer, lb, &items).await
    }

    /// DeregisterInstancesFromLoadBalancer in batches of `max_batch`; one outcome per batch, in order. A 5000
    /// answer (resource does not exist) is [`Submitted::AlreadyGone`].
    pub async fn deregister(&self, lb: &str, instance_ids: &[String]) -> Vec<BatchOutcome> {
        let items: Vec<(&str, Option<u32>)> = instance_ids.iter().map(|id| (id.as_str(), None)).collect();
        self.submit(Action::DeregisterInstancesFromLoadBalancer, lb, &items).await
    }

    /// DescribeLoadBalancersTaskResult: one look at task `request_id`.
    pub async fn task_result(&self, request_id: u64) -> Result<TaskState, ClbError> {
        let params = [("requestId".to_owned(), request_id.to_string())];
        self.call(Action::DescribeLoadBalancersTaskResult, &params, |r: TaskResultResponse| r.state()).await
    }

    /// Sends batches one after another: the per-action limiter would serialise them anyway, and order keeps
    /// the call log readable. Every batch is tried, so one failure never hides another batch's `requestId`.
    async fn submit(&self, action: Action, lb: &str, items: &[(&str, Option<u32>)]) -> Vec<BatchOutcome> {
        let mut outcomes = Vec::with_capacity(items.len().div_ceil(self.shared.config.max_batch));
        for batch in items.chunks(self.shared.config.max_batch) {
            let result = self.submit_batch(action, lb, batch).await;
            outcomes.push(BatchOutcome {
                instance_ids: batch.iter().map(|(id, _)| (*id).to_owned()).collect(),
                result,
            });
        }
        outcomes
    }

    /// One Register/Deregister call with 0-based contiguous `backends.N.*` parameters.
    async fn submit_batch(
        &self,
        action: Action,
        lb: &str,
        batch: &[(&str, Option<u32>)],
    ) -> Result<Submitted, ClbError> {
        let invalid = |reason: String| Err(ClbError::InvalidRequest { action, reason });
        if lb.is_empty() || batch.iter().any(|(id, _)| id.is_empty()) {
            return invalid("load balancer and instance IDs must not be empty".into());
        }
        if let Some((id, Some(weight))) = batch.iter().find(|(_, w)| w.is_some_and(|w| w > 100)) {
            return invalid(format!("weight {weight} of {id} is outside 0..=100"));
        }
        let mut params = vec![("loadBalancerId".to_owned(), lb.to_owned())];
        for (i, (id, weight)) in batch.iter().enumerate() {
            params.push((format!("backends.{i}.instanceId"), (*id).to_owned()));
            if let Some(weight) = weight {
                params.push((format!("backends.{i}.weight"), weight.to_string()));
            }
        }
        let submitted = self.call(action, &params, |r: SubmitResponse| Ok(r.request_id.0)).await;
        match submitted {
            Ok(request_id) => Ok(Submitted::Task { request_id }),
            Err(e)
                if action == Action::DeregisterInstancesFromLoadBalancer
                    && e.code() == Some(CODE_NOT_FOUND) =>
            {
                Ok(Submitted::AlreadyGone)
            }
            Err(e) => Err(e),
        }
    }

    /// Calls `action` with retries for retryable errors; `convert` turns the decoded body into the result (its
    /// error becomes a [`ClbError::Decode`]).
    async fn call<T: DeserializeOwned, U>(
        &self,
        action: Action,
        params: &[(String, String)],
        convert: fn(T) -> Result<U, String>,
    ) -> Result<U, ClbError> {
        let attempt = AtomicU32::new(0);
        (|| async {
            self.shared.limiters[action.index()].until_ready().await;
            let started = Instant::now();
            let result =
                self.send_once(action, params, convert, attempt.fetch_add(1, Ordering::Relaxed) + 1).await;
            if let Some(observe) = &self.observer {
                observe(action, result.as_ref().map(|_| ()), started.elapsed());
            }
            result
        })
        .retry(self.shared.config.retry.backoff())
        .when(ClbError::is_retryable)
        .notify(|err, delay| {
            debug!(action = %action, kind = err.kind(), code = ?err.code(), ?delay, "Retrying CLB request");
        })
        .await
    }

    /// One send (after the action's rate limiter let it through): sign with a fresh Timestamp and Nonce, send,
    /// decode.
    async fn send_once<T: DeserializeOwned, U>(
        &self,
        action: Action,
        action_params: &[(String, String)],
        convert: fn(T) -> Result<U, String>,
        attempt: u32,
    ) -> Result<U, ClbError> {
        let config = &self.shared.config;
        if self.credentials.secret_id().is_empty() || self.credentials.secret_key().is_empty() {
            return Err(ClbError::Config("no credentials: the SecretId or the SecretKey is empty".into()));
        }
        let params = self.signed_params(action, action_params);
        let encoded = sign::urlencode(&params);
        // The method is part of the signed string, so it is chosen before signing. Too long a GET URL is
        // refused by some servers and proxies; the API accepts the same parameters as a POST body.
        let method = if config.http_method == HttpMethod::Post
            || config.endpoint.as_str().len() + 1 + encoded.len() + SIGNATURE_ALLOWANCE > MAX_GET_URL_BYTES
        {
            HttpMethod::Post
        } else {
            HttpMethod::Get
        };
        let signature = sign::sign(
            method.as_str(),
            &self.shared.host,
            config.endpoint.path(),
            &params,
            self.credentials.secret_key(),
        );
        let encoded = form_urlencoded::Serializer::for_suffix(encoded, 0)
            .append_pair(sign::SIGNATURE, &signature)
            .finish();
        let request = match method {
            HttpMethod::Get => {
                let mut url = config.endpoint.clone();
                url.set_query(Some(&encoded));
                self.shared.http.get(url)
            }
            HttpMethod::Post => self
                .shared
                .http
                .post(config.endpoint.clone())
                .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
                .body(encoded),
        };

        // Only the action's own parameters are logged: never the URL, the signature, the key or the token.
        debug!(action = %action, method = method.as_str(), attempt, "Sending CLB request");
        trace!(action = %action, params = ?action_params, "CLB request parameters");
        let started = Instant::now();
        let timeout = config.request_timeout;
        let response =
            request.timeout(timeout).send().await.map_err(|e| ClbError::from_reqwest(action, timeout, e))?;
        let status = response.status().as_u16();
        let body = read_body(action, timeout, response).await?;
        let result = wire::decode::<T>(action, status, &body).and_then(|decoded| {
            convert(decoded).map_err(|reason| ClbError::Decode { action, reason, snippet: snippet(&body) })
        });
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => debug!(action = %action, status, elapsed_ms, "CLB request succeeded"),
            Err(e) => {
                debug!(action = %action, status, elapsed_ms, kind = e.kind(), code = ?e.code(), error = %e,
                "CLB request failed")
            }
        }
        result
    }

    /// The common parameters (fresh Timestamp and Nonce) followed by the action's own.
    fn signed_params(&self, action: Action, action_params: &[(String, String)]) -> Vec<(String, String)> {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // A positive u32: the docs only promise "UInt", so this is the conservative range.
        let nonce: u32 = rand::rng().random_range(1..=u32::MAX);
        let mut params = Vec::with_capacity(7 + action_params.len());
        params.push(("Action".to_owned(), action.as_str().to_owned()));
        params.push(("Region".to_owned(), self.region.to_string()));
        params.push(("SecretId".to_owned(), self.credentials.secret_id().to_owned()));
        params.push((sign::SIGNATURE_METHOD.to_owned(), self.shared.config.sign_method.as_str().to_owned()));
        params.push(("Timestamp".to_owned(), timestamp.to_string()));
        params.push(("Nonce".to_owned(), nonce.to_string()));
        if let Some(token) = self.credentials.token() {
            params.push(("Token".to_owned(), token.to_owned()));
        }
        params.extend_from_slice(action_params);
        params
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
async fn read_body(
    action: Action,
    timeout: Duration,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, ClbError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ClbError::from_reqwest(action, timeout, e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            let reason = format!("body larger than {MAX_BODY_BYTES} bytes");
            return Err(ClbError::Decode { action, reason, snippet: snippet(&body) });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `prefix.0=a&prefix.1=b…` parameters.
fn indexed<'a>(prefix: &str, values: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    values.enumerate().map(|(i, v)| (format!("{prefix}.{i}"), v.to_owned())).collect()
}

/// The URL's authority as the Host header carries it: the host, plus `:port` unless it is the scheme's default.
fn authority(url: &Url) -> Option<String> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Whether the URL points at this machine (plain HTTP there is the emulator, not a leak).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default endpoint constant parses (so `ClientConfig::default` cannot panic).
    #[test]
    fn client_config_default_is_valid() {
        let config = ClientConfig::default();
        assert_eq!(authority(&config.endpoint).as_deref(), Some("lb.api.qcloud.com"));
        assert_eq!(config.endpoint.path(), "/v2/index.php");
        let client = ClbClient::new(config, Credentials::new("id", "key", None)).unwrap();
        assert_eq!(client.with_region("sh").region(), "sh");
        assert_eq!(client.region(), "gz");
    }

    /// The signed host keeps a non-default port and drops a default one, as the Host header does.
    #[test]
    fn authority_matches_the_host_header() {
        let a = |u: &str| authority(&Url::parse(u).unwrap());
        assert_eq!(a("http://127.0.0.1:9000/v2/index.php").as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(a("https://lb.api.qcloud.com:443/v2/index.php").as_deref(), Some("lb.api.qcloud.com"));
        assert_eq!(a("http://[::1]:80/").as_deref(), Some("[::1]"));
    }

    /// Unusable configurations are refused up front.
    #[test]
    fn bad_configuration_is_a_config_error() {
        let creds = || Credentials::new("id", "key", None);
        let bad = [
            ClientConfig { max_batch: 0, ..ClientConfig::default() },
            ClientConfig { rate_limit_per_second: 0, ..ClientConfig::default() },
            ClientConfig { endpoint: Url::parse("ftp://x/").unwrap(), ..ClientConfig::default() },
            ClientConfig { endpoint: Url::parse("http://x/?a=b").unwrap(), ..ClientConfig::default() },
        ];
        for config in bad {
            assert!(matches!(ClbClient::new(config, creds()), Err(ClbError::Config(_))));
        }
        // Empty credentials build (a shared client may only act through `with_credentials`) but never send.
        let empty = ClbClient::new(ClientConfig::default(), Credentials::new("", "", None)).unwrap();
        let err = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(empty.describe_load_balancers(&[]))
            .unwrap_err();
        assert!(matches!(err, ClbError::Config(_)), "{err}");
    }

    /// The client's Debug output names the endpoint and SecretId but never the key.
    #[test]
    fn debug_output_has_no_secret() {
        let client = ClbClient::new(
            ClientConfig::default(),
            Credentials::new("AKID1", "s3cr3t", Some("t0k3n".into())),
        )
        .unwrap();
        let shown = format!("{client:?}");
        assert!(shown.contains("AKID1") && !shown.contains("s3cr3t") && !shown.contains("t0k3n"), "{shown}");
    }
}
