//! Node services reachable from a flow through `ctx.services()`: a map from
//! type to one instance of that type.

use std::any::{Any, TypeId};
use std::collections::HashMap;

/// A type-indexed set of node services (vault, key manager, notary, ...).
#[derive(Default)]
pub struct Services {
    by_type: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl Services {
    /// Adds (or replaces) the service of type `S`.
    pub fn insert<S: Any + Send>(&mut self, service: S) {
        self.by_type.insert(TypeId::of::<S>(), Box::new(service));
    }

    /// The service of type `S`, if the node has one.
    pub fn get<S: Any + Send>(&self) -> Option<&S> {
        self.by_type.get(&TypeId::of::<S>())?.downcast_ref()
    }

    /// The service of type `S`, mutably, if the node has one.
    pub fn get_mut<S: Any + Send>(&mut self) -> Option<&mut S> {
        self.by_type.get_mut(&TypeId::of::<S>())?.downcast_mut()
    }

    /// Removes and returns the service of type `S`.
    pub fn remove<S: Any + Send>(&mut self) -> Option<S> {
        self.by_type
            .remove(&TypeId::of::<S>())?
            .downcast()
            .ok()
            .map(|b| *b)
    }
}
