//! The director's state: a small key-value trait (so the embedded store can be swapped) and the
//! typed records kept in it. The default implementation is sled under the state directory.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// The trees (tables) of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    Meta,
}

impl Tree {
    fn name(self) -> &'static str {
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
            Tree::Meta => "meta",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store operation on `{tree}` failed")]
    Backend {
        tree: &'static str,
        #[source]
        source: sled::Error,
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
        source: sled::Error,
    },
}

/// The seam: raw bytes in named trees. Operations are quick in-memory ones; `flush` makes them
/// durable and blocks, so async callers use [`State::flush`].
pub trait KvStore: Send + Sync {
    fn get(&self, tree: Tree, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, tree: Tree, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, tree: Tree, key: &str) -> Result<(), StoreError>;
    fn scan_prefix(&self, tree: Tree, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Sets `key` to `new` only if it currently holds `old` (`None`: absent). Returns whether it did.
    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &str,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// A durable, strictly increasing counter.
    fn next_id(&self, counter: &str) -> Result<u64, StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
}

pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Self { db })
    }
    fn tree(&self, tree: Tree) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(tree.name()).map_err(|source| StoreError::Backend { tree: tree.name(), source })
    }
}

impl KvStore for SledStore {
    fn get(&self, tree: Tree, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)?
            .get(key)
            .map_err(|source| StoreError::Backend { tree: tree.name(), source })?
            .map(|v| v.to_vec()))
    }
    fn put(&self, tree: Tree, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.insert(key, value).map_err(|source| StoreError::Backend { tree: tree.name(), source })?;
        Ok(())
    }
    fn delete(&self, tree: Tree, key: &str) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key).map_err(|source| StoreError::Backend { tree: tree.name(), source })?;
        Ok(())
    }
    fn scan_prefix(&self, tree: Tree, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .map(|r| {
                let (k, v) = r.map_err(|source| StoreError::Backend { tree: tree.name(), source })?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }
    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &str,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let r = self
            .tree(tree)?
            .compare_and_swap(key, old, new)
            .map_err(|source| StoreError::Backend { tree: tree.name(), source })?;
        Ok(r.is_ok())
    }
    fn next_id(&self, counter: &str) -> Result<u64, StoreError> {
        let t = self.tree(Tree::Meta)?;
        let v = t
            .update_and_fetch(format!("counter/{counter}"), |old| {
                let n = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0) + 1;
                Some(n.to_be_bytes().to_vec())
            })
            .map_err(|source| StoreError::Backend { tree: "meta", source })?
            .expect("update_and_fetch returns the new value");
        Ok(u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")))
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|source| StoreError::Backend { tree: "all", source })?;
        Ok(())
    }
}

/// Typed access to the store.
#[derive(Clone)]
pub struct State {
    kv: std::sync::Arc<dyn KvStore>,
}

impl State {
    pub fn new(kv: std::sync::Arc<dyn KvStore>) -> Self {
        Self { kv }
    }
    pub fn kv(&self) -> &dyn KvStore {
        &*self.kv
    }
    pub fn get<T: DeserializeOwned>(&self, tree: Tree, key: &str) -> Result<Option<T>, StoreError> {
        match self.kv.get(tree, key)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|source| StoreError::Corrupt {
                tree: tree.name(),
                key: key.to_string(),
                source,
            }),
        }
    }
    pub fn put<T: Serialize>(&self, tree: Tree, key: &str, value: &T) -> Result<(), StoreError> {
        self.kv.put(tree, key, &serde_json::to_vec(value).expect("records serialize"))
    }
    pub fn delete(&self, tree: Tree, key: &str) -> Result<(), StoreError> {
        self.kv.delete(tree, key)
    }
    pub fn list<T: DeserializeOwned>(&self, tree: Tree, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.kv
            .scan_prefix(tree, prefix)?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt { tree: tree.name(), key: k, source })
            })
            .collect()
    }
    pub fn next_id(&self, counter: &str) -> Result<u64, StoreError> {
        self.kv.next_id(counter)
    }
    /// Makes everything written so far durable, off the async threads.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || kv.flush()).await.expect("flush worker")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn counters_and_cas_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(&dir.path().join("db")).unwrap();
            assert_eq!(s.next_id("task").unwrap(), 1);
            assert_eq!(s.next_id("task").unwrap(), 2);
            assert!(s.compare_and_swap(Tree::Locks, "d", None, Some(b"1")).unwrap());
            assert!(!s.compare_and_swap(Tree::Locks, "d", None, Some(b"2")).unwrap());
            s.flush().unwrap();
        }
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.next_id("task").unwrap(), 3);
        assert_eq!(s.get(Tree::Locks, "d").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
