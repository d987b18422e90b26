//! Model-based property test: random sequences of puts, deletes, txns,
//! compactions, lease grants, revokes, keep-alives, expiries, alarms, ranges
//! and watches run against the store and against a deliberately naive model that
//! keeps the full state of every revision. Responses, errors, revisions,
//! events, lease expiries and watch streams must agree; at the end the
//! snapshot must restore to an identical store.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use synod_kv::*;

type State = BTreeMap<Vec<u8>, KeyValue>;

/// The writes of one way a txn branch can run: `(key, range_end, is_put)`.
type Execution = Vec<(Vec<u8>, Vec<u8>, bool)>;

/// The obviously-correct reference: every revision's full state.
struct Model {
    /// `states[r]` is the state at revision `r` (`states[0]` unused).
    states: Vec<State>,
    /// `events[r]` are the changes made at revision `r`, in order.
    events: Vec<Vec<Event>>,
    compact_revision: i64,
    /// Lease ID -> granted TTL in seconds.
    leases: BTreeMap<i64, i64>,
    /// Lease ID -> deadline in ms (the master's view).
    deadlines: BTreeMap<i64, u64>,
    /// The store's `history_revisions_max` (auto-compaction), 0 = off.
    history_revisions_max: i64,
    /// Raised alarms.
    alarms: BTreeSet<AlarmMember>,
}

fn in_range(key: &[u8], range_end: &[u8], candidate: &[u8]) -> bool {
    match range_end {
        [] => candidate == key,
        [0] => candidate >= key,
        end => candidate >= key && candidate < end,
    }
}

impl Model {
    fn new(history_revisions_max: i64) -> Self {
        Model {
            states: vec![State::new(), State::new()],
            events: vec![Vec::new(), Vec::new()],
            compact_revision: 0,
            leases: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            history_revisions_max,
            alarms: BTreeSet::new(),
        }
    }

