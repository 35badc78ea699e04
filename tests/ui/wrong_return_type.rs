use flow_runtime::prelude::*;

#[flow]
async fn plain(ctx: &mut FlowContext) -> u32 {
    let _ = ctx;
    1
}

#[flow]
async fn other_error(ctx: &mut FlowContext) -> Result<u32, String> {
    let _ = ctx;
    Ok(1)
}

fn main() {}
