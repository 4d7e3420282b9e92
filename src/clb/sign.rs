//! Pure CLB API v2 request signing, byte for byte as Tencent's own SDK does it; the client signs with it and the
//! emulator verifies with it, so the two can never drift apart.
//!
//! Source string: `METHOD` + host + path + `?` + `name=value` pairs joined with `&`, sorted by name in byte order,
//! with raw (not URL-encoded) values and `_` in names signed as `.`. The digest is HMAC-SHA256 only when the
//! `SignatureMethod` parameter is exactly `HmacSHA256`, HMAC-SHA1 otherwise; the result is standard base64.
//! Time and nonce are ordinary parameters chosen by the caller, so everything here is deterministic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{EagerHash, Hmac, KeyInit, Mac};

/// Name of the parameter that carries the signature; it is never itself signed.
pub const SIGNATURE: &str = "Signature";
/// Name of the parameter that selects the digest.
pub const SIGNATURE_METHOD: &str = "SignatureMethod";

/// The HMAC digest a request is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SignMethod {
    /// HMAC-SHA1: what the API assumes when `SignatureMethod` is absent or anything but `HmacSHA256`, and the
    /// default of Tencent's own v2 SDK.
    #[default]
    HmacSha1,
    /// HMAC-SHA256, used only when `SignatureMethod` is exactly `HmacSHA256`.
    HmacSha256,
}

impl std::str::FromStr for SignMethod {
    type Err = String;

    /// Parses the name as the API spells it (HmacSHA1, HmacSHA256).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "HmacSHA1" => Ok(Self::HmacSha1),
            "HmacSHA256" => Ok(Self::HmacSha256),
            other => Err(format!("`{other}` is not one of HmacSHA1, HmacSHA256")),
        }
    }
}

impl std::fmt::Display for SignMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SignMethod {
    /// The value of the `SignatureMethod` parameter for this digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha1 => "HmacSHA1",
            Self::HmacSha256 => "HmacSHA256",
        }
    }

    /// The digest the server uses for these parameters: HMAC-SHA256 only if `SignatureMethod` is exactly
    /// `HmacSHA256` (case-sensitive, as documented), HMAC-SHA1 in every other case.
    pub fn of_params(params: &[(String, String)]) -> Self {
        let sha256 = params.iter().any(|(name, value)| name == SIGNATURE_METHOD && value == "HmacSHA256");
        if sha256 { Self::HmacSha256 } else { Self::HmacSha1 }
    }
}

/// Builds the exact string that is fed to HMAC: `method` (upper-cased) + `host` + `path` + `?` + the sorted
/// `name=value` pairs. A `Signature` parameter, if present, is left out, so a verifier can pass every decoded
/// parameter it received.
pub fn source_string(method: &str, host: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(name, _)| name != SIGNATURE)
        .map(|(name, value)| (name.replace('_', "."), value.as_str()))
        .collect();
    // `String`'s `Ord` is byte order, which is what Tencent's SDKs use (uppercase before lowercase,
    // `backends.10.*` before `backends.2.*`). Sorting the value too makes duplicate names order-independent.
    pairs.sort_unstable();
    let mut out = String::with_capacity(method.len() + host.len() + path.len() + 1 + 32 * pairs.len());
    out.push_str(&method.to_ascii_uppercase());
    out.push_str(host);
    out.push_str(path);
    out.push('?');
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Signs a request: standard (padded) base64 of the HMAC of [`source_string`] keyed with the UTF-8 bytes of
/// `secret_key`, with the digest chosen by [`SignMethod::of_params`]. URL-encode the result when sending it.
pub fn sign(method: &str, host: &str, path: &str, params: &[(String, String)], secret_key: &str) -> String {
    let message = source_string(method, host, path, params);
    let digest = match SignMethod::of_params(params) {
        SignMethod::HmacSha1 => mac::<sha1::Sha1>(secret_key, &message).finalize().into_bytes().to_vec(),
        SignMethod::HmacSha256 => mac::<sha2::Sha256>(secret_key, &message).finalize().into_bytes().to_vec(),
    };
    BASE64.encode(digest)
}

/// Checks a received base64 `signature` against the parameters, in constant time. A signature that is not
/// valid base64 simply does not verify.
pub fn verify(
    method: &str,
    host: &str,
    path: &str,
    params: &[(String, String)],
    secret_key: &str,
    signature: &str,
) -> bool {
    let Ok(received) = BASE64.decode(signature) else {
        return false;
    };
    let message = source_string(method, host, path, params);
    match SignMethod::of_params(params) {
        SignMethod::HmacSha1 => mac::<sha1::Sha1>(secret_key, &message).verify_slice(&received).is_ok(),
        SignMethod::HmacSha256 => mac::<sha2::Sha256>(secret_key, &message).verify_slice(&received).is_ok(),
    }
}

/// URL-encodes parameters for the GET query or the POST body the way Python's `urlencode` does
/// (`application/x-www-form-urlencoded`: space as `+`, every reserved byte percent-encoded).
pub fn urlencode(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

/// An HMAC over `message` keyed with `key`.
fn mac<D: EagerHash>(key: &str, message: &str) -> Hmac<D> {
    // NB: HMAC is defined for keys of any length (long keys are hashed), so `new_from_slice` never fails;
    // `hmac` keeps the `Result` only because `KeyInit` is shared with fixed-key ciphers.
    let mut mac = match Hmac::<D>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(message.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Underscores in names are signed as dots, values keep theirs, and `Signature` is never signed.
    #[test]
    fn underscore_names_are_signed_as_dots_and_signature_is_excluded() {
        let p = params(&[("Placement_Zone", "CN_GUANGZHOU"), ("Signature", "x"), ("Action", "A")]);
        assert_eq!(source_string("get", "h", "/p", &p), "GETh/p?Action=A&Placement.Zone=CN_GUANGZHOU");
    }

    /// Byte order puts uppercase first and `backends.10` before `backends.2`.
    #[test]
    fn names_sort_in_byte_order() {
        let p = params(&[("backends.2.instanceId", "b"), ("backends.10.instanceId", "a"), ("Nonce", "1")]);
        assert_eq!(
            source_string("POST", "h", "/", &p),
            "POSTh/?Nonce=1&backends.10.instanceId=a&backends.2.instanceId=b"
        );
    }

    /// Only the exact value `HmacSHA256` selects SHA-256.
    #[test]
    fn sha256_only_for_exact_signature_method() {
        assert_eq!(
            SignMethod::of_params(&params(&[("SignatureMethod", "HmacSHA256")])),
            SignMethod::HmacSha256
        );
        assert_eq!(
            SignMethod::of_params(&params(&[("SignatureMethod", "hmacsha256")])),
            SignMethod::HmacSha1
        );
        assert_eq!(SignMethod::of_params(&[]), SignMethod::HmacSha1);
    }

    /// What `sign` produces, `verify` accepts; a changed byte or garbage is rejected.
    #[test]
    fn verify_round_trips_and_rejects_tampering() {
        let p = params(&[("Action", "X"), ("SignatureMethod", "HmacSHA256")]);
        let sig = sign("GET", "h", "/", &p, "k");
        assert!(verify("GET", "h", "/", &p, "k", &sig));
        assert!(!verify("POST", "h", "/", &p, "k", &sig));
        assert!(!verify("GET", "h", "/", &p, "k2", &sig));
        assert!(!verify("GET", "h", "/", &p, "k", "not base64!"));
    }
}
