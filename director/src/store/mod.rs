//! The director's state: a small async key-value trait — so the embedded store can be swapped
//! (sled today, etcd for a highly available director) — and typed access to the records kept in
//! it, one [`Table`] per tree.
//!
//! Where a new store goes: a module beside `sled.rs` and `memory.rs` implementing [`Store`]; the
//! conformance test at the bottom of this file runs against every implementation.

mod memory;
mod sled;

pub use memory::MemoryStore;
pub use sled::SledStore;

use crate::records::{
    AgentRecord, CloudConfigRecord, CompiledPackageRecord, DeploymentRecord, InstanceRecord, Intent,
    OrphanedDiskRecord, ReleaseRecord, StemcellRecord,
};
use bosun_types::api::{EventView, TaskEvent, TaskView};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;

/// The trees (tables) of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    Deployments,
    Instances,
    Agents,
    Releases,
    Stemcells,
    CloudConfigs,
    Tasks,
    TaskEvents,
    Locks,
    Variables,
    OrphanedDisks,
    Events,
    Intents,
    CompiledPackages,
    Meta,
}

impl Tree {
    pub fn name(self) -> &'static str {
        match self {
            Tree::Deployments => "deployments",
            Tree::Instances => "instances",
            Tree::Agents => "agents",
            Tree::Releases => "releases",
            Tree::Stemcells => "stemcells",
            Tree::CloudConfigs => "cloud_configs",
            Tree::Tasks => "tasks",
            Tree::TaskEvents => "task_events",
            Tree::Locks => "locks",
            Tree::Variables => "variables",
            Tree::OrphanedDisks => "orphaned_disks",
            Tree::Events => "events",
            Tree::Intents => "intents",
            Tree::CompiledPackages => "compiled_packages",
            Tree::Meta => "meta",
        }
    }
}

/// A backend's own error, whatever the backend.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store operation on `{tree}` failed")]
    Backend {
        tree: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("record `{key}` in `{tree}` is corrupt")]
    Corrupt {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("opening the store at {path}")]
    Open {
        path: String,
        #[source]
        source: BackendError,
    },
}

/// The seam: raw bytes in named trees. Every write is visible to the next read; [`Store::flush`]
/// makes everything written so far durable.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, tree: Tree, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn put(&self, tree: Tree, key: &str, value: &[u8]) -> Result<(), StoreError>;
    async fn delete(&self, tree: Tree, key: &str) -> Result<(), StoreError>;
    /// Keys and values under `prefix`, in key order.
    async fn scan_prefix(&self, tree: Tree, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Sets `key` to `new` (`None`: deletes it) only if it currently holds `old` (`None`: absent).
    /// Returns whether it did.
    async fn compare_and_swap(
        &self,
        tree: Tree,
        key: &str,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// A durable, strictly increasing counter.
    async fn next_id(&self, counter: &str) -> Result<u64, StoreError>;
    async fn flush(&self) -> Result<(), StoreError>;
}

/// A tree together with the record type it holds, so a read cannot decode a record as the wrong
/// type.
pub struct Table<T> {
    pub tree: Tree,
    record: PhantomData<fn() -> T>,
}

impl<T> Table<T> {
    pub const fn new(tree: Tree) -> Self {
        Self { tree, record: PhantomData }
    }
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Table<T> {}

/// The typed trees. `Locks` and `Variables` hold raw bytes (a task id; sealed secrets) and are
/// reached through [`State::kv`]; `Meta` holds one record of its own type per key.
pub mod tables {
    use super::*;
    pub const DEPLOYMENTS: Table<DeploymentRecord> = Table::new(Tree::Deployments);
    pub const INSTANCES: Table<InstanceRecord> = Table::new(Tree::Instances);
    pub const AGENTS: Table<AgentRecord> = Table::new(Tree::Agents);
    pub const RELEASES: Table<ReleaseRecord> = Table::new(Tree::Releases);
    pub const STEMCELLS: Table<StemcellRecord> = Table::new(Tree::Stemcells);
    pub const CLOUD_CONFIGS: Table<CloudConfigRecord> = Table::new(Tree::CloudConfigs);
    pub const TASKS: Table<TaskView> = Table::new(Tree::Tasks);
    pub const TASK_EVENTS: Table<TaskEvent> = Table::new(Tree::TaskEvents);
    pub const ORPHANED_DISKS: Table<OrphanedDiskRecord> = Table::new(Tree::OrphanedDisks);
    pub const EVENTS: Table<EventView> = Table::new(Tree::Events);
    pub const INTENTS: Table<Intent> = Table::new(Tree::Intents);
    pub const COMPILED_PACKAGES: Table<CompiledPackageRecord> = Table::new(Tree::CompiledPackages);
}

/// Typed access to the store.
#[derive(Clone)]
pub struct State {
    kv: Arc<dyn Store>,
}

impl State {
    pub fn new(kv: Arc<dyn Store>) -> Self {
        Self { kv }
    }

    /// A state over a fresh in-memory store (unit tests).
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryStore::default()))
    }

    /// The raw store, for the byte-valued trees.
    pub fn kv(&self) -> &dyn Store {
        &*self.kv
    }

    pub async fn get<T: DeserializeOwned>(&self, table: Table<T>, key: &str) -> Result<Option<T>, StoreError> {
        match self.kv.get(table.tree, key).await? {
            None => Ok(None),
            Some(b) => decode(table.tree, key, &b).map(Some),
        }
    }

    pub async fn put<T: Serialize>(&self, table: Table<T>, key: &str, value: &T) -> Result<(), StoreError> {
        self.kv.put(table.tree, key, &serde_json::to_vec(value).expect("records serialize")).await
    }

    /// Changes the record at `key` atomically: `change` gets the current record and answers the
    /// new one (`None`: leave it). A record changed meanwhile is read again; an absent one is
    /// never made. Answers the record written.
    pub async fn update<T: Serialize + DeserializeOwned>(
        &self,
        table: Table<T>,
        key: &str,
        mut change: impl FnMut(T) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        loop {
            let Some(old) = self.kv.get(table.tree, key).await? else { return Ok(None) };
            let Some(new) = change(decode(table.tree, key, &old)?) else { return Ok(None) };
            let bytes = serde_json::to_vec(&new).expect("records serialize");
            if self.kv.compare_and_swap(table.tree, key, Some(&old), Some(&bytes)).await? {
                return Ok(Some(new));
            }
        }
    }

    pub async fn delete<T>(&self, table: Table<T>, key: &str) -> Result<(), StoreError> {
        self.kv.delete(table.tree, key).await
    }

    /// Every record under `prefix`, in key order.
    pub async fn list<T: DeserializeOwned>(&self, table: Table<T>, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.kv.scan_prefix(table.tree, prefix).await?.into_iter().map(|(k, v)| decode(table.tree, &k, &v)).collect()
    }

    pub async fn next_id(&self, counter: &str) -> Result<u64, StoreError> {
        self.kv.next_id(counter).await
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush().await
    }
}

