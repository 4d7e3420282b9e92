//! CLB API 3.0 (`clb.tencentcloudapi.com`, Version 2018-03-17) as data: its actions, the JSON it sends and
//! answers (PascalCase, many fields nullable, unknown ones ignored), the response envelope, and how each error
//! code is to be handled. No I/O: the client and the emulator both build on it.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The API version every request names in `X-TC-Version`.
pub const VERSION: &str = "2018-03-17";
/// The public endpoint (the path is always `/`).
pub const DEFAULT_ENDPOINT: &str = "https://clb.tencentcloudapi.com/";
/// The service name in the credential scope: the first label of the endpoint host.
pub const SERVICE: &str = "clb";
/// Most targets per RegisterTargets / DeregisterTargets call.
pub const MAX_TARGETS: usize = 20;
/// Most targets per BatchRegisterTargets / BatchDeregisterTargets call (across listeners).
pub const MAX_BATCH_TARGETS: usize = 500;

/// The actions the operator calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// List load balancers; `Forward` tells application (1) from classic (0).
    DescribeLoadBalancers,
    /// An application CLB's listeners and their layer-7 rules.
    DescribeListeners,
    /// The targets of an application CLB's listeners (or of their rules).
    DescribeTargets,
    /// Bind up to 20 targets to a listener or rule; asynchronous.
    RegisterTargets,
    /// Unbind up to 20 targets from a listener or rule; asynchronous.
    DeregisterTargets,
    /// Bind up to 500 targets across listeners.
    BatchRegisterTargets,
    /// Unbind up to 500 targets across listeners.
    BatchDeregisterTargets,
    /// Change targets' weights (0 stops new connections); asynchronous.
    ModifyTargetWeight,
    /// A classic CLB's backends.
    DescribeClassicalLBTargets,
    /// Add backends to a classic CLB; asynchronous.
    RegisterTargetsWithClassicalLB,
    /// Remove backends from a classic CLB; asynchronous.
    DeregisterTargetsFromClassicalLB,
    /// The state of an asynchronous write, by its RequestId.
    DescribeTaskStatus,
}

impl Action {
    /// The action's name, as sent in `X-TC-Action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DescribeLoadBalancers => "DescribeLoadBalancers",
            Self::DescribeListeners => "DescribeListeners",
            Self::DescribeTargets => "DescribeTargets",
            Self::RegisterTargets => "RegisterTargets",
            Self::DeregisterTargets => "DeregisterTargets",
            Self::BatchRegisterTargets => "BatchRegisterTargets",
            Self::BatchDeregisterTargets => "BatchDeregisterTargets",
            Self::ModifyTargetWeight => "ModifyTargetWeight",
            Self::DescribeClassicalLBTargets => "DescribeClassicalLBTargets",
            Self::RegisterTargetsWithClassicalLB => "RegisterTargetsWithClassicalLB",
            Self::DeregisterTargetsFromClassicalLB => "DeregisterTargetsFromClassicalLB",
            Self::DescribeTaskStatus => "DescribeTaskStatus",
        }
    }

    /// Whether the action is a write whose RequestId is a task to poll.
    pub fn is_async_write(self) -> bool {
        matches!(
            self,
            Self::RegisterTargets
                | Self::DeregisterTargets
                | Self::BatchRegisterTargets
                | Self::BatchDeregisterTargets
                | Self::ModifyTargetWeight
                | Self::RegisterTargetsWithClassicalLB
                | Self::DeregisterTargetsFromClassicalLB
        )
    }
}

/// Whether `action` (by name) is one of the writes whose RequestId is a task.
pub fn is_write(action: &str) -> bool {
    ACTIONS_BY_NAME.iter().any(|a| a.as_str() == action && a.is_async_write())
}

