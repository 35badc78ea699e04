use flow_runtime::prelude::*;

#[flow]
async fn backwards(peer: Party, ctx: &mut FlowContext) -> Result<(), FlowError> {
    let _ = (peer, ctx);
    Ok(())
}

fn main() {}
