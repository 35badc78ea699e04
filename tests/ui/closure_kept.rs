use flow_runtime::prelude::*;

#[flow]
async fn keep_closure(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let double = |x: u32| x * 2;
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(double(n))
}

fn main() {}
