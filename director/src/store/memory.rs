//! An in-memory store for unit tests: the same semantics as the durable ones, nothing on disk.

use super::{Store, StoreError, Tree};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    trees: Mutex<BTreeMap<Tree, BTreeMap<String, Vec<u8>>>>,
    counters: Mutex<BTreeMap<String, u64>>,
}

impl MemoryStore {
    fn with<R>(&self, tree: Tree, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R) -> R {
        let mut trees = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        f(trees.entry(tree).or_default())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, tree: Tree, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(tree, |t| t.get(key).cloned()))
    }

    async fn put(&self, tree: Tree, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with(tree, |t| t.insert(key.to_string(), value.to_vec()));
        Ok(())
    }

    async fn delete(&self, tree: Tree, key: &str) -> Result<(), StoreError> {
        self.with(tree, |t| t.remove(key));
        Ok(())
    }

    async fn scan_prefix(&self, tree: Tree, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.with(tree, |t| {
            t.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    async fn compare_and_swap(
        &self,
        tree: Tree,
        key: &str,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        Ok(self.with(tree, |t| {
            if t.get(key).map(Vec::as_slice) != old {
                return false;
            }
            match new {
                Some(v) => t.insert(key.to_string(), v.to_vec()),
                None => t.remove(key),
            };
            true
        }))
    }

    async fn next_id(&self, counter: &str) -> Result<u64, StoreError> {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(counter.to_string()).or_default();
        *n += 1;
        Ok(*n)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
