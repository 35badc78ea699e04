use flow_runtime::prelude::*;

#[flow]
async fn spawned(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> {
    let fut = async { s.receive::<u32>().await };
    let _ = fut;
    Ok(())
}

fn main() {}
