//! The embedded default store: sled under the state directory. sled's reads and writes work on
//! its in-memory page cache (its own thread writes them out), so they run inline; only `flush`,
//! which waits for the disk, leaves the async threads.

use super::{BackendError, Store, StoreError, Tree};
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
}

fn backend(tree: Tree) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::Backend { tree: tree.name(), source: Box::new(e) as BackendError }
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| StoreError::Open { path: path.display().to_string(), source: Box::new(e) })?;
        Ok(Self { db })
    }

    fn tree(&self, tree: Tree) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(tree.name()).map_err(backend(tree))
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn get(&self, tree: Tree, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key).map_err(backend(tree))?.map(|v| v.to_vec()))
    }

    async fn put(&self, tree: Tree, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.insert(key, value).map_err(backend(tree))?;
        Ok(())
    }

    async fn delete(&self, tree: Tree, key: &str) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key).map_err(backend(tree))?;
        Ok(())
    }

    async fn scan_prefix(&self, tree: Tree, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .map(|r| {
                let (k, v) = r.map_err(backend(tree))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    async fn compare_and_swap(
        &self,
        tree: Tree,
        key: &str,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        Ok(self.tree(tree)?.compare_and_swap(key, old, new).map_err(backend(tree))?.is_ok())
    }

    async fn next_id(&self, counter: &str) -> Result<u64, StoreError> {
        let v = self
            .tree(Tree::Meta)?
            .update_and_fetch(format!("counter/{counter}"), |old| {
                let n = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0) + 1;
                Some(n.to_be_bytes().to_vec())
            })
            .map_err(backend(Tree::Meta))?
            .expect("update_and_fetch returns the new value");
        Ok(u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Backend { tree: "all", source: Box::new(e) })?
            .map_err(|e| StoreError::Backend { tree: "all", source: Box::new(e) })?;
        Ok(())
    }
}
