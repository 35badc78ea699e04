//! Where a local kept across an `.await` waits while its flow is
//! suspended: one [`Slot`] per field of a flow's generated `FlowLocals`.
//!
//! Why not a plain `Option<T>` with `T: Serialize`: the macro cannot see
//! trait impls, so a local whose type cannot be checkpointed (an
//! `Instant`, an `Rc`, a raw pointer) would fail every place that
//! serializes, prints or sends the state — a dozen errors pointing at the
//! `#[flow]` attribute. Instead the generated code reaches a slot through
//! methods found by autoref-based specialisation: for a checkpointable `T`
//! the [`Stored`] impl applies (the real serde, `Debug` and filling); for any
//! other `T` only the fallbacks [`UnstorableRef`] and [`UnstorableMut`] do,
//! which compile and do nothing. The one error the user sees comes from
//! the per-local check (see [`super::verdict`]), which fails exactly then.
//! The fallbacks never run: a program using them does not compile.

use super::Checkpointable;
use serde::{Deserialize, Serialize};

/// One local's value while its flow is suspended (`None` where the local
/// is not live).
pub struct Slot<T>(Option<T>);

// SAFETY: a `Slot<T>` holds a value only if `Stored::__flow_put` or
// `Stored::__flow_deserialize` put it there, and both require
// `T: Checkpointable`, which includes `T: Send`. A slot of any other type
// stays empty (the fallbacks fill nothing; the field is private), and an
// empty slot owns nothing that could be sent to another thread.
unsafe impl<T> Send for Slot<T> {}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(None)
    }
}

impl<T> Slot<T> {
    /// Takes the value out, leaving the slot empty.
    pub fn take(&mut self) -> Option<T> {
        self.0.take()
    }

    /// Empties the slot (its local is dead here).
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// The slot operations for a type that can be checkpointed.
pub trait Stored {
    /// The local's type.
    type Item;
    /// Stores the local.
    fn __flow_put(&mut self, value: Self::Item);
    /// Serializes the slot: `None`, or the value in a one-element tuple,
    /// so that a stored `None` of an `Option` local (`Some(None)`) does
    /// not read back as "not stored" (MessagePack writes both as nil).
    fn __flow_serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    /// Fills the slot from a checkpoint (the inverse of `__flow_serialize`).
    fn __flow_deserialize<'de, D: serde::Deserializer<'de>>(
        &mut self,
        deserializer: D,
    ) -> Result<(), D::Error>;
    /// The value for the state's `Debug` output, if stored.
    fn __flow_debug(&self) -> Option<&dyn std::fmt::Debug>;
}

impl<T: Checkpointable> Stored for Slot<T> {
    type Item = T;

    fn __flow_put(&mut self, value: T) {
        self.0 = Some(value);
    }

    fn __flow_serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().map(|v| (v,)).serialize(serializer)
    }

    fn __flow_deserialize<'de, D: serde::Deserializer<'de>>(
        &mut self,
        deserializer: D,
    ) -> Result<(), D::Error> {
        self.0 = Option::<(T,)>::deserialize(deserializer)?.map(|(v,)| v);
        Ok(())
    }

    fn __flow_debug(&self) -> Option<&dyn std::fmt::Debug> {
        self.0.as_ref().map(|v| v as &dyn std::fmt::Debug)
    }
}

/// What "a program using a fallback does not compile" rests on, should it
/// ever run.
const UNREACHABLE: &str = "#[flow] reached the slot of a local that cannot be checkpointed (its check must have failed to compile: a bug in flow-macros)";

/// Fallback for reading a slot whose type cannot be checkpointed: found
/// only when [`Stored`] does not apply (one more autoref away).
pub trait UnstorableRef {
    /// Never runs (see the module doc).
    fn __flow_serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    /// Never runs (see the module doc).
    fn __flow_debug(&self) -> Option<&dyn std::fmt::Debug>;
}

impl<T> UnstorableRef for &Slot<T> {
    fn __flow_serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(UNREACHABLE))
    }

    fn __flow_debug(&self) -> Option<&dyn std::fmt::Debug> {
        None
    }
}

