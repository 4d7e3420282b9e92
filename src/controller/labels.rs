//! Compact label sets for the pod and node caches, and label selectors tested against them.

use std::fmt;

use kube::core::{Expression, Selector};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap,
};

/// An object's labels as one sorted boxed slice. A `BTreeMap` allocates a node for eleven entries even for a
/// pod's two labels (about 550 bytes before the strings), which at 20,000 cached pods is most of what the
/// cache weighs; this costs 32 bytes a label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`, if the object has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    /// Whether the object has `key`, whatever its value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every label, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Labels {
    /// Sorted by key; of repeated keys the last one counts, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> =
            pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // Reversed, so that the stable sort puts the last of repeated keys first and `dedup_by` keeps it.
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, kept| later.0 == kept.0);
        Self(pairs.into_boxed_slice())
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    /// A JSON map of strings (`null` is no labels).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of labels")
            }

            fn visit_unit<E>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }

            fn visit_none<E>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Labels, D::Error> {
                d.deserialize_map(Pairs)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(pair) = map.next_entry::<Box<str>, Box<str>>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        d.deserialize_option(Pairs)
    }
}

/// A label selector as a list of requirements, tested against [`Labels`]. kube's own `Selector::matches` takes
/// only a `BTreeMap`, which the caches no longer hold; the six requirement kinds are tested here with the same
/// meaning (Kubernetes' `labels.Requirement.Matches`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelQuery(Vec<Expression>);

impl From<Selector> for LabelQuery {
    fn from(selector: Selector) -> Self {
        Self(selector.into_iter().collect())
    }
}

impl LabelQuery {
    /// Whether `labels` meet every requirement (an empty query selects everything).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => labels.contains_key(key),
            Expression::DoesNotExist(key) => !labels.contains_key(key),
            Expression::Equal(key, value) => labels.get(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => labels.get(key) != Some(value.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    /// Labels decode from a map or null, sort by key, look up by key and encode as the same map.
    #[test]
    fn labels_decode_look_up_and_encode() {
        let labels: Labels = serde_json::from_str(r#"{"b": "2", "a": "1", "c": ""}"#).unwrap();
        assert_eq!(labels.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2"), ("c", "")]);
        assert_eq!((labels.get("b"), labels.get("z")), (Some("2"), None));
        assert!(labels.contains_key("c") && !labels.contains_key("d"));
        assert_eq!(serde_json::to_string(&labels).unwrap(), r#"{"a":"1","b":"2","c":""}"#);
        assert_eq!(serde_json::from_str::<Labels>("null").unwrap(), Labels::default());
        assert!(serde_json::from_str::<Labels>(r#"{"a": 1}"#).is_err(), "values are strings");
        let repeated: Labels = [("a", "1"), ("b", "x"), ("a", "2")].into_iter().collect();
        assert_eq!(repeated.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "x")], "the last one counts");
    }

    /// Every kind of requirement gives the answer kube's matcher gives on the same labels.
    #[test]
    fn queries_agree_with_kubes_matcher() {
        let req = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let selectors = [
            LabelSelector { match_labels: Some([("app".into(), "web".into())].into()), ..Default::default() },
            LabelSelector {
                match_expressions: Some(vec![req("tier", "In", &["a", "b"]), req("zone", "NotIn", &["x"])]),
                ..Default::default()
            },
            LabelSelector {
                match_expressions: Some(vec![req("app", "Exists", &[]), req("gone", "DoesNotExist", &[])]),
                ..Default::default()
            },
            LabelSelector::default(),
        ];
        let label_sets: [&[(&str, &str)]; 5] = [
            &[],
            &[("app", "web")],
            &[("app", "db"), ("tier", "a")],
            &[("tier", "b"), ("zone", "x")],
            &[("app", "web"), ("tier", "a"), ("gone", "")],
        ];
        for sel in selectors {
            let kube = Selector::try_from(sel.clone()).unwrap();
            let ours = LabelQuery::from(kube.clone());
            for set in label_sets {
                let map: BTreeMap<String, String> =
                    set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                let compact: Labels = set.iter().copied().collect();
                assert_eq!(ours.matches(&compact), kube.matches(&map), "{sel:?} on {set:?}");
            }
        }
        let not_equal: Selector = Expression::NotEqual("app".into(), "web".into()).into();
        let ours = LabelQuery::from(not_equal);
        assert!(ours.matches(&[("app", "db")].into_iter().collect()) && ours.matches(&Labels::default()));
        assert!(!ours.matches(&[("app", "web")].into_iter().collect()));
    }
}
