//! Pure: the spec's listeners resolved to placements (listener, rule, port), and checked against what the load
//! balancer is, so that a wrong spec is reported before anything is written.

use std::collections::BTreeMap;

use super::status::{Problem, reasons};
use crate::{
    api::ListenerRef,
    clb::cloud::{Kind, LoadBalancerView, Placement},
};

/// Whether resolving the listeners needs the load balancer's rules (a rule named by domain and url).
pub fn need_rules(listeners: &[ListenerRef]) -> bool {
    listeners.iter().any(|l| l.location_id.is_none() && l.domain.is_some())
}

/// The placements the spec asks for. `view` resolves rules named by domain and url; `node_ports` holds the
/// NodePorts of the Services named, by (Service, port).
pub fn placements(
    listeners: &[ListenerRef],
    view: Option<&LoadBalancerView>,
    node_ports: &BTreeMap<(String, i32), i32>,
) -> Result<Vec<Placement>, Problem> {
    let mut out = Vec::with_capacity(listeners.len());
    for l in listeners {
        let port = match (&l.port, &l.service) {
            (Some(p), _) => *p,
            (None, Some(s)) => *node_ports.get(&(s.name.clone(), s.port)).ok_or_else(|| Problem {
                reason: reasons::SERVICE_PORT_NOT_FOUND,
                message: format!(
                    "listener {}: Service {} has no NodePort for port {} (is it of type NodePort or LoadBalancer?)",
                    l.listener_id, s.name, s.port
                ),
            })?,
            (None, None) => return Err(invalid(format!("listener {} sets neither port nor service", l.listener_id))),
        };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("listener {}: port {port} is outside 1..65535", l.listener_id)))?;
        let location_id = match (&l.location_id, &l.domain, &l.url, view) {
            (Some(loc), _, _, _) => Some(loc.clone()),
            (None, Some(domain), Some(url), Some(view)) => Some(rule_by_name(view, l, domain, url)?),
            (None, Some(_), Some(_), None) => {
                return Err(invalid(format!("listener {}: its rule cannot be resolved yet", l.listener_id)));
            }
            _ => None,
        };
        out.push(Placement { listener_id: l.listener_id.clone(), location_id, port });
    }
    Ok(out)
}

fn rule_by_name(
    view: &LoadBalancerView,
    l: &ListenerRef,
    domain: &str,
    url: &str,
) -> Result<String, Problem> {
    let listener =
        view.listeners.iter().find(|x| x.listener_id == l.listener_id).ok_or_else(|| not_found(l))?;
    listener
        .rules
        .iter()
        .find(|r| r.domain.as_deref() == Some(domain) && r.url.as_deref() == Some(url))
        .map(|r| r.location_id.clone())
        .ok_or_else(|| Problem {
            reason: reasons::LISTENER_NOT_FOUND,
            message: format!("listener {} has no rule for domain {domain} and url {url}", l.listener_id),
        })
}

fn invalid(message: String) -> Problem {
    Problem { reason: reasons::INVALID_SPEC, message }
}

fn not_found(l: &ListenerRef) -> Problem {
    Problem {
        reason: reasons::LISTENER_NOT_FOUND,
        message: format!("listener {} is not on the load balancer", l.listener_id),
    }
}