fn decode<T: DeserializeOwned>(tree: Tree, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        tree: tree.name(),
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every [`Store`] must do.
    async fn conformance(s: &dyn Store) {
        assert_eq!(s.next_id("task").await.unwrap(), 1);
        assert_eq!(s.next_id("task").await.unwrap(), 2);
        assert_eq!(s.next_id("event").await.unwrap(), 1, "counters are independent");
        assert!(s.compare_and_swap(Tree::Locks, "d", None, Some(b"1")).await.unwrap());
        assert!(!s.compare_and_swap(Tree::Locks, "d", None, Some(b"2")).await.unwrap());
        assert!(!s.compare_and_swap(Tree::Locks, "d", Some(b"2"), None).await.unwrap());
        assert_eq!(s.get(Tree::Locks, "d").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(s.compare_and_swap(Tree::Locks, "d", Some(b"1"), None).await.unwrap());
        assert_eq!(s.get(Tree::Locks, "d").await.unwrap(), None);
        for k in ["b/2", "a/1", "b/1", "bb"] {
            s.put(Tree::Instances, k, k.as_bytes()).await.unwrap();
        }
        s.put(Tree::Agents, "b/3", b"other tree").await.unwrap();
        let keys: Vec<String> =
            s.scan_prefix(Tree::Instances, "b/").await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b/1", "b/2"], "key order, prefix only, one tree only");
        s.delete(Tree::Instances, "b/1").await.unwrap();
        s.delete(Tree::Instances, "absent").await.unwrap();
        assert_eq!(s.scan_prefix(Tree::Instances, "").await.unwrap().len(), 3);
        s.flush().await.unwrap();
    }

    #[tokio::test]
    async fn the_memory_store_conforms() {
        conformance(&MemoryStore::default()).await;
    }

    #[tokio::test]
    async fn sled_conforms_and_keeps_counters_and_locks_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(&dir.path().join("db")).unwrap();
            conformance(&s).await;
        }
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.next_id("task").await.unwrap(), 3);
        assert_eq!(s.get(Tree::Instances, "a/1").await.unwrap().as_deref(), Some(&b"a/1"[..]));
    }

    #[tokio::test]
    async fn a_record_of_the_wrong_shape_is_named_corrupt() {
        let state = State::in_memory();
        state.kv().put(Tree::Deployments, "x", b"{not json").await.unwrap();
        let e = state.get(tables::DEPLOYMENTS, "x").await.unwrap_err();
        assert_eq!(e.to_string(), "record `x` in `deployments` is corrupt");
    }
}
