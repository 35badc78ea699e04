use flow_runtime::prelude::*;

#[flow]
async fn countdown(ctx: &mut FlowContext, s: FlowSession, n: u32) -> Result<u32, FlowError> {
    if n == 0 {
        return Ok(0);
    }
    let rest: u32 = ctx.sub_flow(countdown(s, n - 1)).await?;
    Ok(rest + 1)
}

fn main() {}
