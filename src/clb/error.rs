//! The typed CLB error, its retry classification (after the error table of the API v2 docs) and a fixed `kind`
//! vocabulary for metrics and conditions. No variant ever holds a secret or a signed URL.

use std::time::Duration;

use crate::clb::Action;

/// API codes worth retrying: 4200 request expired and 4500 replay/clock skew (a retry re-signs with a fresh
/// Timestamp and Nonce), 4400 quota exceeded, 5100 operation failed ("retry later"), 6000 internal error and
/// 6200 temporarily unavailable.
pub const RETRYABLE_CODES: [i64; 6] = [4200, 4400, 4500, 5100, 6000, 6200];

/// API code for "resource does not exist"; on Deregister it means the instance is already gone.
pub const CODE_NOT_FOUND: i64 = 5000;

/// Why a CLB call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClbError {
    /// The API answered with a non-zero `code`.
    #[error("{action} failed with code {code} ({code_desc}): {message}")]
    Api {
        /// The action that was called.
        action: Action,
        /// The API error code (see [`ClbError::kind`]).
        code: i64,
        /// The API's human-readable message.
        message: String,
        /// The API's short error name, such as `AuthFailure`.
        code_desc: String,
    },
    /// The endpoint answered with an HTTP status other than 2xx.
    #[error("{action} failed with HTTP status {status}: {snippet:?}")]
    Http {
        /// The action that was called.
        action: Action,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, with control characters replaced.
        snippet: String,
    },
    /// No complete response arrived within the request timeout.
    #[error("{action} timed out after {timeout:?}")]
    Timeout {
        /// The action that was called.
        action: Action,
        /// The per-request timeout that expired.
        timeout: Duration,
    },
    /// The request could not be sent or its response not read (DNS, connect, TLS, reset).
    #[error("{action} could not reach the CLB endpoint: {detail}")]
    Transport {
        /// The action that was called.
        action: Action,
        /// The underlying error chain, without the request URL (which carries the signature and token).
        detail: String,
    },
    /// The response was not the JSON this action returns.
    #[error("{action} returned a malformed response ({reason}): {snippet:?}")]
    Decode {
        /// The action that was called.
        action: Action,
        /// What was wrong with it.
        reason: String,
        /// The start of the response body, with control characters replaced.
        snippet: String,
    },
    /// The request was refused before sending, because the API would reject it anyway.
    #[error("invalid {action} request: {reason}")]
    InvalidRequest {
        /// The action that would have been called.
        action: Action,
        /// What is wrong with the input.
        reason: String,
    },
    /// The client configuration or the credentials are unusable.
    #[error("invalid CLB client configuration: {0}")]
    Config(String),
    /// A task was still running when the caller stopped waiting for it.
    #[error("task {request_id} still running after {waited:?}")]
    TaskTimeout {
        /// The task's `requestId`.
        request_id: u64,
        /// How long the caller waited.
        waited: Duration,
    },
}

impl ClbError {
    /// Whether sending the same request again (freshly signed) may succeed: the retryable API codes, HTTP 5xx
    /// and 429, timeouts and transport failures. Everything else needs a different request or a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, .. } => RETRYABLE_CODES.contains(code),
            Self::Http { status, .. } => *status >= 500 || *status == 429,
            // NB: a transport error may hide a request the server did execute; repeating Register or Deregister
            // is harmless (the API is idempotent for instances already in the wanted state).
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Decode { .. }
            | Self::InvalidRequest { .. }
            | Self::Config(_)
            | Self::TaskTimeout { .. } => false,
        }
    }

    /// The API error code, for [`ClbError::Api`] only.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A short label from a fixed vocabulary, for metrics, condition reasons and log fields:
    /// `invalid_request`, `auth`, `expired`, `throttled`, `not_found`, `operation_failed`, `rejected`,
    /// `server`, `api` (an unknown code), `http`, `timeout`, `transport`, `decode`, `config`, `task_timeout`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Api { code, .. } => match code {
                4000 | 4600 | 6100 => "invalid_request",
                4100..=4199 | 4300 => "auth",
                4200 | 4500 => "expired",
                4400 => "throttled",
                5000 => "not_found",
                5100 | 5400 => "operation_failed",
                5200 | 5300 | 5500 => "rejected",
                6000 | 6200 => "server",
                _ => "api",
            },
            Self::Http { status, .. } if *status >= 500 => "server",
            Self::Http { status: 429, .. } => "throttled",
            Self::Http { .. } => "http",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Decode { .. } => "decode",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Config(_) => "config",
            Self::TaskTimeout { .. } => "task_timeout",
        }
    }

    /// A transport-level failure of `action`, classified as a timeout or not; the URL is stripped from the
    /// message because it carries the signature and, for temporary credentials, the token.
    pub(crate) fn from_reqwest(action: Action, timeout: Duration, error: reqwest::Error) -> Self {
        if error.is_timeout() {
            return Self::Timeout { action, timeout };
        }
        let error = error.without_url();
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Transport { action, detail }
    }
}

/// At most this many characters of a response body go into an error.
const SNIPPET_CHARS: usize = 120;

/// The start of a response body as printable text: lossy UTF-8, control characters replaced by spaces, cut at
/// [`SNIPPET_CHARS`] characters (never inside a character).
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_CHARS * 4)]);
    let mut out: String =
        text.chars().take(SNIPPET_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(SNIPPET_CHARS).is_some() || body.len() > SNIPPET_CHARS * 4 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i64) -> ClbError {
        ClbError::Api {
            action: Action::DescribeLoadBalancers,
            code,
            message: String::new(),
            code_desc: String::new(),
        }
    }

    /// The retry table of the API docs: retryable codes retry, auth and parameter errors never do.
    #[test]
    fn retry_classification_follows_the_error_table() {
        for code in RETRYABLE_CODES {
            assert!(api(code).is_retryable(), "{code}");
        }
        for code in [4000, 4100, 4104, 4105, 4300, 5000, 5400, 6100] {
            assert!(!api(code).is_retryable(), "{code}");
        }
        let http =
            |status| ClbError::Http { action: Action::DescribeLoadBalancers, status, snippet: String::new() };
        assert!(http(502).is_retryable());
        assert!(!http(404).is_retryable());
    }

    /// Kinds come from the fixed vocabulary.
    #[test]
    fn kinds_are_fixed_labels() {
        assert_eq!(api(4100).kind(), "auth");
        assert_eq!(api(4400).kind(), "throttled");
        assert_eq!(api(5000).kind(), "not_found");
        assert_eq!(api(6000).kind(), "server");
        assert_eq!(api(4000).kind(), "invalid_request");
        assert_eq!(api(9999).kind(), "api");
        assert_eq!(api(5000).code(), Some(5000));
    }

    /// Snippets are short, single-line and safe to cut anywhere.
    #[test]
    fn snippet_is_bounded_and_printable() {
        assert_eq!(snippet(b"a\nb\x00c"), "a b c");
        let long = "中".repeat(500);
        let s = snippet(long.as_bytes());
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert!(s.ends_with('…'));
        assert_eq!(snippet(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
    }
}