    fn revision(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn current(&self) -> &State {
        self.states.last().unwrap()
    }

    fn commit(&mut self, state: State, events: Vec<Event>) {
        if !events.is_empty() {
            self.states.push(state);
            self.events.push(events);
            let retained = self.history_revisions_max;
            if retained > 0 && self.revision() - self.compact_revision > retained {
                self.compact_revision = self.revision() - retained / 2;
            }
        }
    }

    fn read_revision(&self, requested: i64) -> Result<i64, KvError> {
        if requested <= 0 {
            Ok(self.revision())
        } else if requested > self.revision() {
            Err(KvError::FutureRevision)
        } else if requested < self.compact_revision {
            Err(KvError::Compacted)
        } else {
            Ok(requested)
        }
    }

    fn range_of(state: &State, request: &RangeRequest, header: i64) -> RangeResponse {
        let matching: Vec<&KeyValue> = state
            .values()
            .filter(|kv| in_range(&request.key, &request.range_end, &kv.key))
            .collect();
        let count = matching.len() as i64;
        if request.count_only {
            return RangeResponse {
                header: ResponseHeader {
                    revision: header,
                    ..ResponseHeader::default()
                },
                kvs: vec![],
                more: false,
                count,
            };
        }
        let bound =
            |value: i64, limit: i64, above: bool| limit == 0 || if above { value <= limit } else { value >= limit };
        let mut kvs: Vec<KeyValue> = matching
            .into_iter()
            .filter(|kv| {
                bound(kv.mod_revision, request.min_mod_revision, false)
                    && bound(kv.mod_revision, request.max_mod_revision, true)
                    && bound(kv.create_revision, request.min_create_revision, false)
                    && bound(kv.create_revision, request.max_create_revision, true)
            })
            .cloned()
            .collect();
        let key_of = |kv: &KeyValue| -> Vec<u8> {
            match request.sort_target {
                SortTarget::Key => kv.key.clone(),
                SortTarget::Value => kv.value.clone(),
                SortTarget::Version => kv.version.to_be_bytes().to_vec(),
                SortTarget::Create => kv.create_revision.to_be_bytes().to_vec(),
                SortTarget::Mod => kv.mod_revision.to_be_bytes().to_vec(),
            }
        };
        match request.sort_order {
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
            SortOrder::Ascend => kvs.sort_by_key(key_of),
            SortOrder::None if request.sort_target != SortTarget::Key => kvs.sort_by_key(key_of),
            SortOrder::None => {}
        }
        let mut more = false;
        if request.limit > 0 && kvs.len() > request.limit as usize {
            kvs.truncate(request.limit as usize);
            more = true;
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResponse {
            header: ResponseHeader {
                revision: header,
                ..ResponseHeader::default()
            },
            kvs,
            more,
            count,
        }
    }

    fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        let revision = self.read_revision(request.revision)?;
        Ok(Self::range_of(
            &self.states[revision as usize],
            request,
            self.revision(),
        ))
    }

    fn check_put(&self, put: &PutRequest) -> Result<(), KvError> {
        if put.ignore_value && !put.value.is_empty() {
            return Err(KvError::ValueProvided);
        }
        if put.ignore_lease && put.lease != 0 {
            return Err(KvError::LeaseProvided);
        }
        Ok(())
    }

    /// A raised NOSPACE alarm refuses puts, txns that put and lease grants
    /// (the model never reaches the store's byte quota).
    fn check_space(&self) -> Result<(), KvError> {
        if self.alarms.iter().any(|raised| raised.alarm == AlarmType::Nospace) {
            return Err(KvError::DatabaseSpaceExceeded);
        }
        Ok(())
    }

    fn check_put_state(&self, put: &PutRequest) -> Result<(), KvError> {
        if (put.ignore_value || put.ignore_lease) && !self.current().contains_key(&put.key) {
            return Err(KvError::KeyNotFound);
        }
        if !put.ignore_lease && put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    }

    fn do_put(state: &mut State, events: &mut Vec<Event>, revision: i64, put: &PutRequest) -> PutResponse {
        let previous = state.get(&put.key).cloned();
        let kv = KeyValue {
            key: put.key.clone(),
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            value: match (&previous, put.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => put.value.clone(),
            },
            lease: match (&previous, put.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => put.lease,
            },
        };
        state.insert(put.key.clone(), kv.clone());
        events.push(Event {
            r#type: EventType::Put,
            kv,
            prev_kv: previous.clone(),
        });
        PutResponse {
            header: ResponseHeader::default(),
            prev_kv: previous.filter(|_| put.prev_kv),
        }
    }

    fn do_delete(
        state: &mut State,
        events: &mut Vec<Event>,
        revision: i64,
        delete: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = state
            .keys()
            .filter(|key| in_range(&delete.key, &delete.range_end, key))
            .cloned()
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &keys {
            let previous = state.remove(key).unwrap();
            events.push(Event {
                r#type: EventType::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    mod_revision: revision,
                    ..KeyValue::default()
                },
                prev_kv: Some(previous.clone()),
            });
            if delete.prev_kv {
                prev_kvs.push(previous);
            }
        }
        DeleteRangeResponse {
            header: ResponseHeader::default(),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = self
            .current()
            .values()
            .filter(|kv| in_range(&compare.key, &compare.range_end, &kv.key))
            .collect();
        let zero = KeyValue::default();
        let check = |kv: &KeyValue| {
            let (actual, expected): (Vec<u8>, Vec<u8>) = match (&compare.target, &compare.target_union) {
                (CompareTarget::Value, TargetUnion::Value(v)) => (kv.value.clone(), v.clone()),
                (CompareTarget::Value, _) => (kv.value.clone(), vec![]),
                (target, union) => {
                    let actual = match target {
                        CompareTarget::Version => kv.version,
                        CompareTarget::Create => kv.create_revision,
                        CompareTarget::Mod => kv.mod_revision,
                        _ => kv.lease,
                    };
                    let expected = match (target, union) {
                        (CompareTarget::Version, TargetUnion::Version(v))
                        | (CompareTarget::Create, TargetUnion::CreateRevision(v))
                        | (CompareTarget::Mod, TargetUnion::ModRevision(v))
                        | (CompareTarget::Lease, TargetUnion::Lease(v)) => *v,
                        _ => 0,
                    };
                    // Order-preserving encoding of i64.
                    let encode = |v: i64| ((v as u64) ^ (1 << 63)).to_be_bytes().to_vec();
                    (encode(actual), encode(expected))
                }
            };
            match compare.result {
                CompareResult::Equal => actual == expected,
                CompareResult::NotEqual => actual != expected,
                CompareResult::Greater => actual > expected,
                CompareResult::Less => actual < expected,
            }
        };
        if kvs.is_empty() {
            compare.target != CompareTarget::Value && check(&zero)
        } else {
            kvs.into_iter().all(check)
        }
    }

    /// Every put in the txn, depth first (success then failure), for the stateless checks.
    fn puts_of(ops: &[RequestOp], out: &mut Vec<PutRequest>) {
        for op in ops {
            match op {
                RequestOp::Put(put) => out.push(put.clone()),
                RequestOp::Txn(nested) => {
                    Self::puts_of(&nested.success, out);
                    Self::puts_of(&nested.failure, out);
                }
                _ => {}
            }
        }
    }

    /// The write sequences of every way the branch can run (each nested txn
    /// taking either branch): `(key, range_end, is_put)`.
    fn executions(ops: &[RequestOp]) -> Vec<Execution> {
        let mut executions = vec![Vec::new()];
        for op in ops {
            let alternatives: Vec<Execution> = match op {
                RequestOp::Put(put) => vec![vec![(put.key.clone(), Vec::new(), true)]],
                RequestOp::DeleteRange(delete) => {
                    vec![vec![(delete.key.clone(), delete.range_end.clone(), false)]]
                }
                RequestOp::Range(_) => vec![Vec::new()],
                RequestOp::Txn(nested) => {
                    let mut both = Self::executions(&nested.success);
                    both.extend(Self::executions(&nested.failure));
                    both
                }
            };
            executions = executions
                .iter()
                .flat_map(|prefix| {
                    alternatives.iter().map(move |alternative| {
                        let mut execution = prefix.clone();
                        execution.extend(alternative.iter().cloned());
                        execution
                    })
                })
                .collect();
        }
        executions
    }

    /// A key may be written at most once in any way the branch can run
    /// (two deletes may overlap).
    fn writes_twice(ops: &[RequestOp]) -> bool {
        Self::executions(ops).iter().any(|writes| {
            writes.iter().enumerate().any(|(i, (key, end, put))| {
                writes[i + 1..]
                    .iter()
                    .any(|(other_key, other_end, other_put)| match (put, other_put) {
                        (true, true) => key == other_key,
                        (true, false) => in_range(other_key, other_end, key),
                        (false, true) => in_range(key, end, other_key),
                        (false, false) => false,
                    })
            })
        })
    }

    /// Branch choices, all decided on the state before the txn.
    fn path(&self, txn: &TxnRequest) -> (bool, Vec<(bool, Vec<bool>)>) {
        let succeeded = txn.compare.iter().all(|compare| self.compare_holds(compare));
        let branch = if succeeded { &txn.success } else { &txn.failure };
        let nested = branch
            .iter()
            .filter_map(|op| match op {
                // Nesting is one level deep in the generator.
                RequestOp::Txn(nested) => Some((
                    nested.compare.iter().all(|compare| self.compare_holds(compare)),
                    Vec::new(),
                )),
                _ => None,
            })
            .collect();
        (succeeded, nested)
    }

    fn check_chosen(&self, ops: &[RequestOp], nested: &mut dyn Iterator<Item = bool>) -> Result<(), KvError> {
        for op in ops {
            match op {
                RequestOp::Put(put) => self.check_put_state(put)?,
                RequestOp::Range(range) => {
                    self.read_revision(range.revision)?;
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(txn) => {
                    let succeeded = nested.next().unwrap();
                    let branch = if succeeded { &txn.success } else { &txn.failure };
                    self.check_chosen(branch, &mut std::iter::empty())?;
                }
            }
        }
        Ok(())
    }

    fn run_ops(
        &self,
        ops: &[RequestOp],
        nested: &mut dyn Iterator<Item = bool>,
        state: &mut State,
        events: &mut Vec<Event>,
        revision: i64,
    ) -> Vec<ResponseOp> {
        let mut responses = Vec::new();
        for op in ops {
            responses.push(match op {
                RequestOp::Put(put) => ResponseOp::Put(Self::do_put(state, events, revision, put)),
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(Self::do_delete(state, events, revision, delete))
                }
                RequestOp::Range(range) if range.revision > 0 => {
                    ResponseOp::Range(Self::range_of(&self.states[range.revision as usize], range, 0))
                }
                RequestOp::Range(range) => ResponseOp::Range(Self::range_of(state, range, 0)),
                RequestOp::Txn(txn) => {
                    let succeeded = nested.next().unwrap();
                    let branch = if succeeded { &txn.success } else { &txn.failure };
                    let responses = self.run_ops(branch, &mut std::iter::empty(), state, events, revision);
                    ResponseOp::Txn(TxnResponse {
                        header: ResponseHeader::default(),
                        succeeded,
                        responses,
                    })
                }
            });
        }
        responses
    }

    fn set_revisions(responses: &mut [ResponseOp], revision: i64) {
        for response in responses {
            match response {
                ResponseOp::Put(r) => r.header.revision = revision,
                ResponseOp::DeleteRange(r) => r.header.revision = revision,
                ResponseOp::Range(r) => r.header.revision = revision,
                ResponseOp::Txn(r) => {
                    r.header.revision = revision;
                    Self::set_revisions(&mut r.responses, revision);
                }
            }
        }
    }

    fn txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse, KvError> {
        let mut puts = Vec::new();
        Self::puts_of(&txn.success, &mut puts);
        Self::puts_of(&txn.failure, &mut puts);
        for put in &puts {
            self.check_put(put)?;
        }
        if Self::writes_twice(&txn.success) || Self::writes_twice(&txn.failure) {
            return Err(KvError::DuplicateKey);
        }
        if !puts.is_empty() {
            self.check_space()?;
        }
        let (succeeded, nested) = self.path(txn);
        let branch = if succeeded { &txn.success } else { &txn.failure };
        self.check_chosen(branch, &mut nested.iter().map(|(s, _)| *s))?;
        let revision = self.revision() + 1;
        let mut state = self.current().clone();
        let mut events = Vec::new();
        let mut responses = self.run_ops(
            branch,
            &mut nested.iter().map(|(s, _)| *s),
            &mut state,
            &mut events,
            revision,
        );
        self.commit(state, events);
        let final_revision = self.revision();
        Self::set_revisions(&mut responses, final_revision);
        Ok(TxnResponse {
            header: ResponseHeader {
                revision: final_revision,
                ..ResponseHeader::default()
            },
            succeeded,
            responses,
        })
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.revision(),
            ..ResponseHeader::default()
        }
    }

