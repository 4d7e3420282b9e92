//! Pure TC3-HMAC-SHA256 request signing for CLB API 3.0, byte for byte as Tencent's SDKs do it: the canonical
//! request over the exact bytes sent, a credential scope from the UTC date of the timestamp, and the key chain
//! `TC3`+key -> date -> service -> `tc3_request`. Time is an input, so everything here is deterministic.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The algorithm name, first in the string to sign and the Authorization header.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The headers the SDKs sign, and so the ones this signer signs (a verifier accepts exactly these).
pub const SIGNED_HEADERS: &str = "content-type;host";
/// The last element of every credential scope.
pub const TERMINATOR: &str = "tc3_request";

/// What a TC3 signature covers: everything that goes on the wire except the unsigned `X-TC-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tc3Input<'a> {
    /// `POST` or `GET`, as sent.
    pub method: &'a str,
    /// The Host header value as sent (with `:port` if one is sent).
    pub host: &'a str,
    /// The path, `/` for every API 3.0 endpoint.
    pub path: &'a str,
    /// For GET, the query string exactly as sent (after `?`); empty for POST.
    pub query: &'a str,
    /// The Content-Type header value exactly as sent.
    pub content_type: &'a str,
    /// The body bytes exactly as sent (empty for GET).
    pub payload: &'a [u8],
    /// The service, the first label of the endpoint host (`clb`).
    pub service: &'a str,
    /// `X-TC-Timestamp`, Unix seconds.
    pub timestamp: i64,
}

impl<'a> Tc3Input<'a> {
    /// A POST of a JSON `payload` to `/` of `host` for `service`, as the client sends every call.
    pub fn json_post(host: &'a str, service: &'a str, payload: &'a [u8], timestamp: i64) -> Self {
        Self {
            method: "POST",
            host,
            path: "/",
            query: "",
            content_type: "application/json",
            payload,
            service,
            timestamp,
        }
    }
}

/// Every intermediate of a signature, for logs of mismatches and for tests against published vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tc3Signature {
    /// The canonical request, as hashed.
    pub canonical_request: String,
    /// `<date>/<service>/tc3_request`.
    pub credential_scope: String,
    /// The string to sign, as HMACed.
    pub string_to_sign: String,
    /// The signature, lowercase hex.
    pub signature: String,
}

impl Tc3Signature {
    /// The Authorization header value, byte for byte as the SDKs write it.
    pub fn authorization(&self, secret_id: &str) -> String {
        format!(
            "{ALGORITHM} Credential={secret_id}/{}, SignedHeaders={SIGNED_HEADERS}, Signature={}",
            self.credential_scope, self.signature
        )
    }
}

/// `YYYY-MM-DD` of `timestamp` in UTC (local time would break every call from 00:00 to 08:00 in UTC+8).
pub fn date(timestamp: i64) -> String {
    match jiff::Timestamp::from_second(timestamp) {
        Ok(t) => t.strftime("%Y-%m-%d").to_string(),
        // Out of jiff's range (about ±10,000 years): no real clock gets there; sign something that never verifies.
        Err(_) => "0000-00-00".to_owned(),
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // NB: HMAC takes keys of any length, so `new_from_slice` cannot fail; `hmac` keeps the `Result` only because
    // `KeyInit` is shared with fixed-key ciphers.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The canonical request: method, path, query, the two signed headers, the signed header names and the hashed
/// payload, joined with newlines. Header values are used as sent.
pub fn canonical_request(input: &Tc3Input<'_>) -> String {
    format!(
        "{}\n{}\n{}\ncontent-type:{}\nhost:{}\n\n{SIGNED_HEADERS}\n{}",
        input.method,
        input.path,
        input.query,
        input.content_type,
        input.host,
        sha256_hex(input.payload)
    )
}

/// The signing key: `HMAC(HMAC(HMAC("TC3" + key, date), service), "tc3_request")`.
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    hmac(&k_service, TERMINATOR.as_bytes())
}

/// The last step: the lowercase hex HMAC of the string to sign under the signing key.
pub fn signature_with_key(signing_key: &[u8], string_to_sign: &str) -> String {
    hex(&hmac(signing_key, string_to_sign.as_bytes()))
}

/// Signs `input` with `secret_key`.
pub fn sign(secret_key: &str, input: &Tc3Input<'_>) -> Tc3Signature {
    let date = date(input.timestamp);
    let credential_scope = format!("{date}/{}/{TERMINATOR}", input.service);
    let canonical_request = canonical_request(input);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{credential_scope}\n{}",
        input.timestamp,
        sha256_hex(canonical_request.as_bytes())
    );
    let signature = signature_with_key(&signing_key(secret_key, &date, input.service), &string_to_sign);
    Tc3Signature { canonical_request, credential_scope, string_to_sign, signature }
}

