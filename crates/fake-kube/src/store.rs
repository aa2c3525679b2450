//! The object store: every object as JSON, one resourceVersion counter for all of them (as
//! etcd's revision), and a bounded history of change events that watches are served from.
//! When the history is full the oldest event is dropped ("compacted"), and a watch that asks
//! to resume from before it gets 410 Expired, as from a real API server.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::{resource::Resource, status::ApiError};

/// Where an object lives; `namespace` is empty for cluster-scoped resources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: Resource, namespace: &str, name: &str) -> Key {
        Key {
            resource,
            namespace: if resource.namespaced() {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watches.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    /// The object after the change (for DELETED: as it was, with the deletion's version).
    pub object: Value,
    /// The object before the change (MODIFIED only): a selector watch turns a change that
    /// moves an object into or out of its selection into ADDED or DELETED.
    pub prev: Option<Value>,
}

pub struct State {
    pub objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out.
    pub rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Versions up to this one are no longer in the history.
    compacted: u64,
    events: broadcast::Sender<Arc<Event>>,
}

impl State {
    pub fn new(history_limit: usize, events: broadcast::Sender<Arc<Event>>) -> State {
        State {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            events,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Stores `object` (new or changed) under a new resourceVersion and records the event.
    /// Returns the stored object.
    pub fn put(&mut self, key: Key, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let prev = self.objects.insert(key.clone(), object.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv,
            kind,
            key,
            object: object.clone(),
            prev,
        });
        object
    }

    /// Removes the object; the DELETED event carries it with the deletion's version.
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(Event {
            rv,
            kind: EventType::Deleted,
            key: key.clone(),
            object: object.clone(),
            prev: None,
        });
        Some(object)
    }

    fn record(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    /// Events after `rv`, or 410 Expired when some of them were compacted away.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        if rv < self.compacted {
            return Err(ApiError::expired(rv, self.compacted + 1));
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Drops the whole history: every watch resumed from an earlier version gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Objects of one resource (in one namespace, or all), in key order.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<(&Key, &Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .collect()
    }

    /// Whether the object an ownerReference names (same namespace, same uid) exists.
    pub fn owner_exists(&self, namespace: &str, owner: &Value) -> bool {
        let (Some(api_version), Some(kind), Some(name), Some(uid)) = (
            owner.get("apiVersion").and_then(Value::as_str),
            owner.get("kind").and_then(Value::as_str),
            owner.get("name").and_then(Value::as_str),
            owner.get("uid").and_then(Value::as_str),
        ) else {
            return false;
        };
        let Some(resource) = Resource::from_kind(api_version, kind) else {
            // An owner of a kind this fake does not serve cannot be checked: keep the object.
            return true;
        };
        self.get(&Key::new(resource, namespace, name))
            .and_then(|o| o.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            == Some(uid)
    }

    /// Objects every owner of which is gone: what the garbage collector deletes.
    pub fn orphaned_dependents(&self) -> Vec<Key> {
        self.objects
            .iter()
            .filter(|(key, object)| {
                let owners = object
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array);
                owners.is_some_and(|owners| {
                    !owners.is_empty()
                        && owners.iter().all(|o| !self.owner_exists(&key.namespace, o))
                })
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_expires() {
        let (tx, _rx) = broadcast::channel(16);
        let mut state = State::new(3, tx);
        for i in 0..5 {
            let key = Key::new(Resource::Secret, "ns", &format!("s{i}"));
            state.put(key, json!({"metadata": {"name": format!("s{i}")}}));
        }
        assert_eq!(state.rv, 5);
        assert_eq!(state.history_len(), 3);
        // Events 3, 4, 5 are kept: resuming from 2 works, from 1 does not.
        assert_eq!(state.events_since(2).unwrap().len(), 3);
        assert_eq!(state.events_since(1).unwrap_err().code, 410);
        state.compact();
        assert_eq!(state.events_since(4).unwrap_err().code, 410);
        assert!(state.events_since(5).unwrap().is_empty());
    }

    #[test]
    fn dependents_of_missing_owners() {
        let (tx, _rx) = broadcast::channel(16);
        let mut state = State::new(10, tx);
        let pod = Key::new(Resource::Pod, "ns", "p");
        state.put(pod.clone(), json!({"metadata": {"name": "p", "uid": "u1"}}));
        let owned = |uid: &str| json!({"metadata": {"name": "s", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid}]}});
        state.put(Key::new(Resource::Secret, "ns", "s"), owned("u1"));
        state.put(Key::new(Resource::Secret, "ns", "t"), owned("other-uid"));
        let orphaned = state.orphaned_dependents();
        assert_eq!(orphaned, vec![Key::new(Resource::Secret, "ns", "t")]);
        state.remove(&pod);
        assert_eq!(state.orphaned_dependents().len(), 2);
    }
}
