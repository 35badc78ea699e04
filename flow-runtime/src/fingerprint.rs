//! The run-time half of a flow's fingerprint: the serde shapes of the types
//! its checkpoints hold.
//!
//! `#[flow]` sees the program (which suspension points exist, where each
//! sits, what it awaits, which locals it stores, as written) and puts that in
//! the constant [`Flow::FINGERPRINT`]. It cannot see what a stored type *is*:
//! a user struct whose fields are reordered keeps its name, and MessagePack
//! encodes struct fields by position, so an old checkpoint would decode with
//! its values swapped. [`Flow::fingerprint`] therefore mixes in, for every
//! stored type, its serde shape (field names and order, enum variants,
//! element types, recursively), traced once per flow type.
//!
//! The shapes are traced with [`serde_reflection`], the crate the Diem/Aptos
//! and Sui projects use to freeze their wire formats: it walks a type's
//! `Deserialize` impl, so it sees exactly what serde sees (renames, skipped
//! fields, `#[serde(with)]`), and needs no derive from the user. A type whose
//! `Deserialize` refuses the tracer's sample values (one that validates its
//! input) cannot be traced; its shape is then stood in for by its type name,
//! which still catches a change of type but not a change inside it.

use crate::__private::{FNV_OFFSET, combine, fnv1a};
use crate::Flow;
use serde::de::DeserializeOwned;
use serde_reflection::{ContainerFormat, Error as TraceError, Samples, Tracer, TracerConfig};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Collects the run-time part of a fingerprint. `#[flow]` generates
/// [`Flow::stored_shapes`], which hands it the state enum (whose shape holds
/// every stored type's), the output type, every message type the flow
/// awaits, and every sub-flow.
pub struct Shapes {
    hash: u64,
}

impl Shapes {
    fn new() -> Self {
        Shapes { hash: FNV_OFFSET }
    }

    /// Mixes in the serde shape of `T`, under `role` (which field or
    /// operation it belongs to, so two fields swapping types is a change).
    pub fn stored<T: DeserializeOwned>(&mut self, role: &str) {
        self.hash = fnv1a(self.hash, role.as_bytes());
        self.hash = fnv1a(self.hash, &[0]);
        self.hash = fnv1a(self.hash, serde_shape::<T>().as_bytes());
        self.hash = fnv1a(self.hash, &[0]);
    }

    /// Mixes in the full fingerprint of a sub-flow whose state is stored.
    pub fn child<F: Flow>(&mut self) {
        self.hash = combine(self.hash, F::fingerprint());
    }
}

/// The full fingerprint of `F`: [`Flow::FINGERPRINT`] combined with the
/// serde shapes of its stored types. Computed once per type and process.
pub fn fingerprint<F: Flow>() -> u64 {
    static CACHE: OnceLock<Mutex<HashMap<TypeId, u64>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = TypeId::of::<F>();
    if let Some(fp) = cache.lock().ok().and_then(|c| c.get(&key).copied()) {
        return fp;
    }
    // Computed outside the lock: a flow's shapes include its children's
    // fingerprints, which take the lock themselves.
    let mut shapes = Shapes::new();
    F::stored_shapes(&mut shapes);
    let fp = combine(F::FINGERPRINT, shapes.hash);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, fp);
    }
    fp
}

/// The serde shape of `T` as canonical text: the traced format of `T` and
/// of every named container it reaches (field names and order, variants),
/// or `untraceable <type name>` when `T`'s `Deserialize` refuses the
/// tracer's samples.
pub fn serde_shape<T: DeserializeOwned>() -> String {
    // Fixed-size byte strings (keys, hashes, signatures) refuse the
    // tracer's default empty one: try the common sizes, in a fixed order.
    let traced = BYTE_STRING_SIZES.iter().find_map(|&n| trace::<T>(n).ok());
    match traced {
        Some(text) => text,
        None => format!("untraceable {}", std::any::type_name::<T>()),
    }
}

/// The byte-string lengths tracing tries: the tracer's default (empty),
/// then 32 (keys, hashes) and 64 (signatures).
const BYTE_STRING_SIZES: [usize; 3] = [0, 32, 64];