/// Checks the spec against what load balancer `lb` is: listeners belong on an application CLB and must be on
/// it (with their rules, for layer-7 listeners, and none on layer-4 ones); a classic CLB takes none.
pub fn check(lb: &str, view: Option<&LoadBalancerView>, listeners: &[ListenerRef]) -> Result<(), Problem> {
    let view = view.ok_or_else(|| Problem {
        reason: reasons::LOAD_BALANCER_NOT_FOUND,
        message: format!("load balancer {lb} does not exist"),
    })?;
    let mismatch = |message: String| Problem { reason: reasons::LOAD_BALANCER_TYPE_MISMATCH, message };
    match (view.kind, listeners.is_empty()) {
        (Kind::Classic, false) => {
            return Err(mismatch(format!(
                "{lb} is a classic CLB, which has no listeners to bind to: remove spec.listeners"
            )));
        }
        (Kind::Application, true) => {
            return Err(mismatch(format!(
                "{lb} is an application CLB: name the listeners to bind to in spec.listeners"
            )));
        }
        _ => {}
    }
    for l in listeners {
        let Some(listener) = view.listeners.iter().find(|x| x.listener_id == l.listener_id) else {
            return Err(not_found(l));
        };
        let names_rule = l.location_id.is_some() || l.domain.is_some();
        match (listener.is_layer7(), names_rule) {
            (true, false) => {
                return Err(invalid(format!(
                    "listener {} is layer 7 ({}): set locationId, or domain and url",
                    l.listener_id,
                    listener.protocol.as_deref().unwrap_or("HTTP")
                )));
            }
            (false, true) => {
                return Err(invalid(format!("listener {} is layer 4: it has no rules", l.listener_id)));
            }
            _ => {}
        }
        if let Some(loc) = &l.location_id
            && !listener.rules.iter().any(|r| &r.location_id == loc)
        {
            return Err(Problem {
                reason: reasons::LISTENER_NOT_FOUND,
                message: format!("listener {} has no rule {loc}", l.listener_id),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clb::cloud::{Listener, Rule};

    fn listener(id: &str, port: Option<i32>) -> ListenerRef {
        ListenerRef {
            listener_id: id.into(),
            port,
            service: None,
            location_id: None,
            domain: None,
            url: None,
        }
    }

    fn view() -> LoadBalancerView {
        LoadBalancerView {
            kind: Kind::Application,
            listeners: vec![
                Listener { listener_id: "lbl-tcp".into(), protocol: Some("TCP".into()), rules: vec![] },
                Listener {
                    listener_id: "lbl-http".into(),
                    protocol: Some("HTTP".into()),
                    rules: vec![Rule {
                        location_id: "loc-1".into(),
                        domain: Some("a.example".into()),
                        url: Some("/".into()),
                    }],
                },
            ],
        }
    }

    /// Ports come from the spec or from the named Service's NodePort; rules by id or by domain and url.
    #[test]
    fn placements_resolve_ports_and_rules() {
        let mut http = listener("lbl-http", None);
        http.service = Some(crate::api::ServicePort { name: "web".into(), port: 80 });
        http.domain = Some("a.example".into());
        http.url = Some("/".into());
        let ports = BTreeMap::from([(("web".to_owned(), 80), 30080)]);
        let got =
            placements(&[listener("lbl-tcp", Some(8080)), http.clone()], Some(&view()), &ports).unwrap();
        assert_eq!(
            got,
            [
                Placement { listener_id: "lbl-tcp".into(), location_id: None, port: 8080 },
                Placement { listener_id: "lbl-http".into(), location_id: Some("loc-1".into()), port: 30080 },
            ]
        );
        let missing = placements(&[http.clone()], Some(&view()), &BTreeMap::new()).unwrap_err();
        assert_eq!(missing.reason, reasons::SERVICE_PORT_NOT_FOUND);
        http.url = Some("/other".into());
        assert_eq!(
            placements(&[http], Some(&view()), &ports).unwrap_err().reason,
            reasons::LISTENER_NOT_FOUND
        );
    }

    /// Each mismatch between the spec and the load balancer has its own reason.
    #[test]
    fn check_reports_each_mismatch() {
        let classic = LoadBalancerView { kind: Kind::Classic, listeners: vec![] };
        let reason =
            |v: Option<&LoadBalancerView>, l: &[ListenerRef]| check("lb-1", v, l).err().map(|p| p.reason);
        assert_eq!(reason(Some(&classic), &[]), None);
        assert_eq!(
            reason(Some(&classic), &[listener("lbl-tcp", Some(1))]),
            Some(reasons::LOAD_BALANCER_TYPE_MISMATCH)
        );
        assert_eq!(reason(Some(&view()), &[]), Some(reasons::LOAD_BALANCER_TYPE_MISMATCH));
        assert_eq!(reason(None, &[]), Some(reasons::LOAD_BALANCER_NOT_FOUND));
        assert_eq!(
            reason(Some(&view()), &[listener("lbl-nope", Some(1))]),
            Some(reasons::LISTENER_NOT_FOUND)
        );
        assert_eq!(reason(Some(&view()), &[listener("lbl-http", Some(1))]), Some(reasons::INVALID_SPEC));
        let mut rule = listener("lbl-http", Some(1));
        rule.location_id = Some("loc-9".into());
        assert_eq!(reason(Some(&view()), &[rule.clone()]), Some(reasons::LISTENER_NOT_FOUND));
        rule.location_id = Some("loc-1".into());
        assert_eq!(reason(Some(&view()), &[listener("lbl-tcp", Some(1)), rule]), None);
    }
}
