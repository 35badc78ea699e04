//! Which of the traits a checkpoint needs a type lacks, decided at compile
//! time for a concrete type, so that `#[flow]` reports a local that cannot
//! be kept across an `.await` with one error that names the local and the
//! missing trait.
//!
//! The macro cannot see trait impls, and a bound like `T: Checkpointable`
//! fails once per missing supertrait, each error pointing into generated
//! code. Here autoderef-based specialisation picks, for the receiver
//! `&&&&&Probe<T>`, the most capable level `T` satisfies; its `verdict()`
//! returns a type that names what is missing ([`Storable`] if nothing).
//! The macro then asks, once per stored local, for four traits of its own
//! (`CheckpointSerialize<V>`, ...) that it implements for every verdict
//! except the one they are about, each with a
//! `#[diagnostic::on_unimplemented]` message naming the local and the
//! `.await` it is kept across. Exactly one of them fails for an unstorable
//! type, and none for a storable one.

use super::Checkpointable;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::marker::PhantomData;

/// Asks what `T` lacks; see the module doc.
pub struct Probe<T>(PhantomData<fn() -> T>);

impl<T> Probe<T> {
    /// The probe for `T`.
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `T` can be kept in a checkpoint.
pub struct Storable;
/// `T` is not `Serialize`.
pub struct LacksSerialize;
/// `T` is `Serialize` but not `DeserializeOwned`.
pub struct LacksDeserialize;
/// `T` is serde both ways but not `Debug`.
pub struct LacksDebug;
/// `T` is serde both ways and `Debug` but not `Send`.
pub struct LacksSend;

/// The verdicts of a type that is `Serialize`.
pub trait HasSerialize {}
impl HasSerialize for Storable {}
impl HasSerialize for LacksDeserialize {}
impl HasSerialize for LacksDebug {}
impl HasSerialize for LacksSend {}

/// The verdicts of a type that is `DeserializeOwned` (or whose
/// `Serialize` is missing, which is reported instead).
pub trait HasDeserialize {}
impl HasDeserialize for Storable {}
impl HasDeserialize for LacksSerialize {}
impl HasDeserialize for LacksDebug {}
impl HasDeserialize for LacksSend {}

/// The verdicts of a type that is `Debug` (or lacks a trait reported
/// before it).
pub trait HasDebug {}
impl HasDebug for Storable {}
impl HasDebug for LacksSerialize {}
impl HasDebug for LacksDeserialize {}
impl HasDebug for LacksSend {}

/// The verdicts of a type that is `Send` (or lacks a trait reported
/// before it).
pub trait HasSend {}
impl HasSend for Storable {}
impl HasSend for LacksSerialize {}
impl HasSend for LacksDeserialize {}
impl HasSend for LacksDebug {}

/// Level 0: everything a checkpoint needs.
pub trait Level0 {
    /// The verdict.
    fn verdict(&self) -> Storable {
        Storable
    }
}
impl<T: Checkpointable> Level0 for &&&&Probe<T> {}

/// Level 1: all but `Send`.
pub trait Level1 {
    /// The verdict.
    fn verdict(&self) -> LacksSend {
        LacksSend
    }
}
impl<T: Serialize + DeserializeOwned + Debug> Level1 for &&&Probe<T> {}

/// Level 2: serde both ways, not `Debug`.
pub trait Level2 {
    /// The verdict.
    fn verdict(&self) -> LacksDebug {
        LacksDebug
    }
}
impl<T: Serialize + DeserializeOwned> Level2 for &&Probe<T> {}

/// Level 3: `Serialize` only.
pub trait Level3 {
    /// The verdict.
    fn verdict(&self) -> LacksDeserialize {
        LacksDeserialize
    }
}
impl<T: Serialize> Level3 for &Probe<T> {}

/// Level 4: nothing.
pub trait Level4 {
    /// The verdict.
    fn verdict(&self) -> LacksSerialize {
        LacksSerialize
    }
}
impl<T> Level4 for Probe<T> {}

// The explicit borrows are the dispatch under test, not noise.
#[cfg(test)]
#[allow(clippy::needless_borrow)]
mod tests {
    use super::{Level0 as _, Level1 as _, Level2 as _, Level3 as _, Level4 as _, Probe};
    use std::any::type_name_of_val;

    #[derive(Debug, serde::Serialize)]
    struct OnlySerialize;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct NoDebug;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct NotSend(#[serde(skip)] std::marker::PhantomData<*const ()>);

    #[test]
    fn the_verdict_names_the_first_missing_trait() {
        assert!(type_name_of_val(&(&&&&&Probe::<u32>::new()).verdict()).ends_with("::Storable"));
        assert!(
            type_name_of_val(&(&&&&&Probe::<std::time::Instant>::new()).verdict())
                .ends_with("::LacksSerialize")
        );
        assert!(
            type_name_of_val(&(&&&&&Probe::<OnlySerialize>::new()).verdict())
                .ends_with("::LacksDeserialize")
        );
        assert!(
            type_name_of_val(&(&&&&&Probe::<NoDebug>::new()).verdict()).ends_with("::LacksDebug")
        );
        assert!(
            type_name_of_val(&(&&&&&Probe::<NotSend>::new()).verdict()).ends_with("::LacksSend")
        );
        assert!(
            type_name_of_val(&(&&&&&Probe::<std::rc::Rc<u32>>::new()).verdict())
                .ends_with("::LacksSerialize")
        );
        assert!(
            type_name_of_val(&(&&&&&Probe::<std::sync::MutexGuard<'static, u32>>::new()).verdict())
                .ends_with("::LacksSerialize")
        );
    }
}