/// Bounds on tracing one type: attempts (each learns nested enums or
/// doubles the passes) and passes over the type in one attempt.
const MAX_ATTEMPTS: usize = 64;
const MAX_PASSES: usize = 4096;

/// Traces `T` until every variant of every enum it reaches is known.
///
/// The tracer explores one more variant of an enum on a pass only if that
/// enum's "incomplete" mark was taken off after the pass before, and it
/// names the enums it saw incomplete only when asked for the final
/// registry. An enum still being explored holds entries under provisional
/// indices (at the top of the `u32` range) until its last variant is
/// resolved. So an attempt makes a number of passes, taking the marks off
/// the enums learned so far after each; if the registry names unknown
/// enums, or still holds provisional entries, the next attempt starts
/// afresh knowing more enums, or with twice the passes.
fn trace<T: DeserializeOwned>(byte_string_size: usize) -> Result<String, TraceError> {
    let samples = Samples::new();
    let bytes: &'static [u8] = &[0; 64][..byte_string_size];
    let config = || {
        TracerConfig::default()
            .default_borrowed_bytes_value(bytes)
            .default_byte_buf_value(bytes.to_vec())
    };
    let mut enums: Vec<String> = Vec::new();
    let mut passes = 2;
    for _ in 0..MAX_ATTEMPTS {
        let mut tracer = Tracer::new(config());
        let mut root = None;
        for _ in 0..passes {
            let (format, _) = tracer.trace_type_once::<T>(&samples)?;
            root.get_or_insert(format);
            for name in &enums {
                tracer.check_incomplete_enum(name);
            }
        }
        let unfinished: Vec<String> = match tracer.registry() {
            Ok(registry) => {
                let unfinished: Vec<String> = registry
                    .iter()
                    .filter(|(_, f)| {
                        matches!(f, ContainerFormat::Enum(v) if v.keys().any(|i| *i > u32::MAX / 2))
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                if unfinished.is_empty() {
                    // Plain data with ordered maps: their JSON is canonical.
                    return serde_json::to_string(&(root, registry))
                        .map_err(|e| TraceError::Custom(e.to_string()));
                }
                unfinished
            }
            Err(TraceError::MissingVariants(names)) => names,
            Err(e) => return Err(e),
        };
        let new: Vec<String> = unfinished
            .into_iter()
            .filter(|n| !enums.contains(n))
            .collect();
        if new.is_empty() {
            if passes >= MAX_PASSES {
                return Err(TraceError::Custom("enum variants not reached".into()));
            }
            passes *= 2;
        }
        enums.extend(new);
    }
    Err(TraceError::Custom("too many nested enums".into()))
}

#[cfg(test)]
mod tests {
    use super::serde_shape;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct PriceQty {
        price: u64,
        qty: u64,
    }

    mod reordered {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct PriceQty {
            pub qty: u64,
            pub price: u64,
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Outer {
        A(Inner),
        B { n: u32 },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Inner {
        X,
        Y(String),
        Z(Vec<u8>),
    }

    struct Validating;
    impl<'de> Deserialize<'de> for Validating {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u32::deserialize(d)?;
            if n == 0 {
                Err(serde::de::Error::custom("must not be zero"))
            } else {
                Ok(Validating)
            }
        }
    }

    #[test]
    fn field_order_is_part_of_the_shape() {
        assert_ne!(
            serde_shape::<PriceQty>(),
            serde_shape::<reordered::PriceQty>()
        );
        assert_eq!(serde_shape::<PriceQty>(), serde_shape::<PriceQty>());
    }

    #[test]
    fn every_variant_of_nested_enums_is_traced() {
        let shape = serde_shape::<Vec<Outer>>();
        for name in ["\"A\"", "\"B\"", "\"X\"", "\"Y\"", "\"Z\""] {
            assert!(shape.contains(name), "{name} missing from {shape}");
        }
    }

    #[test]
    fn an_untraceable_type_is_named() {
        let shape = serde_shape::<Validating>();
        assert!(shape.starts_with("untraceable "), "{shape}");
        assert!(shape.contains("Validating"), "{shape}");
    }
}
