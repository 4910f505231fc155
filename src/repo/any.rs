//! A repository of any backend: what steps and the catalog hold.

use super::store::Store;
use std::sync::Arc;

/// A repository of any backend; what steps and the catalog work with.
#[derive(Clone)]
pub struct AnyStore {
    objects: Arc<dyn Store>,
}

impl AnyStore {
    pub fn new(store: impl Store + 'static) -> AnyStore {
        AnyStore {
            objects: Arc::new(store),
        }
    }

    /// A repository of a store that is already shared.
    pub fn shared(store: Arc<dyn Store>) -> AnyStore {
        AnyStore { objects: store }
    }

    /// The repository's objects, for what is laid out on them.
    pub fn objects(&self) -> &dyn Store {
        &*self.objects
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.objects.location("").trim_end_matches('/').to_string()
    }
}