const ACTIONS_BY_NAME: [Action; 7] = [
    Action::RegisterTargets,
    Action::DeregisterTargets,
    Action::BatchRegisterTargets,
    Action::BatchDeregisterTargets,
    Action::ModifyTargetWeight,
    Action::RegisterTargetsWithClassicalLB,
    Action::DeregisterTargetsFromClassicalLB,
];

/// How an error code is to be handled, after the reference's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (rate limit, the CLB busy with another task, server trouble): retry with backoff.
    Retry,
    /// The timestamp was too far from the server's clock: sign again with a fresh one, once.
    Resign,
    /// The credentials or the permissions are wrong: do not retry until they change.
    Auth,
    /// The load balancer, listener or rule does not exist: for a deregistration, nothing is left to remove.
    Gone,
    /// A plain `InvalidParameter`: also what removing a target that is no longer bound answers, so a
    /// deregistration settles it by reading the targets again.
    Ambiguous,
    /// The request is wrong or over a quota: retrying the same request cannot help.
    Invalid,
}

impl ErrorClass {
    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Retry => "transient",
            Self::Resign => "expired",
            Self::Auth => "auth",
            Self::Gone => "not_found",
            Self::Ambiguous | Self::Invalid => "invalid_request",
        }
    }
}

/// The class of an API 3.0 error code (`Error.Code`).
pub fn classify(code: &str) -> ErrorClass {
    let family = code.split('.').next().unwrap_or(code);
    match (code, family) {
        ("AuthFailure.SignatureExpire", _) => ErrorClass::Resign,
        (_, "AuthFailure" | "UnauthorizedOperation") => ErrorClass::Auth,
        (_, "RequestLimitExceeded" | "InternalError" | "ServiceUnavailable" | "ResourceUnavailable") => {
            ErrorClass::Retry
        }
        ("FailedOperation.ResourceInOperating", _) => ErrorClass::Retry,
        ("InvalidParameter.LBIdNotFound" | "InvalidParameter.ListenerIdNotFound", _) => ErrorClass::Gone,
        ("InvalidParameter.LocationNotFound", _) => ErrorClass::Gone,
        ("InvalidParameter", _) => ErrorClass::Ambiguous,
        _ => ErrorClass::Invalid,
    }
}

/// A target on a listener or rule: a CVM by `InstanceId` (its primary address) or an address by `EniIp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Target {
    /// The backend port (e.g. a NodePort).
    pub port: u16,
    /// The CVM instance, `ins-...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// An address, for targets that are not a CVM's primary address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_ip: Option<String>,
    /// 0..100 (10 if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Where on an application CLB targets go: a listener, or one layer-7 rule of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetsRequest {
    /// The load balancer, `lb-...`.
    pub load_balancer_id: String,
    /// The listener, `lbl-...`.
    pub listener_id: String,
    /// At most [`MAX_TARGETS`].
    pub targets: Vec<Target>,
    /// A layer-7 rule by id (wins over `Domain` + `Url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// A layer-7 rule's domain, with `Url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// A layer-7 rule's URL path, with `Domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// ModifyTargetWeight only: the weight of targets that give none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A target of a batch call: any listener of the load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchTarget {
    /// The listener, `lbl-...`.
    pub listener_id: String,
    /// The backend port.
    pub port: u16,
    /// The CVM instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// An address instead of a CVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_ip: Option<String>,
    /// 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The layer-7 rule (required on layer-7 listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
}

/// A backend as DescribeTargets and DescribeClassicalLBTargets list it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Backend {
    /// `CVM`, `ENI`, ...
    pub r#type: Option<String>,
    /// The CVM instance, when the backend is one.
    pub instance_id: Option<String>,
    /// The backend port (absent on classic CLBs).
    pub port: Option<u16>,
    /// Its weight.
    pub weight: Option<u32>,
    /// Its private addresses.
    pub private_ip_addresses: Option<Vec<String>>,
}

/// A layer-7 rule with its targets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuleTargets {
    /// The rule's id, `loc-...`.
    pub location_id: String,
    /// Its domain.
    pub domain: Option<String>,
    /// Its URL path.
    pub url: Option<String>,
    /// Its targets.
    pub targets: Option<Vec<Backend>>,
}

