use flow_runtime::prelude::*;

#[flow]
async fn shared(ctx: &FlowContext, peer: Party) -> Result<(), FlowError> {
    let _ = (peer, ctx);
    Ok(())
}

fn main() {}
