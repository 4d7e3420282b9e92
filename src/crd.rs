//! The CustomResourceDefinition as YAML, exactly what `crds/` and the chart ship.

use kube::CustomResourceExt;

use crate::api::ClbBackendBinding;

/// The CRD of `ClbBackendBinding`, rendered as one YAML document.
pub fn yaml() -> anyhow::Result<String> {
    let mut crd = serde_json::to_value(ClbBackendBinding::crd())?;
    strip_unsigned_formats(&mut crd);
    Ok(serde_saphyr::to_string(&crd)?)
}

/// schemars marks Rust unsigned integers with `format: uint32`/`uint64`, which are not OpenAPI formats; the API
/// server ignores them at best, so they are dropped (the `minimum: 0` that comes with them stays).
fn strip_unsigned_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("format").and_then(|f| f.as_str()).is_some_and(|f| f.starts_with("uint")) {
                map.remove("format");
            }
            map.values_mut().for_each(strip_unsigned_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_unsigned_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD carries the API server's validation rules with their messages, and no unsigned formats.
    #[test]
    fn crd_has_cel_rules_and_no_unsigned_formats() {
        let yaml = yaml().unwrap();
        for needle in [
            "loadBalancerId is immutable",
            "loadBalancerId must be 'lb-'",
            "exactly one of nodeSelector and podSelector",
            "weight must be between 0 and 100",
            "shortNames",
            "- cbb",
            "- clb",
            "subresources",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle:?}");
        }
        assert!(!yaml.contains("uint"), "unsigned format left in the CRD");
    }
}
