//! Opaque handles (`CUmodule`, `CUfunction`, `CUstream`, `CUevent`, `CUcontext`) as numbers
//! handed out by a registry, so that a destroyed or made-up handle is an error
//! (`CUDA_ERROR_INVALID_HANDLE`) and never a dangling pointer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Handle values start well away from 0 and the special stream values 1 and 2, and are never
/// reused, so a stale handle cannot name a newer object.
static NEXT: AtomicUsize = AtomicUsize::new(0x1000);

pub struct Registry<T> {
    items: Mutex<Option<HashMap<usize, Arc<T>>>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Registry {
            items: Mutex::new(None),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<usize, Arc<T>>) -> R) -> R {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        f(items.get_or_insert_with(HashMap::new))
    }

    /// Registers `item`; returns its handle.
    pub fn insert(&self, item: T) -> usize {
        let handle = NEXT.fetch_add(16, Ordering::Relaxed);
        self.with(|m| m.insert(handle, Arc::new(item)));
        handle
    }

    pub fn get(&self, handle: usize) -> Option<Arc<T>> {
        self.with(|m| m.get(&handle).cloned())
    }

    pub fn remove(&self, handle: usize) -> Option<Arc<T>> {
        self.with(|m| m.remove(&handle))
    }

    /// Every live item.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.with(|m| m.values().cloned().collect())
    }
}
