//! Node services reachable from a flow through `ctx.services()`: a map from
//! type to one instance of that type.

use std::any::{Any, TypeId};

/// A type-indexed set of node services (vault, key manager, notary, ...).
///
/// Kept as a short list searched by type id: a node has a handful of
/// services and every step looks some up, so comparing a few ids beats
/// hashing one.
#[derive(Default)]
pub struct Services {
    by_type: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl Services {
    fn position<S: Any>(&self) -> Option<usize> {
        let id = TypeId::of::<S>();
        self.by_type.iter().position(|(t, _)| *t == id)
    }

    /// Adds (or replaces) the service of type `S`.
    pub fn insert<S: Any + Send>(&mut self, service: S) {
        match self.position::<S>() {
            Some(i) => self.by_type[i].1 = Box::new(service),
            None => self.by_type.push((TypeId::of::<S>(), Box::new(service))),
        }
    }

    /// The service of type `S`, if the node has one.
    pub fn get<S: Any + Send>(&self) -> Option<&S> {
        self.by_type[self.position::<S>()?].1.downcast_ref()
    }

    /// The service of type `S`, mutably, if the node has one.
    pub fn get_mut<S: Any + Send>(&mut self) -> Option<&mut S> {
        let i = self.position::<S>()?;
        self.by_type[i].1.downcast_mut()
    }

    /// Removes and returns the service of type `S`.
    pub fn remove<S: Any + Send>(&mut self) -> Option<S> {
        let i = self.position::<S>()?;
        self.by_type.swap_remove(i).1.downcast().ok().map(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::Services;

    #[test]
    fn each_type_has_one_instance_until_removed() {
        let mut s = Services::default();
        assert!(s.get::<u32>().is_none());
        s.insert(1u32);
        s.insert(String::from("a"));
        s.insert(2u32); // replaces
        assert_eq!(s.get::<u32>(), Some(&2));
        *s.get_mut::<String>().expect("string") += "b";
        assert_eq!(s.remove::<u32>(), Some(2));
        assert!(s.get::<u32>().is_none());
        assert_eq!(s.get::<String>().map(String::as_str), Some("ab"));
        assert_eq!(s.remove::<u64>(), None);
    }
}