    fn revoke(&mut self, id: i64) -> Result<Response, KvError> {
        if self.leases.remove(&id).is_none() {
            return Err(KvError::LeaseNotFound);
        }
        self.deadlines.remove(&id);
        let mut state = self.current().clone();
        let mut events = Vec::new();
        let keys: Vec<Vec<u8>> = state
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        for key in keys {
            Self::do_delete(
                &mut state,
                &mut events,
                self.revision() + 1,
                &DeleteRangeRequest {
                    key,
                    ..DeleteRangeRequest::default()
                },
            );
        }
        self.commit(state, events);
        Ok(Response::LeaseRevoke(LeaseRevokeResponse { header: self.header() }))
    }

    /// Applies a request; `chosen_lease_id` is what the store picked for an ID-0 grant.
    fn apply(&mut self, request: &Request, chosen_lease_id: i64, now_ms: u64) -> Result<Response, KvError> {
        match request {
            Request::Put(put) => {
                self.check_put(put)?;
                self.check_space()?;
                self.check_put_state(put)?;
                let mut state = self.current().clone();
                let mut events = Vec::new();
                let mut response = Self::do_put(&mut state, &mut events, self.revision() + 1, put);
                self.commit(state, events);
                response.header = self.header();
                Ok(Response::Put(response))
            }
            Request::DeleteRange(delete) => {
                let mut state = self.current().clone();
                let mut events = Vec::new();
                let mut response = Self::do_delete(&mut state, &mut events, self.revision() + 1, delete);
                self.commit(state, events);
                response.header = self.header();
                Ok(Response::DeleteRange(response))
            }
            Request::Txn(txn) => self.txn(txn).map(Response::Txn),
            Request::Compaction(compaction) => {
                if compaction.revision <= self.compact_revision {
                    return Err(KvError::Compacted);
                }
                if compaction.revision > self.revision() {
                    return Err(KvError::FutureRevision);
                }
                self.compact_revision = compaction.revision;
                Ok(Response::Compaction(CompactionResponse { header: self.header() }))
            }
            Request::LeaseGrant(grant) => {
                self.check_space()?;
                let id = if grant.id == 0 { chosen_lease_id } else { grant.id };
                if self.leases.contains_key(&id) {
                    return Err(KvError::LeaseExists);
                }
                let ttl = grant.ttl.max(Config::default().lease_ttl_seconds_min);
                self.leases.insert(id, ttl);
                self.deadlines.insert(id, now_ms + ttl as u64 * 1000);
                Ok(Response::LeaseGrant(LeaseGrantResponse {
                    header: self.header(),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Request::LeaseRevoke(revoke) => self.revoke(revoke.id),
            Request::Alarm(alarm) => {
                let member = AlarmMember {
                    member_id: alarm.member_id,
                    alarm: alarm.alarm,
                };
                let answered = match alarm.action {
                    AlarmAction::Activate if alarm.alarm == AlarmType::None => false,
                    AlarmAction::Activate => {
                        self.alarms.insert(member);
                        true
                    }
                    AlarmAction::Deactivate => self.alarms.remove(&member),
                };
                Ok(Response::Alarm(AlarmResponse {
                    header: self.header(),
                    alarms: if answered { vec![member] } else { Vec::new() },
                }))
            }
            Request::Auth(_) | Request::Client { .. } => {
                unreachable!("the generator makes no auth requests; crates/kv/src/tests.rs covers them")
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Apply(Request),
    /// Compaction at `revision - back`.
    Compact(i64),
    KeepAlive(i64),
    Tick(u64),
    Range(RangeRequest, i64),
    Watch(WatchCreateRequest, i64),
    Poll,
    Cancel(usize),
    /// Master change: a new lessor renews every lease's full TTL.
    Promote,
    /// Restore a replica from a snapshot here; it then applies every later entry.
    Snapshot(usize),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        "a",
        "ab",
        "b",
        "b-a-key-longer-than-twenty-two-bytes",
        "ba",
        "c",
        "d",
    ])
    .prop_map(|k| k.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(Vec::new()), Just(vec![0u8]), key()]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "x", "y", "z"]).prop_map(|v| v.as_bytes().to_vec())
}

fn lease_id() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 2 => 1i64..4]
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        prop_oneof![6 => Just(0i64), 1 => 1i64..4],
        any::<bool>(),
        0u8..8,
        0u8..8,
    )
        .prop_map(|(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ignore_value: ignore_value == 0,
            ignore_lease: ignore_lease == 0,
        })
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        (key(), range_end(), 0i64..4, 0u8..3, 0u8..5),
        (0u8..6, 0i64..5, 0i64..5, 0i64..5, 0i64..5),
    )
        .prop_map(
            |((key, range_end, limit, order, target), (flags, min_mod, max_mod, min_create, max_create))| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision: 0,
                    sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][order as usize],
                    sort_target: [
                        SortTarget::Key,
                        SortTarget::Version,
                        SortTarget::Create,
                        SortTarget::Mod,
                        SortTarget::Value,
                    ][target as usize],
                    serializable: false,
                    keys_only: flags == 1,
                    count_only: flags == 2,
                    min_mod_revision: if flags == 3 { min_mod } else { 0 },
                    max_mod_revision: if flags == 3 { max_mod * 3 } else { 0 },
                    min_create_revision: if flags == 4 { min_create } else { 0 },
                    max_create_revision: if flags == 4 { max_create * 3 } else { 0 },
                }
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![3 => Just(Vec::new()), 1 => range_end()],
        0u8..4,
        0u8..5,
        0i64..6,
        value(),
    )
        .prop_map(|(key, range_end, result, target, number, value)| {
            let target = [
                CompareTarget::Version,
                CompareTarget::Create,
                CompareTarget::Mod,
                CompareTarget::Value,
                CompareTarget::Lease,
            ][target as usize];
            Compare {
                result: [
                    CompareResult::Equal,
                    CompareResult::Greater,
                    CompareResult::Less,
                    CompareResult::NotEqual,
                ][result as usize],
                target,
                key,
                target_union: match target {
                    CompareTarget::Version => TargetUnion::Version(number),
                    CompareTarget::Create => TargetUnion::CreateRevision(number),
                    CompareTarget::Mod => TargetUnion::ModRevision(number),
                    CompareTarget::Value => TargetUnion::Value(value),
                    CompareTarget::Lease => TargetUnion::Lease(number % 4),
                },
                range_end,
            }
        })
}

