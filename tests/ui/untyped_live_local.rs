use flow_runtime::prelude::*;

#[flow]
async fn count(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let mut seen = 0;
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    seen += n;
    Ok(seen)
}

fn main() {}
