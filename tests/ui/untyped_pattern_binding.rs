use flow_runtime::prelude::*;

#[flow]
async fn first(ctx: &mut FlowContext, s: FlowSession, items: Vec<u32>) -> Result<u32, FlowError> {
    if let Some(x) = items.first().copied() {
        let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
        return Ok(x + y);
    }
    Ok(0)
}

fn main() {}