fn txn_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        3 => put_request().prop_map(RequestOp::Put),
        2 => delete_request().prop_map(RequestOp::DeleteRange),
        1 => (range_request(), 0i64..6).prop_map(|(mut range, revision)| {
            range.revision = revision;
            RequestOp::Range(range)
        }),
    ]
}

fn txn_op_or_nested() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        5 => txn_op(),
        1 => (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(txn_op(), 0..3),
            prop::collection::vec(txn_op(), 0..2)
        )
            .prop_map(|(compare, success, failure)| RequestOp::Txn(TxnRequest {
                compare,
                success,
                failure
            })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => put_request().prop_map(|put| Op::Apply(Request::Put(put))),
        3 => delete_request().prop_map(|delete| Op::Apply(Request::DeleteRange(delete))),
        5 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(txn_op_or_nested(), 0..4),
            prop::collection::vec(txn_op_or_nested(), 0..3)
        )
            .prop_map(|(compare, success, failure)| Op::Apply(Request::Txn(TxnRequest {
                compare,
                success,
                failure
            }))),
        2 => (-1i64..8).prop_map(Op::Compact),
        2 => (lease_id(), 1i64..6).prop_map(|(id, ttl)| Op::Apply(Request::LeaseGrant(LeaseGrantRequest { ttl, id }))),
        1 => (1i64..4).prop_map(|id| Op::Apply(Request::LeaseRevoke(LeaseRevokeRequest { id }))),
        1 => (1i64..4).prop_map(Op::KeepAlive),
        1 => (any::<bool>(), 0u64..3, 0u8..3).prop_map(|(activate, member_id, kind)| Op::Apply(Request::Alarm(AlarmRequest {
            action: if activate { AlarmAction::Activate } else { AlarmAction::Deactivate },
            member_id,
            alarm: [AlarmType::None, AlarmType::Nospace, AlarmType::Corrupt][usize::from(kind)],
        }))),
        2 => (0u64..4000).prop_map(Op::Tick),
        4 => (range_request(), -1i64..6).prop_map(|(range, back)| Op::Range(range, back)),
        2 => (key(), range_end(), any::<bool>(), 0u8..3, -1i64..8).prop_map(|(key, range_end, prev_kv, filter, back)| {
            Op::Watch(
                WatchCreateRequest {
                    key,
                    range_end,
                    prev_kv,
                    filters: match filter {
                        1 => vec![WatchFilter::NoPut],
                        2 => vec![WatchFilter::NoDelete],
                        _ => vec![],
                    },
                    ..WatchCreateRequest::default()
                },
                back,
            )
        }),
        2 => Just(Op::Poll),
        1 => (0usize..8).prop_map(Op::Cancel),
        1 => Just(Op::Promote),
        1 => (48usize..400).prop_map(Op::Snapshot),
    ]
}

