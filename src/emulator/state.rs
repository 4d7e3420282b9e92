//! The emulator's state: load balancers with their backends, every task, and the log of every call. Its JSON
//! view is both `GET /emulator/state` and (without the call log) the `--state-file` format.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::clb::{Action, TaskState};

/// Weight of seeded backends and of registrations that give none (the API's documented default).
pub const DEFAULT_WEIGHT: u32 = 10;
/// The call log keeps this many most recent calls (about 40 MB); older ones are counted in `callsDropped`.
const CALL_LOG_CAPACITY: usize = 200_000;
/// First `requestId` handed out by a fresh emulator.
const FIRST_REQUEST_ID: u64 = 1000;

/// Everything the emulator knows, as `GET /emulator/state` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    /// Every load balancer by ID.
    pub load_balancers: BTreeMap<String, LoadBalancerView>,
    /// Every task ever submitted, oldest first.
    pub tasks: Vec<TaskRecord>,
    /// Every API request with its outcome, oldest first (empty in the state file).
    #[serde(default)]
    pub calls: Vec<CallRecord>,
    /// How many old calls were dropped from the log to bound its memory.
    #[serde(default)]
    pub calls_dropped: u64,
    /// API 3.0: the targets bound on each application load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, Vec<TargetView>>,
    /// API 3.0: every write task, by RequestId.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub v3_tasks: Vec<V3TaskView>,
}

/// An API 3.0 write task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V3TaskView {
    /// Its RequestId.
    pub request_id: String,
    /// The load balancer it changes.
    pub load_balancer_id: String,
    /// 0 succeeded, 1 failed, 2 running.
    pub status: i64,
    /// When it ends (Unix milliseconds).
    pub due_at_ms: u64,
    /// Whether it binds (or reweights) its targets; otherwise it unbinds them.
    #[serde(default)]
    pub register: bool,
    /// The listener targets it changes, with their weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetView>,
    /// On a classic load balancer: the instances and weights it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classic: Option<Vec<(String, u32)>>,
}

/// A target bound on an application load balancer (API 3.0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    /// The listener.
    pub listener_id: String,
    /// The layer-7 rule, if the listener has rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// The CVM instance.
    pub instance_id: String,
    /// The backend port.
    pub port: u16,
    /// Its weight.
    pub weight: u32,
}

impl StateView {
    /// The calls of one action.
    pub fn calls_of(&self, action: Action) -> impl Iterator<Item = &CallRecord> {
        self.calls.iter().filter(move |c| c.action == action.as_str())
    }

    /// The instance IDs on load balancer `lb`, sorted (empty if the LB is unknown).
    pub fn backend_ids(&self, lb: &str) -> Vec<String> {
        self.load_balancers
            .get(lb)
            .map(|l| l.backends.iter().map(|b| b.instance_id.clone()).collect())
            .unwrap_or_default()
    }
}

/// One load balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerView {
    /// Its backends, sorted by instance ID.
    pub backends: Vec<BackendView>,
}

/// One backend of a load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// The CVM instance ID.
    pub instance_id: String,
    /// Its forwarding weight.
    pub weight: u32,
}

/// One asynchronous task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// The `requestId` the submit call returned.
    pub request_id: u64,
    /// The action that started it (Register or Deregister).
    pub action: Action,
    /// The load balancer it changes.
    pub load_balancer_id: String,
    /// The instances it adds or removes, in request order.
    pub instance_ids: Vec<String>,
    /// For Register, the weight of each instance (parallel to `instance_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
    /// `running`, `succeeded` or `failed`.
    pub status: TaskState,
    /// Unix milliseconds of submission.
    pub submitted_at_ms: u64,
    /// Unix milliseconds at which a running task ends.
    #[serde(default)]
    pub due_at_ms: u64,
    /// Unix milliseconds at which it ended.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
}

/// One API request and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// The `Action` parameter as sent (empty if absent).
    pub action: String,
    /// The HTTP method.
    pub http_method: String,
    /// The `loadBalancerId` parameter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_id: Option<String>,
    /// The `backends.N.instanceId` values, by N.
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// The task started (Register/Deregister) or queried (DescribeLoadBalancersTaskResult).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    /// API 3.0: the task a write started (its RequestId) or DescribeTaskStatus asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The `code` answered (0 = success; 1 for an API 3.0 error, whose code is in `error`).
    pub code: i64,
    /// The API 3.0 `Error.Code`, if one was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix milliseconds of arrival.
    pub at_ms: u64,
}