/// A listener with its targets (layer 4) or its rules' targets (layer 7).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListenerBackend {
    /// The listener's id.
    pub listener_id: String,
    /// `TCP`, `UDP`, `HTTP`, `HTTPS`, ...
    pub protocol: Option<String>,
    /// The listener's port.
    pub port: Option<u16>,
    /// Layer-4 targets.
    pub targets: Option<Vec<Backend>>,
    /// Layer-7 rules with their targets.
    pub rules: Option<Vec<RuleTargets>>,
}

/// DescribeTargets' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeTargetsResponse {
    /// The listeners asked for.
    pub listeners: Option<Vec<ListenerBackend>>,
}

/// DescribeClassicalLBTargets' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClassicalTargetsResponse {
    /// The backends.
    pub targets: Option<Vec<Backend>>,
}

/// A load balancer as DescribeLoadBalancers lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoadBalancer {
    /// Its id.
    pub load_balancer_id: String,
    /// Its name.
    pub load_balancer_name: Option<String>,
    /// 1: an application CLB (listeners and targets); 0: a classic CLB.
    pub forward: Option<i64>,
}

/// DescribeLoadBalancers' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeLoadBalancersResponse {
    /// All matches, whatever the page size.
    pub total_count: Option<u64>,
    /// This page.
    pub load_balancer_set: Option<Vec<LoadBalancer>>,
}

/// Where an asynchronous task is, as DescribeTaskStatus says (`Status` 0, 1 or 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// 0.
    Succeeded,
    /// 1.
    Failed,
    /// 2.
    Running,
}

/// DescribeTaskStatus' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatusResponse {
    /// 0 succeeded, 1 failed, 2 running.
    pub status: i64,
    /// Why it failed, when it did.
    pub message: Option<String>,
}

impl TaskStatusResponse {
    /// The status, or `None` for a code the documentation does not list.
    pub fn state(&self) -> Option<TaskStatus> {
        match self.status {
            0 => Some(TaskStatus::Succeeded),
            1 => Some(TaskStatus::Failed),
            2 => Some(TaskStatus::Running),
            _ => None,
        }
    }
}

/// The answer of a batch call: the listeners whose targets failed (empty: all applied).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchResponse {
    /// Listeners that failed.
    pub fail_listener_id_set: Option<Vec<String>>,
    /// Why, as text.
    pub message: Option<String>,
}

/// An answer with nothing but its RequestId (the asynchronous writes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Empty {}

/// An error the API answered with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    /// E.g. `AuthFailure.SignatureFailure`; see [`classify`].
    pub code: String,
    /// Human-readable, changes over time: never matched on.
    pub message: String,
}

/// A decoded answer: the action's fields, or its error, with the RequestId either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<T> {
    /// The RequestId (for an asynchronous write, the task to poll).
    pub request_id: String,
    /// The fields, or the error.
    pub result: Result<T, ApiError>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Response")]
    response: serde_json::Map<String, serde_json::Value>,
}

