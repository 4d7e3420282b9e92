//! The CLB v2 response bodies as they come off the wire, and the decoder that turns any body into either a
//! response or a typed error: `code` and `requestId` may be numbers or strings, unknown fields are ignored, and
//! malformed input is a [`ClbError::Decode`], never a panic.

use std::str::FromStr;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::clb::error::snippet;
use crate::clb::{Action, Backend, ClbError, LoadBalancer, TaskState};

/// An integer that the API may send as a JSON number or as a numeric string (`"code":"5100"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lenient<T>(pub T);

impl<'de, T> Deserialize<'de> for Lenient<T>
where
    T: FromStr + TryFrom<u64> + TryFrom<i64>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let parsed = match &value {
            Value::Number(n) => n
                .as_u64()
                .and_then(|u| T::try_from(u).ok())
                .or_else(|| n.as_i64().and_then(|i| T::try_from(i).ok())),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        parsed.map(Lenient).ok_or_else(|| {
            let found = match value {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "an out-of-range or fractional number",
                Value::String(_) => "a non-numeric string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            D::Error::custom(format_args!("expected an integer or a numeric string, found {found}"))
        })
    }
}

/// The fields every response carries: `code` (0 = success), `message` and `codeDesc`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// 0 on success, an error code otherwise.
    pub code: Option<Lenient<i64>>,
    /// Human-readable message (kept loose: any JSON value is rendered as text).
    #[serde(default)]
    pub message: Value,
    /// Short error name such as `AuthFailure`.
    #[serde(default)]
    pub code_desc: Value,
}

/// Body of DescribeLoadBalancers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancersResponse {
    /// How many load balancers match, across pages.
    pub total_count: Option<Lenient<u64>>,
    /// This page of them.
    pub load_balancer_set: Vec<LoadBalancerDto>,
}

/// One entry of `loadBalancerSet`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerDto {
    /// `loadBalancerId`.
    pub load_balancer_id: String,
    /// `unLoadBalancerId`.
    pub un_load_balancer_id: Option<String>,
    /// `loadBalancerName`.
    pub load_balancer_name: Option<String>,
    /// `loadBalancerType`.
    pub load_balancer_type: Option<Lenient<i64>>,
    /// `forward`.
    pub forward: Option<Lenient<i64>>,
    /// `status`.
    pub status: Option<Lenient<i64>>,
    /// `loadBalancerVips`.
    pub load_balancer_vips: Option<Vec<String>>,
}

impl From<LoadBalancerDto> for LoadBalancer {
    fn from(dto: LoadBalancerDto) -> Self {
        Self {
            load_balancer_id: dto.load_balancer_id,
            un_load_balancer_id: dto.un_load_balancer_id.filter(|id| !id.is_empty()),
            name: dto.load_balancer_name,
            load_balancer_type: dto.load_balancer_type.map(|v| v.0),
            forward: dto.forward.map(|v| v.0),
            status: dto.status.map(|v| v.0),
            vips: dto.load_balancer_vips.unwrap_or_default(),
        }
    }
}

/// Body of DescribeLoadBalancerBackends.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendsResponse {
    /// How many backends the load balancer has.
    pub total_count: Option<Lenient<u64>>,
    /// The backends.
    pub backend_set: Vec<BackendDto>,
}

/// One entry of `backendSet`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendDto {
    /// Legacy `instanceId` (`qcvm…`).
    pub instance_id: Option<String>,
    /// Unified `unInstanceId` (`ins-…`).
    pub un_instance_id: Option<String>,
    /// Forwarding weight.
    pub weight: Lenient<u32>,
    /// `instanceName`.
    pub instance_name: Option<String>,
    /// `lanIp`.
    pub lan_ip: Option<String>,
    /// `instanceStatus`.
    pub instance_status: Option<Lenient<i64>>,
}

impl TryFrom<BackendDto> for Backend {
    type Error = &'static str;

    fn try_from(dto: BackendDto) -> Result<Self, Self::Error> {
        let legacy = dto.instance_id.filter(|id| !id.is_empty());
        // The unified ID is what nodes carry and what Register takes; fall back to the legacy one only when the
        // API sends nothing else, so the backend can still be matched and removed.
        let (instance_id, legacy_instance_id) = match dto.un_instance_id.filter(|id| !id.is_empty()) {
            Some(unified) => {
                let legacy = legacy.filter(|l| *l != unified);
                (unified, legacy)
            }
            None => (legacy.ok_or("a backend has neither unInstanceId nor instanceId")?, None),
        };
        Ok(Self {
            instance_id,
            legacy_instance_id,
            weight: dto.weight.0,
            name: dto.instance_name,
            lan_ip: dto.lan_ip,
            status: dto.instance_status.map(|v| v.0),
        })
    }
}

/// Body of RegisterInstancesWithLoadBalancer and DeregisterInstancesFromLoadBalancer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitResponse {
    /// The asynchronous task's ID, for DescribeLoadBalancersTaskResult.
    pub request_id: Lenient<u64>,
}

