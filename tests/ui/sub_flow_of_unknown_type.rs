use flow_runtime::prelude::*;

#[flow]
async fn child(ctx: &mut FlowContext) -> Result<u32, FlowError> {
    let _ = ctx;
    Ok(1)
}

#[flow]
async fn parent(ctx: &mut FlowContext) -> Result<u32, FlowError> {
    let c = child();
    let n = ctx.sub_flow(c).await?;
    Ok(n)
}

fn main() {}
