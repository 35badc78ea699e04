// A flow with an error still provides its fn and module, so the callers
// below report nothing more than the flow's own error.
use flow_runtime::prelude::*;

#[flow]
async fn count(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let mut seen = 0;
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    seen += n;
    Ok(seen)
}

#[flow]
async fn caller(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let n: u32 = ctx.sub_flow(count(s)).await?;
    Ok(n)
}

fn main() {
    let _start: count::Flow = count(FlowSession::from_id(flow_runtime::SessionId(1)));
}
