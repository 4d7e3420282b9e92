//! The TC3-HMAC-SHA256 signer against the vectors Tencent's own Python SDK produced (tests/data, from the project's
//! reference), every intermediate byte for byte, and the last step of the documentation's newer example.

use clb_operator::clb::tc3::{self, Tc3Input};
use serde::Deserialize;

#[derive(Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
    doc_only_checks: Vec<DocCheck>,
}

#[derive(Deserialize)]
struct Vector {
    id: String,
    inputs: Inputs,
    outputs: Outputs,
    doc_expected: Option<String>,
}

#[derive(Deserialize)]
struct Inputs {
    secret_id: String,
    secret_key: String,
    timestamp: i64,
    service: String,
    method: String,
    host: String,
    uri: String,
    content_type: String,
    query_string: String,
    payload: String,
    payload_utf8_hex: String,
}

#[derive(Deserialize)]
struct Outputs {
    hashed_payload: String,
    canonical_request: String,
    hashed_canonical_request: String,
    credential_scope: String,
    string_to_sign: String,
    k_signing_hex: String,
    signature: String,
    authorization: String,
}

#[derive(Deserialize)]
struct DocCheck {
    id: String,
    k_signing_hex: String,
    string_to_sign: String,
    signature: String,
}

fn file() -> VectorFile {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/clb-v3-sign-vectors.json"))
            .expect("vectors file");
    serde_json::from_str(&text).expect("vectors parse")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every vector reproduces byte for byte: hashed payload, canonical request, its hash, the scope, the string to
/// sign, the signing key, the signature and the Authorization header.
#[test]
fn every_vector_reproduces_byte_for_byte() {
    let vectors = file().vectors;
    assert!(vectors.len() >= 12, "all vectors are read");
    for v in &vectors {
        let i = &v.inputs;
        let payload = unhex(&i.payload_utf8_hex);
        assert_eq!(payload, i.payload.as_bytes(), "{}: the payload's bytes", v.id);
        let input = Tc3Input {
            method: &i.method,
            host: &i.host,
            path: &i.uri,
            query: &i.query_string,
            content_type: &i.content_type,
            payload: &payload,
            service: &i.service,
            timestamp: i.timestamp,
        };
        let o = &v.outputs;
        let signed = tc3::sign(&i.secret_key, &input);
        assert_eq!(tc3::sha256_hex(&payload), o.hashed_payload, "{}: hashed payload", v.id);
        assert_eq!(signed.canonical_request, o.canonical_request, "{}: canonical request", v.id);
        assert_eq!(
            tc3::sha256_hex(signed.canonical_request.as_bytes()),
            o.hashed_canonical_request,
            "{}",
            v.id
        );
        assert_eq!(signed.credential_scope, o.credential_scope, "{}: scope", v.id);
        assert_eq!(signed.string_to_sign, o.string_to_sign, "{}: string to sign", v.id);
        let date = tc3::date(i.timestamp);
        assert_eq!(
            hex(&tc3::signing_key(&i.secret_key, &date, &i.service)),
            o.k_signing_hex,
            "{}: key",
            v.id
        );
        assert_eq!(signed.signature, o.signature, "{}: signature", v.id);
        assert_eq!(signed.authorization(&i.secret_id), o.authorization, "{}: Authorization", v.id);
        if let Some(doc) = &v.doc_expected {
            assert_eq!(&signed.signature, doc, "{}: the documentation's value", v.id);
        }
        assert_eq!(tc3::verify(&o.authorization, &i.secret_id, &i.secret_key, &input), Ok(()), "{}", v.id);
    }
}

/// The documentation's newer example signs one more header; its last step (all it publishes) reproduces.
#[test]
fn the_documented_last_step_reproduces() {
    for c in file().doc_only_checks {
        assert_eq!(
            tc3::signature_with_key(&unhex(&c.k_signing_hex), &c.string_to_sign),
            c.signature,
            "{}",
            c.id
        );
    }
}

/// Signing covers the bytes sent, not the fields: the same object serialized in another order is another body,
/// signed and verified as such, and a signature never carries over to the other order.
#[test]
fn signing_follows_the_bytes_sent() {
    let a = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-1"}"#;
    let b = br#"{"ListenerId":"lbl-1","LoadBalancerId":"lb-1"}"#;
    let input = |payload: &'static [u8]| {
        Tc3Input::json_post("clb.tencentcloudapi.com", "clb", payload, 1_700_000_000)
    };
    let (sa, sb) = (tc3::sign("k", &input(a)), tc3::sign("k", &input(b)));
    assert_ne!(sa.signature, sb.signature);
    assert_eq!(tc3::verify(&sa.authorization("id"), "id", "k", &input(a)), Ok(()));
    assert_eq!(tc3::verify(&sb.authorization("id"), "id", "k", &input(b)), Ok(()));
    assert!(tc3::verify(&sa.authorization("id"), "id", "k", &input(b)).is_err());
}