/// The mutable state behind the emulator's lock.
#[derive(Debug)]
pub(crate) struct Store {
    /// Backends (instance → weight) by load balancer.
    lbs: BTreeMap<String, BTreeMap<String, u32>>,
    tasks: BTreeMap<u64, TaskRecord>,
    /// Running tasks by due time, so the scheduler finds the next one without a scan.
    running: BTreeSet<(u64, u64)>,
    next_request_id: u64,
    calls: VecDeque<CallRecord>,
    calls_dropped: u64,
}

impl Store {
    /// State restored from a state file (if any), plus seeded load balancers it does not already have: a
    /// restart keeps what happened since the seed.
    pub(crate) fn new(restored: Option<StateView>, seeds: &[(String, Vec<String>)]) -> Self {
        let restored = restored.unwrap_or_default();
        let mut lbs: BTreeMap<String, BTreeMap<String, u32>> = restored
            .load_balancers
            .into_iter()
            .map(|(id, lb)| (id, lb.backends.into_iter().map(|b| (b.instance_id, b.weight)).collect()))
            .collect();
        for (id, instances) in seeds {
            lbs.entry(id.clone())
                .or_insert_with(|| instances.iter().map(|i| (i.clone(), DEFAULT_WEIGHT)).collect());
        }
        let tasks: BTreeMap<u64, TaskRecord> =
            restored.tasks.into_iter().map(|t| (t.request_id, t)).collect();
        let running =
            tasks.values().filter(|t| t.status == TaskState::Running).map(|t| (t.due_at_ms, t.request_id));
        Self {
            running: running.collect(),
            next_request_id: tasks.keys().next_back().map_or(FIRST_REQUEST_ID, |last| last + 1),
            tasks,
            lbs,
            calls: VecDeque::new(),
            calls_dropped: 0,
        }
    }

    /// Creates an empty load balancer (as buying one does); false if it exists already.
    pub(crate) fn add_load_balancer(&mut self, id: &str) -> bool {
        if self.lbs.contains_key(id) {
            return false;
        }
        self.lbs.insert(id.to_owned(), BTreeMap::new());
        true
    }

    /// A snapshot; `with_calls: false` for the state file.
    pub(crate) fn view(&self, with_calls: bool) -> StateView {
        StateView {
            load_balancers: self
                .lbs
                .iter()
                .map(|(id, backends)| {
                    let backends = backends
                        .iter()
                        .map(|(instance_id, weight)| BackendView {
                            instance_id: instance_id.clone(),
                            weight: *weight,
                        })
                        .collect();
                    (id.clone(), LoadBalancerView { backends })
                })
                .collect(),
            tasks: self.tasks.values().cloned().collect(),
            calls: if with_calls { self.calls.iter().cloned().collect() } else { Vec::new() },
            calls_dropped: if with_calls { self.calls_dropped } else { 0 },
            targets: BTreeMap::new(),
            v3_tasks: Vec::new(),
        }
    }

    /// A copy of every classic load balancer's backends, for the API 3.0 face.
    pub(crate) fn classic(&self) -> super::v3::Classic {
        self.lbs.clone()
    }

    /// Applies the changes of finished API 3.0 tasks on classic load balancers.
    pub(crate) fn apply_classic(&mut self, changes: &[super::v3::ClassicChange]) {
        for (lb, register, items) in changes {
            let backends = self.lbs.entry(lb.clone()).or_default();
            for (instance, weight) in items {
                if *register {
                    backends.insert(instance.clone(), *weight);
                } else {
                    backends.remove(instance);
                }
            }
        }
    }

    /// The backends of `lb`, or `None` for an unknown load balancer.
    pub(crate) fn backends(&self, lb: &str) -> Option<&BTreeMap<String, u32>> {
        self.lbs.get(lb)
    }

    /// Every load balancer ID, sorted.
    pub(crate) fn lb_ids(&self) -> impl Iterator<Item = &String> {
        self.lbs.keys()
    }

    /// The task with this `requestId`.
    pub(crate) fn task(&self, request_id: u64) -> Option<&TaskRecord> {
        self.tasks.get(&request_id)
    }

