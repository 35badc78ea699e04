use flow_runtime::prelude::*;
use std::rc::Rc;

#[derive(Debug)]
struct Cache(Vec<u8>);

#[flow]
async fn keep(ctx: &mut FlowContext, s: FlowSession) -> Result<usize, FlowError> {
    let cache: Cache = Cache(vec![1, 2]);
    let shared: Rc<u32> = Rc::new(1);
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(cache.0.len() + *shared as usize + n as usize)
}

fn main() {}