/// Checks a received Authorization header against the request, in constant time: the algorithm, the
/// SecretId, a credential scope of the timestamp's date and `service`, the signed headers the SDKs use, and
/// the signature. Returns the reason it does not verify.
pub fn verify(
    authorization: &str,
    secret_id: &str,
    secret_key: &str,
    input: &Tc3Input<'_>,
) -> Result<(), &'static str> {
    let expected = sign(secret_key, input);
    let rest = authorization
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or("not TC3-HMAC-SHA256")?;
    let mut parts = rest.split(", ");
    let credential = parts.next().and_then(|p| p.strip_prefix("Credential=")).ok_or("no Credential")?;
    let headers = parts.next().and_then(|p| p.strip_prefix("SignedHeaders=")).ok_or("no SignedHeaders")?;
    let signature = parts.next().and_then(|p| p.strip_prefix("Signature=")).ok_or("no Signature")?;
    if parts.next().is_some() {
        return Err("unexpected fields");
    }
    let (id, scope) = credential.split_once('/').ok_or("malformed Credential")?;
    if id != secret_id {
        return Err("unknown SecretId");
    }
    if scope != expected.credential_scope {
        return Err("credential scope does not match the timestamp's date and the service");
    }
    if headers != SIGNED_HEADERS {
        return Err("signed headers are not content-type;host");
    }
    // Constant time, so the comparison tells nothing about how much of a forged signature was right.
    let mismatch = signature.len() != expected.signature.len()
        || signature.bytes().zip(expected.signature.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0;
    if mismatch { Err("signature mismatch") } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &'static [u8], timestamp: i64) -> Tc3Input<'static> {
        Tc3Input::json_post("clb.tencentcloudapi.com", "clb", payload, timestamp)
    }

    /// The date is UTC: one second either side of midnight gives two scopes.
    #[test]
    fn the_scope_date_is_utc() {
        assert_eq!(date(1_700_006_399), "2023-11-14");
        assert_eq!(date(1_700_006_400), "2023-11-15");
    }

    /// What is signed verifies; a changed byte, another key, another SecretId or another day does not.
    #[test]
    fn verify_accepts_what_sign_makes_and_nothing_else() {
        let body = br#"{"LoadBalancerId":"lb-1"}"#;
        let signed = sign("key", &input(body, 1_700_000_000));
        let auth = signed.authorization("AKID1");
        assert_eq!(verify(&auth, "AKID1", "key", &input(body, 1_700_000_000)), Ok(()));
        assert_eq!(
            verify(&auth, "AKID1", "key", &input(br#"{"LoadBalancerId":"lb-2"}"#, 1_700_000_000)),
            Err("signature mismatch")
        );
        assert_eq!(verify(&auth, "AKID1", "other", &input(body, 1_700_000_000)), Err("signature mismatch"));
        assert_eq!(verify(&auth, "AKID2", "key", &input(body, 1_700_000_000)), Err("unknown SecretId"));
        assert!(verify(&auth, "AKID1", "key", &input(body, 1_700_100_000)).is_err(), "another day");
        assert!(
            verify("TC3-HMAC-SHA256 Credential=AKID1", "AKID1", "key", &input(body, 1_700_000_000)).is_err()
        );
    }
}