    /// Starts a Register or Deregister task that ends at `due_at_ms`; returns its `requestId`.
    pub(crate) fn submit(
        &mut self,
        action: Action,
        lb: &str,
        backends: Vec<(String, Option<u32>)>,
        now_ms: u64,
        due_at_ms: u64,
    ) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let weights = match action {
            Action::RegisterInstancesWithLoadBalancer => {
                backends.iter().map(|(_, w)| w.unwrap_or(DEFAULT_WEIGHT)).collect()
            }
            _ => Vec::new(),
        };
        let record = TaskRecord {
            request_id,
            action,
            load_balancer_id: lb.to_owned(),
            instance_ids: backends.into_iter().map(|(id, _)| id).collect(),
            weights,
            status: TaskState::Running,
            submitted_at_ms: now_ms,
            due_at_ms,
            finished_at_ms: None,
        };
        self.tasks.insert(request_id, record);
        self.running.insert((due_at_ms, request_id));
        request_id
    }

    /// Ends every running task due by `now_ms`: `fails()` decides each outcome, and only a success changes
    /// backends. Returns how many ended and when the next one is due.
    pub(crate) fn finish_due(
        &mut self,
        now_ms: u64,
        mut fails: impl FnMut() -> bool,
    ) -> (usize, Option<u64>) {
        let mut finished = 0;
        while let Some(&(due, id)) = self.running.first() {
            if due > now_ms {
                return (finished, Some(due));
            }
            self.running.pop_first();
            finished += 1;
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.finished_at_ms = Some(now_ms);
            if fails() {
                task.status = TaskState::Failed;
                continue;
            }
            task.status = TaskState::Succeeded;
            let Some(backends) = self.lbs.get_mut(&task.load_balancer_id) else {
                continue;
            };
            match task.action {
                Action::RegisterInstancesWithLoadBalancer => {
                    for (i, id) in task.instance_ids.iter().enumerate() {
                        let weight = task.weights.get(i).copied().unwrap_or(DEFAULT_WEIGHT);
                        backends.insert(id.clone(), weight);
                    }
                }
                Action::DeregisterInstancesFromLoadBalancer => {
                    for id in &task.instance_ids {
                        backends.remove(id);
                    }
                }
                _ => {}
            }
        }
        (finished, None)
    }

    /// Appends to the call log, dropping the oldest entry when it is full.
    pub(crate) fn record(&mut self, call: CallRecord) {
        if self.calls.len() == CALL_LOG_CAPACITY {
            self.calls.pop_front();
            self.calls_dropped += 1;
        }
        self.calls.push_back(call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> Store {
        Store::new(None, &[("lb-1".into(), vec!["ins-a".into(), "ins-b".into()])])
    }

    /// Register adds (with weights) and Deregister removes, but only once the task succeeds.
    #[test]
    fn tasks_change_backends_only_on_success() {
        let mut store = seeded();
        let reg = vec![("ins-c".to_owned(), Some(50)), ("ins-a".to_owned(), Some(0))];
        store.submit(Action::RegisterInstancesWithLoadBalancer, "lb-1", reg, 0, 100);
        store.submit(
            Action::DeregisterInstancesFromLoadBalancer,
            "lb-1",
            vec![("ins-b".into(), None)],
            0,
            200,
        );
        assert_eq!(store.finish_due(50, || false), (0, Some(100)));
        assert_eq!(store.finish_due(150, || false), (1, Some(200)));
        let view = store.view(false);
        let weights: Vec<_> = view.load_balancers["lb-1"].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [0, 10, 50]);
        assert_eq!(store.finish_due(250, || true), (1, None));
        let view = store.view(false);
        assert_eq!(view.backend_ids("lb-1"), ["ins-a", "ins-b", "ins-c"]);
        assert_eq!(view.tasks[1].status, TaskState::Failed);
    }

    /// A restored state keeps its LBs over the seeds, resumes running tasks and continues the requestIds.
    #[test]
    fn restore_wins_over_seeds_and_resumes_tasks() {
        let mut store = seeded();
        store.submit(
            Action::DeregisterInstancesFromLoadBalancer,
            "lb-1",
            vec![("ins-a".into(), None)],
            0,
            10,
        );
        store.finish_due(10, || false);
        let id = store.submit(
            Action::DeregisterInstancesFromLoadBalancer,
            "lb-1",
            vec![("ins-b".into(), None)],
            0,
            99,
        );
        let json = serde_json::to_string(&store.view(false)).unwrap();
        let mut again = Store::new(
            Some(serde_json::from_str(&json).unwrap()),
            &[("lb-1".into(), vec!["ins-z".into()]), ("lb-2".into(), vec![])],
        );
        assert_eq!(again.view(false).backend_ids("lb-1"), ["ins-b"]);
        assert!(again.backends("lb-2").is_some());
        assert_eq!(again.finish_due(100, || false), (1, None));
        assert_eq!(again.task(id).map(|t| t.status), Some(TaskState::Succeeded));
        assert_eq!(again.submit(Action::DeregisterInstancesFromLoadBalancer, "lb-2", vec![], 0, 0), id + 1);
    }
}