/// Body of DescribeLoadBalancersTaskResult.
#[derive(Debug, Deserialize)]
pub struct TaskResultResponse {
    /// The task's status; documented as an "Array" but shown as an object, so both are accepted.
    pub data: TaskData,
}

/// `data` of DescribeLoadBalancersTaskResult, as an object or a one-element array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TaskData {
    /// `{"status": 0}`.
    One(TaskStatus),
    /// `[{"status": 0}]`.
    Many(Vec<TaskStatus>),
}

/// `{"status": n}`: 0 succeeded, 1 failed, 2 running.
#[derive(Debug, Deserialize)]
pub struct TaskStatus {
    /// The status code.
    pub status: Lenient<i64>,
}

impl TaskResultResponse {
    /// The task state, or why the body does not name one.
    pub fn state(&self) -> Result<TaskState, String> {
        let status = match &self.data {
            TaskData::One(s) => s,
            TaskData::Many(list) => match list.as_slice() {
                [one] => one,
                other => return Err(format!("data holds {} task statuses, expected one", other.len())),
            },
        };
        TaskState::from_code(status.status.0)
            .ok_or_else(|| format!("unknown task status {}", status.status.0))
    }
}

/// Decodes the response of `action` from its HTTP status and body: a non-2xx status is [`ClbError::Http`], a
/// non-zero `code` is [`ClbError::Api`], anything that is not the expected JSON is [`ClbError::Decode`].
pub fn decode<T: DeserializeOwned>(action: Action, status: u16, body: &[u8]) -> Result<T, ClbError> {
    if !(200..300).contains(&status) {
        return Err(ClbError::Http { action, status, snippet: snippet(body) });
    }
    let malformed = |reason: String| ClbError::Decode { action, reason, snippet: snippet(body) };
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(malformed("empty body".into())),
        // NB: serde also reads a JSON array into a struct, field by field; `[4100, "x"]` must not pass as an
        // API error, so anything but an object is refused up front.
        Some(b) if *b != b'{' => return Err(malformed("not a JSON object".into())),
        Some(_) => {}
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not a CLB response: {e}")))?;
    let code = envelope.code.ok_or_else(|| malformed("no `code` field".into()))?.0;
    if code != 0 {
        return Err(ClbError::Api {
            action,
            code,
            message: text(envelope.message),
            code_desc: text(envelope.code_desc),
        });
    }
    serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))
}

/// A loosely typed text field as a string (`null` is empty).
fn text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `code` and `requestId` decode from numbers and strings alike.
    #[test]
    fn numbers_and_numeric_strings_both_decode() {
        let a: SubmitResponse =
            decode(Action::DeregisterInstancesFromLoadBalancer, 200, br#"{"code":"0","requestId":"42"}"#)
                .unwrap();
        let b: SubmitResponse =
            decode(Action::DeregisterInstancesFromLoadBalancer, 200, br#"{"code":0,"requestId":42,"x":[1]}"#)
                .unwrap();
        assert_eq!((a.request_id.0, b.request_id.0), (42, 42));
    }

    /// A string error code becomes a typed API error with message and codeDesc.
    #[test]
    fn string_error_code_is_an_api_error() {
        let err = decode::<SubmitResponse>(
            Action::RegisterInstancesWithLoadBalancer,
            200,
            br#"{"code":"5100","message":"try later","codeDesc":"OperationFailed"}"#,
        )
        .unwrap_err();
        assert!(matches!(&err, ClbError::Api { code: 5100, message, code_desc, .. }
            if message == "try later" && code_desc == "OperationFailed"));
    }

    /// The task status accepts the documented object and the "Array" the docs' type column claims.
    #[test]
    fn task_data_as_object_or_array() {
        let obj: TaskResultResponse =
            decode(Action::DescribeLoadBalancersTaskResult, 200, br#"{"code":0,"data":{"status":2}}"#)
                .unwrap();
        let arr: TaskResultResponse =
            decode(Action::DescribeLoadBalancersTaskResult, 200, br#"{"code":0,"data":[{"status":"1"}]}"#)
                .unwrap();
        assert_eq!(obj.state(), Ok(TaskState::Running));
        assert_eq!(arr.state(), Ok(TaskState::Failed));
    }

    /// A backend without a unified ID falls back to the legacy one; one without any ID is rejected.
    #[test]
    fn backend_ids_prefer_the_unified_id() {
        let dto = |un: Option<&str>, legacy: Option<&str>| BackendDto {
            instance_id: legacy.map(Into::into),
            un_instance_id: un.map(Into::into),
            weight: Lenient(10),
            instance_name: None,
            lan_ip: None,
            instance_status: None,
        };
        let b = Backend::try_from(dto(Some("ins-a"), Some("qcvm1"))).unwrap();
        assert_eq!((b.instance_id.as_str(), b.legacy_instance_id.as_deref()), ("ins-a", Some("qcvm1")));
        assert_eq!(Backend::try_from(dto(None, Some("qcvm1"))).unwrap().instance_id, "qcvm1");
        assert!(Backend::try_from(dto(Some(""), None)).is_err());
    }
}