/// Fallback for filling a slot whose type cannot be checkpointed; it
/// never fills it, which is what makes [`Slot`]'s `Send` sound.
pub trait UnstorableMut {
    /// The local's type.
    type Item;
    /// Never runs (see the module doc).
    fn __flow_put(&mut self, value: Self::Item);
    /// Never runs (see the module doc).
    fn __flow_deserialize<'de, D: serde::Deserializer<'de>>(
        &mut self,
        deserializer: D,
    ) -> Result<(), D::Error>;
}

impl<T> UnstorableMut for &mut Slot<T> {
    type Item = T;

    fn __flow_put(&mut self, _: T) {
        panic!("{UNREACHABLE}");
    }

    fn __flow_deserialize<'de, D: serde::Deserializer<'de>>(
        &mut self,
        _: D,
    ) -> Result<(), D::Error> {
        Err(serde::de::Error::custom(UNREACHABLE))
    }
}

/// Takes a stored local back where the flow resumes.
pub fn take<T>(slot: &mut Slot<T>) -> Result<T, crate::FlowError> {
    slot.take().ok_or_else(|| {
        crate::FlowError::internal(
            "#[flow] state machine read an empty slot (a bug in flow-macros)",
        )
    })
}

// The explicit borrows are the dispatch under test, not noise.
#[cfg(test)]
#[allow(clippy::needless_borrow)]
mod tests {
    use super::{Slot, Stored as _, UnstorableMut as _, UnstorableRef as _};

    /// The real operations are chosen for a checkpointable type, and the
    /// encoding tells a stored `None` from "not stored".
    #[test]
    fn a_checkpointable_local_round_trips_through_its_slot() {
        let mut slot: Slot<Option<u32>> = Slot::default();
        let empty = rmp_serde::to_vec(&SerSlot(&slot)).unwrap();
        (&mut slot).__flow_put(None);
        let stored_none = rmp_serde::to_vec(&SerSlot(&slot)).unwrap();
        assert_ne!(empty, stored_none);
        assert_eq!(format!("{:?}", (&slot).__flow_debug()), "Some(None)");

        let mut back: Slot<Option<u32>> = Slot::default();
        (&mut back)
            .__flow_deserialize(&mut rmp_serde::Deserializer::new(&stored_none[..]))
            .unwrap();
        assert_eq!(back.take(), Some(None));
        let mut back: Slot<Option<u32>> = Slot::default();
        (&mut back)
            .__flow_deserialize(&mut rmp_serde::Deserializer::new(&empty[..]))
            .unwrap();
        assert_eq!(back.take(), None);
    }

    /// A type that cannot be checkpointed gets the fallbacks: they compile,
    /// and they fill nothing.
    #[test]
    fn an_unstorable_local_gets_the_fallbacks_which_store_nothing() {
        let mut slot: Slot<std::rc::Rc<u32>> = Slot::default();
        assert!((&slot).__flow_debug().is_none());
        assert!(rmp_serde::to_vec(&SerSlot(&slot)).is_err());
        let bytes = rmp_serde::to_vec(&Option::<(u32,)>::Some((1,))).unwrap();
        assert!(
            (&mut slot)
                .__flow_deserialize(&mut rmp_serde::Deserializer::new(&bytes[..]))
                .is_err()
        );
        assert!(slot.take().is_none());
        let put = std::panic::catch_unwind(move || {
            let mut slot: Slot<std::rc::Rc<u32>> = Slot::default();
            (&mut slot).__flow_put(std::rc::Rc::new(1));
        });
        assert!(put.is_err());
    }

    /// Serializes a slot through whichever impl the dispatch picks.
    struct SerSlot<'a, T>(&'a Slot<T>);

    impl serde::Serialize for SerSlot<'_, Option<u32>> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.__flow_serialize(s)
        }
    }

    impl serde::Serialize for SerSlot<'_, std::rc::Rc<u32>> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.__flow_serialize(s)
        }
    }
}
