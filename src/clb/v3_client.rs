//! The CLB API 3.0 HTTP client: POST JSON signed with TC3-HMAC-SHA256 afresh on every send (retries included),
//! a rate limiter per action, jittered exponential retries of transient errors, and one re-sign when the server
//! says the signature expired.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Serialize, de::DeserializeOwned};
use tracing::debug;
use url::Url;

use crate::clb::{
    Credentials,
    tc3::{self, Tc3Input},
    v3::{self, Action, ApiError, ErrorClass, Reply},
};

/// Why a v3 call failed; never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V3CallError {
    /// The API answered with an error.
    #[error("{action:?} failed with {}: {} (RequestId {request_id})", .error.code, .error.message)]
    Api {
        /// The action.
        action: Action,
        /// The API's error.
        error: ApiError,
        /// The RequestId of the answer.
        request_id: String,
    },
    /// The endpoint could not be reached, or answered with no API envelope.
    #[error("{action:?} failed: {detail}")]
    Transport {
        /// The action.
        action: Action,
        /// What went wrong, without the request (it carries the signature and the token).
        detail: String,
    },
}

impl V3CallError {
    /// How to handle it: transport failures are transient.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api { error, .. } => v3::classify(&error.code),
            Self::Transport { .. } => ErrorClass::Retry,
        }
    }
}

/// Told about every send: the action, its outcome and how long it took (for metrics).
pub type V3Observer = Arc<dyn Fn(Action, Result<(), &V3CallError>, Duration) + Send + Sync>;

/// A CLB API 3.0 client for one region and one set of credentials.
#[derive(Clone)]
pub struct V3Client {
    http: reqwest::Client,
    endpoint: Url,
    host: String,
    credentials: Arc<Credentials>,
    region: String,
    limiters: Arc<HashMap<Action, DefaultDirectRateLimiter>>,
    /// Sends per call, the first included.
    attempts: usize,
    observer: Option<V3Observer>,
}

impl std::fmt::Debug for V3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V3Client")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .finish()
    }
}

const ACTIONS: [Action; 12] = [
    Action::DescribeLoadBalancers,
    Action::DescribeListeners,
    Action::DescribeTargets,
    Action::RegisterTargets,
    Action::DeregisterTargets,
    Action::BatchRegisterTargets,
    Action::BatchDeregisterTargets,
    Action::ModifyTargetWeight,
    Action::DescribeClassicalLBTargets,
    Action::RegisterTargetsWithClassicalLB,
    Action::DeregisterTargetsFromClassicalLB,
    Action::DescribeTaskStatus,
];

impl V3Client {
    /// A client of `endpoint` (its host is signed) in `region`, at most `rate` requests a second per action.
    pub fn new(endpoint: Url, credentials: Credentials, region: &str, rate: u32) -> Result<Self, String> {
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err("the endpoint has no host".into()),
        };
        let rate = NonZeroU32::new(rate).ok_or("the rate limit must be at least 1")?;
        // A burst of 1 spaces the requests evenly (as the v2 client does).
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        let limiters = ACTIONS.iter().map(|a| (*a, RateLimiter::direct(quota))).collect();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let credentials = Arc::new(credentials);
        Ok(Self {
            http,
            endpoint,
            host,
            credentials,
            region: region.to_owned(),
            limiters: Arc::new(limiters),
            attempts: 4,
            observer: None,
        })
    }

    /// The same client (connections and rate limits shared) for `region` with `credentials`.
    pub fn with_credentials(&self, credentials: Credentials, region: &str) -> Self {
        Self { credentials: Arc::new(credentials), region: region.to_owned(), ..self.clone() }
    }

    /// The same client reporting every send to `observer`.
    pub fn with_observer(mut self, observer: V3Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The same client making at most `attempts` sends per call (at least 1).
    pub fn with_attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Calls `action` with `request`; retries transient errors (4 sends in all, 200 ms doubling to 5 s, jittered)
    /// and re-signs once when the signature expired.
    pub async fn call<T: DeserializeOwned>(
        &self,
        action: Action,
        request: &impl Serialize,
    ) -> Result<(String, T), V3CallError> {
        let transport = |detail: String| V3CallError::Transport { action, detail };
        // Serialized once: these exact bytes are signed and sent, every attempt.
        let body = serde_json::to_vec(request).map_err(|e| transport(e.to_string()))?;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.attempts - 1)
            .with_jitter();
        let send = || async {
            match self.observed::<T>(action, &body).await {
                Err(e) if e.class() == ErrorClass::Resign => self.observed::<T>(action, &body).await,
                other => other,
            }
        };
        send.retry(backoff)
            .when(|e| e.class() == ErrorClass::Retry)
            .notify(|e, delay| debug!(?action, error = %e, ?delay, "Retrying CLB v3 request"))
            .await
    }

    async fn observed<T: DeserializeOwned>(
        &self,
        action: Action,
        body: &[u8],
    ) -> Result<(String, T), V3CallError> {
        let started = std::time::Instant::now();
        let result = self.send_once::<T>(action, body).await;
        if let Some(observe) = &self.observer {
            observe(action, result.as_ref().map(|_| ()), started.elapsed());
        }
        result
    }

    async fn send_once<T: DeserializeOwned>(
        &self,
        action: Action,
        body: &[u8],
    ) -> Result<(String, T), V3CallError> {
        if let Some(limiter) = self.limiters.get(&action) {
            limiter.until_ready().await;
        }
        let timestamp = jiff::Timestamp::now().as_second();
        let signed = tc3::sign(
            self.credentials.secret_key(),
            &Tc3Input::json_post(&self.host, v3::SERVICE, body, timestamp),
        );
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header("Content-Type", "application/json")
            .header("Authorization", signed.authorization(self.credentials.secret_id()))
            .header("X-TC-Action", action.as_str())
            .header("X-TC-Version", v3::VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", &self.region)
            .body(body.to_vec());
        if let Some(token) = self.credentials.token() {
            request = request.header("X-TC-Token", token);
        }
        debug!(?action, "Sending CLB v3 request");
        let transport = |detail: String| V3CallError::Transport { action, detail };
        let response = request.send().await.map_err(|e| transport(format!("{}", e.without_url())))?;
        let bytes = response.bytes().await.map_err(|e| transport(format!("{}", e.without_url())))?;
        let Reply { request_id, result } = v3::decode::<T>(&bytes).map_err(transport)?;
        result.map(|fields| (request_id.clone(), fields)).map_err(|error| V3CallError::Api {
            action,
            error,
            request_id,
        })
    }
}
