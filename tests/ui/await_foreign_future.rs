use flow_runtime::prelude::*;

#[flow]
async fn wait(ctx: &mut FlowContext) -> Result<u32, FlowError> {
    let n = std::future::ready(1u32).await;
    Ok(n)
}

fn main() {}