/// What one watcher should see, and what it saw.
struct WatchRecord {
    request: WatchCreateRequest,
    watch_id: i64,
    /// First revision expected; None when cancelled at creation for compaction.
    start: Option<i64>,
    cancelled_by_client_at: Option<i64>,
    responses: Vec<WatchResponse>,
}

/// How the watch hub reads history for catching-up watchers.
enum CatchUp {
    /// [`WatchHub::poll`], from the live store.
    InPlace,
    /// As the server does it: jobs made against a copy frozen at one
    /// collect run at the next, after whatever was applied in between (which
    /// the watchers' tails must hold).
    OffLock(Option<(Box<FrozenStore>, Vec<CatchUpJob>)>),
}

/// Takes the hub's ready responses into their watch records.
fn collect(hub: &mut WatchHub, store: &Store, watches: &mut [WatchRecord], catch_up: &mut CatchUp) {
    let responses = match catch_up {
        CatchUp::InPlace => hub.poll(store),
        CatchUp::OffLock(pending) => {
            if let Some((frozen, jobs)) = pending.take() {
                hub.catch_up_done(jobs.iter().map(|job| job.run(&frozen)).collect());
            }
            if hub.catching_up() {
                let frozen = store.freeze();
                let jobs = hub.catch_up_jobs(frozen.revision());
                *pending = Some((Box::new(frozen), jobs));
            }
            hub.take_ready(store)
        }
    };
    for response in responses {
        if let Some(record) = watches.iter_mut().rev().find(|w| w.watch_id == response.watch_id) {
            record.responses.push(response);
        }
    }
}

