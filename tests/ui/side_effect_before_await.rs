use flow_runtime::prelude::*;

fn tick() -> u32 {
    1
}

#[flow]
async fn ordered(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let total: u32 = tick() + s.receive::<u32>().await?.validate(Ok)?;
    Ok(total)
}

fn main() {}