/// Decodes `{"Response": {..., "RequestId": ...}}`, with an `Error` object meaning failure. `Err` holds why the
/// body is not such an envelope.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<Reply<T>, String> {
    let Envelope { mut response } =
        serde_json::from_slice(body).map_err(|e| format!("not a Response envelope: {e}"))?;
    let request_id = match response.remove("RequestId") {
        Some(serde_json::Value::String(id)) => id,
        _ => return Err("no RequestId".to_owned()),
    };
    let result = match response.remove("Error") {
        Some(error) => Err(serde_json::from_value(error).map_err(|e| format!("malformed Error: {e}"))?),
        None => Ok(serde_json::from_value(serde_json::Value::Object(response)).map_err(|e| e.to_string())?),
    };
    Ok(Reply { request_id, result })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: every code of the reference's error table lands in its class.
    #[test]
    fn error_codes_are_classified_as_the_reference_says() {
        use ErrorClass::*;
        let table = [
            ("AuthFailure.SignatureFailure", Auth),
            ("AuthFailure.SignatureExpire", Resign),
            ("AuthFailure.SecretIdNotFound", Auth),
            ("AuthFailure.TokenFailure", Auth),
            ("UnauthorizedOperation", Auth),
            ("RequestLimitExceeded", Retry),
            ("RequestLimitExceeded.UinLimitExceeded", Retry),
            ("FailedOperation.ResourceInOperating", Retry),
            ("InternalError", Retry),
            ("ServiceUnavailable", Retry),
            ("InvalidParameter.LBIdNotFound", Gone),
            ("InvalidParameter.ListenerIdNotFound", Gone),
            ("InvalidParameter.LocationNotFound", Gone),
            ("InvalidParameter", Ambiguous),
            ("InvalidParameter.FormatError", Invalid),
            ("InvalidParameterValue.Length", Invalid),
            ("MissingParameter", Invalid),
            ("LimitExceeded", Invalid),
            ("FailedOperation", Invalid),
        ];
        for (code, class) in table {
            assert_eq!(classify(code), class, "{code}");
        }
    }

    /// The envelope: fields and RequestId on success; Error and RequestId on failure; unknown fields ignored;
    /// nullable fields absent or null; a body that is no envelope is an error, never a panic.
    #[test]
    fn the_envelope_decodes() {
        let ok =
            br#"{"Response":{"Status":2,"Message":null,"LoadBalancerIds":null,"New":1,"RequestId":"6f6e"}}"#;
        let reply = decode::<TaskStatusResponse>(ok).unwrap();
        assert_eq!(reply.request_id, "6f6e");
        assert_eq!(reply.result.unwrap().state(), Some(TaskStatus::Running));
        let err = br#"{"Response":{"Error":{"Code":"InvalidParameter.LBIdNotFound","Message":"lb-x"},"RequestId":"a1"}}"#;
        let reply = decode::<Empty>(err).unwrap();
        assert_eq!(reply.result.unwrap_err().code, "InvalidParameter.LBIdNotFound");
        let targets = br#"{"Response":{"Listeners":[{"ListenerId":"lbl-1","Protocol":"HTTP","Port":80,"Targets":null,
            "Rules":[{"LocationId":"loc-1","Domain":"a.com","Url":"/","Targets":[{"Type":"CVM","InstanceId":"ins-a",
            "Port":30080,"Weight":10,"PrivateIpAddresses":["10.0.0.1"]}]}]}],"RequestId":"r"}}"#;
        let listeners =
            decode::<DescribeTargetsResponse>(targets).unwrap().result.unwrap().listeners.unwrap();
        let rule = &listeners[0].rules.as_ref().unwrap()[0];
        assert_eq!(rule.targets.as_ref().unwrap()[0].instance_id.as_deref(), Some("ins-a"));
        assert!(decode::<Empty>(b"<html>").is_err());
        assert!(decode::<Empty>(br#"{"Response":{}}"#).is_err(), "no RequestId");
    }

    /// Requests serialize as the API spells them: PascalCase, unset options left out.
    #[test]
    fn requests_serialize_in_the_api_vocabulary() {
        let request = TargetsRequest {
            load_balancer_id: "lb-1".into(),
            listener_id: "lbl-1".into(),
            targets: vec![Target {
                port: 30080,
                instance_id: Some("ins-a".into()),
                eni_ip: None,
                weight: Some(0),
            }],
            location_id: Some("loc-1".into()),
            domain: None,
            url: None,
            weight: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-1","Targets":[{"Port":30080,"InstanceId":"ins-a","Weight":0}],"LocationId":"loc-1"}"#
        );
        assert!(Action::DeregisterTargets.is_async_write() && !Action::DescribeTargets.is_async_write());
    }
}
