//! Flows a client may start by name through the admin API, with their
//! arguments as JSON (Corda's `@StartableByRPC`, as an explicit
//! registration: [`NodeBuilder::startable`](crate::runner::NodeBuilder::startable)).
//!
//! Why an explicit registration with a typed argument struct: a flow's
//! parameters are Rust values (parties, amounts, state refs); the node
//! cannot guess how to build them from JSON, and not every flow a node
//! runs is meant to be started by a client (responders, sub-flows). The
//! registration names the argument type, serde checks every field and type
//! of the request against it, and the closure may check more (and resolve
//! names, e.g. a party's name to its `Party`), refusing with a message
//! that goes back to the client as a 400.

use crate::registry::NewFlow;
use crate::{Flow, FlowError};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;

type Make = dyn Fn(serde_json::Value) -> Result<NewFlow, String> + Send + Sync;

/// The startable flows of one node, by registered name.
#[derive(Clone, Default)]
pub struct Startable {
    flows: BTreeMap<String, Arc<Make>>,
}

impl std::fmt::Debug for Startable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.flows.keys()).finish()
    }
}

impl Startable {
    /// Makes `F` startable under its `Flow::NAME`: a request's `args` are
    /// decoded as `A` and handed to `make`.
    pub fn register<A, F>(&mut self, make: impl Fn(A) -> Result<F, String> + Send + Sync + 'static)
    where
        A: DeserializeOwned,
        F: Flow,
    {
        let make = move |args: serde_json::Value| -> Result<NewFlow, String> {
            let args: A = serde_json::from_value(args)
                .map_err(|e| format!("the arguments do not fit the flow: {e}"))?;
            let flow = make(args)?;
            NewFlow::new(&flow).map_err(|e: FlowError| e.to_string())
        };
        self.flows.insert(F::NAME.to_owned(), Arc::new(make));
    }

    /// The flow registered as `name`, built from `args`; `None` if no flow
    /// is startable under that name, `Some(Err)` if the arguments do not
    /// fit.
    pub fn build(&self, name: &str, args: serde_json::Value) -> Option<Result<NewFlow, String>> {
        self.flows.get(name).map(|make| make(args))
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.flows.keys().map(String::as_str)
    }
}