fn run(ops: Vec<Op>, config: Config, mut catch_up: CatchUp) -> Result<(), TestCaseError> {
    let mut store = Store::new(config.clone());
    let mut model = Model::new(config.history_revisions_max);
    let mut lessor = Lessor::new(1_000_000);
    lessor.promote(&store, 0);
    let mut now_ms: u64 = 0;
    let mut hub = WatchHub::new(WatchConfig {
        pending_events_max: 3,
        catch_up_events_max: 2,
        watchers_max: 64,
    });
    let mut watches: Vec<WatchRecord> = Vec::new();

    let mut replica: Option<Store> = None;
    let apply = |store: &mut Store,
                 model: &mut Model,
                 lessor: &mut Lessor,
                 hub: &mut WatchHub,
                 replica: &mut Option<Store>,
                 request: &Request,
                 now_ms: u64|
     -> Result<(), TestCaseError> {
        let before = model.revision();
        let applied = store.apply_bytes(&request.encode());
        if let Some(replica) = replica {
            let replicated = replica.apply_bytes(&request.encode());
            prop_assert_eq!(&replicated, &applied);
            prop_assert_eq!(replica.state_hash(), store.state_hash());
        }
        let chosen = match &applied.result {
            Ok(Response::LeaseGrant(grant)) => grant.id,
            _ => 0,
        };
        if let Request::LeaseGrant(LeaseGrantRequest { id: 0, .. }) = request {
            prop_assert!(chosen > 0 || applied.result.is_err());
        }
        let expected = model.apply(request, chosen, now_ms);
        prop_assert_eq!(&applied.result, &expected, "request {:?}", request);
        prop_assert_eq!(applied.revision, model.revision());
        let expected_events: &[Event] = if model.revision() > before {
            &model.events[model.revision() as usize]
        } else {
            &[]
        };
        prop_assert_eq!(&applied.events[..], expected_events);
        lessor.observe(&applied, now_ms);
        hub.observe(&applied);
        Ok(())
    };

    for op in ops {
        match op {
            Op::Apply(request) => apply(
                &mut store,
                &mut model,
                &mut lessor,
                &mut hub,
                &mut replica,
                &request,
                now_ms,
            )?,
            Op::Compact(back) => {
                let request = Request::Compaction(CompactionRequest {
                    revision: model.revision() - back,
                    physical: false,
                });
                apply(
                    &mut store,
                    &mut model,
                    &mut lessor,
                    &mut hub,
                    &mut replica,
                    &request,
                    now_ms,
                )?;
            }
            Op::KeepAlive(id) => {
                let ttl = lessor.keep_alive(&store, id, now_ms);
                let expected = model.leases.get(&id).copied().unwrap_or(0);
                prop_assert_eq!(ttl, expected);
                if expected > 0 {
                    model.deadlines.insert(id, now_ms + expected as u64 * 1000);
                }
            }
            Op::Tick(elapsed_ms) => {
                now_ms += elapsed_ms;
                let expired = lessor.expired(&store, now_ms, usize::MAX);
                let mut expected: Vec<(u64, i64)> = model
                    .deadlines
                    .iter()
                    .filter(|(_, deadline)| **deadline <= now_ms)
                    .map(|(id, deadline)| (*deadline, *id))
                    .collect();
                expected.sort();
                let expected: Vec<i64> = expected.into_iter().map(|(_, id)| id).collect();
                prop_assert_eq!(&expired, &expected);
                for id in expired {
                    let request = Request::LeaseRevoke(LeaseRevokeRequest { id });
                    apply(
                        &mut store,
                        &mut model,
                        &mut lessor,
                        &mut hub,
                        &mut replica,
                        &request,
                        now_ms,
                    )?;
                }
                for (id, ttl) in &model.leases {
                    let remaining = lessor.remaining_ttl_seconds(*id, now_ms).unwrap();
                    prop_assert!(remaining <= *ttl);
                }
            }
            Op::Range(mut range, back) => {
                range.revision = if back == 0 { 0 } else { model.revision() - back + 1 };
                prop_assert_eq!(store.range(&range), model.range(&range), "range {:?}", range);
            }
            Op::Watch(mut request, back) => {
                let revision = model.revision();
                request.start_revision = if back < 0 { 0 } else { (revision - back).max(1) };
                let watch_id = hub.create(&store, &request).unwrap();
                let start = if request.start_revision > 0 && request.start_revision < model.compact_revision {
                    None
                } else if request.start_revision > 0 {
                    Some(request.start_revision)
                } else {
                    Some(revision + 1)
                };
                watches.push(WatchRecord {
                    request,
                    watch_id,
                    start,
                    cancelled_by_client_at: None,
                    responses: Vec::new(),
                });
            }
            Op::Poll => collect(&mut hub, &store, &mut watches, &mut catch_up),
            Op::Promote => {
                lessor = Lessor::new(1_000_000);
                lessor.promote(&store, now_ms);
                for (id, ttl) in &model.leases {
                    model.deadlines.insert(*id, now_ms + *ttl as u64 * 1000);
                }
            }
            Op::Snapshot(chunk_bytes_max) => {
                let chunks: Vec<Vec<u8>> = store.snapshot_chunks(chunk_bytes_max).collect();
                let restored = Store::restore_chunks(config.clone(), chunks.iter().map(|c| c.as_slice()))
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert_eq!(restored.state_hash(), store.state_hash());
                replica = Some(restored);
            }
            Op::Cancel(index) => {
                if let Some(record) = watches.get_mut(index) {
                    // Deliver what is due first, so the expected stream is well defined.
                    if record.cancelled_by_client_at.is_none() {
                        let id = record.watch_id;
                        while hub.catching_up() {
                            collect(&mut hub, &store, &mut watches, &mut catch_up);
                        }
                        collect(&mut hub, &store, &mut watches, &mut catch_up);
                        let record = &mut watches[index];
                        if hub.cancel(&store, id) {
                            record.cancelled_by_client_at = Some(model.revision());
                        }
                    }
                }
            }
        }
    }
    collect(&mut hub, &store, &mut watches, &mut catch_up);
    while hub.catching_up() {
        collect(&mut hub, &store, &mut watches, &mut catch_up);
    }

    // Watch streams.
    for record in &watches {
        prop_assert!(record.responses[0].created);
        let Some(start) = record.start else {
            prop_assert!(record.responses[1].canceled);
            prop_assert_eq!(
                record.responses[1].compact_revision,
                store.compact_revision().min(record.responses[1].compact_revision)
            );
            prop_assert!(record.responses[1].compact_revision > 0);
            continue;
        };
        let end = record.cancelled_by_client_at.unwrap_or(model.revision());
        let wants = |event: &Event| {
            in_range(&record.request.key, &record.request.range_end, &event.kv.key)
                && !(event.r#type == EventType::Put && record.request.filters.contains(&WatchFilter::NoPut))
                && !(event.r#type == EventType::Delete && record.request.filters.contains(&WatchFilter::NoDelete))
        };
        let expected: Vec<Event> = (start..=end)
            .filter(|revision| *revision <= model.revision())
            .flat_map(|revision| model.events[revision as usize].iter())
            .filter(|event| wants(event))
            .cloned()
            .collect();
        let received: Vec<&Event> = record.responses.iter().flat_map(|r| r.events.iter()).collect();
        let compacted = record.responses.iter().any(|r| r.compact_revision > 0);
        if compacted {
            prop_assert!(received.len() <= expected.len());
        } else {
            prop_assert_eq!(received.len(), expected.len(), "watch {:?}", record.request);
        }
        for (got, want) in received.iter().zip(&expected) {
            prop_assert_eq!(&got.kv, &want.kv);
            prop_assert_eq!(got.r#type, want.r#type);
            match (&got.prev_kv, record.request.prev_kv) {
                (Some(prev), true) => prop_assert_eq!(Some(prev), want.prev_kv.as_ref()),
                (None, true) => {
                    prop_assert!(want.prev_kv.is_none() || want.kv.mod_revision <= store.compact_revision())
                }
                (got_prev, false) => prop_assert!(got_prev.is_none()),
            }
        }
        for response in &record.responses {
            if let (Some(first), Some(last)) = (response.events.first(), response.events.last()) {
                prop_assert!(first.kv.mod_revision <= last.kv.mod_revision);
            }
        }
    }

    if let Some(replica) = &replica {
        prop_assert_eq!(replica.snapshot(), store.snapshot());
    }

    // Every retained revision reads the same.
    for revision in model.compact_revision.max(1)..=model.revision() {
        let everything = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..RangeRequest::default()
        };
        prop_assert_eq!(store.range(&everything), model.range(&everything));
    }

    prop_assert_eq!(
        store.alarms(AlarmType::None).alarms,
        model.alarms.iter().copied().collect::<Vec<_>>()
    );

    // Snapshot, restore, and continue identically.
    let chunks: Vec<Vec<u8>> = store.snapshot_chunks(256).collect();
    let restored = Store::restore_chunks(config.clone(), chunks.iter().map(|c| c.as_slice()))
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(restored.snapshot(), store.snapshot());
    prop_assert_eq!(restored.state_hash(), store.state_hash());
    prop_assert_eq!(restored.alarms(AlarmType::None), store.alarms(AlarmType::None));
    for (id, lease) in store.leases() {
        prop_assert_eq!(restored.lease(id), Some(lease));
        let expected: Vec<Vec<u8>> = model
            .current()
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        let attached: Vec<Vec<u8>> = lease.keys.iter().map(|k| k.to_vec()).collect();
        prop_assert_eq!(attached, expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut store = Store::new(Config::default());
        let _ = store.apply_bytes(&bytes);
        let mut prefixed = vec![1u8];
        prefixed.extend_from_slice(&bytes);
        let _ = store.apply_bytes(&prefixed);
        let _ = Store::restore(Config::default(), &bytes);
        let _ = Store::restore_chunks(Config::default(), [bytes.as_slice()]);
    }
}

/// A small store with history, leases and a compaction, as snapshot bytes.
fn sample_snapshot() -> Vec<u8> {
    let mut store = Store::new(Config::default());
    let requests = [
        Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 7 }),
        Request::Put(PutRequest {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            lease: 7,
            ..PutRequest::default()
        }),
        Request::Put(PutRequest {
            key: b"b".to_vec(),
            value: b"2".to_vec(),
            ..PutRequest::default()
        }),
        Request::Put(PutRequest {
            key: b"a".to_vec(),
            value: b"3".to_vec(),
            ..PutRequest::default()
        }),
        Request::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..DeleteRangeRequest::default()
        }),
        Request::Compaction(CompactionRequest {
            revision: 3,
            physical: false,
        }),
        Request::Put(PutRequest {
            key: b"c".to_vec(),
            value: b"4".to_vec(),
            lease: 7,
            ..PutRequest::default()
        }),
    ];
    for request in &requests {
        store.apply(request);
    }
    store.snapshot()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Damage behind a valid checksum: restore must reject it or yield a
    /// store that keeps working (no panic on later applies, reads, watches).
    #[test]
    fn restore_validates_content_not_only_checksums(
        position in 8usize..200,
        replacement in any::<u8>(),
    ) {
        let mut body = sample_snapshot();
        let content_length = body.len() - 4;
        let position = position % content_length.max(9);
        prop_assume!(position >= 8);
        body[position] = replacement;
        let checksum = crc32c::crc32c(&body[..content_length]);
        body[content_length..].copy_from_slice(&checksum.to_le_bytes());
        if let Ok(mut store) = Store::restore(Config::default(), &body) {
            let mut hub = WatchHub::new(WatchConfig::default());
            let _ = hub.create(&store, &WatchCreateRequest { key: vec![0], range_end: vec![0], start_revision: 1, ..WatchCreateRequest::default() });
            for request in [
                Request::Put(PutRequest { key: b"a".to_vec(), value: b"9".to_vec(), ignore_lease: false, ..PutRequest::default() }),
                Request::DeleteRange(DeleteRangeRequest { key: b"a".to_vec(), range_end: vec![0], prev_kv: true }),
                Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
                Request::Compaction(CompactionRequest { revision: store.revision(), physical: false }),
            ] {
                let applied = store.apply(&request);
                hub.observe(&applied);
                let _ = hub.poll(&store);
            }
            let _ = store.range(&RangeRequest { key: vec![0], range_end: vec![0], ..RangeRequest::default() });
            prop_assert!(Store::restore(Config::default(), &store.snapshot()).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, Config::default(), CatchUp::InPlace)?;
    }

    #[test]
    fn store_matches_the_model_with_auto_compaction(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, Config { history_revisions_max: 6, ..Config::default() }, CatchUp::InPlace)?;
    }

    #[test]
    fn watchers_catching_up_off_the_lock_match_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, Config::default(), CatchUp::OffLock(None))?;
    }

    #[test]
    fn watchers_catching_up_off_the_lock_match_the_model_with_auto_compaction(
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(ops, Config { history_revisions_max: 6, ..Config::default() }, CatchUp::OffLock(None))?;
    }

    /// Compactions that drop history one key per applied entry: reads,
    /// watches and snapshots must not tell.
    #[test]
    fn store_matches_the_model_compacting_a_key_per_entry(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, Config { compaction_keys_per_entry_max: 1, ..Config::default() }, CatchUp::InPlace)?;
    }

    #[test]
    fn store_matches_the_model_auto_compacting_a_key_per_entry(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, Config { history_revisions_max: 6, compaction_keys_per_entry_max: 1, ..Config::default() }, CatchUp::OffLock(None))?;
    }
}
