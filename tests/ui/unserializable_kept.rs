use flow_runtime::prelude::*;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug)]
struct Cache(Vec<u8>);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ThreadBound {
    #[serde(skip)]
    marker: std::marker::PhantomData<*const ()>,
    n: u32,
}

static LOCK: Mutex<u32> = Mutex::new(0);

// One error per local that cannot be stored, at the local, naming it, the
// `.await` it is kept across and the trait its type lacks; none from the
// generated code.
#[flow]
async fn keep(ctx: &mut FlowContext, s: FlowSession) -> Result<usize, FlowError> {
    let started: Instant = Instant::now();
    let cache: Cache = Cache(vec![1, 2]);
    let shared: Rc<u32> = Rc::new(1);
    let raw: *const u8 = std::ptr::null();
    let guard: MutexGuard<'static, u32> = LOCK.lock().unwrap();
    let bound: ThreadBound = ThreadBound { marker: std::marker::PhantomData, n: 1 };
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    let elapsed = started.elapsed().as_millis() as usize;
    Ok(elapsed + cache.0.len() + *shared as usize + raw as usize + *guard as usize + bound.n as usize + n as usize)
}

fn main() {
    // Callers type-check: the flow is still there.
    fn needs_flow<F: flow_runtime::Flow>(_: F) {}
    needs_flow(keep(FlowSession::from_id(flow_runtime::SessionId(1))));
}
